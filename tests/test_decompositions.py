"""Ops the importer decomposes into IR ops that have kernels (compiler/frontend/decompose_*.py), end to end.

Each case is a one-node ONNX model, compiled for `edge` and simulated; every output must
match onnxruntime's within 1e-5 of that output's magnitude (bool and integer outputs
exactly, NaNs where onnxruntime has them). Where onnxruntime lacks the op or departs from
the spec, onnx's reference evaluator is the reference, and the test says why. Refusals
name the op and the reason.
"""

from __future__ import annotations

import ml_dtypes
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper
from onnx.reference import ReferenceEvaluator

import compiler
from compiler.codegen.kernels import ALIASES, KERNELS
from compiler.errors import UnsupportedOpError
from compiler.frontend import import_model
from isa.errors import SimulationError
from runtime.simulator import run

RNG = np.random.default_rng(0)


class Const(np.ndarray):
    """An input given as an initializer (a compile-time constant): `np.asarray(data).view(Const)`."""


def const(data) -> Const:
    return np.asarray(data).view(Const)


def model(op: str, inputs: dict, outputs: list[str], opset: int, **attrs) -> onnx.ModelProto:
    """A checked one-node model; `inputs` maps the node's inputs, in order, to example arrays: graph
    inputs, `const(...)` initializers, or None for an absent optional input."""
    node = helper.make_node(op, [name if array is not None else "" for name, array in inputs.items()], outputs,
                            name="node", **attrs)
    graph = helper.make_graph(
        [node], "g",
        [helper.make_tensor_value_info(n, helper.np_dtype_to_tensor_dtype(a.dtype), a.shape)
         for n, a in inputs.items() if a is not None and not isinstance(a, Const)],
        [onnx.ValueInfoProto(name=o) for o in outputs if o],
        [numpy_helper.from_array(np.asarray(a), n) for n, a in inputs.items() if isinstance(a, Const)])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    proto.ir_version = 10
    proto = onnx.shape_inference.infer_shapes(proto, strict_mode=True)
    onnx.checker.check_model(proto)
    return proto


def check(op: str, inputs: dict, outputs: list[str], opset: int, reference: str = "ort",
          **attrs) -> dict[str, np.ndarray]:
    """Compile and simulate the one-node model and compare it with `reference` ("ort" or "onnx")."""
    proto = model(op, inputs, outputs, opset, **attrs)
    graph = import_model(proto)
    assert {node.op for node in graph.nodes} <= set(KERNELS) | ALIASES, "an op without a kernel was emitted"
    feeds = {n: np.asarray(a) for n, a in inputs.items() if a is not None and not isinstance(a, Const)}
    got = run(compiler.compile(proto, "edge"), feeds).outputs
    if reference == "ort":
        session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
        expected = session.run([o for o in outputs if o], feeds)
    else:
        expected = ReferenceEvaluator(proto).run(None, feeds)
    for name, want in zip([o for o in outputs if o], expected, strict=True):
        assert_close(name, got[name], np.asarray(want))
    return got


def assert_close(name: str, got: np.ndarray, want: np.ndarray) -> None:
    assert got.shape == want.shape and got.dtype == want.dtype, (name, got.shape, got.dtype, want.shape, want.dtype)
    if want.dtype.kind not in "fV":
        np.testing.assert_array_equal(got, want, err_msg=name)
        return
    got, want = got.astype(np.float64), want.astype(np.float64)
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want), err_msg=f"{name}: NaN positions")
    finite = np.isfinite(want)
    np.testing.assert_array_equal(got[~finite & ~np.isnan(want)], want[~finite & ~np.isnan(want)], err_msg=name)
    magnitude = np.abs(want[finite]).max(initial=0.0)
    error = np.abs(got[finite] - want[finite]).max(initial=0.0)
    assert error <= 1e-5 * max(magnitude, 1e-30), f"{name}: max error {error:.3g} for magnitude {magnitude:.3g}"


def randn(*shape, dtype=np.float32) -> np.ndarray:
    return RNG.standard_normal(shape).astype(dtype)


# Attention ----------------------------------------------------------------------------------------
def attention_inputs(b=2, hq=3, hkv=3, sq=4, skv=6, d=8, dv=8, three_d=False) -> dict:
    if three_d:
        return {"Q": randn(b, sq, hq * d), "K": randn(b, skv, hkv * d), "V": randn(b, skv, hkv * dv)}
    return {"Q": randn(b, hq, sq, d), "K": randn(b, hkv, skv, d), "V": randn(b, hkv, skv, dv)}


