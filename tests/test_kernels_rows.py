"""Row-wise and reduction kernels (compiler/codegen/kernels/rows.py) against onnxruntime.

Each case builds the op's one-node ONNX model (opset 18) for onnxruntime and the same node in
its normalised IR form, compiles it for `tiny` and `edge`, and simulates it with the hazard
check on: no hazards, and fp32 results within 1e-5 of the output's magnitude with cosine
similarity >= 0.99999 (indices exactly).
"""

from __future__ import annotations

import functools

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import helper

from compiler.codegen import generate
from compiler.errors import UnsupportedOpError
from compiler.ir import Graph, Node, Value, dtype_name
from compiler.verify import verify
from isa.config import load_config
from runtime.simulator import run

CONFIGS = ("tiny", "edge")
_config = functools.cache(load_config)


def _onnx_reference(op: str, inputs: list, onnx_attrs: dict, evaluator="ort") -> list:
    """Run the one-node model on onnxruntime (or a numpy `evaluator`, where onnxruntime refuses the
    case). `inputs`: (name, array, is_initializer)."""
    graph_inputs, initializers, feeds = [], [], {}
    for name, array, constant in inputs:
        if constant:
            initializers.append(onnx.numpy_helper.from_array(array, name))
        else:
            graph_inputs.append(helper.make_tensor_value_info(name, helper.np_dtype_to_tensor_dtype(array.dtype),
                                                              array.shape))
            feeds[name] = array
    node = helper.make_node(op, [name for name, _, _ in inputs], ["y"], **onnx_attrs)
    model = helper.make_model(helper.make_graph([node], "case", graph_inputs, [onnx.ValueInfoProto(name="y")],
                                                initializers),
                              opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 8
    model = onnx.shape_inference.infer_shapes(model, strict_mode=True)
    if callable(evaluator):
        return evaluator(*[array for _, array, _ in inputs], **onnx_attrs)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, feeds)


def _simulate(op: str, inputs: list, ir_attrs: dict, expected: list[np.ndarray], config: str) -> np.ndarray:
    """Compile the IR node (output typed like `expected[0]`) for `config` and simulate it."""
    graph, feeds = Graph(), {}
    for name, array, constant in inputs:
        if constant:
            graph.const(name, array)
        else:
            graph.add_value(Value(name, dtype_name(array.dtype), tuple(array.shape)))
            graph.inputs.append(name)
            feeds[name] = array
    graph.add_value(Value("y", dtype_name(expected[0].dtype), tuple(expected[0].shape)))
    graph.nodes.append(Node(op, [name for name, _, _ in inputs], ["y"], ir_attrs, "node"))
    graph.outputs = ["y"]
    verify(graph)
    result = run(generate(graph, _config(config)), feeds, check_hazards=True)
    assert not result.hazards, result.hazards[:3]
    return result.outputs["y"]


def _compare(actual: np.ndarray, expected: np.ndarray) -> None:
    assert actual.shape == expected.shape and actual.dtype == expected.dtype
    if expected.dtype.kind != "f":
        np.testing.assert_array_equal(actual, expected)
        return
    assert np.array_equal(np.isnan(actual), np.isnan(expected))
    assert np.array_equal(np.isinf(actual), np.isinf(expected))
    finite = np.isfinite(expected)
    a, e = actual[finite].astype(np.float64), expected[finite].astype(np.float64)
    if e.size == 0:
        return
    magnitude = max(np.abs(e).max(), 1e-30)
    error = np.abs(a - e).max()
    assert error <= 1e-5 * magnitude, f"max abs error {error:.3g} for magnitude {magnitude:.3g}"
    norms = np.linalg.norm(a) * np.linalg.norm(e)
    if norms > 0:
        assert a @ e / norms >= 0.99999


def check(op: str, inputs: list, ir_attrs: dict, config: str, onnx_attrs: dict | None = None,
          onnx_extra: list | None = None, evaluator="ort") -> None:
    """Compare one node on the simulator with onnxruntime. `onnx_extra`: inputs only the ONNX form has."""
    expected = _onnx_reference(op, inputs + (onnx_extra or []), onnx_attrs or {}, evaluator)
    _compare(_simulate(op, inputs, ir_attrs, expected, config), expected[0])


def _data(shape, seed=0, scale=3.0, dtype=np.float32) -> np.ndarray:
    return (np.random.default_rng(seed).standard_normal(shape) * scale).astype(dtype)


