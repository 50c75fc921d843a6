"""bf16 on the matrix unit (`--precision bf16`), and weight-only int8 (`--precision w8a16`).

The matrix unit streams bf16 rows twice as fast as fp32 ones (isa/config.py
`row_cycles`) and accumulates them in fp32. `to_bf16` gives every Conv, ConvTranspose,
MatMul and Gemm bf16 operands: constant weights become bf16 constants (rounded to nearest
even, as ml_dtypes and the vector unit's `vcvt` round), run-time operands pass through
a `Cast` to bf16 on the vector unit. The products' outputs and biases stay f32 (the IR's
rule: bf16 operands give f32), and so does everything else: LayerNorm, Softmax, GELU and
the other vector ops keep their fp32 accuracy.

`to_w8a16` goes one step further for MatMul and Gemm with constant weights: the weights
become int8, symmetric per output column (compiler/quantize/ptq.py `quantize_weights`,
as post-training quantization makes them), so that a decode step streams one byte per
weight from DRAM instead of two; the activations are bf16 as above and the matrix unit
multiplies them by the integers (exact in bf16) into fp32, and each column's scale is
applied to the accumulator in the kernel's epilogue (`MatMulW8`).
"""

from __future__ import annotations

from collections.abc import Collection, Mapping

import numpy as np

from compiler.ir import Graph, Node, Value, numpy_dtype
from compiler.passes.fuse_epilogue import epilogue_operands, gemm_column_bias

MATRIX_OPS = frozenset({"Conv", "ConvTranspose", "MatMul", "Gemm", "FusedConv", "FusedGemm", "FusedMatMul"})
OPERANDS = (0, 1)  # data/A and weight/B; input 2 (bias or C) stays f32


def to_bf16(graph: Graph, keep: Collection[str] = (), casts: dict[str, str] | None = None) -> Graph:
    """Every Conv, ConvTranspose, MatMul and Gemm with f32 operands, except the nodes named in
    `keep`, multiplies bf16 x bf16 into fp32: a constant operand is replaced by its bf16
    rounding (`<name>.bf16`), a run-time one by `Cast(x) {to="bf16"}` placed before its first
    use (`<name>.bf16`, one Cast per tensor however many products read it).

    Invariant: node outputs keep their names, dtypes and shapes; a node whose operands are not
    both f32 (integer or already bf16) is left alone. The f32 constants that only the
    converted products read are pruned. `casts` (f32 operand -> its bf16 value) are bf16
    copies made before, used again."""
    keep = set(keep)
    converted: dict[str, str] = dict(casts or {})  # f32 operand -> its bf16 value
    nodes: list[Node] = []
    for node in graph.nodes:
        if node.op in MATRIX_OPS and node.name not in keep and \
                all(graph.values[node.inputs[i]].dtype == "f32" for i in OPERANDS):
            for i in OPERANDS:
                name = node.inputs[i]
                if name not in converted:
                    converted[name] = _bf16_value(graph, graph.values[name], nodes, node)
                node.inputs[i] = converted[name]
        nodes.append(node)
    graph.nodes = nodes
    return graph.prune()


def _bf16_value(graph: Graph, value: Value, nodes: list[Node], user: Node) -> str:
    """The name of a new bf16 copy of `value`: a constant, or a Cast appended to `nodes`."""
    name = graph.fresh_name(value.name + ".bf16")
    if value.is_const:
        graph.const(name, value.const.astype(numpy_dtype("bf16")))
    else:
        graph.add_value(Value(name, "bf16", value.shape))
        nodes.append(Node("Cast", [value.name], [name], {"to": "bf16"}, f"{user.name}/cast" if user.name else ""))
    return name


WEIGHT_ONLY_OPS = frozenset({"MatMul", "Gemm", "FusedGemm", "FusedMatMul"})


def to_w8a16(graph: Graph, keep: Mapping[str, str] | None = None) -> Graph:
    """Weight-only int8: every MatMul, Gemm, FusedMatMul and FusedGemm whose weight B is a 2-D f32
    constant and whose A is an f32 run-time tensor of rank 2 or more becomes
    `MatMulW8(A.bf16, B.i8, B.scale[, bias][, Z])`: the weight quantized per output column,
    Gemm's transB applied to the constant, alpha folded into the scales and beta into a constant
    bias (a bias must be one value per column, or absent), the epilogue kept. The other matrix
    ops get bf16 operands as `to_bf16` gives them. `keep` names nodes that stay "fp32" or
    become only "bf16".

    Invariant: node outputs keep their names, dtypes and shapes; Gemm with transA, or with a C that
    is not one value per column, is not a weight-only product (it gets bf16 operands)."""
    from compiler.quantize.ptq import quantize_weights

    keep = dict(keep or {})
    converted: dict[str, str] = {}  # f32 activation -> its bf16 value
    quantized: dict[tuple[str, bool], tuple[str, np.ndarray]] = {}  # (weight, transposed) -> (i8 name, scales)
    nodes: list[Node] = []
    for node in graph.nodes:
        parts = None if node.name in keep else _weight_only_parts(graph, node)
        if parts is None:
            nodes.append(node)
            continue
        weight, transposed, alpha, bias, addend = parts
        if (weight, transposed) not in quantized:
            matrix = graph.values[weight].const.astype(np.float32)
            integers, scales = quantize_weights(matrix.T if transposed else matrix, axis=1)
            name = graph.fresh_name(weight + ".i8")
            graph.const(name, integers)
            quantized[(weight, transposed)] = (name, scales)
        weight_name, scales = quantized[(weight, transposed)]
        scale = graph.fresh_name(weight + ".scale")
        graph.const(scale, (scales * np.float32(alpha)).astype(np.float32))
        activation = node.inputs[0]
        if activation not in converted:
            converted[activation] = _bf16_value(graph, graph.values[activation], nodes, node)
        inputs, attrs = epilogue_operands(node, [converted[activation], weight_name, scale, bias or ""], addend)
        nodes.append(Node("MatMulW8", inputs, node.outputs, attrs, node.name))
    graph.nodes = nodes
    return to_bf16(graph, keep={name for name, kept in keep.items() if kept == "fp32"}, casts=converted)


def _weight_only_parts(graph: Graph, node: Node) -> tuple[str, bool, float, str | None, str | None] | None:
    """(weight, transposed, alpha, bias, addend) of a product that can be weight-only int8, else None.
    A Gemm's constant C becomes a new constant bias beta * C, one value per column."""
    if node.op not in WEIGHT_ONLY_OPS or node.attrs.get("perm_b"):
        return None
    a, b = (graph.values[name] for name in node.inputs[:2])
    if a.is_const or a.dtype != "f32" or len(a.shape) < 2 or not b.is_const or b.dtype != "f32" or len(b.shape) != 2:
        return None
    gemm = node.op in ("Gemm", "FusedGemm")
    if gemm and node.attrs.get("transA", 0):
        return None
    transposed = bool(gemm and node.attrs.get("transB", 0))
    alpha = float(node.attrs.get("alpha", 1.0)) if gemm else 1.0
    channels = b.shape[0] if transposed else b.shape[1]
    bias = node.inputs[2] if len(node.inputs) > 2 and node.inputs[2] else None
    addend = node.inputs[3] if len(node.inputs) > 3 and node.inputs[3] else None
    if gemm:
        bias = gemm_column_bias(graph, node, channels)
        if bias is None:
            return None
    return node.inputs[1], transposed, alpha, bias, addend
