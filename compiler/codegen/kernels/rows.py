"""Row-wise ops and reductions on the vector unit: softmax, normalisations, Reduce*, ArgMax/ArgMin, LRN.

Each kernel sees its input as *segments*: the elements one result (or one set of statistics)
is computed over. The input is viewed, by strides alone, as [outer..., reduced..., inner]:

- inner == 1 (the reduced axes are innermost): *row* orientation. A tile holds n segments
  as rows of m elements; a statistic (one value per segment) broadcasts back along its row
  with column stride 0.
- inner > 1: *column* orientation. For one outer index, a tile holds m reduced elements as
  rows of n contiguous inner positions, so the segments are its columns. A row reduction
  reads the tile transposed (a_rs = 1, a_cs = n, hence n <= 255), or, when m is small and
  that would fill few lanes, the rows are halved with element-wise ops; a statistic
  broadcasts back as a row (row stride 0). No transposing copy is ever made.

A segment longer than one tile is reduced in chunks whose partial results are combined
(sum: add, max/min, product, softmax: rescaled online); normalisations then pass over the
chunks again to write the output. A segment that fits one tile is loaded once. Chunks
alternate between two sets of buffers so that DMA overlaps the vector unit.

A `SegmentOp` says what to compute per chunk and per group of segments; `run_segments`
does the tiling, the DMA and the buffers. LRN (a sliding window across channels) has its
own loop.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from compiler.codegen.context import LOCAL_ALIGN, CodegenContext, LocalArena, View, accelerator_dtype, unsupported
from compiler.codegen.kernels.elementwise import SharedZero, StepProgram, Tile, TileBuilder, merge_joint, step_program
from compiler.codegen.kernels.movement import indexed_dma, load_indices
from compiler.ir import Node
from compiler.ops import OPS
from compiler.shape_rules import Step, elementwise_steps, prologue_inputs, step_types
from isa.dtypes import DType
from isa.spec import FORMATS, vector_pass_cycles

if TYPE_CHECKING:  # epilogue.py imports this module
    from compiler.codegen.kernels.epilogue import Tail

F32 = DType.F32


def _field_limit(name: str) -> int:
    return (1 << next(f for f in FORMATS["v3"] if f.name == name).width) - 1


MAX_COL_STRIDE = _field_limit("a_cs")  # a transposed read's column stride: the column-orientation width
MAX_EXTENT = min(_field_limit(name) for name in ("rows", "cols", "a_rs", "dst_rs"))
EXACT_F32_INTEGERS = 1 << 24  # indices are computed as f32
RESIDENT_INDICES = 1 / 16  # the share of the scratchpad a prologue's gathered indices may keep for every row
ELEMENTWISE = {"sum": "vadd", "max": "vmax", "min": "vmin"}  # a reduction's element-wise step


class SegmentBuilder(TileBuilder):
    """A TileBuilder that can also write into a given tile (accumulators and in-place chains).
    Its results are always whole tiles: the row kernels address them directly."""

    FOLD_SCALARS = False

    def into(self, dst: Tile, op: str, a: Tile, b: Tile | float | None = None) -> Tile:
        if b is None:
            return self._emit(f"v{op}", dst, a=a)
        if isinstance(b, Tile):
            return self._emit(f"v{op}", dst, a=a, b=b)
        return self._emit(f"v{op}i", dst, a=a, imm=float(b))

    def select_into(self, dst: Tile, cond: Tile, a: Tile, b: Tile) -> Tile:
        return self._emit("vsel", dst, a=cond, b=a, c=b)

    def fill_into(self, dst: Tile, value: float) -> Tile:
        return self._emit("vfill", dst, imm=float(value))


# Chunks and statistics ---------------------------------------------------------------------------
@dataclass
class Chunk:
    """One loaded tile, in f32: n segments x m of their elements, and the element parameters for them."""

    ctx: CodegenContext
    rowwise: bool
    n: int
    m: int
    x: Tile
    params: list[Tile]  # per-element parameters, broadcast over the segments
    temps: list[int]
    scratch: int  # column orientation: ceil(m / 2) rows for reductions by halving
    kept: dict[str, Tile] = field(default_factory=dict)  # tiles a later pass over this same chunk reuses

    def builder(self) -> SegmentBuilder:
        """A builder over the tile; its temporaries avoid the kept tiles."""
        pinned = {tile.addr for tile in self.kept.values()}
        rows, cols = (self.n, self.m) if self.rowwise else (self.m, self.n)
        return SegmentBuilder(self.ctx, rows, cols, [t for t in self.temps if t not in pinned], F32)

    def per_segment(self, stat: Tile) -> Tile:
        """A statistic (one value per segment) as an operand broadcast along its segment."""
        return Tile(stat.addr, stat.dtype, 1, 0) if self.rowwise else Tile(stat.addr, stat.dtype, 0, 1)

    def reduce(self, op: str, a: Tile, dst: Tile) -> Tile:
        """dst[segment] = op (sum, max, min) over the segment's elements of the tile `a`.

        Row tiles use the row reduction. Column tiles use it reading the tile transposed, or,
        when that is cheaper (few rows: the transposed read fills few lanes), halve the rows
        with element-wise ops."""
        if self.rowwise:
            a_rs, a_cs = a.rs, a.cs
        elif self._halving_cycles() < self.n * -(-self.m // self.ctx.config.vector_lanes):
            return self._reduce_by_halving(op, a, dst)
        else:
            a_rs, a_cs = a.cs, a.rs
        self.ctx.emitter.emit(f"vr{op}", dtype=a.dtype, dst=dst.addr, dst_rs=1, a=a.addr, a_rs=a_rs, a_cs=a_cs,
                              rows=self.n, cols=self.m)
        return dst

    def _halving_cycles(self) -> int:
        config, width, cycles = self.ctx.config, self.m, 0
        while width > 1:
            cycles += vector_pass_cycles(config, width // 2, self.n)
            width -= width // 2
        return cycles

    def _reduce_by_halving(self, op: str, a: Tile, dst: Tile) -> Tile:
        """Column tiles: rows [0, half) op= rows [rest, width) until one row is left, in `scratch`."""
        n, emit = self.n, self.ctx.emitter.emit
        source, width = a, self.m
        if width == 1:
            emit("vmov", dtype=F32, dst=dst.addr, dst_rs=n, a=a.addr, a_rs=a.rs, a_cs=a.cs, rows=1, cols=n)
        while width > 1:
            half, rest = width // 2, width - width // 2
            target = dst.addr if rest == 1 else self.scratch
            emit(ELEMENTWISE[op], dtype=F32, dst=target, dst_rs=n, a=source.addr, a_rs=source.rs, a_cs=source.cs,
                 b=source.addr + rest * source.rs * 4, b_rs=source.rs, b_cs=source.cs, rows=half, cols=n)
            if rest > half and source.addr != self.scratch:  # the middle row of an odd width stays as it is
                emit("vmov", dtype=F32, dst=self.scratch + half * n * 4, dst_rs=n, a=source.addr + half * source.rs * 4,
                     a_rs=source.rs, a_cs=source.cs, rows=1, cols=n)
            source, width = Tile(self.scratch, F32, n, 1), rest
        return dst

    def multiply_down(self, a: Tile) -> tuple[int, int]:
        """Multiply each segment's elements together in place (a halving tree); returns (address, stride)
        of the products, one per segment, left at each segment's first element."""
        k_step, segment_step = (1, self.m) if self.rowwise else (self.n, 1)
        width = self.m
        while width > 1:
            half, rest = width // 2, width - width // 2
            rows, cols = (self.n, half) if self.rowwise else (half, self.n)
            self.ctx.emitter.emit("vmul", dtype=F32, dst=a.addr, dst_rs=a.rs, a=a.addr, a_rs=a.rs, a_cs=1,
                                  b=a.addr + rest * k_step * 4, b_rs=a.rs, b_cs=1, rows=rows, cols=cols)
            width = rest
        return a.addr, segment_step


