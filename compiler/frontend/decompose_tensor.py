"""Element-wise and data-movement ops with no kernel of their own, as IR ops that have one.

- Mish, Swish, SwiGLU, Celu, Shrink and ThresholdedRelu: ONNX defines them by function
  bodies of other ops; the importer emits those ops, in the same order and in the input's
  type (so each step rounds as the body's would).
- IsNaN and IsInf: comparisons.
- Trilu: a Where on a compile-time constant triangle (or, for types the vector unit does
  not select on, a Gather of each element or of a 0).
- GatherElements: a Gather from the data flattened to 1-D at computed flat positions.
- OneHot: an Equal of the indices against a constant iota, then a Where of the two values.
- CenterCropPad: one Pad, negative pads cropping.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

from compiler.frontend.context import NodeContext
from compiler.ir import numpy_dtype

NORMALISERS: dict[str, Callable[[NodeContext], None]] = {}

# The element-wise kernels select on these; other types (i64) move through dma_gather.
SELECTABLE_DTYPES = frozenset({"f32", "bf16", "f16", "i32", "i8", "u8", "bool"})


def _register(*ops: str):
    def decorate(function):
        for op in ops:
            NORMALISERS[op] = function
        return function
    return decorate


def _like(ctx: NodeContext, value: float) -> str:
    """A scalar constant of the first input's type (the bodies' CastLike of an attribute)."""
    return ctx.scalar(value, ctx.value(0).dtype)


@_register("Mish")
def _mish(ctx: NodeContext) -> None:
    """Y = X * Tanh(Softplus(X))."""
    x = ctx.inputs[0]
    ctx.step("Mul", x, ctx.step("Tanh", ctx.step("Softplus", x)), out=ctx.outputs[0])


def _swish(ctx: NodeContext, x: str, out: str = "") -> str:
    """Swish(x) = x * Sigmoid(alpha * x)."""
    alpha = float(ctx.attrs.get("alpha", 1.0))
    scaled = x if alpha == 1.0 else ctx.step("Mul", _like(ctx, alpha), x)  # 1 * x is x
    return ctx.step("Mul", x, ctx.step("Sigmoid", scaled), out=out)


@_register("Swish")
def _swish_op(ctx: NodeContext) -> None:
    _swish(ctx, ctx.inputs[0], ctx.outputs[0])


@_register("SwiGLU")
def _swiglu(ctx: NodeContext) -> None:
    """Y = Swish(A) * B, A and B of one shape (no broadcasting)."""
    if ctx.shape(0) != ctx.shape(1):
        raise ctx.invalid(f"A {list(ctx.shape(0))} and B {list(ctx.shape(1))} differ in shape")
    ctx.step("Mul", _swish(ctx, ctx.inputs[0]), ctx.inputs[1], out=ctx.outputs[0])


@_register("Celu")
def _celu(ctx: NodeContext) -> None:
    """Y = alpha * Elu(X / alpha) with Elu's alpha 1."""
    alpha = _like(ctx, float(ctx.attrs.get("alpha", 1.0)))
    elu = ctx.step("Elu", ctx.step("Div", ctx.inputs[0], alpha), alpha=1.0)
    ctx.step("Mul", alpha, elu, out=ctx.outputs[0])


@_register("Shrink")
def _shrink(ctx: NodeContext) -> None:
    """Y = X + bias where X < -lambd, X - bias where lambd < X, else 0."""
    x = ctx.inputs[0]
    lambd, bias = float(ctx.attrs.get("lambd", 0.5)), float(ctx.attrs.get("bias", 0.0))
    bias_const = _like(ctx, bias)
    above = ctx.step("Where", ctx.step("Less", _like(ctx, lambd), x), ctx.step("Sub", x, bias_const), _like(ctx, 0))
    below = ctx.step("Less", x, _like(ctx, -lambd))
    ctx.step("Where", below, ctx.step("Add", x, bias_const), above, out=ctx.outputs[0])


