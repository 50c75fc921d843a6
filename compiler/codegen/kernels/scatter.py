"""The ScatterND kernel: out = data with rows replaced by updates (reduction "none").

Data [d0, ..., d(r-1)] is seen as a table of rows: an index tuple of length k picks one row
of data.reshape(d0 * ... * d(k-1), rest), and the updates are one such row per tuple. The
kernel has two steps:

1. `copy_data`: out = data, DRAM to DRAM through the scratchpad (`Stager`). Skipped when
   the DRAM plan gave the output the data's own DRAM (`in_place`): then only the rows
   written change, which is what a KV cache updated in place needs.
2. `write_updates`: each update row goes to its row of out. Constant index tuples that
   name one block of consecutive rows (a prefill writing rows 0..N-1) are one strided
   copy; other constant tuples become a table of row numbers at compile time. Run-time
   tuples are loaded (int64 narrowed by vcvt, saturating) and made row numbers on the
   vector unit: each component wrapped as Gather wraps it (idx + n where idx < 0), then
   combined as ((i0 * d1) + i1) * d2 + ...; a tuple with a component outside its axis
   becomes row -1. `dma_scatter` then writes the rows in order (with repeated tuples, the
   last one wins); a row outside the table stops the run, as an out-of-range Gather does.
"""

from __future__ import annotations

import math

import numpy as np

from compiler.codegen.context import LOCAL_ALIGN, CodegenContext, View, unsupported
from compiler.codegen.kernels.movement import MAX_FIELD, MAX_GATHER_STRIDE, Stager, indexed_dma, load_indices
from compiler.ir import Node
from isa.dtypes import DType

# Local bytes per update row besides the row itself: _row_numbers' scratch (an int32 component, an
# int32 flag and 8 bytes to stage an int64 index), and two int32 row-number buffers (double buffered).
SCRATCH_BYTES_PER_ROW = 4 + 4 + 8
INDEX_BYTES_PER_ROW = SCRATCH_BYTES_PER_ROW + 2 * 4


def scatter_nd_kernel(ctx: CodegenContext, node: Node) -> None:
    """ScatterND(data, indices, updates): the two steps of the module docstring."""
    data, out = ctx.view(node.inputs[0]), ctx.view(node.outputs[0])
    if out.size == 0:
        return
    in_place = out == data  # the DRAM plan placed the output on the data (an in-place update)
    if not in_place:
        copy_data(ctx, data, out)
    write_updates(ctx, node, out)


def copy_data(ctx: CodegenContext, data: View, out: View) -> None:
    """Step 1: out = data."""
    Stager(ctx).copy(data, out)


def write_updates(ctx: CodegenContext, node: Node, out: View) -> None:
    """Step 2: out's row at each index tuple = that tuple's update row."""
    indices = ctx.graph.values[node.inputs[1]]
    depth = indices.shape[-1]
    axes = out.shape[:depth]
    table_rows, row = math.prod(axes), math.prod(out.shape[depth:])
    count = math.prod(indices.shape[:-1])
    if count == 0:
        return
    if table_rows >= 2**31:
        raise unsupported(node, f"{table_rows} rows of data: row numbers are computed in int32")
    words = 2 if out.dtype.size == 8 else 1
    if row * words > MAX_GATHER_STRIDE:
        raise unsupported(node, f"rows of {row} elements are wider than dma_scatter's row stride field")
    table = out.reshape_dense((table_rows, row))
    updates = ctx.view(node.inputs[2]).reshape_dense((count, row))
    if depth == 0 or indices.is_const:
        rows = constant_rows(np.zeros((count, 0)) if indices.const is None else indices.const, axes)
        if (rows >= 0).all() and (np.diff(rows) == 1).all():
            ctx.note(f"rows {rows[0]}..{rows[-1]}: one block copy")
            Stager(ctx).copy(updates, table.window(0, int(rows[0]), int(rows[0]) + count))
            return
        _scatter_rows(ctx, table, updates, lambda local, r0, rc, scratch: ctx.dma_in(
            local, ctx.constant(rows, DType.I32, f"{node.name}.rows").window(0, r0, r0 + rc)))
    else:
        tuples = ctx.view(node.inputs[1]).reshape_dense((count, depth))
        _scatter_rows(ctx, table, updates, lambda local, r0, rc, scratch: _row_numbers(
            ctx, tuples.window(0, r0, r0 + rc), axes, local, scratch))


def constant_rows(tuples: np.ndarray, axes: tuple[int, ...]) -> np.ndarray:
    """Row numbers of constant index tuples [..., k] (negative components wrapped); -1 for a tuple
    outside the axes, so that it stops the run."""
    sizes = np.array(axes, dtype=np.int64)
    tuples = tuples.reshape(math.prod(tuples.shape[:-1]), len(axes)).astype(np.int64)
    wrapped = np.where(tuples < 0, tuples + sizes, tuples)
    inside = ((wrapped >= 0) & (wrapped < sizes)).all(axis=1)
    strides = np.array([math.prod(axes[i + 1:]) for i in range(len(axes))], dtype=np.int64)
    return np.where(inside, wrapped @ strides, -1).astype(np.int64)


