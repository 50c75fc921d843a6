"""Post-training static quantization: an fp32 ONNX model + calibrated ranges -> a QDQ ONNX model.

acc quantizes the way onnxruntime's `quantize_static` writes its QDQ format, so that its own
models and onnxruntime's take one path through the compiler (the importer, then
`fuse_qdq`, compiler/passes/quantized.py) and the QDQ model can be run by onnxruntime to
see what quantization costs:

- every Conv, MatMul and Gemm with constant weights (and not kept in float by the user)
  gets int8 weights, per output channel (or per tensor), symmetric in [-127, 127];
  a bias becomes int32 at scale x_scale * w_scale;
- its activation input is quantized per tensor: uint8 with a zero point (asymmetric,
  the default) or int8 with zero point 0 (symmetric), over the calibrated range widened
  to include 0;
- its output is quantized (after a Relu or Clip that alone follows it, which then becomes
  the requantization's clamp) when every reader is an int8 op, directly or through the ops
  below; otherwise the int32 accumulator is dequantized exactly, with no 8-bit rounding;
- a BatchNormalization that alone reads a Conv's output is first folded into the Conv's weights
  and bias (as onnxruntime's quantization pre-processing does), so that the int8 Conv's output
  is the normalised tensor and it requantizes directly;
- MaxPool, Reshape, Flatten, Transpose, Squeeze and Unsqueeze of a quantized tensor are
  quantized with their input's parameters, so they run on the integers;
- the float weights of the quantized products are dropped (as onnxruntime drops unused
  initializers): ResNet-50's QDQ model is 26 MB, not 128.

A quantized tensor t is followed by QuantizeLinear -> DequantizeLinear, and every
consumer of t reads the dequantized copy; ops without an int8 kernel thus run in float
between a DequantizeLinear and a QuantizeLinear, which `describe` reports.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper, numpy_helper, version_converter

from compiler.errors import ModelError
from compiler.frontend.onnx_import import without_large_initializers
from compiler.passes.simplify import batchnorm_folded_into_conv
from compiler.quantize.calibration import TensorRange

MATRIX_OPS = ("Conv", "MatMul", "Gemm")
SCORING_SAMPLES = 8  # calibration samples the automatic mixed precision scores on
PROPAGATED = ("MaxPool", "Reshape", "Flatten", "Transpose", "Squeeze", "Unsqueeze")
ACTIVATIONS = ("Relu", "Clip")


@dataclass(frozen=True)
class QuantOptions:
    per_channel: bool = True
    symmetric: bool = False  # activations: int8 with zero point 0, else uint8 with a zero point
    keep: Collection[str] = ()  # node names that stay float


@dataclass(frozen=True)
class _Params:
    scale: float
    zero_point: int
    dtype: int  # onnx.TensorProto.UINT8 or INT8


def activation_params(value_range: TensorRange, symmetric: bool) -> _Params:
    """Per-tensor parameters for a calibrated range (0 always representable, as onnxruntime does)."""
    low, high = min(float(value_range.low), 0.0), max(float(value_range.high), 0.0)
    if symmetric:
        bound = max(-low, high)
        scale = bound / 127.0 if bound > 0 else 1.0
        return _Params(float(np.float32(scale)), 0, onnx.TensorProto.INT8)
    scale = (high - low) / 255.0 if high > low else 1.0
    scale = float(np.float32(scale))
    zero_point = int(np.clip(np.rint(-low / scale), 0, 255))
    return _Params(scale, zero_point, onnx.TensorProto.UINT8)


def quantize_weights(weights: np.ndarray, axis: int | None) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric int8 in [-127, 127]: (integers, float32 scales), per slice along `axis` or per tensor."""
    weights = weights.astype(np.float32)
    if axis is None:
        bound = np.abs(weights).max(keepdims=True).reshape(1)
    else:
        moved = np.moveaxis(weights, axis, 0).reshape(weights.shape[axis], -1)
        bound = np.abs(moved).max(axis=1) if moved.size else np.zeros(weights.shape[axis], np.float32)
    scales = np.where(bound > 0, bound / 127.0, 1.0).astype(np.float32)
    shape = [1] * weights.ndim
    if axis is not None:
        shape[axis] = -1
    integers = np.clip(np.rint(weights / scales.reshape(shape)), -127, 127).astype(np.int8)
    return integers, scales


