"""Normalisers for elementwise, shape, data-movement and reduction ops.

Each normaliser turns one ONNX node, of any supported opset, into the IR form of
docs/compiler.md through its `NodeContext`: operands that must be constants become
attributes, negative axes become non-negative, opset-specific defaults are applied, and
older spellings (attributes that later became inputs, opset-6 legacy broadcasting)
become the one IR spelling. `NORMALISERS` maps ONNX op types to them; the neural-network
ops are in normalise_nn.py.
"""

from __future__ import annotations

import math

import numpy as np
import onnx

from compiler.frontend.context import NodeContext, Normalisers, ir_dtype
from compiler.ops import OPS
from compiler.shape_rules import ShapeError, broadcast_shapes

NORMALISERS = Normalisers()
_register = NORMALISERS.register



def _copy_attrs(ctx: NodeContext, op: str) -> dict:
    """The ONNX attributes the IR op also has (the IR table fills in the others)."""
    return {name: value for name, value in ctx.attrs.items() if name in OPS[op].attrs}


@_register("Relu", "Sigmoid", "Tanh", "Erf", "Sqrt", "Exp", "Log", "Neg", "Abs", "Reciprocal", "Floor", "Ceil",
           "Round", "Sign", "Softplus", "Softsign", "HardSwish", "Sin", "Cos", "Tan", "Asin", "Acos", "Atan",
           "Sinh", "Cosh", "Asinh", "Acosh", "Atanh", "Not", "BitwiseNot", "LeakyRelu", "HardSigmoid", "Elu", "Selu",
           "Gelu", "Mod", "BitShift", "BitwiseAnd", "BitwiseOr", "BitwiseXor", "Sum", "Max", "Min", "Mean", "Where",
           "DepthToSpace", "SpaceToDepth", "GlobalAveragePool", "GlobalMaxPool", "LRN",
           "InstanceNormalization")
def _same_form(ctx: NodeContext) -> None:
    """Ops whose IR form is the ONNX form (legacy attributes such as consumed_inputs dropped)."""
    ctx.emit(ctx.op_type, list(ctx.inputs), **_copy_attrs(ctx, ctx.op_type))


@_register("Add", "Sub", "Mul", "Div", "Pow", "Equal", "Less", "Greater", "LessOrEqual", "GreaterOrEqual",
           "And", "Or", "Xor")
def _binary(ctx: NodeContext) -> None:
    """Before opset 7, `broadcast=1, axis=k` aligned b with a's axes from k on; numpy aligns from the end."""
    second = ctx.inputs[1]
    if ctx.since < 7 and ctx.attrs.get("broadcast", 0) and "axis" in ctx.attrs:
        rank, other = ctx.rank(0), ctx.rank(1)
        axis = ctx.axis(ctx.attrs["axis"], rank)
        trailing = rank - axis - other
        if trailing < 0:
            raise ctx.invalid(f"axis={axis} leaves no room for the second input's {other} axes")
        second = reshape_to(ctx, 1, ctx.shape(1) + (1,) * trailing)
    operands = [ctx.inputs[0], second]
    if ctx.op_type in NUMERIC_COMPARISONS:
        operands = _compared_in_int32(ctx, operands)
    ctx.emit(ctx.op_type, operands)


NUMERIC_COMPARISONS = frozenset({"Equal", "Less", "Greater", "LessOrEqual", "GreaterOrEqual"})
INT32_MIN, INT32_MAX = -(2**31), 2**31 - 1


def _compared_in_int32(ctx: NodeContext, operands: list[str]) -> list[str]:
    """The operands of an int64 comparison as int32, since the vector unit has no int64.

    A constant is narrowed here and must lie strictly inside int32's range (else the node is
    refused); a run-time operand becomes a Cast to i32, which saturates (vcvt). Saturation keeps
    every value on its side of such a constant, so comparing a run-time value with a constant
    is exact for all int64 values; two run-time operands compare exactly while both fit int32.
    """
    values = [ctx.importer.graph.values[name] for name in operands]
    if any(value.dtype != "i64" for value in values):
        return operands
    narrowed = []
    for value in values:
        if not value.is_const:
            narrowed.append(ctx.step("Cast", value.name, to="i32"))
            continue
        if value.const.size and (value.const.min() <= INT32_MIN or value.const.max() >= INT32_MAX):
            raise ctx.unsupported(f"the int64 constant %{value.name} has values outside (-2**31, 2**31 - 1); "
                                  "int64 comparisons run in int32")
        narrowed.append(ctx.constant("", value.const.astype(np.int32)))
    return narrowed


