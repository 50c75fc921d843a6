"""Conv, MaxPool and AveragePool kernels against onnxruntime, on tiny (tiling forced) and edge."""

import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from compiler.codegen import generate
from compiler.ir import Graph, Node, Value
from isa.config import load_config
from runtime.simulator import run


def reference(op: str, x: np.ndarray, attrs: dict, initializers: dict) -> np.ndarray:
    inits = [helper.make_tensor(name, TensorProto.FLOAT, value.shape, value.ravel()) for name, value in
             initializers.items()]
    node = helper.make_node(op, ["x", *initializers], ["y"], **attrs)
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, x.shape)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 19)])
    return ort.InferenceSession(model.SerializeToString()).run(None, {"x": x})[0]


def simulate(op: str, x: np.ndarray, attrs: dict, initializers: dict, shape, config: str) -> np.ndarray:
    graph = Graph()
    graph.add_value(Value("x", "f32", x.shape))
    graph.inputs = ["x"]
    for name, value in initializers.items():
        graph.const(name, value)
    graph.add_value(Value("y", "f32", shape))
    graph.outputs = ["y"]
    graph.nodes = [Node(op, ["x", *initializers], ["y"], attrs, "node")]
    result = run(generate(graph, load_config(config)), {"x": x}, check_hazards=True)
    assert not result.hazards
    assert result.stats["cycles"] >= result.stats["roofline_cycles"]
    return result.outputs["y"]


CONV_CASES = [
    ((1, 3, 9, 11), (5, 3, 3, 3), dict(pads=[1, 1, 1, 1]), True),
    ((2, 4, 10, 7), (6, 2, 3, 2), dict(pads=[0, 1, 2, 0], strides=[2, 1], dilations=[1, 2], group=2), True),
    ((1, 20, 12, 40), (40, 20, 3, 3), dict(pads=[1, 1, 1, 1]), True),
    ((1, 8, 6, 6), (8, 1, 3, 3), dict(pads=[1, 1, 1, 1], strides=[2, 2], group=8), False),
    ((1, 6, 5, 17), (4, 6, 1, 1), dict(), True),
    ((2, 3, 15), (4, 3, 3), dict(pads=[1, 1], strides=[2]), True),
]


@pytest.mark.parametrize("config", ["tiny", "edge"])
@pytest.mark.parametrize("x_shape,w_shape,attrs,bias", CONV_CASES)
def test_conv(config, x_shape, w_shape, attrs, bias):
    rng = np.random.default_rng(0)
    x = rng.standard_normal(x_shape).astype(np.float32)
    initializers = {"W": rng.standard_normal(w_shape).astype(np.float32)}
    if bias:
        initializers["b"] = rng.standard_normal(w_shape[0]).astype(np.float32)
    expected = reference("Conv", x, attrs, initializers)
    actual = simulate("Conv", x, attrs, initializers, expected.shape, config)
    np.testing.assert_allclose(actual, expected, rtol=1e-5, atol=1e-5 * np.abs(expected).max())


POOL_CASES = [
    ("MaxPool", (1, 3, 9, 11), dict(kernel_shape=[3, 3], pads=[1, 1, 1, 1], strides=[2, 2])),
    ("MaxPool", (2, 5, 8, 8), dict(kernel_shape=[2, 2], strides=[2, 2])),
    ("MaxPool", (1, 4, 7, 7), dict(kernel_shape=[3, 3], strides=[2, 2], ceil_mode=1)),
    ("MaxPool", (1, 2, 10, 10), dict(kernel_shape=[2, 2], dilations=[2, 2])),
    ("AveragePool", (1, 3, 9, 11), dict(kernel_shape=[3, 3], pads=[1, 1, 1, 1], strides=[2, 2])),
    ("AveragePool", (1, 3, 9, 11), dict(kernel_shape=[3, 3], pads=[1, 1, 1, 1], strides=[2, 2],
                                        count_include_pad=1)),
    ("AveragePool", (1, 6, 7, 7), dict(kernel_shape=[3, 3], strides=[2, 2], ceil_mode=1)),
    ("AveragePool", (1, 2, 9), dict(kernel_shape=[2], strides=[2])),
]


@pytest.mark.parametrize("config", ["tiny", "edge"])
@pytest.mark.parametrize("op,x_shape,attrs", POOL_CASES)
def test_pool(config, op, x_shape, attrs):
    x = np.random.default_rng(1).standard_normal(x_shape).astype(np.float32)
    expected = reference(op, x, attrs, {})
    actual = simulate(op, x, attrs, {}, expected.shape, config)
    np.testing.assert_allclose(actual, expected, rtol=1e-6, atol=1e-6)


CONV_TRANSPOSE_CASES = [
    ((1, 3, 4, 5), (3, 2, 3, 3), dict(strides=[2, 2])),
    ((1, 4, 5, 5), (4, 3, 3, 3), dict(strides=[2, 2], pads=[1, 1, 1, 1], output_padding=[1, 1])),
    ((2, 4, 3, 4), (4, 2, 2, 3), dict(strides=[1, 2], dilations=[2, 1], group=2, pads=[0, 1, 1, 0])),
    ((1, 2, 6, 6), (2, 3, 3, 3), dict(pads=[2, 2, 2, 2])),  # padding larger than the kernel reach: cropping
    ((1, 3, 7), (3, 2, 3), dict(strides=[3])),
]


@pytest.mark.parametrize("config", ["tiny", "edge"])
@pytest.mark.parametrize("x_shape,w_shape,attrs", CONV_TRANSPOSE_CASES)
def test_conv_transpose(config, x_shape, w_shape, attrs):
    rng = np.random.default_rng(2)
    x = rng.standard_normal(x_shape).astype(np.float32)
    groups = attrs.get("group", 1)
    initializers = {"W": rng.standard_normal(w_shape).astype(np.float32),
                    "b": rng.standard_normal(w_shape[1] * groups).astype(np.float32)}
    expected = reference("ConvTranspose", x, attrs, initializers)
    actual = simulate("ConvTranspose", x, dict(attrs, kernel_shape=list(w_shape[2:])), initializers, expected.shape,
                      config)
    np.testing.assert_allclose(actual, expected, rtol=1e-5, atol=1e-5 * np.abs(expected).max())