@dataclass
class Stats:
    """The per-segment vectors of one group of n segments: statistics, parameters and temporaries."""

    ctx: CodegenContext
    n: int
    named: dict[str, Tile]
    params: list[Tile]  # per-segment parameters
    temps: list[int]

    def __getitem__(self, name: str) -> Tile:
        return self.named[name]

    def builder(self) -> SegmentBuilder:
        return SegmentBuilder(self.ctx, 1, self.n, list(self.temps), F32)

    def combine(self, op: str, into: Tile, source: int, stride: int) -> None:
        """into[s] = op(into[s], source[s * stride]) ("mov" copies), for s < n."""
        fields = dict(dtype=F32, dst=into.addr, dst_rs=1, rows=self.n, cols=1)
        if op == "mov":
            self.ctx.emitter.emit("vmov", a=source, a_rs=stride, a_cs=1, **fields)
        else:
            self.ctx.emitter.emit(f"v{op}", a=into.addr, a_rs=1, a_cs=1, b=source, b_rs=stride, b_cs=1, **fields)


class SegmentOp:
    """What a kernel computes over its segments; `run_segments` does the tiling and the DMA."""

    passes = 1  # statistics passes over a group's chunks
    stats: tuple[str, ...] = ()  # named per-segment statistics
    chunk_temps = 0  # temporaries over a whole tile
    stat_temps = 0  # temporaries of one value per segment

    def accumulate(self, step: int, chunk: Chunk, s: Stats, first: bool) -> None:
        raise NotImplementedError

    def finish(self, step: int, s: Stats) -> None:
        """After pass `step` over all chunks of the group."""

    def output(self, chunk: Chunk, s: Stats) -> Tile:
        """The element-wise output of a chunk (normalisations)."""
        raise NotImplementedError

    def result(self, s: Stats) -> Tile:
        """One value per segment (reductions)."""
        raise NotImplementedError


def _accumulate_sum(chunk: Chunk, s: Stats, values: Tile, into: Tile, first: bool) -> None:
    if first:
        chunk.reduce("sum", values, into)
    else:
        sb = s.builder()
        sb.into(into, "add", into, chunk.reduce("sum", values, sb.temp()))


# Reductions --------------------------------------------------------------------------------------
class SumReduction(SegmentOp):
    """sum(pre(x)), then a scale and a function: Sum, Mean, L1, L2, SumSquare, LogSum."""

    stats = ("acc",)
    stat_temps = 1

    def __init__(self, pre: str | None = None, scale: float = 1.0, post: str | None = None):
        self.pre, self.scale, self.post = pre, scale, post
        self.chunk_temps = 1 if pre else 0

    def accumulate(self, step, chunk, s, first):
        values = chunk.x
        if self.pre == "abs":
            values = chunk.builder().unary("abs", chunk.x)
        elif self.pre == "square":
            values = chunk.builder().binary("mul", chunk.x, chunk.x)
        _accumulate_sum(chunk, s, values, s["acc"], first)

    def finish(self, step, s):
        sb = s.builder()
        if self.scale != 1.0:
            sb.into(s["acc"], "mul", s["acc"], self.scale)
        if self.post:
            sb.into(s["acc"], self.post, s["acc"])

    def result(self, s):
        return s["acc"]


class ExtremeReduction(SegmentOp):
    """Max or Min."""

    stats = ("acc",)
    stat_temps = 1

    def __init__(self, op: str):
        self.op = op

    def accumulate(self, step, chunk, s, first):
        if first:
            chunk.reduce(self.op, chunk.x, s["acc"])
        else:
            sb = s.builder()
            sb.into(s["acc"], self.op, s["acc"], chunk.reduce(self.op, chunk.x, sb.temp()))

    def result(self, s):
        return s["acc"]


class ProductReduction(SegmentOp):
    """Prod: the vector unit has no product reduction, so a halving tree of multiplications."""

    stats = ("acc",)

    def accumulate(self, step, chunk, s, first):
        source, stride = chunk.multiply_down(chunk.x)
        s.combine("mov" if first else "mul", s["acc"], source, stride)

    def result(self, s):
        return s["acc"]


def _online_softmax_stats(chunk: Chunk, s: Stats, first: bool) -> None:
    """max = running maximum, sum = running sum of exp(x - max), rescaled whenever the maximum grows."""
    b = chunk.builder()
    top, total = s["max"], s["sum"]
    if first:
        chunk.reduce("max", chunk.x, top)
        shifted = chunk.kept["shifted"] = b.binary("sub", chunk.x, chunk.per_segment(top))
        chunk.kept["exp"] = b.unary("exp", shifted)
        chunk.reduce("sum", chunk.kept["exp"], total)
        return
    sb = s.builder()
    new_top = chunk.reduce("max", chunk.x, sb.temp())
    sb.into(new_top, "max", new_top, top)
    rescale = sb.unary("exp", sb.binary("sub", top, new_top))
    shifted = b.binary("sub", chunk.x, chunk.per_segment(new_top))
    partial = chunk.reduce("sum", b.into(shifted, "exp", shifted), sb.temp())
    sb.into(total, "mul", total, rescale)
    sb.into(total, "add", total, partial)
    sb.into(top, "mov", new_top)


