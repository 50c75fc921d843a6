"""Weight-only int8 (`--precision w8a16`): int8 weights per output column, bf16 activations, fp32 accumulation.

The matrix unit's mixed mode on the machine and in the timing model; the pass on an IR text;
single products against a float64 reference of the bf16-rounded activations times the integers,
then each column's scale; the GPT-2 test size's greedy generation against onnxruntime's fp32
loop (tokens and logits); and what it is for: a decode step that reads a quarter of fp32's
weight bytes and takes fewer cycles than bf16's.
"""

from __future__ import annotations

import ml_dtypes
import numpy as np
import pytest
from ir_cases import run_pass, same
from onnx import TensorProto, helper, numpy_helper

import compiler
from compiler.passes.precision import to_w8a16
from compiler.quantize.ptq import quantize_weights
from isa.config import load_config
from isa.dtypes import DType
from isa.encoding import Instruction
from isa.program import Program
from models.cache import gpt2_onnx
from models.gpt2.reference import generate_onnxruntime, prompt_ids
from runtime.generate import generate
from runtime.machine import EXEC, Machine, OperandError
from runtime.simulator import run


def bf16(x: np.ndarray) -> np.ndarray:
    return np.asarray(x, np.float32).astype(ml_dtypes.bfloat16).astype(np.float64)


# The matrix unit --------------------------------------------------------------------------------
def test_bf16_rows_times_int8_weights_is_exact():
    """load_weights of i8 then a bf16 matmul: each weight enters as the bf16 of its integer (exact), the
    products are summed in float64 and rounded once to fp32, as the float modes are."""
    config = load_config("tiny")
    machine = Machine(config, 64)
    rng = np.random.default_rng(0)
    weights = rng.integers(-127, 128, (8, 8), dtype=np.int8)
    rows = rng.standard_normal((3, 8)).astype(ml_dtypes.bfloat16)
    machine.local[0:64] = weights.view(np.uint8).reshape(-1)
    machine.local[256:256 + rows.nbytes] = rows.view(np.uint8).reshape(-1)
    EXEC["load_weights"](machine, Instruction("load_weights", dtype=DType.I8, addr=0, k=8, n=8, stride=8))
    EXEC["matmul"](machine, Instruction("matmul", dtype=DType.BF16, a=256, a_rs=8, m=3, c=config.acc_base, c_rs=8))
    got = machine.local[config.acc_base:config.acc_base + 96].view(np.float32).reshape(3, 8)
    np.testing.assert_array_equal(got, (rows.astype(np.float64) @ weights.astype(np.float64)).astype(np.float32))
    # Only this pairing mixes: f32 rows with i8 weights (or u8 weights with bf16 rows) are refused.
    for rows_dtype, weights_dtype in ((DType.F32, DType.I8), (DType.BF16, DType.U8)):
        EXEC["load_weights"](machine, Instruction("load_weights", dtype=weights_dtype, addr=0, k=8, n=8, stride=8))
        with pytest.raises(OperandError, match="activations with"):
            EXEC["matmul"](machine, Instruction("matmul", dtype=rows_dtype, a=256, a_rs=8, m=3, c=config.acc_base,
                                                c_rs=8))


def test_int8_weights_shift_in_at_the_int8_rate_and_rows_stream_at_the_bf16_rate():
    """No new latency formula: each instruction takes the row_cycles of its own dtype."""
    config = load_config("edge")
    code = [Instruction("load_weights", dtype=DType.I8, addr=0, k=32, n=32, stride=32),
            Instruction("matmul", dtype=DType.BF16, a=4096, a_rs=32, m=10, c=config.acc_base, c_rs=32),
            Instruction("end")]
    cycles = run(Program(config, code, dram_bytes=64)).stats["cycles"]
    assert cycles == 32 * config.int8_row_cycles + 10 * config.bf16_row_cycles + 32 + 32 - 2