class _Rewriter:
    def __init__(self, model: onnx.ModelProto, ranges: Mapping[str, TensorRange], options: QuantOptions):
        self.model, self.ranges, self.options = model, ranges, options
        graph = model.graph
        self.initializers = {t.name: t for t in graph.initializer}
        self.outputs = {o.name for o in graph.output}
        self.consumers: dict[str, list[onnx.NodeProto]] = {}
        for node in graph.node:
            for name in node.input:
                self.consumers.setdefault(name, []).append(node)
        self.params: dict[str, _Params] = {}  # tensor -> its quantization
        self.new_initializers: list[onnx.TensorProto] = []
        self.inserted: dict[str, list[onnx.NodeProto]] = {}  # after which tensor's producer
        self.renames: dict[str, str] = {}  # tensor -> its dequantized copy

    def quantize_tensor(self, name: str, params: _Params | None = None) -> bool:
        if name in self.params:
            return True
        if name in self.outputs or name in self.initializers:
            return False
        if params is None:
            if name not in self.ranges:
                return False
            params = activation_params(self.ranges[name], self.options.symmetric)
        self.params[name] = params
        scale = self._constant(f"{name}_scale", np.array(params.scale, np.float32))
        zero = self._constant(f"{name}_zero_point",
                              np.array(params.zero_point, np.uint8 if params.dtype == onnx.TensorProto.UINT8
                                       else np.int8))
        quantized, dequantized = f"{name}_QuantizeLinear_Output", f"{name}_DequantizeLinear_Output"
        self.inserted[name] = [
            helper.make_node("QuantizeLinear", [name, scale, zero], [quantized], f"{name}_QuantizeLinear"),
            helper.make_node("DequantizeLinear", [quantized, scale, zero], [dequantized], f"{name}_DequantizeLinear")]
        self.renames[name] = dequantized
        return True

    def _constant(self, name: str, data: np.ndarray) -> str:
        self.new_initializers.append(numpy_helper.from_array(data, name))
        return name

    def quantize_matrix(self, node: onnx.NodeProto) -> bool:
        weight_name = node.input[1]
        if weight_name not in self.initializers or node.input[0] in self.initializers:
            return False
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        weights = numpy_helper.to_array(self.initializers[weight_name])
        if node.op_type == "Conv":
            axis = 0
        elif node.op_type == "MatMul":
            if weights.ndim != 2:
                return False
            axis = 1
        else:
            if attrs.get("transA", 0) or attrs.get("alpha", 1.0) != 1.0 or attrs.get("beta", 1.0) != 1.0:
                return False
            axis = 0 if attrs.get("transB", 0) else 1
        if not self.quantize_tensor(node.input[0]):
            return False
        integers, scales = quantize_weights(weights, axis if self.options.per_channel else None)
        w_scale = self._constant(f"{weight_name}_scale", scales if scales.size > 1 else scales.reshape(()))
        w_zero = self._constant(f"{weight_name}_zero_point", np.zeros(scales.shape if scales.size > 1 else (),
                                                                      np.int8))
        w_int = self._constant(f"{weight_name}_quantized", integers)
        dequantized = f"{weight_name}_DequantizeLinear_Output"
        extra = [helper.make_node("DequantizeLinear", [w_int, w_scale, w_zero], [dequantized],
                                  f"{weight_name}_DequantizeLinear", axis=axis)]
        node.input[1] = dequantized
        if len(node.input) > 2 and node.input[2] in self.initializers:
            bias = numpy_helper.to_array(self.initializers[node.input[2]]).astype(np.float64)
            bias_scale = (np.float32(self.params[node.input[0]].scale) * scales).astype(np.float32)
            integer_bias = np.clip(np.rint(bias / bias_scale.astype(np.float64)), -(2**31), 2**31 - 1).astype(np.int32)
            b_scale = self._constant(f"{node.input[2]}_scale", bias_scale if bias_scale.size > 1 else
                                     bias_scale.reshape(()))
            b_int = self._constant(f"{node.input[2]}_quantized", integer_bias)
            b_dequantized = f"{node.input[2]}_DequantizeLinear_Output"
            extra.append(helper.make_node("DequantizeLinear", [b_int, b_scale], [b_dequantized],
                                          f"{node.input[2]}_DequantizeLinear", axis=0))
            node.input[2] = b_dequantized
        self.inserted.setdefault("", []).extend(extra)
        # The output, after an activation that alone follows it, when what reads it computes on
        # integers; else the int32 accumulator is dequantized exactly (no rounding to 8 bits).
        output = node.output[0]
        users = self.consumers.get(output, [])
        if len(users) == 1 and users[0].op_type in ACTIVATIONS and output not in self.outputs:
            output = users[0].output[0]
            users = self.consumers.get(output, [])
        if users and all(self.integer_consumer(user, output) for user in users):
            self.quantize_tensor(output)
        return True

    def integer_consumer(self, node: onnx.NodeProto, tensor: str) -> bool:
        """Whether `node` reads `tensor` as the activation of an int8 op (or passes it on to one)."""
        if node.name in self.options.keep:
            return False
        if node.op_type in MATRIX_OPS:
            return node.input[0] == tensor and len(node.input) > 1 and node.input[1] in self.initializers
        if node.op_type in PROPAGATED:
            users = self.consumers.get(node.output[0], [])
            return bool(users) and all(self.integer_consumer(user, node.output[0]) for user in users)
        return False

    def propagate(self, node: onnx.NodeProto) -> None:
        source = node.input[0]
        if source in self.params and len(node.output) == 1:
            self.quantize_tensor(node.output[0], self.params[source])

    def run(self) -> onnx.ModelProto:
        graph = self.model.graph
        for node in graph.node:
            if node.name in self.options.keep:
                continue
            if node.op_type in MATRIX_OPS:
                self.quantize_matrix(node)
            elif node.op_type in PROPAGATED:
                self.propagate(node)
        nodes = list(self.inserted.get("", []))
        for name in (i.name for i in graph.input):
            nodes.extend(self.inserted.get(name, []))
        for node in graph.node:
            node.input[:] = [self.renames.get(name, name) for name in node.input]
            nodes.append(node)
            for output in node.output:
                nodes.extend(self.inserted.get(output, []))
        del graph.node[:]
        graph.node.extend(nodes)
        graph.initializer.extend(self.new_initializers)
        _drop_unread_initializers(graph)  # the float weights of the quantized products
        return self.model


