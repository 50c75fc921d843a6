"""DRAM-to-DRAM building blocks that kernels share: fill a view with a value, copy a view.

Both go through the scratchpad in chunks that fit it, as accelerator instructions (vfill
and DMA); views may be strided, so a copy can also pad, slice or transpose.
"""

from __future__ import annotations

import math

from compiler.codegen.context import CodegenContext, View
from isa.dtypes import DType


def _chunks(shape: tuple[int, ...], limit: int):
    """Split `shape` into blocks of at most `limit` elements: yields (index of the block's
    first element per dimension, block shape); only whole inner dimensions are kept together."""
    inner = 1
    split_axis = len(shape)
    for axis in range(len(shape) - 1, -1, -1):
        if inner * shape[axis] > limit:
            split_axis = axis
            break
        inner *= shape[axis]
    else:
        yield (0,) * len(shape), tuple(shape)
        return
    step = max(1, limit // inner)
    outer = shape[:split_axis]
    for flat in range(math.prod(outer)):
        index = []
        rest = flat
        for n in reversed(outer):
            index.append(rest % n)
            rest //= n
        index.reverse()
        for start in range(0, shape[split_axis], step):
            count = min(step, shape[split_axis] - start)
            yield tuple(index) + (start,) + (0,) * (len(shape) - split_axis - 1), \
                (1,) * split_axis + (count,) + tuple(shape[split_axis + 1:])


def _block(view: View, start: tuple[int, ...], shape: tuple[int, ...]) -> View:
    offset = sum(i * s for i, s in zip(start, view.strides, strict=True))
    return View(view.addr + offset * view.dtype.size, view.dtype, shape, view.strides)


def fill(ctx: CodegenContext, view: View, value: float) -> None:
    """view[...] = value. Integer and bool views take int(value); i64 only 0 or -1."""
    spad = ctx.scratchpad()
    size = view.dtype.size
    capacity = min(spad.free // size, (1 << 16) - 1)
    buffer = spad.alloc(capacity * size)
    # bool fills as u8 and i64 as two i32 words: the same bytes for the values allowed.
    fill_dtype, words = {DType.BOOL: (DType.U8, 1), DType.I64: (DType.I32, 2)}.get(view.dtype, (view.dtype, 1))
    if view.dtype is DType.I64 and value not in (0, -1):
        raise ValueError(f"cannot fill i64 with {value}")
    imm = float(value) if fill_dtype.is_float else int(value)
    filled = 0
    for start, shape in _chunks(view.shape, capacity):
        count = math.prod(shape)
        if count > filled:
            ctx.emitter.emit("vfill", dtype=fill_dtype, dst=buffer, dst_rs=0, imm=imm, rows=1, cols=count * words)
            filled = count
        ctx.dma_out(buffer, _block(view, start, shape))


def copy(ctx: CodegenContext, source: View, target: View) -> None:
    """target[...] = source[...] (same shape; either may be strided)."""
    if source.shape != target.shape:
        raise ValueError(f"copy of {source.shape} into {target.shape}")
    spad = ctx.scratchpad()
    size = source.dtype.size
    capacity = min(spad.free // (2 * size) // 64 * 64, 1 << 16)
    buffers = [spad.alloc(capacity * size) for _ in range(2)]
    shape, (source_strides, target_strides) = _merge_pair(source, target)
    source = View(source.addr, source.dtype, shape, source_strides)
    target = View(target.addr, target.dtype, shape, target_strides)
    for number, (start, block) in enumerate(_chunks(shape, capacity)):
        buffer = buffers[number % 2]
        ctx.dma_in(buffer, _block(source, start, block))
        ctx.dma_out(buffer, _block(target, start, block))


def _merge_pair(a: View, b: View):
    """Merge dimensions contiguous in both views (fewer, larger DMAs)."""
    dims = [(n, sa, sb) for n, sa, sb in zip(a.shape, a.strides, b.strides, strict=True) if n != 1]
    if not dims:
        return (1,), ((1,), (1,))
    merged = [list(dims[-1])]
    for n, sa, sb in reversed(dims[:-1]):
        inner = merged[-1]
        if sa == inner[0] * inner[1] and sb == inner[0] * inner[2]:
            inner[0] *= n
        else:
            merged.append([n, sa, sb])
    merged.reverse()
    return tuple(m[0] for m in merged), (tuple(m[1] for m in merged), tuple(m[2] for m in merged))