@_register("ThresholdedRelu")
def _thresholded_relu(ctx: NodeContext) -> None:
    """Y = X where alpha < X, else 0."""
    x = ctx.inputs[0]
    above = ctx.step("Less", _like(ctx, float(ctx.attrs.get("alpha", 1.0))), x)
    ctx.step("Where", above, x, _like(ctx, 0), out=ctx.outputs[0])


@_register("IsNaN")
def _is_nan(ctx: NodeContext) -> None:
    """NaN is the one value not equal to itself."""
    x = ctx.inputs[0]
    ctx.step("Not", ctx.step("Equal", x, x), out=ctx.outputs[0])


@_register("IsInf")
def _is_inf(ctx: NodeContext) -> None:
    x = ctx.inputs[0]
    signs = [sign for sign, attr in ((1, "detect_positive"), (-1, "detect_negative")) if ctx.attrs.get(attr, 1)]
    if not signs:
        ctx.constant(ctx.outputs[0], np.zeros(ctx.shape(0), dtype=bool))
        return
    tests = [ctx.step("Equal", x, _like(ctx, sign * np.inf), out="" if len(signs) > 1 else ctx.outputs[0])
             for sign in signs]
    if len(tests) > 1:
        ctx.step("Or", *tests, out=ctx.outputs[0])


@_register("Trilu")
def _trilu(ctx: NodeContext) -> None:
    """Keep the elements on and above (upper) or below (lower) diagonal k of the last two axes; 0 elsewhere."""
    x = ctx.value(0)
    if len(x.shape) < 2:
        raise ctx.invalid(f"input {list(x.shape)} has fewer than 2 axes")
    k = ctx.optional_const(1, "k")
    k = 0 if k is None else int(k.reshape(-1)[0])
    rows, cols = x.shape[-2:]
    offset = np.arange(cols)[None, :] - np.arange(rows)[:, None]  # j - i
    keep = np.broadcast_to(offset >= k if ctx.attrs.get("upper", 1) else offset <= k, x.shape)
    if keep.all():
        ctx.alias(ctx.outputs[0], x.name)
    elif not keep.any():
        ctx.constant(ctx.outputs[0], np.zeros(x.shape, dtype=numpy_dtype(x.dtype)))
    elif x.dtype in SELECTABLE_DTYPES:
        ctx.step("Where", ctx.constant("", np.ascontiguousarray(keep)), x.name, _like(ctx, 0), out=ctx.outputs[0])
    else:
        # x flattened with one 0 after it: every element either stays or reads that 0
        flat = ctx.step("Reshape", x.name, shape=[x.size])
        padded = ctx.step("Concat", flat, ctx.constant("", np.zeros(1, numpy_dtype(x.dtype))), axis=0)
        sources = np.where(keep, np.arange(x.size).reshape(x.shape), x.size).astype(np.int64)
        ctx.step("Gather", padded, ctx.constant("", sources), out=ctx.outputs[0], axis=0)


@_register("GatherElements")
def _gather_elements(ctx: NodeContext) -> None:
    """out[p] = data[p with indices[p] on axis], as a Gather from data flattened to 1-D: the flat position is
    indices[p] * stride(axis) plus a constant for the other coordinates of p.

    Run-time indices are computed in int32: negative ones wrap, and one outside [-s, s) becomes a position past
    the flattened data, which stops the run as Gather's out-of-range indices do."""
    data, indices = ctx.value(0), ctx.value(1)
    rank = len(data.shape)
    axis = ctx.axis(ctx.attrs.get("axis", 0), rank)
    others = [a for a in range(rank) if a != axis]
    if len(indices.shape) != rank or any(indices.shape[a] > data.shape[a] for a in others):
        raise ctx.invalid(f"indices {list(indices.shape)} do not fit data {list(data.shape)} on axes other than {axis}")
    if data.size >= 2**31:
        raise ctx.unsupported(f"{data.size} elements: flat positions are computed in int32")
    strides = [math.prod(data.shape[a + 1:]) for a in range(rank)]
    size = data.shape[axis]
    coordinates = np.indices(indices.shape, dtype=np.int64)
    base = np.zeros(indices.shape, dtype=np.int64)
    for a in others:
        base += coordinates[a] * strides[a]
    flat_data = ctx.step("Reshape", data.name, shape=[data.size])
    if indices.is_const:
        index = indices.const.astype(np.int64)
        if ((index < -size) | (index >= size)).any():
            raise ctx.invalid(f"an index is outside [{-size}, {size}) on axis {axis}")
        positions = ctx.constant("", base + np.where(index < 0, index + size, index) * strides[axis])
    else:
        index = indices.name if indices.dtype == "i32" else ctx.step("Cast", indices.name, to="i32")
        negative = ctx.step("Less", index, ctx.scalar(0, "i32"))
        index = ctx.step("Where", negative, ctx.step("Add", index, ctx.scalar(size, "i32")), index)
        inside = ctx.step("And", ctx.step("Not", ctx.step("Less", index, ctx.scalar(0, "i32"))),
                          ctx.step("Less", index, ctx.scalar(size, "i32")))
        if strides[axis] != 1:
            index = ctx.step("Mul", index, ctx.scalar(strides[axis], "i32"))
        if base.any():
            index = ctx.step("Add", index, ctx.constant("", base.astype(np.int32)))
        positions = ctx.step("Where", inside, index, ctx.scalar(data.size, "i32"))
    ctx.step("Gather", flat_data, positions, out=ctx.outputs[0], axis=0)