@pytest.mark.parametrize("shape, attrs", [
    ({}, {}),
    ({"dv": 10}, {}),
    ({"hq": 6, "hkv": 2}, {}),  # group-query: 3 query heads per key/value head
    ({"hq": 4, "hkv": 1, "sq": 1}, {}),  # multi-query decode
    ({}, {"scale": 0.3}),
    ({"three_d": True}, {"q_num_heads": 3, "kv_num_heads": 3}),
    ({"three_d": True, "hq": 6, "hkv": 2, "dv": 5}, {"q_num_heads": 6, "kv_num_heads": 2}),
    ({}, {"softcap": 2.0}),
], ids=["mha", "v_head_size", "gqa", "mqa_decode", "scale", "3d", "3d_gqa", "softcap"])
def test_attention_matches_onnxruntime(shape, attrs):
    check("Attention", attention_inputs(**shape), ["Y"], 23, **attrs)


@pytest.mark.parametrize("mask_shape", [(4, 6), (2, 1, 4, 6), (3, 4, 6), (2, 3, 4, 6)])
@pytest.mark.parametrize("dtype", [np.float32, np.bool_])
def test_attention_masks_broadcast(mask_shape, dtype):
    inputs = attention_inputs()
    mask = RNG.random(mask_shape) > 0.3 if dtype is np.bool_ else randn(*mask_shape)
    check("Attention", {**inputs, "attn_mask": mask}, ["Y"], 23)


def test_attention_causal_without_a_cache_is_the_lower_triangle():
    """Query i attends key j iff j <= i + past length: without a past, the lower triangle whatever the key count."""
    check("Attention", attention_inputs(sq=4, skv=4), ["Y"], 23, is_causal=1)
    check("Attention", attention_inputs(sq=4, skv=6), ["Y"], 23, is_causal=1)


def test_attention_past_and_present_with_causal_mask():
    inputs = {**attention_inputs(skv=2), "attn_mask": randn(4, 7), "past_key": randn(2, 3, 5, 8),
              "past_value": randn(2, 3, 5, 8)}
    check("Attention", inputs, ["Y", "present_key", "present_value"], 23, is_causal=1)


def test_attention_3d_with_past_outputs_the_4d_cache():
    inputs = {**attention_inputs(three_d=True, hq=6, hkv=2, skv=2), "attn_mask": None,
              "past_key": randn(2, 2, 5, 8), "past_value": randn(2, 2, 5, 8)}
    check("Attention", inputs, ["Y", "present_key", "present_value"], 23, q_num_heads=6, kv_num_heads=2)


@pytest.mark.parametrize("mode", [0, 1, 2, 3])
def test_attention_qk_matmul_output_modes(mode):
    """0: the raw product (onnx's reference softcaps it; onnxruntime and the spec do not), 1: softcapped,
    2: plus the mask, 3: the probabilities."""
    inputs = {**attention_inputs(), "attn_mask": randn(4, 6)}
    check("Attention", inputs, ["Y", "", "", "qk"], 23, qk_matmul_output_mode=mode, softcap=3.0)


def test_attention_short_mask_is_padded_with_minus_infinity():
    """Opset 24 lets the mask stop short of the keys (onnxruntime refuses that; onnx's reference pads)."""
    check("Attention", {**attention_inputs(), "attn_mask": randn(4, 4)}, ["Y"], 24, reference="onnx")


def test_attention_fully_masked_rows_give_zero_rows():
    """A query with no key to attend gives 0, not the NaN of an all -inf softmax, in Y and in mode 3."""
    mask = np.ones((4, 6), dtype=bool)
    mask[1] = False
    got = check("Attention", {**attention_inputs(), "attn_mask": mask}, ["Y", "", "", "qk"], 23,
                qk_matmul_output_mode=3)
    assert not got["Y"][:, :, 1].any() and not got["qk"][:, :, 1].any()


@pytest.mark.parametrize("attrs", [{}, {"is_causal": 1}])
def test_attention_nonpad_kv_seqlen(attrs):
    """An external cache: keys from nonpad_kv_seqlen[b] on are padding; causal rows end at nonpad - q_len + i.
    One batch has fewer valid keys than queries: its first rows attend nothing and are 0."""
    mask = RNG.random((2, 1, 3, 8)) > 0.2
    mask[..., :2] = True
    inputs = {**attention_inputs(hq=4, hkv=2, sq=3, skv=8), "attn_mask": mask, "past_key": None,
              "past_value": None, "nonpad_kv_seqlen": np.array([6, 2], dtype=np.int64)}
    check("Attention", inputs, ["Y"], 24, **attrs)


