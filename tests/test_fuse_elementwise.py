"""fuse_elementwise: IR before -> IR after, the cases it must leave alone, the FusedElementwise
op's text form and verifier messages, and fused kernels equal to the unfused ones bit for bit."""

import numpy as np
import onnx
import pytest
from ir_cases import run_pass, same
from onnx import TensorProto, helper, numpy_helper

from compiler.ir import parse, to_text
from compiler.passes.fuse_elementwise import fuse_elementwise
from compiler.pipeline import compile
from compiler.verify import VerifyError, verify
from runtime.simulator import run

RESIDUAL_BEFORE = """
graph g
  input %a: u8[1, 4, 2, 2]
  input %b: f32[1, 4, 2, 2]
  const %s: f32[] = [0.5]
  const %z: u8[] = [3]
  %d: f32[1, 4, 2, 2] = DequantizeLinear(%a, %s, %z)  @dq
  %sum: f32[1, 4, 2, 2] = Add(%d, %b)  @add
  %r: f32[1, 4, 2, 2] = Relu(%sum)  @relu
  %q: u8[1, 4, 2, 2] = QuantizeLinear(%r, %s, %z) {output_dtype="u8"}  @q
  output %q
"""
RESIDUAL_AFTER = """
graph g
  input %a: u8[1, 4, 2, 2]
  input %b: f32[1, 4, 2, 2]
  const %s: f32[] = [0.5]
  const %z: u8[] = [3]
  %q: u8[1, 4, 2, 2] = FusedElementwise(%a, %s, %z, %b) {steps=["DequantizeLinear(x0, x1, x2)", "Add(s0, x3)", \
"Relu(s1)", "QuantizeLinear(s2, x1, x2) {output_dtype=\\"u8\\"}"]}  @q
  output %q
"""


def test_fuses_the_residual_join_of_an_int8_network():
    assert run_pass(fuse_elementwise, RESIDUAL_BEFORE) == same(RESIDUAL_AFTER.replace("\\\n", ""))


def test_relu_before_a_quantization_whose_zero_point_is_the_lowest_value_is_dropped():
    """Q(max(a, 0)) = max(Q(a), zero point): with u8 and zero point 0 the saturation is the Relu."""
    before = RESIDUAL_BEFORE.replace("const %z: u8[] = [3]", "const %z: u8[] = [0]")
    after = RESIDUAL_AFTER.replace("const %z: u8[] = [3]", "const %z: u8[] = [0]").replace(
        '"Relu(s1)", "QuantizeLinear(s2, x1, x2)', '"QuantizeLinear(s1, x1, x2)')
    assert run_pass(fuse_elementwise, before) == same(after.replace("\\\n", ""))
    signed = before.replace("u8", "i8").replace('output_dtype="i8"', 'output_dtype="i8"')
    assert '"Relu(s1)"' in run_pass(fuse_elementwise, signed)  # i8 with zero point 0: the Relu clamps


PER_CHANNEL_BEFORE = """
graph g
  input %acc: i32[1, 2, 3]
  input %b: f32[1, 2, 3]
  const %s: f32[2] = [0.5, 0.25]
  %d: f32[1, 2, 3] = DequantizeLinear(%acc, %s) {axis=1}  @dq
  %y: f32[1, 2, 3] = Add(%d, %b)  @add
  output %y
"""
PER_CHANNEL_AFTER = """
graph g
  input %acc: i32[1, 2, 3]
  input %b: f32[1, 2, 3]
  const %s.axis1: f32[1, 2, 1] = [[[0.5], [0.25]]]
  %y: f32[1, 2, 3] = FusedElementwise(%acc, %s.axis1, %b) {steps=["DequantizeLinear(x0, x1) {axis=1}", \
"Add(s0, x2)"]}  @add
  output %y
"""


def test_per_channel_dequantize_joins_with_its_scale_shaped_to_broadcast():
    assert run_pass(fuse_elementwise, PER_CHANNEL_BEFORE) == same(PER_CHANNEL_AFTER.replace("\\\n", ""))


def test_per_channel_dequantize_with_a_run_time_scale_is_left_alone():
    before = PER_CHANNEL_BEFORE.replace("  const %s: f32[2] = [0.5, 0.25]\n", "  input %s: f32[2]\n")
    assert run_pass(fuse_elementwise, before) == same(before)


SWISH_BEFORE = """
graph g
  input %x: f32[2, 8]
  input %bias: f32[8]
  %y: f32[2, 8] = Add(%x, %bias)
  %s: f32[2, 8] = Sigmoid(%y)
  %z: f32[2, 8] = Mul(%y, %s)  @swish
  output %z
"""
SWISH_AFTER = """
graph g
  input %x: f32[2, 8]
  input %bias: f32[8]
  %z: f32[2, 8] = FusedElementwise(%x, %bias) {steps=["Add(x0, x1)", "Sigmoid(s0)", "Mul(s0, s1)"]}  @swish
  output %z
"""


def test_fuses_a_value_read_twice_by_the_group_and_loads_broadcast_inputs_once():
    assert run_pass(fuse_elementwise, SWISH_BEFORE) == same(SWISH_AFTER)


