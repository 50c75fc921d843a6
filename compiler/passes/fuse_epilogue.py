"""Fuse what follows a Conv or Gemm into the end of its result tiles (FusedConv, FusedGemm).

    Conv | Gemm  [-> Add(., Z) | Sum(., Z)]  [-> Relu | Clip]   =>   FusedConv | FusedGemm(..., Z) {activation}
    MatMul [-> Add(., bias [N])] [-> Add(., Z)] [-> Relu | Clip] =>   FusedMatMul(A, B, bias, Z) {activation}

The addend Z (a residual connection) must have the result's shape and dtype and be
computed before the Conv/Gemm; each absorbed node's input must have no other reader and
not be a graph output. The kernel then adds Z and applies the activation to each result
tile on chip, in the unfused order (bias, then Z, then the activation), so the result is
the same value for value and two DRAM round trips are saved per fused op. Float products
only: the int8 ops carry their activation as the requantization clamp already.

`fuse_tail` does the same for any chain of element-wise ops after a matrix product:
QLinearConv | QLinearMatMul (out_dtype i32) | Conv | Gemm | MatMul | Fused* -> FusedElementwise
(an int8 product's dequantization, residual join and next quantization; a GELU after a Gemm)
becomes the product with that program as its `tail`, run on each result tile on chip (the
product's result never reaches DRAM).
"""

from __future__ import annotations

import math

import numpy as np

from compiler.ir import Graph, Node, Value
from compiler.shape_rules import Step, elementwise_steps

FUSED = {"Conv": ("FusedConv", 3), "Gemm": ("FusedGemm", 3), "MatMul": ("FusedMatMul", 3)}
FLOAT = ("f32", "bf16")


def fuse_epilogue(graph: Graph) -> Graph:
    consumers = graph.consumers()
    position = {}
    for index, node in enumerate(graph.nodes):
        for name in node.outputs:
            position[name] = index
    absorbed: set[int] = set()
    replaced: dict[int, Node] = {}

    def only_reader(name: str) -> Node | None:
        users = consumers.get(name, [])
        return users[0] if len(users) == 1 and name not in graph.outputs else None

    for index, node in enumerate(graph.nodes):
        if node.op not in FUSED or id(node) in absorbed:
            continue
        if graph.values[node.inputs[0]].dtype not in FLOAT:
            continue
        fused_op, own = FUSED[node.op]
        result = node.outputs[0]
        steps: list[Node] = []
        addend = ""
        user = only_reader(result)
        inputs = list(node.inputs) + [""] * (own - len(node.inputs))
        if node.op == "MatMul":
            if min(len(graph.values[name].shape) for name in node.inputs) < 2:
                continue
            bias = _column_bias(graph, result, user)
            if bias is not None:  # MatMul's bias: the Add of a constant vector, one value per column
                inputs[2] = bias
                result = user.outputs[0]
                steps.append(user)
                user = only_reader(result)
        if user is not None and (user.op == "Add" or (user.op == "Sum" and len(user.inputs) == 2)):
            other = user.inputs[1] if user.inputs[0] == result else user.inputs[0]
            value, out = graph.values[other], graph.values[result]
            ready = position.get(other, -1) < index  # a constant, an input, or computed earlier
            if other != result and value.shape == out.shape and value.dtype == out.dtype and ready:
                addend, result = other, user.outputs[0]
                steps.append(user)
                user = only_reader(result)
        activation, params = "", []
        if user is not None and user.op in ("Relu", "Clip"):
            activation = user.op
            if user.op == "Clip":
                params = [float(user.attrs.get("min", -math.inf)), float(user.attrs.get("max", math.inf))]
            result = user.outputs[0]
            steps.append(user)
        if not steps:
            continue
        inputs = inputs[:own] + ([addend] if addend else [])
        replaced[id(node)] = Node(fused_op, inputs, [result],
                                  {**node.attrs, "activation": activation, "activation_params": params}, node.name)
        absorbed.update(id(step) for step in steps)
    if not replaced:
        return graph
    graph.nodes = [replaced.get(id(node), node) for node in graph.nodes if id(node) not in absorbed]
    return graph.prune()


