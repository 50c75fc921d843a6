"""Chains of element-wise ops become one FusedElementwise node, its intermediates kept on chip.

Each element-wise node is otherwise its own kernel: it loads its inputs from DRAM, computes
on the vector unit and stores its result, so a chain such as DequantizeLinear -> Add -> Relu
-> QuantizeLinear (an int8 residual join) or x * Sigmoid(x) makes a DRAM round trip per op.
The fused node's kernel loads each input tile once and runs every step's recipe on it
(compiler/codegen/kernels/elementwise.py).
"""

from __future__ import annotations

import numpy as np

from compiler.codegen.kernels.elementwise import RECIPES
from compiler.ir import Graph, Node
from compiler.shape_rules import Step, broadcast_shapes

QUANTIZATION = ("QuantizeLinear", "DequantizeLinear")
FUSIBLE = frozenset(RECIPES) | frozenset(QUANTIZATION)
# What an intermediate may be: the dtypes a temporary tile of the vector unit holds (32 bits at most).
INTERMEDIATE_DTYPES = ("f32", "bf16", "f16", "i32", "i8", "u8", "bool")
STORAGE_DTYPES = INTERMEDIATE_DTYPES + ("i64",)
MAX_STEPS = 16


def fuse_elementwise(graph: Graph) -> Graph:
    """Merge connected element-wise nodes into FusedElementwise nodes, greedily in topological order.

    An element-wise node is one with a vector recipe (Add, Mul, Relu, Sigmoid, Erf, Where,
    Cast, ...) or a QuantizeLinear/DequantizeLinear with per-tensor scale and zero point, one
    output, and accelerator dtypes. A producer's group joins a consumer's group when the value
    between them:
    - is read by no node outside the consumer's group and is not a graph output (so a group
      has one result, its last node's, and contracting it cannot create a cycle: a path that
      leaves the group starts after every node in it, so no networkx check is needed);
    - has the consumer's output shape (a step is never recomputed for every element a
      broadcast would repeat it over; the group's inputs may broadcast to that shape);
    - has a dtype a temporary tile holds (f32, bf16, f16, i32, i8, u8, bool);
    and the merged group has at most MAX_STEPS steps. Each group of two or more nodes becomes
    one FusedElementwise node in its last node's place, with that node's name and output;
    its inputs are the group's distinct outside values in order of first use. Everything
    else is left as it was; the graph's results do not change by a bit (the kernel converts
    each intermediate to its dtype as the unfused kernels do).

    Constant per-axis quantization parameters are first shaped to broadcast the numpy way
    (`_per_axis_params_broadcast`), so a per-channel DequantizeLinear can join the chain that
    reads it.
    """
    graph = _per_axis_params_broadcast(graph)
    producers = graph.producers()
    consumers = graph.consumers()
    groups: dict[int, list[Node]] = {}  # id(last node) -> the group's nodes in graph order
    for node in graph.nodes:
        if not fusible(graph, node):
            continue
        out = graph.values[node.outputs[0]]
        members, inside = [node], {id(node)}
        grown = True
        while grown:  # a value joins once every node that reads it is in the group
            grown = False
            for name in dict.fromkeys(name for member in members for name in member.inputs if name):
                producer = producers.get(name)
                value = graph.values[name]
                if producer is None or id(producer) not in groups or name in graph.outputs:
                    continue
                if any(id(user) not in inside for user in consumers[name]) or value.shape != out.shape:
                    continue
                if value.dtype not in INTERMEDIATE_DTYPES or len(groups[id(producer)]) + len(members) > MAX_STEPS:
                    continue
                joining = groups.pop(id(producer))
                members += joining
                inside.update(id(member) for member in joining)
                grown = True
        groups[id(node)] = members
    position = {id(node): index for index, node in enumerate(graph.nodes)}
    fused: dict[int, Node] = {}
    removed: set[int] = set()
    for last, members in groups.items():
        if len(members) < 2:
            continue
        members.sort(key=lambda member: position[id(member)])
        fused[last] = fused_node(graph, members)
        removed.update(id(member) for member in members)
    if not fused:
        return graph
    graph.nodes = [fused[id(node)] if id(node) in fused else node for node in graph.nodes
                   if id(node) in fused or id(node) not in removed]
    return graph.prune()