@pytest.mark.parametrize("attrs", [{"is_causal": 1, "left_window_size": 2}, {"left_window_size": 1, "right_window_size": 2}])
def test_attention_sliding_window(attrs):
    check("Attention", attention_inputs(), ["Y"], 25, **attrs)
    past = {**attention_inputs(skv=3), "attn_mask": None, "past_key": randn(2, 3, 4, 8),
            "past_value": randn(2, 3, 4, 8)}
    check("Attention", past, ["Y", "present_key", "present_value"], 25, **attrs)


def test_attention_window_leaving_queries_without_keys():
    """6 queries, 3 keys, keys at or after the query only: queries 3 to 5 attend nothing and give 0."""
    got = check("Attention", attention_inputs(sq=6, skv=3), ["Y"], 25, left_window_size=0)
    assert not got["Y"][:, :, 3:].any()


def test_attention_refusals_name_the_reason():
    half = {name: value.astype(np.float16) for name, value in attention_inputs().items()}
    with pytest.raises(UnsupportedOpError, match=r"'Attention'.*f16 inputs: the MatMul and Softmax kernels"):
        import_model(model("Attention", half, ["Y"], 23))
    with pytest.raises(UnsupportedOpError, match="softmax_precision f64"):
        import_model(model("Attention", attention_inputs(), ["Y"], 23, softmax_precision=TensorProto.DOUBLE))


def test_group_query_attention_stacks_heads_instead_of_copying_keys():
    graph = import_model(model("Attention", attention_inputs(hq=6, hkv=2), ["Y"], 23))
    ops = [node.op for node in graph.nodes]
    assert "Expand" not in ops and "Tile" not in ops and ops.count("MatMul") == 2


# Normalisations -----------------------------------------------------------------------------------
@pytest.mark.parametrize("axis", [-1, 1, 0])
def test_rms_normalization(axis):
    x = randn(2, 3, 5)
    scale = randn(*x.shape[axis % 3:])
    check("RMSNormalization", {"X": x, "scale": scale}, ["Y"], 23, axis=axis, epsilon=0.1)


@pytest.mark.parametrize("axis", [-1, 1])
def test_layer_normalization_with_mean_and_inv_std_dev(axis):
    x = randn(2, 3, 5) * 3 + 1
    shape = x.shape[axis % 3:]
    check("LayerNormalization", {"X": x, "W": randn(*shape), "B": randn(*shape)}, ["Y", "Mean", "InvStdDev"], 17,
          axis=axis)
    check("LayerNormalization", {"X": x, "W": randn(*shape)}, ["Y", "", "InvStdDev"], 17, axis=axis)


def test_layer_normalization_without_statistics_keeps_the_fused_kernel():
    graph = import_model(model("LayerNormalization", {"X": randn(2, 5), "W": randn(5)}, ["Y"], 17))
    assert [node.op for node in graph.nodes] == ["LayerNormalization"]


def test_normalization_refuses_other_stash_types():
    with pytest.raises(UnsupportedOpError, match="stash_type f16: stage one is computed in f32 only"):
        import_model(model("RMSNormalization", {"X": randn(2, 5), "scale": randn(5)}, ["Y"], 23,
                           stash_type=TensorProto.FLOAT16))


def test_batch_normalization_with_run_time_statistics():
    inputs = {"x": randn(2, 3, 4, 5), "s": randn(3), "bias": randn(3), "mean": randn(3),
              "var": RNG.random(3).astype(np.float32)}
    check("BatchNormalization", inputs, ["y"], 15, epsilon=1e-2)


# Losses -------------------------------------------------------------------------------------------
LOSS_CASES = [
    ({}, (3, 5)),
    ({"reduction": "sum"}, (3, 5, 2)),
    ({"reduction": "none"}, (3, 5, 2, 3)),
    ({"ignore_index": 1}, (4, 5, 3)),
    ({"ignore_index": -1, "reduction": "sum"}, (4, 5, 3)),
    ({"ignore_index": 10, "reduction": "none"}, (4, 5)),
]