def _column_bias(graph: Graph, result: str, user: Node | None) -> str | None:
    """When `user` adds a constant with one value per column of `result` (shape [N] or
    [1, ..., 1, N]), the name of that constant as a 1-D [N] value; else None."""
    if user is None or user.op != "Add" or result not in user.inputs:
        return None
    other = graph.values[user.inputs[1] if user.inputs[0] == result else user.inputs[0]]
    out = graph.values[result]
    if not other.is_const or other.dtype != out.dtype or not other.shape or other.shape[-1] != out.shape[-1] \
            or any(d != 1 for d in other.shape[:-1]) or len(other.shape) > len(out.shape):
        return None
    name = graph.fresh_name(other.name + ".bias")
    graph.const(name, other.const.reshape(-1))
    return name


QUANTIZED_PRODUCTS = ("QLinearConv", "QLinearMatMul")
CONVOLUTIONS = frozenset({"Conv", "FusedConv", "QLinearConv"})  # products whose channels are axis 1
FLOAT_PRODUCTS = {**{op: fused for op, (fused, _) in FUSED.items()}, **{fused: fused for fused, _ in FUSED.values()}}
EPILOGUE_ATTRS = ("activation", "activation_params", "tail")


def epilogue_operands(node: Node, head: list[str], addend: str | None) -> tuple[list[str], dict]:
    """The inputs and epilogue attributes of a product rebuilt from the Fused* (or plain) `node`:
    `head` (its operands and bias slot), the addend, then `node`'s tail operands when it has a
    tail; without one, absent trailing inputs are dropped."""
    inputs = [*head, addend or ""]
    tail_inputs = node.inputs[4:] if node.attrs.get("tail") else []
    while not tail_inputs and inputs and not inputs[-1]:
        inputs.pop()
    return inputs + tail_inputs, {key: node.attrs[key] for key in EPILOGUE_ATTRS if key in node.attrs}


def gemm_column_bias(graph: Graph, node: Node, channels: int) -> str | None:
    """A Gemm's (or FusedGemm's) beta * C as one f32 value per output column: "" without C; C itself
    when it is f32 [channels] and beta is 1; a new constant for a constant f32 C of one value, or of
    one value per column ([..., channels], every other axis 1). None for any other C (one value per
    row, a matrix, or a run-time C to scale)."""
    bias = node.inputs[2] if len(node.inputs) > 2 and node.inputs[2] else ""
    if not bias:
        return ""
    value, beta = graph.values[bias], float(node.attrs.get("beta", 1.0))
    if value.dtype != "f32":
        return None
    if value.shape == (channels,) and beta == 1.0:
        return bias
    if not value.is_const or value.const.size not in (1, channels) or \
            (value.const.size > 1 and value.shape[-1] != channels):
        return None
    name = graph.fresh_name(bias + ".bias")
    graph.const(name, np.broadcast_to(value.const.reshape(-1) * np.float32(beta), (channels,)).astype(np.float32))
    return name


