"""Quantized graphs: QDQ patterns become integer ops; what is left of the QDQ becomes constants.

A QDQ model (onnxruntime's `quantize_static`, or acc's own post-training quantization)
marks each quantized tensor with QuantizeLinear -> DequantizeLinear; the float ops between
a DequantizeLinear and a QuantizeLinear are the computation. `fuse_qdq` rewrites what the
accelerator computes on the integers, as onnxruntime's QDQ transformers do:

    DQ(x), DQ(w const) [, bias] -> Conv | MatMul | Gemm [-> Relu | Clip] -> Q
        => QLinearConv | QLinearMatMul, the activation as the output clamp
    the same with a float result (no Q after it)
        => QLinearConv | QLinearMatMul with an int32 output, then DequantizeLinear
    DQ(x) -> MaxPool | Reshape | Flatten | Transpose | Squeeze | Unsqueeze -> Q (same parameters)
        => the op on the integers

The bias is the model's int32 bias when its scale is x_scale * w_scale, else the float bias
rounded to that scale. Anything else keeps its float op between DQ and Q, which the vector
unit computes as written. `fold_dequantized_constants` then turns the DequantizeLinear
nodes of constants that no fusion took into float constants.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from compiler.ir import Graph, Node, Value, numpy_dtype

MATRIX_OPS = ("Conv", "MatMul", "Gemm")
INTEGER_TRANSPARENT = ("MaxPool", "Reshape", "Flatten", "Transpose", "Squeeze", "Unsqueeze")


@dataclass(frozen=True)
class QParams:
    scale: np.ndarray  # float32, 1-D
    zero_point: np.ndarray  # int64, 1-D
    axis: int
    dtype: str  # the integer dtype

    @property
    def per_tensor(self) -> bool:
        return self.scale.size == 1 and self.zero_point.size == 1

    def same(self, other: QParams) -> bool:
        return (self.per_tensor and other.per_tensor and self.dtype == other.dtype
                and self.scale[0] == other.scale[0] and self.zero_point[0] == other.zero_point[0])


def quant_params(graph: Graph, node: Node) -> QParams | None:
    """The constant scale and zero point of a QuantizeLinear/DequantizeLinear node (None if run-time)."""
    scale = graph.values[node.inputs[1]]
    zero = graph.values[node.inputs[2]] if len(node.inputs) > 2 and node.inputs[2] else None
    if not scale.is_const or (zero is not None and not zero.is_const):
        return None
    if node.op == "QuantizeLinear":
        dtype = node.attrs["output_dtype"]
    else:
        dtype = graph.values[node.inputs[0]].dtype
    zero_data = zero.const.astype(np.int64).reshape(-1) if zero is not None else np.zeros(1, np.int64)
    return QParams(scale.const.astype(np.float32).reshape(-1), zero_data, int(node.attrs.get("axis", 1)), dtype)


def _quantize_value(value: float, params: QParams) -> int:
    """QuantizeLinear of one float, as the kernel computes it."""
    info = np.iinfo(numpy_dtype(params.dtype))
    q = np.rint(np.float32(value) / params.scale[0]) + params.zero_point[0]
    return int(np.clip(q, info.min, info.max))


class _Fuser:
    def __init__(self, graph: Graph):
        self.graph = graph
        self.producers = graph.producers()
        self.consumers = graph.consumers()
        self.removed: set[int] = set()
        self.replaced: dict[int, list[Node]] = {}

    def dequantized(self, name: str, constant: bool | None = None) -> tuple[Node, QParams] | None:
        node = self.producers.get(name)
        if node is None or node.op != "DequantizeLinear":
            return None
        params = quant_params(self.graph, node)
        if params is None or params.dtype not in ("i8", "u8", "i32"):
            return None
        if constant is not None and self.graph.values[node.inputs[0]].is_const != constant:
            return None
        return node, params

    def only_consumer(self, name: str) -> Node | None:
        users = self.consumers.get(name, [])
        if len(users) != 1 or name in self.graph.outputs:
            return None
        return users[0]

    def quantized_output(self, node: Node) -> tuple[Node | None, Node | None, QParams | None]:
        """(activation, Q) after node when its result is quantized per tensor: (None, None, None) if not."""
        user = self.only_consumer(node.outputs[0])
        activation = None
        if user is not None and user.op in ("Relu", "Clip"):
            activation, user = user, self.only_consumer(user.outputs[0])
        if user is None or user.op != "QuantizeLinear":
            return None, None, None
        params = quant_params(self.graph, user)
        if params is None or not params.per_tensor or params.dtype not in ("i8", "u8"):
            return None, None, None
        return activation, user, params

    def fuse_matrix(self, node: Node) -> None:
        graph = self.graph
        x = self.dequantized(node.inputs[0], constant=False)
        w = self.dequantized(node.inputs[1], constant=True)
        if x is None or w is None or not x[1].per_tensor or x[1].dtype == "i32" or w[1].dtype == "i32":
            return
        (_, x_params), (w_node, w_params) = x, w
        if np.any(w_params.zero_point != 0):
            return
        weights = graph.values[w_node.inputs[0]].const
        attrs: dict = {}
        if node.op == "Conv":
            channel_axis = 0
            attrs = {k: node.attrs[k] for k in ("group", "kernel_shape", "strides", "pads", "dilations")}
        elif node.op == "MatMul":
            if weights.ndim != 2 or len(graph.values[node.inputs[0]].shape) < 2:
                return
            channel_axis = 1
        else:  # Gemm
            if node.attrs.get("transA", 0) or node.attrs.get("alpha", 1.0) != 1.0 or node.attrs.get("beta", 1.0) != 1.0:
                return
            channel_axis = 0 if node.attrs.get("transB", 0) else 1
        if not w_params.per_tensor and w_params.axis % weights.ndim != channel_axis:
            return
        if node.op == "Gemm" and channel_axis == 0:
            weights = weights.T
        channels = weights.shape[0] if node.op == "Conv" else weights.shape[1]
        bias_scale = (np.float32(x_params.scale[0]) * w_params.scale).astype(np.float32)
        bias = self.integer_bias(node, bias_scale, channels)
        if bias is False:
            return
        activation, quantize, y_params = self.quantized_output(node)
        op = "QLinearConv" if node.op == "Conv" else "QLinearMatMul"
        attrs.update(x_scale=float(x_params.scale[0]), x_zero_point=int(x_params.zero_point[0]),
                     w_scale=[float(s) for s in w_params.scale], w_zero_point=[0])
        weight_name = graph.fresh_name(node.inputs[1] + ".q")
        graph.const(weight_name, np.ascontiguousarray(weights))
        inputs = [self.producers[node.inputs[0]].inputs[0], weight_name] + ([bias] if bias else [])
        if quantize is not None:
            low, high = np.iinfo(numpy_dtype(y_params.dtype)).min, np.iinfo(numpy_dtype(y_params.dtype)).max
            if activation is not None and activation.op == "Relu":
                low = max(low, int(y_params.zero_point[0]))
            elif activation is not None:
                low = max(low, _quantize_value(activation.attrs.get("min", -np.inf), y_params)) \
                    if np.isfinite(activation.attrs.get("min", -np.inf)) else low
                high = min(high, _quantize_value(activation.attrs.get("max", np.inf), y_params)) \
                    if np.isfinite(activation.attrs.get("max", np.inf)) else high
            attrs.update(y_scale=float(y_params.scale[0]), y_zero_point=int(y_params.zero_point[0]),
                         out_dtype=y_params.dtype, y_min=int(low), y_max=int(high))
            fused = Node(op, inputs, list(quantize.outputs), attrs, node.name)
            self.replaced[id(node)] = [fused]
            self.removed.update(id(n) for n in (activation, quantize) if n is not None)
            return
        # A float result: the int32 accumulator, dequantized with x_scale * w_scale per channel.
        out = graph.values[node.outputs[0]]
        accumulator = graph.fresh_name(node.outputs[0] + ".acc")
        graph.add_value(Value(accumulator, "i32", out.shape))
        scale_name = graph.fresh_name(node.outputs[0] + ".scale")
        graph.const(scale_name, bias_scale if bias_scale.size > 1 else bias_scale.reshape(()))
        attrs.update(out_dtype="i32")
        axis = 1 if node.op == "Conv" else len(out.shape) - 1
        self.replaced[id(node)] = [Node(op, inputs, [accumulator], attrs, node.name),
                                   Node("DequantizeLinear", [accumulator, scale_name], list(node.outputs),
                                        {"axis": axis}, node.name + "/dequantize" if node.name else "")]

    def integer_bias(self, node: Node, bias_scale: np.ndarray, channels: int) -> str | None | bool:
        """The int32 bias constant's name, None without a bias, False if the bias cannot be integer."""
        if len(node.inputs) < 3 or not node.inputs[2]:
            return None
        graph = self.graph
        quantized = self.dequantized(node.inputs[2], constant=True)
        if quantized is not None and quantized[1].dtype == "i32" and not np.any(quantized[1].zero_point):
            data = graph.values[quantized[0].inputs[0]].const
            if np.allclose(quantized[1].scale, bias_scale, rtol=1e-6, atol=0):
                return self.bias_constant(node, data, channels)
            real = data.astype(np.float64) * quantized[1].scale
        elif graph.values[node.inputs[2]].is_const:
            real = graph.values[node.inputs[2]].const.astype(np.float64)
        else:
            return False
        scaled = np.rint(real.reshape(-1) / bias_scale.astype(np.float64))
        if np.any(np.abs(scaled) > 2**31 - 1):
            return False
        return self.bias_constant(node, scaled.astype(np.int32), channels)

    def bias_constant(self, node: Node, data: np.ndarray, channels: int) -> str | bool:
        data = np.asarray(data).reshape(-1)
        if data.size == 1:
            data = np.repeat(data, channels)
        if data.size != channels:
            return False
        name = self.graph.fresh_name(node.inputs[2] + ".i32")
        self.graph.const(name, data.astype(np.int32))
        return name

    def pass_through(self, node: Node) -> None:
        """DQ -> data movement or MaxPool -> Q with the same parameters: the op on the integers."""
        x = self.dequantized(node.inputs[0], constant=False)
        outputs = [o for o in node.outputs if o]
        if x is None or len(outputs) != 1 or not x[1].per_tensor or x[1].dtype == "i32":
            return
        user = self.only_consumer(node.outputs[0])
        if user is None or user.op != "QuantizeLinear":
            return
        params = quant_params(self.graph, user)
        if params is None or not params.same(x[1]):
            return
        integer = self.producers[node.inputs[0]].inputs[0]
        self.graph.add_value(Value(user.outputs[0], params.dtype, self.graph.values[node.outputs[0]].shape))
        self.replaced[id(node)] = [Node(node.op, [integer] + node.inputs[1:], list(user.outputs), dict(node.attrs),
                                        node.name)]
        self.removed.add(id(user))