@_register("PRelu")
def _prelu(ctx: NodeContext) -> None:
    """A 1-D slope whose length is one axis of x applies along that axis (opset 6 models; the reference does it)."""
    slope = ctx.inputs[1]
    x_shape, slope_shape = ctx.shape(0), ctx.shape(1)
    try:
        aligned = broadcast_shapes(x_shape, slope_shape) == x_shape
    except ShapeError:
        aligned = False
    if not aligned and len(slope_shape) == 1 and list(x_shape).count(slope_shape[0]) == 1:
        axis = list(x_shape).index(slope_shape[0])
        slope = reshape_to(ctx, 1, slope_shape + (1,) * (len(x_shape) - axis - 1))
    ctx.emit("PRelu", [ctx.inputs[0], slope])


def reshape_to(ctx: NodeContext, index: int, shape: tuple[int, ...]) -> str:
    """Input `index` in another shape: a new constant if it is one, else a Reshape node."""
    value = ctx.value(index)
    if value.shape == shape:
        return value.name
    if value.is_const:
        return ctx.constant("", value.const.reshape(shape))
    return ctx.emit_temp("Reshape", [value.name], f"{value.name}_reshaped", shape=list(shape))


@_register("Clip")
def _clip(ctx: NodeContext) -> None:
    if ctx.since < 11:
        low, high = ctx.attrs.get("min", -math.inf), ctx.attrs.get("max", math.inf)
    else:
        low_data, high_data = ctx.optional_const(1, "min"), ctx.optional_const(2, "max")
        low = -math.inf if low_data is None else low_data.reshape(-1)[0]
        high = math.inf if high_data is None else high_data.reshape(-1)[0]
    ctx.emit("Clip", ctx.inputs[:1], min=float(low), max=float(high))


@_register("Cast", "CastLike")
def _cast(ctx: NodeContext) -> None:
    if ctx.op_type == "CastLike":
        target = ctx.value(1).dtype
    else:
        to = ctx.attrs["to"]
        if isinstance(to, str):  # opset 1 named the type: "FLOAT"
            try:
                to = onnx.TensorProto.DataType.Value(to.upper())
            except ValueError:
                raise ctx.invalid(f"to={to!r} is not an ONNX data type") from None
        target = ir_dtype(to, ctx.outputs[0] or ctx.name)
    ctx.emit("Cast", ctx.inputs[:1], to=target)


@_register("Identity")
def _identity(ctx: NodeContext) -> None:
    ctx.alias(ctx.outputs[0], ctx.inputs[0])


@_register("Dropout")
def _dropout(ctx: NodeContext) -> None:
    """Inference: the output is the input; the mask, if used, is all true."""
    if ctx.since >= 12 and ctx.has(2):
        training = ctx.const(2, "training_mode")
        if bool(training.reshape(-1)[0]):
            raise ctx.unsupported("training_mode is true")
    elif ctx.attrs.get("is_test", 1) == 0 and ctx.since < 7:
        raise ctx.unsupported("is_test=0 (training)")
    ctx.alias(ctx.outputs[0], ctx.inputs[0])
    if ctx.used(1):
        ctx.constant(ctx.outputs[1], np.ones(ctx.shape(0), dtype=np.bool_))


# Shapes -------------------------------------------------------------------------------------------
@_register("Reshape")
def _reshape(ctx: NodeContext) -> None:
    shape = ctx.attrs.get("shape") if ctx.since < 5 else ctx.ints(1, "shape")
    if shape is None:
        raise ctx.invalid("no shape given")
    ctx.emit("Reshape", ctx.inputs[:1], shape=resolve_shape(ctx, ctx.shape(0), list(shape),
                                                            bool(ctx.attrs.get("allowzero", 0))))