def fuse_tail(graph: Graph) -> Graph:
    """FusedElementwise nodes that read a matrix product's result become that product's tail.

    The product is an int8 QLinearConv/QLinearMatMul with out_dtype i32, or an f32 Conv, Gemm or
    MatMul (becoming FusedConv/FusedGemm/FusedMatMul; one already fused keeps its bias, addend
    and activation, which come first); it has no tail yet, its result is read only by the
    FusedElementwise and is not a graph output, and the program's result has the product's
    shape. Of several such products the program reads (a block's two branches), the last one
    takes it, and every other input of the program must be ready before that one runs. Each
    other input must be what the tile epilogue can load: one value, one value per output
    channel (axis 1 of a convolution, the last axis of a matrix product), a whole tensor of
    the result's shape, or one [rows, columns] plane of it repeated over the leading axes
    (attention's mask over the heads). Anything else is left as it was. A program with single
    values besides the result, behind Reshapes and Transposes that keep the last axis, first
    moves before them (`_before_layout_ops`)."""
    graph = _side_branches_first(_before_layout_ops(graph))
    consumers = graph.consumers()
    producers = graph.producers()
    position = {id(node): index for index, node in enumerate(graph.nodes)}
    replaced: dict[int, Node] = {}
    removed: set[int] = set()
    for program in graph.nodes:
        if program.op != "FusedElementwise":
            continue
        out_shape = graph.values[program.outputs[0]].shape
        candidates = [producers[name] for name in program.inputs
                      if name in producers and _tail_candidate(graph, producers[name], name, program, consumers)
                      and graph.values[name].shape == out_shape and id(producers[name]) not in replaced]
        if not candidates:
            continue
        product = max(candidates, key=lambda node: position[id(node)])
        result = product.outputs[0]
        others = [name for name in program.inputs if name != result]
        ready = all(name not in producers or position[id(producers[name])] < position[id(product)] for name in others)
        channel_axis = 1 if product.op in CONVOLUTIONS else len(out_shape) - 1
        if not ready or not all(_tail_operand(graph.values[name].shape, out_shape, channel_axis) for name in others):
            continue
        steps = tail_steps(program, result, others)
        op, own = (product.op, 3) if product.op in QUANTIZED_PRODUCTS else (FLOAT_PRODUCTS[product.op], 4)
        attrs = dict(product.attrs)
        if op != product.op:  # a plain product becomes its Fused* form, with an empty epilogue
            attrs.update(activation="", activation_params=[])
        inputs = list(product.inputs) + [""] * (own - len(product.inputs))
        replaced[id(product)] = Node(op, inputs + others, list(program.outputs), {**attrs, "tail": steps},
                                     product.name)
        removed.add(id(program))
    if not replaced:
        return graph
    graph.nodes = [replaced.get(id(node), node) for node in graph.nodes if id(node) not in removed]
    return graph.prune()


def fuse_norm_tail(graph: Graph) -> Graph:
    """A LayerNormalization (only its y used) whose y only an element-wise node or program reads,
    with constant single values as its other operands (the quantization for the next int8
    product), becomes a FusedLayerNorm with that program as its `tail`, run on each row tile
    before it is stored: y never reaches DRAM in float. Invariant: node outputs keep their
    names, dtypes and shapes."""
    consumers = graph.consumers()
    replaced: dict[int, Node] = {}
    removed: set[int] = set()
    for node in graph.nodes:
        if node.op != "LayerNormalization" or any(name and (consumers.get(name) or name in graph.outputs)
                                                  for name in node.outputs[1:]):
            continue
        y = node.outputs[0]
        users = consumers.get(y, [])
        if len(users) != 1 or y in graph.outputs:
            continue
        program = _as_program(graph, users[0])
        if program is None or program.inputs.count(y) != 1 \
                or graph.values[program.outputs[0]].shape != graph.values[y].shape:
            continue
        others = [name for name in program.inputs if name != y]
        if not all(graph.values[name].is_const and graph.values[name].size == 1 for name in others):
            continue
        steps = tail_steps(program, y, others)
        inputs = list(node.inputs) + [""] * (3 - len(node.inputs))
        attrs = {"axis": node.attrs["axis"], "epsilon": node.attrs.get("epsilon", 1e-5), "tail": steps}
        replaced[id(node)] = Node("FusedLayerNorm", inputs + others, list(program.outputs), attrs, node.name)
        removed.add(id(users[0]))
    if not replaced:
        return graph
    graph.nodes = [replaced.get(id(node), node) for node in graph.nodes if id(node) not in removed]
    return graph.prune()