class LogSumExpReduction(SegmentOp):
    stats = ("max", "sum")
    chunk_temps = 2
    stat_temps = 4

    def accumulate(self, step, chunk, s, first):
        _online_softmax_stats(chunk, s, first)

    def finish(self, step, s):
        sb = s.builder()
        sb.into(s["sum"], "log", s["sum"])
        sb.into(s["sum"], "add", s["sum"], s["max"])

    def result(self, s):
        return s["sum"]


class ArgReduction(SegmentOp):
    """ArgMax/ArgMin (i64 indices) and Hardmax (one-hot of the first maximum).

    The first element parameter is iota, each element's index along the axis, as f32."""

    stats = ("best", "index", "sentinel")
    chunk_temps = 1
    stat_temps = 3

    def __init__(self, largest: bool, last: bool):
        self.op = "max" if largest else "min"
        self.last = last

    def accumulate(self, step, chunk, s, first):
        b, sb = chunk.builder(), s.builder()
        best = s["best"] if first else sb.temp()
        chunk.reduce(self.op, chunk.x, best)
        if first:  # an index no hit can have: the neutral element of the candidates' reduction
            sb.fill_into(s["sentinel"], -1.0 if self.last else float(EXACT_F32_INTEGERS))
        sentinel = Tile(s["sentinel"].addr, F32, 0, 0)
        hit = b.binary("eq", chunk.x, chunk.per_segment(best))
        candidates = b.select_into(hit, hit, chunk.params[0], sentinel)
        index = s["index"] if first else sb.temp()
        chunk.reduce("max" if self.last else "min", candidates, index)
        if not first:
            # Ties between chunks go to the earlier chunk (first index) or the later one (last index).
            compare = {"max": "ge" if self.last else "gt", "min": "le" if self.last else "lt"}[self.op]
            better = sb.binary(compare, best, s["best"])
            sb.select_into(s["index"], better, index, s["index"])
            sb.into(s["best"], self.op, s["best"], best)

    def output(self, chunk, s):
        return chunk.builder().binary("eq", chunk.params[0], chunk.per_segment(s["index"]))

    def result(self, s):
        sb = s.builder()
        as_i32 = sb.convert(s["index"], DType.I32)
        return sb.convert(as_i32, DType.I64, Tile(s["best"].addr, DType.I64, s.n, 1))


# Normalisations ------------------------------------------------------------------------------------
class SoftmaxOp(SegmentOp):
    stats = ("max", "sum")
    chunk_temps = 3
    stat_temps = 4

    def __init__(self, log: bool):
        self.log = log

    def accumulate(self, step, chunk, s, first):
        _online_softmax_stats(chunk, s, first)

    def finish(self, step, s):
        s.builder().into(s["sum"], "log" if self.log else "recip", s["sum"])

    def output(self, chunk, s):
        b = chunk.builder()
        shifted = chunk.kept.get("shifted") or b.binary("sub", chunk.x, chunk.per_segment(s["max"]))
        if self.log:
            return b.binary("sub", shifted, chunk.per_segment(s["sum"]))
        exp = chunk.kept.get("exp") or b.unary("exp", shifted)
        return b.binary("mul", exp, chunk.per_segment(s["sum"]))


class NormaliseOp(SegmentOp):
    """(x - mean) * rsqrt(mean((x - mean)**2) + epsilon) * scale + bias.

    LayerNormalization has element parameters (scale, then bias if present), InstanceNormalization
    per-segment ones (scale and bias)."""

    passes = 2
    stats = ("mean", "inv")
    chunk_temps = 2
    stat_temps = 1

    def __init__(self, count: int, epsilon: float, element_params: int, segment_params: int):
        self.count, self.epsilon = count, epsilon
        self.element_params, self.segment_params = element_params, segment_params

    def accumulate(self, step, chunk, s, first):
        if step == 0:
            _accumulate_sum(chunk, s, chunk.x, s["mean"], first)
            return
        b = chunk.builder()
        centred = chunk.kept["centred"] = b.binary("sub", chunk.x, chunk.per_segment(s["mean"]))
        _accumulate_sum(chunk, s, b.binary("mul", centred, centred), s["inv"], first)

    def finish(self, step, s):
        sb = s.builder()
        if step == 0:
            sb.into(s["mean"], "mul", s["mean"], 1.0 / self.count)
            return
        sb.into(s["inv"], "mul", s["inv"], 1.0 / self.count)
        sb.into(s["inv"], "add", s["inv"], self.epsilon)
        sb.into(s["inv"], "rsqrt", s["inv"])
        if self.segment_params:
            sb.into(s["inv"], "mul", s["inv"], s.params[0])

    def output(self, chunk, s):
        b = chunk.builder()
        centred = chunk.kept.get("centred") or b.binary("sub", chunk.x, chunk.per_segment(s["mean"]))
        y = b.binary("mul", centred, chunk.per_segment(s["inv"]))
        for op, param in zip(("mul", "add"), chunk.params[:self.element_params], strict=False):
            b.into(y, op, y, param)
        if self.segment_params > 1:
            b.into(y, "add", y, chunk.per_segment(s.params[1]))
        return y


SMALLEST_NORMAL = float(np.finfo(np.float32).tiny)


class LpNormaliseOp(SegmentOp):
    """x / ||x||_p along the axis, p = 1 or 2."""

    stats = ("norm",)
    chunk_temps = 1
    stat_temps = 1

    def __init__(self, p: int):
        self.p = p

    def accumulate(self, step, chunk, s, first):
        b = chunk.builder()
        values = b.unary("abs", chunk.x) if self.p == 1 else b.binary("mul", chunk.x, chunk.x)
        _accumulate_sum(chunk, s, values, s["norm"], first)

    def finish(self, step, s):
        if self.p == 2:
            s.builder().into(s["norm"], "sqrt", s["norm"])
        # A zero slice has a zero norm: 0 / 0 would be NaN where ONNX wants 0, and with the norm
        # raised to the smallest normal float the quotient is 0 (every element is 0).
        s.builder().into(s["norm"], "max", s["norm"], SMALLEST_NORMAL)

    def output(self, chunk, s):
        return chunk.builder().binary("div", chunk.x, chunk.per_segment(s["norm"]))


# Planning ----------------------------------------------------------------------------------------
@dataclass
class SegmentPlan:
    """Every operand viewed with the dimensions outer + reduced + (inner,)."""

    outer: tuple[int, ...]
    reduced: tuple[int, ...]
    inner: int
    source: View
    target: View | None = None  # element-wise output
    result: View | None = None  # one value per segment (stride 0 along the reduced dimensions)
    segment_params: list[View] = field(default_factory=list)
    element_params: list[View] = field(default_factory=list)
    prologue: list[View] = field(default_factory=list)  # a prologue's operands (then `source` is not read)

    @property
    def rowwise(self) -> bool:
        return self.inner == 1


