"""Shape and dtype rules of the IR ops, one function per family.

Each rule is `rule(attrs, inputs) -> [(dtype, shape), ...]`: `attrs` are the node's
attributes with the op table's defaults filled in, `inputs` the input `Value`s (None for
an absent optional input); the result has one entry per output the op can have. The
rules work on the normalised IR forms of docs/compiler.md (attributes resolved,
axes non-negative); they raise `ShapeError` naming what does not fit.
`compiler/ops.py` binds them to op names.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from compiler.ir import DTYPES, IRParseError, Node, Value, _Reader, _tokens, attributes_text

Shape = tuple[int, ...]
Result = list[tuple[str, Shape]]


class ShapeError(ValueError):
    """Inputs or attributes that the op's rule rejects."""


def _dims(shape: Sequence[int]) -> str:
    return "[" + ", ".join(str(d) for d in shape) + "]"


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise ShapeError(message)


def _same_dtype(values: Sequence[Value | None], what: str = "inputs") -> str:
    dtypes = [v.dtype for v in values if v is not None]
    _check(len(set(dtypes)) <= 1, f"{what} have different dtypes {', '.join(dtypes)}")
    return dtypes[0]


def _product_dtype(operands: Sequence[Value], bias: Value | None) -> str:
    """The result dtype of a matrix product (Conv, ConvTranspose, Gemm, MatMul): the operands'
    dtype, except that bf16 operands accumulate in fp32 and give f32, as the matrix unit
    does; a bias has the result's dtype."""
    dtype = _same_dtype(operands)
    result = "f32" if dtype == "bf16" else dtype
    if bias is not None:
        _check(bias.dtype == result, f"the bias is {bias.dtype}, the product of {dtype} operands is {result}")
    return result


def _int_list(attrs: dict, name: str, length: int | None = None) -> list[int]:
    value = attrs[name]
    _check(isinstance(value, (list, tuple)) and all(isinstance(v, int) for v in value),
           f"attribute {name} must be a list of ints, not {value!r}")
    if length is not None:
        _check(len(value) == length, f"attribute {name} has {len(value)} entries, expected {length}")
    return list(value)


def _axis(attrs: dict, rank: int, name: str = "axis", upper: int | None = None) -> int:
    axis, upper = attrs[name], rank if upper is None else upper
    _check(isinstance(axis, int) and 0 <= axis < upper, f"{name}={axis!r} is not in [0, {upper})")
    return axis


def _axes(attrs: dict, rank: int, name: str = "axes") -> list[int]:
    axes = _int_list(attrs, name)
    _check(axes == sorted(set(axes)), f"{name}={axes} must be sorted and without repeats")
    _check(all(0 <= a < rank for a in axes), f"{name}={axes} has an axis outside [0, {rank})")
    return axes


def _min_rank(value: Value, rank: int, what: str = "input") -> None:
    _check(len(value.shape) >= rank, f"{what} {_dims(value.shape)} has rank {len(value.shape)}, needs {rank} or more")


def broadcast_shapes(*shapes: Sequence[int]) -> Shape:
    """numpy broadcasting of several shapes, or ShapeError."""
    rank = max((len(s) for s in shapes), default=0)
    result = []
    for position in range(rank):
        dims = {s[position - rank + len(s)] for s in shapes if position - rank + len(s) >= 0}
        dims.discard(1)
        _check(len(dims) <= 1, f"shapes {', '.join(_dims(s) for s in shapes)} do not broadcast")
        result.append(dims.pop() if dims else 1)
    return tuple(result)


# Elementwise --------------------------------------------------------------------------------------
def unary(attrs: dict, x: list) -> Result:
    return [(x[0].dtype, x[0].shape)]


def binary(attrs: dict, x: list) -> Result:
    return [(_same_dtype(x), broadcast_shapes(*(v.shape for v in x)))]


def power(attrs: dict, x: list) -> Result:
    return [(x[0].dtype, broadcast_shapes(x[0].shape, x[1].shape))]


def comparison(attrs: dict, x: list) -> Result:
    _same_dtype(x)
    return [("bool", broadcast_shapes(*(v.shape for v in x)))]


def logical(attrs: dict, x: list) -> Result:
    _check(all(v.dtype == "bool" for v in x), f"inputs must be bool, not {', '.join(v.dtype for v in x)}")
    return [("bool", broadcast_shapes(*(v.shape for v in x)))]


def unidirectional(attrs: dict, x: list) -> Result:
    """The second input broadcasts to the first (PRelu's slope)."""
    dtype = _same_dtype(x)
    _check(broadcast_shapes(x[0].shape, x[1].shape) == x[0].shape,
           f"{_dims(x[1].shape)} does not broadcast to {_dims(x[0].shape)}")
    return [(dtype, x[0].shape)]