def fuse_norm_prologue(graph: Graph) -> Graph:
    """A layer norm over the last axis (LayerNormalization, only its y used, or FusedLayerNorm) whose X
    an element-wise node or program makes, read by nothing else, takes that program as its `prologue`:
    X is computed on each row tile as the norm loads it and never reaches DRAM (a transformer's
    embeddings: the sum of the token, position and segment rows). An f32 operand of the program that a
    Gather of rows (axis 0) from a constant 2-D table makes, with the indices X's leading axes and
    read by nothing else, becomes a Gather step: each tile's rows are fetched by their indices
    straight into the norm's tile. Invariant: node outputs keep their names, dtypes and shapes."""
    # Imported here: fuse_elementwise reaches the code generator, which imports this module.
    from compiler.passes.fuse_elementwise import INTERMEDIATE_DTYPES

    consumers = graph.consumers()
    producers = graph.producers()
    replaced: dict[int, Node] = {}
    removed: set[int] = set()

    def only_reader(name: str, node: Node) -> bool:
        return name not in graph.outputs and [id(user) for user in consumers.get(name, [])] == [id(node)]

    for node in graph.nodes:
        if node.op not in ("LayerNormalization", "FusedLayerNorm") or node.attrs.get("prologue") \
                or any(name and (consumers.get(name) or name in graph.outputs) for name in node.outputs[1:]):
            continue
        x = graph.values[node.inputs[0]]
        producer = producers.get(x.name)
        if node.attrs["axis"] % len(x.shape) != len(x.shape) - 1 or producer is None \
                or not only_reader(x.name, node) or id(producer) in removed:
            continue
        program = _as_program(graph, producer)
        if program is None or x.dtype != "f32":
            continue
        inputs: list[str] = []
        gathers: list[Step] = []
        absorbed: list[Node] = []
        operand = {}  # the program's x<i> -> the prologue's operand
        for i, name in enumerate(program.inputs):
            gather = producers.get(name)
            if gather is not None and gather.op == "Gather" and gather.attrs.get("axis", 0) == 0 \
                    and only_reader(name, producer) and id(gather) not in removed:
                table, indices = (graph.values[n] for n in gather.inputs)
                if table.is_const and table.dtype == "f32" and len(table.shape) == 2 \
                        and indices.shape + table.shape[1:] == x.shape:
                    inputs += gather.inputs
                    operand[f"x{i}"] = f"s{len(gathers)}"
                    gathers.append(Step("Gather", (f"x{len(inputs) - 2}", f"x{len(inputs) - 1}"), {"axis": 0}))
                    absorbed.append(gather)
                    continue
            if graph.values[name].dtype not in INTERMEDIATE_DTYPES:  # the tile holds 4-byte elements at most
                break
            inputs.append(name)
            operand[f"x{i}"] = f"x{len(inputs) - 1}"
        else:
            shifted = [Step(step.op, tuple(operand.get(o) or (f"s{int(o[1:]) + len(gathers)}" if o else "")
                                           for o in step.operands), step.attrs)
                       for step in elementwise_steps(program.attrs)]
            own = list(node.inputs[1:3]) + [""] * (3 - len(node.inputs[:3]))
            attrs = {"axis": node.attrs["axis"], "epsilon": node.attrs.get("epsilon", 1e-5),
                     "tail": node.attrs.get("tail", []), "prologue": [step.text() for step in gathers + shifted]}
            replaced[id(node)] = Node("FusedLayerNorm", inputs + own + list(node.inputs[3:]), list(node.outputs[:1]),
                                      attrs, node.name)
            removed |= {id(producer), *(id(gather) for gather in absorbed)}
    if not replaced:
        return graph
    graph.nodes = [replaced.get(id(node), node) for node in graph.nodes if id(node) not in removed]
    return graph.prune()