def plan_segments(shape: tuple[int, ...], axes, source: View, target: View | None = None,
                  result: View | None = None, segment_params=(), element_params=(), prologue=()) -> SegmentPlan:
    """Transpose (by strides) every view, all given with dimensions `shape`, to outer + reduced + inner.

    `result` and `segment_params` have stride 0 along `axes`, `element_params` along the others."""
    axes = set(axes)
    views = [v for v in (source, target, result, *segment_params, *element_params, *prologue) if v is not None]
    real = [i for i, n in enumerate(shape) if n != 1]
    inner_axes: list[int] = []
    for i in reversed(real):
        if i in axes:
            break
        inner_axes.insert(0, i)
    outer_axes = [i for i in real if i not in axes and i not in inner_axes]
    reduced_axes = [i for i in real if i in axes]

    def merged(group):
        return merge_joint(tuple(shape[i] for i in group), [tuple(v.strides[i] for i in group) for v in views])

    outer, outer_strides = merged(outer_axes)
    reduced, reduced_strides = merged(reduced_axes)
    inner, inner_strides = merged(inner_axes)
    # A trailing kept block is contiguous in dense tensors; anything else just loops as outer dimensions.
    outer, inner = outer + inner[:-1], inner[-1]
    outer_strides = [o + i[:-1] for o, i in zip(outer_strides, inner_strides, strict=True)]
    inner_strides = [i[-1:] for i in inner_strides]
    rebuilt = [View(v.addr, v.dtype, outer + reduced + (inner,), o + r + i)
               for v, o, r, i in zip(views, outer_strides, reduced_strides, inner_strides, strict=True)]
    it = iter(rebuilt)
    return SegmentPlan(outer, reduced, inner, next(it), next(it) if target is not None else None,
                       next(it) if result is not None else None, [next(it) for _ in segment_params],
                       [next(it) for _ in element_params], [next(it) for _ in prologue])


def _chunk_shape(shape: tuple[int, ...], budget: int) -> tuple[int, ...]:
    """The largest box of at most `budget` elements: whole inner dimensions and a slice of the next one."""
    chunk, left = [], max(budget, 1)
    for n in reversed(shape):
        take = min(n, left)
        chunk.append(take)
        left = left // n if take == n else 1
    return tuple(reversed(chunk))


def _boxes(shape: tuple[int, ...], chunk: tuple[int, ...]) -> list[tuple[tuple[int, int], ...]]:
    """Every box of the tiling of `shape` by `chunk`: per dimension (start, size)."""
    return list(itertools.product(*[[(start, min(c, n - start)) for start in range(0, n, c)]
                                    for n, c in zip(shape, chunk, strict=True)]))


def _window(view: View, box) -> View:
    for axis, (start, size) in enumerate(box):
        view = view.window(axis, start, start + size)
    return view


def _size(box) -> int:
    return math.prod(size for _, size in box)


@dataclass
class _Geometry:
    outer_chunk: tuple[int, ...]
    reduced_chunk: tuple[int, ...]
    inner_chunk: int

    @property
    def n(self) -> int:
        return math.prod(self.outer_chunk) * self.inner_chunk

    @property
    def m(self) -> int:
        return math.prod(self.reduced_chunk)


