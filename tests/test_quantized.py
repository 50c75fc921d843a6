"""int8 execution against onnxruntime: the quantization nodes, the integer matrix ops
(QLinearConv/QLinearMatMul/ConvInteger/MatMulInteger) node by node on tiny (tiling forced)
and edge, QDQ graphs that fuse_qdq turns into them, and the digits models quantized by
onnxruntime's quantize_static.

Integer outputs must be identical to onnxruntime's. The weights of the u8 x i8 products
are drawn from [-64, 63] (7 bits, as quantize_static's reduce_range makes them): with full
8-bit weights onnxruntime's AVX2 u8s8 kernels saturate the int16 sum of two products
(2 * 255 * 127 > 32767) and are then no reference.
"""

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import compiler.codegen.kernels.conv as conv_kernels
from compiler.errors import UnsupportedOpError
from compiler.frontend import import_model
from compiler.pipeline import compile, run_passes
from models.digits.data import load_split
from runtime.compare import reference_outputs
from runtime.simulator import run

CONFIGS = ["tiny", "edge"]
F, U8, I8, I32 = TensorProto.FLOAT, TensorProto.UINT8, TensorProto.INT8, TensorProto.INT32
ELEM = {np.dtype(np.uint8): U8, np.dtype(np.int8): I8, np.dtype(np.int32): I32, np.dtype(np.float32): F}


def make(nodes, inputs, outputs, initializers=(), opset=17):
    """A checked model; inputs/outputs are (name, elem_type, shape) triples (shape None: inferred)."""
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info(*i) for i in inputs],
                              [helper.make_tensor_value_info(*o) for o in outputs],
                              [numpy_helper.from_array(np.asarray(a), n) for n, a in initializers])
    model = onnx.shape_inference.infer_shapes(helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)]),
                                              strict_mode=True)
    onnx.checker.check_model(model, full_check=True)
    return model


def simulate(model, config, feeds):
    """acc's outputs for `feeds` (the program is hazard-free)."""
    result = run(compile(model, config), feeds, check_hazards=True)
    assert not result.hazards
    return result.outputs


def optimised(model, feeds):
    """onnxruntime with its default graph optimisations (QDQ fusion into its integer kernels)."""
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return dict(zip([o.name for o in session.get_outputs()], session.run(None, feeds), strict=True))


def assert_identical(actual, expected):
    for name, value in expected.items():
        assert actual[name].dtype == value.dtype, (name, actual[name].dtype, value.dtype)
        assert actual[name].shape == value.shape, (name, actual[name].shape, value.shape)
        different = np.count_nonzero(actual[name] != value)
        assert different == 0, f"{name}: {different} of {value.size} values differ, max " \
                               f"{np.abs(actual[name].astype(np.int64) - value.astype(np.int64)).max()}"


def integers(rng, dtype, shape, low=None, high=None):
    info = np.iinfo(dtype)
    return rng.integers(info.min if low is None else low, (info.max if high is None else high) + 1, size=shape,
                        dtype=np.int64).astype(dtype)


def seven_bit_weights(rng, shape):
    return integers(rng, np.int8, shape, -64, 63)


# QuantizeLinear / DequantizeLinear ------------------------------------------------------------------
@pytest.mark.parametrize("config", CONFIGS)
@pytest.mark.parametrize("dtype", [np.uint8, np.int8])
@pytest.mark.parametrize("per_axis", [False, True], ids=["per_tensor", "per_axis"])
def test_quantize_linear(config, dtype, per_axis):
    rng = np.random.default_rng(1)
    shape = (2, 4, 5, 6)
    # Scales are powers of two, so k + 0.5 steps is exactly a tie: round half to even decides.
    scale = np.array([0.25, 0.5, 1.0, 2.0], np.float32) if per_axis else np.array(0.25, np.float32)
    zero = integers(rng, dtype, scale.shape, -20 if dtype == np.int8 else 100, 20 if dtype == np.int8 else 150)
    steps = (np.arange(np.prod(shape)) % 41 - 20).reshape(shape) + 0.5  # -19.5 .. 20.5, every one a tie
    steps[0, :, 0, :2] = [-1e4, 1e4]  # saturate at both ends
    steps[1, :, 4, :] = rng.standard_normal((4, 6)) * 300  # and some ordinary values, many saturating
    x = (steps * scale.reshape(-1, 1, 1) if per_axis else steps * scale).astype(np.float32)
    model = make([helper.make_node("QuantizeLinear", ["x", "s", "z"], ["y"], axis=1)], [("x", F, shape)],
                 [("y", ELEM[np.dtype(dtype)], shape)], [("s", scale), ("z", zero)])
    expected = reference_outputs(model, {"x": x})
    info = np.iinfo(dtype)
    assert np.any(expected["y"] == info.min) and np.any(expected["y"] == info.max)
    ties = np.ones(shape, bool)
    ties[0, :, 0, :2] = ties[1, :, 4, :] = False
    centred = expected["y"].astype(np.int64) - (zero.reshape(-1, 1, 1) if per_axis else zero)
    assert np.all(centred[ties] % 2 == 0)  # every tie went to the even neighbour (away from zero: half odd)
    assert_identical(simulate(model, config, {"x": x}), expected)


