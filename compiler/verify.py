"""The IR verifier: `verify(graph)` raises `VerifyError` on the first broken invariant.

It checks, in this order: graph inputs and outputs are defined; constants hold data of
their declared dtype and shape; every node's op is in the op table with the right
number of inputs and outputs and known, present attributes; the node graph has no
cycle; nodes are in topological order with single assignment (every value defined
once, before its first use); and each output's dtype and shape are what the op's
shape rule gives. Messages name the node (`node 'conv1' (Conv)`) and the problem.
Tests run it after every pass.
"""

from __future__ import annotations

import networkx as nx

from compiler.ir import DTYPES, Graph, Node, numpy_dtype
from compiler.ops import OPS, REQUIRED


class VerifyError(ValueError):
    """The graph breaks an IR invariant; the message names the node and the problem."""


def _where(node: Node, index: int) -> str:
    if node.name:
        return f"node {node.name!r} ({node.op})"
    first = next((o for o in node.outputs if o), None)
    return f"node #{index} ({node.op}" + (f" -> %{first})" if first else ")")


def _type(dtype: str, shape) -> str:
    return f"{dtype}[{', '.join(str(d) for d in shape)}]"


def verify(graph: Graph) -> None:
    """Raise VerifyError if `graph` breaks an IR invariant; return None if it is well formed."""
    _check_boundary(graph)
    for index, node in enumerate(graph.nodes):
        _check_signature(node, index)
    _check_acyclic(graph)
    _check_order(graph)
    for index, node in enumerate(graph.nodes):
        _check_types(graph, node, index)


def _check_boundary(graph: Graph) -> None:
    for name in graph.inputs:
        if name not in graph.values:
            raise VerifyError(f"graph input %{name} has no value")
        if graph.values[name].is_const:
            raise VerifyError(f"graph input %{name} is a constant")
    if len(set(graph.inputs)) != len(graph.inputs):
        raise VerifyError("a graph input is listed twice")
    produced = {o for node in graph.nodes for o in node.outputs if o}
    for name in graph.outputs:
        value = graph.values.get(name)
        if value is None or not (value.is_const or name in produced or name in graph.inputs):
            raise VerifyError(f"graph output %{name} is never defined")
    for value in graph.values.values():
        if value.dtype not in DTYPES:
            raise VerifyError(f"value %{value.name} has unknown dtype {value.dtype!r}")
        if value.is_const:
            data = value.const
            if tuple(data.shape) != tuple(value.shape) or data.dtype != numpy_dtype(value.dtype):
                raise VerifyError(f"constant %{value.name} is declared {_type(value.dtype, value.shape)} but holds "
                                  f"{data.dtype}{list(data.shape)}")


def _check_signature(node: Node, index: int) -> None:
    where = _where(node, index)
    definition = OPS.get(node.op)
    if definition is None:
        raise VerifyError(f"{where}: unknown op {node.op!r}")
    low, high = definition.inputs
    if len(node.inputs) < low or (high is not None and len(node.inputs) > high):
        expected = f"{low}" if low == high else f"{low} to {high}" if high is not None else f"{low} or more"
        raise VerifyError(f"{where}: {len(node.inputs)} inputs, expected {expected}")
    missing = [i for i in range(low) if not node.inputs[i]]
    if missing:
        raise VerifyError(f"{where}: required input {missing[0]} is absent")
    low, high = definition.outputs
    if not low <= len(node.outputs) <= high:
        expected = f"{low}" if low == high else f"{low} to {high}"
        raise VerifyError(f"{where}: {len(node.outputs)} outputs, expected {expected}")
    if not any(node.outputs):
        raise VerifyError(f"{where}: no output is named")
    for name in node.attrs:
        if name not in definition.attrs:
            known = ", ".join(definition.attrs) or "none"
            raise VerifyError(f"{where}: unknown attribute {name!r} (the op has {known})")
    for name, default in definition.attrs.items():
        if default is REQUIRED and name not in node.attrs:
            raise VerifyError(f"{where}: missing required attribute {name!r}")


def _check_acyclic(graph: Graph) -> None:
    producers = {o: i for i, node in enumerate(graph.nodes) for o in node.outputs if o}
    edges = nx.DiGraph()
    edges.add_nodes_from(range(len(graph.nodes)))
    for i, node in enumerate(graph.nodes):
        edges.add_edges_from((producers[name], i) for name in node.inputs if name in producers)
    if not nx.is_directed_acyclic_graph(edges):
        cycle = [i for i, _ in nx.find_cycle(edges)]
        path = " -> ".join(_where(graph.nodes[i], i) for i in cycle + cycle[:1])
        raise VerifyError(f"cycle: {path}")


def _check_order(graph: Graph) -> None:
    defined = set(graph.inputs) | {v.name for v in graph.values.values() if v.is_const}
    later = {o: i for i, node in enumerate(graph.nodes) for o in node.outputs if o}
    for index, node in enumerate(graph.nodes):
        where = _where(node, index)
        for name in node.inputs:
            if not name or name in defined:
                continue
            if name in later and later[name] > index:
                raise VerifyError(f"{where}: %{name} is used before it is defined")
            raise VerifyError(f"{where}: %{name} is never defined")
        for name in node.outputs:
            if not name:
                continue
            if name in defined:
                raise VerifyError(f"{where}: %{name} is defined twice (single assignment)")
            if name not in graph.values:
                raise VerifyError(f"{where}: output %{name} has no value (dtype and shape)")
            defined.add(name)


def _check_types(graph: Graph, node: Node, index: int) -> None:
    where = _where(node, index)
    inputs = [graph.values[name] if name else None for name in node.inputs]
    try:
        expected = OPS[node.op].infer(node, inputs)
    except Exception as error:  # a rule rejecting its inputs, or attributes of the wrong type
        raise VerifyError(f"{where}: {error}") from error
    if len(expected) < len(node.outputs):
        raise VerifyError(f"{where}: {len(node.outputs)} outputs, the rule gives {len(expected)}")
    for name, (dtype, shape) in zip(node.outputs, expected, strict=False):
        if not name:
            continue
        value = graph.values[name]
        if value.dtype != dtype or tuple(value.shape) != tuple(shape):
            raise VerifyError(f"{where}: output %{name} is {_type(value.dtype, value.shape)} but the {node.op} rule "
                              f"gives {_type(dtype, shape)}")
