"""ONNX -> Graph IR: `import_model`, `unsupported_ops`, `supported_ops`.

import_model, step by step:

1. load the model (path, bytes or ModelProto); run onnx's checker; inline the model's
   local functions;
2. check every live op is supported (the same scan as `unsupported_ops`);
3. bind dynamic input dimensions with `input_shapes` (a symbol bound on one input
   binds it on the others) and run onnx's strict shape inference on the result;
4. walk the live nodes in order: initializers are constants; Shape and Size become
   constants from the static shapes; a node whose inputs are all constants is folded by
   onnx's reference evaluator; every other node is normalised (normalise_*.py) into its
   IR form, and each output's dtype and shape, from the op table's rule, is checked
   against onnx's where onnx's is static;
5. drop what no output needs, refuse data types the accelerator lacks, verify.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import NamedTuple

import numpy as np
import onnx
import onnx.external_data_helper
import onnx.inliner

from compiler.errors import ModelError, UnsupportedOpError, UnsupportedTypeError
from compiler.frontend.context import SUPPORTED_DTYPES, NodeContext, array_dtype, ir_dtype, known_dtype, onnx_type_name
from compiler.frontend.decompose_nn import NORMALISERS as _LOSSES_AND_NORMS
from compiler.frontend.decompose_recurrent import NORMALISERS as _RECURRENT
from compiler.frontend.decompose_tensor import NORMALISERS as _ELEMENTWISE_AND_MOVEMENT
from compiler.frontend.decompose_transformer import NORMALISERS as _TRANSFORMER
from compiler.frontend.folding import can_fold, fold_node
from compiler.frontend.input_shapes import dims_text, resolve_input_shapes, set_input_shapes
from compiler.frontend.normalise_nn import NORMALISERS as _NN
from compiler.frontend.normalise_tensor import NORMALISERS as _TENSOR
from compiler.ir import Graph, Node, Value, numpy_dtype
from compiler.verify import verify

# Ops expressed in other IR ops (each of which has a kernel), and all the importer accepts.
DECOMPOSED = {**_ELEMENTWISE_AND_MOVEMENT, **_LOSSES_AND_NORMS, **_TRANSFORMER, **_RECURRENT}
NORMALISERS = {**_TENSOR, **_NN, **DECOMPOSED}
# Always compile-time constants, given static shapes.
SHAPE_OPS = frozenset({"Shape", "Size"})
# Supported only when their inputs are constants (their output shapes depend on data).
FOLD_ONLY = frozenset({"Constant", "ConstantOfShape", "Range", "NonZero", "EyeLike", "HannWindow", "HammingWindow",
                       "BlackmanWindow"})
# Inputs whose data a fold does not need, only their dtype or shape (which are static).
TYPE_ONLY_INPUTS = {"CastLike": 1, "EyeLike": 0}

ModelSource = str | Path | bytes | onnx.ModelProto


def supported_ops() -> list[str]:
    """The ONNX op types (default domain) the importer accepts; the code generator may still refuse some uses."""
    return sorted(set(NORMALISERS) | SHAPE_OPS | FOLD_ONLY)


def unsupported_ops(model: ModelSource) -> list[tuple[str, str, int]]:
    """(op_type, node_name, opset) of every live node acc cannot import, without importing anything.

    A node counts as supported if its op has a normaliser, or if it will be folded at
    compile time (all inputs constant, or Shape/Size). Ops of other domains are written
    `domain.OpType`, with that domain's opset."""
    model, source, owned, _ = load_onnx(model)
    model, _ = _inline_functions(model, source, owned)
    return [problem[:3] for problem in _scan(model.graph, _opsets(model))]


