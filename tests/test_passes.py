"""Each pass: a small IR before, the IR expected after (text), a case it must leave alone."""

import numpy as np
from ir_cases import run_pass, same

from compiler.ir import parse
from compiler.passes.simplify import decompose_batchnorm, fold_batchnorm_into_conv, remove_identities

IDENTITY_BEFORE = """
graph g
  input %x: f32[2, 3]
  %a: f32[2, 3] = Identity(%x)
  %b: f32[2, 3] = Relu(%a)
  %c: f32[2, 3] = Identity(%b)
  output %c
"""
IDENTITY_AFTER = """
graph g
  input %x: f32[2, 3]
  %b: f32[2, 3] = Relu(%x)
  %c: f32[2, 3] = Identity(%b)
  output %c
"""


def test_remove_identities():
    assert run_pass(remove_identities, IDENTITY_BEFORE) == same(IDENTITY_AFTER)


def test_remove_identities_changes_nothing_without_identities():
    text = "graph g\n  input %x: f32[4]\n  %y: f32[4] = Relu(%x)\n  output %y\n"
    assert run_pass(remove_identities, text) == same(text)


BN_BEFORE = """
graph g
  input %x: f32[1, 1, 3, 3]
  const %w: f32[2, 1, 1, 1] = [2.0, 3.0]
  const %b: f32[2] = [1.0, -1.0]
  const %scale: f32[2] = [0.5, 2.0]
  const %shift: f32[2] = [0.25, 0.0]
  const %mean: f32[2] = [1.0, 2.0]
  const %var: f32[2] = [3.0, 15.0]
  %y: f32[1, 2, 3, 3] = Conv(%x, %w, %b) {dilations=[1, 1], group=1, kernel_shape=[1, 1], pads=[0, 0, 0, 0], strides=[1, 1]}
  %z: f32[1, 2, 3, 3] = BatchNormalization(%y, %scale, %shift, %mean, %var) {epsilon=1.0}
  output %z
"""
# s = scale / sqrt(var + 1) = [0.25, 0.5]; w' = w * s = [0.5, 1.5]; b' = (b - mean) * s + shift = [0.25, -1.5]
BN_AFTER = """
graph g
  input %x: f32[1, 1, 3, 3]
  const %w.bn: f32[2, 1, 1, 1] = [0.5, 1.5]
  const %z.bias: f32[2] = [0.25, -1.5]
  %z: f32[1, 2, 3, 3] = Conv(%x, %w.bn, %z.bias) {dilations=[1, 1], group=1, kernel_shape=[1, 1], pads=[0, 0, 0, 0], strides=[1, 1]}
  output %z
"""


def test_fold_batchnorm_into_conv():
    assert run_pass(fold_batchnorm_into_conv, BN_BEFORE) == same(BN_AFTER)


def test_fold_batchnorm_leaves_a_conv_with_two_consumers():
    text = BN_BEFORE.replace("  output %z\n", "  output %z\n  output %y\n")
    assert run_pass(fold_batchnorm_into_conv, text) == same(text)


def test_fold_batchnorm_result_matches_unfolded_numerics():
    graph = parse(BN_BEFORE)
    folded = fold_batchnorm_into_conv(parse(BN_BEFORE))
    x = np.arange(9, dtype=np.float64)
    weight = graph.values["w"].const.reshape(2)
    bias, scale, shift, mean, var = (graph.values[n].const for n in ("b", "scale", "shift", "mean", "var"))
    expected = ((x[None, :] * weight[:, None] + bias[:, None]) - mean[:, None]) / np.sqrt(var[:, None] + 1.0) \
        * scale[:, None] + shift[:, None]
    new_weight = folded.values["w.bn"].const.reshape(2)
    new_bias = folded.values["z.bias"].const
    np.testing.assert_allclose(x[None, :] * new_weight[:, None] + new_bias[:, None], expected, rtol=1e-6)


BN_ALONE = """
graph g
  input %x: f32[1, 2, 2, 2]
  const %scale: f32[2] = [0.5, 2.0]
  const %shift: f32[2] = [0.25, 0.0]
  const %mean: f32[2] = [1.0, 2.0]
  const %var: f32[2] = [3.0, 15.0]
  %z: f32[1, 2, 2, 2] = BatchNormalization(%x, %scale, %shift, %mean, %var) {epsilon=1.0}  @bn
  output %z
"""
# s = [0.25, 0.5]; t = shift - mean * s = [0.0, -1.0]
BN_ALONE_AFTER = """
graph g
  input %x: f32[1, 2, 2, 2]
  const %z.scale: f32[2, 1, 1] = [0.25, 0.5]
  const %z.shift: f32[2, 1, 1] = [0.0, -1.0]
  %z.scaled: f32[1, 2, 2, 2] = Mul(%x, %z.scale)  @bn/mul
  %z: f32[1, 2, 2, 2] = Add(%z.scaled, %z.shift)  @bn
  output %z
"""


def test_decompose_batchnorm():
    assert run_pass(decompose_batchnorm, BN_ALONE) == same(BN_ALONE_AFTER)


def test_decompose_batchnorm_changes_nothing_without_batchnorm():
    assert run_pass(decompose_batchnorm, IDENTITY_AFTER) == same(IDENTITY_AFTER)


def test_batchnorm_at_O0_and_O1_matches_onnxruntime():
    import onnxruntime as ort
    from onnx import TensorProto, helper

    from compiler.pipeline import compile
    from runtime.simulator import run

    rng = np.random.default_rng(0)
    params = {"W": rng.standard_normal((4, 3, 3, 3)), "b": rng.standard_normal(4), "scale": rng.uniform(0.5, 2, 4),
              "shift": rng.standard_normal(4), "mean": rng.standard_normal(4), "var": rng.uniform(0.5, 2, 4)}
    inits = [helper.make_tensor(k, TensorProto.FLOAT, v.shape, v.astype(np.float32).ravel()) for k, v in params.items()]
    nodes = [helper.make_node("Conv", ["x", "W", "b"], ["y"], pads=[1, 1, 1, 1]),
             helper.make_node("BatchNormalization", ["y", "scale", "shift", "mean", "var"], ["z"], epsilon=1e-3),
             helper.make_node("Relu", ["z"], ["r"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, (1, 3, 6, 6))],
                              [helper.make_tensor_value_info("r", TensorProto.FLOAT, (1, 4, 6, 6))], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    x = rng.standard_normal((1, 3, 6, 6)).astype(np.float32)
    expected = ort.InferenceSession(model.SerializeToString()).run(None, {"x": x})[0]
    counts = {}
    for level in (0, 1):
        program = compile(model, "edge", opt_level=level, verify_each=True)
        counts[level] = len(program.instructions)
        np.testing.assert_allclose(run(program, {"x": x}).outputs["r"], expected, rtol=1e-5, atol=1e-5)
    assert counts[1] < counts[0]  # -O1 folds the BatchNormalization into the Conv
