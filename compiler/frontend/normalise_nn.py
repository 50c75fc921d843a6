"""Normalisers for the neural-network ops: convolution, pooling, normalisation, matrix
products, softmax, resampling and quantization.

Same contract as normalise_tensor.py: one ONNX node of any supported opset in, its IR
form out. The main rewrites: `auto_pad` becomes explicit `pads` (and ConvTranspose's
`output_shape` too); window attributes get their rank-dependent defaults; opset < 13
Softmax (which flattened to 2-D) becomes Flatten/Softmax/Reshape when the axis is not
the last; Resize and Upsample get full-rank `scales` and `sizes`; LpPool becomes an
AveragePool of |x|**p. BatchNormalization with run-time statistics and LayerNormalization
with its statistics used are decomposed by decompose_nn.py.
"""

from __future__ import annotations

import math

import numpy as np

from compiler.frontend.context import NodeContext, Normalisers, ir_dtype
from compiler.frontend.decompose_nn import batch_norm_at_run_time, check_stash_type, layer_norm_with_statistics

NORMALISERS = Normalisers()
_register = NORMALISERS.register



# Windows: convolution and pooling -----------------------------------------------------------------
def same_pads(size: int, kernel: int, stride: int, dilation: int, upper: bool) -> tuple[int, int]:
    """auto_pad SAME_UPPER/SAME_LOWER: output ceil(size / stride); the odd pad goes to the end (UPPER)."""
    out = -(-size // stride)
    total = max(0, (out - 1) * stride + (kernel - 1) * dilation + 1 - size)
    small = total // 2
    return (small, total - small) if upper else (total - small, small)


def _window(ctx: NodeContext, kernel: list[int], auto_pad: str | None = None) -> dict:
    """kernel_shape, strides, pads and dilations with defaults; auto_pad (the node's unless given) resolved."""
    spatial = ctx.rank(0) - 2
    if spatial < 1:
        raise ctx.invalid(f"input {list(ctx.shape(0))} has no spatial axes")
    strides = list(ctx.attrs.get("strides") or [1] * spatial)
    dilations = list(ctx.attrs.get("dilations") or [1] * spatial)
    auto_pad = auto_pad or ctx.attrs.get("auto_pad", "NOTSET") or "NOTSET"
    if len(kernel) != spatial or len(strides) != spatial or len(dilations) != spatial:
        raise ctx.invalid(f"kernel_shape {kernel}, strides {strides} and dilations {dilations} must have "
                          f"{spatial} entries")
    if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        if min(strides, default=1) < 1:
            raise ctx.invalid(f"strides={strides} must be positive")
        pairs = [same_pads(ctx.shape(0)[2 + i], kernel[i], strides[i], dilations[i], auto_pad == "SAME_UPPER")
                 for i in range(spatial)]
        pads = [b for b, _ in pairs] + [e for _, e in pairs]
    elif auto_pad == "VALID":
        pads = [0] * (2 * spatial)
    elif auto_pad == "NOTSET":
        pads = list(ctx.attrs.get("pads") or [0] * (2 * spatial))
    else:
        raise ctx.invalid(f"auto_pad={auto_pad!r} is not NOTSET, SAME_UPPER, SAME_LOWER or VALID")
    return {"kernel_shape": list(kernel), "strides": strides, "pads": pads, "dilations": dilations}


def refuse_bf16_product(ctx: NodeContext) -> None:
    """ONNX's bf16 matrix products give bf16; the IR's (the matrix unit's) accumulate in fp32 and give
    f32. A bf16 model is refused; an f32 model gets bf16 operands from compiler/passes/precision.py."""
    if ctx.value(0).dtype == "bf16":
        raise ctx.unsupported("bf16 inputs: compile the f32 model with --precision bf16 instead")


@_register("Conv")
def _conv(ctx: NodeContext) -> None:
    refuse_bf16_product(ctx)
    kernel = list(ctx.attrs.get("kernel_shape") or ctx.shape(1)[2:])
    ctx.emit("Conv", ctx.inputs[:3], group=int(ctx.attrs.get("group", 1)), **_window(ctx, kernel))


@_register("ConvTranspose")
def _conv_transpose(ctx: NodeContext) -> None:
    refuse_bf16_product(ctx)
    kernel = list(ctx.attrs.get("kernel_shape") or ctx.shape(1)[2:])
    spatial = ctx.rank(0) - 2
    output_padding = list(ctx.attrs.get("output_padding") or [0] * spatial)
    output_shape = ctx.attrs.get("output_shape")
    auto_pad = ctx.attrs.get("auto_pad", "NOTSET") or "NOTSET"
    # SAME padding depends on the output here, not the input: resolved below
    window = _window(ctx, kernel, auto_pad if auto_pad == "VALID" else "NOTSET")
    if output_shape is not None or auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        sizes = ctx.shape(0)[2:]
        if output_shape is None:
            output_shape = [sizes[i] * window["strides"][i] for i in range(spatial)]
        output_shape = list(output_shape)[-spatial:]
        if len(output_padding) != spatial or len(output_shape) != spatial:
            raise ctx.invalid(f"output_padding {output_padding} and output_shape {output_shape} need {spatial} entries")
        begins, ends = [], []
        for i in range(spatial):
            total = (window["strides"][i] * (sizes[i] - 1) + output_padding[i]
                     + (kernel[i] - 1) * window["dilations"][i] + 1 - output_shape[i])
            if total < 0:
                raise ctx.unsupported(f"output_shape {output_shape} is larger than the full transposed convolution")
            small = total // 2
            begin, end = (small, total - small) if auto_pad == "SAME_UPPER" else (total - small, small)
            begins.append(begin)
            ends.append(end)
        window["pads"] = begins + ends
    ctx.emit("ConvTranspose", ctx.inputs[:3], group=int(ctx.attrs.get("group", 1)), output_padding=output_padding,
             **window)


@_register("MaxPool", "AveragePool")
def _pool(ctx: NodeContext) -> None:
    ctx.refuse_outputs_from(1, "Indices")
    if "kernel_shape" not in ctx.attrs:
        raise ctx.invalid("kernel_shape is required")
    window = _window(ctx, list(ctx.attrs["kernel_shape"]))
    auto_pad = ctx.attrs.get("auto_pad", "NOTSET") or "NOTSET"
    ceil_mode = 0 if auto_pad != "NOTSET" else int(ctx.attrs.get("ceil_mode", 0))
    extra = {"count_include_pad": int(ctx.attrs.get("count_include_pad", 0))} if ctx.op_type == "AveragePool" else {}
    ctx.emit(ctx.op_type, ctx.inputs[:1], ceil_mode=ceil_mode, **window, **extra)


@_register("LpPool")
def _lp_pool(ctx: NodeContext) -> None:
    """(sum of |x|**p over the window) ** (1 / p): the sum is an AveragePool that counts the zero padding,
    times the window size. (With ceil_mode a window may run past the padding and average fewer elements.)"""
    if "kernel_shape" not in ctx.attrs:
        raise ctx.invalid("kernel_shape is required")
    if int(ctx.attrs.get("ceil_mode", 0)) and (ctx.attrs.get("auto_pad", "NOTSET") or "NOTSET") == "NOTSET":
        raise ctx.unsupported("ceil_mode=1")
    window = _window(ctx, list(ctx.attrs["kernel_shape"]))
    dtype = ctx.value(0).dtype
    p = ctx.scalar(float(ctx.attrs.get("p", 2)), dtype)
    powers = ctx.step("Pow", ctx.step("Abs", ctx.inputs[0]), p)
    mean = ctx.step("AveragePool", powers, ceil_mode=0, count_include_pad=1, **window)
    total = ctx.step("Mul", mean, ctx.scalar(math.prod(window["kernel_shape"]), dtype))
    ctx.step("Pow", total, ctx.scalar(1.0 / float(ctx.attrs.get("p", 2)), dtype), out=ctx.outputs[0])


# Normalisation ------------------------------------------------------------------------------------
@_register("BatchNormalization")
def _batch_norm(ctx: NodeContext) -> None:
    if ctx.since < 9 and ctx.attrs.get("spatial", 1) == 0:
        raise ctx.unsupported("spatial=0 (per-element statistics)")
    if ctx.attrs.get("training_mode", 0) or (ctx.since < 7 and ctx.attrs.get("is_test", 1) == 0 and
                                              any(ctx.used(i) for i in range(1, len(ctx.outputs)))):
        raise ctx.unsupported("training mode")
    ctx.refuse_outputs_from(1, "training statistics")
    if not all(ctx.value(i).is_const for i in range(1, 5)):
        batch_norm_at_run_time(ctx)
        return
    ctx.emit("BatchNormalization", ctx.inputs[:5], epsilon=float(ctx.attrs.get("epsilon", 1e-5)))


@_register("LayerNormalization")
def _layer_norm(ctx: NodeContext) -> None:
    """The fused kernel computes Y only; with Mean or InvStdDev used, the doc's equations instead."""
    if ctx.used(1) or ctx.used(2):
        layer_norm_with_statistics(ctx)
        return
    check_stash_type(ctx)
    ctx.emit("LayerNormalization", ctx.inputs[:3], axis=ctx.axis(ctx.attrs.get("axis", -1), ctx.rank(0)),
             epsilon=float(ctx.attrs.get("epsilon", 1e-5)))


@_register("LpNormalization")
def _lp_norm(ctx: NodeContext) -> None:
    p = int(ctx.attrs.get("p", 2))
    if p not in (1, 2):
        raise ctx.invalid(f"p={p} is not 1 or 2")
    ctx.emit("LpNormalization", ctx.inputs[:1], axis=ctx.axis(ctx.attrs.get("axis", -1), ctx.rank(0)), p=p)


# Matrix products and softmax ----------------------------------------------------------------------
@_register("MatMul")
def _matmul(ctx: NodeContext) -> None:
    refuse_bf16_product(ctx)
    ctx.emit("MatMul", list(ctx.inputs))


@_register("Gemm")
def _gemm(ctx: NodeContext) -> None:
    refuse_bf16_product(ctx)
    ctx.emit("Gemm", ctx.inputs[:3] if ctx.has(2) else ctx.inputs[:2],
             alpha=float(ctx.attrs.get("alpha", 1.0)), beta=float(ctx.attrs.get("beta", 1.0)),
             transA=int(ctx.attrs.get("transA", 0)), transB=int(ctx.attrs.get("transB", 0)))


@_register("Softmax", "LogSoftmax", "Hardmax")
def _softmax(ctx: NodeContext) -> None:
    """Before opset 13 these flattened x to 2-D at `axis` (default 1) and normalised the second axis."""
    rank = ctx.rank(0)
    if ctx.since >= 13:
        ctx.emit(ctx.op_type, ctx.inputs[:1], axis=ctx.axis(ctx.attrs.get("axis", -1), rank))
        return
    axis = ctx.axis(ctx.attrs.get("axis", 1), rank) if rank else 0
    if axis == rank - 1:
        ctx.emit(ctx.op_type, ctx.inputs[:1], axis=axis)
        return
    source = ctx.inputs[0]
    flat = ctx.emit_temp("Flatten", [source], f"{source}_2d", axis=axis)
    normalised = ctx.emit_temp(ctx.op_type, [flat], f"{source}_{ctx.op_type.lower()}", axis=1)
    ctx.emit("Reshape", [normalised], shape=list(ctx.shape(0)))


# Resampling ---------------------------------------------------------------------------------------
@_register("Resize")
def _resize(ctx: NodeContext) -> None:
    mode = ctx.attrs.get("mode", "nearest")
    if ctx.since < 11:  # Resize-10 resampled like Upsample: asymmetric coordinates, nearest rounds down
        scales = [float(s) for s in ctx.const(1, "scales").reshape(-1)]
        _emit_resize(ctx, mode, scales, None, None, coordinate_transformation_mode="asymmetric", nearest_mode="floor")
        return
    if ctx.attrs.get("antialias", 0):
        raise ctx.unsupported("antialias=1")
    coordinates = ctx.attrs.get("coordinate_transformation_mode", "half_pixel")
    if coordinates == "tf_crop_and_resize":
        raise ctx.unsupported("coordinate_transformation_mode 'tf_crop_and_resize'")
    scales, sizes = ctx.optional_const(2, "scales"), ctx.optional_const(3, "sizes")
    extra = {name: ctx.attrs[name] for name in ("nearest_mode", "cubic_coeff_a", "exclude_outside",
                                                 "extrapolation_value") if name in ctx.attrs}
    _emit_resize(ctx, mode, None if scales is None else [float(s) for s in scales.reshape(-1)],
                 None if sizes is None else [int(s) for s in sizes.reshape(-1)], ctx.attrs.get("axes"),
                 coordinate_transformation_mode=coordinates, **extra)


@_register("Upsample")
def _upsample(ctx: NodeContext) -> None:
    if ctx.since < 7:
        raise ctx.unsupported("the experimental opset-1 form (height_scale, width_scale)")
    scales = ctx.attrs.get("scales") if ctx.since < 9 else ctx.const(1, "scales").reshape(-1)
    if scales is None:
        raise ctx.invalid("no scales given")
    mode = {"bilinear": "linear"}.get(ctx.attrs.get("mode", "nearest"), ctx.attrs.get("mode", "nearest"))
    _emit_resize(ctx, mode, [float(s) for s in scales], None, None, coordinate_transformation_mode="asymmetric",
                 nearest_mode="floor")


def _emit_resize(ctx: NodeContext, mode: str, scales: list[float] | None, sizes: list[int] | None, axes,
                 **attrs) -> None:
    shape = ctx.shape(0)
    rank = len(shape)
    # scales and sizes follow the order the axes are given in, which need not be sorted
    axes = list(range(rank)) if axes is None else [ctx.axis(a, rank, "axes") for a in axes]
    if len(set(axes)) != len(axes):
        raise ctx.invalid(f"axes={list(axes)} name an axis twice")
    full_scales, full_sizes = [1.0] * rank, list(shape)
    given = sizes if sizes is not None else scales
    if given is None:
        raise ctx.invalid("neither scales nor sizes is given")
    if len(given) != len(axes):
        raise ctx.invalid(f"{'sizes' if sizes is not None else 'scales'}={given} does not have {len(axes)} entries")
    if sizes is not None:
        ratios = [size / shape[a] if shape[a] else 1.0 for a, size in zip(axes, sizes, strict=False)]
        policy = ctx.attrs.get("keep_aspect_ratio_policy", "stretch")
        if policy != "stretch":
            if policy not in ("not_larger", "not_smaller"):
                raise ctx.invalid(f"keep_aspect_ratio_policy={policy!r} is unknown")
            scale = min(ratios) if policy == "not_larger" else max(ratios)
            ratios = [scale] * len(axes)
            sizes = [int(scale * shape[a] + 0.5) for a in axes]
        for a, size, ratio in zip(axes, sizes, ratios, strict=False):
            full_sizes[a], full_scales[a] = int(size), float(ratio)
    else:
        for a, scale in zip(axes, scales, strict=False):
            if not scale > 0:
                raise ctx.invalid(f"scales={scales} must be positive")
            full_scales[a], full_sizes[a] = scale, int(math.floor(shape[a] * scale))
    if mode not in ("nearest", "linear", "cubic"):
        raise ctx.invalid(f"mode={mode!r} is not nearest, linear or cubic")
    if ctx.since < 11 and mode == "nearest" and any(s < 1 for s in full_scales):
        raise ctx.unsupported("nearest downsampling in opset 10 (rounding differs between runtimes)")
    ctx.emit("Resize", ctx.inputs[:1], mode=mode, scales=full_scales, sizes=full_sizes, **attrs)


# Quantization -------------------------------------------------------------------------------------
def _quant_axis(ctx: NodeContext) -> int:
    rank, axis = ctx.rank(0), ctx.attrs.get("axis", 1)
    per_axis = any(ctx.has(i) and ctx.value(i).shape not in ((), (1,)) for i in (1, 2))
    if per_axis:
        return ctx.axis(axis, rank)
    return axis % rank if rank and -rank <= axis < rank else 0


def _check_scale(ctx: NodeContext) -> None:
    """A constant scale must be positive and finite (a QDQ model's inconsistency, named)."""
    if ctx.has(1) and ctx.value(1).is_const:
        scale = ctx.value(1).const.astype(np.float64)
        bad = ~(np.isfinite(scale) & (scale > 0))
        if np.any(bad):
            raise ctx.invalid(f"scale %{ctx.inputs[1]} has {int(bad.sum())} value(s) that are not positive and "
                              f"finite (first: {scale.reshape(-1)[np.argmax(bad.reshape(-1))]})")


@_register("QuantizeLinear")
def _quantize(ctx: NodeContext) -> None:
    _check_scale(ctx)
    if ctx.attrs.get("block_size", 0):
        raise ctx.unsupported("blocked quantization (block_size)")
    if ctx.attrs.get("output_dtype", 0):
        dtype = ir_dtype(ctx.attrs["output_dtype"], ctx.outputs[0] or ctx.name)
    else:
        dtype = ctx.value(2).dtype if ctx.has(2) else "u8"
    if dtype not in ("i8", "u8", "i32"):
        raise ctx.unsupported(f"quantization to {dtype}")
    ctx.emit("QuantizeLinear", ctx.inputs[:3], axis=_quant_axis(ctx), output_dtype=dtype)


@_register("DequantizeLinear")
def _dequantize(ctx: NodeContext) -> None:
    _check_scale(ctx)
    if ctx.attrs.get("block_size", 0):
        raise ctx.unsupported("blocked quantization (block_size)")
    if ctx.attrs.get("output_dtype", 0):
        if ir_dtype(ctx.attrs["output_dtype"], ctx.outputs[0] or ctx.name) != ctx.value(1).dtype:
            raise ctx.unsupported("output_dtype differs from the scale's dtype")
    ctx.emit("DequantizeLinear", ctx.inputs[:3], axis=_quant_axis(ctx))



def _scalar_param(ctx: NodeContext, index: int, what: str, default: float = 0) -> float:
    """A per-tensor scale or zero point (absent: `default`)."""
    if not ctx.has(index):
        return default
    data = ctx.const(index, what)
    if data.size != 1:
        raise ctx.unsupported(f"a per-axis {what} ({data.size} values)")
    return data.reshape(-1)[0].item()


def _weight_params(ctx: NodeContext, scale_index: int | None, zero_index: int, channels: int) -> tuple[list, list]:
    """w_scale (one value, or one per output channel) and w_zero_point as lists."""
    scales = [1.0] if scale_index is None else [float(v) for v in ctx.const(scale_index, "w_scale").reshape(-1)]
    zeros = [0] if not ctx.has(zero_index) else [int(v) for v in ctx.const(zero_index, "w_zero_point").reshape(-1)]
    for what, values in (("w_scale", scales), ("w_zero_point", zeros)):
        if len(values) not in (1, channels):
            raise ctx.invalid(f"{what} has {len(values)} values for {channels} output channels")
    return scales, zeros


def _out_dtype(ctx: NodeContext, zero_index: int | None) -> str:
    if zero_index is None:
        return "i32"
    return ctx.value(zero_index).dtype if ctx.has(zero_index) else "u8"


@_register("QLinearConv", "ConvInteger")
def _qlinear_conv(ctx: NodeContext) -> None:
    """QLinearConv(x, x_scale, x_zp, w, w_scale, w_zp, y_scale, y_zp, B) and ConvInteger(x, w, x_zp, w_zp)."""
    linear = ctx.op_type == "QLinearConv"
    x, w = (0, 3) if linear else (0, 1)
    ctx.const(w, "weight")
    kernel = list(ctx.attrs.get("kernel_shape") or ctx.shape(w)[2:])
    scales, zeros = _weight_params(ctx, 4 if linear else None, 5 if linear else 3, ctx.shape(w)[0])
    params = dict(x_scale=_scalar_param(ctx, 1, "x_scale", 1.0) if linear else 1.0,
                  x_zero_point=int(_scalar_param(ctx, 2 if linear else 2, "x_zero_point")), w_scale=scales,
                  w_zero_point=zeros, y_scale=_scalar_param(ctx, 6, "y_scale", 1.0) if linear else 1.0,
                  y_zero_point=int(_scalar_param(ctx, 7, "y_zero_point")) if linear else 0,
                  out_dtype=_out_dtype(ctx, 7 if linear else None))
    inputs = [ctx.inputs[x], ctx.inputs[w]] + ([ctx.inputs[8]] if linear and ctx.has(8) else [])
    ctx.emit("QLinearConv", inputs, group=int(ctx.attrs.get("group", 1)), **_window(ctx, kernel), **params)


@_register("QLinearMatMul", "MatMulInteger")
def _qlinear_matmul(ctx: NodeContext) -> None:
    """QLinearMatMul(a, a_scale, a_zp, b, b_scale, b_zp, y_scale, y_zp) and MatMulInteger(a, b, a_zp, b_zp),
    with b a constant matrix."""
    linear = ctx.op_type == "QLinearMatMul"
    b = 3 if linear else 1
    weight = ctx.const(b, "b")
    if weight.ndim != 2:
        raise ctx.unsupported(f"a {weight.ndim}-D b (only a matrix)")
    scales, zeros = _weight_params(ctx, 4 if linear else None, 5 if linear else 3, weight.shape[1])
    params = dict(x_scale=_scalar_param(ctx, 1, "a_scale", 1.0) if linear else 1.0,
                  x_zero_point=int(_scalar_param(ctx, 2, "a_zero_point")), w_scale=scales, w_zero_point=zeros,
                  y_scale=_scalar_param(ctx, 6, "y_scale", 1.0) if linear else 1.0,
                  y_zero_point=int(_scalar_param(ctx, 7, "y_zero_point")) if linear else 0,
                  out_dtype=_out_dtype(ctx, 7 if linear else None))
    ctx.emit("QLinearMatMul", [ctx.inputs[0], ctx.inputs[b]], **params)
