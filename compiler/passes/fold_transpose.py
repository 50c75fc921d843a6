"""Read a transposed (or bf16-rounded) operand of a MatMul in place instead of copying it in DRAM.

    X -> Transpose {perm} -> MatMul(A, .) | FusedMatMul(A, ., ...)  =>  FusedMatMul(A, X, ...) {perm_b=perm}
    X (f32) -> Cast {to=bf16} -> FusedMatMul(A, ., ...)             =>  FusedMatMul(A, X, ...) {round_b="bf16"}
    X (f32) -> Cast {to=bf16} -> MatMul | Gemm | MatMulW8 (., B)  =>  FusedMatMul | MatMulW8 (X, B) {round_a="bf16"}

Attention reads its key and value caches transposed (`K^T` per head, `V` per head from a
[tokens, heads, head_dim] cache); a Transpose node copies the whole cache through the chip
every step to give the MatMul a dense operand. The matrix unit can take a weight tile
stored transposed (`load_weights` with its transpose flag) and any row stride, so the
MatMul kernel can read the cache as it lies: it gets the transposed view of X
(compiler/codegen/kernels/matmul.py). The Transpose's output must have no other reader and
not be a graph output; X keeps its own readers. Float products only, as fuse_epilogue.
"""

from __future__ import annotations

from compiler.ir import Graph, Node
from compiler.passes.fuse_epilogue import FLOAT, epilogue_operands, gemm_column_bias


def fold_transpose_into_matmul(graph: Graph) -> Graph:
    """Every MatMul/FusedMatMul (without perm_b) whose right operand is made by a Transpose read by
    nothing else becomes a FusedMatMul of the Transpose's input with perm_b = its perm.

    Invariant: node outputs keep their names, dtypes and shapes; the Transpose is pruned."""
    consumers, producers = graph.consumers(), graph.producers()
    nodes: list[Node] = []
    for node in graph.nodes:
        if node.op in ("MatMul", "FusedMatMul") and not node.attrs.get("perm_b"):
            operand = node.inputs[1]
            transpose = producers.get(operand)
            a = graph.values[node.inputs[0]]
            if (transpose is not None and transpose.op == "Transpose" and operand not in graph.outputs
                    and len(consumers.get(operand, [])) == 1
                    and a.dtype in FLOAT and len(a.shape) >= 2 and len(graph.values[operand].shape) >= 2):
                attrs = dict(node.attrs) if node.op == "FusedMatMul" else {}
                attrs["perm_b"] = list(transpose.attrs["perm"])
                inputs = [node.inputs[0], transpose.inputs[0], *node.inputs[2:]]
                node = Node("FusedMatMul", inputs, node.outputs, attrs, node.name)
        nodes.append(node)
    graph.nodes = nodes
    return graph.prune()


def fold_cast_into_matmul(graph: Graph) -> Graph:
    """A product whose operand is `Cast(X) {to="bf16"}` of an f32 run-time X, read by nothing else, takes X
    and rounds it on chip: round_a for the left operand of a FusedMatMul or MatMulW8 (a MatMul becomes a
    FusedMatMul, and so does a Gemm or FusedGemm without transA or alpha whose C is absent or one value
    per column: transB becomes perm_b, beta * C the bias), round_b for the right operand of a FusedMatMul
    with a bf16 A.

    Invariant: node outputs keep their names, dtypes and shapes; the folded Casts are pruned."""
    consumers, producers = graph.consumers(), graph.producers()

    def rounded_source(node: Node, operand: str) -> str | None:
        """X when `operand` is a bf16 Cast of the f32 run-time X that only `node` reads, else None."""
        cast = producers.get(operand)
        if (cast is None or cast.op != "Cast" or cast.attrs.get("to") != "bf16" or operand in graph.outputs
                or len(consumers.get(operand, [])) != 1):
            return None
        source = graph.values[cast.inputs[0]]
        return source.name if source.dtype == "f32" and not source.is_const else None

    for index, node in enumerate(graph.nodes):
        if node.op in ("MatMul", "Gemm", "FusedGemm", "FusedMatMul", "MatMulW8") and not node.attrs.get("round_a"):
            source = rounded_source(node, node.inputs[0])
            product = _as_fused_matmul(graph, node) if source and node.op not in ("FusedMatMul", "MatMulW8") else node
            if source and product is not None:
                node = Node(product.op, [source, *product.inputs[1:]], product.outputs,
                            {**product.attrs, "round_a": "bf16"}, product.name)
        if node.op == "FusedMatMul" and not node.attrs.get("round_b") and \
                (node.attrs.get("round_a") or graph.values[node.inputs[0]].dtype == "bf16"):
            source = rounded_source(node, node.inputs[1])
            if source:
                node = Node(node.op, [node.inputs[0], source, *node.inputs[2:]], node.outputs,
                            {**node.attrs, "round_b": "bf16"}, node.name)
        graph.nodes[index] = node
    return graph.prune()


def _as_fused_matmul(graph: Graph, node: Node) -> Node | None:
    """The MatMul, Gemm or FusedGemm as the FusedMatMul that computes the same, or None when there is
    none (rank-1 MatMul operands; transA, alpha, or a C that is not one value per column)."""
    if node.op == "MatMul":
        if min(len(graph.values[name].shape) for name in node.inputs) < 2:
            return None
        return Node("FusedMatMul", list(node.inputs), node.outputs, {}, node.name)
    attrs = node.attrs
    if attrs.get("transA", 0) or float(attrs.get("alpha", 1.0)) != 1.0:
        return None
    bias = gemm_column_bias(graph, node, graph.values[node.outputs[0]].shape[-1])
    if bias is None:
        return None
    inputs, fused = epilogue_operands(node, [node.inputs[0], node.inputs[1], bias],
                                      node.inputs[3] if len(node.inputs) > 3 else "")
    if attrs.get("transB", 0):
        fused["perm_b"] = [1, 0]
    return Node("FusedMatMul", inputs, node.outputs, fused, node.name)