def import_model(model: ModelSource, input_shapes: Mapping[str, Iterable[int]] | None = None) -> Graph:
    """The model as a verified IR graph with static shapes; see the module docstring for the steps."""
    model, source, owned, data = load_onnx(model)
    try:
        onnx.checker.check_model(data if data is not None else model)
    except Exception as error:  # ValidationError, or protobuf trouble on a damaged model
        raise ModelError(f"{source}: invalid ONNX model: {_first_line(error)}") from None
    _check_names(model.graph, source)
    model, owned = _inline_functions(model, source, owned)
    opsets = _opsets(model)
    problems = _scan(model.graph, opsets)
    if problems:
        raise UnsupportedOpError(*problems[0])
    shapes = resolve_input_shapes(model.graph, dict(input_shapes or {}))
    if shapes:
        if not owned:
            model = _copy(model)
        set_input_shapes(model.graph, shapes)
    _guard_shape_inference(model.graph, source)
    try:
        inferred = onnx.shape_inference.infer_shapes(without_large_initializers(model), check_type=True,
                                                     strict_mode=True, data_prop=True)
    except Exception as error:  # InferenceError and friends
        raise ModelError(f"{source}: shape inference failed: {_first_line(error)}") from None
    return Importer(model, _value_types(inferred.graph), opsets[""]).run()


# Loading ------------------------------------------------------------------------------------------
class _Loaded(NamedTuple):
    model: onnx.ModelProto
    source: str  # how messages name it
    owned: bool  # ours to change (not the caller's ModelProto)
    data: bytes | None  # the serialized model when we have it, so the checker need not serialize it again


def load_onnx(model: ModelSource) -> _Loaded:
    """The model (path, bytes or ModelProto) loaded, external data included; a ModelError if it is not one."""
    if isinstance(model, onnx.ModelProto):
        return _Loaded(model, f"model {model.graph.name or '(unnamed)'}", False, None)
    source = "model" if isinstance(model, bytes) else str(model)
    if not isinstance(model, bytes) and not Path(model).is_file():
        raise ModelError(f"{source}: {'not a file' if Path(model).exists() else 'no such file'}")
    try:
        data = model if isinstance(model, bytes) else Path(model).read_bytes()
        loaded = onnx.load_model_from_string(data)
        if not isinstance(model, bytes) and any(t.data_location == onnx.TensorProto.EXTERNAL
                                                for t in loaded.graph.initializer):
            onnx.external_data_helper.load_external_data_for_model(loaded, str(Path(model).parent))
            data = None
    except Exception as error:  # protobuf DecodeError, missing external data, ...
        raise ModelError(f"{source}: not a readable ONNX model: {_first_line(error)}") from None
    if not loaded.HasField("graph"):
        raise ModelError(f"{source}: not an ONNX model (no graph)")
    return _Loaded(loaded, source, True, data)


def _inline_functions(model: onnx.ModelProto, source: str, owned: bool) -> tuple[onnx.ModelProto, bool]:
    """Calls of the model's own functions (exporters write them) replaced by the functions' bodies."""
    if not model.functions:
        return model, owned
    try:
        return onnx.inliner.inline_local_functions(model), True
    except Exception as error:
        raise ModelError(f"{source}: invalid ONNX model: cannot inline its functions: {_first_line(error)}") from None


def _check_names(graph: onnx.GraphProto, source: str) -> None:
    """protobuf hands back bytes for a string field that is not UTF-8; onnx's checker lets that through."""
    names = [graph.name]
    for node in graph.node:
        names += [node.name, node.op_type, node.domain, *node.input, *node.output]
        names += [attribute.name for attribute in node.attribute]
    for info in (*graph.input, *graph.output, *graph.value_info, *graph.initializer):
        names.append(info.name)
    bad = next((name for name in names if not isinstance(name, str)), None)
    if bad is not None:
        raise ModelError(f"{source}: invalid ONNX model: the name {bad[:40]!r} is not UTF-8 text")


def _guard_shape_inference(graph: onnx.GraphProto, source: str) -> None:
    """Inconsistencies that make onnx's C++ shape inference abort the process instead of raising."""
    for node in graph.node:
        if node.op_type == "Split":
            pieces = next((a.i for a in node.attribute if a.name == "num_outputs"), None)
            if pieces is not None and pieces != len(node.output):
                raise ModelError(f"{source}: invalid ONNX model: Split node {node.name!r} has num_outputs={pieces} "
                                 f"but {len(node.output)} outputs")


