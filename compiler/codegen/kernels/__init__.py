"""The kernel table: IR op -> function that emits its instructions (`kernel(ctx, node)`).

Ops listed in ALIASES need no instructions: their output is their input's DRAM, read
with another shape.
"""

from compiler.codegen.kernels.conv import conv_kernel, conv_transpose_kernel
from compiler.codegen.kernels.elementwise import (
    RECIPES,
    dequantize_kernel,
    elementwise_kernel,
    fused_elementwise_kernel,
    quantize_kernel,
)
from compiler.codegen.kernels.matmul import gemm_kernel, matmul_kernel, matmul_w8_kernel
from compiler.codegen.kernels.movement import MOVEMENT_KERNELS
from compiler.codegen.kernels.pool import pool_kernel
from compiler.codegen.kernels.quantized import qlinear_conv_kernel, qlinear_matmul_kernel
from compiler.codegen.kernels.rows import ROW_KERNELS
from compiler.codegen.kernels.scatter import scatter_nd_kernel
from compiler.passes.precision import MATRIX_OPS

ALIASES = {"Reshape", "Flatten", "Squeeze", "Unsqueeze", "Identity"}

KERNELS = {op: elementwise_kernel for op in RECIPES}
KERNELS.update({"MatMul": matmul_kernel, "Gemm": gemm_kernel, "QuantizeLinear": quantize_kernel,
                "DequantizeLinear": dequantize_kernel, "QLinearConv": qlinear_conv_kernel,
                "QLinearMatMul": qlinear_matmul_kernel, "MatMulW8": matmul_w8_kernel})
KERNELS.update({"Conv": conv_kernel, "FusedConv": conv_kernel, "FusedGemm": gemm_kernel, "FusedMatMul": matmul_kernel,
                "ConvTranspose": conv_transpose_kernel, "MaxPool": pool_kernel,
                "AveragePool": pool_kernel})
KERNELS["FusedElementwise"] = fused_elementwise_kernel
KERNELS.update(ROW_KERNELS)
KERNELS.update(MOVEMENT_KERNELS)
KERNELS["ScatterND"] = scatter_nd_kernel
# Ops whose kernels use the matrix array: the float products, and the int8 and weight-only int8 ones.
MATRIX_KERNELS = MATRIX_OPS | {"QLinearConv", "QLinearMatMul", "MatMulW8"}
