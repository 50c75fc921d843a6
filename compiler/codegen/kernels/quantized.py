"""QLinearConv and QLinearMatMul: int8/uint8 products with int32 accumulation, requantized.

The matrix unit multiplies the stored integers as they are; the zero point of x enters
as sum((x - zx) * w) = sum(x * w) - zx * sum(w), and sum(w) per output channel is a
compile-time constant folded into the int32 bias (padding is filled with zx, the
quantized zero, so padded taps cancel the same way). The epilogue adds the bias and
requantizes with the multiplier x_scale * w_scale[c] / y_scale, computed in fp32 in
that order, as onnxruntime's QLinearConv computes it.
"""

from __future__ import annotations

import numpy as np

from compiler.codegen.context import CodegenContext, View, unsupported
from compiler.codegen.kernels.conv import conv_kernel
from compiler.codegen.kernels.epilogue import Product, Requantization, tail_of
from compiler.codegen.kernels.matmul import ConstantMatrix, as_rows, laid_out_as, matmul_views
from compiler.ir import Node
from compiler.ops import OPS
from isa.dtypes import INT_RANGES, DType


def integer_product(ctx: CodegenContext, node: Node, weight_sums: np.ndarray) -> Product:
    """The Product of a QLinearConv/QLinearMatMul node whose filters sum to `weight_sums` per output channel."""
    attrs = OPS[node.op].attr_values(node)
    x = ctx.view(node.inputs[0])
    weight = ctx.graph.values[node.inputs[1]]
    if not weight.is_const:
        raise unsupported(node, "run-time quantized weights")
    if np.any(np.asarray(attrs["w_zero_point"]) != 0):
        raise unsupported(node, "a non-zero weight zero point")
    channels = len(weight_sums)
    bias = np.zeros(channels, dtype=np.int64)
    if len(node.inputs) > 2 and node.inputs[2]:
        bias_value = ctx.graph.values[node.inputs[2]]
        if not bias_value.is_const:
            raise unsupported(node, "a run-time bias")
        bias += bias_value.const.astype(np.int64)
    bias -= int(attrs["x_zero_point"]) * weight_sums.astype(np.int64)
    low32, high32 = INT_RANGES[DType.I32]
    if bias.min() < low32 or bias.max() > high32:
        raise unsupported(node, "the bias with the zero-point correction does not fit int32")
    bias_view = ctx.constant(bias, DType.I32, node.inputs[1] + ".bias") if np.any(bias) else None
    requant = None
    out_dtype = {"i8": DType.I8, "u8": DType.U8, "i32": DType.I32}[attrs["out_dtype"]]
    if out_dtype != DType.I32:
        w_scale = np.asarray(attrs["w_scale"], dtype=np.float32)
        multiplier = (np.float32(attrs["x_scale"]) * w_scale) / np.float32(attrs["y_scale"])
        low, high = INT_RANGES[out_dtype]
        requant = Requantization(ctx.constant(multiplier.astype(np.float32), DType.F32, node.inputs[1] + ".scale"),
                                 int(attrs["y_zero_point"]), out_dtype, max(low, int(attrs["y_min"])),
                                 min(high, int(attrs["y_max"])))
    weight_dtype = DType.I8 if weight.dtype == "i8" else DType.U8
    return Product(x.dtype, bias=bias_view, requant=requant, weights=weight_dtype,
                   pad_value=int(attrs["x_zero_point"]), tail=tail_of(ctx, node, 3, DType.I32))


def qlinear_conv_kernel(ctx: CodegenContext, node: Node) -> None:
    weight = ctx.graph.values[node.inputs[1]]
    sums = weight.const.reshape(weight.shape[0], -1).astype(np.int64).sum(axis=1) if weight.is_const else np.zeros(1)
    conv_kernel(ctx, node, integer_product(ctx, node, sums))


def qlinear_matmul_kernel(ctx: CodegenContext, node: Node) -> None:
    """x [..., M, K] @ w [K, N]: the rows of every batch stream through one product."""
    a, b, out, product = qlinear_matmul_operands(ctx, node)
    matmul_views(ctx, a, b, out, node, product=product)


def qlinear_matmul_operands(ctx: CodegenContext, node: Node) -> tuple[View, ConstantMatrix, View, Product]:
    """The node's rows a [M, K], its constant weights, its result [M, N] and the integer Product."""
    weight = ctx.graph.values[node.inputs[1]]
    sums = weight.const.astype(np.int64).sum(axis=0) if weight.is_const else np.zeros(1)
    product = integer_product(ctx, node, sums)
    a, out = as_rows(ctx, node)
    product = product.laid_out(lambda view: laid_out_as(view, out.shape), 1)
    if not weight.is_const:
        raise unsupported(node, "run-time quantized weights")
    return a, ConstantMatrix(weight.const, product.weight_dtype, node.inputs[1]), out, product