def without_large_initializers(model: onnx.ModelProto, limit: int = 4096) -> onnx.ModelProto:
    """The model for shape inference: large initializers become typed inputs.

    Inference needs their types and shapes, and the values only of small ones (shape
    arithmetic); this way it does not copy the weights in and out of C++ twice."""
    graph = model.graph
    large = [t for t in graph.initializer if math.prod(t.dims) > limit]
    if not large:
        return model
    light = onnx.ModelProto()
    light.CopyFrom(model)  # cheaper than two serializations of the weights
    light.graph.ClearField("initializer")
    light.graph.initializer.extend(t for t in graph.initializer if math.prod(t.dims) <= limit)
    listed = {value.name for value in graph.input}
    light.graph.input.extend(onnx.helper.make_tensor_value_info(t.name, t.data_type, list(t.dims))
                             for t in large if t.name not in listed)
    return light


def _copy(model: onnx.ModelProto) -> onnx.ModelProto:
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    return copy


def _first_line(error: BaseException, limit: int = 300) -> str:
    """onnx's messages in one line: the context dump after "==> Context" dropped, long ones cut."""
    text = " ".join(str(error).split("==> Context")[0].split()) or type(error).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _opsets(model: onnx.ModelProto) -> dict[str, int]:
    """Domain -> opset version ("" for the default domain; 0 if the model imports none)."""
    opsets = {("" if entry.domain == "ai.onnx" else entry.domain): entry.version for entry in model.opset_import}
    opsets.setdefault("", 0)
    return opsets


# The support scan ---------------------------------------------------------------------------------
def live_nodes(graph: onnx.GraphProto) -> tuple[list[onnx.NodeProto], set[str]]:
    """The nodes some graph output depends on (in order), and every name they or the outputs use."""
    needed = {output.name for output in graph.output}
    live = []
    for node in reversed(graph.node):
        if any(name in needed for name in node.output if name):
            live.append(node)
            needed.update(name for name in node.input if name)
    return live[::-1], needed


def _scan(graph: onnx.GraphProto, opsets: dict[str, int]) -> list[tuple[str, str, int, str]]:
    """(op_type, node_name, opset, reason) of each live node the importer would refuse for its op type."""
    constant = {t.name for t in graph.initializer} | {t.values.name for t in graph.sparse_initializer}
    problems = []
    nodes, _ = live_nodes(graph)
    for index, node in enumerate(nodes):
        domain = "" if node.domain == "ai.onnx" else node.domain
        opset = opsets.get(domain, 0)
        if domain:
            problems.append((f"{domain}.{node.op_type}", node_name(node, index), opset, ""))
        elif node.op_type in SHAPE_OPS or (can_fold(node) and all(
                not name or name in constant or TYPE_ONLY_INPUTS.get(node.op_type) == i
                for i, name in enumerate(node.input))):
            constant.update(node.output)
        elif node.op_type not in NORMALISERS:
            reason, needed = _not_constant(node.op_type, [name if name and name not in constant else ""
                                                          for name in node.input])
            problems.append((node.op_type, node_name(node, index), opset, reason, needed))
    return problems


def _not_constant(op_type: str, variables: list[str]) -> tuple[str, str | None]:
    """Why a FOLD_ONLY node cannot be imported, and the first input that is not a compile-time
    constant (the one runtime.backend can specialise on); ("", None) for other ops."""
    if op_type not in FOLD_ONLY:
        return "", None
    name = next((name for i, name in enumerate(variables) if name and TYPE_ONLY_INPUTS.get(op_type) != i), "")
    if not name:
        return "its inputs are not compile-time constants", None
    return f"its input %{name} is not a compile-time constant", name


def node_name(node: onnx.NodeProto, index: int) -> str:
    """The node's name, or `OpType_index` for nameless nodes (index among the live nodes)."""
    return node.name or f"{node.op_type}_{index}"


def _value_types(graph: onnx.GraphProto) -> dict[str, tuple[int, tuple[int, ...] | None]]:
    """onnx's inferred element type and static shape (None if any dim is unknown) of every tensor it typed."""
    types = {}
    for info in (*graph.input, *graph.value_info, *graph.output):
        if not info.type.HasField("tensor_type"):
            continue
        tensor = info.type.tensor_type
        dims = None
        if tensor.HasField("shape") and all(d.HasField("dim_value") for d in tensor.shape.dim):
            dims = tuple(d.dim_value for d in tensor.shape.dim)
        types[info.name] = (tensor.elem_type, dims)
    return types


