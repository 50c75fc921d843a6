"""Two int8 convolutions on chip, the second pointwise (compiler/codegen/kernels/pointwise.py): a ResNet
block's 3x3 convolution and the join's convolution after it, or a join's convolution and the next block's
reduction; the second takes the first one's finished tiles from the scratchpad as its patches.

Which node pairs qualify, then end to end on ResNet-like blocks quantized by acc's own post-training
quantization: the values are the two kernels' (--disable-pass pointwise) bit for bit, with no hazard, in
fewer cycles; the first result is stored when something else reads it (a join's, the next join's skip)
and never otherwise; where the filters do not fit on chip the two kernels run apart.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from compiler.codegen.kernels.pointwise import fusable
from compiler.frontend import import_model
from compiler.pipeline import Precision, compile, quantize_for, run_passes
from runtime.simulator import run


def _blocks(channels: int, reduced: int, size: int) -> onnx.ModelProto:
    """Two bottleneck-like blocks: a 3x3 convolution, a pointwise one joined with the input (j), then the
    next block's pointwise reduction of j, a 3x3, and a pointwise convolution joined with j."""
    rng = np.random.default_rng(5)

    def filters(cout: int, cin: int, k: int) -> np.ndarray:
        return rng.standard_normal((cout, cin, k, k)) / np.sqrt(cin * k * k)

    constants = {"wa": filters(reduced, channels, 3), "wb": filters(channels, reduced, 1),
                 "wc": filters(reduced, channels, 1), "wd": filters(reduced, reduced, 3),
                 "we": filters(channels, reduced, 1)}
    constants.update({f"b{name[1]}": rng.standard_normal(value.shape[0]) / 10 for name, value in constants.items()})
    nodes = [helper.make_node("Conv", ["x", "wa", "ba"], ["a0"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["a0"], ["a"]),
             helper.make_node("Conv", ["a", "wb", "bb"], ["b0"]), helper.make_node("Add", ["b0", "x"], ["b1"]),
             helper.make_node("Relu", ["b1"], ["j"]),
             helper.make_node("Conv", ["j", "wc", "bc"], ["c0"]), helper.make_node("Relu", ["c0"], ["c"]),
             helper.make_node("Conv", ["c", "wd", "bd"], ["d0"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["d0"], ["d"]),
             helper.make_node("Conv", ["d", "we", "be"], ["e0"]), helper.make_node("Add", ["e0", "j"], ["e1"]),
             helper.make_node("Relu", ["e1"], ["y"])]
    shape = [1, channels, size, size]
    graph = helper.make_graph(nodes, "blocks", [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, shape)],
                              [numpy_helper.from_array(np.asarray(value, np.float32), name)
                               for name, value in constants.items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _joins(channels: int, reduced: int, size: int) -> onnx.ModelProto:
    """Pointwise convolutions only: one joined with the input (j), a reduction of j, and one joined with j."""
    rng = np.random.default_rng(6)
    constants = {"wb": rng.standard_normal((channels, channels, 1, 1)) / np.sqrt(channels),
                 "wc": rng.standard_normal((reduced, channels, 1, 1)) / np.sqrt(channels),
                 "we": rng.standard_normal((channels, reduced, 1, 1)) / np.sqrt(reduced)}
    nodes = [helper.make_node("Conv", ["x", "wb"], ["b0"]), helper.make_node("Add", ["b0", "x"], ["b1"]),
             helper.make_node("Relu", ["b1"], ["j"]),
             helper.make_node("Conv", ["j", "wc"], ["c0"]), helper.make_node("Relu", ["c0"], ["c"]),
             helper.make_node("Conv", ["c", "we"], ["e0"]), helper.make_node("Add", ["e0", "j"], ["e1"]),
             helper.make_node("Relu", ["e1"], ["y"])]
    shape = [1, channels, size, size]
    graph = helper.make_graph(nodes, "joins", [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, shape)],
                              [numpy_helper.from_array(np.asarray(value, np.float32), name)
                               for name, value in constants.items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _samples(channels: int, size: int) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(0)
    return [{"x": rng.random((1, channels, size, size), dtype=np.float32)} for _ in range(3)]


def _quantized_graph(channels: int, reduced: int, size: int):
    model, _ = quantize_for(_blocks(channels, reduced, size), Precision("int8", _samples(channels, size)))
    graph = run_passes(import_model(model), 2)
    return graph, [node for node in graph.nodes if node.op == "QLinearConv"]


def test_a_convolution_and_the_pointwise_convolution_reading_it_qualify():
    graph, (a, b, c, d, e) = _quantized_graph(64, 32, 8)
    assert fusable(graph, a, b)  # the 3x3, then the join's convolution
    assert fusable(graph, b, c)  # the join's convolution, then the next block's reduction
    assert not fusable(graph, c, b)  # b does not read c
    assert not fusable(graph, c, d)  # d is 3x3: the second must be pointwise
    c.attrs["strides"] = [2, 2]
    assert not fusable(graph, b, c)
    a.attrs["strides"] = [2, 2]
    assert not fusable(graph, a, b)


def _stored_bytes(program) -> int:
    return sum(i["n0"] * i["n1"] * i["n2"] * i["esize"] for i in program.instructions if i.mnemonic == "dma_store")


@pytest.mark.parametrize("make, channels, reduced, size, pairs", [
    (_blocks, 64, 32, 14, 2),  # 3x3 then join, twice; one channel block each; 196 pixels: a last tile of 4
    (_blocks, 160, 64, 12, 2),  # the joins in blocks of 128 + 32 channels; 144 pixels: a last tile of 16
    (_joins, 256, 160, 10, 1),  # a join, then the reduction: in 128 + 32 channels, its K tiles in both blocks
])
def test_the_pair_on_chip_gives_the_two_kernels_values_in_fewer_cycles(make, channels, reduced, size, pairs):
    """On edge each pair runs as one kernel: the result equals the two kernels' bit for bit, without hazards,
    in fewer cycles. A 3x3's result, read only by the join's convolution, is never stored; a join's result,
    the next join's skip, is."""
    model, samples = make(channels, reduced, size), _samples(channels, size)
    precision = Precision("int8", samples)
    together = compile(model, "edge", opt_level=2, precision=precision)
    apart = compile(model, "edge", opt_level=2, precision=precision, disabled_passes=["pointwise"])
    notes = [notes for name, notes in together.notes.items() if name.count(" + ") == 1]
    assert len(notes) == pairs
    assert all(note[0].endswith("-> on chip") and note[1].startswith("convolution pair on chip") for note in notes)
    results = [run(program, samples[0], check_hazards=True) for program in (together, apart)]
    assert [result.stats["hazards"] for result in results] == [0, 0]
    assert np.array_equal(results[0].outputs["y"], results[1].outputs["y"])
    assert results[0].stats["cycles"] < results[1].stats["cycles"]
    kept = reduced * size * size if make is _blocks else 0  # per pair, the 3x3's u8 result
    assert _stored_bytes(apart) - _stored_bytes(together) == pairs * kept


def test_a_pair_that_does_not_fit_on_chip_runs_as_two_kernels():
    """On tiny (16 KiB of scratchpad) both filters of 256 x 160 do not fit: the convolutions run apart,
    exactly as with the step disabled."""
    model, samples = _joins(256, 160, 6), _samples(256, 6)
    precision = Precision("int8", samples)
    program = compile(model, "tiny", opt_level=2, precision=precision)
    reference = compile(model, "tiny", opt_level=2, precision=precision, disabled_passes=["pointwise"])
    assert program.instructions == reference.instructions