# The pass -----------------------------------------------------------------------------------------
BEFORE = """
graph g
  input %x: f32[2, 3]
  input %k: f32[2, 4]
  const %w: f32[3, 2] = [0.5, -1.0, 0.25, 2.0, -0.5, 1.0]
  const %wt: f32[2, 2] = [1.0, 0.0, 0.5, -2.0]
  const %c: f32[2] = [0.5, -0.5]
  %h: f32[2, 2] = Gemm(%x, %w, %c) {beta=2.0}  @fc1
  %z: f32[2, 2] = FusedGemm(%h, %wt, %c, %h) {transB=1, alpha=0.5, activation="Relu"}  @fc2
  %s: f32[2, 4] = MatMul(%z, %k)  @qk
  %y: f32[2, 2] = Gemm(%x, %w)  @kept
  output %s
  output %y
"""
# w's columns reach 0.5 and 2.0: scales 0.5/127 and 2/127. fc2's weight is wt^T ([[1, 0.5], [0, -2]]), its
# scales times alpha; beta * c is a new bias, c itself serves fc2. qk's operands are both at run time:
# bf16, as to_bf16 makes them; the kept node too, through the Cast x already has.
AFTER = """
graph g
  input %x: f32[2, 3]
  input %k: f32[2, 4]
  const %c: f32[2] = [0.5, -0.5]
  const %c.bias: f32[2] = [1.0, -1.0]
  const %w.i8: i8[3, 2] = [127, -64, 64, 127, -127, 64]
  const %w.scale: f32[2] = [0.003937007859349251, 0.015748031437397003]
  const %wt.i8: i8[2, 2] = [127, 32, 0, -127]
  const %wt.scale: f32[2] = [0.003937007859349251, 0.007874015718698502]
  const %w.bf16: bf16[3, 2] = [0.5, -1.0, 0.25, 2.0, -0.5, 1.0]
  %x.bf16: bf16[2, 3] = Cast(%x) {to="bf16"}  @fc1/cast
  %h: f32[2, 2] = MatMulW8(%x.bf16, %w.i8, %w.scale, %c.bias)  @fc1
  %h.bf16: bf16[2, 2] = Cast(%h) {to="bf16"}  @fc2/cast
  %z: f32[2, 2] = MatMulW8(%h.bf16, %wt.i8, %wt.scale, %c, %h) {activation="Relu"}  @fc2
  %z.bf16: bf16[2, 2] = Cast(%z) {to="bf16"}  @qk/cast
  %k.bf16: bf16[2, 4] = Cast(%k) {to="bf16"}  @qk/cast
  %s: f32[2, 4] = MatMul(%z.bf16, %k.bf16)  @qk
  %y: f32[2, 2] = Gemm(%x.bf16, %w.bf16)  @kept
  output %s
  output %y
"""


def test_the_pass_quantizes_constant_weights_per_column():
    assert run_pass(to_w8a16, BEFORE, keep={"kept": "bf16"}) == same(AFTER)


UNQUANTIZED = """
graph g
  input %x: f32[3, 2]
  input %y: f32[2, 3]
  const %w: f32[3, 2] = [0.5, -1.0, 0.25, 2.0, -0.5, 1.0]
  const %c: f32[2, 1] = [1.0, 2.0]
  %h: f32[2, 2] = Gemm(%x, %w) {transA=1}  @t
  %r: f32[2, 2] = Gemm(%y, %w, %c)  @rows
  %f: f32[2, 2] = MatMul(%h, %r)  @f
  output %f
"""
# transA, and a C that is one value per row, are no weight-only products: bf16 operands, as to_bf16 gives;
# the node kept in fp32 is left alone.
UNQUANTIZED_AFTER = """
graph g
  input %x: f32[3, 2]
  input %y: f32[2, 3]
  const %c: f32[2, 1] = [1.0, 2.0]
  const %w.bf16: bf16[3, 2] = [0.5, -1.0, 0.25, 2.0, -0.5, 1.0]
  %x.bf16: bf16[3, 2] = Cast(%x) {to="bf16"}  @t/cast
  %h: f32[2, 2] = Gemm(%x.bf16, %w.bf16) {transA=1}  @t
  %y.bf16: bf16[2, 3] = Cast(%y) {to="bf16"}  @rows/cast
  %r: f32[2, 2] = Gemm(%y.bf16, %w.bf16, %c)  @rows
  %f: f32[2, 2] = MatMul(%h, %r)  @f
  output %f
"""


def test_the_pass_leaves_what_it_cannot_quantize_to_bf16():
    assert run_pass(to_w8a16, UNQUANTIZED, keep={"f": "fp32"}) == same(UNQUANTIZED_AFTER)


