"""Read a transposed (or bf16-rounded) right operand of a MatMul in place instead of copying it in DRAM.

    X -> Transpose {perm} -> MatMul(A, .) | FusedMatMul(A, ., ...)   =>   FusedMatMul(A, X, ...) {perm_b=perm}
    X (f32) -> Cast {to=bf16} -> FusedMatMul(A, ., ...)              =>   FusedMatMul(A, X, ...) {round_b="bf16"}

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

FLOAT = ("f32", "bf16")


def fold_transpose_into_matmul(graph: Graph) -> Graph:
    """Every MatMul/FusedMatMul (without perm_b) whose right operand is made by a Transpose read by
    nothing else becomes a FusedMatMul of the Transpose's input with perm_b = its perm.

    Invariant: node outputs keep their names, dtypes and shapes; the Transpose is pruned."""
    consumers = graph.consumers()
    producers = {name: node for node in graph.nodes for name in node.outputs}
    nodes: list[Node] = []
    for node in graph.nodes:
        if node.op in ("MatMul", "FusedMatMul") and not node.attrs.get("perm_b"):
            operand = node.inputs[1]
            transpose = producers.get(operand)
            a = graph.values[node.inputs[0]]
            if (transpose is not None and transpose.op == "Transpose" and operand not in graph.outputs
                    and len(consumers.get(operand, [])) == 1 and node.inputs.count(operand) == 1
                    and a.dtype in FLOAT and len(a.shape) >= 2 and len(graph.values[operand].shape) >= 2):
                attrs = dict(node.attrs) if node.op == "FusedMatMul" else {}
                attrs["perm_b"] = list(transpose.attrs["perm"])
                inputs = [node.inputs[0], transpose.inputs[0], *node.inputs[2:]]
                node = Node("FusedMatMul", inputs, node.outputs, attrs, node.name)
        nodes.append(node)
    graph.nodes = nodes
    return graph.prune()


def fold_cast_into_matmul(graph: Graph) -> Graph:
    """Every FusedMatMul with a bf16 A whose right operand is `Cast(X) {to="bf16"}` of an f32 run-time X,
    read by nothing else, takes X with round_b="bf16".

    Invariant: node outputs keep their names, dtypes and shapes; the Cast is pruned."""
    consumers = graph.consumers()
    producers = {name: node for node in graph.nodes for name in node.outputs}
    for index, node in enumerate(graph.nodes):
        if node.op != "FusedMatMul" or node.attrs.get("round_b") or graph.values[node.inputs[0]].dtype != "bf16":
            continue
        operand = node.inputs[1]
        cast = producers.get(operand)
        if (cast is not None and cast.op == "Cast" and cast.attrs.get("to") == "bf16" and operand not in graph.outputs
                and len(consumers.get(operand, [])) == 1 and node.inputs.count(operand) == 1
                and graph.values[cast.inputs[0]].dtype == "f32" and not graph.values[cast.inputs[0]].is_const):
            graph.nodes[index] = Node(node.op, [node.inputs[0], cast.inputs[0], *node.inputs[2:]], node.outputs,
                                      {**node.attrs, "round_b": "bf16"}, node.name)
    return graph.prune()