def fuse_softmax(graph: Graph) -> Graph:
    """A float MatMul/FusedMatMul with a run-time right operand and more than one row (attention's
    scores) whose result only a Softmax along the last axis reads takes it (softmax=1): the
    kernel finishes whole result rows and runs the softmax on them on chip, after the bias,
    addend, activation and tail, so the scores never reach DRAM. The result must not be a
    graph output. Invariant: node outputs keep their names, dtypes and shapes."""
    consumers = graph.consumers()
    absorbed: set[int] = set()
    nodes: list[Node] = []
    for node in graph.nodes:
        if id(node) in absorbed:
            continue
        result = node.outputs[0] if node.outputs else ""
        users = consumers.get(result, [])
        if (node.op in ("MatMul", "FusedMatMul") and not node.attrs.get("softmax") and len(users) == 1
                and users[0].op == "Softmax" and result not in graph.outputs and graph.values[result].dtype == "f32"
                and graph.values[node.inputs[0]].dtype in FLOAT and not graph.values[node.inputs[1]].is_const):
            shape = graph.values[result].shape
            if len(shape) >= 2 and _several_rows(graph, node) and users[0].attrs["axis"] % len(shape) == len(shape) - 1:
                attrs = dict(node.attrs) if node.op == "FusedMatMul" else {"activation": "", "activation_params": []}
                node = Node("FusedMatMul", list(node.inputs), list(users[0].outputs), {**attrs, "softmax": 1},
                            node.name)
                absorbed.add(id(users[0]))
        nodes.append(node)
    graph.nodes = nodes
    return graph.prune()


def tail_steps(program: Node, result: str, others: list[str]) -> list[str]:
    """A FusedElementwise program's steps as a tail: operand x0 is `result` (what the op it joins
    computes), x1, x2, ... are `others`, the program's other inputs in that order."""
    renumber = {f"x{i}": ("x0" if name == result else f"x{1 + others.index(name)}")
                for i, name in enumerate(program.inputs)}
    return [Step(step.op, tuple(renumber.get(o, o) for o in step.operands), step.attrs).text()
            for step in map(Step.parse, program.attrs["steps"])]


def _side_branches_first(graph: Graph) -> Graph:
    """Of the products a FusedElementwise program joins (a ResNet block's last convolution and its
    projection shortcut), the one whose input is made last (the block's main branch) is to take the
    program as its tail (fuse_tail: the last in node order): each other one moves to just before the
    node that makes that input, where all its own inputs are ready. The main branch's convolutions then
    follow one another, the join at their end, and can run as one chain (compiler/codegen/kernels/
    conv_chain.py); the values do not change (the join adds the same two results)."""
    consumers, producers = graph.consumers(), graph.producers()
    for program in [node for node in graph.nodes if node.op == "FusedElementwise"]:
        position = {id(node): index for index, node in enumerate(graph.nodes)}
        candidates = [producers[name] for name in program.inputs
                      if name in producers and _tail_candidate(graph, producers[name], name, program, consumers)]
        if len(candidates) < 2:
            continue
        main = max(candidates, key=lambda node: position.get(id(producers.get(node.inputs[0])), -1))
        feeder = producers.get(main.inputs[0])
        if feeder is None:
            continue
        moved = [node for node in candidates if node is not main and position[id(node)] > position[id(feeder)]
                 and all(name not in producers or position[id(producers[name])] < position[id(feeder)]
                         for name in node.inputs if name)]
        if not moved:
            continue
        rest = [node for node in graph.nodes if all(node is not other for other in moved)]
        at = next(index for index, node in enumerate(rest) if node is feeder)
        graph.nodes = rest[:at] + moved + rest[at:]
    return graph