# The node walk ------------------------------------------------------------------------------------
class Importer:
    """Builds the IR graph from a checked, shape-bound model (see the module docstring)."""

    def __init__(self, model: onnx.ModelProto, types: dict, opset: int):
        self.model, self.types, self.opset = model, types, opset
        name = re.sub(r"[^A-Za-z0-9_]", "_", model.graph.name)
        self.graph = Graph(name=name if re.match(r"[A-Za-z_]", name) else "main")
        self.reserved = {v.name for v in model.graph.input} | {o for n in model.graph.node for o in n.output}
        self.reserved |= {t.name for t in model.graph.initializer}
        self.aliases: dict[str, str] = {}

    def run(self) -> Graph:
        graph = self.model.graph
        nodes, used = live_nodes(graph)
        self._constants(graph, used)
        initializers = {t.name for t in graph.initializer} | {t.values.name for t in graph.sparse_initializer}
        for value in graph.input:
            if value.name not in initializers:
                dims = tuple(d.dim_value for d in value.type.tensor_type.shape.dim)
                self.graph.add_value(Value(value.name, ir_dtype(value.type.tensor_type.elem_type, value.name), dims))
                self.graph.inputs.append(value.name)
        for index, node in enumerate(nodes):
            self._node(node, node_name(node, index), used)
        self._outputs([output.name for output in graph.output])
        self.graph.prune()
        self._check_dtypes()
        verify(self.graph)
        return self.graph

    # Names -----------------------------------------------------------------------------------------
    def fresh_name(self, base: str) -> str:
        base = re.sub(r"[^A-Za-z0-9_.:/-]", "_", base) or "v"
        name, counter = base, 0
        while name in self.graph.values or name in self.reserved:
            counter += 1
            name = f"{base}_{counter}"
        self.reserved.add(name)
        return name

    def resolve(self, name: str) -> str:
        while name in self.aliases:
            name = self.aliases[name]
        return name

    def alias(self, output: str, source: str) -> None:
        if output:
            self.aliases[output] = source

    def add_const(self, name: str, data: np.ndarray) -> None:
        data = np.asarray(data)
        if not data.flags.c_contiguous:
            data = data.copy()  # np.ascontiguousarray would make a 0-d array 1-d
        self.graph.add_value(Value(name, array_dtype(data, name), tuple(data.shape), data))

    # Steps -----------------------------------------------------------------------------------------
    def _constants(self, graph: onnx.GraphProto, used: set[str]) -> None:
        for tensor in graph.initializer:
            if tensor.name in used:
                self.add_const(tensor.name, self._array(tensor))
        for sparse in graph.sparse_initializer:
            if sparse.values.name in used:
                self.add_const(sparse.values.name, _dense(sparse, self._array))

    @staticmethod
    def _array(tensor: onnx.TensorProto) -> np.ndarray:
        if tensor.data_type == onnx.TensorProto.STRING:
            raise UnsupportedTypeError(tensor.name, "string", "initializer")
        try:
            return onnx.numpy_helper.to_array(tensor)
        except Exception as error:  # missing external data, a size that does not match the dims
            raise ModelError(f"initializer {tensor.name!r}: {_first_line(error)}") from None

    def _node(self, node: onnx.NodeProto, name: str, used: set[str]) -> None:
        inputs = [self.resolve(i) if i else "" for i in node.input]
        for original, resolved in zip(node.input, inputs, strict=False):
            if resolved and resolved not in self.graph.values:
                raise ModelError(f"node {name!r} ({node.op_type}): input {original!r} is not defined")
        outputs = [o if o in used else "" for o in node.output]
        values = [self.graph.values[i] if i else None for i in inputs]
        if node.op_type in SHAPE_OPS:
            self._fold_shape(node, values[0], outputs)
        elif can_fold(node) and all(v is None or v.is_const or TYPE_ONLY_INPUTS.get(node.op_type) == i
                                    for i, v in enumerate(values)):
            self._fold(node, name, [_fold_input(v) for v in values], outputs)
        else:
            normalise = NORMALISERS.get(node.op_type)
            if normalise is None:
                reason, needed = _not_constant(node.op_type, [v.name if v is not None and not v.is_const else ""
                                                              for v in values])
                raise UnsupportedOpError(node.op_type, name, self.opset, reason, needed)
            since = onnx.defs.get_schema(node.op_type, self.opset, "").since_version
            normalise(NodeContext(self, node, name, self.opset, since, inputs, outputs))
        self._check_outputs(node, name, outputs)

    def _fold_shape(self, node: onnx.NodeProto, value: Value, outputs: list[str]) -> None:
        if node.op_type == "Size":
            data = np.array(value.size, dtype=np.int64)
        else:
            attrs = {a.name: a.i for a in node.attribute}
            rank = len(value.shape)
            start, end = attrs.get("start", 0), attrs.get("end", rank)
            start, end = (min(max(s + rank if s < 0 else s, 0), rank) for s in (start, end))
            data = np.array(value.shape[start:end], dtype=np.int64)
        if outputs[0]:
            self.add_const(outputs[0], data)

    def _fold(self, node: onnx.NodeProto, name: str, inputs: list, outputs: list[str]) -> None:
        try:
            results = fold_node(node, inputs, self.opset)
        except Exception as error:  # the reference evaluator rejecting the node's inputs or attributes
            raise ModelError(f"node {name!r} ({node.op_type}): constant folding failed: {_first_line(error)}") from None
        for output, data in zip(outputs, results, strict=False):
            if output and data is not None:
                elem_type, _ = self.types.get(output, (0, None))
                if elem_type:
                    data = data.astype(onnx.helper.tensor_dtype_to_np_dtype(elem_type), copy=False)
                self.add_const(output, data)

    def _check_outputs(self, node: onnx.NodeProto, name: str, outputs: list[str]) -> None:
        """Every used output is defined, with the dtype and shape onnx's inference gives (where static)."""
        for output in outputs:
            if not output:
                continue
            value = self.graph.values.get(self.resolve(output))
            if value is None:
                raise ModelError(f"node {name!r} ({node.op_type}): output {output!r} was not produced")
            elem_type, dims = self.types.get(output, (0, None))
            if not elem_type:
                continue
            expected = known_dtype(elem_type) or onnx_type_name(elem_type)
            if value.dtype != expected or (dims is not None and tuple(value.shape) != dims):
                onnx_shape = dims_text(dims) if dims is not None else "[?]"
                raise ModelError(f"node {name!r} ({node.op_type}): output {output!r} is {value.dtype}"
                                 f"{dims_text(value.shape)} by acc's rules but {expected}{onnx_shape} by onnx's shape "
                                 "inference")

    def _outputs(self, names: list[str]) -> None:
        for name in names:
            source = self.resolve(name)
            if source != name:
                value = self.graph.values[source]
                if value.is_const:
                    self.add_const(name, value.const)
                else:  # an output that is another value (Identity of an input or of another output)
                    self.graph.add_value(Value(name, value.dtype, value.shape))
                    self.graph.nodes.append(Node("Identity", [source], [name], {}, name))
            self.graph.outputs.append(name)

    def _check_dtypes(self) -> None:
        producers = self.graph.producers()
        for value in self.graph.values.values():
            if value.dtype in SUPPORTED_DTYPES:
                continue
            producer = producers.get(value.name)
            where = ("model input" if value.name in self.graph.inputs else "constant" if value.is_const
                     else f"output of node {producer.name!r} ({producer.op})" if producer else "")
            raise UnsupportedTypeError(value.name, _ONNX_NAMES.get(value.dtype, value.dtype), where)


_ONNX_NAMES = {"f64": "double", "f16": "float16", "i16": "int16", "u16": "uint16", "u32": "uint32", "u64": "uint64"}


def _fold_input(value: Value | None) -> np.ndarray | None:
    """A constant's data; for a type-only input, zeros of its dtype and shape."""
    if value is None or value.is_const:
        return None if value is None else value.const
    return np.zeros(value.shape, dtype=numpy_dtype(value.dtype))


def _dense(sparse: onnx.SparseTensorProto, to_array) -> np.ndarray:
    values, dims = to_array(sparse.values), tuple(sparse.dims)
    dense = np.zeros(dims, dtype=values.dtype)
    if values.size:
        indices = to_array(sparse.indices)
        flat = indices if indices.ndim == 1 else np.ravel_multi_index(tuple(indices.T), dims)
        dense.reshape(-1)[flat] = values
    return dense

