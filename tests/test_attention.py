"""Attention on chip (compiler/codegen/kernels/attention.py): the scores product with its tail and softmax,
then the product with V, as one kernel whose probabilities never reach DRAM.

Which node pairs qualify, then end to end: the same values as the two kernels apart, bit for bit, with
no hazard, fewer cycles and less DRAM traffic, and onnxruntime's result; where two blocks do not fit on
chip, the two kernels apart.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from compiler.codegen.kernels.attention import fusable
from compiler.frontend import import_model
from compiler.pipeline import compile, run_passes
from runtime.simulator import run

HEADS, DEPTH = 4, 8


def _attention(tokens: int) -> onnx.ModelProto:
    """q, k, v [tokens, HEADS, DEPTH]; per head softmax(q k^T * scale + mask) v, the heads put back between
    the tokens and quantized per tensor (MiniLM's self-attention, with its int8 output's quantization)."""
    nodes = [helper.make_node("Transpose", ["q"], ["qt"], perm=[1, 0, 2]),
             helper.make_node("Transpose", ["k"], ["kt"], perm=[1, 2, 0]),
             helper.make_node("MatMul", ["qt", "kt"], ["s"]), helper.make_node("Mul", ["s", "scale"], ["scaled"]),
             helper.make_node("Add", ["scaled", "mask"], ["masked"]),
             helper.make_node("Softmax", ["masked"], ["p"], axis=-1),
             helper.make_node("Transpose", ["v"], ["vt"], perm=[1, 0, 2]),
             helper.make_node("MatMul", ["p", "vt"], ["o"]),
             helper.make_node("Transpose", ["o"], ["ot"], perm=[1, 0, 2]),
             helper.make_node("Reshape", ["ot", "shape"], ["r"]),
             helper.make_node("QuantizeLinear", ["r", "y_scale", "zero"], ["y"])]
    inputs = [helper.make_tensor_value_info(name, TensorProto.FLOAT, [tokens, HEADS, DEPTH]) for name in "qkv"]
    inputs.append(helper.make_tensor_value_info("mask", TensorProto.FLOAT, [1, tokens, tokens]))
    constants = [numpy_helper.from_array(np.float32(DEPTH ** -0.5), "scale"),
                 numpy_helper.from_array(np.array([tokens, HEADS * DEPTH], np.int64), "shape"),
                 numpy_helper.from_array(np.float32(0.01), "y_scale"), numpy_helper.from_array(np.uint8(128), "zero")]
    output = helper.make_tensor_value_info("y", TensorProto.UINT8, [tokens, HEADS * DEPTH])
    return helper.make_model(helper.make_graph(nodes, "attention", inputs, [output], constants),
                             opset_imports=[helper.make_opsetid("", 17)])


def _inputs(tokens: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(7)
    feeds = {name: rng.standard_normal((tokens, HEADS, DEPTH)).astype(np.float32) for name in "qkv"}
    feeds["mask"] = np.where(rng.random((1, tokens, tokens)) < 0.2, -1e4, 0.0).astype(np.float32)
    return feeds


def _stored_bytes(program) -> int:
    return sum(i["n0"] * i["n1"] * i["n2"] * i["esize"] for i in program.instructions if i.mnemonic == "dma_store")


def test_the_scores_and_values_products_qualify_as_one_kernel():
    graph = run_passes(import_model(_attention(16)), 2)
    scores, values = [node for node in graph.nodes if node.op == "FusedMatMul"]
    assert scores.attrs.get("softmax") and fusable(graph, scores, values)
    for node in (scores, values):  # both products rounding both operands to bf16
        node.attrs.update(round_a="bf16", round_b="bf16")
    assert fusable(graph, scores, values)
    del values.attrs["round_b"]  # one product rounding one operand only
    assert not fusable(graph, scores, values)
    for node in (scores, values):
        node.attrs.pop("round_a"), node.attrs.pop("round_b", None)
    graph.outputs.append(scores.outputs[0])  # the probabilities wanted in DRAM
    assert not fusable(graph, scores, values)


@pytest.mark.parametrize("tokens", [40, 128])
def test_attention_on_chip_gives_the_two_kernels_values_in_fewer_cycles(tokens):
    """On edge the probabilities of every head stay on chip: the result equals the two kernels' (run with
    --disable-pass attention) bit for bit and onnxruntime's to one quantization step, without hazards,
    in fewer cycles, and the stores write at least the probabilities' bytes fewer."""
    model, feeds = _attention(tokens), _inputs(tokens)
    together = compile(model, "edge", opt_level=2)
    apart = compile(model, "edge", opt_level=2, disabled_passes=["attention"])
    group = [notes for name, notes in together.notes.items() if " + " in name]
    assert len(group) == 1 and group[0][0].startswith("searched: on chip")
    assert group[0][1].startswith("attention on chip")
    results = [run(program, feeds, check_hazards=True) for program in (together, apart)]
    assert [result.stats["hazards"] for result in results] == [0, 0]
    assert np.array_equal(results[0].outputs["y"], results[1].outputs["y"])
    expected = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)[0]
    assert np.abs(results[0].outputs["y"].astype(int) - expected.astype(int)).max() <= 1
    assert results[0].stats["cycles"] < results[1].stats["cycles"]
    assert _stored_bytes(apart) - _stored_bytes(together) >= HEADS * tokens * tokens * 4


