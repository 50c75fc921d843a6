"""fuse_epilogue: Conv/Gemm + residual Add/Sum + Relu/Clip into FusedConv/FusedGemm, and the kernels
that finish each tile with them: IR before/after, cases it must leave alone, results equal to
the unfused program value for value, no hazards, fewer cycles."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from ir_cases import run_pass, same
from onnx import TensorProto, helper, numpy_helper

from compiler.passes.fuse_epilogue import fuse_epilogue, fuse_norm_prologue, fuse_norm_tail, fuse_softmax, fuse_tail
from compiler.pipeline import compile
from isa.dtypes import DType
from runtime.simulator import run

CONV = "{dilations=[1, 1], group=1, kernel_shape=[1, 1], pads=[0, 0, 0, 0], strides=[1, 1]}"


RESIDUAL_BEFORE = f"""
graph g
  input %x: f32[1, 2, 3, 3]
  const %w: f32[2, 2, 1, 1] = [1.0, 2.0, 3.0, 4.0]
  const %b: f32[2] = [0.5, -0.5]
  %y: f32[1, 2, 3, 3] = Conv(%x, %w, %b) {CONV}
  %s: f32[1, 2, 3, 3] = Add(%y, %x)
  %r: f32[1, 2, 3, 3] = Relu(%s)
  output %r
"""
RESIDUAL_AFTER = f"""
graph g
  input %x: f32[1, 2, 3, 3]
  const %w: f32[2, 2, 1, 1] = [1.0, 2.0, 3.0, 4.0]
  const %b: f32[2] = [0.5, -0.5]
  %r: f32[1, 2, 3, 3] = FusedConv(%x, %w, %b, %x) {CONV[:-1]}, activation="Relu", activation_params=[]}}
  output %r
"""


def test_conv_add_relu_becomes_one_fused_conv():
    assert run_pass(fuse_epilogue, RESIDUAL_BEFORE) == same(RESIDUAL_AFTER)


def test_gemm_clip_without_bias():
    before = """
graph g
  input %a: f32[2, 3]
  const %w: f32[3, 4] = [1.0, 0.0, 0.0, 1.0, 0.0, 1.0, 0.0, 1.0, 0.0, 0.0, 1.0, 1.0]
  %y: f32[2, 4] = Gemm(%a, %w) {alpha=1.0, beta=1.0, transA=0, transB=0}
  %c: f32[2, 4] = Clip(%y) {max=6.0, min=0.0}
  output %c
"""
    after = """
graph g
  input %a: f32[2, 3]
  const %w: f32[3, 4] = [1.0, 0.0, 0.0, 1.0, 0.0, 1.0, 0.0, 1.0, 0.0, 0.0, 1.0, 1.0]
  %c: f32[2, 4] = FusedGemm(%a, %w, _) {alpha=1.0, beta=1.0, transA=0, transB=0, activation="Clip", activation_params=[0.0, 6.0]}
  output %c
"""
    assert run_pass(fuse_epilogue, before) == same(after)


@pytest.mark.parametrize("text", [
    # the Conv's result has a second reader
    f"""
graph g
  input %x: f32[1, 2, 3, 3]
  const %w: f32[2, 2, 1, 1] = [1.0, 2.0, 3.0, 4.0]
  %y: f32[1, 2, 3, 3] = Conv(%x, %w) {CONV}
  %r: f32[1, 2, 3, 3] = Relu(%y)
  %s: f32[1, 2, 3, 3] = Add(%y, %r)
  output %s
""",
    # the Conv's result is a graph output
    f"""
graph g
  input %x: f32[1, 2, 3, 3]
  const %w: f32[2, 2, 1, 1] = [1.0, 2.0, 3.0, 4.0]
  %y: f32[1, 2, 3, 3] = Conv(%x, %w) {CONV}
  %r: f32[1, 2, 3, 3] = Relu(%y)
  output %y
  output %r
""",
    # the addend broadcasts (not the result's shape) and nothing else follows
    f"""
graph g
  input %x: f32[1, 2, 3, 3]
  input %z: f32[1, 2, 1, 1]
  const %w: f32[2, 2, 1, 1] = [1.0, 2.0, 3.0, 4.0]
  %y: f32[1, 2, 3, 3] = Conv(%x, %w) {CONV}
  %s: f32[1, 2, 3, 3] = Add(%y, %z)
  output %s