def fuse_qdq(graph: Graph) -> Graph:
    for node in graph.nodes:
        params = quant_params(graph, node) if node.op == "QuantizeLinear" else None
        if params is not None and params.per_tensor:
            graph.quantized_from[node.outputs[0]] = (node.inputs[0], float(params.scale[0]),
                                                     int(params.zero_point[0]))
    fuser = _Fuser(graph)
    for node in graph.nodes:
        if id(node) in fuser.removed or id(node) in fuser.replaced:
            continue
        if node.op in MATRIX_OPS:
            fuser.fuse_matrix(node)
        elif node.op in INTEGER_TRANSPARENT:
            fuser.pass_through(node)
    if not fuser.replaced:
        return graph
    nodes = []
    for node in graph.nodes:
        if id(node) in fuser.removed:
            continue
        nodes.extend(fuser.replaced.get(id(node), [node]))
    graph.nodes = nodes
    return graph.prune()


def fold_dequantized_constants(graph: Graph) -> Graph:
    """DequantizeLinear of a constant -> the float constant (x - zero_point) * scale, as the kernel computes it."""
    nodes = []
    for node in graph.nodes:
        params = quant_params(graph, node) if node.op == "DequantizeLinear" else None
        data = graph.values[node.inputs[0]]
        if params is None or not data.is_const:
            nodes.append(node)
            continue
        shape = [1] * data.const.ndim
        if not params.per_tensor and data.const.ndim:
            shape[params.axis % data.const.ndim] = -1
        centred = data.const.astype(np.int64) - params.zero_point.reshape(shape if params.zero_point.size > 1 else ())
        scale = params.scale.reshape(shape if params.scale.size > 1 else ())
        out = graph.values[node.outputs[0]]
        value = (centred.astype(np.int32).astype(np.float32) * scale).astype(numpy_dtype(out.dtype))
        graph.values[out.name] = Value(out.name, out.dtype, out.shape, value.reshape(out.shape))
    graph.nodes = nodes
    return graph.prune()