def _x(shape, seed=0, scale=3.0):
    return [("x", _data(shape, seed, scale), False)]


# Softmax and LogSoftmax ------------------------------------------------------------------------------
SOFTMAX_CASES = [
    ((4, 10), 1),        # rows, one tile
    ((3, 5, 7), 2),
    ((2, 6, 5, 3), 1),   # channels: column orientation (segments are columns)
    ((5, 6), 0),
    ((2, 1000), 1),      # rows longer than a tiny tile: chunks with online rescaling
    ((1500, 3), 0),      # a long column
    ((40, 300), 1),
    ((7,), 0),
    ((1, 4, 300), 1),    # more than 255 columns: column tiles of at most 255
    ((2, 5, 280), 1),    # few rows of many columns: reduced by halving, odd widths
]


@pytest.mark.parametrize("config", CONFIGS)
@pytest.mark.parametrize("op", ["Softmax", "LogSoftmax"])
@pytest.mark.parametrize("shape,axis", SOFTMAX_CASES)
def test_softmax(op, shape, axis, config):
    check(op, _x(shape, scale=10.0), {"axis": axis}, config, {"axis": axis})


def test_softmax_large_values_do_not_overflow():
    x = _data((3, 50)) + np.float32(200.0)
    check("Softmax", [("x", x, False)], {"axis": 1}, "tiny", {"axis": 1})


# LayerNormalization ---------------------------------------------------------------------------------
@pytest.mark.parametrize("config", CONFIGS)
@pytest.mark.parametrize("shape,axis,bias,constant", [
    ((4, 16), 1, True, True),
    ((2, 3, 24), 2, True, False),  # scale and bias as run-time inputs
    ((2, 3, 8), 1, False, True),   # normalised over two axes, no bias
    ((3, 384), 1, True, True),     # MiniLM's hidden size
    ((2, 2000), 1, True, True),    # longer than a tiny tile: chunked passes
])
def test_layer_norm(shape, axis, bias, constant, config):
    x = _data(shape, scale=2.0) + np.float32(1.5)
    inputs = [("x", x, False), ("scale", _data(shape[axis:], 1, 1.0), constant)]
    if bias:
        inputs.append(("bias", _data(shape[axis:], 2, 1.0), constant))
    check("LayerNormalization", inputs, {"axis": axis, "epsilon": 1e-5}, config, {"axis": axis, "epsilon": 1e-5})


def test_layer_norm_broadcast_scale():
    """A scale that broadcasts within the normalised axes."""
    x = _data((2, 3, 8))
    inputs = [("x", x, False), ("scale", _data((1, 8), 1, 1.0), True), ("bias", _data((8,), 2, 1.0), True)]
    check("LayerNormalization", inputs, {"axis": 1, "epsilon": 1e-3}, "tiny", {"axis": 1, "epsilon": 1e-3})


def test_layer_norm_refuses_used_statistics():
    graph = Graph()
    graph.add_value(Value("x", "f32", (2, 8)))
    graph.const("scale", np.ones(8, np.float32))
    for name, shape in (("y", (2, 8)), ("mean", (2, 1)), ("inv", (2, 1))):
        graph.add_value(Value(name, "f32", shape))
    graph.inputs, graph.outputs = ["x"], ["y", "mean"]
    graph.nodes.append(Node("LayerNormalization", ["x", "scale"], ["y", "mean", "inv"],
                            {"axis": 1, "epsilon": 1e-5}, "ln"))
    with pytest.raises(UnsupportedOpError, match="Mean/InvStdDev"):
        generate(graph, _config("tiny"))


# Reductions -----------------------------------------------------------------------------------------
REDUCE_OPS = ["ReduceSum", "ReduceMean", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceL1", "ReduceL2",
              "ReduceSumSquare", "ReduceLogSum", "ReduceLogSumExp"]
REDUCE_CASES = [
    ((3, 4, 5), [2], 1),
    ((3, 4, 5), [1], 0),      # a middle axis: column orientation
    ((3, 4, 5), [0, 2], 1),   # axes that are not adjacent
    ((3, 4, 5), [], 0),       # all
    ((2, 3, 4, 5), [1, 3], 0),
    ((4, 1, 6), [1], 1),      # a size-1 axis
]


def _positive(op: str) -> bool:
    return op in ("ReduceLogSum", "ReduceProd")