# Compiled and simulated ----------------------------------------------------------------------------
def fc_model(m: int, k: int, n: int, weight: np.ndarray, bias: np.ndarray, residual: bool):
    nodes = [helper.make_node("Gemm", ["x", "w", "b"], ["g"])]
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, [m, k])]
    if residual:
        nodes.append(helper.make_node("Add", ["g", "r"], ["y"]))
        inputs.append(helper.make_tensor_value_info("r", TensorProto.FLOAT, [m, n]))
    else:
        nodes[0].output[0] = "y"
    graph = helper.make_graph(nodes, "fc", inputs, [helper.make_tensor_value_info("y", TensorProto.FLOAT, [m, n])],
                              [numpy_helper.from_array(weight, "w"), numpy_helper.from_array(bias, "b")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


@pytest.mark.parametrize("config,m,k,n,opt_level", [
    ("tiny", 1, 40, 20, 2),  # rows on chip, weights streamed, the row rounded on chip
    ("tiny", 70, 40, 20, 2),  # rows do not fit: tiles of both, the rows rounded through DRAM
    ("edge", 1, 300, 100, 1),  # a Cast node before the product
    ("edge", 5, 300, 100, 2),
    ("server", 3, 700, 300, 2),
])
def test_a_product_is_bf16_rows_times_the_integers_then_the_scale(config, m, k, n, opt_level):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((m, k)).astype(np.float32)
    w = rng.standard_normal((k, n)).astype(np.float32)
    b = rng.standard_normal(n).astype(np.float32)
    r = rng.standard_normal((m, n)).astype(np.float32)
    program = compiler.compile(fc_model(m, k, n, w, b, True), config, opt_level=opt_level, precision="w8a16")
    assert program.precision == "w8a16"
    result = run(program, {"x": x, "r": r}, check_hazards=True)
    assert not result.hazards
    integers, scales = quantize_weights(w, axis=1)
    accumulated = bf16(x) @ integers.astype(np.float64)
    expected = accumulated.astype(np.float32).astype(np.float64) * scales + b + r
    # fp32 accumulation of k products (exact bf16 x int8 terms), then three fp32 operations.
    bound = (k + 4) * 2.0 ** -24 * (np.abs(bf16(x)) @ np.abs(integers.astype(np.float64)) * scales + np.abs(b) +
                                    np.abs(r))
    assert np.all(np.abs(result.outputs["y"] - expected) <= bound)
    # And the quantization error against fp32 is what int8 weights give: about 1% of the output's size.
    error = np.abs(result.outputs["y"] - (x.astype(np.float64) @ w + b + r)).max() / np.abs(x @ w).max()
    assert 1e-4 < error < 3e-2


def test_weights_are_stored_and_read_once_as_int8():
    """A batch-1 product's weights cross DRAM as one byte each, read once (that is the point)."""
    m, k, n = 1, 512, 384
    rng = np.random.default_rng(1)
    model = fc_model(m, k, n, rng.standard_normal((k, n)).astype(np.float32), np.zeros(n, np.float32), False)
    program = compiler.compile(model, "edge", opt_level=2, precision="w8a16")
    (weights,) = [c for c in program.constants if c.name.startswith("w.i8")]
    assert len(weights.data) == k * n
    reads = sum(i.fields["n0"] * i.fields["n1"] * i.fields["n2"] * i.fields["esize"] for i in program.instructions
                if i.mnemonic == "dma_load" and weights.dram <= i.fields["dram"] < weights.dram + k * n)
    assert reads == k * n
    assert {i.fields["dtype"] for i in program.instructions if i.mnemonic == "load_weights"} == {DType.I8}


# GPT-2, test size ------------------------------------------------------------------------------------
STEPS = 32


@pytest.fixture(scope="module")
def reference():
    return generate_onnxruntime("test", prompt_ids("test"), steps=STEPS)


def compile_pair(config: str, precision: str):
    return tuple(compiler.compile(gpt2_onnx("test", graph), config, opt_level=2, state="auto", precision=precision)
                 for graph in ("prefill", "decode"))


def test_generation_agrees_with_fp32_onnxruntime(reference):
    """Measured: all 33 tokens equal, every step's logits cosine >= 0.99992 and max error <= 1.5% of the
    largest logit (bf16 alone: 0.99999 and 0.5%). The bounds leave about twice that room."""
    prefill, decode = compile_pair("edge", "w8a16")
    assert generate(prefill, decode, prompt_ids("test"), 1, check_hazards=True).hazards == 0  # a prefill and a step
    result = generate(prefill, decode, prompt_ids("test"), STEPS)
    np.testing.assert_array_equal(result.tokens, reference.tokens)
    cosine = (result.logits * reference.logits).sum(axis=1) / np.linalg.norm(result.logits, axis=1) / \
        np.linalg.norm(reference.logits, axis=1)
    error = np.abs(result.logits - reference.logits).max(axis=1) / np.abs(reference.logits).max(axis=1)
    assert cosine.min() >= 0.9998 and error.max() <= 0.03, (cosine.min(), error.max())


def test_decode_reads_a_quarter_of_the_fp32_weights_and_beats_bf16():
    """int8 weights are a quarter of fp32's bytes and half of bf16's, and the decode step, which streams
    them once, takes fewer cycles than bf16's on the server config (the test size's 128-wide layers are
    too small for the full factor: fixed latencies weigh more than on GPT-2 small)."""
    prompt = prompt_ids("test")
    results = {precision: generate(*compile_pair("server", precision), prompt, 2)
               for precision in ("fp32", "bf16", "w8a16")}
    weights = {precision: result.weight_bytes for precision, result in results.items()}
    assert weights["w8a16"] < 0.27 * weights["fp32"] and weights["w8a16"] < 0.54 * weights["bf16"]
    cycles = {precision: result.decode_cycles_per_token for precision, result in results.items()}
    assert cycles["w8a16"] < cycles["bf16"] < cycles["fp32"], cycles
    assert results["w8a16"].bound_ratio >= 1