@pytest.mark.parametrize("weighted", [False, True], ids=["unweighted", "weighted"])
@pytest.mark.parametrize("attrs, shape", LOSS_CASES)
@pytest.mark.parametrize("op, opset", [("NegativeLogLikelihoodLoss", 22), ("SoftmaxCrossEntropyLoss", 13)])
@pytest.mark.parametrize("target_dtype", [np.int64, np.int32])
def test_losses(op, opset, attrs, shape, weighted, target_dtype):
    scores = randn(*shape)
    target = RNG.integers(0, shape[1], size=shape[:1] + shape[2:]).astype(target_dtype)
    if "ignore_index" in attrs:
        target.reshape(-1)[::3] = attrs["ignore_index"]
    inputs = {"x": scores, "target": target}
    if weighted:
        inputs["weight"] = RNG.random(shape[1]).astype(np.float32)
    check(op, inputs, ["loss"], opset, **attrs)


def test_softmax_cross_entropy_log_prob_output():
    inputs = {"x": randn(3, 5, 2), "target": RNG.integers(0, 5, size=(3, 2))}
    check("SoftmaxCrossEntropyLoss", inputs, ["loss", "log_prob"], 13, ignore_index=2)


def test_losses_pick_the_target_without_a_gather():
    graph = import_model(model("NegativeLogLikelihoodLoss", {"x": randn(3, 5), "t": np.array([0, 4, 2])}, ["l"], 22))
    assert not {"Gather", "GatherElements"} & {node.op for node in graph.nodes}


# Element-wise and data movement -------------------------------------------------------------------
@pytest.mark.parametrize("op, opset, attrs", [
    ("Mish", 22, {}),
    ("Swish", 24, {}),
    ("Swish", 24, {"alpha": 0.7}),
    ("Celu", 12, {"alpha": 2.0}),
    ("Shrink", 9, {"lambd": 0.8, "bias": 0.3}),
    ("ThresholdedRelu", 22, {"alpha": 0.5}),
])
def test_activations(op, opset, attrs):
    check(op, {"x": randn(3, 4, 5) * 3}, ["y"], opset, **attrs)


def test_swiglu():
    """onnxruntime has no kernel for the Swish-24 in SwiGLU's body: onnx's reference is the reference."""
    check("SwiGLU", {"a": randn(3, 8) * 3, "b": randn(3, 8)}, ["y"], 28, reference="onnx", alpha=0.5)


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
@pytest.mark.parametrize("attrs", [{}, {"detect_negative": 0}, {"detect_positive": 0}])
def test_is_inf_and_is_nan(dtype, attrs):
    x = np.array([[1.0, np.inf, -np.inf, np.nan, 0.0, -2.5]], dtype=dtype)
    check("IsInf", {"x": x}, ["y"], 20, **attrs)
    check("IsNaN", {"x": x}, ["y"], 20)


@pytest.mark.parametrize("dtype", [np.float32, np.int64, np.int32])
@pytest.mark.parametrize("upper, k", [(1, 0), (0, 0), (1, 2), (0, -1), (1, -9), (0, -9)])
def test_trilu(dtype, upper, k):
    x = (randn(2, 4, 5) * 10).astype(dtype)
    check("Trilu", {"x": x, "k": const(np.array(k, dtype=np.int64))}, ["y"], 14, upper=upper)


@pytest.mark.parametrize("axis, index_shape", [(0, (2, 3)), (1, (3, 2)), (1, (2, 5)), (-1, (3, 3))])
def test_gather_elements(axis, index_shape):
    data = randn(3, 4)
    size = data.shape[axis]
    indices = RNG.integers(-size, size, size=index_shape)
    check("GatherElements", {"data": data, "indices": indices}, ["y"], 13, axis=axis)
    check("GatherElements", {"data": data, "indices": const(indices)}, ["y"], 13, axis=axis)


@pytest.mark.parametrize("data_shape, index_shape, batch_dims", [
    ((4, 5), (3, 2), 0), ((4, 5, 6), (2, 3, 1), 0), ((3, 4, 5), (3, 2, 1), 1), ((3, 4, 5), (3, 2), 1),
    ((4, 5, 6), (2,), 0), ((2, 3, 4, 5), (2, 3, 2, 1), 2),
])
def test_gather_nd(data_shape, index_shape, batch_dims):
    data = randn(*data_shape)
    sizes = np.array(data_shape[batch_dims:batch_dims + index_shape[-1]])
    indices = (RNG.integers(0, 1 << 30, size=index_shape) % (2 * sizes) - sizes).astype(np.int64)  # negative too
    check("GatherND", {"data": data, "indices": indices}, ["y"], 13, batch_dims=batch_dims)
    check("GatherND", {"data": data, "indices": const(indices)}, ["y"], 13, batch_dims=batch_dims)