""",
])
def test_changes_nothing(text):
    assert run_pass(fuse_epilogue, text) == same(text)


def _residual_block(channels: int, size: int, kernel: int, seed: int) -> onnx.ModelProto:
    """x -> Conv -> Relu -> Conv -> Add(x) -> Relu, then Gemm -> Add(z) -> Clip on the flattened result."""
    rng = np.random.default_rng(seed)
    pad = kernel // 2
    inits = [numpy_helper.from_array(rng.standard_normal((channels, channels, kernel, kernel)).astype(np.float32) * 0.2,
                                     f"w{i}") for i in range(2)]
    inits += [numpy_helper.from_array(rng.standard_normal(channels).astype(np.float32), f"b{i}") for i in range(2)]
    features = channels * size * size
    inits.append(numpy_helper.from_array(rng.standard_normal((features, 16)).astype(np.float32) * 0.05, "g"))
    conv = dict(kernel_shape=[kernel, kernel], pads=[pad] * 4)
    nodes = [
        helper.make_node("Conv", ["x", "w0", "b0"], ["c0"], **conv),
        helper.make_node("Relu", ["c0"], ["r0"]),
        helper.make_node("Conv", ["r0", "w1", "b1"], ["c1"], **conv),
        helper.make_node("Add", ["c1", "x"], ["s"]),
        helper.make_node("Relu", ["s"], ["r1"]),
        helper.make_node("Flatten", ["r1"], ["f"]),
        helper.make_node("Gemm", ["f", "g"], ["m"]),
        helper.make_node("Add", ["m", "z"], ["ms"]),
        helper.make_node("Clip", ["ms", "lo", "hi"], ["y"]),
    ]
    inits += [numpy_helper.from_array(np.array(-1.0, np.float32), "lo"),
              numpy_helper.from_array(np.array(1.5, np.float32), "hi")]
    graph = helper.make_graph(nodes, "block", [
        helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, channels, size, size]),
        helper.make_tensor_value_info("z", TensorProto.FLOAT, [1, 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 16])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


@pytest.mark.parametrize("config", ["tiny", "edge"])
@pytest.mark.parametrize("channels, size, kernel", [(8, 10, 3), (48, 5, 1)])
def test_fused_program_equals_unfused(config, channels, size, kernel):
    """Both conv loop orders (few pixels / many channels) and both Gemm orientations are exercised
    across the cases; -O2 must give the -O1 result value for value, without hazards, in fewer cycles."""
    model = _residual_block(channels, size, kernel, seed=channels)
    rng = np.random.default_rng(1)
    inputs = {"x": rng.standard_normal((1, channels, size, size)).astype(np.float32),
              "z": rng.standard_normal((1, 16)).astype(np.float32)}
    unfused = run(compile(model, config, opt_level=1), inputs, check_hazards=True)
    fused = run(compile(model, config, opt_level=2), inputs, check_hazards=True)
    assert fused.stats["hazards"] == 0 and unfused.stats["hazards"] == 0
    assert np.array_equal(fused.outputs["y"], unfused.outputs["y"])
    assert fused.stats["cycles"] < unfused.stats["cycles"]


def test_pipeline_fuses_at_o2_only():
    from compiler.frontend import import_model
    from compiler.pipeline import run_passes

    model = _residual_block(8, 6, 3, seed=0)
    ops = {level: [n.op for n in run_passes(import_model(model), level).nodes] for level in (1, 2)}
    assert "FusedConv" not in ops[1] and "Relu" in ops[1]
    assert ops[2].count("FusedConv") == 2 and ops[2].count("FusedGemm") == 1 and "Relu" not in ops[2]


def test_matmul_bias_and_residual():
    before = """
graph g
  input %x: f32[1, 2, 3]
  const %w: f32[3, 3] = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0]
  const %b: f32[3] = [0.5, 1.0, 1.5]
  %y: f32[1, 2, 3] = MatMul(%x, %w)
  %t: f32[1, 2, 3] = Add(%b, %y)
  %s: f32[1, 2, 3] = Add(%t, %x)
  output %s
"""
    after = """
graph g
  input %x: f32[1, 2, 3]
  const %w: f32[3, 3] = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0]
  const %b.bias: f32[3] = [0.5, 1.0, 1.5]
  %s: f32[1, 2, 3] = FusedMatMul(%x, %w, %b.bias, %x) {activation="", activation_params=[]}
  output %s
"""
    assert run_pass(fuse_epilogue, before) == same(after)


def _transformer_dense(tokens: int, width: int, seed: int) -> onnx.ModelProto:
    """x -> MatMul(W) -> + bias -> + x -> MatMul(W2) -> + bias2 -> Relu (a dense layer with a residual)."""
    rng = np.random.default_rng(seed)
    inits = [numpy_helper.from_array((rng.standard_normal((width, width)) * 0.1).astype(np.float32), name)
             for name in ("w1", "w2")]
    inits += [numpy_helper.from_array(rng.standard_normal(width).astype(np.float32), name) for name in ("b1", "b2")]
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["m1"]), helper.make_node("Add", ["m1", "b1"], ["a1"]),
             helper.make_node("Add", ["a1", "x"], ["r"]), helper.make_node("MatMul", ["r", "w2"], ["m2"]),
             helper.make_node("Add", ["b2", "m2"], ["a2"]), helper.make_node("Relu", ["a2"], ["y"])]
    graph = helper.make_graph(nodes, "dense", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, tokens, width])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, tokens, width])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


@pytest.mark.parametrize("config", ["tiny", "edge"])
@pytest.mark.parametrize("tokens", [4, 96])
def test_fused_matmul_equals_unfused(config, tokens):
    """Few rows take the transposed orientation, many the direct one; both finish with the bias,
    the residual and the activation on chip and give the -O1 result value for value."""
    model = _transformer_dense(tokens, 48, seed=tokens)
    inputs = {"x": np.random.default_rng(2).standard_normal((1, tokens, 48)).astype(np.float32)}
    from compiler.frontend import import_model
    from compiler.pipeline import run_passes

    assert [n.op for n in run_passes(import_model(model), 2).nodes] == ["FusedMatMul", "FusedMatMul"]
    unfused = run(compile(model, config, opt_level=1), inputs, check_hazards=True)
    fused = run(compile(model, config, opt_level=2), inputs, check_hazards=True)
    assert fused.stats["hazards"] == 0
    assert np.array_equal(fused.outputs["y"], unfused.outputs["y"])
    assert fused.stats["cycles"] < unfused.stats["cycles"]


# fuse_tail -----------------------------------------------------------------------------
QCONV = ('{group=1, kernel_shape=[1, 1], strides=[1, 1], pads=[0, 0, 0, 0], dilations=[1, 1], x_scale=0.5, '
         'x_zero_point=0, w_scale=[0.25, 0.125], w_zero_point=0, y_scale=1.0, y_zero_point=0, out_dtype="i32", '
         'y_min=-2147483648, y_max=2147483647')
TAIL_BEFORE = f"""
graph g
  input %x: u8[1, 2, 2, 2]
  input %skip: u8[1, 2, 2, 2]
  const %w: i8[2, 2, 1, 1] = [1, 2, 3, 4]
  const %cs: f32[2, 1, 1] = [[[0.125]], [[0.0625]]]
  const %s: f32[] = [0.5]
  const %z: u8[] = [0]
  %acc: i32[1, 2, 2, 2] = QLinearConv(%x, %w) {QCONV}}}  @conv
  %y: u8[1, 2, 2, 2] = FusedElementwise(%skip, %s, %z, %acc, %cs) {{steps=["DequantizeLinear(x0, x1, x2)", \\
"Cast(x3) {{to=\\"f32\\"}}", "Mul(s1, x4)", "Add(s2, s0)", "Relu(s3)", \\
"QuantizeLinear(s4, x1, x2) {{output_dtype=\\"u8\\"}}"]}}  @join
  output %y