def _reduce_input(op, shape, seed=0):
    if op == "ReduceLogSum":
        return _data(shape, seed, 1.0) ** 2 + np.float32(0.1)
    if op == "ReduceProd":  # products of many numbers near 1 stay in range
        return (np.float32(1.0) + _data(shape, seed, 0.05))
    return _data(shape, seed)


def _check_reduce(op, shape, axes, keepdims, config, seed=0):
    x = _reduce_input(op, shape, seed)
    extra = [("axes", np.array(axes, np.int64), True)] if axes else []
    check(op, [("x", x, False)], {"axes": axes, "keepdims": keepdims}, config, {"keepdims": keepdims}, extra)


@pytest.mark.parametrize("config", CONFIGS)
@pytest.mark.parametrize("op", REDUCE_OPS)
def test_reduce(op, config):
    for shape, axes, keepdims in REDUCE_CASES:
        _check_reduce(op, shape, axes, keepdims, config)


@pytest.mark.parametrize("op,shape,axes", [
    ("ReduceSum", (3, 5000), [1]),        # long rows: partial sums combined
    ("ReduceMax", (3, 5000), [1]),
    ("ReduceProd", (2, 3000), [1]),
    ("ReduceLogSumExp", (2, 3000), [1]),
    ("ReduceMean", (3000, 7), [0]),       # a long column
    ("ReduceMin", (20, 30, 40), [0, 2]),
    ("ReduceMean", (1, 128, 384), [2]),   # MiniLM's layer-norm statistics
    ("ReduceSum", (30, 4, 50, 6), [1, 3]),  # kept axes that are not adjacent: 2-D boxes of segments
])
def test_reduce_chunked(op, shape, axes):
    _check_reduce(op, shape, axes, 1, "tiny")


@pytest.mark.parametrize("op", ["ReduceSum", "ReduceMean", "ReduceMax", "ReduceProd", "ReduceL2", "ReduceLogSumExp"])
def test_reduce_empty_set(op):
    x = np.zeros((2, 0, 4), np.float32)
    extra = [("axes", np.array([1], np.int64), True)]
    check(op, [("x", x, False)], {"axes": [1], "keepdims": 1}, "tiny", {"keepdims": 1}, extra)


@pytest.mark.parametrize("config", CONFIGS)
@pytest.mark.parametrize("op", ["GlobalAveragePool", "GlobalMaxPool"])
@pytest.mark.parametrize("shape", [(2, 3, 5, 5), (1, 64, 7, 7), (1, 4, 30, 30), (2, 3, 10)])
def test_global_pool(op, shape, config):
    check(op, _x(shape), {}, config)


# ArgMax, ArgMin, Hardmax ----------------------------------------------------------------------------
@pytest.mark.parametrize("config", CONFIGS)
@pytest.mark.parametrize("op", ["ArgMax", "ArgMin"])
@pytest.mark.parametrize("shape,axis,keepdims,last", [
    ((4, 10), 1, 1, 0),
    ((3, 4, 5), 1, 0, 0),
    ((3, 4, 5), 0, 1, 1),
    ((2, 3000), 1, 1, 0),  # chunks: ties across chunks go to the first
])
def test_arg_reduce(op, shape, axis, keepdims, last, config):
    x = np.round(_data(shape, scale=2.0))  # rounded: many ties
    attrs = {"axis": axis, "keepdims": keepdims, "select_last_index": last}
    check(op, [("x", x, False)], attrs, config, attrs)


def test_arg_reduce_long_column():
    x = np.round(_data((3000, 3), scale=2.0))
    attrs = {"axis": 0, "keepdims": 0, "select_last_index": 0}
    check("ArgMin", [("x", x, False)], attrs, "tiny", attrs)


@pytest.mark.parametrize("last", [0, 1])
def test_arg_reduce_ties_across_chunks(last):
    x = np.zeros((2, 3000), np.float32)
    x[:, [5, 1500, 2999]] = 7.0
    attrs = {"axis": 1, "keepdims": 1, "select_last_index": last}
    check("ArgMax", [("x", x, False)], attrs, "tiny", attrs)


@pytest.mark.parametrize("config", CONFIGS)
@pytest.mark.parametrize("shape,axis", [((4, 10), 1), ((3, 4, 5), 1), ((2, 3000), 1)])
def test_hardmax(shape, axis, config):
    x = np.round(_data(shape, scale=2.0))
    check("Hardmax", [("x", x, False)], {"axis": axis}, config, {"axis": axis})