def _before_layout_ops(graph: Graph) -> Graph:
    """An element-wise node (or FusedElementwise) whose one non-scalar input is a product's result
    moved by Reshapes and Transposes that keep the last axis (each value read only by the next
    op) runs before them instead, on the result as the product lays it out, so that it can
    become the product's tail: attention's output, its heads put back between the tokens, is
    quantized for the next int8 product. An element-wise op with single-value operands commutes
    with moving elements, so the values do not change."""
    consumers, producers = graph.consumers(), graph.producers()
    moved: dict[int, list[Node]] = {}  # id(node) -> the nodes that replace it
    for node in graph.nodes:
        if _as_program(graph, node) is None:
            continue
        wide = [name for name in node.inputs if name and graph.values[name].size != 1]
        if len(wide) != 1 or node.inputs.count(wide[0]) != 1:
            continue
        value, chain = wide[0], []
        while (value in producers and value not in graph.outputs and len(consumers.get(value, [])) == 1
               and producers[value].op in ("Reshape", "Transpose") and len(producers[value].inputs) == 1
               and (producers[value].op == "Reshape" or producers[value].attrs["perm"][-1] == len(
                   graph.values[value].shape) - 1)):
            chain.append(producers[value])
            value = producers[value].inputs[0]
        product = producers.get(value)
        if not chain or product is None or not _tail_candidate(graph, product, value, chain[-1], consumers):
            continue
        dtype = graph.values[node.outputs[0]].dtype
        early = graph.add_value(Value(graph.fresh_name(node.outputs[0] + ".early"), dtype, graph.values[value].shape))
        nodes = [_as_program(graph, Node(node.op, [value if name == wide[0] else name for name in node.inputs],
                                         [early.name], dict(node.attrs), node.name))]
        for op in reversed(chain):
            last = op is chain[0]
            out = node.outputs[0] if last else graph.add_value(
                Value(graph.fresh_name(op.outputs[0] + ".early"), dtype, graph.values[op.outputs[0]].shape)).name
            nodes.append(Node(op.op, [nodes[-1].outputs[0]], [out], dict(op.attrs), op.name))
        moved[id(node)] = nodes
    if not moved:
        return graph
    graph.nodes = [new for node in graph.nodes for new in moved.get(id(node), [node])]
    return graph.prune()


def _as_program(graph: Graph, node: Node) -> Node | None:
    """The node as a FusedElementwise program: itself, or one element-wise node made a program of one
    step; None when it is neither."""
    # Imported here: fuse_elementwise reaches the code generator, which imports this module.
    from compiler.passes.fuse_elementwise import fused_node, fusible

    if node.op == "FusedElementwise":
        return node
    return fused_node(graph, [node]) if fusible(graph, node) else None


def _tail_candidate(graph: Graph, node: Node, result: str, program: Node, consumers) -> bool:
    if node.attrs.get("tail") or result in graph.outputs \
            or [id(user) for user in consumers.get(result, [])] != [id(program)]:
        return False
    if node.op in QUANTIZED_PRODUCTS:
        return node.attrs.get("out_dtype") == "i32"
    return (node.op in FLOAT_PRODUCTS and graph.values[result].dtype == "f32"
            and (graph.values[node.inputs[1]].is_const or _several_rows(graph, node)))


def _several_rows(graph: Graph, node: Node) -> bool:
    """Whether a matrix product's left operand has more than one row. A float product with a run-time
    right operand (attention's scores and values) takes a tail or a softmax only then: a decode
    step's one-row products read their operands in place, where per-tile tail operands cost more
    than the round trip they save (GPT-2 decode measured slower). A vector has one row."""
    shape = graph.values[node.inputs[0]].shape
    return len(shape) >= 2 and shape[-2] > 1


def _tail_operand(shape: tuple[int, ...], out_shape: tuple[int, ...], channel_axis: int) -> bool:
    """Whether the tile epilogue can load an operand of `shape` broadcast to `out_shape`."""
    if shape == out_shape or math.prod(shape) == 1:
        return True
    padded = (1,) * (len(out_shape) - len(shape)) + tuple(shape)
    if len(padded) != len(out_shape):
        return False
    if all(n == 1 for axis, n in enumerate(padded) if axis != channel_axis) \
            and padded[channel_axis] == out_shape[channel_axis]:
        return True
    # Whole [rows, columns] planes repeated over leading axes (attention's mask over heads): each
    # tile's block is runs of whole rows, as for a tensor of the result's shape.
    return len(out_shape) >= 2 and padded[-2:] == tuple(out_shape[-2:]) \
        and all(n in (1, m) for n, m in zip(padded[:-2], out_shape[:-2], strict=True))