@_register("OneHot")
def _one_hot(ctx: NodeContext) -> None:
    """values[1] where the (wrapped) index equals the position on the new axis, values[0] elsewhere.

    Indices are compared in int32: floats truncate toward zero (the spec's cast to int64), int64 ones
    saturate, which keeps an out-of-range index out of range."""
    depth = ctx.const(1, "depth").reshape(-1)
    if depth.size != 1 or not depth[0] >= 1:
        raise ctx.invalid(f"depth {depth.tolist()} is not one positive number")
    depth = int(depth[0])
    rank = ctx.rank(0) + 1
    axis = ctx.axis(ctx.attrs.get("axis", -1), rank)
    values = ctx.value(2)
    if values.shape != (2,):
        raise ctx.invalid(f"values {list(values.shape)} is not [off_value, on_value]")
    index = ctx.inputs[0] if ctx.value(0).dtype == "i32" else ctx.step("Cast", ctx.inputs[0], to="i32")
    negative = ctx.step("Less", index, ctx.scalar(0, "i32"))
    index = ctx.step("Where", negative, ctx.step("Add", index, ctx.scalar(depth, "i32")), index)
    positions = np.arange(depth, dtype=np.int32).reshape([depth if a == axis else 1 for a in range(rank)])
    hot = ctx.step("Equal", ctx.step("Unsqueeze", index, axes=[axis]), ctx.constant("", positions))
    if values.is_const:
        off, on = (ctx.constant("", values.const[i]) for i in (0, 1))
    else:
        off, on = (ctx.step("Slice", values.name, starts=[i], ends=[i + 1], axes=[0], steps=[1]) for i in (0, 1))
    ctx.step("Where", hot, on, off, out=ctx.outputs[0])


@_register("CenterCropPad")
def _center_crop_pad(ctx: NodeContext) -> None:
    """One Pad: negative pads crop. The odd element of a crop or a pad goes to the end."""
    shape = ctx.shape(0)
    rank = len(shape)
    sizes = ctx.ints(1, "shape") or []
    axes = ctx.attrs.get("axes") or list(range(rank))
    if len(sizes) != len(axes):
        raise ctx.invalid(f"shape {sizes} does not have one size for each of the axes {list(axes)}")
    pads = [0] * (2 * rank)
    for axis, size in zip(axes, sizes, strict=True):
        axis = ctx.axis(axis, rank, "axes")
        change = size - shape[axis]  # > 0 pads, < 0 crops
        begin = int(np.sign(change)) * (abs(change) // 2)
        pads[axis], pads[rank + axis] = begin, change - begin
    if not any(pads):
        ctx.alias(ctx.outputs[0], ctx.inputs[0])
        return
    ctx.step("Pad", ctx.inputs[0], out=ctx.outputs[0], pads=pads, value=0.0)