@pytest.mark.parametrize("config", CONFIGS)
@pytest.mark.parametrize("dtype", [np.uint8, np.int8, np.int32])
def test_dequantize_linear_per_axis(config, dtype):
    rng = np.random.default_rng(2)
    shape = (3, 5, 7)
    x = integers(rng, dtype, shape, -1000 if dtype == np.int32 else None, 1000 if dtype == np.int32 else None)
    scale = rng.uniform(0.001, 0.1, 5).astype(np.float32)
    zero = integers(rng, dtype, (5,), -10 if dtype != np.uint8 else 100, 10 if dtype != np.uint8 else 150)
    if dtype == np.int32:  # an int32 zero point must be 0
        zero[:] = 0
    model = make([helper.make_node("DequantizeLinear", ["x", "s", "z"], ["y"], axis=1)],
                 [("x", ELEM[np.dtype(dtype)], shape)], [("y", F, shape)], [("s", scale), ("z", zero)])
    expected = reference_outputs(model, {"x": x})
    assert_identical(simulate(model, config, {"x": x}), expected)


# QLinearConv -----------------------------------------------------------------------------------
CONV_CASES = {  # x shape, cout, kernel, attrs, x dtype, path the kernel takes (on tiny and edge when two)
    "pad1": ((1, 3, 10, 10), 8, (3, 3), dict(pads=[1, 1, 1, 1]), np.uint8, "patch"),
    "stride2_asym_pad": ((2, 5, 11, 9), 6, (3, 2), dict(pads=[1, 0, 2, 1], strides=[2, 2]), np.uint8, "filters"),
    "groups2": ((1, 4, 7, 7), 6, (3, 3), dict(group=2, pads=[1, 1, 1, 1]), np.uint8, "patch"),
    "depthwise": ((1, 6, 9, 9), 6, (3, 3), dict(group=6, pads=[1, 1, 1, 1], strides=[2, 2]), np.uint8, "filters"),
    "many_channels": ((1, 16, 4, 4), 64, (3, 3), dict(), np.uint8, "patch"),
    "many_channels_i8": ((2, 12, 3, 3), 40, (2, 2), dict(pads=[1, 1, 0, 0]), np.int8, ("filters", "patch")),
    "i8_activations": ((1, 3, 8, 8), 5, (3, 3), dict(pads=[1, 1, 1, 1]), np.int8, "patch"),
    "dilated_wide": ((1, 5, 12, 12), 20, (3, 3), dict(pads=[1, 1, 1, 1], dilations=[2, 2]), np.uint8, "filters"),
    # Pixel tiles across row ends: the pixels moved out of their row hold the zero point. Filters
    # stationary in channel blocks on tiny.
    "row_ends": ((1, 6, 3, 20), 64, (3, 3), dict(pads=[1, 1, 1, 1]), np.uint8, ("filters", "patch")),
    "row_ends_i8": ((1, 5, 9, 13), 7, (3, 3), dict(pads=[1, 1, 1, 1]), np.int8, "patch"),
    "row_ends_channel_blocks_i8": ((1, 16, 7, 7), 64, (3, 3), dict(pads=[1, 1, 1, 1]), np.int8, "filters"),
    # u8 weights (full range: onnxruntime's u8u8 kernels do not saturate), one scale, no bias, x_zero 0.
    "u8_weights_per_tensor": ((1, 5, 12, 12), 20, (1, 1), dict(), np.uint8, "patch"),
    # A stem: space-to-depth on edge (the padding, extended to even sizes, holds the zero point).
    "stem": ((1, 3, 21, 19), 16, (7, 7), dict(pads=[3, 3, 3, 3], strides=[2, 2]), np.uint8, "filters"),
}