"""
TAIL_AFTER = f"""
graph g
  input %x: u8[1, 2, 2, 2]
  input %skip: u8[1, 2, 2, 2]
  const %w: i8[2, 2, 1, 1] = [1, 2, 3, 4]
  const %cs: f32[2, 1, 1] = [[[0.125]], [[0.0625]]]
  const %s: f32[] = [0.5]
  const %z: u8[] = [0]
  %y: u8[1, 2, 2, 2] = QLinearConv(%x, %w, _, %skip, %s, %z, %cs) {QCONV}, tail=["DequantizeLinear(x1, x2, x3)", \\
"Cast(x0) {{to=\\"f32\\"}}", "Mul(s1, x4)", "Add(s2, s0)", "Relu(s3)", \\
"QuantizeLinear(s4, x2, x3) {{output_dtype=\\"u8\\"}}"]}}  @conv
  output %y
"""


def test_int8_conv_result_joined_on_chip_becomes_its_tail():
    assert run_pass(fuse_tail, TAIL_BEFORE.replace("\\\n", "")) == same(TAIL_AFTER.replace("\\\n", ""))


def test_tail_is_not_fused_when_an_operand_comes_later_or_does_not_broadcast_per_channel():
    later = TAIL_BEFORE.replace("\\\n", "").replace("  input %skip: u8[1, 2, 2, 2]\n", "").replace(
        "  %acc:", "  %skip: u8[1, 2, 2, 2] = Identity(%x)\n  %acc:")
    later = later.replace("  %skip: u8[1, 2, 2, 2] = Identity(%x)\n  %acc: i32[1, 2, 2, 2] = QLinearConv(%x, %w) "
                          f"{QCONV}}}  @conv\n",
                          f"  %acc: i32[1, 2, 2, 2] = QLinearConv(%x, %w) {QCONV}}}  @conv\n"
                          "  %skip: u8[1, 2, 2, 2] = Identity(%x)\n")
    assert run_pass(fuse_tail, later) == same(later)
    per_row = TAIL_BEFORE.replace("\\\n", "").replace("%cs: f32[2, 1, 1] = [[[0.125]], [[0.0625]]]",
                                                      "%cs: f32[2, 1] = [[0.125], [0.0625]]")
    assert run_pass(fuse_tail, per_row) == same(per_row)


QCONV_U8 = QCONV.replace('out_dtype="i32"', 'out_dtype="u8"').replace("y_min=-2147483648, y_max=2147483647",
                                                                    "y_min=0, y_max=255")
BRANCHES_HEAD = """
graph g
  input %x: u8[1, 2, 2, 2]
  const %w: i8[2, 2, 1, 1] = [1, 2, 3, 4]
  const %cs: f32[2, 1, 1] = [[[0.125]], [[0.0625]]]
  const %s: f32[] = [0.5]
  const %z: u8[] = [0]
"""
BRANCHES_BEFORE = BRANCHES_HEAD + f"""\
  %h: u8[1, 2, 2, 2] = QLinearConv(%x, %w) {QCONV_U8}}}  @feeder
  %main: i32[1, 2, 2, 2] = QLinearConv(%h, %w) {QCONV}}}  @main
  %short: i32[1, 2, 2, 2] = QLinearConv(%x, %w) {QCONV}}}  @shortcut
  %y: u8[1, 2, 2, 2] = FusedElementwise(%main, %cs, %short, %cs, %s, %z) {{steps=["Cast(x0) {{to=\\"f32\\"}}", \\
"Mul(s0, x1)", "Cast(x2) {{to=\\"f32\\"}}", "Mul(s2, x3)", "Add(s1, s3)", "Relu(s4)", \\
"QuantizeLinear(s5, x4, x5) {{output_dtype=\\"u8\\"}}"]}}  @join
  output %y
"""
BRANCHES_AFTER = BRANCHES_HEAD + f"""\
  %short: i32[1, 2, 2, 2] = QLinearConv(%x, %w) {QCONV}}}  @shortcut
  %h: u8[1, 2, 2, 2] = QLinearConv(%x, %w) {QCONV_U8}}}  @feeder
  %y: u8[1, 2, 2, 2] = QLinearConv(%h, %w, _, %cs, %short, %cs, %s, %z) {QCONV}, tail=["Cast(x0) {{to=\\"f32\\"}}", \\
"Mul(s0, x1)", "Cast(x2) {{to=\\"f32\\"}}", "Mul(s2, x1)", "Add(s1, s3)", "Relu(s4)", \\
"QuantizeLinear(s5, x4, x5) {{output_dtype=\\"u8\\"}}"]}}  @main
  output %y