@pytest.mark.parametrize("time_axis, batch_axis", [(0, 1), (1, 0)])
def test_reverse_sequence(time_axis, batch_axis):
    x = randn(5, 4, 3) if time_axis == 0 else randn(4, 5, 3)
    lens = np.array([5, 1, 3, 0], np.int64)
    attrs = {"time_axis": time_axis, "batch_axis": batch_axis}
    check("ReverseSequence", {"x": x, "sequence_lens": lens}, ["y"], 10, **attrs)
    check("ReverseSequence", {"x": x, "sequence_lens": const(lens)}, ["y"], 10, **attrs)


def test_gather_elements_out_of_range_index_stops_the_run():
    proto = model("GatherElements", {"data": randn(3, 4), "indices": np.zeros((3, 4), np.int64)}, ["y"], 13, axis=1)
    bad = np.zeros((3, 4), np.int64)
    bad[1, 2] = 4
    with pytest.raises(SimulationError, match=r"dma_gather .* is outside \[0, 12\)"):
        run(compiler.compile(proto, "edge"), {"data": randn(3, 4), "indices": bad})


def test_bfloat16_activation_rounds_each_step_like_the_function_body():
    x = (randn(16) * 3).astype(ml_dtypes.bfloat16)
    proto = model("Celu", {"x": x}, ["y"], 28, alpha=2.0)
    got = run(compiler.compile(proto, "edge"), {"x": x}).outputs["y"]
    expected = ReferenceEvaluator(proto).run(None, {"x": x})[0]
    np.testing.assert_array_equal(got.astype(np.float32), expected.astype(np.float32))


@pytest.mark.parametrize("axis, dtype", [(-1, np.int64), (0, np.float32), (1, np.int32)])
def test_one_hot(axis, dtype):
    indices = np.array([[0, 3, -1], [9, -11, 2]], dtype=dtype)  # 9 and -11 are out of range: all off
    """onnxruntime implements int64 indices only: onnx's reference checks the others."""
    inputs = {"indices": indices, "depth": const(np.array(10, np.int64)), "values": np.array([-2.0, 5.0], np.float32)}
    check("OneHot", inputs, ["y"], 11, reference="ort" if dtype is np.int64 else "onnx", axis=axis)


@pytest.mark.parametrize("shape, axes", [([10, 7, 3], None), ([20, 10, 3], None), ([10, 10, 3], None),
                                         ([11, 9], [0, 1]), ([5, 12], [-2, -1])])
def test_center_crop_pad(shape, axes):
    attrs = {"axes": axes} if axes else {}
    check("CenterCropPad", {"x": randn(14, 8, 3), "shape": const(np.array(shape, np.int64))}, ["y"], 18,
          reference="onnx" if axes else "ort", **attrs)


@pytest.mark.parametrize("size", [[2, 3, 5, 6], [2, 3, 4, 5, 2]])
@pytest.mark.parametrize("align_corners", [0, 1])
def test_affine_grid(size, align_corners):
    spatial = len(size) - 2
    theta = randn(2, spatial, spatial + 1)
    check("AffineGrid", {"theta": theta, "size": const(np.array(size, np.int64))}, ["grid"], 20,
          align_corners=align_corners)


def test_affine_grid_single_position_is_the_centre():
    """One pixel along an axis sits at 0 with or without align_corners, as in PyTorch's affine_grid."""
    identity = np.array([[[1, 0, 0], [0, 1, 0]]], np.float32)
    for align_corners in (0, 1):
        proto = model("AffineGrid", {"theta": identity, "size": const(np.array([1, 1, 3, 1]))}, ["grid"], 20,
                      align_corners=align_corners)
        grid = run(compiler.compile(proto, "edge"), {"theta": identity}).outputs["grid"]
        np.testing.assert_array_equal(grid[0, :, 0, 0], 0.0)  # x: the single column


@pytest.mark.parametrize("attrs", [
    {"kernel_shape": [2], "p": 3},
    {"kernel_shape": [3, 3], "p": 2, "pads": [1, 1, 1, 1], "strides": [2, 2]},
    {"kernel_shape": [2, 2], "p": 4, "auto_pad": "SAME_UPPER"},
])
def test_lp_pool(attrs):
    x = randn(1, 3, 9) if len(attrs["kernel_shape"]) == 1 else randn(1, 3, 9, 8)
    check("LpPool", {"x": x}, ["y"], 18, **attrs)


