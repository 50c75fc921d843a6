"""Read a transposed (or bf16-rounded) operand of a MatMul in place instead of copying it in DRAM.

    X -> Transpose {perm} -> MatMul(A, .) | FusedMatMul(A, ., ...)  =>  FusedMatMul(A, X, ...) {perm_b=perm}
    X -> Transpose {perm} -> MatMul(., B) | FusedMatMul(., B, ...)  =>  FusedMatMul(X, B, ...) {perm_a=perm}
    MatMul | FusedMatMul (., B) -> Transpose {perm} -> Z            =>  FusedMatMul(., B, ...) -> Z {perm_out=perm}
      (the last two for a run-time B only)
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
    """Every MatMul/FusedMatMul whose right operand is made by a Transpose read by nothing else
    becomes a FusedMatMul of the Transpose's input with perm_b = its perm; one whose left operand
    is, and whose right operand is computed at run time (attention's queries per head against
    its keys), takes it with perm_a (a product with constant weights reads its rows densely); and
    such a product whose result only a Transpose keeping the last axis reads (the heads put back
    between the tokens), without an addend and with single values as its tail's other operands,
    writes the Transpose's output with perm_out.

    Invariant: node outputs keep their names, dtypes and shapes; the Transpose is pruned."""
    consumers, producers = graph.consumers(), graph.producers()

    def transposed_source(operand: str) -> Node | None:
        """The Transpose that makes `operand` when only the product reads it, else None."""
        transpose = producers.get(operand)
        if (transpose is None or transpose.op != "Transpose" or operand in graph.outputs
                or len(consumers.get(operand, [])) != 1 or len(graph.values[operand].shape) < 2):
            return None
        return transpose

    def transposed_result(node: Node) -> Node | None:
        """The Transpose that alone reads the product's result, keeping its last axis, when the
        product has no addend and its tail (if any) only single values besides the result; else None."""
        result = node.outputs[0]
        users = consumers.get(result, [])
        if (len(users) != 1 or users[0].op != "Transpose" or result in graph.outputs or node.attrs.get("perm_out")
                or any(node.inputs[3:4]) or any(graph.values[name].size != 1 for name in node.inputs[4:] if name)):
            return None
        perm = list(users[0].attrs["perm"])
        return users[0] if perm[-1] == len(perm) - 1 else None

    nodes: list[Node] = []
    folded: set[int] = set()  # Transposes now written by the product before them
    for node in graph.nodes:
        if id(node) in folded:
            continue
        if node.op in ("MatMul", "FusedMatMul") and graph.values[node.inputs[0]].dtype in FLOAT \
                and len(graph.values[node.inputs[0]].shape) >= 2:
            run_time_b = not graph.values[node.inputs[1]].is_const
            for index, key in ((1, "perm_b"), (0, "perm_a")):
                transpose = None if node.attrs.get(key) else transposed_source(node.inputs[index])
                if transpose is None or (key == "perm_a" and not run_time_b):
                    continue
                attrs = dict(node.attrs) if node.op == "FusedMatMul" else {}
                attrs[key] = list(transpose.attrs["perm"])
                inputs = list(node.inputs)
                inputs[index] = transpose.inputs[0]
                node = Node("FusedMatMul", inputs, node.outputs, attrs, node.name)
            transpose = transposed_result(node) if run_time_b else None
            if transpose is not None:
                attrs = dict(node.attrs) if node.op == "FusedMatMul" else {}
                attrs["perm_out"] = list(transpose.attrs["perm"])
                node = Node("FusedMatMul", list(node.inputs), list(transpose.outputs), attrs, node.name)
                folded.add(id(transpose))
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