"""


def test_a_join_of_two_convolutions_is_the_main_branch_s_tail_with_the_shortcut_moved_before_it():
    """A ResNet projection block: the convolution whose input is made last (main) takes the join, and the
    shortcut's convolution moves before the node that makes main's input, so that the main branch's
    convolutions follow one another (a chain, compiler/codegen/kernels/conv_chain.py)."""
    assert run_pass(fuse_tail, BRANCHES_BEFORE.replace("\\\n", "")) == same(BRANCHES_AFTER.replace("\\\n", ""))


def test_a_shortcut_that_reads_the_main_branch_stays_where_it_is():
    """When the shortcut reads what main's input is made from, it cannot move before it: the last of the two
    takes the join, as without a shortcut to move."""
    before = BRANCHES_BEFORE.replace("\\\n", "").replace("%short: i32[1, 2, 2, 2] = QLinearConv(%x,",
                                                          "%short: i32[1, 2, 2, 2] = QLinearConv(%h,")
    after = run_pass(fuse_tail, before)
    assert [line.split("@")[-1] for line in after.splitlines() if "QLinearConv" in line] == ["feeder", "main",
                                                                                                "shortcut"]
    assert "tail=" in after.split("@main")[1]  # the shortcut, last, took it


@pytest.mark.parametrize("config", ["tiny", "edge"])
@pytest.mark.parametrize("channels, size, kernel", [(8, 10, 3), (48, 5, 1)])
def test_int8_tails_equal_the_unfused_program(config, channels, size, kernel):
    """The int8 residual block (both conv loop orders across the cases) and an int8 dense layer
    (both matmul orientations): -O2 runs the dequantize, bias, residual and requantize steps as
    tails on chip and gives the -O1 result bit for bit, without hazards."""
    from compiler.frontend import import_model
    from compiler.pipeline import Precision, quantize_for, run_passes

    rng = np.random.default_rng(1)
    for model, inputs in (
            (_residual_block(channels, size, kernel, seed=channels),
             lambda: {"x": rng.standard_normal((1, channels, size, size)).astype(np.float32),
                      "z": rng.standard_normal((1, 16)).astype(np.float32)}),
            (_transformer_dense(4 if kernel == 3 else 96, 48, seed=kernel),
             lambda: {"x": rng.standard_normal((1, 4 if kernel == 3 else 96, 48)).astype(np.float32)})):
        samples = [inputs() for _ in range(4)]
        precision = Precision("int8", samples)
        quantized, _ = quantize_for(model, precision)
        with_tails = {node.name for node in run_passes(import_model(quantized), 2).nodes if node.attrs.get("tail")}
        assert with_tails
        unfused = run(compile(model, config, opt_level=1, precision=precision), samples[0], check_hazards=True)
        program = compile(model, config, opt_level=2, precision=precision)
        fused = run(program, samples[0], check_hazards=True)
        assert fused.stats["hazards"] == 0
        for name, value in unfused.outputs.items():
            assert np.array_equal(fused.outputs[name], value), name
        # A bias is subtracted negated by its tail's dequantization, not added by a pass of its own.
        bias_adds = [entry.node for entry in program.debug for i in program.instructions[entry.start:entry.end]
                     if i.definition.mnemonic == "vadd" and i.fields["dtype"] == DType.I32]
        assert not set(bias_adds) & with_tails


def test_int8_tail_over_many_column_groups():
    """A dense layer wide enough for several result groups of the streamed schedule (tiny: 8 columns a
    block, 8 blocks a group): every group's tail reads its own channels of the per-channel operands,
    which are loaded once for all of them."""
    from compiler.pipeline import Precision

    rng = np.random.default_rng(3)
    model = _transformer_dense(3, 136, seed=5)
    samples = [{"x": rng.standard_normal((1, 3, 136)).astype(np.float32)} for _ in range(4)]
    precision = Precision("int8", samples)
    unfused = run(compile(model, "tiny", opt_level=1, precision=precision), samples[0])
    fused_program = compile(model, "tiny", opt_level=2, precision=precision)
    assert any("weights streamed" in note for notes in fused_program.notes.values() for note in notes)
    fused = run(fused_program, samples[0], check_hazards=True)
    assert fused.stats["hazards"] == 0
    assert np.array_equal(fused.outputs["y"], unfused.outputs["y"])


def _float_tails(tokens: int, seed: int) -> onnx.ModelProto:
    """x -> MatMul -> + bias -> GELU (as exported: x * 0.5 * (1 + erf(x / sqrt 2))), an image
    -> Conv -> x * sigmoid(x), and v -> Gemm(+ bias) -> x * tanh(x): chains that run as the
    products' tails at -O2."""
    rng = np.random.default_rng(seed)
    inits = [numpy_helper.from_array((rng.standard_normal((48, 40)) * 0.2).astype(np.float32), "w"),
             numpy_helper.from_array(rng.standard_normal(40).astype(np.float32), "b"),
             numpy_helper.from_array((rng.standard_normal((6, 3, 3, 3)) * 0.3).astype(np.float32), "k"),
             numpy_helper.from_array(np.float32(1.4142135), "r2"), numpy_helper.from_array(np.float32(1.0), "one"),
             numpy_helper.from_array(np.float32(0.5), "half")]
    nodes = [helper.make_node("MatMul", ["x", "w"], ["m"]), helper.make_node("Add", ["m", "b"], ["a"]),
             helper.make_node("Div", ["a", "r2"], ["d"]), helper.make_node("Erf", ["d"], ["e"]),
             helper.make_node("Add", ["e", "one"], ["p"]), helper.make_node("Mul", ["a", "p"], ["q"]),
             helper.make_node("Mul", ["q", "half"], ["y"]),
             helper.make_node("Conv", ["image", "k"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("Sigmoid", ["c"], ["s"]), helper.make_node("Mul", ["c", "s"], ["z"]),
             # A Gemm with a bias (in bf16, fold_cast_into_matmul rewrites it as a FusedMatMul).
             helper.make_node("Gemm", ["v", "w", "b"], ["g"]), helper.make_node("Tanh", ["g"], ["t"]),
             helper.make_node("Mul", ["g", "t"], ["u"])]
    graph = helper.make_graph(nodes, "tails", [
        helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, tokens, 48]),
        helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 3, 9, 11]),
        helper.make_tensor_value_info("v", TensorProto.FLOAT, [tokens, 48])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, tokens, 40]),
         helper.make_tensor_value_info("z", TensorProto.FLOAT, [1, 6, 9, 11]),
         helper.make_tensor_value_info("u", TensorProto.FLOAT, [tokens, 40])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