def _geometry(plan: SegmentPlan, elements: int, lanes: int) -> _Geometry:
    """Tile sizes for tiles of at most `elements` elements."""
    limit = min(elements, MAX_EXTENT)
    if plan.rowwise:
        reduced = _chunk_shape(plan.reduced, limit)
        outer = _chunk_shape(plan.outer, min(elements // math.prod(reduced), MAX_EXTENT))
        return _Geometry(outer, reduced, 1)
    # Wide enough for the lanes, and whole segments per tile when they fit.
    width = min(plan.inner, MAX_COL_STRIDE, limit, max(lanes, elements // math.prod(plan.reduced)))
    reduced = _chunk_shape(plan.reduced, min(elements // width, MAX_EXTENT))
    return _Geometry((1,) * len(plan.outer), reduced, width)


def _aligned(nbytes: int) -> int:
    return -(-nbytes // LOCAL_ALIGN) * LOCAL_ALIGN


@dataclass
class _Buffers:
    tiles: list[list[int]]  # per set: x, then chunk temporaries
    scratch: list[int]  # per set: rows for halving reductions (column orientation)
    element_params: list[list[int]]  # per set (or one resident set)
    stats: list[list[int]]  # per set: named stats, segment params, stat temporaries
    # A tail (FusedLayerNorm): its result tile per set, its temporaries, its single-value operands and a zero.
    tail_out: list[int] = field(default_factory=list)
    tail_temps: list[int] = field(default_factory=list)
    tail_scalars: list[int] = field(default_factory=list)
    zero: SharedZero | None = None
    # A prologue (FusedLayerNorm): its temporaries; per gathered operand, the int32 indices of every row,
    # or per set the tile's, with where int64 indices are loaded before they are narrowed.
    prologue_temps: list[int] = field(default_factory=list)
    resident_indices: list[int] = field(default_factory=list)
    indices: list[list[int]] = field(default_factory=list)
    wide_indices: int = 0


@dataclass
class Prologue:
    """A FusedLayerNorm's prologue made ready: `program` computes X on a tile from one tile per
    operand. Operand i is loaded from the plan's prologue view i, or, when `gathers[i]` gives a
    table and its indices, gathered: the tile's rows are the table rows its indices name (the plan's
    view is then X's dense shape at address 0, whose window says which rows and columns)."""

    program: StepProgram
    views: list[View]  # per operand, laid out as X
    gathers: list[tuple[View, View] | None]  # per operand: (table [n, d], indices [rows of X]) or None

    @property
    def gathered(self) -> int:
        return sum(gather is not None for gather in self.gathers)


def prologue_of(ctx: CodegenContext, node: Node, count: int, shape: tuple[int, ...]) -> Prologue:
    """The prologue of a FusedLayerNorm (on its first `count` inputs), for X of `shape`."""
    graph = ctx.graph
    steps = elementwise_steps({"steps": node.attrs["prologue"]})
    names = node.inputs[:count]
    types = step_types(steps, [graph.values[name] for name in names], gathers=True)
    gathered = [step for step in steps if step.op == "Gather"]
    operands: list[str] = []  # the prologue's operands: x<i> of the gathered table, or s<j> of a Gather step
    views, gathers = [], []
    for j, step in enumerate(gathered):
        table, indices = (ctx.view(names[int(o[1:])]) for o in step.operands)
        operands.append(f"s{j}")
        views.append(View.dense(0, F32, shape))
        gathers.append((table, indices.reshape_dense((indices.size,))))
    rest = steps[len(gathered):]
    for name_index in sorted({int(o[1:]) for step in rest for o in step.operands if o.startswith("x")}):
        operands.append(f"x{name_index}")
        views.append(ctx.view(names[name_index]).broadcast_to(shape))
        gathers.append(None)
    renamed = [Step(step.op, tuple(f"x{operands.index(o)}" if o in operands else
                                   f"s{int(o[1:]) - len(gathered)}" if o else "" for o in step.operands), step.attrs)
               for step in rest]
    where = f"{node.op} node {node.name!r}"
    results = [accelerator_dtype(dtype, f"{node.outputs[0]} prologue step {j}", where)
               for j, (dtype, _) in enumerate(types[len(gathered):])]
    operand_names = [None if gather else names[int(o[1:])] for o, gather in zip(operands, gathers, strict=True)]
    program = step_program(ctx, node, renamed, [view.dtype for view in views], operand_names, results)
    return Prologue(program, views, gathers)


def _allocate(ctx: CodegenContext, plan: SegmentPlan, op: SegmentOp, node: Node,
              tail: Tail | None = None, prologue: Prologue | None = None) -> tuple[_Geometry, _Buffers]:
    """The largest tiles for which two sets of buffers fit; statistics go to the accumulator when they fit."""
    operands = len(prologue.views) if prologue else 0
    tiles_per_set = 1 + op.chunk_temps + operands
    stat_count = len(op.stats) + len(plan.segment_params) + op.stat_temps
    lanes = ctx.config.vector_lanes

    def layout(elements: int):
        geometry = _geometry(plan, elements, lanes)
        single = len(_boxes(plan.reduced, geometry.reduced_chunk)) == 1
        param_sets = 1 if single else 2
        tile = 2 * tiles_per_set * _aligned(geometry.n * geometry.m * 4)
        if not plan.rowwise:
            tile += 2 * _aligned(geometry.n * (geometry.m + 1) // 2 * 4)
        params = param_sets * len(plan.element_params) * _aligned(geometry.m * 4)
        stats = 2 * stat_count * _aligned(geometry.n * 8)
        if tail is not None:
            tile += 2 * _aligned(geometry.n * geometry.m * tail.program.result.size)
            tile += tail.program.temps * _aligned(geometry.n * geometry.m * 4) + (len(tail.operands) + 1) * LOCAL_ALIGN
        if prologue is not None:
            tile += prologue.program.temps * _aligned(geometry.n * geometry.m * 4) + LOCAL_ALIGN
            if prologue.gathered and not resident:  # per tile: two sets of int32 indices per gathered operand,
                # and an int64 load
                tile += 2 * prologue.gathered * _aligned(geometry.n * 4) + _aligned(geometry.n * 8)
        return geometry, param_sets, tile + params, stats

    spad, acc = ctx.scratchpad(), ctx.accumulator()
    # A gathered operand's indices, narrowed to int32 once for every row when they take a sliver of the
    # scratchpad (then no tile waits for the vector unit to narrow its own); else per tile.
    rows = math.prod(plan.outer)
    resident = prologue is not None and prologue.gathered > 0 and rows <= MAX_EXTENT \
        and rows * (4 * prologue.gathered + 8) <= spad.free * RESIDENT_INDICES
    if resident:
        indices = [spad.alloc(rows * 4) for _ in range(prologue.gathered)]
        wide_indices = spad.alloc(rows * 8)

    def fits(elements: int) -> bool:
        _, _, main, stats = layout(elements)
        return main + stats <= spad.free or (main <= spad.free and stats <= acc.free)

    low, high = 1, max(spad.free // 4, 1)
    if not fits(low):
        raise unsupported(node, "its buffers do not fit the scratchpad even for one element per tile")
    while low < high:
        middle = (low + high + 1) // 2
        low, high = (middle, high) if fits(middle) else (low, middle - 1)
    geometry, param_sets, main, stats = layout(low)
    stat_arena: LocalArena = acc if main + stats > spad.free else spad
    tiles = [[spad.alloc(geometry.n * geometry.m * 4) for _ in range(tiles_per_set)] for _ in range(2)]
    scratch = [0, 0] if plan.rowwise else [spad.alloc(geometry.n * (geometry.m + 1) // 2 * 4) for _ in range(2)]
    params = [[spad.alloc(geometry.m * 4) for _ in plan.element_params] for _ in range(param_sets)]
    stat_sets = [[stat_arena.alloc(geometry.n * 8) for _ in range(stat_count)] for _ in range(2)]
    buffers = _Buffers(tiles, scratch, params, stat_sets)
    if tail is not None:
        elements = geometry.n * geometry.m
        buffers.tail_out = [spad.alloc(elements * tail.program.result.size) for _ in range(2)]
        buffers.tail_temps = [spad.alloc(elements * 4) for _ in range(tail.program.temps)]
        buffers.tail_scalars = [spad.alloc(operand.dtype.size) for operand in tail.operands]
        buffers.zero = SharedZero(spad.alloc(4))
        for address, operand in zip(buffers.tail_scalars, tail.operands, strict=True):
            ctx.dma_in(address, View(operand.addr, operand.dtype, (1,), (1,)))
    if prologue is not None:
        buffers.prologue_temps = [spad.alloc(geometry.n * geometry.m * 4) for _ in range(prologue.program.temps)]
        buffers.zero = buffers.zero or SharedZero(spad.alloc(4))
        if resident:
            buffers.resident_indices = indices
            for index, (table, flat_indices) in zip(indices, filter(None, prologue.gathers), strict=True):
                load_indices(ctx, flat_indices, table.shape[0], index, wide_indices)
        elif prologue.gathered:
            buffers.indices = [[spad.alloc(geometry.n * 4) for _ in range(prologue.gathered)] for _ in range(2)]
            buffers.wide_indices = spad.alloc(geometry.n * 8)
    return geometry, buffers


def _run_tail(ctx: CodegenContext, tail: Tail, y: Tile, n: int, m: int, buffers: _Buffers, turn: int) -> Tile:
    """The tail's steps on the output tile y ([n, m] rows), into a tile of the tail's result type."""
    builder = TileBuilder(ctx, n, m, list(buffers.tail_temps), F32, buffers.zero)
    tiles = [y] + [Tile(address, operand.dtype, 0, 0)
                   for address, operand in zip(buffers.tail_scalars, tail.operands, strict=True)]
    destination = Tile(buffers.tail_out[turn % 2], tail.program.result, m, 1)
    tail.program.run_into(builder, tiles, destination)
    return destination


def _load_prologue(ctx: CodegenContext, prologue: Prologue, plan: SegmentPlan, box, x: int, tiles: list[int],
                   n: int, m: int, buffers: _Buffers, turn: int) -> None:
    """X's tile of `box` ([n, m] rows) into `x`: each operand loaded (or its rows gathered) into its tile
    of `tiles`, then the program."""
    operands = []
    indices = iter(buffers.resident_indices or (buffers.indices[turn % 2] if buffers.indices else []))
    for view, gather, local in zip(plan.prologue, prologue.gathers, tiles, strict=True):
        window = _window(view, box)
        if gather is not None:
            table, flat_indices = gather
            rows, cols = table.shape
            first, column = divmod(window.addr // F32.size, cols)
            index = next(indices)
            if buffers.resident_indices:
                index += 4 * first
            else:
                load_indices(ctx, flat_indices.window(0, first, first + n), rows, index, buffers.wide_indices)
            indexed_dma(ctx, "dma_gather", table.addr + column * F32.size, F32, index, n, m, cols, rows, local)
            operands.append(Tile(local, F32, m, 1))
        elif not any(window.strides[:len(plan.outer)]):  # one row for every segment: loaded once
            ctx.dma_in(local, _window(view, tuple((0, 1) for _ in plan.outer) + box[len(plan.outer):]))
            operands.append(Tile(local, view.dtype, 0, 1))
        else:
            ctx.dma_in(local, window)
            operands.append(Tile(local, view.dtype, m, 1))
    builder = TileBuilder(ctx, n, m, list(buffers.prologue_temps), F32, buffers.zero)
    prologue.program.run_into(builder, operands, Tile(x, F32, m, 1))


def run_segments(ctx: CodegenContext, node: Node, op: SegmentOp, plan: SegmentPlan,
                 tail: Tail | None = None, prologue: Prologue | None = None) -> None:
    """Emit `op` over every segment of `plan`: statistics passes, then the output (through `tail`'s steps,
    single-value operands only, when given). With a `prologue` (a row normalisation), each tile of the
    source is computed by it rather than loaded."""
    if tail is not None and (not plan.rowwise or any(kind != "scalar" for kind in tail.kinds)):
        raise unsupported(node, "a tail on a normalisation of rows, with single-value operands only")
    if prologue is not None and not plan.rowwise:
        raise unsupported(node, "a prologue on a normalisation of rows only")
    geometry, buffers = _allocate(ctx, plan, op, node, tail, prologue)
    reduced_boxes = _boxes(plan.reduced, geometry.reduced_chunk)
    single = len(reduced_boxes) == 1
    whole_outer = tuple((0, 1) for _ in plan.outer)
    rowwise = plan.rowwise

    def element_box(reduced_box):
        return whole_outer + reduced_box + ((0, 1),)

    def element_operands(addresses: list[int]) -> list[Tile]:
        return [Tile(a, F32, 0, 1) if rowwise else Tile(a, F32, 1, 0) for a in addresses]

    if single:
        for address, view in zip(buffers.element_params[0], plan.element_params, strict=True):
            ctx.dma_in(address, _window(view, element_box(reduced_boxes[0])))
    inner_boxes = [(start, min(geometry.inner_chunk, plan.inner - start))
                   for start in range(0, plan.inner, geometry.inner_chunk)]
    groups = list(itertools.product(_boxes(plan.outer, geometry.outer_chunk), inner_boxes))
    loads = 0

    def load(outer_box, inner_box, reduced_box) -> Chunk:
        nonlocal loads
        x, *temps = buffers.tiles[loads % 2]
        temps, operand_tiles = temps[:op.chunk_temps], temps[op.chunk_temps:]
        scratch = buffers.scratch[loads % 2]
        n, m = _size(outer_box) * inner_box[1], _size(reduced_box)
        box = outer_box + reduced_box + (inner_box,)
        if prologue is None:
            ctx.dma_in(x, _window(plan.source, box))
        else:
            _load_prologue(ctx, prologue, plan, box, x, operand_tiles, n, m, buffers, loads)
        if single:
            params = buffers.element_params[0]
        else:
            params = buffers.element_params[loads % 2]
            for address, view in zip(params, plan.element_params, strict=True):
                ctx.dma_in(address, _window(view, element_box(reduced_box)))
        loads += 1
        return Chunk(ctx, rowwise, n, m, Tile(x, F32, m if rowwise else n, 1), element_operands(params), temps,
                     scratch)

    for index, (outer_box, inner_box) in enumerate(groups):
        n = _size(outer_box) * inner_box[1]
        addresses = buffers.stats[index % 2]
        named = {name: Tile(a, F32, n, 1) for name, a in zip(op.stats, addresses, strict=False)}
        segment_box = outer_box + tuple((0, 1) for _ in plan.reduced) + (inner_box,)
        params = addresses[len(op.stats):len(op.stats) + len(plan.segment_params)]
        for address, view in zip(params, plan.segment_params, strict=True):
            ctx.dma_in(address, _window(view, segment_box))
        stats = Stats(ctx, n, named, [Tile(a, F32, n, 1) for a in params],
                      addresses[len(op.stats) + len(plan.segment_params):])
        cached = None
        for step in range(op.passes):
            for position, reduced_box in enumerate(reduced_boxes):
                chunk = cached or load(outer_box, inner_box, reduced_box)
                cached = chunk if single else None
                op.accumulate(step, chunk, stats, position == 0)
            op.finish(step, stats)
        if plan.target is not None:
            for reduced_box in reduced_boxes:
                chunk = cached or load(outer_box, inner_box, reduced_box)
                y = op.output(chunk, stats)
                if tail is not None:
                    y = _run_tail(ctx, tail, y, chunk.n, chunk.m, buffers, index)
                ctx.dma_out(y.addr, _window(plan.target, outer_box + reduced_box + (inner_box,)))
        else:
            ctx.dma_out(op.result(stats).addr, _window(plan.result, segment_box))


# Kernels -------------------------------------------------------------------------------------------
def _float_input(ctx: CodegenContext, node: Node, names) -> None:
    for name in names:
        if name and ctx.graph.values[name].dtype != "f32":
            raise unsupported(node, f"{name} is {ctx.graph.values[name].dtype}; this kernel computes on f32 only")


def _attrs(node: Node) -> dict:
    return OPS[node.op].attr_values(node)


def _fill(ctx: CodegenContext, view: View, value: float) -> None:
    """Write `value` to every element of a dense f32 view (the reduction of an empty set)."""
    spad = ctx.scratchpad()
    count = min(view.size, MAX_EXTENT, spad.free // 4)
    buffer = spad.alloc(count * 4)
    ctx.emitter.emit("vfill", dtype=F32, dst=buffer, dst_rs=count, imm=float(value), rows=1, cols=count)
    flat = view.reshape_dense((view.size,))
    for start in range(0, view.size, count):
        ctx.dma_out(buffer, flat.window(0, start, min(start + count, view.size)))


# The reduction of an empty set. ReduceMean's is 0, as onnxruntime has it (onnx's reference gives NaN).
EMPTY_REDUCTION = {"ReduceSum": 0.0, "ReduceMean": 0.0, "ReduceMax": -math.inf, "ReduceMin": math.inf,
                   "ReduceProd": 1.0, "ReduceL1": 0.0, "ReduceL2": 0.0, "ReduceSumSquare": 0.0,
                   "ReduceLogSum": -math.inf, "ReduceLogSumExp": -math.inf}


def _reduction(op: str, count: int) -> SegmentOp:
    return {
        "ReduceSum": lambda: SumReduction(),
        "ReduceMean": lambda: SumReduction(scale=1.0 / count),
        "ReduceL1": lambda: SumReduction(pre="abs"),
        "ReduceL2": lambda: SumReduction(pre="square", post="sqrt"),
        "ReduceSumSquare": lambda: SumReduction(pre="square"),
        "ReduceLogSum": lambda: SumReduction(post="log"),
        "ReduceMax": lambda: ExtremeReduction("max"),
        "ReduceMin": lambda: ExtremeReduction("min"),
        "ReduceProd": lambda: ProductReduction(),
        "ReduceLogSumExp": lambda: LogSumExpReduction(),
        "GlobalAveragePool": lambda: SumReduction(scale=1.0 / count),
        "GlobalMaxPool": lambda: ExtremeReduction("max"),
    }[op]()


def reduce_kernel(ctx: CodegenContext, node: Node) -> None:
    """Reduce* over `axes` (empty: all), and GlobalAveragePool/GlobalMaxPool (over the spatial axes)."""
    _float_input(ctx, node, node.inputs[:1])
    x, out = ctx.view(node.inputs[0]), ctx.view(node.outputs[0])
    rank = len(x.shape)
    if node.op.startswith("Global"):
        axes = list(range(2, rank))
    else:
        axes = list(_attrs(node)["axes"]) or list(range(rank))
    if out.size == 0:
        return
    count = math.prod(x.shape[i] for i in axes)
    if count == 0:
        _fill(ctx, out, EMPTY_REDUCTION[node.op])
        return
    reduce_views(ctx, node, node.op, x, out, axes)


def reduce_views(ctx: CodegenContext, node: Node, op: str, x: View, out: View, axes: list[int]) -> None:
    """out = the reduction `op` (a Reduce* or Global*Pool op's name) of f32 x over `axes`, out
    holding x's shape with those axes 1."""
    kept_shape = tuple(1 if i in axes else n for i, n in enumerate(x.shape))
    result = View.dense(out.addr, out.dtype, kept_shape).broadcast_to(x.shape)
    count = math.prod(x.shape[i] for i in axes)
    run_segments(ctx, node, _reduction(op, count), plan_segments(x.shape, axes, x, result=result))


def arg_kernel(ctx: CodegenContext, node: Node) -> None:
    """ArgMax/ArgMin (i64 indices, first or last of ties) and Hardmax (one-hot of the first maximum)."""
    _float_input(ctx, node, node.inputs[:1])
    attrs = _attrs(node)
    x, out = ctx.view(node.inputs[0]), ctx.view(node.outputs[0])
    axis = attrs["axis"]
    count = x.shape[axis]
    if out.size == 0:
        return
    if count >= EXACT_F32_INTEGERS:
        raise unsupported(node, f"{count} elements along the axis: indices are computed exactly in f32 only "
                                f"below {EXACT_F32_INTEGERS}")
    iota = ctx.constant(np.arange(count, dtype=np.float32), F32, f"{node.name or node.op}.iota")
    strides = tuple(1 if i == axis else 0 for i in range(len(x.shape)))
    positions = View(iota.addr, F32, x.shape, strides)
    if node.op == "Hardmax":
        plan = plan_segments(x.shape, [axis], x, target=out, element_params=[positions])
        run_segments(ctx, node, ArgReduction(largest=True, last=False), plan)
        return
    kept_shape = tuple(1 if i == axis else n for i, n in enumerate(x.shape))
    result = View.dense(out.addr, out.dtype, kept_shape).broadcast_to(x.shape)
    op = ArgReduction(node.op == "ArgMax", bool(attrs["select_last_index"]))
    run_segments(ctx, node, op, plan_segments(x.shape, [axis], x, result=result, element_params=[positions]))


def softmax_kernel(ctx: CodegenContext, node: Node) -> None:
    """Softmax and LogSoftmax along one axis (the row maximum is subtracted before exp)."""
    _float_input(ctx, node, node.inputs[:1])
    x, out = ctx.view(node.inputs[0]), ctx.view(node.outputs[0])
    if out.size == 0:
        return
    plan = plan_segments(x.shape, [_attrs(node)["axis"]], x, target=out)
    run_segments(ctx, node, SoftmaxOp(log=node.op == "LogSoftmax"), plan)


def lp_normalization_kernel(ctx: CodegenContext, node: Node) -> None:
    _float_input(ctx, node, node.inputs[:1])
    attrs = _attrs(node)
    x, out = ctx.view(node.inputs[0]), ctx.view(node.outputs[0])
    if out.size == 0:
        return
    if attrs["p"] not in (1, 2):
        raise unsupported(node, f"p={attrs['p']} (only 1 and 2)")
    run_segments(ctx, node, LpNormaliseOp(attrs["p"]), plan_segments(x.shape, [attrs["axis"]], x, target=out))


def layer_norm_kernel(ctx: CodegenContext, node: Node) -> None:
    """LayerNormalization over the axes from `axis` on; only output 0 (Mean and InvStdDev are not produced).
    FusedLayerNorm: then its tail's steps on each row tile before it is stored."""
    used = {name for other in ctx.graph.nodes for name in other.inputs} | set(ctx.graph.outputs)
    if any(name and name in used for name in node.outputs[1:]):
        raise unsupported(node, "its Mean/InvStdDev outputs are used; only output 0 is produced")
    attrs = _attrs(node)
    count = prologue_inputs(attrs)  # X, or the prologue's operands
    _float_input(ctx, node, node.inputs[count:count + 2] if attrs.get("prologue") else node.inputs[:3])
    tail = None
    if node.op == "FusedLayerNorm":
        # Imported here: epilogue.py imports this module (its Softmax on result rows).
        from compiler.codegen.kernels.epilogue import tail_of

        tail = tail_of(ctx, node, count + 2, F32)
    out = ctx.view(node.outputs[0])
    if out.size == 0:
        return
    shape = out.shape
    prologue = prologue_of(ctx, node, count, shape) if attrs.get("prologue") else None
    x = View.dense(0, F32, shape) if prologue else ctx.view(node.inputs[0])
    axes = list(range(attrs["axis"], len(shape)))
    params = [ctx.view(name).broadcast_to(shape) for name in node.inputs[count:count + 2] if name]
    op = NormaliseOp(math.prod(shape[i] for i in axes), float(attrs["epsilon"]), len(params), 0)
    plan = plan_segments(shape, axes, x, target=out, element_params=params,
                         prologue=prologue.views if prologue else ())
    run_segments(ctx, node, op, plan, tail, prologue)


def instance_norm_kernel(ctx: CodegenContext, node: Node) -> None:
    """InstanceNormalization: each [n, c] over the spatial axes, then per-channel scale and bias."""
    _float_input(ctx, node, node.inputs)
    attrs = _attrs(node)
    x, out = ctx.view(node.inputs[0]), ctx.view(node.outputs[0])
    if out.size == 0:
        return
    rank = len(x.shape)
    axes = list(range(2, rank))
    params = []
    for name in node.inputs[1:3]:
        channel = ctx.view(name)
        params.append(View(channel.addr, channel.dtype, channel.shape + (1,) * (rank - 2),
                           channel.strides + (0,) * (rank - 2)).broadcast_to(x.shape))
    op = NormaliseOp(math.prod(x.shape[i] for i in axes), float(attrs["epsilon"]), 0, 2)
    run_segments(ctx, node, op, plan_segments(x.shape, axes, x, target=out, segment_params=params))


def lrn_kernel(ctx: CodegenContext, node: Node) -> None:
    """LRN across channels: x * (bias + alpha / size * sum of x**2 over the channel window) ** -beta.

    For each image, tiles are a range of channels (rows, H*W apart in DRAM) with the window's halo
    above and below, by a range of pixels; the window sum is shifted adds of the squares."""
    _float_input(ctx, node, node.inputs[:1])
    attrs = _attrs(node)
    x, out = ctx.view(node.inputs[0]), ctx.view(node.outputs[0])
    if out.size == 0:
        return
    size = int(attrs["size"])
    before, after = (size - 1) // 2, size // 2
    batch, channels = x.shape[:2]
    pixels = math.prod(x.shape[2:])
    source = x.reshape_dense((batch, channels, pixels))
    target = out.reshape_dense((batch, channels, pixels))
    spad = ctx.scratchpad()
    elements = (spad.free // 6 - LOCAL_ALIGN) // 4  # two sets of x, squares and window sums
    halo = before + after
    width = min(pixels, MAX_EXTENT, max(1, elements // (channels + halo)))
    if width < min(pixels, ctx.config.vector_lanes):  # many channels: tile them too, with a halo
        width = min(pixels, ctx.config.vector_lanes)
    rows = min(channels, MAX_EXTENT - halo, elements // width - halo)
    if rows < 1:
        width = 1
        rows = min(channels, MAX_EXTENT - halo, elements - halo)
    if rows < 1:
        raise unsupported(node, f"size={size}: the channel window does not fit the scratchpad")
    sets = [[spad.alloc((rows + halo) * width * 4) for _ in range(3)] for _ in range(2)]
    tile = 0
    for image in range(batch):
        for c0 in range(0, channels, rows):
            c1 = min(c0 + rows, channels)
            low, high = max(0, c0 - before), min(channels, c1 + after)
            for p0 in range(0, pixels, width):
                cols = min(width, pixels - p0)
                x_tile, squares, sums = sets[tile % 2]
                tile += 1
                ctx.dma_in(x_tile, source.at(image).window(0, low, high).window(1, p0, p0 + cols))
                _lrn_tile(ctx, attrs, x_tile, squares, sums, cols, channels, low, high, c0, c1)
                ctx.dma_out(squares, target.at(image).window(0, c0, c1).window(1, p0, p0 + cols))


def _lrn_tile(ctx: CodegenContext, attrs: dict, x_tile: int, squares: int, sums: int, cols: int, channels: int,
              low: int, high: int, c0: int, c1: int) -> None:
    """LRN of channels [c0, c1) from x_tile holding channels [low, high); the result lands in `squares`.

    Row j of `sums` is channel c0 + j and row i of `squares` channel low + i; each offset of the
    window adds the rows whose shifted channel exists."""
    size = int(attrs["size"])

    def at(base: int, row: int) -> Tile:
        return Tile(base + row * cols * 4, F32, cols, 1)

    def on_rows(count: int) -> SegmentBuilder:
        return SegmentBuilder(ctx, count, cols, [], F32)

    on_rows(high - low).into(at(squares, 0), "mul", at(x_tile, 0), at(x_tile, 0))
    on_rows(c1 - c0).into(at(sums, 0), "mov", at(squares, c0 - low))
    for offset in range(-((size - 1) // 2), size // 2 + 1):
        first, last = max(0, -(c0 + offset)), min(c1 - c0, channels - c0 - offset)
        if offset != 0 and last > first:
            on_rows(last - first).into(at(sums, first), "add", at(sums, first), at(squares, c0 - low + first + offset))
    scale = on_rows(c1 - c0)
    scale.into(at(sums, 0), "mul", at(sums, 0), float(attrs["alpha"]) / size)
    scale.into(at(sums, 0), "add", at(sums, 0), float(attrs["bias"]))
    scale.into(at(sums, 0), "pow", at(sums, 0), -float(attrs["beta"]))
    scale.into(at(squares, 0), "mul", at(x_tile, c0 - low), at(sums, 0))


ROW_KERNELS = {
    **{op: reduce_kernel for op in EMPTY_REDUCTION},
    "GlobalAveragePool": reduce_kernel, "GlobalMaxPool": reduce_kernel,
    "ArgMax": arg_kernel, "ArgMin": arg_kernel, "Hardmax": arg_kernel,
    "Softmax": softmax_kernel, "LogSoftmax": softmax_kernel, "LpNormalization": lp_normalization_kernel,
    "LayerNormalization": layer_norm_kernel, "FusedLayerNorm": layer_norm_kernel,
    "InstanceNormalization": instance_norm_kernel,
    "LRN": lrn_kernel,
}
