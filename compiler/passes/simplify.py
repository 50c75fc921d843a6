"""Simplifications that change no result: drop identities, fold or decompose inference BatchNorm."""

from __future__ import annotations

import numpy as np

from compiler.ir import Graph, Node, Value


def remove_identities(graph: Graph) -> Graph:
    """Identity(x) -> x: every use of the output reads the input instead.

    An Identity whose output is a graph output is kept (the output needs its own name)."""
    rename: dict[str, str] = {}
    kept = []
    for node in graph.nodes:
        node.inputs = [rename.get(name, name) for name in node.inputs]
        if node.op == "Identity" and node.outputs[0] not in graph.outputs:
            rename[node.outputs[0]] = node.inputs[0]
            continue
        kept.append(node)
    graph.nodes = kept
    return graph.prune()


def transpose_to_reshape(graph: Graph) -> Graph:
    """Transpose(x) {perm} whose perm keeps every axis longer than 1 in its order only moves size-1 axes:
    the data is the same sequence, so it becomes Reshape(x) {shape = the output's shape}, which the code
    generator reads in place (a decode step's [1, heads, d] -> [heads, 1, d] costs no copy).

    Invariant: node outputs keep their names, dtypes and shapes."""
    for index, node in enumerate(graph.nodes):
        if node.op != "Transpose":
            continue
        shape = graph.values[node.inputs[0]].shape
        moved = [axis for axis in node.attrs["perm"] if shape[axis] != 1]
        if moved == sorted(moved):
            output = graph.values[node.outputs[0]]
            graph.nodes[index] = Node("Reshape", [node.inputs[0]], node.outputs, {"shape": list(output.shape)},
                                      node.name)
    return graph


def batchnorm_folded_into_conv(weight: np.ndarray, bias: np.ndarray | None, scale: np.ndarray, shift: np.ndarray,
                               mean: np.ndarray, variance: np.ndarray, epsilon: float) -> tuple[np.ndarray, np.ndarray]:
    """The weight and bias of Conv(W, b) followed by BatchNormalization(scale, shift, mean, variance):
    W * s and (b - mean) * s + shift with s = scale / sqrt(variance + epsilon), computed in float64
    and returned in W's dtype."""
    factor = scale.astype(np.float64) / np.sqrt(variance.astype(np.float64) + epsilon)
    new_weight = weight.astype(np.float64) * factor.reshape(-1, *([1] * (weight.ndim - 1)))
    old_bias = bias.astype(np.float64) if bias is not None else np.zeros_like(factor)
    new_bias = (old_bias - mean.astype(np.float64)) * factor + shift.astype(np.float64)
    return new_weight.astype(weight.dtype), new_bias.astype(weight.dtype)


def fold_batchnorm_into_conv(graph: Graph) -> Graph:
    """Conv(x, W, b) -> BatchNormalization(scale, bias, mean, var) becomes one Conv with
    W' = W * s and b' = (b - mean) * s + bias, s = scale / sqrt(var + epsilon).

    Rule applies when the Conv's output feeds only the BatchNormalization, W, b and all
    BatchNormalization parameters are constants; otherwise nothing changes."""
    consumers = graph.consumers()
    producers = graph.producers()
    removed: set[int] = set()
    for node in graph.nodes:
        if node.op != "BatchNormalization" or len([o for o in node.outputs if o]) != 1:
            continue
        conv = producers.get(node.inputs[0])
        if conv is None or conv.op != "Conv" or len(consumers.get(conv.outputs[0], [])) != 1 \
                or conv.outputs[0] in graph.outputs:
            continue
        params = [graph.values[name] for name in node.inputs[1:5]]
        weight = graph.values[conv.inputs[1]]
        bias = graph.values[conv.inputs[2]] if len(conv.inputs) > 2 and conv.inputs[2] else None
        if not all(v.is_const for v in params) or not weight.is_const or (bias is not None and not bias.is_const):
            continue
        new_weight, new_bias = batchnorm_folded_into_conv(
            weight.const, bias.const if bias is not None else None, *(v.const for v in params),
            float(node.attrs.get("epsilon", 1e-5)))
        weight_name = graph.fresh_name(conv.inputs[1] + ".bn")
        bias_name = graph.fresh_name(node.outputs[0] + ".bias")
        graph.const(weight_name, new_weight)
        graph.const(bias_name, new_bias)
        conv.inputs = [conv.inputs[0], weight_name, bias_name]
        graph.values.pop(conv.outputs[0], None)
        conv.outputs = [node.outputs[0]]
        removed.add(id(node))
    return _without(graph, removed)