def resolve_shape(ctx: NodeContext, source: tuple[int, ...], shape: list[int], allow_zero: bool) -> list[int]:
    """Reshape's target with 0 (copy the input's dim, unless allowzero) and -1 (the rest) resolved."""
    resolved = []
    for index, dim in enumerate(shape):
        if dim == 0 and not allow_zero:
            if index >= len(source):
                raise ctx.invalid(f"shape {shape}: 0 at position {index} copies no input axis ({list(source)})")
            dim = source[index]
        elif dim < -1:
            raise ctx.invalid(f"shape {shape} has the negative entry {dim}")
        resolved.append(dim)
    total = math.prod(source)
    if resolved.count(-1) > 1:
        raise ctx.invalid(f"shape {shape} has more than one -1")
    if -1 in resolved:
        known = math.prod(d for d in resolved if d != -1)
        if known == 0 or total % known:
            raise ctx.invalid(f"cannot reshape {list(source)} to {shape}")
        resolved[resolved.index(-1)] = total // known
    if math.prod(resolved) != total:
        raise ctx.invalid(f"cannot reshape {list(source)} ({total} elements) to {shape}")
    return resolved


@_register("Flatten")
def _flatten(ctx: NodeContext) -> None:
    rank = ctx.rank(0)
    axis = ctx.attrs.get("axis", 1)
    if axis == rank:
        ctx.emit("Flatten", ctx.inputs[:1], axis=rank)
    else:
        ctx.emit("Flatten", ctx.inputs[:1], axis=ctx.axis(axis, rank))


@_register("Transpose")
def _transpose(ctx: NodeContext) -> None:
    rank = ctx.rank(0)
    perm = ctx.attrs.get("perm", list(range(rank))[::-1])
    ctx.emit("Transpose", ctx.inputs[:1], perm=[ctx.axis(p, rank, "perm") for p in perm])


@_register("Squeeze")
def _squeeze(ctx: NodeContext) -> None:
    shape = ctx.shape(0)
    axes = ctx.attrs.get("axes") if ctx.since < 13 else ctx.ints(1, "axes")
    if axes is None:
        axes = [i for i, d in enumerate(shape) if d == 1]
    ctx.emit("Squeeze", ctx.inputs[:1], axes=sorted_axes(ctx, axes, len(shape)))


@_register("Unsqueeze")
def _unsqueeze(ctx: NodeContext) -> None:
    axes = ctx.attrs.get("axes") if ctx.since < 13 else ctx.ints(1, "axes")
    if axes is None:
        raise ctx.invalid("no axes given")
    ctx.emit("Unsqueeze", ctx.inputs[:1], axes=sorted_axes(ctx, axes, ctx.rank(0) + len(axes)))


def sorted_axes(ctx: NodeContext, axes, rank: int) -> list[int]:
    resolved = sorted(ctx.axis(a, rank, "axes") for a in axes)
    if len(set(resolved)) != len(resolved):
        raise ctx.invalid(f"axes={list(axes)} name an axis twice")
    return resolved


@_register("Expand")
def _expand(ctx: NodeContext) -> None:
    shape = ctx.ints(1, "shape")
    try:
        result = broadcast_shapes(ctx.shape(0), shape or [])
    except ShapeError as error:
        raise ctx.invalid(str(error)) from None
    ctx.emit("Expand", ctx.inputs[:1], shape=list(result))


@_register("Tile")
def _tile(ctx: NodeContext) -> None:
    if ctx.since < 6:
        raise ctx.unsupported("the opset-1 form (tiles, axis)")
    ctx.emit("Tile", ctx.inputs[:1], repeats=ctx.ints(1, "repeats") or [])


# Data movement ------------------------------------------------------------------------------------
@_register("Concat")
def _concat(ctx: NodeContext) -> None:
    axis = ctx.attrs.get("axis", 1)  # required from opset 4; 1 before
    ctx.emit("Concat", ctx.inputs, axis=ctx.axis(axis, ctx.rank(0)))