def test_bf16_attention_on_chip_rounds_the_probabilities_as_the_values_product_did():
    """In bf16 Q, K and V are rounded as they come on chip and the probabilities after their softmax, as
    the two kernels round them on loading: the same values, bit for bit, in fewer cycles."""
    model, feeds = _attention(64), _inputs(64)
    together = compile(model, "edge", opt_level=2, precision="bf16")
    apart = compile(model, "edge", opt_level=2, precision="bf16", disabled_passes=["attention"])
    assert any(" + " in entry.node for entry in together.debug)
    results = [run(program, feeds, check_hazards=True) for program in (together, apart)]
    assert results[0].stats["hazards"] == 0
    assert np.array_equal(results[0].outputs["y"], results[1].outputs["y"])
    assert results[0].stats["cycles"] < results[1].stats["cycles"]


def test_the_cost_model_keeps_the_two_kernels_where_they_are_faster():
    """On server (a 128-wide array) 16 tokens of 4 heads of 8 run faster apart: the scores product puts the
    heads side by side in one weight tile. The cost model times both and the two kernels run apart."""
    model = _attention(16)
    program = compile(model, "server", opt_level=2)
    assert not any(" + " in entry.node for entry in program.debug)
    notes = [notes for name, notes in program.notes.items() if " + " in name]
    assert notes and notes[0][0].startswith("searched: on chip") and notes[0][0].endswith("-> apart")
    feeds = _inputs(16)
    reference = run(compile(model, "server", opt_level=2, disabled_passes=["attention"]), feeds)
    result = run(program, feeds)
    assert np.array_equal(result.outputs["y"], reference.outputs["y"])
    assert result.stats["cycles"] == reference.stats["cycles"]


def test_attention_that_does_not_fit_on_chip_runs_as_two_kernels():
    """On tiny (16 KiB of scratchpad) one head's K and V of 160 tokens, twice, do not fit: the two products
    run apart, with the probabilities in DRAM, and give the same values."""
    tokens = 160
    model, feeds = _attention(tokens), _inputs(tokens)
    program = compile(model, "tiny", opt_level=2)
    assert not any(" + " in entry.node for entry in program.debug)
    reference = run(compile(model, "tiny", opt_level=1), feeds)
    assert np.array_equal(run(program, feeds, check_hazards=True).outputs["y"], reference.outputs["y"])


def test_the_first_scores_do_not_wait_for_v():
    """V is what the products before attention write last (MiniLM's value product): the kernel loads the first
    batch's K, then the first rows of Q, then V, so that the first scores need not wait for V to be written."""
    program = compile(_attention(128), "edge", opt_level=2)
    regions = {t.name: (t.dram, t.dram + int(np.prod(t.shape)) * 4) for t in program.inputs if t.name in "qkv"}
    first_loads = []
    for instruction in program.instructions:
        if instruction.mnemonic == "dma_load":
            for name, (start, end) in regions.items():
                if start <= instruction["dram"] < end and name not in first_loads:
                    first_loads.append(name)
    assert first_loads == ["k", "q", "v"]
