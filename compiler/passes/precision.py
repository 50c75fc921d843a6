"""bf16 on the matrix unit (`--precision bf16`): bf16 operands, fp32 accumulation.

The matrix unit streams bf16 rows twice as fast as fp32 ones (isa/config.py
`row_cycles`) and accumulates them in fp32. `to_bf16` gives every Conv, ConvTranspose,
MatMul and Gemm bf16 operands: constant weights become bf16 constants (rounded to nearest
even, as ml_dtypes and the vector unit's `vcvt` round), run-time operands pass through
a `Cast` to bf16 on the vector unit. The products' outputs and biases stay f32 (the IR's
rule: bf16 operands give f32), and so does everything else: LayerNorm, Softmax, GELU and
the other vector ops keep their fp32 accuracy.
"""

from __future__ import annotations

from collections.abc import Collection

from compiler.ir import Graph, Node, Value, numpy_dtype

MATRIX_OPS = frozenset({"Conv", "ConvTranspose", "MatMul", "Gemm", "FusedConv", "FusedGemm", "FusedMatMul"})
OPERANDS = (0, 1)  # data/A and weight/B; input 2 (bias or C) stays f32


def to_bf16(graph: Graph, keep: Collection[str] = ()) -> Graph:
    """Every Conv, ConvTranspose, MatMul and Gemm with f32 operands, except the nodes named in
    `keep`, multiplies bf16 x bf16 into fp32: a constant operand is replaced by its bf16
    rounding (`<name>.bf16`), a run-time one by `Cast(x) {to="bf16"}` placed before its first
    use (`<name>.bf16`, one Cast per tensor however many products read it).

    Invariant: node outputs keep their names, dtypes and shapes; a node whose operands are not
    both f32 (integer or already bf16) is left alone. The f32 constants that only the
    converted products read are pruned."""
    keep = set(keep)
    converted: dict[str, str] = {}  # f32 operand -> its bf16 value
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