def conv_path(monkeypatch) -> list[str]:
    """Records which of conv.py's two loop orders each convolution takes."""
    taken = []
    for name in ("filters_stationary", "patch_stationary"):
        original = getattr(conv_kernels, name)

        def spy(*args, _original=original, _name=name, **kwargs):
            taken.append(_name.split("_")[0])
            return _original(*args, **kwargs)

        monkeypatch.setattr(conv_kernels, name, spy)
    return taken


@pytest.mark.parametrize("config", CONFIGS)
@pytest.mark.parametrize("case", CONV_CASES)
def test_qlinear_conv(config, case, monkeypatch):
    x_shape, cout, kernel, attrs, x_dtype, path = CONV_CASES[case]
    rng = np.random.default_rng(3)
    group = attrs.get("group", 1)
    x = integers(rng, x_dtype, x_shape)
    x_scale, y_scale = np.float32(0.02), np.float32(0.07)
    x_zero = np.array(131 if x_dtype == np.uint8 else -7, x_dtype)  # non-zero: folded into the bias, padding
    y_zero = np.array(119 if x_dtype == np.uint8 else -9, x_dtype)  # onnxruntime: y has x's type
    inputs = ["x", "xs", "xz", "w", "ws", "wz", "ys", "yz", "b"]
    if case == "u8_weights_per_tensor":
        w = integers(rng, np.uint8, (cout, x_shape[1], *kernel))
        w_scale, w_zero, x_zero, y_scale, inputs = np.float32(0.004), np.array(0, np.uint8), x_zero * 0, \
            np.float32(0.5), inputs[:-1]
    else:
        w = seven_bit_weights(rng, (cout, x_shape[1] // group, *kernel))
        w_scale, w_zero = rng.uniform(0.002, 0.02, cout).astype(np.float32), np.zeros(cout, np.int8)  # per channel
    bias = rng.integers(-3000, 3000, cout).astype(np.int32)
    node = helper.make_node("QLinearConv", inputs, ["y"], kernel_shape=list(kernel), **attrs)
    model = make([node], [("x", ELEM[x.dtype], x_shape)], [("y", ELEM[x.dtype], None)],
                 [("xs", x_scale), ("xz", x_zero), ("w", w), ("ws", w_scale), ("wz", w_zero), ("ys", y_scale),
                  ("yz", y_zero)] + [("b", bias)] * ("b" in inputs))
    expected = reference_outputs(model, {"x": x})
    # Neither end of the range dominates: the test sees requantization, not only saturation.
    info = np.iinfo(x_dtype)
    assert 0.05 < np.mean((expected["y"] > info.min) & (expected["y"] < info.max))
    taken = conv_path(monkeypatch)
    assert_identical(simulate(model, config, {"x": x}), expected)
    assert taken == [path if isinstance(path, str) else path[CONFIGS.index(config)]]


@pytest.mark.parametrize("config", CONFIGS)
def test_conv_integer(config):
    """ConvInteger: int32 out, x zero point non-zero, weights' zero point 0 (u8 weights, as onnxruntime has it)."""
    rng = np.random.default_rng(4)
    x = integers(rng, np.uint8, (2, 3, 9, 9))
    w = integers(rng, np.uint8, (7, 3, 3, 3))
    node = helper.make_node("ConvInteger", ["x", "w", "xz", "wz"], ["y"], pads=[1, 1, 1, 1], strides=[1, 2])
    model = make([node], [("x", U8, x.shape)], [("y", I32, None)],
                 [("w", w), ("xz", np.array(37, np.uint8)), ("wz", np.array(0, np.uint8))])
    expected = reference_outputs(model, {"x": x})
    assert_identical(simulate(model, config, {"x": x}), expected)


# QLinearMatMul / MatMulInteger ------------------------------------------------------------------
@pytest.mark.parametrize("config", CONFIGS)
@pytest.mark.parametrize("a_shape,n", [((5, 70), 33), ((2, 9, 40), 20), ((1, 100), 10)])
@pytest.mark.parametrize("dtype", [np.uint8, np.int8])
def test_qlinear_matmul(config, a_shape, n, dtype):
    rng = np.random.default_rng(5)
    a = integers(rng, dtype, a_shape)
    b = seven_bit_weights(rng, (a_shape[-1], n))
    a_zero = np.array(140 if dtype == np.uint8 else 9, dtype)
    y_zero = np.array(-5 if dtype == np.int8 else 128, dtype)
    node = helper.make_node("QLinearMatMul", ["a", "as", "az", "b", "bs", "bz", "ys", "yz"], ["y"])
    model = make([node], [("a", ELEM[a.dtype], a_shape)], [("y", ELEM[a.dtype], None)],
                 [("as", np.float32(0.03)), ("az", a_zero), ("b", b), ("bs", np.float32(0.004)),
                  ("bz", np.array(0, np.int8)), ("ys", np.float32(0.15)), ("yz", y_zero)])
    expected = reference_outputs(model, {"a": a})
    info = np.iinfo(dtype)
    assert 0.05 < np.mean((expected["y"] > info.min) & (expected["y"] < info.max))
    assert_identical(simulate(model, config, {"a": a}), expected)


@pytest.mark.parametrize("config", CONFIGS)
def test_requantization_multiplier_in_onnxruntimes_order(config):
    """Every product a * b (a - 128 in -128..127, b in -64..63) requantized with scales (found by
    search) for which fp32 (x_scale * w_scale) / y_scale, x_scale * (w_scale / y_scale) and
    (x_scale / y_scale) * w_scale are three different multipliers that round a few products
    differently: only onnxruntime's order, the first, gives its output."""
    xs, ws, ys = np.float32(0.04909458), np.float32(0.011966788), np.float32(0.14272058)
    a = np.arange(256, dtype=np.uint8).reshape(256, 1)
    b = np.arange(-64, 64, dtype=np.int8).reshape(1, 128)
    node = helper.make_node("QLinearMatMul", ["a", "as", "az", "b", "bs", "bz", "ys", "yz"], ["y"])
    model = make([node], [("a", U8, a.shape)], [("y", U8, None)],
                 [("as", xs), ("az", np.array(128, np.uint8)), ("b", b), ("bs", ws), ("bz", np.array(0, np.int8)),
                  ("ys", ys), ("yz", np.array(128, np.uint8))])
    expected = reference_outputs(model, {"a": a})
    products = ((a.astype(np.int32) - 128) * b.astype(np.int32)).astype(np.float32)
    for other in (xs * (ws / ys), (xs / ys) * ws):
        assert not np.array_equal(np.clip(np.rint(products * other) + 128, 0, 255), expected["y"])
    assert_identical(simulate(model, config, {"a": a}), expected)


@pytest.mark.parametrize("config", CONFIGS)
@pytest.mark.parametrize("dtype", [np.uint8, np.int8])
def test_matmul_integer(config, dtype):
    rng = np.random.default_rng(6)
    a = integers(rng, np.uint8, (2, 6, 45))
    # i8: 7-bit, as everywhere here (full-range i8 b makes onnxruntime's u8s8 MatMulInteger saturate).
    b = integers(rng, dtype, (45, 19)) if dtype == np.uint8 else seven_bit_weights(rng, (45, 19))
    node = helper.make_node("MatMulInteger", ["a", "b", "az", "bz"], ["y"])
    model = make([node], [("a", U8, a.shape)], [("y", I32, None)],
                 [("b", b), ("az", np.array(201, np.uint8)), ("bz", np.array(0, dtype))])
    expected = reference_outputs(model, {"a": a})
    assert_identical(simulate(model, config, {"a": a}), expected)


@pytest.mark.parametrize("op", ["QLinearConv", "QLinearMatMul", "ConvInteger", "MatMulInteger"])
def test_nonzero_weight_zero_point_is_refused(op):
    w = np.ones((4, 2, 1, 1) if "Conv" in op else (2, 4), np.int8)
    wz = np.array(3, np.int8)
    if op.startswith("QLinear"):
        node = helper.make_node(op, ["x", "xs", "xz", "w", "ws", "wz", "ys", "yz"], ["y"])
        initializers = [("xs", np.float32(1)), ("xz", np.array(0, np.int8)), ("w", w), ("ws", np.float32(1)),
                        ("wz", wz), ("ys", np.float32(1)), ("yz", np.array(0, np.int8))]
        out = I8
    else:
        node = helper.make_node(op, ["x", "w", "", "wz"], ["y"])
        initializers, out = [("w", w), ("wz", wz)], I32
    model = make([node], [("x", I8, (1, 2, 3, 3) if "Conv" in op else (3, 2))], [("y", out, None)], initializers)
    with pytest.raises(UnsupportedOpError, match="non-zero weight zero point"):
        compile(model, "edge")


# QDQ graphs -------------------------------------------------------------------------------------
def qdq_model(body: str):
    """x (float) -> Q -> DQ -> body -> ..., weights i8 per channel with an int32 bias, as quantize_static makes them."""
    rng = np.random.default_rng(7)
    x_scale, x_zero = np.float32(4.0 / 255), np.array(128, np.uint8)
    y_scale, y_zero = np.float32(0.05), np.array(3, np.uint8)
    nodes = [helper.make_node("QuantizeLinear", ["x", "xs", "xz"], ["xq"]),
             helper.make_node("DequantizeLinear", ["xq", "xs", "xz"], ["xd"])]
    init = [("xs", x_scale), ("xz", x_zero), ("ys", y_scale), ("yz", y_zero)]
    x_shape, y_type, y_shape, fused = (2, 3, 8, 8), U8, None, None
    if body in ("conv_relu", "conv_clip6"):
        w = seven_bit_weights(rng, (8, 3, 3, 3))
        # Clip: larger products, so that some exceed 6.
        w_scale = (rng.uniform(0.003, 0.01, 8) * (3 if body == "conv_clip6" else 1)).astype(np.float32)
        bias = rng.integers(-500, 500, 8).astype(np.int32)
        init += [("w", w), ("ws", w_scale), ("wz", np.zeros(8, np.int8)), ("b", bias), ("bs", x_scale * w_scale),
                 ("bz", np.zeros(8, np.int32))]
        nodes += [helper.make_node("DequantizeLinear", ["w", "ws", "wz"], ["wd"], axis=0),
                  helper.make_node("DequantizeLinear", ["b", "bs", "bz"], ["bd"], axis=0),
                  helper.make_node("Conv", ["xd", "wd", "bd"], ["c"], pads=[1, 1, 1, 1])]
        if body == "conv_relu":
            nodes.append(helper.make_node("Relu", ["c"], ["a"]))
        else:
            init += [("lo", np.float32(0)), ("hi", np.float32(6))]
            nodes.append(helper.make_node("Clip", ["c", "lo", "hi"], ["a"]))
            # Q(0) = 20 and Q(6) = 220: both bounds of the Clip are inside the u8 range.
            init[2:4] = [("ys", np.float32(0.03)), ("yz", np.array(20, np.uint8))]
        nodes.append(helper.make_node("QuantizeLinear", ["a", "ys", "yz"], ["y"]))
        fused = "QLinearConv"
    elif body == "conv_float":  # no bias, no Q: the int32 sum dequantized per channel
        w = seven_bit_weights(rng, (6, 3, 2, 2))
        w_scale = rng.uniform(0.003, 0.01, 6).astype(np.float32)
        init += [("w", w), ("ws", w_scale), ("wz", np.zeros(6, np.int8))]
        nodes += [helper.make_node("DequantizeLinear", ["w", "ws", "wz"], ["wd"], axis=0),
                  helper.make_node("Conv", ["xd", "wd"], ["y"], strides=[2, 2])]
        y_type, fused = F, "QLinearConv"
    elif body == "matmul_3d":  # weights per column (axis 1), i8 output
        x_shape = (2, 7, 24)
        w = seven_bit_weights(rng, (24, 12))
        w_scale = rng.uniform(0.003, 0.01, 12).astype(np.float32)
        init += [("w", w), ("ws", w_scale), ("wz", np.zeros(12, np.int8)), ("qs", np.float32(0.02)),
                 ("qz", np.array(-4, np.int8))]
        nodes += [helper.make_node("DequantizeLinear", ["w", "ws", "wz"], ["wd"], axis=1),
                  helper.make_node("MatMul", ["xd", "wd"], ["m"]),
                  helper.make_node("QuantizeLinear", ["m", "qs", "qz"], ["y"])]
        y_type, fused = I8, "QLinearMatMul"
    elif body == "gemm_float":
        x_shape, y_type = (5, 48), F
        w = seven_bit_weights(rng, (10, 48))
        w_scale = rng.uniform(0.003, 0.01, 10).astype(np.float32)
        init += [("w", w), ("ws", w_scale), ("wz", np.zeros(10, np.int8)), ("b", rng.standard_normal(10) * 0.3)]
        init[-1] = ("b", init[-1][1].astype(np.float32))
        nodes += [helper.make_node("DequantizeLinear", ["w", "ws", "wz"], ["wd"], axis=0),
                  helper.make_node("Gemm", ["xd", "wd", "b"], ["y"], transB=1)]
        fused = "QLinearMatMul"
    elif body == "maxpool":
        nodes += [helper.make_node("MaxPool", ["xd"], ["p"], kernel_shape=[2, 2], strides=[2, 2]),
                  helper.make_node("QuantizeLinear", ["p", "xs", "xz"], ["y"])]
    else:  # reshape
        init.append(("shape", np.array([2, -1], np.int64)))
        nodes += [helper.make_node("Reshape", ["xd", "shape"], ["r"]),
                  helper.make_node("QuantizeLinear", ["r", "xs", "xz"], ["y"])]
    model = make(nodes, [("x", F, x_shape)], [("y", y_type, y_shape)], init, opset=13)
    x = (rng.standard_normal(x_shape) * 1.2).astype(np.float32)
    return model, {"x": x}, fused


@pytest.mark.parametrize("config", CONFIGS)
@pytest.mark.parametrize("body", ["conv_relu", "conv_clip6", "conv_float", "gemm_float", "matmul_3d", "maxpool",
                                  "reshape"])
def test_qdq_graph(config, body):
    model, feeds, fused = qdq_model(body)
    graph = run_passes(import_model(model))
    ops = [node.op for node in graph.nodes]
    if fused:
        assert fused in ops and not {"Conv", "MatMul", "Gemm", "Relu", "Clip"} & set(ops), ops
    else:  # MaxPool / Reshape run on the integers: no DequantizeLinear is left to feed them
        assert "DequantizeLinear" not in ops, ops
    actual = simulate(model, config, feeds)
    # The fused activation clamps: values reach its bounds (Relu: the zero point 3; Clip: Q(0), Q(6)).
    if body == "conv_relu":
        assert actual["y"].min() == 3 and np.mean(actual["y"] == 3) > 0.2
    elif body == "conv_clip6":
        assert actual["y"].min() == 20 and actual["y"].max() == 220 and np.mean(actual["y"] == 220) > 0.02
    # Both onnxruntimes: optimised (its QDQ fusion: the same integer kernels) and as written.
    for expected in (optimised(model, feeds), reference_outputs(model, feeds)):
        if y_type_of(model) != F:
            assert_identical(actual, expected)
            continue
        # A float result: acc dequantizes the exact int32 sum once, with the bias rounded to the
        # accumulator's scale x_scale * w_scale[c] (at most half a step off); onnxruntime adds
        # the float bias to a float sum whose rounding error is far below a step for 48 terms.
        # So within one step of the accumulator, per output channel.
        step = np.float32(4.0 / 255) * model_weight_scale(model)
        step = step.reshape(-1, 1, 1) if body == "conv_float" else step
        assert np.all(np.abs(actual["y"] - expected["y"]) <= step), np.abs(actual["y"] - expected["y"]).max()


def y_type_of(model):
    return model.graph.output[0].type.tensor_type.elem_type


def model_weight_scale(model):
    return numpy_helper.to_array(next(i for i in model.graph.initializer if i.name == "ws"))


# The digits models quantized by onnxruntime ---------------------------------------------------------
DIGITS = {"cnn": "image", "mlp": "pixels"}


def quantize_digits(kind: str, directory, reduce_range: bool = True) -> onnx.ModelProto:
    """models/digits/digits_{kind}.onnx through quant_pre_process and quantize_static: QDQ, per
    channel, u8 activations, i8 weights, MinMax calibrated on the training split."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    x_train = load_split(kind)[0]

    class Reader(CalibrationDataReader):
        # Batches of 128: MinMax takes the minimum and maximum over all of them, the same ranges
        # as image by image, in a fraction of the time.
        def __init__(self):
            self.feeds = iter({DIGITS[kind]: x_train[i:i + 128]} for i in range(0, len(x_train), 128))

        def get_next(self):
            return next(self.feeds, None)

    prepared, quantized = directory / f"{kind}_pre.onnx", directory / f"{kind}_qdq_{int(reduce_range)}.onnx"
    quant_pre_process(f"models/digits/digits_{kind}.onnx", str(prepared))
    quantize_static(str(prepared), str(quantized), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, reduce_range=reduce_range)
    return onnx.load(str(quantized))


def digits_outputs(model: onnx.ModelProto, kind: str) -> tuple[np.ndarray, dict, np.ndarray]:
    """(acc's logits on edge, the test-split feeds, labels); the whole split as one batch."""
    _, _, x_test, y_test = load_split(kind)
    feeds = {DIGITS[kind]: x_test}
    program = compile(model, "edge", input_shapes={DIGITS[kind]: x_test.shape})
    ops = {node.op for node in run_passes(import_model(model, {DIGITS[kind]: x_test.shape})).nodes}
    assert {"Conv", "Gemm", "MatMul"}.isdisjoint(ops), ops  # every product runs on the integers
    return run(program, feeds).outputs[program.outputs[0].name], feeds, y_test


def output_step(model: onnx.ModelProto) -> np.float32:
    """The scale of the DequantizeLinear that makes the output: one quantization step of it."""
    final = next(n for n in model.graph.node if n.output[0] == model.graph.output[0].name)
    assert final.op_type == "DequantizeLinear"
    return next(numpy_helper.to_array(i) for i in model.graph.initializer if i.name == final.input[1])


@pytest.mark.parametrize("kind,accuracy", [pytest.param("cnn", 0.98, marks=pytest.mark.slow), ("mlp", 0.97)])
def test_digits_quantized_by_onnxruntime(kind, accuracy, tmp_path):
    model = quantize_digits(kind, tmp_path)
    logits, feeds, labels = digits_outputs(model, kind)
    expected = optimised(model, feeds)[model.graph.output[0].name]
    unoptimised = reference_outputs(model, feeds)[model.graph.output[0].name]
    step = output_step(model)
    identical, as_written = np.mean(logits == expected), np.mean(logits == unoptimised)
    print(f"digits {kind} int8: {identical:.4%} of outputs identical to onnxruntime ({as_written:.4%} to it "
          f"unoptimised), accuracy {np.mean(logits.argmax(1) == labels):.4%}")
    # Acceptance: at least 99.9% identical, the rest within one quantization step of the output.
    # (Measured: 100% identical to the optimised session, which runs the same integer kernels;
    # the unoptimised one, float ops between DQ and Q, rounds a few values the other way.)
    assert identical >= 0.999
    assert np.abs(logits - expected).max() <= step * 1.0001
    assert np.abs(logits - unoptimised).max() <= step * 1.0001
    assert np.mean(logits.argmax(1) == labels) >= accuracy


def test_digits_mlp_full_range_equals_onnxruntime_unoptimised(tmp_path):
    """Without reduce_range the weights use all 8 bits: onnxruntime's optimised session (its
    fused u8s8 kernels, int16 pair sums on AVX2) then saturates and is no reference; acc's exact
    int32 sums equal onnxruntime with graph optimisations disabled, value for value."""
    model = quantize_digits("mlp", tmp_path, reduce_range=False)
    logits, feeds, _ = digits_outputs(model, "mlp")
    name = model.graph.output[0].name
    unoptimised = reference_outputs(model, feeds)[name]
    print(f"digits mlp int8 full range: {np.mean(logits == unoptimised):.4%} identical to onnxruntime unoptimised, "
          f"{np.mean(logits == optimised(model, feeds)[name]):.4%} to it optimised")
    assert np.array_equal(logits, unoptimised)