@pytest.mark.parametrize("config", ["tiny", "edge"])
@pytest.mark.parametrize("tokens", [4, 96])
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_float_tails_equal_the_unfused_program(config, tokens, precision):
    """A GELU after a MatMul's bias and x * sigmoid(x) after a Conv run as tails (both matmul
    orientations across the cases) and give the -O1 result bit for bit, without hazards."""
    from compiler.frontend import import_model
    from compiler.pipeline import run_passes

    model = _float_tails(tokens, seed=tokens)
    ops = [(node.op, bool(node.attrs.get("tail"))) for node in run_passes(import_model(model), 2).nodes]
    assert ops == [("FusedMatMul", True), ("FusedConv", True), ("FusedGemm", True)]
    rng = np.random.default_rng(3)
    inputs = {"x": rng.standard_normal((1, tokens, 48)).astype(np.float32),
              "image": rng.standard_normal((1, 3, 9, 11)).astype(np.float32),
              "v": rng.standard_normal((tokens, 48)).astype(np.float32)}
    unfused = run(compile(model, config, opt_level=1, precision=precision), inputs, check_hazards=True)
    fused = run(compile(model, config, opt_level=2, precision=precision), inputs, check_hazards=True)
    assert fused.stats["hazards"] == 0
    for name, value in unfused.outputs.items():
        assert np.array_equal(fused.outputs[name], value), name
    assert fused.stats["cycles"] < unfused.stats["cycles"]