def quantize_model(model: onnx.ModelProto, ranges: Mapping[str, TensorRange],
                   options: QuantOptions = QuantOptions()) -> onnx.ModelProto:
    """A QDQ copy of `model`. Per-axis QuantizeLinear needs opset 13: an older model is first
    converted by onnx's version converter (which rewrites the ops whose form changed)."""
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 13)
    if opset < 13:
        try:
            quantized = _converted(model, 13)
        except Exception as error:  # the converter raises several kinds on ops it cannot convert
            raise ModelError(f"int8 needs opset 13 and converting this opset-{opset} model failed: "
                             f"{str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__}"
                             ) from None
    else:
        quantized = onnx.ModelProto()
        quantized.CopyFrom(model)
    return _Rewriter(fold_batchnorms(quantized), ranges, options).run()


def _converted(model: onnx.ModelProto, opset: int) -> onnx.ModelProto:
    """`model` converted to `opset` by onnx's version converter, which is given the large
    initializers as typed inputs (their values take no part in an op's change of form, and
    copying the weights into C++ and back is most of the converter's time), then has them back
    in their places. Should the light model not convert, the whole one is converted."""
    light = without_large_initializers(model)
    if light is model:
        return version_converter.convert_version(model, opset)
    try:
        converted = version_converter.convert_version(light, opset)
    except Exception:  # an adapter that reads a large constant's values: convert the whole model
        return version_converter.convert_version(model, opset)
    kept = {t.name for t in light.graph.initializer}
    large = {t.name: t for t in model.graph.initializer if t.name not in kept}
    listed = {i.name for i in model.graph.input}
    inputs = [i for i in converted.graph.input if i.name not in large or i.name in listed]
    del converted.graph.input[:]
    converted.graph.input.extend(inputs)
    by_name = {t.name: t for t in converted.graph.initializer}
    initializers = [large[t.name] if t.name in large else by_name.pop(t.name) for t in model.graph.initializer
                    if t.name in large or t.name in by_name]
    initializers += by_name.values()  # what the converter added
    del converted.graph.initializer[:]
    converted.graph.initializer.extend(initializers)
    return converted


