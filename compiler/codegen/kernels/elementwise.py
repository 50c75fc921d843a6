"""Element-wise ops (with numpy broadcasting) on the vector unit.

The output is walked in 2-D tiles; each input is loaded compactly (a broadcast row or
column is loaded once and read with stride 0), the op's recipe emits vector
instructions over the tile, and the result is converted to the output dtype and stored.
Tiles alternate between two sets of buffers so that DMA overlaps the vector unit.

`RECIPES[op](builder, inputs, attrs)` returns the result tile; a recipe only calls the
`TileBuilder`, so fusing chains of element-wise ops later reuses the recipes as they are.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from compiler.codegen.context import CodegenContext, View, accelerator_dtype, unsupported
from compiler.ir import Node
from compiler.shape_rules import Step, elementwise_steps, step_types
from isa.dtypes import DType

MAX_TEMPS = 10


@dataclass(frozen=True)
class Tile:
    """An operand of the current tile in local memory: element [r, c] at addr + (r*rs + c*cs)*size."""

    addr: int
    dtype: DType
    rs: int
    cs: int


class SharedZero:
    """An int32 0 in local memory that the tile builders of one kernel share (the zero point of a
    quantization without one), filled when first used rather than once per tile."""

    def __init__(self, address: int):
        self.address, self.filled = address, False


class TileBuilder:
    """Emits vector instructions over one rows x cols tile, with a few temporary tiles.

    An instruction whose tile operands are all broadcast scalars (rs = cs = 0: a scale, a zero
    point, a fill) is emitted over one element and its result is again a broadcast scalar, so
    loop-invariant values cost a pipeline fill instead of a pass over the tile."""

    FOLD_SCALARS = True

    def __init__(self, ctx: CodegenContext, rows: int, cols: int, temps: list[int], dtype: DType,
                 zero: SharedZero | None = None):
        self.ctx, self.rows, self.cols, self.dtype = ctx, rows, cols, dtype
        self.free = list(temps)
        self.zero = zero
        # While `holding`, the newest instruction (mnemonic, fields) waits in `held` until the next one,
        # so that a program's last instruction can still be given the program's destination.
        self.holding = False
        self.held: tuple[str, dict] | None = None

    def temp(self, dtype: DType | None = None) -> Tile:
        if not self.free:
            raise AssertionError("element-wise recipe needs more temporaries than MAX_TEMPS")
        return Tile(self.free.pop(), self.dtype if dtype is None else dtype, self.cols, 1)

    def _emit(self, mnemonic: str, dst: Tile, field_dtype: DType | None = None, **operands) -> Tile:
        """mnemonic over the tile into dst; the instruction's dtype field is dst's unless `field_dtype`
        (vdeq names its source type)."""
        fields = dict(dtype=dst.dtype if field_dtype is None else field_dtype, dst=dst.addr, dst_rs=dst.rs,
                      rows=self.rows, cols=self.cols)
        for name, tile in operands.items():
            if isinstance(tile, Tile):
                fields.update({name: tile.addr, f"{name}_rs": tile.rs, f"{name}_cs": tile.cs})
            else:
                fields[name] = tile
        self.release()
        if self.holding:
            self.held = (mnemonic, fields)
        else:
            self.ctx.emitter.emit(mnemonic, **fields)
        return dst

    def release(self, into: Tile | None = None) -> None:
        """Emit the held instruction, if any; with `into`, writing there instead of its own destination."""
        if self.held is not None:
            mnemonic, fields = self.held
            self.held = None
            if into is not None:
                fields = dict(fields, dst=into.addr, dst_rs=into.rs)
            self.ctx.emitter.emit(mnemonic, **fields)

    def _result(self, mnemonic: str, dtype: DType, field_dtype: DType | None = None, **operands) -> Tile:
        """A new temporary = mnemonic(operands); a scalar when every tile operand is one."""
        dst = self.temp(dtype)
        tiles = [t for t in operands.values() if isinstance(t, Tile)]
        if self.FOLD_SCALARS and all(t.rs == 0 and t.cs == 0 for t in tiles):
            rows, cols = self.rows, self.cols
            self.rows = self.cols = 1
            try:
                self._emit(mnemonic, dst, field_dtype, **operands)
            finally:
                self.rows, self.cols = rows, cols
            return Tile(dst.addr, dtype, 0, 0)
        return self._emit(mnemonic, dst, field_dtype, **operands)

    def unary(self, op: str, a: Tile) -> Tile:
        return self._result(f"v{op}", a.dtype, a=a)

    def binary(self, op: str, a: Tile, b: Tile) -> Tile:
        return self._result(f"v{op}", a.dtype, a=a, b=b)

    def imm(self, op: str, a: Tile, value: float) -> Tile:
        value = float(value) if a.dtype.is_float else int(value)
        return self._result(f"v{op}i", a.dtype, a=a, imm=value)

    def select(self, cond: Tile, a: Tile, b: Tile) -> Tile:
        return self._result("vsel", a.dtype, a=cond, b=a, c=b)

    def fill(self, value: float, dtype: DType | None = None) -> Tile:
        dtype = self.dtype if dtype is None else dtype
        if value == 0 and dtype is DType.I32 and self.zero is not None:  # a zero point of 0
            zero = Tile(self.zero.address, DType.I32, 0, 0)
            if not self.zero.filled:
                self.release()
                self.ctx.emitter.emit("vfill", dtype=DType.I32, dst=zero.addr, dst_rs=0, imm=0, rows=1, cols=1)
                self.zero.filled = True
            return zero
        return self._result("vfill", dtype, imm=float(value) if dtype.is_float else int(value))

    def requantize(self, a: Tile, scale: Tile, zero_point: Tile, dtype: DType) -> Tile:
        """saturate(round_half_even(a * scale) + zero_point) to i8/u8, from an i32 tile."""
        return self._result("vreq", dtype, a=a, b=scale, c=zero_point)

    def dequantize(self, a: Tile, scale: Tile, zero_point: Tile) -> Tile:
        """fp32(a - zero_point) * scale, from an i8/u8/i32 tile (f32 scale, i32 zero point)."""
        return self._result("vdeq", DType.F32, a.dtype, a=a, b=scale, c=zero_point)

    def quantize(self, a: Tile, scale: Tile, zero_point: Tile, dtype: DType) -> Tile:
        """saturate(round_half_even(fp32(a / scale)) + zero_point) to i8/u8, from an f32 tile."""
        return self._result("vquant", dtype, a=a, b=scale, c=zero_point)

    def convert(self, a: Tile, dtype: DType, dst: Tile | None = None) -> Tile:
        if a.dtype == dtype and dst is None:
            return a
        if dst is None:
            return self._result("vcvt", dtype, a=a, src_dtype=a.dtype)
        return self._emit("vcvt", dst, a=a, src_dtype=a.dtype)


def _clip(b: TileBuilder, x: Tile, low: float, high: float) -> Tile:
    if low != -math.inf:
        x = b.imm("max", x, low)
    if high != math.inf:
        x = b.imm("min", x, high)
    return x


def _hard_sigmoid(b: TileBuilder, x: Tile, alpha: float, beta: float) -> Tile:
    return _clip(b, b.imm("add", b.imm("mul", x, alpha), beta), 0.0, 1.0)


def _gelu(b: TileBuilder, x: Tile, approximate: str) -> Tile:
    if approximate == "tanh":
        cube = b.binary("mul", b.binary("mul", x, x), x)
        inner = b.imm("mul", b.binary("add", x, b.imm("mul", cube, 0.044715)), math.sqrt(2.0 / math.pi))
        return b.imm("mul", b.binary("mul", x, b.imm("add", b.unary("tanh", inner), 1.0)), 0.5)
    erf = b.unary("erf", b.imm("mul", x, 1.0 / math.sqrt(2.0)))
    return b.imm("mul", b.binary("mul", x, b.imm("add", erf, 1.0)), 0.5)


def _unary(op: str):
    return lambda b, xs, attrs: b.unary(op, xs[0])


def _fold(op: str):
    def recipe(b: TileBuilder, xs: list[Tile], attrs: dict) -> Tile:
        result = xs[0] if len(xs) > 1 else b.unary("mov", xs[0])
        for x in xs[1:]:
            result = b.binary(op, result, x)
        return result

    return recipe


def _compare(op: str, swap: bool = False):
    def recipe(b: TileBuilder, xs: list[Tile], attrs: dict) -> Tile:
        return b.binary(op, xs[1], xs[0]) if swap else b.binary(op, xs[0], xs[1])

    return recipe


def _softplus(b: TileBuilder, x: Tile) -> Tile:
    # log(1 + e^x) = max(x, 0) + log(1 + e^-|x|): no overflow for large x.
    return b.binary("add", b.imm("max", x, 0.0),
                    b.unary("log", b.imm("add", b.unary("exp", b.unary("neg", b.unary("abs", x))), 1.0)))


def _elu(b: TileBuilder, x: Tile, alpha: float, scale: float = 1.0) -> Tile:
    negative = b.imm("mul", b.imm("add", b.unary("exp", b.imm("min", x, 0.0)), -1.0), alpha)
    result = b.binary("add", b.imm("max", x, 0.0), negative)
    return b.imm("mul", result, scale) if scale != 1.0 else result


RECIPES = {
    "Relu": lambda b, xs, a: b.imm("max", xs[0], 0),
    "LeakyRelu": lambda b, xs, a: b.binary("max", xs[0], b.imm("mul", xs[0], a.get("alpha", 0.01)))
    if a.get("alpha", 0.01) <= 1 else b.binary("min", xs[0], b.imm("mul", xs[0], a.get("alpha", 0.01))),
    "PRelu": lambda b, xs, a: b.select(b.imm("lt", xs[0], 0.0), b.binary("mul", xs[0], xs[1]), xs[0]),
    "Clip": lambda b, xs, a: b.unary("mov", _clip(b, xs[0], a.get("min", -math.inf), a.get("max", math.inf))),
    "Sigmoid": _unary("sigmoid"),
    "HardSigmoid": lambda b, xs, a: _hard_sigmoid(b, xs[0], a.get("alpha", 0.2), a.get("beta", 0.5)),
    "HardSwish": lambda b, xs, a: b.binary("mul", xs[0], _hard_sigmoid(b, xs[0], 1.0 / 6.0, 0.5)),
    "Tanh": _unary("tanh"),
    "Exp": _unary("exp"),
    "Log": _unary("log"),
    "Sqrt": _unary("sqrt"),
    "Reciprocal": _unary("recip"),
    "Neg": _unary("neg"),
    "Abs": _unary("abs"),
    "Erf": _unary("erf"),
    "Floor": _unary("floor"),
    "Ceil": _unary("ceil"),
    "Round": _unary("round"),
    "Identity": _unary("mov"),
    "Gelu": lambda b, xs, a: _gelu(b, xs[0], a.get("approximate", "none")),
    "Softplus": lambda b, xs, a: _softplus(b, xs[0]),
    "Softsign": lambda b, xs, a: b.binary("div", xs[0], b.imm("add", b.unary("abs", xs[0]), 1.0)),
    "Elu": lambda b, xs, a: _elu(b, xs[0], a.get("alpha", 1.0)),
    "Selu": lambda b, xs, a: _elu(b, xs[0], a.get("alpha", 1.67326319217681884765625),
                                  a.get("gamma", 1.05070102214813232421875)),
    "Sign": lambda b, xs, a: b.binary("sub", b.imm("gt", xs[0], 0), b.imm("lt", xs[0], 0)),
    "Add": _fold("add"), "Sub": _fold("sub"), "Mul": _fold("mul"), "Div": _fold("div"),
    "Pow": _fold("pow"), "Max": _fold("max"), "Min": _fold("min"), "Sum": _fold("add"),
    "Mean": lambda b, xs, a: b.imm("mul", _fold("add")(b, xs, a), 1.0 / len(xs)),
    "Equal": _compare("eq"), "Less": _compare("lt"), "Greater": _compare("gt"),
    "LessOrEqual": _compare("le"), "GreaterOrEqual": _compare("ge"),
    "And": _compare("and"), "Or": _compare("or"),
    "Xor": lambda b, xs, a: b.binary("ne", b.imm("ne", xs[0], 0), b.imm("ne", xs[1], 0)),
    "Not": lambda b, xs, a: b.unary("not", xs[0]),
    "Where": lambda b, xs, a: b.select(xs[0], xs[1], xs[2]),
    "Cast": lambda b, xs, a: xs[0],
}
FLOAT_ONLY = {"Sigmoid", "HardSigmoid", "HardSwish", "Tanh", "Exp", "Log", "Sqrt", "Reciprocal", "Erf", "Gelu",
              "Softplus", "Softsign", "Elu", "Selu", "Pow", "Floor", "Ceil", "Round", "LeakyRelu", "PRelu"}
COMPARISONS = {"Equal", "Less", "Greater", "LessOrEqual", "GreaterOrEqual", "And", "Or", "Xor", "Not"}
COMPUTE_DTYPES = (DType.F32, DType.I32, DType.I8, DType.U8)


def merge_joint(shape: tuple[int, ...], strides: list[tuple[int, ...]]):
    """Merge adjacent dimensions that are contiguous in every operand (size-1 dimensions vanish)."""
    keep = [i for i, n in enumerate(shape) if n != 1] or [len(shape) - 1] if shape else []
    if not shape:
        return (1,), [(0,) for _ in strides]
    dims = [shape[i] for i in keep]
    per = [[s[i] for i in keep] for s in strides]
    merged_dims, merged = [dims[-1]], [[p[-1]] for p in per]
    for position in range(len(dims) - 2, -1, -1):
        n = dims[position]
        if all(p[position] == merged_dims[0] * m[0] for p, m in zip(per, merged, strict=True)):
            merged_dims[0] *= n
        else:
            merged_dims.insert(0, n)
            for p, m in zip(per, merged, strict=True):
                m.insert(0, p[position])
    return tuple(merged_dims), [tuple(m) for m in merged]


def compute_dtype(node: Node, dtypes: list[DType]) -> DType:
    if node.op == "Where":
        dtypes = dtypes[1:]
    kinds = set(dtypes)
    if node.op in FLOAT_ONLY and not all(d.is_float for d in kinds):
        raise unsupported(node, f"the accelerator computes it on floats only, not "
                                f"{', '.join(sorted(d.asm_name for d in kinds))}")
    if node.op in FLOAT_ONLY or any(d.is_float for d in kinds):
        if not kinds <= {DType.F32, DType.BF16, DType.F16}:
            raise unsupported(node, f"mixed input types {sorted(d.asm_name for d in kinds)}")
        return DType.F32
    if len(kinds) != 1:
        raise unsupported(node, f"mixed input types {sorted(d.asm_name for d in kinds)}")
    (dtype,) = kinds
    if dtype is DType.BOOL:
        return DType.U8
    if dtype not in COMPUTE_DTYPES:
        raise unsupported(node, f"the vector unit does not compute on {dtype.asm_name}")
    return dtype


def elementwise_kernel(ctx: CodegenContext, node: Node) -> None:
    out = ctx.view(node.outputs[0])
    names = [name for name in node.inputs if name]
    ins = [ctx.view(name) for name in names]
    for name in names + node.outputs[:1]:
        accelerator_dtype(ctx.graph.values[name].dtype, name, f"{node.op} node {node.name!r}")
    compute = ins[0].dtype if node.op == "Cast" else compute_dtype(node, [v.dtype for v in ins])
    elementwise_views(ctx, ins, out, _node_body(node, compute, out.dtype), compute)


def _node_body(node: Node, compute: DType, out_dtype: DType):
    """The tile body of an element-wise node: its recipe, with the conversions around it."""

    def body(builder: TileBuilder, tiles: list[Tile]) -> Tile:
        if node.op != "Cast":
            tiles = [t if t.dtype == compute else builder.convert(t, compute) for t in tiles]
        elif tiles[0].dtype is DType.F16 and not out_dtype.is_float:
            tiles = [builder.convert(tiles[0], DType.F32)]  # truncation below needs arithmetic
        result = RECIPES[node.op](builder, tiles, node.attrs)
        if node.op == "Cast" and result.dtype.is_float and not out_dtype.is_float:
            # ONNX casts floats to integers by truncation toward zero.
            result = builder.select(builder.imm("lt", result, 0.0), builder.unary("ceil", result),
                                    builder.unary("floor", result))
        if node.op in COMPARISONS:
            result = builder.imm("ne", result, 0)  # exactly 0 or 1 before it becomes a bool
        return result

    return body


def elementwise_views(ctx: CodegenContext, ins: list[View], out: View, body, compute: DType,
                      temps: int = MAX_TEMPS) -> None:
    """out = body(ins) element by element, the inputs broadcast to out's shape (numpy rules).

    `body(builder, tiles)` emits the vector instructions for one tile and returns the result
    tile, in any dtype: it is converted to out's dtype on the way out (bool: from 0/1). It may
    take up to `temps` temporary tiles."""
    if out.size == 0:
        return  # nothing to compute
    operands = [v.broadcast_to(out.shape) for v in ins]
    dims, strides = merge_joint(out.shape, [out.strides] + [v.strides for v in operands])
    rows_total = dims[-2] if len(dims) >= 2 else 1
    cols_total = dims[-1]
    outer_dims = dims[:-2]
    spad = ctx.scratchpad()
    # A scalar operand (one element for the whole output: a scale, a zero point) is loaded once.
    scalars = {}
    for index, (operand, operand_strides) in enumerate(zip(ins, strides[1:], strict=True)):
        if not any(operand_strides):
            load_dtype = DType.U8 if operand.dtype is DType.BOOL else operand.dtype
            scalars[index] = Tile(spad.alloc(load_dtype.size), load_dtype, 0, 0)
            ctx.dma_in(scalars[index].addr, View(operand.addr, load_dtype, (1,), (1,)))
    zero = SharedZero(spad.alloc(4))
    widest = max([out.dtype.size] + [v.dtype.size for v in ins] + [4])
    buffers_per_tile = len(ins) - len(scalars) + temps + 2
    per_buffer = spad.free // (2 * buffers_per_tile) // 64 * 64
    elements = max(per_buffer // widest, 1)
    col_tile = min(cols_total, elements, 65535)
    row_tile = min(rows_total, max(elements // col_tile, 1), 65535)
    sets = [[spad.alloc(per_buffer) for _ in range(buffers_per_tile)] for _ in range(2)]
    outer_count = 1
    for n in outer_dims:
        outer_count *= n
    tile_index = 0
    out_dtype = DType.U8 if out.dtype is DType.BOOL else out.dtype

    def view_2d(view_strides: tuple[int, ...], base: View, outer_index: tuple[int, ...]) -> tuple[int, int, int]:
        offset = sum(i * s for i, s in zip(outer_index, view_strides[:-2], strict=False))
        row_stride = view_strides[-2] if len(view_strides) >= 2 else 0
        return base.addr + offset * base.dtype.size, row_stride, view_strides[-1]

    for flat in range(outer_count):
        outer_index = []
        rest = flat
        for n in reversed(outer_dims):
            outer_index.append(rest % n)
            rest //= n
        outer_index = tuple(reversed(outer_index))
        for r0 in range(0, rows_total, row_tile):
            rt = min(row_tile, rows_total - r0)
            for c0 in range(0, cols_total, col_tile):
                ct = min(col_tile, cols_total - c0)
                buffers = list(sets[tile_index % 2])
                tiles = []
                for index, (operand, operand_strides) in enumerate(zip(ins, strides[1:], strict=True)):
                    if index in scalars:
                        tiles.append(scalars[index])
                        continue
                    addr, sr, sc = view_2d(operand_strides, operand, outer_index)
                    rows_l = 1 if sr == 0 else rt
                    cols_l = 1 if sc == 0 else ct
                    load_dtype = DType.U8 if operand.dtype is DType.BOOL else operand.dtype
                    window = View(addr + (r0 * sr + c0 * sc) * operand.dtype.size, load_dtype, (rows_l, cols_l),
                                  (sr, sc))
                    local = buffers.pop()
                    ctx.dma_in(local, window)
                    tiles.append(Tile(local, load_dtype, cols_l if rows_l > 1 else 0, 1 if cols_l > 1 else 0))
                out_local = buffers.pop()
                builder = TileBuilder(ctx, rt, ct, buffers, compute, zero)
                result = body(builder, tiles)
                if out.dtype is DType.BOOL:  # any non-zero is true
                    builder.convert(result, DType.BOOL, Tile(out_local, DType.BOOL, ct, 1))
                elif result.dtype != out_dtype:
                    builder.convert(result, out_dtype, Tile(out_local, out_dtype, ct, 1))
                elif result.cs == 1 and (result.rs == ct or rt == 1):
                    out_local = result.addr  # already dense in local memory: stored as it is
                else:
                    builder._emit("vmov", Tile(out_local, out_dtype, ct, 1), a=result)
                out_addr, out_sr, out_sc = view_2d(strides[0], out, outer_index)
                ctx.dma_out(out_local, View(out_addr + (r0 * out_sr + c0 * out_sc) * out.dtype.size, out_dtype,
                                            (rt, ct), (out_sr, out_sc)))
                tile_index += 1


def _per_axis(param: View, rank: int, axis: int) -> View:
    """A scale or zero point (a scalar, or one value per index of `axis`) shaped to broadcast over a tensor."""
    if param.size == 1:
        return View(param.addr, param.dtype, (1,) * rank, (0,) * rank)
    if len(param.shape) == rank:  # already shaped to broadcast
        return param
    shape, strides = [1] * rank, [0] * rank
    shape[axis], strides[axis] = param.size, 1
    return View(param.addr, param.dtype, tuple(shape), tuple(strides))


def _quant_params(ctx: CodegenContext, node: Node) -> tuple[View, View | None]:
    """The scale and zero point views shaped to broadcast over the input; the zero point is None
    when it is absent or a constant 0 (a dequantization then has nothing to subtract)."""
    rank = len(ctx.view(node.inputs[0]).shape)
    axis = node.attrs.get("axis", 1)
    scale = _per_axis(ctx.view(node.inputs[1]), rank, axis)
    if len(node.inputs) > 2 and node.inputs[2] and not is_zero_constant(ctx, node.inputs[2]):
        return scale, _per_axis(ctx.view(node.inputs[2]), rank, axis)
    return scale, None


def is_zero_constant(ctx: CodegenContext, name: str) -> bool:
    value = ctx.graph.values[name]
    return value.is_const and not np.any(value.const)


def _check_quantize(node: Node, x: DType) -> None:
    if not x.is_float:
        raise unsupported(node, f"quantizing {x.asm_name}")


def _check_dequantize(node: Node, x: DType) -> None:
    if x not in (DType.I8, DType.U8, DType.I32):
        raise unsupported(node, f"dequantizing {x.asm_name}")


def quantize_step(b: TileBuilder, tiles: list[Tile], out_dtype: DType) -> Tile:
    """saturate(round_half_even(x / scale) + zero_point) of the x, scale and (optional) zero point
    tiles: one `vquant` (an fp32 division, as onnxruntime divides) for i8/u8."""
    x_tile, scale_tile = b.convert(tiles[0], DType.F32), b.convert(tiles[1], DType.F32)
    zero_tile = b.convert(tiles[2], DType.I32) if len(tiles) > 2 else b.fill(0, DType.I32)
    if out_dtype == DType.I32:
        return b.binary("add", b.convert(b.binary("div", x_tile, scale_tile), DType.I32), zero_tile)
    return b.quantize(x_tile, scale_tile, zero_tile, out_dtype)


def dequantize_step(b: TileBuilder, tiles: list[Tile]) -> Tile:
    """(x - zero_point) * scale of the x, scale and (optional) zero point tiles, the subtraction in
    int32 as onnxruntime does: one `vdeq`."""
    x_tile, scale_tile = tiles[:2]
    zero_tile = b.convert(tiles[2], DType.I32) if len(tiles) > 2 else b.fill(0, DType.I32)
    return b.dequantize(x_tile, b.convert(scale_tile, DType.F32), zero_tile)


def quantize_kernel(ctx: CodegenContext, node: Node) -> None:
    """QuantizeLinear: saturate(round_half_even(x / scale) + zero_point), as onnxruntime computes it
    (an fp32 division): one `vquant` per tile (quantize_step)."""
    x, out = ctx.view(node.inputs[0]), ctx.view(node.outputs[0])
    _check_quantize(node, x.dtype)
    scale, zero_point = _quant_params(ctx, node)
    elementwise_views(ctx, [x, scale] + ([zero_point] if zero_point else []), out,
                      lambda b, tiles: quantize_step(b, tiles, out.dtype), DType.F32)


def dequantize_kernel(ctx: CodegenContext, node: Node) -> None:
    """DequantizeLinear: (x - zero_point) * scale, the subtraction in int32 as onnxruntime does."""
    x, out = ctx.view(node.inputs[0]), ctx.view(node.outputs[0])
    _check_dequantize(node, x.dtype)
    scale, zero_point = _quant_params(ctx, node)
    elementwise_views(ctx, [x, scale] + ([zero_point] if zero_point else []), out, dequantize_step, DType.F32)


# Fused chains ------------------------------------------------------------------------------------
class _TempCount(TileBuilder):
    """A TileBuilder that emits nothing and records the most temporaries in use at once."""

    def __init__(self, limit: int):
        super().__init__(None, 1, 1, list(range(limit)), DType.F32)
        self.limit, self.most = limit, 0

    def temp(self, dtype: DType | None = None) -> Tile:
        tile = super().temp(dtype)
        self.most = max(self.most, self.limit - len(self.free))
        return tile

    def _emit(self, mnemonic: str, dst: Tile, field_dtype: DType | None = None, **operands) -> Tile:
        return dst


def _stored(b: TileBuilder, result: Tile, dtype: DType) -> Tile:
    """The tile as the unfused kernel would have stored it in `dtype` and the next one loaded it
    (a bool as u8 0/1), so that the chain computes bit for bit what the separate kernels do."""
    if dtype is DType.BOOL:
        stored = b.convert(result, DType.BOOL)
        return Tile(stored.addr, DType.U8, stored.rs, stored.cs)
    return b.convert(result, dtype)


def _step_body(node: Node, step: Step, operand_dtypes: list[DType], result: DType):
    """(compute dtype, body(builder, tiles)) of one step, with the checks and conversions of its own kernel."""
    step_node = Node(step.op, [], [], step.attrs, node.name)
    if step.op == "QuantizeLinear":
        _check_quantize(step_node, operand_dtypes[0])
        return DType.F32, lambda b, tiles: quantize_step(b, tiles, result)
    if step.op == "DequantizeLinear":
        _check_dequantize(step_node, operand_dtypes[0])
        return DType.F32, dequantize_step
    if step.op not in RECIPES:
        raise unsupported(node, f"step {step.op} has no element-wise recipe")
    compute = operand_dtypes[0] if step.op == "Cast" else compute_dtype(step_node, operand_dtypes)
    return compute, _node_body(step_node, compute, result)


@dataclass
class StepProgram:
    """A FusedElementwise step list made ready to emit: `body(builder, tiles)` runs every step on
    one tile of its operands (tiles[i] is operand x<i>) and returns the last step's result;
    `temps` is how many temporary tiles it needs at most."""

    body: object
    temps: int
    result: DType
    # The step that dequantizes operand 0 without a zero point, when no other step reads operand 0:
    # body(..., offset=t) subtracts the int32 tile t there (vdeq's zero point), for free.
    offset_step: int | None = None

    def run_into(self, builder: TileBuilder, tiles: list[Tile], destination: Tile, offset: Tile | None = None) -> None:
        """Run the steps on one tile and leave the result in `destination` (converted to its type
        when the last step's differs). When the last instruction wrote the result over the whole
        tile in the destination's type (a final quantization, an add, ...), it writes the
        destination instead: no copy."""
        builder.holding = True
        try:
            value = self.body(builder, tiles, offset)
        finally:
            builder.holding = False
        held = builder.held
        if value.dtype == destination.dtype and held is not None and held[1]["dst"] == value.addr \
                and (held[1]["rows"], held[1]["cols"]) == (builder.rows, builder.cols):
            builder.release(into=destination)
            return
        builder.release()
        if value.dtype != destination.dtype:
            builder.convert(value, destination.dtype, destination)
        else:
            builder._emit("vmov", destination, a=value)


def step_program(ctx: CodegenContext, node: Node, steps: list[Step], operand_dtypes: list[DType],
                 operand_names: list[str | None], result_dtypes: list[DType]) -> StepProgram:
    """The program of `steps` on operands of `operand_dtypes` (their graph names, None for one
    that is no graph value), each step's result in `result_dtypes`: each step's recipe, the
    intermediates converted to their IR dtypes as the unfused kernels would store them, a
    temporary reused once the steps that read it are done."""
    if any(dtype.size > 4 for dtype in result_dtypes[:-1]):
        raise unsupported(node, "an intermediate wider than 32 bits")
    operands: list[list[int | tuple[str, int]]] = []  # per step: operand index, or ("s", step)
    programs = []

    def dtype_of(ref) -> DType:
        return result_dtypes[ref[1]] if isinstance(ref, tuple) else operand_dtypes[ref]

    for j, step in enumerate(steps):
        refs: list = [int(o[1:]) if o.startswith("x") else ("s", int(o[1:])) for o in step.operands if o]
        if step.op in ("QuantizeLinear", "DequantizeLinear") and len(refs) == 3 and isinstance(refs[2], int) \
                and operand_names[refs[2]] is not None and is_zero_constant(ctx, operand_names[refs[2]]):
            refs.pop()  # a zero point of 0: nothing to subtract or add
        operands.append(refs)
        programs.append(_step_body(node, step, [dtype_of(r) for r in refs], result_dtypes[j]))
    last_use = {}
    for j, refs in enumerate(operands):
        for ref in refs:
            if isinstance(ref, tuple):
                last_use[ref[1]] = j

    readers = [j for j, refs in enumerate(operands) if 0 in refs]
    offset_step = None
    if len(readers) == 1 and steps[readers[0]].op == "DequantizeLinear" and operand_dtypes[0] is DType.I32:
        refs = operands[readers[0]]
        offset_step = readers[0] if len(refs) == 2 and refs[0] == 0 else None

    def body(b: TileBuilder, tiles: list[Tile], offset: Tile | None = None) -> Tile:
        temps = list(b.free)
        values: list[Tile] = []
        for j, ((compute, step_body), refs) in enumerate(zip(programs, operands, strict=True)):
            b.dtype = compute
            last = j == len(programs) - 1
            extra = [offset] if offset is not None and j == offset_step else []
            value = step_body(b, [values[r[1]] if isinstance(r, tuple) else tiles[r] for r in refs] + extra)
            if last:
                return value
            values.append(_stored(b, value, result_dtypes[j]))
            live = {values[k].addr for k in range(j + 1) if last_use.get(k, -1) > j}
            b.free = [address for address in temps if address not in live]
        raise AssertionError("a fused program has at least one step")

    counter = _TempCount(4 * MAX_TEMPS * len(steps))
    body(counter, [Tile(-1 - i, DType.U8 if d is DType.BOOL else d, 1, 1) for i, d in enumerate(operand_dtypes)])
    return StepProgram(body, max(counter.most, 1), result_dtypes[-1], offset_step)


def fused_elementwise_kernel(ctx: CodegenContext, node: Node) -> None:
    """FusedElementwise: each input tile loaded once, the steps' recipes run on it one after the
    other with the intermediates in temporary tiles (`step_program`), only the last step's
    result stored; the tile size follows from how many temporaries are live at most."""
    graph = ctx.graph
    steps = elementwise_steps(node.attrs)
    types = step_types(steps, [graph.values[name] for name in node.inputs])
    where = f"FusedElementwise node {node.name!r}"
    for name in node.inputs + node.outputs[:1]:
        accelerator_dtype(graph.values[name].dtype, name, where)
    ins = [ctx.view(name) for name in node.inputs]
    out = ctx.view(node.outputs[0])
    results = [accelerator_dtype(dtype, f"{node.outputs[0]} step {j}", where) for j, (dtype, _) in enumerate(types)]
    program = step_program(ctx, node, steps, [v.dtype for v in ins], list(node.inputs), results)
    elementwise_views(ctx, ins, out, program.body, DType.F32, temps=program.temps)