def test_two_chains_with_a_matrix_op_between_stay_two_groups():
    text = """
graph g
  input %x: f32[2, 4]
  const %w: f32[4, 4] = [1.0, 0.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 1.0]
  %a: f32[2, 4] = Neg(%x)
  %b: f32[2, 4] = Exp(%a)
  %m: f32[2, 4] = MatMul(%b, %w)
  %c: f32[2, 4] = Tanh(%m)
  %d: bool[2, 4] = Less(%c, %x)
  output %d
"""
    expected = """
graph g
  input %x: f32[2, 4]
  const %w: f32[4, 4] = [1.0, 0.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 1.0]
  %b: f32[2, 4] = FusedElementwise(%x) {steps=["Neg(x0)", "Exp(s0)"]}
  %m: f32[2, 4] = MatMul(%b, %w)
  %d: bool[2, 4] = FusedElementwise(%m, %x) {steps=["Tanh(x0)", "Less(s0, x1)"]}
  output %d
"""
    assert run_pass(fuse_elementwise, text) == same(expected)


@pytest.mark.parametrize("case", ["second_consumer", "graph_output", "broadcast_step", "per_axis", "single",
                                  "wide_intermediate"])
def test_leaves_alone(case):
    text = {
        # %a is read by Exp and by the MatMul: it must reach DRAM anyway.
        "second_consumer": """
graph g
  input %x: f32[2, 2]
  %a: f32[2, 2] = Relu(%x)
  %b: f32[2, 2] = Exp(%a)
  %m: f32[2, 2] = MatMul(%a, %b)
  output %m
""",
        "graph_output": """
graph g
  input %x: f32[4]
  %a: f32[4] = Relu(%x)
  %b: f32[4] = Exp(%a)
  output %a
  output %b
""",
        # Sqrt on 3 values would be recomputed for each of the 12 outputs.
        "broadcast_step": """
graph g
  input %x: f32[4, 3]
  input %v: f32[3]
  %a: f32[3] = Sqrt(%v)
  %b: f32[4, 3] = Mul(%x, %a)
  output %b
""",
        "per_axis": """
graph g
  input %x: i8[2, 3]
  input %s: f32[3]
  const %z: i8[3] = [0, 0, 0]
  %d: f32[2, 3] = DequantizeLinear(%x, %s, %z) {axis=1}
  %r: f32[2, 3] = Relu(%d)
  output %r
""",
        "single": "graph g\n  input %x: f32[4]\n  %y: f32[4] = Relu(%x)\n  output %y\n",
        "wide_intermediate": """
graph g
  input %x: f32[4]
  %a: i64[4] = Cast(%x) {to="i64"}
  %b: f32[4] = Cast(%a) {to="f32"}
  output %b
""",
    }[case]
    assert run_pass(fuse_elementwise, text) == same(text)


FUSED = """
graph g
  input %x: f32[2, 3]
  input %y: f32[3]
  %z: f32[2, 3] = FusedElementwise(%x, %y) {steps=[STEPS]}
  output %z
"""


@pytest.mark.parametrize("steps,message", [
    ('"Add(x0, s1)", "Relu(s0)"', r"step 0 \(Add\(x0, s1\)\): s1 is not an earlier step"),
    ('"Relu(x0)", "Add(s0, x2)"', r"step 1 \(Add\(s0, x2\)\): the node has no input 2"),
    ('"Relu(x0)"', "x1 feed no step"),
    ('"Relu(x0)", "Relu(x1)", "Add(x0, x1)"', "s0, s1 feed no step"),
    ('"MatMul(x0, x1)"', "MatMul is not element-wise here"),
    ('"Add(x0, x1) {alpha=1}"', "unknown attribute 'alpha'"),
    ('"Add(x0 x1)"', r"does not read"),
    ('"Cast(x0)", "Add(s0, x1)"', "missing required attribute 'to'"),
])
def test_verifier_rejects_a_broken_program(steps, message):
    graph = parse(FUSED.replace("STEPS", steps))
    with pytest.raises(VerifyError, match=message):
        verify(graph)


def test_text_form_round_trips_attributes_of_steps():
    text = FUSED.replace("STEPS", '"Clip(x0) {min=-inf, max=6.0}", "Gelu(s0) {approximate=\\"tanh\\"}", '
                                  '"Cast(x1) {to=\\"f16\\"}", "Cast(s2) {to=\\"f32\\"}", "Sub(s1, s3)"')
    graph = parse(text)
    verify(graph)
    assert to_text(parse(to_text(graph))) == to_text(graph)
    assert graph.nodes[0].attrs["steps"][1] == 'Gelu(s0) {approximate="tanh"}'


# End to end: -O2 (fused) against -O1 (one kernel per node), bit for bit -------------------------------
F, F16, U8, I8, I32, B = (TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.UINT8, TensorProto.INT8,
                          TensorProto.INT32, TensorProto.BOOL)


def make(nodes, inputs, outputs, initializers=()):
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info(*i) for i in inputs],
                              [helper.make_tensor_value_info(*o) for o in outputs],
                              [numpy_helper.from_array(np.asarray(a), n) for n, a in initializers])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model, full_check=True)
    return model