@pytest.mark.parametrize("attrs", [{}, {"interleaved": 1}, {"rotary_embedding_dim": 4},
                                   {"interleaved": 1, "rotary_embedding_dim": 4}])
@pytest.mark.parametrize("three_d", [False, True], ids=["4d", "3d"])
def test_rotary_embedding(attrs, three_d):
    half = attrs.get("rotary_embedding_dim", 8) // 2
    angles = RNG.random((20, half)).astype(np.float32) * 6
    x = randn(2, 3, 16) if three_d else randn(2, 2, 3, 8)
    inputs = {"input": x, "cos_cache": np.cos(angles), "sin_cache": np.sin(angles),
              "position_ids": RNG.integers(0, 20, size=(2, 3))}
    check("RotaryEmbedding", inputs, ["output"], 23, reference="onnx", **attrs, **({"num_heads": 2} if three_d else {}))


# Recurrent networks, unrolled -------------------------------------------------------------------
def recurrent_inputs(op: str, directions=1, length=4, batch=2, features=3, hidden=5, layout=0, states=False,
                     peepholes=False) -> dict:
    gates = {"RNN": 1, "GRU": 3, "LSTM": 4}[op]
    inputs = {"X": randn(batch, length, features) if layout else randn(length, batch, features),
              "W": randn(directions, gates * hidden, features) * 0.5,
              "R": randn(directions, gates * hidden, hidden) * 0.5, "B": randn(directions, 2 * gates * hidden) * 0.5}
    state_shape = (batch, directions, hidden) if layout else (directions, batch, hidden)
    if states or peepholes:
        inputs["sequence_lens"] = None
        inputs["initial_h"] = randn(*state_shape)
        if op == "LSTM":
            inputs["initial_c"] = randn(*state_shape)
    if peepholes:
        inputs["P"] = randn(directions, 3 * hidden) * 0.5
    return inputs


@pytest.mark.parametrize("op", ["RNN", "GRU", "LSTM"])
@pytest.mark.parametrize("direction, layout, states", [("forward", 0, False), ("reverse", 0, True),
                                                       ("bidirectional", 1, True), ("bidirectional", 0, False)])
def test_recurrent_networks(op, direction, layout, states):
    directions = 2 if direction == "bidirectional" else 1
    inputs = recurrent_inputs(op, directions, layout=layout, states=states)
    outputs = ["Y", "Y_h"] + (["Y_c"] if op == "LSTM" else [])
    # onnxruntime refuses layout 1 (batch first): onnx's reference checks it
    check(op, inputs, outputs, 14, reference="onnx" if layout else "ort", direction=direction, hidden_size=5,
          layout=layout)


@pytest.mark.parametrize("op, attrs", [
    ("RNN", {"activations": ["Relu"], "clip": 1.5}),
    ("GRU", {"linear_before_reset": 1}),
    ("GRU", {"activations": ["HardSigmoid", "Softsign"], "clip": 2.0}),
    ("LSTM", {"activations": ["Sigmoid", "Tanh", "Relu"], "clip": 1.0}),
])
def test_recurrent_options(op, attrs):
    outputs = ["Y", "Y_h"] + (["Y_c"] if op == "LSTM" else [])
    check(op, recurrent_inputs(op), outputs, 14, hidden_size=5, **attrs)


def test_lstm_peepholes_and_constant_weights():
    inputs = recurrent_inputs("LSTM", peepholes=True)
    check("LSTM", inputs, ["Y", "Y_h", "Y_c"], 14, hidden_size=5)
    constant = {name: const(value) if name in ("W", "R", "B", "P") else value for name, value in inputs.items()}
    check("LSTM", constant, ["Y", "Y_h", "Y_c"], 14, hidden_size=5)
    graph = import_model(model("LSTM", constant, ["Y"], 14, hidden_size=5))
    assert "Transpose" not in {node.op for node in graph.nodes}  # constant weights are transposed when compiling


def test_recurrent_refusals():
    with pytest.raises(UnsupportedOpError, match="activation_alpha"):
        import_model(model("RNN", recurrent_inputs("RNN"), ["Y"], 14, hidden_size=5, activations=["LeakyRelu"],
                           activation_alpha=[0.2]))
    lengths = {**recurrent_inputs("GRU"), "sequence_lens": const(np.array([4, 2], np.int32))}
    with pytest.raises(UnsupportedOpError, match=r"sequence_lens \[4, 2\] shorter than the sequence"):
        import_model(model("GRU", lengths, ["Y"], 14, hidden_size=5))