# Other normalisations ---------------------------------------------------------------------------------
@pytest.mark.parametrize("config", CONFIGS)
@pytest.mark.parametrize("shape,constant", [((2, 3, 5, 5), True), ((1, 8, 20, 20), False), ((2, 4, 9), True),
                                            ((1, 2, 3000), False)])
def test_instance_norm(shape, constant, config):
    channels = shape[1]
    inputs = [("x", _data(shape) + np.float32(2.0), False), ("scale", _data((channels,), 1, 1.0), constant),
              ("bias", _data((channels,), 2, 1.0), constant)]
    check("InstanceNormalization", inputs, {"epsilon": 1e-5}, config, {"epsilon": 1e-5})


@pytest.mark.parametrize("config", CONFIGS)
@pytest.mark.parametrize("shape,axis,p", [((4, 10), 1, 2), ((3, 4, 5), 1, 1), ((3, 4, 5), 0, 2)])
def test_lp_normalization(shape, axis, p, config):
    check("LpNormalization", _x(shape), {"axis": axis, "p": p}, config, {"axis": axis, "p": p})


@pytest.mark.parametrize("config", CONFIGS)
@pytest.mark.parametrize("shape,size,alpha,beta,bias", [
    ((1, 5, 4, 4), 3, 1e-4, 0.75, 1.0),
    ((2, 16, 5, 5), 5, 0.01, 0.75, 2.0),
    ((1, 8, 3, 3), 2, 0.5, 0.5, 1.0),   # an even window: one more channel after than before
    ((1, 96, 13, 13), 5, 1e-4, 0.75, 1.0),
])
def test_lrn(shape, size, alpha, beta, bias, config):
    attrs = {"size": size, "alpha": alpha, "beta": beta, "bias": bias}
    # onnxruntime implements odd sizes only (and onnx's reference evaluator sums the wrong axis).
    check("LRN", _x(shape), attrs, config, attrs, evaluator="ort" if size % 2 else _lrn_reference)


def _lrn_reference(x, size, alpha, beta, bias):
    """The spec: the window of channel c is [c - floor((size-1)/2), c + ceil((size-1)/2)], clipped."""
    squares = x.astype(np.float64) ** 2
    window = np.zeros_like(squares)
    channels = x.shape[1]
    for c in range(channels):
        window[:, c] = squares[:, max(0, c - (size - 1) // 2):min(channels, c + size // 2 + 1)].sum(axis=1)
    return [(x / (bias + alpha / size * window) ** beta).astype(np.float32)]


def test_lrn_many_channels_on_tiny():
    """More channels than fit one tiny tile: channel blocks with a halo."""
    attrs = {"size": 5, "alpha": 0.1, "beta": 0.75, "bias": 1.0}
    check("LRN", _x((1, 600, 4, 4)), attrs, "tiny", attrs)


@pytest.mark.parametrize("op,opset,shape,attrs", [
    ("Softmax", 11, (2, 3, 4, 5), {"axis": 1}),  # before opset 13: flattened to 2-D at axis
    ("LogSoftmax", 11, (2, 3, 4), {}),
    ("ReduceMean", 13, (2, 3, 4), {"axes": [-1, 0], "keepdims": 0}),
])
def test_through_the_front_end(op, opset, shape, attrs):
    """Older opsets' forms, as the importer normalises them, compiled by compiler.pipeline."""
    from compiler.pipeline import compile as compile_model

    x = _data(shape)
    node = helper.make_node(op, ["x"], ["y"], **attrs)
    graph = helper.make_graph([node], "case", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, shape)],
                              [onnx.ValueInfoProto(name="y")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    model = onnx.shape_inference.infer_shapes(model, strict_mode=True)
    expected = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})
    result = run(compile_model(model, "tiny", verify_each=True), {"x": x}, check_hazards=True)
    assert not result.hazards
    _compare(next(iter(result.outputs.values())), expected[0])


def test_integer_input_is_refused():
    x = np.arange(12, dtype=np.int32).reshape(3, 4)
    with pytest.raises(UnsupportedOpError, match="f32 only"):
        _simulate("ReduceSum", [("x", x, False)], {"axes": [1], "keepdims": 1}, [np.zeros((3, 1), np.int32)],
                  "tiny")