def where(attrs: dict, x: list) -> Result:
    _check(x[0].dtype == "bool", f"the condition must be bool, not {x[0].dtype}")
    return [(_same_dtype(x[1:]), broadcast_shapes(*(v.shape for v in x)))]


def cast(attrs: dict, x: list) -> Result:
    _check(attrs["to"] in DTYPES, f"to={attrs['to']!r} is not an IR dtype")
    return [(attrs["to"], x[0].shape)]


def quantize(attrs: dict, x: list) -> Result:
    _check(attrs["output_dtype"] in ("i8", "u8", "i32"), f"output_dtype={attrs['output_dtype']!r} is not i8, u8 or i32")
    if x[2] is not None:
        _check(x[2].dtype == attrs["output_dtype"], f"zero point is {x[2].dtype}, output_dtype {attrs['output_dtype']}")
    _quant_params(attrs, x)
    return [(attrs["output_dtype"], x[0].shape)]


def dequantize(attrs: dict, x: list) -> Result:
    _quant_params(attrs, x)
    return [(x[1].dtype, x[0].shape)]


def _quant_params(attrs: dict, x: list) -> None:
    """Scales and zero points: one value, one per index of `axis` ([C], as ONNX writes them), or
    that shaped to broadcast over x ([..., C, 1, ...] of x's rank, as fuse_elementwise writes them)."""
    rank = len(x[0].shape)
    for param in (p for p in x[1:] if p is not None):
        if param.shape not in ((), (1,)):
            axis = _axis(attrs, rank)
            broadcast = len(param.shape) == rank > 1 and all(
                n == (x[0].shape[axis] if i == axis else 1) for i, n in enumerate(param.shape))
            _check(broadcast or (len(param.shape) == 1 and param.shape[0] == x[0].shape[axis]),
                   f"per-axis parameter {_dims(param.shape)} does not match axis {attrs['axis']} of "
                   f"{_dims(x[0].shape)}")


def _quantized_product(attrs: dict, x: list, float_rule) -> Result:
    """QLinearConv / QLinearMatMul: the float op's shape, integer operands, an i32 bias, out_dtype."""
    data, weight, bias = x[0], x[1], x[2] if len(x) > 2 else None
    _check(data.dtype in ("i8", "u8") and weight.dtype in ("i8", "u8"),
           f"operands are {data.dtype} and {weight.dtype}, not i8/u8")
    _check(bias is None or bias.dtype == "i32", f"bias is {bias.dtype if bias else ''}, not i32")
    _check(attrs["out_dtype"] in ("i8", "u8", "i32"), f"out_dtype={attrs['out_dtype']!r} is not i8, u8 or i32")
    _check(attrs["y_min"] <= attrs["y_max"], f"y_min={attrs['y_min']} > y_max={attrs['y_max']}")
    as_float = [type(v)(v.name, "f32", v.shape) if v is not None else None for v in x[:3]]
    ((_, shape),) = float_rule(attrs, as_float)
    channels = shape[1] if float_rule is conv else shape[-1]
    _check(len(attrs["w_scale"]) in (1, channels), f"w_scale has {len(attrs['w_scale'])} values for "
                                                   f"{channels} output channels")
    _check(not attrs.get("tail") or attrs["out_dtype"] == "i32", "a tail reads the int32 result: out_dtype must be i32")
    return _with_tail(attrs, attrs["out_dtype"], shape, x[3:])


def _with_tail(attrs: dict, dtype: str, shape, extras: list) -> Result:
    """A product's result, then its `tail` if it has one: FusedElementwise steps on it (x0) and on
    the inputs after the product's own (x1, x2, ...), each keeping the result's shape."""
    if not attrs.get("tail"):
        _check(not extras, f"{len(extras)} more inputs than the op takes without a tail")
        return [(dtype, shape)]
    types = step_types(elementwise_steps({"steps": attrs["tail"]}), [Value("product", dtype, tuple(shape)), *extras])
    _check(all(tuple(step_shape) == tuple(shape) for _, step_shape in types),
           f"the tail's steps must keep the result's shape {_dims(shape)}")
    return [(types[-1][0], shape)]


def qlinear_conv(attrs: dict, x: list) -> Result:
    return _quantized_product(attrs, x, conv)


def qlinear_matmul(attrs: dict, x: list) -> Result:
    _check(len(x[1].shape) == 2, f"the weight {_dims(x[1].shape)} must be a matrix")
    if len(x) > 2 and x[2] is not None:
        _check(x[2].shape == (x[1].shape[1],), f"bias {_dims(x[2].shape)} is not [{x[1].shape[1]}]")
    return _quantized_product(attrs, x, matmul)