def _attention_scores(tokens: int) -> onnx.ModelProto:
    """q [1, 2, T, 8] x k [1, 2, 8, T] (both run-time) * scale + mask [1, 1, T, T]: attention's
    scores, the mask one plane repeated over the heads."""
    nodes = [helper.make_node("MatMul", ["q", "k"], ["s"]), helper.make_node("Mul", ["s", "scale"], ["m"]),
             helper.make_node("Add", ["m", "mask"], ["y"])]
    graph = helper.make_graph(nodes, "scores", [
        helper.make_tensor_value_info("q", TensorProto.FLOAT, [1, 2, tokens, 8]),
        helper.make_tensor_value_info("k", TensorProto.FLOAT, [1, 2, 8, tokens]),
        helper.make_tensor_value_info("mask", TensorProto.FLOAT, [1, 1, tokens, tokens])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2, tokens, tokens])],
        [numpy_helper.from_array(np.float32(0.35), "scale")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


@pytest.mark.parametrize("config", ["tiny", "edge"])
def test_attention_scale_and_mask_become_the_scores_tail(config):
    """With run-time operands the product takes a tail only when it has more than one row (a
    decode step's one-row product reads its operands in place, where per-tile loads cost more);
    the mask, one [T, T] plane for every head, is loaded per tile like a whole tensor."""
    from compiler.frontend import import_model
    from compiler.pipeline import run_passes

    ops = [(node.op, bool(node.attrs.get("tail"))) for node in run_passes(import_model(_attention_scores(1)), 2).nodes]
    assert ("FusedElementwise", False) in ops
    model = _attention_scores(40)
    ops = [(node.op, bool(node.attrs.get("tail"))) for node in run_passes(import_model(model), 2).nodes]
    assert ops == [("FusedMatMul", True)]
    rng = np.random.default_rng(4)
    inputs = {"q": rng.standard_normal((1, 2, 40, 8)).astype(np.float32),
              "k": rng.standard_normal((1, 2, 8, 40)).astype(np.float32),
              "mask": np.where(rng.random((1, 1, 40, 40)) < 0.3, -1e4, 0.0).astype(np.float32)}
    unfused = run(compile(model, config, opt_level=1), inputs, check_hazards=True)
    program = compile(model, config, opt_level=2)
    fused = run(program, inputs, check_hazards=True)
    assert fused.stats["hazards"] == 0
    assert np.array_equal(fused.outputs["y"], unfused.outputs["y"])
    assert fused.stats["cycles"] < unfused.stats["cycles"]
    # The mask's add, the tail's last instruction, writes the output tile itself: no copy into it.
    assert not any(instruction.mnemonic == "vmov" for instruction in program.instructions)


def _attention(tokens: int, quantized: bool) -> onnx.ModelProto:
    """q, k, v [tokens, 4 heads, 8] -> per head softmax(q k^T) v -> the heads back between the tokens,
    as y [tokens, 4, 8], or with `quantized` reshaped to [tokens, 32] and quantized per tensor."""
    nodes = [helper.make_node("Transpose", ["q"], ["qt"], perm=[1, 0, 2]),
             helper.make_node("Transpose", ["k"], ["kt"], perm=[1, 2, 0]),
             helper.make_node("MatMul", ["qt", "kt"], ["s"]), helper.make_node("Softmax", ["s"], ["p"], axis=-1),
             helper.make_node("Transpose", ["v"], ["vt"], perm=[1, 0, 2]),
             helper.make_node("MatMul", ["p", "vt"], ["o"]),
             helper.make_node("Transpose", ["o"], ["ot" if quantized else "y"], perm=[1, 0, 2])]
    output = helper.make_tensor_value_info("y", TensorProto.FLOAT, [tokens, 4, 8])
    constants = []
    if quantized:
        nodes += [helper.make_node("Reshape", ["ot", "shape"], ["r"]),
                  helper.make_node("QuantizeLinear", ["r", "scale", "zero"], ["y"])]
        output = helper.make_tensor_value_info("y", TensorProto.UINT8, [tokens, 32])
        constants = [numpy_helper.from_array(np.array([tokens, 32], np.int64), "shape"),
                     numpy_helper.from_array(np.float32(0.25), "scale"), numpy_helper.from_array(np.uint8(128), "zero")]
    info = [helper.make_tensor_value_info(name, TensorProto.FLOAT, [tokens, 4, 8]) for name in "qkv"]
    return helper.make_model(helper.make_graph(nodes, "attention", info, [output], constants),
                             opset_imports=[helper.make_opsetid("", 17)])


@pytest.mark.parametrize("config", ["tiny", "edge"])
@pytest.mark.parametrize("quantized", [False, True])
def test_prefill_attention_in_place_equals_the_copies(config, quantized):
    """The folded transposes (queries read per head, the result written back between the tokens),
    the softmax on whole rows of the scores and the output's quantization on the AV product's
    tiles give the -O1 result (Transposes copied in DRAM, the softmax and the quantization
    their own passes) bit for bit, without hazards."""
    from compiler.frontend import import_model
    from compiler.pipeline import run_passes

    tokens = 24 if quantized else 40
    model = _attention(tokens, quantized)
    ops = [node.op for node in run_passes(import_model(model), 2).nodes]
    assert ops == ["FusedMatMul", "FusedMatMul"] + (["Reshape"] if quantized else [])
    rng = np.random.default_rng(5)
    inputs = {name: rng.standard_normal((tokens, 4, 8)).astype(np.float32) for name in "qkv"}
    copied = run(compile(model, config, opt_level=1), inputs, check_hazards=True)
    folded = run(compile(model, config, opt_level=2), inputs, check_hazards=True)
    assert folded.stats["hazards"] == 0
    assert np.array_equal(folded.outputs["y"], copied.outputs["y"])
    assert folded.stats["cycles"] < copied.stats["cycles"]


MOVED_BEFORE = """
graph g
  input %p: f32[2, 4, 6]
  input %v: f32[2, 6, 8]
  const %s: f32[] = [0.5]
  const %z: u8[] = [3]
  %o: f32[2, 4, 8] = MatMul(%p, %v)  @pv
  %t: f32[4, 2, 8] = Transpose(%o) {perm=[1, 0, 2]}  @heads
  %r: f32[4, 16] = Reshape(%t) {shape=[4, 16]}  @merge
  %q: u8[4, 16] = QuantizeLinear(%r, %s, %z) {output_dtype="u8"}  @quantize
  output %q
"""
MOVED_AFTER = """
graph g
  input %p: f32[2, 4, 6]
  input %v: f32[2, 6, 8]
  const %s: f32[] = [0.5]
  const %z: u8[] = [3]
  %q.early: u8[2, 4, 8] = FusedMatMul(%p, %v, _, _, %s, %z) {activation="", activation_params=[], \\
tail=["QuantizeLinear(x0, x1, x2) {output_dtype=\\"u8\\"}"]}  @pv
  %t.early: u8[4, 2, 8] = Transpose(%q.early) {perm=[1, 0, 2]}  @heads
  %q: u8[4, 16] = Reshape(%t.early) {shape=[4, 16]}  @merge
  output %q
"""


def test_quantize_behind_head_transposes_moves_before_them_into_the_tail():
    """A per-tensor QuantizeLinear of attention's output, its heads put back between the tokens,
    runs on the product's tiles; a Transpose that moves the last axis keeps it where it was."""
    assert run_pass(fuse_tail, MOVED_BEFORE) == same(MOVED_AFTER.replace("\\\n", ""))
    last_axis_moved = MOVED_BEFORE.replace("perm=[1, 0, 2]}", "perm=[0, 2, 1]}").replace("%t: f32[4, 2, 8]",
                                                                                         "%t: f32[2, 8, 4]")
    assert run_pass(fuse_tail, last_axis_moved) == same(last_axis_moved)


SOFTMAX_BEFORE = """
graph g
  input %q: f32[2, 4, 8]
  input %k: f32[2, 8, 4]
  input %one: f32[2, 1, 8]
  const %w: f32[8, 4] = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24, \
25, 26, 27, 28, 29, 30, 31, 32]
  %s: f32[2, 4, 4] = FusedMatMul(%q, %k, _, _) {activation="", activation_params=[]}  @scores
  %p: f32[2, 4, 4] = Softmax(%s) {axis=2}  @softmax
  %d: f32[2, 1, 4] = MatMul(%one, %k)  @decode
  %dp: f32[2, 1, 4] = Softmax(%d) {axis=2}  @decode_softmax
  %c: f32[2, 4, 4] = MatMul(%q, %w)  @constant
  %cp: f32[2, 4, 4] = Softmax(%c) {axis=2}  @constant_softmax
  %t: f32[2, 4, 4] = MatMul(%q, %k)  @columns
  %tp: f32[2, 4, 4] = Softmax(%t) {axis=1}  @columns_softmax
  output %p
  output %dp
  output %cp
  output %tp
"""
SOFTMAX_AFTER = SOFTMAX_BEFORE.replace(
    """  %s: f32[2, 4, 4] = FusedMatMul(%q, %k, _, _) {activation="", activation_params=[]}  @scores
  %p: f32[2, 4, 4] = Softmax(%s) {axis=2}  @softmax
""", """  %p: f32[2, 4, 4] = FusedMatMul(%q, %k, _, _) {activation="", activation_params=[], softmax=1}  @scores
""")


def test_softmax_along_the_scores_rows_joins_the_product():
    """Attention's scores (a run-time right operand, several rows) take the Softmax along their
    rows; one row (a decode step), constant weights or a softmax along another axis do not."""
    before = SOFTMAX_BEFORE.replace("\\\n", "")
    assert run_pass(fuse_softmax, before) == same(SOFTMAX_AFTER.replace("\\\n", ""))


NORM_BEFORE = """
graph g
  input %x: f32[4, 16]
  input %s2: f32[]
  const %g: f32[16] = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16]
  const %s: f32[] = [0.05]
  const %z: u8[] = [128]
  %y: f32[4, 16] = LayerNormalization(%x, %g) {axis=1}  @norm
  %q: u8[4, 16] = QuantizeLinear(%y, %s, %z) {output_dtype="u8"}  @quantize
  %y2: f32[4, 16] = LayerNormalization(%x, %g) {axis=1}  @norm_twice_read
  %q2: u8[4, 16] = QuantizeLinear(%y2, %s, %z) {output_dtype="u8"}  @quantize2
  %r2: f32[4, 16] = Relu(%y2)  @other_reader
  %y3: f32[4, 16] = LayerNormalization(%x, %g) {axis=1}  @norm_run_time_scale
  %q3: u8[4, 16] = QuantizeLinear(%y3, %s2, %z) {output_dtype="u8"}  @quantize3
  output %q
  output %q2
  output %r2
  output %q3
"""
NORM_AFTER = NORM_BEFORE.replace(
    """  %y: f32[4, 16] = LayerNormalization(%x, %g) {axis=1}  @norm
  %q: u8[4, 16] = QuantizeLinear(%y, %s, %z) {output_dtype="u8"}  @quantize
""", """  %q: u8[4, 16] = FusedLayerNorm(%x, %g, _, %s, %z) {axis=1, epsilon=1e-05, \\
tail=["QuantizeLinear(x0, x1, x2) {output_dtype=\\"u8\\"}"]}  @norm
""")


def test_layer_norm_takes_its_quantization_as_a_tail():
    """A LayerNormalization's y quantized per tensor (constant scale and zero point) is quantized
    on its row tiles; a y with another reader, or a run-time scale, is left as it was."""
    assert run_pass(fuse_norm_tail, NORM_BEFORE) == same(NORM_AFTER.replace("\\\n", ""))


@pytest.mark.parametrize("config", ["tiny", "edge"])
def test_layer_norm_with_its_quantization_equals_the_unfused_program(config):
    nodes = [helper.make_node("LayerNormalization", ["x", "gamma", "beta"], ["y"], axis=-1, epsilon=1e-5),
             helper.make_node("QuantizeLinear", ["y", "scale", "zero"], ["q"])]
    rng = np.random.default_rng(7)
    model = helper.make_model(helper.make_graph(
        nodes, "norm", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 24, 48])],
        [helper.make_tensor_value_info("q", TensorProto.UINT8, [1, 24, 48])],
        [numpy_helper.from_array(rng.standard_normal(48).astype(np.float32), "gamma"),
         numpy_helper.from_array(rng.standard_normal(48).astype(np.float32), "beta"),
         numpy_helper.from_array(np.float32(0.03), "scale"), numpy_helper.from_array(np.uint8(120), "zero")]),
        opset_imports=[helper.make_opsetid("", 17)])
    inputs = {"x": rng.standard_normal((1, 24, 48)).astype(np.float32)}
    from compiler.frontend import import_model
    from compiler.pipeline import run_passes

    assert [node.op for node in run_passes(import_model(model), 2).nodes] == ["FusedLayerNorm"]
    unfused = run(compile(model, config, opt_level=1), inputs, check_hazards=True)
    fused = run(compile(model, config, opt_level=2), inputs, check_hazards=True)
    assert fused.stats["hazards"] == 0
    assert np.array_equal(fused.outputs["q"], unfused.outputs["q"])
    assert fused.stats["cycles"] < unfused.stats["cycles"]