def node(op, inputs, outputs, **attrs):
    return helper.make_node(op, inputs, outputs, **attrs)


def chain_model(case: str):
    rng = np.random.default_rng(3)
    shape = (2, 3, 20, 24)
    x = (rng.standard_normal(shape) * 2).astype(np.float32)
    if case == "gelu_decomposed":  # as exported by PyTorch: x * 0.5 * (1 + erf(x / sqrt 2))
        nodes = [node("Div", ["x", "r2"], ["a"]), node("Erf", ["a"], ["b"]), node("Add", ["b", "one"], ["c"]),
                 node("Mul", ["x", "c"], ["d"]), node("Mul", ["d", "half"], ["y"])]
        init = [("r2", np.float32(1.4142135)), ("one", np.float32(1)), ("half", np.float32(0.5))]
        return make(nodes, [("x", F, shape)], [("y", F, shape)], init), {"x": x}, 1
    if case == "swish_bias":
        bias = rng.standard_normal((3, 1, 1)).astype(np.float32)
        nodes = [node("Add", ["x", "bias"], ["a"]), node("Sigmoid", ["a"], ["s"]), node("Mul", ["a", "s"], ["y"])]
        return make(nodes, [("x", F, shape)], [("y", F, shape)], [("bias", bias)]), {"x": x}, 1
    if case == "residual_int8":
        a = rng.integers(0, 256, shape).astype(np.uint8)
        b = rng.integers(-128, 128, shape).astype(np.int8)
        nodes = [node("DequantizeLinear", ["a", "as", "az"], ["da"]), node("DequantizeLinear", ["b", "bs", "bz"], ["db"]),
                 node("Add", ["da", "db"], ["s"]), node("Relu", ["s"], ["r"]),
                 node("QuantizeLinear", ["r", "ys", "yz"], ["y"])]
        init = [("as", np.float32(0.02)), ("az", np.uint8(120)), ("bs", np.float32(0.03)), ("bz", np.int8(-5)),
                ("ys", np.float32(0.04)), ("yz", np.uint8(0))]
        return make(nodes, [("a", U8, shape), ("b", I8, shape)], [("y", U8, shape)], init), {"a": a, "b": b}, 1
    if case == "per_channel_dequantize":  # an int8 conv's int32 result joining a residual (Cast + Mul)
        acc = rng.integers(-50000, 50000, shape).astype(np.int32)
        skip = rng.integers(0, 256, shape).astype(np.uint8)
        nodes = [node("DequantizeLinear", ["acc", "cs"], ["dc"], axis=1),
                 node("DequantizeLinear", ["skip", "ss", "sz"], ["ds"]),
                 node("Add", ["dc", "ds"], ["s"]), node("Relu", ["s"], ["r"]),
                 node("QuantizeLinear", ["r", "ys", "yz"], ["y"])]
        init = [("cs", np.array([1e-4, 3e-4, 2e-5], np.float32)), ("ss", np.float32(0.05)), ("sz", np.uint8(0)),
                ("ys", np.float32(0.06)), ("yz", np.uint8(0))]
        return make(nodes, [("acc", I32, shape), ("skip", U8, shape)], [("y", U8, shape)], init), \
            {"acc": acc, "skip": skip}, 1
    if case == "dtypes":  # f16 and bool intermediates, a comparison feeding Where, an int32 tail, no zero point
        nodes = [node("Cast", ["x"], ["h"], to=F16), node("Cast", ["h"], ["f"], to=F),
                 node("Greater", ["f", "x"], ["g"]), node("Not", ["g"], ["n"]),
                 node("Where", ["n", "x", "f"], ["w"]), node("Mul", ["w", "ten"], ["m"]),
                 node("Cast", ["m"], ["i"], to=I32), node("Abs", ["i"], ["j"]),
                 node("DequantizeLinear", ["j", "s"], ["y"])]
        init = [("ten", np.float32(10.7)), ("s", np.float32(0.125))]
        return make(nodes, [("x", F, shape)], [("y", F, shape)], init), {"x": x}, 1
    raise ValueError(case)


@pytest.mark.parametrize("config", ["tiny", "edge"])
@pytest.mark.parametrize("case", ["gelu_decomposed", "swish_bias", "residual_int8", "per_channel_dequantize",
                                  "dtypes"])
def test_fused_chain_equals_unfused_bit_for_bit(config, case):
    model, feeds, kernels = chain_model(case)
    unfused = compile(model, config, opt_level=1)
    fused = compile(model, config, opt_level=2, verify_each=True)
    assert len({entry.node for entry in fused.debug}) == kernels, [entry.node for entry in fused.debug]
    expected = run(unfused, feeds, check_hazards=True)
    actual = run(fused, feeds, check_hazards=True)
    assert not expected.hazards and not actual.hazards
    for name, value in expected.outputs.items():
        assert actual.outputs[name].dtype == value.dtype
        assert np.array_equal(actual.outputs[name], value, equal_nan=True), name
    assert actual.stats["cycles"] < expected.stats["cycles"]