def _scatter_rows(ctx: CodegenContext, table: View, updates: View, load_rows) -> None:
    """dma_scatter the update rows into `table`, a block of rows at a time (and a block of columns
    when a row does not fit); `load_rows(local, r0, rc, scratch)` puts the int32 row numbers of
    updates r0..r0+rc at `local`."""
    (count, row), dtype = updates.shape, updates.dtype
    esize, words = dtype.size, 2 if dtype.size == 8 else 1
    arena = ctx.scratchpad()
    usable = arena.free - 8 * LOCAL_ALIGN  # room to align the buffers
    cols = min(row, MAX_FIELD // words, max(1, (usable - INDEX_BYTES_PER_ROW) // (2 * esize)))
    block = min(count, MAX_FIELD, usable // (2 * esize * cols + INDEX_BYTES_PER_ROW))
    row_numbers = [arena.alloc(4 * block) for _ in range(2)]
    scratch = arena.alloc(SCRATCH_BYTES_PER_ROW * block)
    buffers = [arena.alloc(esize * block * cols) for _ in range(2)]
    ctx.note(f"{count} rows of {row} in blocks of {block} x {cols}")
    turn = 0
    for r0 in range(0, count, block):
        rc = min(block, count - r0)
        local_rows = row_numbers[(r0 // block) % 2]
        load_rows(local_rows, r0, rc, scratch)
        for c0 in range(0, row, cols):
            cc = min(cols, row - c0)
            buffer = buffers[turn % 2]
            turn += 1
            ctx.dma_in(buffer, updates.window(0, r0, r0 + rc).window(1, c0, c0 + cc))
            indexed_dma(ctx, "dma_scatter", table.addr + c0 * esize, dtype, local_rows, rc, cc, row, table.shape[0],
                        buffer)


def _row_numbers(ctx: CodegenContext, tuples: View, axes: tuple[int, ...], rows: int, scratch: int) -> None:
    """rows = the int32 row number of each run-time index tuple (tuples [count, k]), -1 for a tuple
    with a component outside its axis; `scratch` holds SCRATCH_BYTES_PER_ROW bytes per tuple."""
    count = tuples.shape[0]
    shape = dict(rows=1, cols=count, dst_rs=count, a_rs=count, a_cs=1)
    with_b = dict(b_rs=count, b_cs=1, **shape)
    emit = ctx.emitter.emit
    # int32 component, int32 "some component is outside its axis" flags, load_indices' 8-byte staging
    component, outside, staging = scratch, scratch + 4 * count, scratch + 8 * count
    flag = staging  # free again once a component is loaded

    def component_view(i: int) -> View:
        return View(tuples.addr + i * tuples.dtype.size, tuples.dtype, (count,), (tuples.strides[0],))

    load_indices(ctx, component_view(0), axes[0], rows, staging)
    if len(axes) == 1:
        return  # a wrapped component outside [0, n) is outside the table: the run stops
    _flag_outside(ctx, rows, axes[0], outside, flag, shape, first=True)
    for i, n in enumerate(axes[1:], start=1):
        emit("vmuli", dtype=DType.I32, dst=rows, a=rows, imm=n, **shape)
        load_indices(ctx, component_view(i), n, component, staging)
        _flag_outside(ctx, component, n, outside, flag, shape, first=False)
        emit("vadd", dtype=DType.I32, dst=rows, a=rows, b=component, **with_b)
    # rows - outside * (rows + 1): -1 where flagged (exact even where the products wrapped), rows elsewhere
    emit("vaddi", dtype=DType.I32, dst=flag, a=rows, imm=1, **shape)
    emit("vmul", dtype=DType.I32, dst=flag, a=flag, b=outside, **with_b)
    emit("vsub", dtype=DType.I32, dst=rows, a=rows, b=flag, **with_b)


def _flag_outside(ctx: CodegenContext, component: int, n: int, outside: int, flag: int, shape: dict,
                  first: bool) -> None:
    """outside (|)= component < 0 or component >= n, as int32 0/1."""
    emit = ctx.emitter.emit
    with_b = dict(b_rs=shape["cols"], b_cs=1, **shape)
    emit("vlti", dtype=DType.I32, dst=outside if first else flag, a=component, imm=0, **shape)
    if not first:
        emit("vor", dtype=DType.I32, dst=outside, a=outside, b=flag, **with_b)
    emit("vgei", dtype=DType.I32, dst=flag, a=component, imm=n, **shape)
    emit("vor", dtype=DType.I32, dst=outside, a=outside, b=flag, **with_b)
