"""The feed-forward block on chip (compiler/codegen/kernels/mlp.py): two products with constant weights, the
first one's result (after its GELU) kept in the scratchpad as the second one's rows.

Which node pairs qualify, then end to end: int8 (acc's own post-training quantization, as MiniLM's) and
fp32 give the two kernels' values bit for bit, with no hazard, in fewer cycles, and the hidden values are
never stored; where two blocks do not fit on chip, the two kernels run apart.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from compiler.codegen.kernels.mlp import fusable
from compiler.frontend import import_model
from compiler.pipeline import Precision, compile, run_passes
from runtime.simulator import run


def _feed_forward(tokens: int, width: int, hidden: int) -> onnx.ModelProto:
    """y = LayerNorm(x + GELU(x W1 + b1) W2 + b2), GELU written out as BERT's exporters write it."""
    rng = np.random.default_rng(3)
    constants = {"w1": rng.standard_normal((width, hidden)) / np.sqrt(width), "b1": rng.standard_normal(hidden) / 10,
                 "w2": rng.standard_normal((hidden, width)) / np.sqrt(hidden), "b2": rng.standard_normal(width) / 10,
                 "sqrt2": np.sqrt(2), "one": 1.0, "half": 0.5, "gamma": np.ones(width), "beta": np.zeros(width)}
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["h0"]), helper.make_node("Add", ["h0", "b1"], ["h1"]),
             helper.make_node("Div", ["h1", "sqrt2"], ["g0"]), helper.make_node("Erf", ["g0"], ["g1"]),
             helper.make_node("Add", ["g1", "one"], ["g2"]), helper.make_node("Mul", ["h1", "g2"], ["g3"]),
             helper.make_node("Mul", ["g3", "half"], ["h"]),
             helper.make_node("MatMul", ["h", "w2"], ["y0"]), helper.make_node("Add", ["y0", "b2"], ["y1"]),
             helper.make_node("Add", ["y1", "x"], ["y2"]),
             helper.make_node("LayerNormalization", ["y2", "gamma", "beta"], ["y"], axis=-1, epsilon=1e-5)]
    graph = helper.make_graph(nodes, "feed_forward",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [tokens, width])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [tokens, width])],
                              [numpy_helper.from_array(np.asarray(value, np.float32), name)
                               for name, value in constants.items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _samples(tokens: int, width: int) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(0)
    return [{"x": rng.standard_normal((tokens, width)).astype(np.float32)} for _ in range(3)]


def _stored_bytes(program) -> int:
    return sum(i["n0"] * i["n1"] * i["n2"] * i["esize"] for i in program.instructions if i.mnemonic == "dma_store")


def test_the_two_products_of_a_feed_forward_block_qualify():
    graph = run_passes(import_model(_feed_forward(32, 64, 128)), 2)
    first, second = [node for node in graph.nodes if node.op in ("MatMul", "FusedMatMul")]
    assert fusable(graph, first, second)
    assert not fusable(graph, second, first)  # the first one does not read the second one's result
    second.attrs["round_a"] = "bf16"  # rounded on loading: not on chip
    assert not fusable(graph, first, second)
    del second.attrs["round_a"]
    graph.outputs.append(first.outputs[0])  # the hidden values wanted in DRAM
    assert not fusable(graph, first, second)


@pytest.mark.parametrize("tokens, width, hidden, precision", [
    (128, 128, 512, "int8"),
    (40, 96, 320, "int8"),  # a last block of 8 rows; a last hidden group of 64 columns
    (64, 128, 512, "fp32"),
])
def test_the_feed_forward_block_on_chip_gives_the_two_kernels_values_in_fewer_cycles(tokens, width, hidden,
                                                                                     precision):
    """On edge the hidden values stay on chip: the result equals the two kernels' (--disable-pass mlp) bit for
    bit, without hazards, in fewer cycles; the stores write at least the hidden values' bytes fewer, and the
    LayerNorm after the block still interleaves with it."""
    model, samples = _feed_forward(tokens, width, hidden), _samples(tokens, width)
    quantized = Precision(precision, samples if precision == "int8" else None)
    together = compile(model, "edge", opt_level=2, precision=quantized)
    apart = compile(model, "edge", opt_level=2, precision=quantized, disabled_passes=["mlp"])
    pair = [notes for name, notes in together.notes.items() if name.count(" + ") == 1]
    assert len(pair) == 1 and pair[0][0].startswith("searched: on chip") and pair[0][0].endswith("-> on chip")
    assert pair[0][1].startswith("feed-forward block on chip")
    assert any(name.count(" + ") == 2 and "LayerNormalization" in name for name in together.notes)
    results = [run(program, samples[0], check_hazards=True) for program in (together, apart)]
    assert [result.stats["hazards"] for result in results] == [0, 0]
    assert np.array_equal(results[0].outputs["y"], results[1].outputs["y"])
    assert results[0].stats["cycles"] < results[1].stats["cycles"]
    hidden_bytes = tokens * hidden * (1 if precision == "int8" else 4)
    assert _stored_bytes(apart) - _stored_bytes(together) >= hidden_bytes


def test_a_feed_forward_block_that_does_not_fit_on_chip_runs_as_two_kernels():
    """On tiny (16 KiB of scratchpad) two blocks of 8 rows of 512 hidden values with their buffers do not
    fit: the two products run apart, exactly as with the step disabled."""
    model, samples = _feed_forward(64, 128, 512), _samples(64, 128)
    quantized = Precision("int8", samples)
    program = compile(model, "tiny", opt_level=2, precision=quantized)
    reference = compile(model, "tiny", opt_level=2, precision=quantized, disabled_passes=["mlp"])
    assert program.instructions == reference.instructions
    notes = [notes for name, notes in program.notes.items() if name.count(" + ") == 1 and "Layer" not in name]
    assert notes and notes[0][0] == "nothing else fits: apart"  # never fitted, and apart not timed for nothing
