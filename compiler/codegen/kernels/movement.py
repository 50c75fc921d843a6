"""Data-movement kernels: Transpose, Concat, Split, Slice, Pad, Expand, Tile, Gather,
DepthToSpace, SpaceToDepth and Resize.

Most of these ops are one strided copy: the output, or a window of it, receives a view of
the input whose strides say what the op does (a transpose permutes them, a broadcast has
stride 0, a slice steps). `Stager.copy` moves such a view DRAM -> scratchpad -> DRAM in
chunks of a quarter of the scratchpad, rotating buffers so that loads overlap stores; a
chunk whose source is the one just loaded (a broadcast) is stored again without reloading.
When the output's rows are read with a stride (an innermost transpose or broadcast), the
vector unit reorders each chunk in local memory so that both DMAs move whole rows. DMA
strides are unsigned, so a view read backwards (a negative Slice step, reflect padding)
is gathered instead, with `dma_gather` and a constant table of element offsets.

Gather and Resize use `dma_gather` with index tables. Gather's run-time indices are
loaded, narrowed from int64 by `vcvt` and wrapped (idx + n where idx < 0) on the vector
unit; constant indices are normalised at compile time. Resize works one axis at a time
from tables the ONNX coordinate transform gives at compile time: nearest gathers (or, when
the table is a repeat or a stride, is a plain strided copy), linear gathers both
neighbours and blends them on the vector unit with constant per-row or per-column weights.
Every byte the model moves is moved by the accelerator; only tables derived from
attributes and shapes are computed at compile time.
"""

from __future__ import annotations

import itertools
import math

import numpy as np

from compiler.codegen.context import LOCAL_ALIGN, CodegenContext, View, unsupported
from compiler.codegen.kernels.elementwise import merge_joint
from compiler.ir import Node
from isa.dtypes import DType
from isa.spec import vector_pass_cycles

MAX_FIELD = (1 << 16) - 1  # widest rows / n0 / ls1 of dma_gather, and rows / cols of a vector op
MAX_GATHER_STRIDE = (1 << 24) - 1  # ds1 of dma_gather, in elements
MAX_COL_STRIDE = (1 << 8) - 1  # a_cs of a vector op
# Types vmov moves bit for bit, and the vector type it moves them as (f32 as i32: no float rounding).
VECTOR_MOVE = {DType.F32: DType.I32, DType.I32: DType.I32, DType.I8: DType.I8, DType.U8: DType.U8,
               DType.BOOL: DType.U8}
VECTOR_FILL = {DType.F32: DType.F32, DType.BF16: DType.BF16, DType.I8: DType.I8, DType.U8: DType.U8,
               DType.I32: DType.I32, DType.BOOL: DType.U8}  # i64 has no vector type: its fill comes from DRAM


