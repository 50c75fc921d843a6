"""Compile-time evaluation of ONNX nodes whose inputs are all constants.

onnx's reference evaluator runs the single node; its result becomes an IR constant.
This is compilation (shape arithmetic, ConstantOfShape weights, Constant nodes), not a
fallback at run time. Evaluators are cached per op, attributes, opset and input types,
because models repeat the same small folds hundreds of times.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx.reference import ReferenceEvaluator

NONDETERMINISTIC = frozenset({"RandomNormal", "RandomNormalLike", "RandomUniform", "RandomUniformLike",
                              "Multinomial", "Bernoulli"})

# DequantizeLinear of a constant stays a node: its integers and scale are what the integer
# kernels take (compiler/passes/quantized.py folds the ones no fusion uses).
KEPT_QUANTIZED = frozenset({"DequantizeLinear"})

_EVALUATORS: dict[tuple, ReferenceEvaluator] = {}
_CACHE_LIMIT = 512


def can_fold(node: onnx.NodeProto) -> bool:
    """Deterministic default-domain ops without subgraphs can be evaluated once, at compile time."""
    return (node.domain in ("", "ai.onnx") and node.op_type not in NONDETERMINISTIC | KEPT_QUANTIZED
            and not any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for a in node.attribute))


def fold_node(node: onnx.NodeProto, inputs: list[np.ndarray | None], opset: int) -> list[np.ndarray | None]:
    """Evaluate `node` on constant `inputs` (None = absent); one array per output (None for unnamed ones)."""
    types = tuple((str(a.dtype), a.ndim) if a is not None else None for a in inputs)
    key = (node.op_type, opset, types, len(node.output),
           tuple(a.SerializeToString(deterministic=True) for a in node.attribute))
    evaluator = _EVALUATORS.get(key)
    if evaluator is None:
        evaluator = _evaluator(node, inputs, opset)
        if len(_EVALUATORS) >= _CACHE_LIMIT:
            _EVALUATORS.clear()
        _EVALUATORS[key] = evaluator
    feeds = {f"i{i}": a for i, a in enumerate(inputs) if a is not None}
    results = evaluator.run(None, feeds)
    return [np.asarray(r) if name else None for name, r in zip(node.output, results, strict=False)]


def _evaluator(node: onnx.NodeProto, inputs: list[np.ndarray | None], opset: int) -> ReferenceEvaluator:
    """A one-node graph with inputs i0, i1, ... and outputs o0, o1, ... (every output, so results line up)."""
    renamed = onnx.NodeProto()
    renamed.CopyFrom(node)
    renamed.ClearField("input")
    renamed.ClearField("output")
    renamed.input.extend(f"i{i}" if a is not None else "" for i, a in enumerate(inputs))
    renamed.output.extend(f"o{i}" for i in range(len(node.output)))
    graph_inputs = [onnx.helper.make_tensor_value_info(f"i{i}", onnx.helper.np_dtype_to_tensor_dtype(a.dtype), None)
                    for i, a in enumerate(inputs) if a is not None]
    graph_outputs = [onnx.helper.make_empty_tensor_value_info(f"o{i}") for i in range(len(node.output))]
    graph = onnx.helper.make_graph([renamed], "fold", graph_inputs, graph_outputs)
    return ReferenceEvaluator(graph, opsets={"": opset})
