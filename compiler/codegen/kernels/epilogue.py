"""The arithmetic of a matrix-unit kernel, and the end of each result tile.

A `Product` says what a MatMul/Gemm/Conv kernel multiplies and what it produces: the
operand dtype (f32, bf16 with bf16 or i8 weights, or i8/u8 with i8/u8 weights), the
accumulator dtype (fp32, or int32 for integer operands), a per-channel scale (weight-only
int8), a per-channel bias, Gemm's alpha, and for quantized ops a `Requantization` to an
i8/u8 output. `Finisher` turns one finished accumulator tile into output: scale and bias
applied in place, then (integer outputs) `vreq` with the per-channel multiplier into an
i8/u8 tile and a clamp, then the DMA out. The tile is physically dense
[rows, cols] with the output channels along its rows or its columns; `transpose` stores
it transposed through the vector unit (so the DMA writes whole rows).

A `Tail` (an int8 product's fused element-wise steps: dequantize, residual join, quantize)
runs on each finished int32 tile in its stored orientation, a few rows at a time, with
its other operands loaded per tile (whole blocks), per channel block or once (scalars);
only its result leaves the chip. When the tail starts by dequantizing the product, the
int32 bias is not added by a pass of its own: negated, it is that `vdeq`'s zero point.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np

from compiler.codegen.context import LOCAL_ALIGN, CodegenContext, LocalArena, View, accelerator_dtype
from compiler.codegen.kernels.elementwise import SharedZero, StepProgram, Tile, TileBuilder, step_program
from compiler.codegen.kernels.rows import Chunk, SoftmaxOp, Stats
from compiler.ir import Node, Value
from compiler.ops import OPS
from compiler.shape_rules import elementwise_steps, step_types
from isa.dtypes import INT_RANGES, DType

INTEGER_OPERANDS = (DType.I8, DType.U8)


@dataclass(frozen=True)
class Tail:
    """Element-wise steps after the product: program operand 0 is the finished tile, operand i
    the view operands[i - 1], laid out like the kernel's output view (broadcast axes have
    stride 0); `channel_axis` is that view's channel axis."""

    program: StepProgram
    operands: tuple[View, ...]
    channel_axis: int
    chunk: int  # elements the steps run over at once (whole rows of the stored tile, at least one)

    @functools.cached_property
    def kinds(self) -> tuple[str, ...]:
        """Per operand: "scalar" (one value), "channel" (one per output channel) or "block" (one per element)."""
        result = []
        for view in self.operands:
            moving = {axis for axis, (stride, n) in enumerate(zip(view.strides, view.shape, strict=True))
                      if stride and n != 1}  # the axes along which the operand's value changes
            result.append("scalar" if not moving else "channel" if moving == {self.channel_axis} else "block")
        return tuple(result)

    def kind(self, index: int) -> str:
        return self.kinds[index]

    def buffer_sizes(self, elements: int, max_channels: int) -> list[list[int]]:
        """Per operand, the bytes of the scratchpad buffers a Finisher keeps for it: one value, a
        block of channels, or two whole tiles (double-buffered)."""
        return [{"scalar": [view.dtype.size], "channel": [max_channels * view.dtype.size],
                 "block": [elements * view.dtype.size] * 2}[kind] for view, kind in zip(self.operands, self.kinds,
                                                                                       strict=True)]

    def reshaped(self, reshape, channel_axis: int) -> Tail:
        """The same tail with every operand view passed through `reshape` (the kernel's view of the output)."""
        return Tail(self.program, tuple(reshape(v) for v in self.operands), channel_axis, self.chunk)

    @staticmethod
    def chunk_for(config) -> int:
        """Long enough that a vector instruction's fixed latency is small beside its work, small
        enough that the temporaries take a sliver of the scratchpad."""
        return max(1, min(128 * config.vector_lanes, config.spad_bytes // 128))


@dataclass(frozen=True)
class Requantization:
    """int32 accumulator -> saturate(round_half_even(acc * multiplier[channel]) + zero_point), then
    clamped to [low, high] (a fused Relu or Clip), as onnxruntime's QLinearConv requantizes."""

    multiplier: View  # f32 [channels] or [1]: x_scale * w_scale[channel] / y_scale, in fp32
    zero_point: int
    dtype: DType  # I8 or U8
    low: int
    high: int


@dataclass(frozen=True)
class Product:
    operand: DType  # the streamed and stationary operands (F32, BF16, I8/U8)
    bias: View | None = None  # [channels]: f32, or i32 for integer products
    alpha: float = 1.0
    requant: Requantization | None = None
    weights: DType | None = None  # when it differs from `operand` (u8 x i8, or bf16 x i8: weight-only int8)
    scale: View | None = None  # f32 [channels]: a float accumulator times this first (weight-only int8)
    pad_value: float = 0.0  # the operand value that means zero (the zero point of quantized data)
    addend: View | None = None  # FusedConv/FusedGemm's Z: the result's shape, added after the bias
    activation: str = ""  # "", "Relu" or "Clip" (float results), after the addend
    activation_params: tuple[float, ...] = ()
    tail: Tail | None = None  # steps on the int32 result (then no requantization)
    softmax: bool = False  # then Softmax along each result row (the tile holds whole rows)

    @property
    def integer(self) -> bool:
        return self.operand in INTEGER_OPERANDS

    @property
    def accumulator(self) -> DType:
        return DType.I32 if self.integer else DType.F32

    @property
    def weight_dtype(self) -> DType:
        return self.operand if self.weights is None else self.weights

    @property
    def output_like(self) -> list[View]:
        """The views laid out like the product's output: the addend and the tail's operands."""
        return ([self.addend] if self.addend is not None else []) + list(self.tail.operands if self.tail else ())

    def laid_out(self, reshape: Callable[[View], View], channel_axis: int) -> Product:
        """The product with its addend and its tail's operands passed through `reshape`, the kernel's
        view of the output (its channels on `channel_axis`)."""
        return replace(self, **laid_out_epilogue({"addend": self.addend, "tail": self.tail}, reshape, channel_axis))

    @property
    def out(self) -> DType:
        if self.tail:
            return self.tail.program.result
        return self.requant.dtype if self.requant else self.accumulator

    @staticmethod
    def float32() -> Product:
        return Product(DType.F32)


class Finisher:
    """Epilogue buffers for tiles of up to `max_rows` x `max_cols` with up to `max_channels` channels.
    `softmax_sets`: sets of softmax temporaries used in turn, tile after tile (a softmax's result is one
    of them: with two, a tile's probabilities stay while the next tile is finished, for fused attention).
    `output_sets`: output tiles used in turn (a finished tile left on chip stays there until as many
    more have been finished, for the feed-forward kernel)."""

    def __init__(self, ctx: CodegenContext, product: Product, spad: LocalArena, max_rows: int, max_cols: int,
                 max_channels: int, transpose: bool = False, softmax_sets: int = 1, output_sets: int = 2):
        self.ctx, self.product = ctx, product
        if product.softmax and transpose:
            raise ValueError("a softmax runs along the stored rows: not with a transposing finish")
        sizes = Finisher._buffer_sizes(product, max_rows, max_cols, max_channels, transpose, softmax_sets,
                                       output_sets)
        self.bias = spad.alloc(sizes["bias"][0]) if sizes["bias"] else None
        self.scale = spad.alloc(sizes["scale"][0]) if sizes["scale"] else None
        self.multiplier = spad.alloc(sizes["multiplier"][0]) if sizes["multiplier"] else None
        self.zero_point = spad.alloc(sizes["zero_point"][0]) if sizes["zero_point"] else None
        self.outputs = [spad.alloc(size) for size in sizes["outputs"]]
        self.addends = [spad.alloc(size) for size in sizes["addends"]]
        self.transposed = [spad.alloc(size) for size in sizes["transposed"]]
        self.tail_temps = [spad.alloc(size) for size in sizes["tail_temps"]]
        tiles = [spad.alloc(size) for size in sizes["softmax_tiles"]]
        self.softmax_tiles = [tiles[i::softmax_sets] for i in range(softmax_sets)]
        self.softmax_stats = [spad.alloc(size) for size in sizes["softmax_stats"]]
        self.zero = SharedZero(self.zero_point) if product.tail else None
        # An integer product whose tail starts by dequantizing it: the bias is subtracted there
        # negated, as the dequantization's zero point (x + bias = x - (-bias), in wrapping int32).
        self.bias_in_tail = (self.bias is not None and product.integer and product.tail is not None
                             and product.tail.program.offset_step is not None)
        tail = product.tail
        # Per tail operand, its buffers (two for blocks); a scalar is loaded once, here.
        self.tail_buffers = [[spad.alloc(size) for size in sizes]
                             for sizes in (tail.buffer_sizes(max_rows * max_cols, max_channels) if tail else [])]
        for index, operand in enumerate(tail.operands if tail else ()):
            if tail.kind(index) == "scalar":
                ctx.dma_in(self.tail_buffers[index][0], View(operand.addr, operand.dtype, (1,), (1,)))
        self.transpose = transpose
        self.loaded: tuple[int, int] | None = None
        self.count = 0
        if product.requant:
            zero = ctx.constant(np.array([product.requant.zero_point]), DType.I32, "zero_point")
            ctx.dma_in(self.zero_point, zero)

    @staticmethod
    def _buffer_sizes(product: Product, max_rows: int, max_cols: int, max_channels: int,
                      transpose: bool, softmax_sets: int = 1, output_sets: int = 2) -> dict[str, list[int]]:
        """Bytes of each scratchpad buffer the constructor allocates (empty: not needed)."""
        elements = max_rows * max_cols
        requant = product.requant is not None
        tail = product.tail
        return {
            "bias": [max_channels * 4] if product.bias is not None else [],
            "scale": [max_channels * 4] if product.scale is not None else [],
            "multiplier": [max_channels * 4] if requant else [],
            "zero_point": [4] if requant or tail else [],  # a tail's: an int32 0 (SharedZero)
            # Integer outputs, tails and transposed stores need a tile beside the accumulator's.
            "outputs": [elements * product.out.size] * output_sets if requant or transpose or tail else [],
            "addends": [elements * 4] * 2 if product.addend is not None else [],
            "transposed": [elements * 4] * 2 if tail and transpose else [],
            "tail_temps": [4 * max(tail.chunk, max_rows, max_cols)] * tail.program.temps if tail else [],
            "tail_operands": [size for sizes in tail.buffer_sizes(elements, max_channels) for size in sizes]
            if tail else [],
            # Softmax over whole rows: rows.SoftmaxOp's tile temporaries and its per-row statistics.
            "softmax_tiles": [elements * 4] * SoftmaxOp.chunk_temps * softmax_sets if product.softmax else [],
            "softmax_stats": [max_rows * 4] * (len(SoftmaxOp.stats) + SoftmaxOp.stat_temps) if product.softmax else [],
        }

    @staticmethod
    def reserve_bytes(product: Product, max_rows: int, max_cols: int, max_channels: int,
                      transpose: bool = False, softmax_sets: int = 1, output_sets: int = 2) -> int:
        """Scratchpad bytes the constructor takes, each buffer with its alignment slack."""
        sizes = Finisher._buffer_sizes(product, max_rows, max_cols, max_channels, transpose, softmax_sets,
                                       output_sets)
        return sum(size + LOCAL_ALIGN for buffers in sizes.values() for size in buffers)

    def load_channels(self, first: int, count: int) -> int:
        """The per-channel parameters (bias, scale, multiplier) of channels [first, first + count) on
        chip: loaded unless the last load covered them. Returns where channel `first` is in the buffers,
        in channels (a kernel may load every channel once up front, then finish block by block)."""
        if self.loaded is not None and self.loaded[0] <= first and first + count <= sum(self.loaded):
            return first - self.loaded[0]
        if self.bias is not None:
            self.ctx.dma_in(self.bias, self.product.bias.window(0, first, first + count))
            if self.bias_in_tail:
                self.ctx.emitter.emit("vmuli", dtype=DType.I32, dst=self.bias, dst_rs=count, a=self.bias, a_rs=count,
                                      imm=-1, rows=1, cols=count)
        if self.scale is not None:
            self.ctx.dma_in(self.scale, self.product.scale.window(0, first, first + count))
        requant = self.product.requant
        if requant:
            multiplier = requant.multiplier
            if multiplier.size == 1:
                multiplier = View(multiplier.addr, multiplier.dtype, (count,), (0,))
            else:
                multiplier = multiplier.window(0, first, first + count)
            self.ctx.dma_in(self.multiplier, multiplier)
        tail = self.product.tail
        for index in range(len(tail.operands) if tail else 0):
            if tail.kind(index) == "channel":
                operand = tail.operands[index]
                stride = operand.strides[tail.channel_axis]
                self.ctx.dma_in(self.tail_buffers[index][0],
                                View(operand.addr + first * stride * operand.dtype.size, operand.dtype, (count,),
                                     (stride,)))
        self.loaded = (first, count)
        return 0

    def finish(self, tile: int, rows: int, cols: int, channels_on_rows: bool, first_channel: int, out: View,
               block_of: Callable[[View], View], store: bool = True) -> int:
        """The dense [rows, cols] accumulator tile at `tile` -> its block of `out` ([rows, cols], or
        [cols, rows] when transposing), channels first_channel.. along its rows or columns.
        `block_of` gives the tile's block of a view laid out like the output: of `out`, of the
        product's addend and of its tail's per-element operands. Returns where the finished block is
        on chip; without `store` it stays there (fused attention's probabilities): `out` then only
        lays out the tail's operands."""
        product, emit = self.product, self.ctx.emitter.emit
        target = block_of(out)
        addend = block_of(product.addend) if product.addend is not None else None
        acc = product.accumulator
        shape = dict(rows=rows, cols=cols)
        channels = rows if channels_on_rows else cols
        per_channel = dict(b_rs=1, b_cs=0) if channels_on_rows else dict(b_rs=0, b_cs=1)
        offset = self.load_channels(first_channel, channels)  # channels; the parameters below are 4 bytes
        if self.scale is not None:
            emit("vmul", dtype=acc, dst=tile, dst_rs=cols, a=tile, a_rs=cols, b=self.scale + 4 * offset, **per_channel,
                 **shape)
        if product.alpha != 1.0:
            emit("vmuli", dtype=acc, dst=tile, dst_rs=cols, a=tile, a_rs=cols, imm=product.alpha, **shape)
        if self.bias is not None and not self.bias_in_tail:
            emit("vadd", dtype=acc, dst=tile, dst_rs=cols, a=tile, a_rs=cols, b=self.bias + 4 * offset, **per_channel,
                 **shape)
        result, result_dtype = tile, acc
        requant = product.requant
        if requant:
            result, result_dtype = self.outputs[self.count % len(self.outputs)], requant.dtype
            scale = dict(b=self.multiplier + 4 * offset, **per_channel)
            emit("vreq", dtype=requant.dtype, dst=result, dst_rs=cols, a=tile, a_rs=cols, c=self.zero_point, c_rs=0,
                 c_cs=0, **scale, **shape)
            low, high = INT_RANGES[requant.dtype]
            if requant.low > low:
                emit("vmaxi", dtype=result_dtype, dst=result, dst_rs=cols, a=result, a_rs=cols, imm=requant.low,
                     **shape)
            if requant.high < high:
                emit("vmini", dtype=result_dtype, dst=result, dst_rs=cols, a=result, a_rs=cols, imm=requant.high,
                     **shape)
        out_rows, out_cols = rows, cols
        if self.transpose:
            transposed = self.transposed[self.count % 2] if product.tail else \
                self.outputs[(self.count + 1) % len(self.outputs)] if requant else \
                self.outputs[self.count % len(self.outputs)]
            emit("vmov", dtype=result_dtype, dst=transposed, dst_rs=rows, a=result, a_rs=1, a_cs=cols, rows=cols,
                 cols=rows)
            result, out_rows, out_cols = transposed, cols, rows
        self._addend_and_activation(result, result_dtype, out_rows, out_cols, addend)
        if product.tail:
            result = self._tail(result, out_rows, out_cols, channels_on_rows != self.transpose, block_of, offset)
        if product.softmax:
            result = self._softmax(result, out_rows, out_cols)
        self.count += 1
        if store:
            self.ctx.dma_out(result, target)
        return result

    def _softmax(self, result: int, rows: int, cols: int) -> int:
        """Softmax along each row of the dense f32 tile at `result` (whole rows), as the Softmax
        kernel computes it on a row that fits one tile (rows.SoftmaxOp); returns where it is."""
        op = SoftmaxOp(log=False)
        temps = list(self.softmax_tiles[self.count % len(self.softmax_tiles)])
        chunk = Chunk(self.ctx, True, rows, cols, Tile(result, DType.F32, cols, 1), [], temps, 0)
        named = {name: Tile(address, DType.F32, rows, 1) for name, address in zip(op.stats, self.softmax_stats,
                                                                                   strict=False)}
        stats = Stats(self.ctx, rows, named, [], self.softmax_stats[len(op.stats):])
        op.accumulate(0, chunk, stats, True)
        op.finish(0, stats)
        return op.output(chunk, stats).addr

    def _tail(self, result: int, rows: int, cols: int, channels_on_rows: bool, block_of: Callable[[View], View],
              offset: int = 0) -> int:
        """The tail's steps on the dense accumulator tile at `result` ([rows, cols] as stored), chunk by chunk
        of whole rows, into an output buffer; returns that buffer. `offset`: where the tile's first
        channel is in the per-channel buffers (load_channels)."""
        tail, out_dtype = self.product.tail, self.product.out
        out = self.outputs[self.count % len(self.outputs)]
        for index, operand in enumerate(tail.operands):
            if tail.kind(index) == "block":
                self.ctx.dma_in(self.tail_buffers[index][self.count % 2], block_of(operand))
        chunk_rows = max(1, tail.chunk // cols)
        for r0 in range(0, rows, chunk_rows):
            count = min(chunk_rows, rows - r0)
            tiles = [Tile(result + r0 * cols * 4, self.product.accumulator, cols, 1)]
            for index, operand in enumerate(tail.operands):
                kind, size = tail.kind(index), operand.dtype.size
                if kind == "scalar":
                    tiles.append(Tile(self.tail_buffers[index][0], operand.dtype, 0, 0))
                elif kind == "channel":
                    tiles.append(_channel_tile(self.tail_buffers[index][0], operand.dtype, offset, r0,
                                               channels_on_rows))
                else:
                    tiles.append(Tile(self.tail_buffers[index][self.count % 2] + r0 * cols * size, operand.dtype,
                                      cols, 1))
            builder = TileBuilder(self.ctx, count, cols, list(self.tail_temps), DType.F32, self.zero)
            destination = Tile(out + r0 * cols * out_dtype.size, out_dtype, cols, 1)
            negated_bias = _channel_tile(self.bias, DType.I32, offset, r0, channels_on_rows) \
                if self.bias_in_tail else None
            tail.program.run_into(builder, tiles, destination, negated_bias)
        return out

    def _addend_and_activation(self, result: int, dtype: DType, rows: int, cols: int, addend: View | None) -> None:
        """result (dense [rows, cols], as stored) + the addend block, then the activation, in place."""
        product, emit = self.product, self.ctx.emitter.emit
        shape = dict(dtype=dtype, dst=result, dst_rs=cols, a=result, a_rs=cols, rows=rows, cols=cols)
        if product.addend is not None:
            buffer = self.addends[self.count % 2]
            self.ctx.dma_in(buffer, addend)
            emit("vadd", b=buffer, b_rs=cols, **shape)
        if product.activation == "Relu":
            emit("vmaxi", imm=0.0, **shape)
        elif product.activation == "Clip":
            low, high = product.activation_params
            if low != -math.inf:
                emit("vmaxi", imm=low, **shape)
            if high != math.inf:
                emit("vmini", imm=high, **shape)


def _channel_tile(buffer: int, dtype: DType, offset: int, first_row: int, channels_on_rows: bool) -> Tile:
    """A per-channel buffer (channel `offset` first) as a tile operand for the chunk of a stored tile
    from row `first_row`: one value per row, or per column."""
    first = buffer + offset * dtype.size
    return Tile(first + first_row * dtype.size, dtype, 1, 0) if channels_on_rows else Tile(first, dtype, 0, 1)


def epilogue_of(ctx: CodegenContext, node: Node, own: int) -> dict:
    """A Fused* (or MatMulW8) node's addend view (its input after the op's `own`), activation and
    tail (on the inputs after the addend), as Product fields."""
    if "activation" not in OPS[node.op].attrs:  # the ops with an epilogue (compiler/ops.py _EPILOGUE)
        return {}
    addend = ctx.view(node.inputs[own]) if len(node.inputs) > own and node.inputs[own] else None
    return dict(addend=addend, activation=node.attrs.get("activation", ""),
                activation_params=tuple(node.attrs.get("activation_params", ())),
                tail=tail_of(ctx, node, own + 1, DType.F32), softmax=bool(node.attrs.get("softmax")))


def laid_out_epilogue(epilogue: dict, reshape: Callable[[View], View], channel_axis: int) -> dict:
    """Epilogue fields (epilogue_of's) with the addend and the tail's operands, laid out like the
    node's output, passed through `reshape`: the kernel's view of the output, its channels on
    `channel_axis`."""
    fields = dict(epilogue)
    if fields.get("addend") is not None:
        fields["addend"] = reshape(fields["addend"])
    if fields.get("tail") is not None:
        fields["tail"] = fields["tail"].reshaped(reshape, channel_axis)
    return fields


def tail_of(ctx: CodegenContext, node: Node, first: int, product: DType) -> Tail | None:
    """The node's `tail` (fused element-wise steps on its result, of dtype `product`) with the
    operands from input `first` on, laid out like its output (channels on axis 1 for a
    convolution, on the last axis for a matrix product); None without one."""
    if not node.attrs.get("tail"):
        return None
    graph, out = ctx.graph, ctx.view(node.outputs[0])
    names = node.inputs[first:]
    steps = elementwise_steps({"steps": node.attrs["tail"]})
    where = f"{node.op} node {node.name!r}"
    types = step_types(steps, [Value("product", product.asm_name, out.shape)] + [graph.values[n] for n in names])
    results = [accelerator_dtype(dtype, f"{node.outputs[0]} tail step {j}", where)
               for j, (dtype, _) in enumerate(types)]
    operands = [ctx.view(name).broadcast_to(out.shape) for name in names]
    program = step_program(ctx, node, steps, [product] + [v.dtype for v in operands], [None, *names], results)
    # The output's last axis; a kernel that lays the operands out as its own view says where the
    # channels are then (Tail.reshaped).
    return Tail(program, tuple(operands), len(out.shape) - 1, Tail.chunk_for(ctx.config))