def fold_batchnorms(model: onnx.ModelProto) -> onnx.ModelProto:
    """Conv -> BatchNormalization with constant parameters becomes one Conv (in place) whose output
    keeps the BatchNormalization's name, so the calibrated ranges still apply. A Conv whose output
    has other readers, or is a graph output, is left alone."""
    graph = model.graph
    initializers = {t.name: t for t in graph.initializer}
    readers: dict[str, int] = {}
    for node in graph.node:
        for name in node.input:
            readers[name] = readers.get(name, 0) + 1
    producers = {name: node for node in graph.node for name in node.output}
    outputs = {o.name for o in graph.output}
    kept, folded = [], set()
    for node in graph.node:
        conv = producers.get(node.input[0]) if node.op_type == "BatchNormalization" else None
        if (conv is not None and conv.op_type == "Conv" and readers[conv.output[0]] == 1
                and conv.output[0] not in outputs and len([o for o in node.output if o]) == 1
                and all(name in initializers for name in [*node.input[1:5], *conv.input[1:]] if name)):
            weight, bias, *params = (numpy_helper.to_array(initializers[name]) if name else None
                                     for name in [conv.input[1], conv.input[2] if len(conv.input) > 2 else "",
                                                  *node.input[1:5]])
            epsilon = next((a.f for a in node.attribute if a.name == "epsilon"), 1e-5)
            weight, bias = batchnorm_folded_into_conv(weight, bias, *params, epsilon)
            names = [_fresh(f"{conv.input[1]}_bn", initializers), _fresh(f"{node.output[0]}_bias", initializers)]
            for name, data in zip(names, (weight, bias), strict=True):
                initializers[name] = numpy_helper.from_array(data, name)
                graph.initializer.append(initializers[name])
            folded.add(conv.output[0])
            conv.input[:] = [conv.input[0], *names]
            conv.output[0] = node.output[0]
            continue
        kept.append(node)
    if folded:
        del graph.node[:]
        graph.node.extend(kept)
        info = [v for v in graph.value_info if v.name not in folded]
        del graph.value_info[:]
        graph.value_info.extend(info)
        _drop_unread_initializers(graph)  # the unfolded weights
    return model


def _drop_unread_initializers(graph: onnx.GraphProto) -> None:
    """Delete the initializers no node reads (nor a subgraph's, nor a graph output), and the graph inputs
    that name them (an old model lists its initializers as inputs too); in place, without copying the rest."""
    read = {output.name for output in graph.output}
    pending = [graph]
    while pending:
        for node in pending.pop().node:
            read.update(node.input)
            for attribute in node.attribute:
                if attribute.HasField("g"):
                    pending.append(attribute.g)
                pending.extend(attribute.graphs)
    unread = {t.name for t in graph.initializer if t.name not in read}
    for field in (graph.initializer, graph.input):
        for index in reversed([i for i, entry in enumerate(field) if entry.name in unread]):
            del field[index]