def fold_scale_into_quantize(graph: Graph) -> Graph:
    """Mul(x, c) -> QuantizeLinear(., s, zp) becomes QuantizeLinear(x, s / c, zp) when c is a
    positive power of two (an fp32 scalar constant), s a constant per-tensor fp32 scale, and the
    Mul's result is read by nothing else and has x's shape.

    Scaling by a power of two is exact, so (x * c) / s and x / (s / c) are one rounding of the
    same quotient: no quantized value changes (unless x * c over- or underflows fp32, which
    shows only with scales beyond 1e36 or below 1e-36). The vector unit saves a pass per
    element: in MiniLM's GELU, 0.5 * x * (1 + erf(x / sqrt(2))) quantized for the next product,
    the 0.5."""
    consumers = graph.consumers()
    producers = graph.producers()
    removed: set[int] = set()
    for node in graph.nodes:
        if node.op != "QuantizeLinear":
            continue
        mul = producers.get(node.inputs[0])
        scale = graph.values[node.inputs[1]]
        if mul is None or mul.op != "Mul" or len(consumers.get(mul.outputs[0], [])) != 1 \
                or mul.outputs[0] in graph.outputs or not scale.is_const or scale.const.size != 1 \
                or scale.dtype != "f32":
            continue
        factor = next((i for i, name in enumerate(mul.inputs) if _power_of_two(graph.values[name])), None)
        if factor is None:
            continue
        x = graph.values[mul.inputs[1 - factor]]
        if x.dtype != "f32" or x.shape != graph.values[mul.outputs[0]].shape:
            continue
        folded = graph.fresh_name(node.inputs[1] + ".folded")
        graph.const(folded, scale.const / graph.values[mul.inputs[factor]].const.reshape(scale.const.shape))
        node.inputs = [x.name, folded, *node.inputs[2:]]
        removed.add(id(mul))
    return _without(graph, removed)


def _without(graph: Graph, removed: set[int]) -> Graph:
    """The graph without the nodes whose ids are in `removed`, and without the values left unused."""
    if removed:
        graph.nodes = [n for n in graph.nodes if id(n) not in removed]
        graph.prune()
    return graph


def _power_of_two(value: Value) -> bool:
    """A positive fp32 scalar constant 2^k (a normal number)."""
    if not value.is_const or value.dtype != "f32" or value.const.size != 1:
        return False
    number = float(value.const.reshape(()))
    mantissa, _ = np.frexp(number)
    return number > 0 and mantissa == 0.5 and np.isfinite(number) and number >= np.finfo(np.float32).tiny


def decompose_batchnorm(graph: Graph) -> Graph:
    """BatchNormalization(x, scale, bias, mean, var) with constant parameters becomes
    Mul(x, s) then Add(., t) with s = scale / sqrt(var + epsilon), t = bias - mean * s,
    shaped [C, 1, ..., 1] to broadcast over the channel axis (axis 1).

    Runs after fold_batchnorm_into_conv, for the normalisations that follow no Conv
    (DenseNet's pre-activation blocks); a BatchNormalization with run-time parameters is
    left for the code generator to refuse."""
    nodes = []
    for node in graph.nodes:
        params = [graph.values.get(name) for name in node.inputs[1:5]]
        if node.op != "BatchNormalization" or not all(p is not None and p.is_const for p in params):
            nodes.append(node)
            continue
        x = graph.values[node.inputs[0]]
        scale, shift, mean, variance = (p.const.astype(np.float64) for p in params)
        factor = scale / np.sqrt(variance + float(node.attrs.get("epsilon", 1e-5)))
        offset = shift - mean * factor
        broadcast = (-1,) + (1,) * (len(x.shape) - 2)
        dtype = np.float32 if x.dtype == "f32" else params[0].const.dtype
        factor_name = graph.fresh_name(node.outputs[0] + ".scale")
        graph.const(factor_name, factor.reshape(broadcast).astype(dtype))
        offset_name = graph.fresh_name(node.outputs[0] + ".shift")
        graph.const(offset_name, offset.reshape(broadcast).astype(dtype))
        scaled = graph.fresh_name(node.outputs[0] + ".scaled")
        graph.add_value(Value(scaled, x.dtype, x.shape))
        nodes.append(Node("Mul", [node.inputs[0], factor_name], [scaled], {}, node.name + "/mul" if node.name else ""))
        nodes.append(Node("Add", [scaled, offset_name], [node.outputs[0]], {}, node.name))
    graph.nodes = nodes
    return graph.prune()