def _per_axis_params_broadcast(graph: Graph) -> Graph:
    """A QuantizeLinear/DequantizeLinear with constant per-axis parameters ([C] along `axis`) gets
    them reshaped to [..., C, 1, ...] of its input's rank: the same values, now broadcasting the
    numpy way, so the node can join a chain (an int8 conv's per-channel dequantization joins
    the residual join that reads it)."""
    for node in graph.nodes:
        if node.op not in QUANTIZATION:
            continue
        rank = len(graph.values[node.inputs[0]].shape)
        axis = node.attrs.get("axis", 1) % max(rank, 1)
        params = [graph.values[name] if name else None for name in node.inputs[1:]]
        if rank < 2 or not all(p is None or p.size == 1 or (p.is_const and len(p.shape) == 1) for p in params) \
                or all(p is None or p.size == 1 for p in params):
            continue
        for index, param in enumerate(params, start=1):
            if param is not None and param.size > 1:
                shaped = graph.fresh_name(f"{param.name}.axis{axis}")
                graph.const(shaped, param.const.reshape((1,) * axis + (-1,) + (1,) * (rank - axis - 1)))
                node.inputs[index] = shaped
    return graph


def fusible(graph: Graph, node: Node) -> bool:
    """Whether `node` is an element-wise node a FusedElementwise program can take (see fuse_elementwise)."""
    if node.op not in FUSIBLE or len(node.outputs) != 1 or not node.outputs[0]:
        return False
    x = graph.values[node.inputs[0]]
    if node.op in QUANTIZATION and any(len(graph.values[name].shape) != len(x.shape) and graph.values[name].size != 1
                                       for name in node.inputs[1:] if name):
        return False  # [C] parameters along `axis` do not broadcast the numpy way
    names = [name for name in node.inputs if name] + node.outputs
    return all(graph.values[name].dtype in STORAGE_DTYPES for name in names)


def fused_node(graph: Graph, members: list[Node]) -> Node:
    """The FusedElementwise node that computes `members` (element-wise nodes in graph order, one or more)."""
    step_of = {out: index for index, member in enumerate(members) for out in member.outputs}
    inputs: list[str] = []
    steps = []
    for member in members:
        operands = []
        for name in member.inputs:
            if not name:
                operands.append("")
            elif name in step_of:
                operands.append(f"s{step_of[name]}")
            else:
                if name not in inputs:
                    inputs.append(name)
                operands.append(f"x{inputs.index(name)}")
        steps.append(Step(member.op, tuple(operands), dict(member.attrs)))
    last = members[-1]
    shape = broadcast_shapes(*(graph.values[name].shape for name in inputs))
    assert shape == graph.values[last.outputs[0]].shape, "element-wise results broadcast their inputs"
    steps = _relu_folded_into_quantize(graph, steps, inputs)
    return Node("FusedElementwise", inputs, list(last.outputs), {"steps": [step.text() for step in steps]},
                last.name)


INT_LOWEST = {"u8": 0, "i8": -128}


def _relu_folded_into_quantize(graph: Graph, steps: list[Step], inputs: list[str]) -> list[Step]:
    """Relu(a) read only by QuantizeLinear(., scale, zero point) whose zero point is its type's
    lowest value (u8 with 0: any Relu before an asymmetric quantization of a Relu output) is
    dropped: quantization is monotonic and maps 0 to the zero point, so
    Q(max(a, 0)) = max(Q(a), zero point) = Q(a). Needs a constant positive scale."""
    readers: dict[str, list[int]] = {}
    for index, step in enumerate(steps):
        for operand in step.operands:
            readers.setdefault(operand, []).append(index)

    def constant(operand: str):
        value = graph.values[inputs[int(operand[1:])]] if operand.startswith("x") else None
        return value.const if value is not None and value.is_const else None

    for index, step in enumerate(steps):
        if step.op != "QuantizeLinear" or not step.operands[0].startswith("s"):
            continue
        relu = int(step.operands[0][1:])
        scale = constant(step.operands[1])
        zero = constant(step.operands[2]) if len(step.operands) > 2 and step.operands[2] else np.zeros(1)
        lowest = INT_LOWEST.get(step.attrs.get("output_dtype", "u8"))
        if steps[relu].op != "Relu" or readers.get(f"s{relu}") != [index] or scale is None or np.any(scale <= 0) \
                or lowest is None or np.any(zero != lowest):
            continue
        renumber = {f"s{j}": f"s{j - 1}" for j in range(relu + 1, len(steps))}
        renumber[f"s{relu}"] = steps[relu].operands[0]
        kept = [Step(s.op, tuple(renumber.get(o, o) for o in s.operands), s.attrs)
                for j, s in enumerate(steps) if j != relu]
        return _relu_folded_into_quantize(graph, kept, inputs)
    return steps