def _fresh(name: str, taken: Mapping[str, object]) -> str:
    candidate, number = name, 0
    while candidate in taken:
        number += 1
        candidate = f"{name}{number}"
    return candidate


def describe(graph) -> list[str]:
    """What runs in integers and what stays float in a compiled graph (compiler.ir.Graph)."""
    integer, floating = {}, {}
    for node in graph.nodes:
        if node.op in ("QuantizeLinear", "DequantizeLinear"):
            continue
        dtypes = {graph.values[name].dtype for name in node.inputs[:1] if name}
        target = integer if dtypes & {"i8", "u8"} else floating
        target[node.op] = target.get(node.op, 0) + 1
    lines = ["int8: " + (", ".join(f"{count} {op}" for op, count in sorted(integer.items())) or "nothing")]
    lines.append("float: " + (", ".join(f"{count} {op}" for op, count in sorted(floating.items())) or "nothing"))
    return lines


def quantized_matrix_nodes(model: onnx.ModelProto) -> list[str]:
    """Names of the matrix nodes a QDQ model computes in int8 (their weights are dequantized integers)."""
    dequantized = {n.output[0] for n in model.graph.node if n.op_type == "DequantizeLinear"}
    return [n.name for n in model.graph.node
            if n.op_type in MATRIX_OPS and len(n.input) > 1 and n.input[1] in dequantized]


def choose_kept(model: onnx.ModelProto, ranges: Mapping[str, TensorRange], samples, options: QuantOptions,
                target: float, report=None) -> tuple[list[str], float, float]:
    """Automatic mixed precision: the matrix nodes to keep out of int8 (most sensitive first) so
    that every float output's cosine with the fp32 model reaches `target` on `samples`.

    Sensitivity is measured with onnxruntime on the QDQ model (graph rewrites off, which
    computes what acc computes) on the first SCORING_SAMPLES samples: the cosine gained by
    keeping each node alone. Nodes are then
    kept greedily in that order until the target is met (or all are kept). Returns (kept,
    cosine before, cosine after); kept nodes are scored in fp32 (they run in bf16 on acc)."""
    import onnxruntime

    samples = list(samples)[:SCORING_SAMPLES]
    options_plain = onnxruntime.SessionOptions()
    options_plain.log_severity_level = 3
    reference = onnxruntime.InferenceSession(model.SerializeToString(), options_plain,
                                             providers=["CPUExecutionProvider"])
    float_outputs = [o.name for o in reference.get_outputs() if o.type == "tensor(float)"]
    expected = [reference.run(float_outputs, dict(feed)) for feed in samples]

    def score(keep: Collection[str]) -> float:
        quantized = quantize_model(model, ranges, QuantOptions(options.per_channel, options.symmetric,
                                                               frozenset(options.keep) | set(keep)))
        session_options = onnxruntime.SessionOptions()
        session_options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_DISABLE_ALL
        session_options.log_severity_level = 3
        session = onnxruntime.InferenceSession(quantized.SerializeToString(), session_options,
                                               providers=["CPUExecutionProvider"])
        worst = 1.0
        for feed, wanted in zip(samples, expected, strict=True):
            for got, ref in zip(session.run(float_outputs, dict(feed)), wanted, strict=True):
                worst = min(worst, _cosine(got, ref))
        return worst

    before = score(())
    if before >= target:
        return [], before, before
    candidates = [name for name in quantized_matrix_nodes(quantize_model(model, ranges, options))]
    gains = sorted(((score([name]) - before, name) for name in candidates), key=lambda pair: -pair[0])
    kept: list[str] = []
    after = before
    for _, name in gains:
        kept.append(name)
        after = score(kept)
        if report:
            report(f"mixed precision: keeping {name} (cosine {after:.5f})")
        if after >= target:
            break
    return kept, before, after


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.astype(np.float64).ravel(), b.astype(np.float64).ravel()
    norms = np.linalg.norm(a) * np.linalg.norm(b)
    return float(a @ b / norms) if norms > 0 else float(np.array_equal(a, b))