# Copies and fills through the scratchpad ---------------------------------------------------------
def _chunks(shape, strides, capacity: int, limits: dict | None = None):
    """Cut a copy of `shape` (one stride tuple per view) into chunks of at most `capacity` elements.

    Yields (offset per view, chunk shape, chunk strides per view). The innermost dimensions
    go whole into a chunk while they fit (and stay within `limits`, a count per dimension)
    and the next one is cut; the rest are looped, those the first view broadcasts (stride 0)
    innermost so that equal source chunks come back to back."""
    limits = limits or {}
    inner, whole, cut, step = 1, [], None, 1
    for d in reversed(range(len(shape))):
        limit = limits.get(d, shape[d])
        if shape[d] <= limit and inner * shape[d] <= capacity:
            inner *= shape[d]
            whole.insert(0, d)
        else:
            cut, step = d, max(1, min(limit, capacity // inner))
            break
    loops = sorted([(d, step if d == cut else 1) for d in range(len(shape)) if d not in whole],
                   key=lambda loop: strides[0][loop[0]] == 0)
    dims = [d for d, _ in loops]
    chunk_dims = ([cut] if cut is not None else []) + whole
    for index in itertools.product(*(range(0, shape[d], s) for d, s in loops)):
        start = dict(zip(dims, index, strict=True))
        counts = [min(step, shape[d] - start[d]) if d == cut else shape[d] for d in chunk_dims]
        offsets = [sum(i * s[d] for i, d in zip(index, dims, strict=True)) for s in strides]
        yield offsets, tuple(counts), [tuple(s[d] for d in chunk_dims) for s in strides]


class Stager:
    """Copies DRAM views to DRAM views, and fills DRAM views with a constant, through the scratchpad.

    A copy whose destination rows are contiguous but whose source reads them with a stride
    (an innermost transpose) or not at all (an innermost broadcast) would cost one DRAM
    burst per element; when the estimate says so, each chunk is instead loaded compactly in
    the source's order and put in the destination's order on the vector unit (`vmov`, for
    the types it moves bit for bit), so that both DMAs move whole rows."""

    def __init__(self, ctx: CodegenContext, fill_elements: int = 0):
        self.ctx = ctx
        arena = ctx.scratchpad()
        self.buffer_bytes = arena.free // (5 if fill_elements else 4) // LOCAL_ALIGN * LOCAL_ALIGN
        self.buffers = [arena.alloc(self.buffer_bytes) for _ in range(4)]
        self.turn = 0
        self.fill_buffer = arena.alloc(self.buffer_bytes) if fill_elements else None
        self.fill_wanted = fill_elements
        self.fill_count = 0  # elements of fill_buffer that hold the fill value

    def copy(self, src: View, dst: View) -> None:
        """dst = src, element by element; src strides may be 0 (broadcast) or negative (read backwards)."""
        if src.shape != dst.shape or src.dtype.size != dst.dtype.size:
            raise ValueError(f"copy of {src.shape} {src.dtype.asm_name} to {dst.shape} {dst.dtype.asm_name}")
        if dst.size == 0:
            return
        shape, (src_strides, dst_strides) = merge_joint(dst.shape, [src.strides, dst.strides])
        src, dst = View(src.addr, src.dtype, shape, src_strides), View(dst.addr, dst.dtype, shape, dst_strides)
        if any(s < 0 for s in src_strides):
            _copy_backwards(self.ctx, src, dst)
        elif not self._copy_on_vector_unit(src, dst):
            self._copy_by_dma(src, dst)

    def _copy_by_dma(self, src: View, dst: View) -> None:
        esize = dst.dtype.size
        loaded = None
        for (src_offset, dst_offset), chunk, (s, d) in _chunks(dst.shape, [src.strides, dst.strides],
                                                                self.buffer_bytes // esize):
            source = View(src.addr + src_offset * esize, src.dtype, chunk, s)
            if source != loaded:
                self.turn = (self.turn + 1) % len(self.buffers)
                self.ctx.dma_in(self.buffers[self.turn], source)
                loaded = source
            self.ctx.dma_out(self.buffers[self.turn], View(dst.addr + dst_offset * esize, dst.dtype, chunk, d))

    def _copy_on_vector_unit(self, src: View, dst: View) -> bool:
        """The vector-unit copy of the class docstring, if it applies and is estimated faster."""
        shape, ss, ds = dst.shape, src.strides, dst.strides
        last = len(shape) - 1
        move = VECTOR_MOVE.get(src.dtype)
        if move is None or last == 0 or ds[last] != 1 or ss[last] == 1 or shape[last] > MAX_FIELD:
            return False
        limits = {}
        if ss[last]:  # a transpose: one source dimension must be contiguous and the only one inside `last`
            inside = [d for d in range(last) if 0 < ss[d] < ss[last]]
            if len(inside) != 1 or ss[inside[0]] != 1:
                return False
            limits[inside[0]] = MAX_COL_STRIDE
        esize = src.dtype.size
        chunks = list(_chunks(shape, [ss, ds], self.buffer_bytes // esize, limits=limits))
        config = self.ctx.config
        vector_cycles = dma_cycles = 0
        _, first, (first_strides, _) = chunks[0]
        if len(first) < 2 or (ss[last] and _vmov_plan(first, first_strides)[1][-1] < 2):
            return False  # the chunks hold no whole source rows
        for _, chunk, (s, _) in chunks:
            _, compact, vmovs, rows, _ = _vmov_plan(chunk, s)
            if compact[-1] > MAX_COL_STRIDE:
                return False
            vector_cycles += vmovs * vector_pass_cycles(config, rows, chunk[-1])
            dma_cycles += math.prod(chunk)  # a DRAM burst per element
        if vector_cycles >= 0.75 * dma_cycles:
            return False
        loaded = None
        for (src_offset, dst_offset), chunk, (s, d) in chunks:
            order, _, _, _, loops = _vmov_plan(chunk, s)
            source = View(src.addr + src_offset * esize, src.dtype, tuple(chunk[i] for i in order),
                          tuple(s[i] for i in order))
            if source != loaded:
                self.turn = (self.turn // 2 * 2 + 2) % 4  # the next pair of buffers
                compact, ordered = self.buffers[self.turn], self.buffers[self.turn + 1]
                self.ctx.dma_in(compact, source)
                for a_offset, b_offset, fields in loops:
                    self.ctx.emitter.emit("vmov", dtype=move, dst=ordered + b_offset * esize,
                                          a=compact + a_offset * esize, **fields)
                loaded = source
            self.ctx.dma_out(self.buffers[self.turn + 1], View(dst.addr + dst_offset * esize, dst.dtype, chunk, d))
        return True

    def fill(self, dst: View, value: float) -> None:
        """Every element of dst = value (converted to dst's type); all fills of one Stager use one value."""
        if dst.size == 0:
            return
        if self.fill_buffer is None:
            raise ValueError("this Stager was made without a fill buffer")
        esize = dst.dtype.size
        if not self.fill_count:
            self._prepare_fill(dst.dtype, value, min(self.fill_wanted, self.buffer_bytes // esize))
        shape, (strides,) = merge_joint(dst.shape, [dst.strides])
        for (offset,), chunk, (s,) in _chunks(shape, [strides], self.fill_count):
            self.ctx.dma_out(self.fill_buffer, View(dst.addr + offset * esize, dst.dtype, chunk, s))

    def _prepare_fill(self, dtype: DType, value: float, count: int) -> None:
        typed = np.asarray(value).astype(dtype.numpy)
        if dtype in VECTOR_FILL:
            cols = min(count, MAX_FIELD)
            rows = count // cols
            vector = VECTOR_FILL[dtype]
            imm = float(typed) if vector.is_float else int(typed)
            self.ctx.emitter.emit("vfill", dtype=vector, dst=self.fill_buffer, dst_rs=cols, imm=imm, rows=rows,
                                  cols=cols)
            self.fill_count = rows * cols
        else:
            count = min(count, 1024)  # from a constant in DRAM: keep it small
            self.ctx.dma_in(self.fill_buffer, self.ctx.constant(np.full(count, typed), dtype, "fill"))
            self.fill_count = count


def _vmov_plan(chunk: tuple[int, ...], src_strides: tuple[int, ...]):
    """How the vector unit reorders one chunk, loaded compactly in the source's order (the
    dimensions it reads, by decreasing stride), into the destination's dense order.

    Returns (load order, compact strides, number of vmovs, rows per vmov, [(compact offset,
    dense offset, vmov fields)]): each vmov writes whole destination rows (the last
    dimension, read with column stride compact[-1], 0 for a broadcast) for one run of
    another dimension, merged where both layouts allow; the rest are looped."""
    order = sorted((i for i, n in enumerate(chunk) if src_strides[i] != 0), key=lambda i: -src_strides[i])
    compact = [0] * len(chunk)
    step = 1
    for i in reversed(order):
        compact[i] = step
        step *= chunk[i]
    dense = View.dense(0, DType.U8, chunk).strides
    cols = chunk[-1]
    groups, (a_strides, b_strides) = merge_joint(chunk[:-1], [tuple(compact[:-1]), tuple(dense[:-1])])
    fits = [g for g in range(len(groups)) if a_strides[g] <= MAX_FIELD and b_strides[g] <= MAX_FIELD]
    row = max(fits, key=lambda g: groups[g]) if fits else None
    rows = groups[row] if row is not None else 1
    fields = dict(rows=rows, cols=cols, dst_rs=b_strides[row] if row is not None else cols,
                  a_rs=a_strides[row] if row is not None else 0, a_cs=compact[-1])
    others = [g for g in range(len(groups)) if g != row]
    loops = []
    for index in itertools.product(*(range(groups[g]) for g in others)):
        loops.append((sum(i * a_strides[g] for i, g in zip(index, others, strict=True)),
                      sum(i * b_strides[g] for i, g in zip(index, others, strict=True)), fields))
    return order, compact, len(loops), rows, loops


def indexed_dma(ctx: CodegenContext, mnemonic: str, table: int, dtype: DType, index: int, rows: int, n0: int,
                ds1: int, limit: int, local: int) -> None:
    """dma_gather: local[r, 0:n0] = the DRAM row index[r] of the table at `table` (rows ds1 elements apart,
    `limit` rows); dma_scatter: that DRAM row = local[r, 0:n0]. The local rows are dense."""
    esize = dtype.size
    if esize == 8:  # 8-byte elements move as pairs of 4-byte words
        esize, n0, ds1 = 4, 2 * n0, 2 * ds1
    ctx.emitter.emit(mnemonic, dram=table, local=local, index=index, rows=rows, n0=n0, ds1=ds1, ls1=n0,
                     limit=limit, esize=esize)


def _copy_backwards(ctx: CodegenContext, src: View, dst: View) -> None:
    """Copy a view with negative strides: dma_gather reads it, one row per contiguous run,
    with a constant table of element offsets (ds1 = 1) from the chunk's lowest address."""
    esize = src.dtype.size
    arena = ctx.scratchpad()
    capacity = min(MAX_FIELD // (2 if esize == 8 else 1), (arena.free - 3 * LOCAL_ALIGN) // (2 * esize + 4))
    index = arena.alloc(4 * capacity)
    buffers = [arena.alloc(esize * capacity) for _ in range(2)]
    loaded = None
    for turn, ((src_offset, dst_offset), chunk, (s, d)) in enumerate(
            _chunks(src.shape, [src.strides, dst.strides], capacity)):
        run = chunk[-1] if s[-1] == 1 else 1
        unit_shape, unit_strides = (chunk[:-1], s[:-1]) if run > 1 else (chunk, s)
        offsets = np.zeros(unit_shape, dtype=np.int64)
        for axis, (n, stride) in enumerate(zip(unit_shape, unit_strides, strict=True)):
            offsets = offsets + (np.arange(n) * stride).reshape((n,) + (1,) * (len(unit_shape) - axis - 1))
        offsets = offsets.reshape(-1)
        low = int(offsets.min())
        table = ctx.constant((offsets - low).astype(np.int32), DType.I32, "backwards offsets")
        if table != loaded:
            ctx.dma_in(index, table)
            loaded = table
        buffer = buffers[turn % 2]
        indexed_dma(ctx, "dma_gather", src.addr + (src_offset + low) * esize, src.dtype, index, offsets.size, run,
                    1, int(offsets.max()) - low + 1, buffer)
        ctx.dma_out(buffer, View(dst.addr + dst_offset * esize, dst.dtype, chunk, d))


# Ops that are one copy per input or output ---------------------------------------------------------
def transpose_kernel(ctx: CodegenContext, node: Node) -> None:
    Stager(ctx).copy(ctx.view(node.inputs[0]).transpose(node.attrs["perm"]), ctx.view(node.outputs[0]))


def concat_kernel(ctx: CodegenContext, node: Node) -> None:
    out, axis = ctx.view(node.outputs[0]), node.attrs["axis"]
    stager, start = Stager(ctx), 0
    for name in node.inputs:
        part = ctx.view(name)
        stager.copy(part, out.window(axis, start, start + part.shape[axis]))
        start += part.shape[axis]


def split_kernel(ctx: CodegenContext, node: Node) -> None:
    source, axis = ctx.view(node.inputs[0]), node.attrs["axis"]
    stager, start = Stager(ctx), 0
    for name, size in zip(node.outputs, node.attrs["split"], strict=True):
        if name:
            stager.copy(source.window(axis, start, start + size), ctx.view(name))
        start += size


def slice_kernel(ctx: CodegenContext, node: Node) -> None:
    view = ctx.view(node.inputs[0])
    a = node.attrs
    for axis, (start, end, step) in enumerate(zip(a["starts"], a["ends"], a["steps"], strict=True)):
        view = view.window(axis, start, end, step)
    Stager(ctx).copy(view, ctx.view(node.outputs[0]))


def expand_kernel(ctx: CodegenContext, node: Node) -> None:
    out = ctx.view(node.outputs[0])
    Stager(ctx).copy(ctx.view(node.inputs[0]).broadcast_to(out.shape), out)


def tile_kernel(ctx: CodegenContext, node: Node) -> None:
    """Output axis i, seen as (repeats[i], n_i), is the input's axis i broadcast over the repeats."""
    source, out = ctx.view(node.inputs[0]), ctx.view(node.outputs[0])
    src_shape, src_strides, dst_strides = [], [], []
    for n, repeats, stride, out_stride in zip(source.shape, node.attrs["repeats"], source.strides, out.strides,
                                              strict=True):
        src_shape += [repeats, n]
        src_strides += [0, stride]
        dst_strides += [n * out_stride, out_stride]
    Stager(ctx).copy(View(source.addr, source.dtype, tuple(src_shape), tuple(src_strides)),
                     View(out.addr, out.dtype, tuple(src_shape), tuple(dst_strides)))


def depth_to_space_kernel(ctx: CodegenContext, node: Node) -> None:
    source, out = ctx.view(node.inputs[0]), ctx.view(node.outputs[0])
    n, c, h, w = source.shape
    b = node.attrs["blocksize"]
    if node.attrs.get("mode", "DCR") == "DCR":
        view = source.reshape_dense((n, b, b, c // (b * b), h, w)).transpose((0, 3, 4, 1, 5, 2))
    else:
        view = source.reshape_dense((n, c // (b * b), b, b, h, w)).transpose((0, 1, 4, 2, 5, 3))
    Stager(ctx).copy(view, out.reshape_dense((n, c // (b * b), h, b, w, b)))


def space_to_depth_kernel(ctx: CodegenContext, node: Node) -> None:
    source, out = ctx.view(node.inputs[0]), ctx.view(node.outputs[0])
    n, c, h, w = source.shape
    b = node.attrs["blocksize"]
    blocks = source.reshape_dense((n, c, h // b, b, w // b, b))
    if node.attrs.get("mode", "DCR") == "DCR":
        Stager(ctx).copy(blocks.transpose((0, 3, 5, 1, 2, 4)), out.reshape_dense((n, b, b, c, h // b, w // b)))
    else:
        Stager(ctx).copy(blocks.transpose((0, 1, 3, 5, 2, 4)), out.reshape_dense((n, c, b, b, h // b, w // b)))


# Pad -----------------------------------------------------------------------------------------------
def _pad_sources(n: int, before: int, after: int, mode: str) -> np.ndarray:
    """For every output index along one axis, the input index it copies, or -1 for the constant.

    Negative pads crop first; the rest pads what is left (as onnxruntime does)."""
    kept = np.arange(max(-before, 0), n - max(-after, 0))
    grow = (max(before, 0), max(after, 0))
    if mode == "constant":
        return np.concatenate([np.full(grow[0], -1), kept, np.full(grow[1], -1)]).astype(np.int64)
    return kept[np.pad(np.arange(len(kept)), grow, mode=mode)]  # ONNX's reflect, edge and wrap are numpy's


def _runs(sources: np.ndarray) -> list[tuple[int, int, int | None, int]]:
    """Split an index map into runs (out start, length, source start or None for the constant, source step)."""
    runs, start, total = [], 0, len(sources)
    while start < total:
        first = int(sources[start])
        end = start + 1
        if first < 0:
            while end < total and sources[end] < 0:
                end += 1
            runs.append((start, end - start, None, 0))
        else:
            step = int(sources[end] - first) if end < total and sources[end] >= 0 else 0
            while end < total and sources[end] >= 0 and sources[end] - sources[end - 1] == step:
                end += 1
            runs.append((start, end - start, first, step))
        start = end
    return runs


def pad_kernel(ctx: CodegenContext, node: Node) -> None:
    """The output is a grid of boxes, per axis a run of the constant or of input indices with one step."""
    source, out = ctx.view(node.inputs[0]), ctx.view(node.outputs[0])
    mode, pads, rank = node.attrs.get("mode", "constant"), node.attrs["pads"], len(source.shape)
    if mode not in ("constant", "reflect", "edge", "wrap"):
        raise unsupported(node, f"mode {mode!r}")
    if out.size == 0:
        return
    kept = [n - max(-pads[i], 0) - max(-pads[rank + i], 0) for i, n in enumerate(source.shape)]
    if mode != "constant" and min(kept, default=1) <= 0:
        raise unsupported(node, f"{mode} padding of an empty tensor")
    axes_runs = [_runs(_pad_sources(n, pads[i], pads[rank + i], mode)) for i, n in enumerate(source.shape)]
    boxes = list(itertools.product(*axes_runs))
    constant_sizes = [math.prod(r[1] for r in box) for box in boxes if any(r[2] is None for r in box)]
    stager = Stager(ctx, fill_elements=max(constant_sizes, default=0))
    for box in boxes:
        target = out
        for axis, (start, length, _, _) in enumerate(box):
            target = target.window(axis, start, start + length)
        if any(first is None for _, _, first, _ in box):
            stager.fill(target, node.attrs.get("value", 0.0))
            continue
        offset = sum(first * stride for (_, _, first, _), stride in zip(box, source.strides, strict=True))
        strides = tuple(step * stride for (_, _, _, step), stride in zip(box, source.strides, strict=True))
        stager.copy(View(source.addr + offset * source.dtype.size, source.dtype, target.shape, strides), target)


# Gather --------------------------------------------------------------------------------------------
def gather_kernel(ctx: CodegenContext, node: Node) -> None:
    """out[p, k, :] = data[p, indices[k], :], with p the axes before `axis` and the rows `:` the axes after.

    One dma_gather fetches the rows of a block of indices for several consecutive p at once:
    the index block is tiled over them as p * n + index (at compile time for constant
    indices, by a broadcast vadd for run-time ones). An index outside [-n, n) still stops
    the run: once wrapped it is negative in the first tiled p or past the table in the last."""
    data, out = ctx.view(node.inputs[0]), ctx.view(node.outputs[0])
    indices = ctx.graph.values[node.inputs[1]]
    axis = node.attrs["axis"]
    pre, n, post = math.prod(data.shape[:axis]), data.shape[axis], math.prod(data.shape[axis + 1:])
    count, esize = indices.size, data.dtype.size
    if out.size == 0:
        return
    words = 2 if esize == 8 else 1
    if post * words > MAX_GATHER_STRIDE:
        raise unsupported(node, f"rows of {post} elements are wider than dma_gather's row stride field")
    arena = ctx.scratchpad()
    free = arena.free  # half for two data buffers, a quarter for two index tables, the rest for scratch
    buffer_bytes = free // 4 // LOCAL_ALIGN * LOCAL_ALIGN
    cols = min(post, buffer_bytes // esize, MAX_FIELD // words)
    rows = min(MAX_FIELD, buffer_bytes // esize // cols, free // 32)  # rows per gather
    chunk = min(count, MAX_FIELD, free // 128)  # indices per block
    planes = max(1, min(pre, rows // chunk))  # values of p per gather
    index_buffers = [arena.alloc(4 * chunk * planes) for _ in range(2)]
    scratch = arena.alloc(8 * chunk)
    buffers = [arena.alloc(buffer_bytes) for _ in range(2)]
    if indices.is_const:
        flat = indices.const.reshape(-1).astype(np.int64)
        flat = np.where(flat < 0, flat + n, flat)
        flat = np.where((flat < 0) | (flat >= n), planes * n, flat)  # outside every tiled table, even in int32
        source = None
    else:
        source = ctx.view(node.inputs[1]).reshape_dense((count,))
        offsets = ctx.constant(n * np.arange(planes), DType.I32, f"{node.name}.planes") if planes > 1 else None
        local_offsets = arena.alloc(4 * planes) if offsets else None
        if offsets:
            ctx.dma_in(local_offsets, offsets)
    out3 = View.dense(out.addr, out.dtype, (pre, count, post))
    turn = 0
    for k0 in range(0, count, chunk):
        kc = min(chunk, count - k0)
        index = index_buffers[(k0 // chunk) % 2]
        if source is None:
            tiled = flat[None, k0:k0 + kc] + n * np.arange(planes)[:, None]
            ctx.dma_in(index, ctx.constant(tiled.reshape(-1), DType.I32, f"{node.name}.indices"))
        else:
            load_indices(ctx, source.window(0, k0, k0 + kc), n, index, scratch)
            if planes > 1:  # rows p = 1.. of the table: index + p * n
                ctx.emitter.emit("vadd", dtype=DType.I32, dst=index + 4 * kc, dst_rs=kc, a=index, a_rs=0, a_cs=1,
                                 b=local_offsets + 4, b_rs=1, b_cs=0, rows=planes - 1, cols=kc)
        step = kc if planes > 1 else rows
        for p0, c0, r0 in itertools.product(range(0, pre, planes), range(0, post, cols), range(0, kc, step)):
            pc, cc, rc = min(planes, pre - p0), min(cols, post - c0), min(step, kc - r0)
            buffer = buffers[turn % 2]
            turn += 1
            indexed_dma(ctx, "dma_gather", data.addr + (p0 * n * post + c0) * esize, data.dtype, index + 4 * r0,
                        pc * rc, cc, post, pc * n, buffer)
            ctx.dma_out(buffer, out3.window(0, p0, p0 + pc).window(1, k0 + r0, k0 + r0 + rc).window(2, c0, c0 + cc))


def load_indices(ctx: CodegenContext, source: View, n: int, index: int, scratch: int) -> None:
    """index = int32 source (int64 narrowed by vcvt, saturating), plus n where negative."""
    count = source.size
    row = dict(rows=1, cols=count, dst_rs=count, a_rs=count, a_cs=1)
    if source.dtype is DType.I64:
        ctx.dma_in(scratch, source)
        ctx.emitter.emit("vcvt", dtype=DType.I32, src_dtype=DType.I64, dst=index, a=scratch, **row)
    else:
        ctx.dma_in(index, source)
    ctx.emitter.emit("vlti", dtype=DType.I32, dst=scratch, a=index, imm=0, **row)
    ctx.emitter.emit("vmuli", dtype=DType.I32, dst=scratch, a=scratch, imm=n, **row)
    ctx.emitter.emit("vadd", dtype=DType.I32, dst=index, a=index, b=scratch, b_rs=count, b_cs=1, **row)


# Resize --------------------------------------------------------------------------------------------
COORDINATE_TRANSFORMS = ("half_pixel", "half_pixel_symmetric", "pytorch_half_pixel", "align_corners", "asymmetric",
                         "tf_half_pixel_for_nn")


def source_coordinates(transform: str, n_in: int, n_out: int, scale: float) -> np.ndarray:
    """Input coordinate of every output index along one axis (ONNX Resize, as onnx's reference computes it)."""
    y = np.arange(n_out, dtype=np.float64)
    length = scale * n_in  # the reference uses the unrounded output length
    if transform == "align_corners":
        return np.zeros(n_out) if length == 1 else y * (n_in - 1) / (length - 1)
    if transform == "asymmetric":
        return y / scale
    if transform == "tf_half_pixel_for_nn":  # opset 11 only
        return (y + 0.5) / scale
    if transform == "pytorch_half_pixel" and length == 1:
        return np.full(n_out, -0.5)
    offset = 0.0
    if transform == "half_pixel_symmetric":
        offset = n_in / 2 * (1 - n_out / length)
    return offset + (y + 0.5) / scale - 0.5


def nearest_indices(x: np.ndarray, nearest_mode: str, n_in: int) -> np.ndarray:
    floor = np.floor(x)
    fraction = x - floor
    rounded = {"round_prefer_floor": np.where(fraction <= 0.5, floor, floor + 1),
               "round_prefer_ceil": np.where(fraction < 0.5, floor, floor + 1),
               "floor": floor, "ceil": np.ceil(x)}[nearest_mode]
    return np.clip(rounded, 0, n_in - 1).astype(np.int64)


def linear_neighbours(x: np.ndarray, n_in: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(left index, right index, weight of the right one), both indices clamped to the axis (edge padding)."""
    floor = np.floor(x)
    left = np.clip(floor, 0, n_in - 1).astype(np.int64)
    right = np.clip(floor + 1, 0, n_in - 1).astype(np.int64)
    weight = np.where(left == right, 0.0, x - floor)
    return left, right, weight


def _nearest_as_view(first: np.ndarray, n_in: int) -> tuple[str, int, int] | None:
    """("step", start, step) when the table is an arithmetic progression, ("repeat", times, 0) when it
    repeats every input index `times` times, None otherwise."""
    n_out = len(first)
    steps = np.diff(first)
    if n_out == 1 or (steps == steps[0]).all() and steps[0] >= 0:
        return "step", int(first[0]), int(steps[0]) if n_out > 1 else 0
    if n_out % n_in == 0 and (first == np.arange(n_out) // (n_out // n_in)).all():
        return "repeat", n_out // n_in, 0
    return None


def resize_kernel(ctx: CodegenContext, node: Node) -> None:
    """One pass per resampled axis (gathers), the axes that are strided copies together in one last pass."""
    source, out = ctx.view(node.inputs[0]), ctx.view(node.outputs[0])
    a = node.attrs
    mode, transform = a.get("mode", "nearest"), a.get("coordinate_transformation_mode", "half_pixel")
    if mode not in ("nearest", "linear"):
        raise unsupported(node, f"mode {mode!r}")
    if transform not in COORDINATE_TRANSFORMS:
        raise unsupported(node, f"coordinate_transformation_mode {transform!r}")
    if mode == "linear" and source.dtype not in (DType.F32, DType.BF16):
        raise unsupported(node, f"linear resize of {source.dtype.asm_name}")
    if out.size == 0:
        return
    if source.size == 0:
        raise unsupported(node, "resize of an empty tensor to a non-empty one")
    gathers, views = [], {}
    for axis, (n_in, n_out) in enumerate(zip(source.shape, out.shape, strict=True)):
        x = source_coordinates(transform, n_in, n_out, float(a["scales"][axis]))
        if mode == "nearest":
            first, second, weight = nearest_indices(x, a.get("nearest_mode", "round_prefer_floor"), n_in), None, None
        else:
            first, second, weight = linear_neighbours(x, n_in)
            if not weight.any():
                second = weight = None
        if weight is None and n_in == n_out and (first == np.arange(n_in)).all():
            continue
        as_view = _nearest_as_view(first, n_in) if weight is None else None
        if as_view:
            views[axis] = as_view
        else:
            gathers.append((axis, first, second, weight))
    passes = len(gathers) + bool(views)
    current, shape = source, list(source.shape)
    if not passes:
        Stager(ctx).copy(source, out)
    for done, (axis, first, second, weight) in enumerate(gathers, start=1):
        shape[axis] = out.shape[axis]
        target = out if done == passes else ctx.allocate(tuple(shape), source.dtype)
        if axis == len(shape) - 1 and _rows_beat_elements(ctx, current, len(first), weight is not None):
            _resample_last_axis_as_rows(ctx, node, current, target, first, second, weight)
        else:
            _resample_axis(ctx, node, current, target, axis, first, second, weight)
        current = target
    if views:
        _resample_views(ctx, current, out, views)


def _resample_views(ctx: CodegenContext, source: View, out: View, views: dict) -> None:
    """Nearest resampling on the axes whose table is a stride or a repeat: one strided copy."""
    src_shape, src_strides, dst_shape, dst_strides, offset = [], [], [], [], 0
    for axis, (n, stride, out_stride) in enumerate(zip(out.shape, source.strides, out.strides, strict=True)):
        kind, first, step = views.get(axis, ("step", 0, 1))
        if kind == "step":
            offset += first * stride
            src_shape.append(n)
            src_strides.append(step * stride)
            dst_shape.append(n)
            dst_strides.append(out_stride)
        else:  # repeat `first` times: the output axis is (input index, copy)
            times = first
            src_shape += [n // times, times]
            src_strides += [stride, 0]
            dst_shape += [n // times, times]
            dst_strides += [times * out_stride, out_stride]
    Stager(ctx).copy(View(source.addr + offset * source.dtype.size, source.dtype, tuple(src_shape),
                          tuple(src_strides)), View(out.addr, out.dtype, tuple(dst_shape), tuple(dst_strides)))


def _rows_beat_elements(ctx: CodegenContext, source: View, n_out: int, linear: bool) -> bool:
    """Whether resampling the last axis is cheaper as transpose, row gathers, transpose back (all
    whole DRAM rows) than as gathers of single elements (a DRAM burst each)."""
    n_in = source.shape[-1]
    pre = source.size // n_in
    if source.dtype not in VECTOR_MOVE or pre < 2:
        return False
    gathers = 2 if linear else 1
    bursts = -(-source.dtype.size // ctx.config.dram_bytes_per_cycle)
    element_cycles = gathers * pre * n_out * bursts
    moved = 2 * pre * n_in + (gathers + 1) * pre * n_out + 2 * pre * n_out  # elements in and out of DRAM
    return moved * source.dtype.size / ctx.config.dram_bytes_per_cycle < 0.75 * element_cycles


def _resample_last_axis_as_rows(ctx: CodegenContext, node: Node, source: View, out: View, first: np.ndarray,
                                second: np.ndarray | None, weight: np.ndarray | None) -> None:
    n_in, n_out = source.shape[-1], out.shape[-1]
    pre = source.size // n_in
    flipped = ctx.allocate((n_in, pre), source.dtype)
    Stager(ctx).copy(source.reshape_dense((pre, n_in)).transpose((1, 0)), flipped)
    resampled = ctx.allocate((n_out, pre), source.dtype)
    _resample_axis(ctx, node, flipped, resampled, 0, first, second, weight)
    Stager(ctx).copy(resampled.transpose((1, 0)), out.reshape_dense((pre, n_out)))


def _resample_axis(ctx: CodegenContext, node: Node, source: View, out: View, axis: int, first: np.ndarray,
                   second: np.ndarray | None, weight: np.ndarray | None) -> None:
    """Resample one axis of a dense tensor: out[p, i, :] = source[p, first[i], :] (nearest), or, linear,
    a + weight[i] * (b - a) with a = source[p, first[i], :] and b = source[p, second[i], :].

    The source is a DRAM table of rows (everything after `axis`, contiguous); a chunk of
    output rows is gathered from a constant table of row indices, tiled over as many
    outer indices p as fit, and blended with the weights as a per-row column (or, when
    `axis` is the last one and rows are single elements, as a per-column row)."""
    pre, n_in = math.prod(source.shape[:axis]), source.shape[axis]
    n_out, post = out.shape[axis], math.prod(source.shape[axis + 1:])
    dtype, esize = source.dtype, source.dtype.size
    words = 2 if esize == 8 else 1
    if post * words > MAX_GATHER_STRIDE:
        raise unsupported(node, f"rows of {post} elements are wider than dma_gather's row stride field")
    linear = weight is not None
    convert = linear and dtype is not DType.F32
    tables = 3 if linear else 1  # int32 first, int32 second, f32 weight per row
    per_element = (2 * esize + (8 if convert else 0)) if linear else esize
    arena = ctx.scratchpad()
    half = arena.free // 2 - 8 * LOCAL_ALIGN  # room to align up to 7 buffers
    cols = min(post, MAX_FIELD // words, max(1, (half - 4 * tables) // per_element))
    units = min(MAX_FIELD, half // (4 * tables + cols * per_element))
    if n_out <= units:  # whole planes per chunk: the tables are tiled over `planes` outer indices
        planes = min(pre, units // n_out)
        chunks = [(p0, 0, min(planes, pre - p0) * n_out, min(planes, pre - p0) * n_in)
                  for p0 in range(0, pre, planes)]
    else:
        planes = 1
        chunks = [(p, j0, min(units, n_out - j0), n_in) for p in range(pre) for j0 in range(0, n_out, units)]
    tiled = [ctx.constant((np.asarray(t)[None, :] + n_in * np.arange(planes)[:, None]).reshape(-1), DType.I32,
                          f"{node.name}.rows") for t in ([first, second] if linear else [first])]
    if linear:
        tiled.append(ctx.constant(np.tile(weight, planes), DType.F32, f"{node.name}.weights"))
    # Whole planes use the same tables in every chunk: loaded once. Otherwise each chunk loads its part.
    shared = [arena.alloc(4 * units) for _ in range(tables)] if n_out <= units else None
    sets = [dict(tables=shared or [arena.alloc(4 * units) for _ in range(tables)],
                 data=[arena.alloc(esize * units * cols) for _ in range(2 if linear else 1)],
                 wide=[arena.alloc(4 * units * cols) for _ in range(2)] if convert else [])
            for _ in range(2)]
    for local, table in zip(shared or [], tiled, strict=False):
        ctx.dma_in(local, table)
    rows_view = View.dense(out.addr, out.dtype, (pre * n_out, post))
    turn = 0
    for (p0, j0, count, limit), c0 in itertools.product(chunks, range(0, post, cols)):
        cc = min(cols, post - c0)
        buffers = sets[turn % 2]
        turn += 1
        for local, table in zip([] if shared else buffers["tables"], tiled, strict=False):
            ctx.dma_in(local, table.window(0, j0, j0 + count))
        base = source.addr + (p0 * n_in * post + c0) * esize
        for local, index in zip(buffers["data"], buffers["tables"], strict=False):  # the weights are not indices
            indexed_dma(ctx, "dma_gather", base, dtype, index, count, cc, post, limit, local)
        if linear:
            if post > 1:  # rows of cc elements, one weight per row
                tile = dict(rows=count, cols=cc)
                weights = dict(b=buffers["tables"][2], b_rs=1, b_cs=0)
            else:  # single elements: rows of the output axis, one weight per column
                width = min(count, n_out)
                tile = dict(rows=count // width, cols=width)
                weights = dict(b=buffers["tables"][2], b_rs=width, b_cs=1)
            _blend(ctx, buffers, dtype, tile, weights)
        q0 = p0 * n_out + j0
        ctx.dma_out(buffers["data"][0], rows_view.window(0, q0, q0 + count).window(1, c0, c0 + cc))


def _blend(ctx: CodegenContext, buffers: dict, dtype: DType, tile: dict, weights: dict) -> None:
    """data[0] = a + w * (b - a) on the vector unit, in f32 (bf16 converted in and out)."""
    a, b = buffers["data"]
    shape = dict(dst_rs=tile["cols"], a_rs=tile["cols"], a_cs=1, **tile)
    if buffers["wide"]:
        wide_a, wide_b = buffers["wide"]
        ctx.emitter.emit("vcvt", dtype=DType.F32, src_dtype=dtype, dst=wide_a, a=a, **shape)
        ctx.emitter.emit("vcvt", dtype=DType.F32, src_dtype=dtype, dst=wide_b, a=b, **shape)
        a, b = wide_a, wide_b
    ctx.emitter.emit("vsub", dtype=DType.F32, dst=b, a=b, b=a, b_rs=tile["cols"], b_cs=1, **shape)
    ctx.emitter.emit("vmul", dtype=DType.F32, dst=b, a=b, **weights, **shape)
    ctx.emitter.emit("vadd", dtype=DType.F32, dst=a, a=a, b=b, b_rs=tile["cols"], b_cs=1, **shape)
    if buffers["wide"]:
        ctx.emitter.emit("vcvt", dtype=dtype, src_dtype=DType.F32, dst=buffers["data"][0], a=a, **shape)


MOVEMENT_KERNELS = {
    "Transpose": transpose_kernel, "Concat": concat_kernel, "Split": split_kernel, "Slice": slice_kernel,
    "Pad": pad_kernel, "Expand": expand_kernel, "Tile": tile_kernel, "Gather": gather_kernel,
    "DepthToSpace": depth_to_space_kernel, "SpaceToDepth": space_to_depth_kernel, "Resize": resize_kernel,
}