@_register("Split")
def _split(ctx: NodeContext) -> None:
    shape = ctx.shape(0)
    axis = ctx.axis(ctx.attrs.get("axis", 0), len(shape))
    if ctx.since < 13:  # opset 1 also took the sizes as a second input
        sizes = ctx.attrs.get("split") or (ctx.ints(1, "split") if ctx.since < 2 else None)
    else:
        sizes = ctx.ints(1, "split")
    if not sizes:
        pieces = ctx.attrs.get("num_outputs", len(ctx.outputs))
        if shape[axis] % pieces == 0:
            sizes = [shape[axis] // pieces] * pieces
        elif "num_outputs" in ctx.attrs:  # opset 18: the last piece is smaller
            chunk = -(-shape[axis] // pieces)
            sizes = [chunk] * (pieces - 1) + [shape[axis] - chunk * (pieces - 1)]
        else:
            raise ctx.invalid(f"axis {axis} of {list(shape)} does not split into {pieces} equal pieces")
    if len(sizes) != len(ctx.outputs):
        raise ctx.invalid(f"split={list(sizes)} gives {len(sizes)} pieces for {len(ctx.outputs)} outputs")
    ctx.emit("Split", ctx.inputs[:1], list(ctx.outputs), axis=axis, split=[int(s) for s in sizes])


@_register("Slice")
def _slice(ctx: NodeContext) -> None:
    shape = ctx.shape(0)
    if ctx.since < 10:
        starts, ends, axes, steps = ctx.attrs.get("starts"), ctx.attrs.get("ends"), ctx.attrs.get("axes"), None
    else:
        starts, ends = ctx.ints(1, "starts"), ctx.ints(2, "ends")
        axes, steps = ctx.ints(3, "axes"), ctx.ints(4, "steps")
    if starts is None or ends is None:
        raise ctx.invalid("starts and ends are required")
    axes = list(range(len(starts))) if axes is None else axes
    steps = [1] * len(starts) if steps is None else steps
    if not len(starts) == len(ends) == len(axes) == len(steps):
        raise ctx.invalid(f"starts, ends, axes and steps differ in length ({starts}, {ends}, {axes}, {steps})")
    full = [[0, dim, 1] for dim in shape]
    seen = set()
    for start, end, axis, step in zip(starts, ends, axes, steps, strict=False):
        axis = ctx.axis(axis, len(shape), "axes")
        if axis in seen or step == 0:
            raise ctx.invalid(f"axis {axis} sliced twice" if axis in seen else f"step 0 on axis {axis}")
        seen.add(axis)
        full[axis] = [*clamp_slice(start, end, step, shape[axis]), step]
    ctx.emit("Slice", ctx.inputs[:1], starts=[s for s, _, _ in full], ends=[e for _, e, _ in full],
             axes=list(range(len(shape))), steps=[t for _, _, t in full])


def clamp_slice(start: int, end: int, step: int, dim: int) -> tuple[int, int]:
    """ONNX Slice clamping: negative counts from the end; a negative step's end -1 means before index 0."""
    start = start + dim if start < 0 else start
    end = end + dim if end < 0 else end
    if step > 0:
        return min(max(start, 0), dim), min(max(end, 0), dim)
    return min(max(start, 0), dim - 1), min(max(end, -1), dim - 1)


@_register("Pad")
def _pad(ctx: NodeContext) -> None:
    rank = ctx.rank(0)
    mode = ctx.attrs.get("mode", "constant")
    if ctx.since < 11:
        pads, value, axes = ctx.attrs.get("pads", ctx.attrs.get("paddings")), ctx.attrs.get("value", 0.0), None
    else:
        pads, axes = ctx.ints(1, "pads"), ctx.ints(3, "axes")
        constant = ctx.optional_const(2, "constant_value")
        value = 0.0 if constant is None or constant.size == 0 else constant.reshape(-1)[0]
    axes = list(range(rank)) if axes is None else [ctx.axis(a, rank, "axes") for a in axes]
    if pads is None or len(pads) != 2 * len(axes):
        raise ctx.invalid(f"pads={pads} does not have 2 entries per padded axis ({len(axes)})")
    full = [0] * (2 * rank)
    for i, axis in enumerate(axes):
        full[axis], full[rank + axis] = int(pads[i]), int(pads[len(axes) + i])
    if mode not in ("constant", "reflect", "edge", "wrap"):
        raise ctx.unsupported(f"mode {mode!r}")
    ctx.emit("Pad", ctx.inputs[:1], pads=full, mode=mode, value=float(value))


@_register("Gather")
def _gather(ctx: NodeContext) -> None:
    ctx.emit("Gather", ctx.inputs[:2], axis=ctx.axis(ctx.attrs.get("axis", 0), ctx.rank(0)))


@_register("ScatterND")
def _scatter_nd(ctx: NodeContext) -> None:
    """Reduction "none" only (opset 16 added the attribute). Constant index tuples outside the data
    are the model's error, found here; run-time ones stop the run, as Gather's do."""
    reduction = ctx.attrs.get("reduction", "none")
    if reduction != "none":
        raise ctx.unsupported(f"reduction {reduction!r} (only 'none')")
    data, indices = ctx.value(0), ctx.value(1)
    if indices.is_const and indices.shape and indices.shape[-1] <= len(data.shape):
        sizes = np.array(data.shape[:indices.shape[-1]], dtype=np.int64)
        tuples = indices.const.astype(np.int64)
        if ((tuples < -sizes) | (tuples >= sizes)).any():
            raise ctx.invalid(f"an index tuple is outside the data's axes {list(sizes)}")
    ctx.emit("ScatterND", ctx.inputs[:3])


# Reductions ---------------------------------------------------------------------------------------
_REDUCE_AXES_INPUT_SINCE = {"ReduceSum": 13}  # the others took axes as an input from opset 18


@_register("ReduceSum", "ReduceMean", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceL1", "ReduceL2",
           "ReduceLogSum", "ReduceLogSumExp", "ReduceSumSquare")
def _reduce(ctx: NodeContext) -> None:
    rank = ctx.rank(0)
    if ctx.since >= _REDUCE_AXES_INPUT_SINCE.get(ctx.op_type, 18):
        axes = ctx.ints(1, "axes")
    else:
        axes = ctx.attrs.get("axes")
    if not axes and ctx.attrs.get("noop_with_empty_axes", 0):
        ctx.alias(ctx.outputs[0], ctx.inputs[0])
        return
    ctx.emit(ctx.op_type, ctx.inputs[:1], axes=sorted_axes(ctx, axes or [], rank),
             keepdims=int(ctx.attrs.get("keepdims", 1)))


@_register("ArgMax", "ArgMin")
def _arg_reduce(ctx: NodeContext) -> None:
    ctx.emit(ctx.op_type, ctx.inputs[:1], axis=ctx.axis(ctx.attrs.get("axis", 0), ctx.rank(0)),
             keepdims=int(ctx.attrs.get("keepdims", 1)), select_last_index=int(ctx.attrs.get("select_last_index", 0)))


@_register("TopK")
def _topk(ctx: NodeContext) -> None:
    k = ctx.attrs.get("k") if ctx.since < 10 else ctx.const(1, "K").reshape(-1)[0]
    outputs = list(ctx.outputs)
    ctx.emit("TopK", ctx.inputs[:1], outputs, k=int(k), axis=ctx.axis(ctx.attrs.get("axis", -1), ctx.rank(0)),
             largest=int(ctx.attrs.get("largest", 1)), sorted=int(ctx.attrs.get("sorted", 1)))


@_register("CumSum")
def _cumsum(ctx: NodeContext) -> None:
    axis = ctx.const(1, "axis").reshape(-1)[0]
    ctx.emit("CumSum", ctx.inputs[:1], axis=ctx.axis(int(axis), ctx.rank(0)),
             exclusive=int(ctx.attrs.get("exclusive", 0)), reverse=int(ctx.attrs.get("reverse", 0)))