# Convolution and pooling ---------------------------------------------------------------------------
def _window(attrs: dict, spatial: int) -> tuple[list[int], list[int], list[int], list[int]]:
    kernel = _int_list(attrs, "kernel_shape", spatial)
    strides = _int_list(attrs, "strides", spatial)
    pads = _int_list(attrs, "pads", 2 * spatial)
    dilations = _int_list(attrs, "dilations", spatial)
    _check(all(v >= 1 for v in kernel + strides + dilations), "kernel_shape, strides and dilations must be positive")
    _check(all(p >= 0 for p in pads), f"pads={pads} has a negative entry")
    return kernel, strides, pads, dilations


def _windows(size: int, kernel: int, stride: int, begin: int, end: int, dilation: int, ceil_mode: bool) -> int:
    """Output length of a sliding window; in ceil mode the last window must start inside the input or begin pad."""
    span = (kernel - 1) * dilation + 1
    room = size + begin + end - span
    _check(room >= 0, f"window of {span} does not fit in {size} with pads {begin}, {end}")
    count = (-(-room // stride) if ceil_mode else room // stride) + 1
    if ceil_mode and (count - 1) * stride >= size + begin:
        count -= 1
    return count


def _conv_operands(attrs: dict, x: list):
    """(data, weight, bias, spatial rank, kernel, strides, pads, dilations) of Conv and ConvTranspose."""
    data, weight, bias = x[0], x[1], x[2] if len(x) > 2 else None
    _min_rank(data, 3)
    spatial = len(data.shape) - 2
    _check(len(weight.shape) == len(data.shape),
           f"weight {_dims(weight.shape)} and input {_dims(data.shape)} differ in rank")
    kernel, strides, pads, dilations = _window(attrs, spatial)
    _check(tuple(kernel) == weight.shape[2:], f"kernel_shape={kernel} but the weight is {_dims(weight.shape)}")
    return data, weight, bias, spatial, kernel, strides, pads, dilations


def conv(attrs: dict, x: list) -> Result:
    data, weight, bias, spatial, kernel, strides, pads, dilations = _conv_operands(attrs, x)
    group, channels, out_channels = attrs["group"], data.shape[1], weight.shape[0]
    _check(group >= 1 and channels % group == 0 and out_channels % group == 0,
           f"group={group} does not divide {channels} input and {out_channels} output channels")
    _check(weight.shape[1] * group == channels,
           f"weight {_dims(weight.shape)} with group={group} expects {weight.shape[1] * group} input channels, "
           f"the input {_dims(data.shape)} has {channels}")
    if bias is not None:
        _check(bias.shape == (out_channels,), f"bias {_dims(bias.shape)} is not [{out_channels}]")
    dtype = _product_dtype([data, weight], bias)
    out = [_windows(data.shape[2 + i], kernel[i], strides[i], pads[i], pads[spatial + i], dilations[i], False)
           for i in range(spatial)]
    return [(dtype, (data.shape[0], out_channels, *out))]


EPILOGUE_ACTIVATIONS = ("", "Relu", "Clip")


def _fused(base, own: int):
    """The rule of a Fused* op: `base` on the first `own` inputs; an optional addend Z of the
    result's shape and dtype after them; an activation from EPILOGUE_ACTIVATIONS."""

    def rule(attrs: dict, x: list) -> Result:
        _check(attrs["activation"] in EPILOGUE_ACTIVATIONS,
               f"activation={attrs['activation']!r} is not one of {', '.join(map(repr, EPILOGUE_ACTIVATIONS))}")
        _check(len(attrs["activation_params"]) == (2 if attrs["activation"] == "Clip" else 0),
               f"activation_params={attrs['activation_params']} do not fit activation={attrs['activation']!r}")
        ((dtype, shape),) = base(attrs, x[:own])
        addend = x[own] if len(x) > own else None
        if addend is not None:
            _check(addend.shape == tuple(shape) and addend.dtype == dtype,
                   f"Z {addend.dtype}{_dims(addend.shape)} is not the result's {dtype}{_dims(shape)}")
        return _with_tail(attrs, dtype, shape, x[own + 1:])

    return rule


def conv_transpose(attrs: dict, x: list) -> Result:
    data, weight, bias, spatial, kernel, strides, pads, dilations = _conv_operands(attrs, x)
    output_padding = _int_list(attrs, "output_padding", spatial)
    group = attrs["group"]
    _check(group >= 1 and data.shape[1] % group == 0, f"group={group} does not divide {data.shape[1]} input channels")
    _check(weight.shape[0] == data.shape[1],
           f"weight {_dims(weight.shape)} expects {weight.shape[0]} input channels, the input has {data.shape[1]}")
    out_channels = weight.shape[1] * group
    if bias is not None:
        _check(bias.shape == (out_channels,), f"bias {_dims(bias.shape)} is not [{out_channels}]")
    dtype = _product_dtype([data, weight], bias)
    out = [strides[i] * (data.shape[2 + i] - 1) + output_padding[i] + (kernel[i] - 1) * dilations[i] + 1
           - pads[i] - pads[spatial + i] for i in range(spatial)]
    _check(all(d >= 0 for d in out), f"output spatial size {out} is negative")
    return [(dtype, (data.shape[0], out_channels, *out))]


def pool(attrs: dict, x: list) -> Result:
    data = x[0]
    _min_rank(data, 3)
    spatial = len(data.shape) - 2
    kernel, strides, pads, dilations = _window(attrs, spatial)
    _check(all(pads[i] < (kernel[i] - 1) * dilations[i] + 1 and pads[spatial + i] < (kernel[i] - 1) * dilations[i] + 1
               for i in range(spatial)), f"pads={pads} must be smaller than the window {kernel}")
    out = [_windows(data.shape[2 + i], kernel[i], strides[i], pads[i], pads[spatial + i], dilations[i],
                    bool(attrs["ceil_mode"])) for i in range(spatial)]
    return [(data.dtype, (*data.shape[:2], *out))]


def global_pool(attrs: dict, x: list) -> Result:
    _min_rank(x[0], 3)
    return [(x[0].dtype, (*x[0].shape[:2], *(1,) * (len(x[0].shape) - 2)))]


def lrn(attrs: dict, x: list) -> Result:
    _min_rank(x[0], 3)
    _check(attrs["size"] >= 1, f"size={attrs['size']} must be positive")
    return unary(attrs, x)


# Normalisation -----------------------------------------------------------------------------------
def _per_channel(data: Value, params: Sequence[Value | None], names: Sequence[str]) -> None:
    _min_rank(data, 2)
    for name, param in zip(names, params, strict=False):
        if param is not None:
            _check(param.shape == (data.shape[1],), f"{name} {_dims(param.shape)} is not [{data.shape[1]}] (channels)")


def batch_norm(attrs: dict, x: list) -> Result:
    _per_channel(x[0], x[1:], ("scale", "bias", "mean", "variance"))
    return [(_same_dtype(x), x[0].shape)]


def instance_norm(attrs: dict, x: list) -> Result:
    _min_rank(x[0], 3)
    _per_channel(x[0], x[1:], ("scale", "bias"))
    return [(_same_dtype(x), x[0].shape)]


def layer_norm(attrs: dict, x: list) -> Result:
    data = x[0]
    rank = len(data.shape)
    axis = _axis(attrs, rank)
    for name, param in zip(("scale", "bias"), x[1:], strict=False):
        if param is not None:
            _check(broadcast_shapes(data.shape[axis:], param.shape) == data.shape[axis:],
                   f"{name} {_dims(param.shape)} does not broadcast to {_dims(data.shape[axis:])}")
    stats = (*data.shape[:axis], *(1,) * (rank - axis))
    return [(_same_dtype(x), data.shape), ("f32", stats), ("f32", stats)]


def prologue_inputs(attrs: dict) -> int:
    """How many of a FusedLayerNorm's inputs its `prologue` reads (they come first, before scale and
    bias); 1 without a prologue: X itself."""
    steps = elementwise_steps({"steps": attrs["prologue"]}) if attrs.get("prologue") else []
    return 1 + max((int(o[1:]) for step in steps for o in step.operands if o.startswith("x")), default=0)


def fused_layer_norm(attrs: dict, x: list) -> Result:
    """LayerNormalization's y of X with the scale and bias after it (bias may be absent), then its
    `tail` on the inputs after them. X is x[0], or with a `prologue` the result of its steps on
    x[0], x[1], ... (element-wise, or a Gather of table rows), whose shape every operand of an
    element-wise step keeps or broadcasts to."""
    count = prologue_inputs(attrs)
    data = x[0]
    if attrs.get("prologue"):
        steps = elementwise_steps({"steps": attrs["prologue"]})
        ops = [step.op for step in steps]
        _check("Gather" not in ops[ops.count("Gather"):], "the prologue's Gather steps must come first")
        types = step_types(steps, x[:count], gathers=True)
        data = Value("X", *types[-1])
        _check(data.dtype == "f32", f"the prologue gives {data.dtype}, not f32")
        # The kernel fetches a gathered operand's rows as the tile's own rows, in f32.
        _check(all(types[index] == ("f32", data.shape) for index in range(ops.count("Gather"))),
               f"the prologue's Gather steps must give f32 rows of X's shape {_dims(data.shape)}")
    ((dtype, shape), *_) = layer_norm(attrs, [value for value in [data, *x[count:count + 2]] if value is not None])
    return _with_tail(attrs, dtype, shape, x[count + 2:])


def along_axis(attrs: dict, x: list) -> Result:
    """Softmax, LogSoftmax, Hardmax, CumSum, LpNormalization: same shape, one axis."""
    _axis(attrs, len(x[0].shape))
    return unary(attrs, x)


# Matrix products ---------------------------------------------------------------------------------
def gemm(attrs: dict, x: list) -> Result:
    a, b, c = x[0], x[1], x[2] if len(x) > 2 else None
    _check(len(a.shape) == 2 and len(b.shape) == 2, f"A {_dims(a.shape)} and B {_dims(b.shape)} must be matrices")
    m, k = a.shape[::-1] if attrs["transA"] else a.shape
    k2, n = b.shape[::-1] if attrs["transB"] else b.shape
    _check(k == k2, f"A {_dims(a.shape)} (transA={attrs['transA']}) and B {_dims(b.shape)} "
                    f"(transB={attrs['transB']}) do not multiply")
    if c is not None:
        _check(broadcast_shapes(c.shape, (m, n)) == (m, n), f"C {_dims(c.shape)} does not broadcast to [{m}, {n}]")
    return [(_product_dtype([a, b], c), (m, n))]


def matmul(attrs: dict, x: list) -> Result:
    a, b = x[0].shape, x[1].shape
    _check(len(a) >= 1 and len(b) >= 1, "MatMul operands must have rank 1 or more")
    a2 = (1, *a) if len(a) == 1 else a
    b2 = (*b, 1) if len(b) == 1 else b
    _check(a2[-1] == b2[-2], f"{_dims(a)} and {_dims(b)} do not multiply")
    shape = (*broadcast_shapes(a2[:-2], b2[:-2]), a2[-2], b2[-1])
    if len(a) == 1:
        shape = shape[:-2] + shape[-1:]
    if len(b) == 1:
        shape = shape[:-1]
    return [(_product_dtype(x, None), shape)]


# Reductions --------------------------------------------------------------------------------------
def reduce(attrs: dict, x: list) -> Result:
    shape = x[0].shape
    axes = _axes(attrs, len(shape)) or list(range(len(shape)))
    if attrs["keepdims"]:
        return [(x[0].dtype, tuple(1 if i in axes else d for i, d in enumerate(shape)))]
    return [(x[0].dtype, tuple(d for i, d in enumerate(shape) if i not in axes))]


def arg_reduce(attrs: dict, x: list) -> Result:
    shape = x[0].shape
    axis = _axis(attrs, len(shape))
    kept = (*shape[:axis], 1, *shape[axis + 1:]) if attrs["keepdims"] else (*shape[:axis], *shape[axis + 1:])
    return [("i64", kept)]


def topk(attrs: dict, x: list) -> Result:
    shape = x[0].shape
    axis, k = _axis(attrs, len(shape)), attrs["k"]
    _check(0 <= k <= shape[axis], f"k={k} is not in [0, {shape[axis]}] (axis {axis})")
    out = (*shape[:axis], k, *shape[axis + 1:])
    return [(x[0].dtype, out), ("i64", out)]


# Shapes and data movement ------------------------------------------------------------------------
def concat(attrs: dict, x: list) -> Result:
    rank = len(x[0].shape)
    axis = _axis(attrs, rank)
    for v in x[1:]:
        _check(len(v.shape) == rank and all(v.shape[i] == x[0].shape[i] for i in range(rank) if i != axis),
               f"inputs {', '.join(_dims(v.shape) for v in x)} do not concatenate on axis {axis}")
    total = sum(v.shape[axis] for v in x)
    return [(_same_dtype(x), (*x[0].shape[:axis], total, *x[0].shape[axis + 1:]))]


def split(attrs: dict, x: list) -> Result:
    shape = x[0].shape
    axis = _axis(attrs, len(shape))
    sizes = _int_list(attrs, "split")
    _check(all(s >= 0 for s in sizes) and sum(sizes) == shape[axis],
           f"split={sizes} does not add up to {shape[axis]} (axis {axis} of {_dims(shape)})")
    return [(x[0].dtype, (*shape[:axis], s, *shape[axis + 1:])) for s in sizes]


def slice_(attrs: dict, x: list) -> Result:
    shape = x[0].shape
    rank = len(shape)
    starts, ends = _int_list(attrs, "starts", rank), _int_list(attrs, "ends", rank)
    axes, steps = _int_list(attrs, "axes", rank), _int_list(attrs, "steps", rank)
    _check(axes == list(range(rank)), f"axes={axes} must list every axis in order")
    out = []
    for axis, (dim, start, end, step) in enumerate(zip(shape, starts, ends, steps, strict=False)):
        _check(step != 0, f"step 0 on axis {axis}")
        if step > 0:
            _check(0 <= start <= dim and 0 <= end <= dim,
                   f"start {start} or end {end} outside [0, {dim}] on axis {axis}")
        else:
            _check(0 <= start <= max(dim - 1, 0) and -1 <= end <= max(dim - 1, 0),
                   f"start {start} or end {end} outside the clamped range of axis {axis} (size {dim}, step {step})")
        out.append(max(0, -(-(end - start) // step)))
    return [(x[0].dtype, tuple(out))]


def pad(attrs: dict, x: list) -> Result:
    shape = x[0].shape
    pads = _int_list(attrs, "pads", 2 * len(shape))
    _check(attrs["mode"] in ("constant", "reflect", "edge", "wrap"), f"mode={attrs['mode']!r} is unknown")
    out = tuple(d + pads[i] + pads[len(shape) + i] for i, d in enumerate(shape))
    _check(all(d >= 0 for d in out), f"pads={pads} crop {_dims(shape)} below zero")
    return [(x[0].dtype, out)]


def resize(attrs: dict, x: list) -> Result:
    rank = len(x[0].shape)
    sizes = _int_list(attrs, "sizes", rank)
    scales = attrs["scales"]
    _check(isinstance(scales, (list, tuple)) and len(scales) == rank and all(s > 0 for s in scales),
           f"scales={scales!r} must be {rank} positive numbers")
    _check(attrs["mode"] in ("nearest", "linear", "cubic"), f"mode={attrs['mode']!r} is unknown")
    _check(all(s >= 0 for s in sizes), f"sizes={sizes} has a negative entry")
    return [(x[0].dtype, tuple(sizes))]


def reshape(attrs: dict, x: list) -> Result:
    shape = tuple(_int_list(attrs, "shape"))
    _check(all(d >= 0 for d in shape), f"shape={list(shape)} must be resolved (no -1)")
    _check(math.prod(shape) == x[0].size, f"cannot reshape {_dims(x[0].shape)} ({x[0].size} elements) to {list(shape)}")
    return [(x[0].dtype, shape)]


def flatten(attrs: dict, x: list) -> Result:
    shape = x[0].shape
    axis = _axis(attrs, len(shape) + 1)
    return [(x[0].dtype, (math.prod(shape[:axis]), math.prod(shape[axis:])))]


def transpose(attrs: dict, x: list) -> Result:
    shape = x[0].shape
    perm = _int_list(attrs, "perm", len(shape))
    _check(sorted(perm) == list(range(len(shape))), f"perm={perm} is not a permutation of {len(shape)} axes")
    return [(x[0].dtype, tuple(shape[p] for p in perm))]


def squeeze(attrs: dict, x: list) -> Result:
    shape = x[0].shape
    axes = _axes(attrs, len(shape))
    _check(all(shape[a] == 1 for a in axes), f"axes={axes} of {_dims(shape)} are not all 1")
    return [(x[0].dtype, tuple(d for i, d in enumerate(shape) if i not in axes))]


def unsqueeze(attrs: dict, x: list) -> Result:
    axes = _int_list(attrs, "axes")
    rank = len(x[0].shape) + len(axes)
    _axes(attrs, rank)
    rest = iter(x[0].shape)
    return [(x[0].dtype, tuple(1 if i in axes else next(rest) for i in range(rank)))]


def expand(attrs: dict, x: list) -> Result:
    return [(x[0].dtype, broadcast_shapes(x[0].shape, _int_list(attrs, "shape")))]


def tile(attrs: dict, x: list) -> Result:
    repeats = _int_list(attrs, "repeats", len(x[0].shape))
    _check(all(r >= 0 for r in repeats), f"repeats={repeats} has a negative entry")
    return [(x[0].dtype, tuple(d * r for d, r in zip(x[0].shape, repeats, strict=False)))]


def gather(attrs: dict, x: list) -> Result:
    data, indices = x
    axis = _axis(attrs, len(data.shape))
    _check(indices.dtype in ("i32", "i64"), f"indices must be i32 or i64, not {indices.dtype}")
    return [(data.dtype, (*data.shape[:axis], *indices.shape, *data.shape[axis + 1:]))]


def scatter_nd(attrs: dict, x: list) -> Result:
    """data [d0, ...] with indices [..., k] (k <= rank) and updates [...] + data's axes from k on."""
    data, indices, updates = x
    _check(indices.dtype in ("i32", "i64"), f"indices must be i32 or i64, not {indices.dtype}")
    _check(len(indices.shape) >= 1 and indices.shape[-1] <= len(data.shape),
           f"indices {_dims(indices.shape)} do not index data {_dims(data.shape)}: their last axis is the "
           "length of an index tuple, at most the data's rank")
    expected = (*indices.shape[:-1], *data.shape[indices.shape[-1]:])
    _check(updates.shape == expected, f"updates are {_dims(updates.shape)}; indices {_dims(indices.shape)} "
           f"into data {_dims(data.shape)} need {_dims(expected)}")
    return [(_same_dtype([data, updates], "data and updates"), data.shape)]


def depth_to_space(attrs: dict, x: list) -> Result:
    shape, block = x[0].shape, attrs["blocksize"]
    _check(len(shape) == 4 and block >= 1 and shape[1] % (block * block) == 0,
           f"{_dims(shape)} does not rearrange with blocksize={block}")
    _check(attrs["mode"] in ("DCR", "CRD"), f"mode={attrs['mode']!r} is not DCR or CRD")
    return [(x[0].dtype, (shape[0], shape[1] // (block * block), shape[2] * block, shape[3] * block))]


def space_to_depth(attrs: dict, x: list) -> Result:
    shape, block = x[0].shape, attrs["blocksize"]
    _check(len(shape) == 4 and block >= 1 and shape[2] % block == 0 and shape[3] % block == 0,
           f"{_dims(shape)} does not rearrange with blocksize={block}")
    _check(attrs["mode"] in ("DCR", "CRD"), f"mode={attrs['mode']!r} is not DCR or CRD")
    return [(x[0].dtype, (shape[0], shape[1] * block * block, shape[2] // block, shape[3] // block))]


def _matmul_with_bias(attrs: dict, x: list) -> Result:
    """MatMul of x[0], x[1] (rank 2 or more each; transposed by perm_a and perm_b when given), plus a
    bias [N] per column when x[2] is given; the result transposed by perm_out (keeping N last) when given."""
    _check(len(x[0].shape) >= 2 and len(x[1].shape) >= 2, "FusedMatMul operands must have rank 2 or more")
    a, b = _rounded(x[0], attrs, "round_a"), _rounded(x[1], attrs, "round_b")
    if attrs.get("perm_a"):
        ((_, shape),) = transpose({"perm": attrs["perm_a"]}, [a])
        a = type(a)(a.name, a.dtype, shape)
    if attrs.get("perm_b"):
        ((_, shape),) = transpose({"perm": attrs["perm_b"]}, [b])
        b = type(b)(b.name, b.dtype, shape)
    ((dtype, shape),) = matmul(attrs, [a, b])
    bias = x[2] if len(x) > 2 else None
    if bias is not None:
        _check(bias.shape == (shape[-1],) and bias.dtype == dtype,
               f"bias {bias.dtype}{_dims(bias.shape)} is not {dtype}[{shape[-1]}], one per result column")
    if attrs.get("perm_out"):
        _check(len(attrs["perm_out"]) == len(shape) and attrs["perm_out"][-1] == len(shape) - 1,
               f"perm_out={attrs['perm_out']} does not keep the last of {len(shape)} axes last")
        shape = tuple(shape[axis] for axis in attrs["perm_out"])
    return [(dtype, shape)]


def _rounded(value, attrs: dict, key: str):
    """An operand as the product sees it: an f32 one with attribute `key`="bf16" is rounded to bf16 on chip."""
    if not attrs.get(key):
        return value
    _check(attrs[key] == "bf16" and value.dtype == "f32", f"{key}={attrs[key]!r} rounds f32 to bf16, not {value.dtype}")
    return type(value)(value.name, "bf16", value.shape)


def _matmul_w8_base(attrs: dict, x: list) -> Result:
    """A [..., K] bf16 (or f32 with round_a) @ W [K, N] i8, scale [N] and optional bias [N] f32: an f32
    [..., N] result."""
    a, weight, scale = _rounded(x[0], attrs, "round_a"), x[1], x[2]
    bias = x[3] if len(x) > 3 else None
    _check(a.dtype == "bf16" and weight.dtype == "i8", f"operands are {a.dtype} and {weight.dtype}, not bf16 and i8")
    _check(len(a.shape) >= 2 and len(weight.shape) == 2,
           f"A {_dims(a.shape)} must have rank 2 or more and W {_dims(weight.shape)} be a matrix")
    _check(a.shape[-1] == weight.shape[0], f"{_dims(a.shape)} and {_dims(weight.shape)} do not multiply")
    channels = weight.shape[1]
    for name, value in (("scale", scale), ("bias", bias)):
        if value is not None:
            _check(value.shape == (channels,) and value.dtype == "f32",
                   f"{name} {value.dtype}{_dims(value.shape)} is not f32[{channels}], one per column")
    return [("f32", (*a.shape[:-1], channels))]


fused_conv = _fused(conv, 3)
matmul_w8 = _fused(_matmul_w8_base, 4)
fused_gemm = _fused(gemm, 3)
fused_matmul = _fused(_matmul_with_bias, 3)


# Fused element-wise programs ----------------------------------------------------------------------
@dataclass(frozen=True)
class Step:
    """One step of a FusedElementwise program: `op` (an element-wise IR op) with `attrs`, on
    `operands` "x<i>" (the node's input i), "s<j>" (the result of step j < this one) or ""
    (an absent optional input). Its text form is the IR's call syntax without the % and types:
    `Add(s0, x2)`, `Clip(s1) {min=0.0, max=6.0}`, `QuantizeLinear(s2, x3, x4) {output_dtype="i8"}`."""

    op: str
    operands: tuple[str, ...]
    attrs: dict[str, Any] = field(default_factory=dict)

    def text(self) -> str:
        return f"{self.op}({', '.join(o or '_' for o in self.operands)})" + attributes_text(self.op, self.attrs)

    @staticmethod
    def parse(text: str) -> Step:
        try:
            reader = _Reader(_tokens(text, 0), 0)
            op = reader.take(kind="name")
            reader.take("(")
            operands = []
            while reader.peek()[1] != ")":
                operand = reader.take("_") if reader.peek()[1] == "_" else reader.take(kind="name")
                operands.append("" if operand == "_" else operand)
                if reader.peek()[1] != ")":
                    reader.take(",")
            reader.take(")")
            attrs = reader.attributes()
            if not reader.done():
                raise IRParseError(f"unexpected {reader.peek()[1]!r}")
        except IRParseError as error:
            raise ShapeError(f"step {text!r} does not read: {str(error).removeprefix('line 0: ')}") from error
        return Step(op, tuple(operands), attrs)


def elementwise_steps(attrs: dict) -> list[Step]:
    steps = attrs["steps"]
    _check(isinstance(steps, list) and steps and all(isinstance(s, str) for s in steps),
           f"steps must be a non-empty list of strings, not {steps!r}")
    return [Step.parse(text) for text in steps]


def step_types(steps: list[Step], x: list, gathers: bool = False) -> list[tuple[str, Shape]]:
    """(dtype, shape) of every step's result, each by its own op's rule; ShapeError naming the step
    if one does not fit, reads an operand it should not, or is not element-wise. With `gathers`, a
    step may also be a Gather of rows (axis 0) from a 2-D input by indices that are an input."""
    from compiler.ops import OPS, REQUIRED

    results: list[Value] = []
    for index, step in enumerate(steps):
        where = f"step {index} ({step.text() if step.op in OPS else step.op})"
        definition = OPS.get(step.op)
        _check(definition is not None and step.op != "FusedElementwise" and definition.outputs[0] == 1,
               f"{where}: {step.op!r} is not a single-result IR op")
        operands = []
        for operand in step.operands:
            kind, number = operand[:1], operand[1:]
            _check(operand == "" or (kind in ("x", "s") and number.isdigit()),
                   f"{where}: operand {operand!r} is not x<input> or s<step>")
            if operand == "":
                operands.append(None)
            elif kind == "x":
                _check(int(number) < len(x) and x[int(number)] is not None, f"{where}: the node has no input {number}")
                operands.append(x[int(number)])
            else:
                _check(int(number) < index, f"{where}: s{number} is not an earlier step")
                operands.append(results[int(number)])
        low, high = definition.inputs
        _check(low <= len(operands) and (high is None or len(operands) <= high) and None not in operands[:low],
               f"{where}: {len(operands)} operands do not fit {step.op}")
        for name in step.attrs:
            _check(name in definition.attrs, f"{where}: unknown attribute {name!r}")
        for name, default in definition.attrs.items():
            _check(default is not REQUIRED or name in step.attrs, f"{where}: missing required attribute {name!r}")
        ((dtype, shape),) = definition.infer(Node(step.op, [], [], step.attrs), operands)[:1]
        if gathers and step.op == "Gather":
            _check(step.attrs.get("axis", 0) == 0 and len(operands[0].shape) == 2
                   and all(operand.startswith("x") for operand in step.operands),
                   f"{where}: only rows of a 2-D input by indices that are inputs are gathered")
        else:
            _check(tuple(shape) == broadcast_shapes(*(v.shape for v in operands if v is not None)),
                   f"{where}: {step.op} is not element-wise here")
        results.append(Value(f"s{index}", dtype, tuple(shape)))
    return [(v.dtype, v.shape) for v in results]


def fused_elementwise(attrs: dict, x: list) -> Result:
    """The result of the last step, which every input and every other step feeds, at the
    broadcast shape of all inputs."""
    steps = elementwise_steps(attrs)
    types = step_types(steps, x)
    used = {operand for step in steps for operand in step.operands}
    unused = [f"x{i}" for i in range(len(x)) if f"x{i}" not in used] + \
        [f"s{j}" for j in range(len(steps) - 1) if f"s{j}" not in used]
    _check(not unused, f"{', '.join(unused)} feed no step")
    shape = broadcast_shapes(*(v.shape for v in x if v is not None))
    _check(tuple(types[-1][1]) == shape, f"the last step gives {_dims(types[-1][1])}, the inputs broadcast to "
                                         f"{_dims(shape)}")
    return [types[-1]]