def test_vector_times_run_time_matrix_keeps_its_element_wise_chain():
    """A vector (one row) times a run-time matrix, then an element-wise chain: the chain stays its
    own node (the one-row rule) and the program gives the -O1 result."""
    from compiler.frontend import import_model
    from compiler.pipeline import run_passes

    nodes = [helper.make_node("MatMul", ["v", "w"], ["m"]), helper.make_node("Relu", ["m"], ["r"]),
             helper.make_node("Mul", ["r", "m"], ["y"])]
    model = helper.make_model(helper.make_graph(
        nodes, "vector", [helper.make_tensor_value_info("v", TensorProto.FLOAT, [8]),
                          helper.make_tensor_value_info("w", TensorProto.FLOAT, [8, 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [16])]), opset_imports=[helper.make_opsetid("", 17)])
    assert [node.op for node in run_passes(import_model(model), 2).nodes] == ["MatMul", "FusedElementwise"]
    rng = np.random.default_rng(8)
    inputs = {"v": rng.standard_normal(8).astype(np.float32), "w": rng.standard_normal((8, 16)).astype(np.float32)}
    expected = run(compile(model, "edge", opt_level=1), inputs).outputs["y"]
    assert np.array_equal(run(compile(model, "edge", opt_level=2), inputs).outputs["y"], expected)


PROLOGUE_BEFORE = """
graph g
  input %ids: i64[2, 3]
  input %types: i64[2, 3]
  input %t: f32[2, 3, 4]
  const %words: f32[5, 4] = [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19]
  const %segments: f32[2, 4] = [1, 2, 3, 4, 5, 6, 7, 8]
  const %positions: f32[1, 3, 4] = [1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3]
  const %g: f32[4] = [1, 2, 3, 4]
  %w: f32[2, 3, 4] = Gather(%words, %ids) {axis=0}  @word_rows
  %s: f32[2, 3, 4] = Gather(%segments, %types) {axis=0}  @segment_rows
  %e: f32[2, 3, 4] = FusedElementwise(%w, %s, %positions) {steps=["Add(x0, x1)", "Add(s0, x2)"]}  @sum
  %y: f32[2, 3, 4] = LayerNormalization(%e, %g) {axis=2}  @embeddings
  %a: f32[2, 3, 4] = Add(%t, %g)  @read_twice
  %y2: f32[2, 3, 4] = LayerNormalization(%a, %g) {axis=2}  @norm_of_read_twice
  %b: f32[2, 3, 4] = Relu(%t)  @over_two_axes
  %y3: f32[2, 3, 4] = LayerNormalization(%b, %g) {axis=1}  @norm_over_two_axes
  %c: f32[2, 3, 4] = Relu(%t)  @relu
  %y4: f32[2, 3, 4] = LayerNormalization(%c, %g) {axis=2}  @norm_of_relu
  output %y
  output %y2
  output %a
  output %y3
  output %y4
"""
PROLOGUE_AFTER = PROLOGUE_BEFORE.replace("""  %w: f32[2, 3, 4] = Gather(%words, %ids) {axis=0}  @word_rows
  %s: f32[2, 3, 4] = Gather(%segments, %types) {axis=0}  @segment_rows
  %e: f32[2, 3, 4] = FusedElementwise(%w, %s, %positions) {steps=["Add(x0, x1)", "Add(s0, x2)"]}  @sum
  %y: f32[2, 3, 4] = LayerNormalization(%e, %g) {axis=2}  @embeddings
""", """  %y: f32[2, 3, 4] = FusedLayerNorm(%words, %ids, %segments, %types, %positions, %g, _) {axis=2, \\
epsilon=1e-05, tail=[], prologue=["Gather(x0, x1) {axis=0}", "Gather(x2, x3) {axis=0}", "Add(s0, s1)", \\
"Add(s2, x4)"]}  @embeddings
""").replace("""  %c: f32[2, 3, 4] = Relu(%t)  @relu
  %y4: f32[2, 3, 4] = LayerNormalization(%c, %g) {axis=2}  @norm_of_relu
""", """  %y4: f32[2, 3, 4] = FusedLayerNorm(%t, %g, _) {axis=2, epsilon=1e-05, tail=[], prologue=["Relu(x0)"]}  \\
@norm_of_relu
""")


def test_layer_norm_takes_the_element_wise_program_before_it_as_a_prologue():
    """An embedding sum (two gathered tables and a constant) before a norm over the last axis becomes
    the norm's prologue, the gathers its first steps; an X with another reader or a norm over two axes
    is left as it was."""
    assert run_pass(fuse_norm_prologue, PROLOGUE_BEFORE) == same(PROLOGUE_AFTER.replace("\\\n", ""))


def _embedding_model(batch: int, length: int, width: int, vocabulary: int, quantized: bool) -> onnx.ModelProto:
    """A transformer's embeddings: token and segment rows gathered, a position row and a bias added,
    then LayerNorm (and, `quantized`, the quantization for an int8 product after it)."""
    rng = np.random.default_rng(11)
    nodes = [helper.make_node("Gather", ["words", "ids"], ["w"]),
             helper.make_node("Gather", ["segments", "types"], ["s"]),
             helper.make_node("Add", ["w", "s"], ["ws"]), helper.make_node("Add", ["ws", "positions"], ["wsp"]),
             helper.make_node("Add", ["wsp", "shift"], ["x"]),
             helper.make_node("LayerNormalization", ["x", "gamma", "beta"], ["y"], axis=-1, epsilon=1e-5)]
    if quantized:
        nodes.append(helper.make_node("QuantizeLinear", ["y", "scale", "zero"], ["q"]))
    constants = {"words": rng.standard_normal((vocabulary, width)), "segments": rng.standard_normal((2, width)),
                 "positions": rng.standard_normal((1, length, width)), "shift": rng.standard_normal(width),
                 "gamma": rng.standard_normal(width), "beta": rng.standard_normal(width)}
    initializers = [numpy_helper.from_array(value.astype(np.float32), name) for name, value in constants.items()]
    initializers += [numpy_helper.from_array(np.float32(0.03), "scale"), numpy_helper.from_array(np.uint8(120), "zero")]
    output = helper.make_tensor_value_info("q" if quantized else "y", TensorProto.UINT8 if quantized else TensorProto.FLOAT,
                                           [batch, length, width])
    return helper.make_model(helper.make_graph(
        nodes, "embeddings", [helper.make_tensor_value_info(name, TensorProto.INT64, [batch, length])
                              for name in ("ids", "types")], [output], initializers),
        opset_imports=[helper.make_opsetid("", 17)])


@pytest.mark.parametrize("config, quantized, length, width", [("tiny", False, 40, 48), ("tiny", True, 40, 48),
                                                              ("edge", True, 40, 48), ("tiny", True, 5, 2048)])
def test_embeddings_as_a_norm_prologue_equal_the_unfused_program(config, quantized, length, width):
    """Gathered rows (negative indices among them) summed and normalised in one kernel: on tiny the
    indices are narrowed per tile, on edge once for every row, and rows of 2048 do not fit a tile on
    tiny (each tile gathers a window of columns); either way the -O1 values bit for bit, no hazard,
    fewer cycles, and X never stored."""
    from compiler.frontend import import_model
    from compiler.pipeline import run_passes

    batch, vocabulary = 2, 50
    model = _embedding_model(batch, length, width, vocabulary, quantized)
    assert [node.op for node in run_passes(import_model(model), 2).nodes] == ["FusedLayerNorm"]
    rng = np.random.default_rng(12)
    inputs = {"ids": rng.integers(-vocabulary, vocabulary, (batch, length)), "types": rng.integers(0, 2, (batch, length))}
    unfused = run(compile(model, config, opt_level=1), inputs, check_hazards=True)
    fused = run(compile(model, config, opt_level=2), inputs, check_hazards=True)
    assert fused.stats["hazards"] == 0
    name = "q" if quantized else "y"
    assert np.array_equal(fused.outputs[name], unfused.outputs[name])
    assert fused.stats["cycles"] < unfused.stats["cycles"]
    assert fused.stats["dram_bytes_written"] == batch * length * width * (1 if quantized else 4)
