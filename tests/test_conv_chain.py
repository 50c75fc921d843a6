"""A chain of int8 convolutions on chip (compiler/codegen/kernels/conv_chain.py): a ResNet block's 3x3,
the join's convolution and the next block's reduction, each after the first taking the one before's
finished tiles from the scratchpad as its patches.

Which nodes qualify and the order the array takes the products' blocks in; then end to end on ResNet-like
blocks quantized by acc's own post-training quantization: the values are the kernels' apart
(--disable-pass conv_chain) bit for bit, with no hazard, in fewer cycles; a result is stored when
something else reads it (a join's, the next join's skip) and never otherwise; where the whole chain does
not fit on chip its first two run as one kernel, and where they do not either, the kernels run apart.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from compiler.codegen.kernels.conv_chain import fusable
from compiler.codegen.kernels.mlp import job_order
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
    return _model("blocks", nodes, constants, [1, channels, size, size])


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
    return _model("joins", nodes, constants, [1, channels, size, size])


def _projection_block(channels: int, width: int, reduced: int, size: int) -> onnx.ModelProto:
    """A ResNet projection block (a reduction, a 3x3, a pointwise expansion joined with the projection
    shortcut, j), then the next block's reduction and a pointwise expansion joined with j."""
    rng = np.random.default_rng(7)

    def filters(cout: int, cin: int, k: int) -> np.ndarray:
        return rng.standard_normal((cout, cin, k, k)) / np.sqrt(cin * k * k)

    constants = {"wa": filters(reduced, channels, 1), "wb": filters(reduced, reduced, 3),
                 "wc": filters(width, reduced, 1), "wp": filters(width, channels, 1),
                 "wd": filters(reduced, width, 1), "we": filters(width, reduced, 1)}
    nodes = [helper.make_node("Conv", ["x", "wa"], ["a0"]), helper.make_node("Relu", ["a0"], ["a"]),
             helper.make_node("Conv", ["a", "wb"], ["b0"], pads=[1, 1, 1, 1]), helper.make_node("Relu", ["b0"], ["b"]),
             helper.make_node("Conv", ["b", "wc"], ["c"]), helper.make_node("Conv", ["x", "wp"], ["p"]),
             helper.make_node("Add", ["c", "p"], ["j0"]), helper.make_node("Relu", ["j0"], ["j"]),
             helper.make_node("Conv", ["j", "wd"], ["d0"]), helper.make_node("Relu", ["d0"], ["d"]),
             helper.make_node("Conv", ["d", "we"], ["e0"]), helper.make_node("Add", ["e0", "j"], ["e1"]),
             helper.make_node("Relu", ["e1"], ["y"])]
    graph = helper.make_graph(nodes, "projection", [helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                                                                    [1, channels, size, size])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, width, size, size])],
                              [numpy_helper.from_array(np.asarray(value, np.float32), name)
                               for name, value in constants.items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _model(title: str, nodes: list, constants: dict, shape: list[int]) -> onnx.ModelProto:
    """y = the nodes of x, both of `shape`, with the constants as fp32 initializers."""
    graph = helper.make_graph(nodes, title, [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
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


def test_each_product_takes_a_tile_after_the_product_before_finished_it():
    jobs = job_order(5, [1, 3, 2])
    assert sorted(jobs) == sorted((product, tile, block) for product, blocks in enumerate([1, 3, 2])
                                  for tile in range(5) for block in range(blocks))
    for at, (product, tile, _) in enumerate(jobs):
        if product:  # every block of the product before, on this tile, comes earlier
            assert all(jobs.index((product - 1, tile, block)) < at for block in range([1, 3, 2][product - 1]))
    # A software pipeline: product p takes tile t - p while product 0 takes tile t, their blocks in turn.
    steps = [product + tile for product, tile, _ in jobs]
    assert steps == sorted(steps)
    assert jobs[:5] == [(0, 0, 0), (1, 0, 0), (0, 1, 0), (1, 0, 1), (1, 0, 2)]


@pytest.mark.parametrize("make, channels, reduced, size, chains", [
    # 3x3, join, reduction, then 3x3 and join; 196 pixels: a last tile of 4
    (_blocks, 64, 32, 14, ["Conv + Conv + Conv", "Conv + Conv"]),
    # the joins in blocks of 128 + 32 channels; 144 pixels: a last tile of 16
    (_blocks, 160, 64, 12, ["Conv + Conv + Conv", "Conv + Conv"]),
    # join, reduction, join: the reduction's K tiles in both of the first join's blocks (160 + 96)
    (_joins, 256, 160, 10, ["Conv + Conv + Conv"]),
    # the reduction in two blocks (288 + 96) between joins of one block each
    (_joins, 96, 384, 10, ["Conv + Conv + Conv"]),
    # the three filters do not fit the scratchpad: the first two run as one kernel
    (_joins, 512, 160, 6, ["Conv + Conv"]),
])
def test_the_chain_on_chip_gives_the_kernels_values_in_fewer_cycles(make, channels, reduced, size, chains):
    """On edge each chain runs as one kernel: the result equals the kernels' apart bit for bit, without
    hazards, in fewer cycles. A 3x3's or a reduction's result, read only by the next convolution, is never
    stored; a join's result, the next join's skip, is."""
    model, samples = make(channels, reduced, size), _samples(channels, size)
    precision = Precision("int8", samples)
    together = compile(model, "edge", opt_level=2, precision=precision)
    apart = compile(model, "edge", opt_level=2, precision=precision, disabled_passes=["conv_chain"])
    emitted = sorted((name for name, notes in together.notes.items()
                      if any(note.startswith("convolution chain on chip") for note in notes)), key=len, reverse=True)
    assert ["+".join(["Conv"] * (name.count(" + ") + 1)).replace("+", " + ") for name in emitted] == chains
    searches = [notes[0] for name, notes in together.notes.items() if name.count(" + ") == 2]
    if searches and chains[0].count(" + ") == 1:  # the longest that fits is timed against apart, no other
        assert searches[0].startswith("searched: first 2 on chip") and searches[0].count(" on chip ") == 1
    results = [run(program, samples[0], check_hazards=True) for program in (together, apart)]
    assert [result.stats["hazards"] for result in results] == [0, 0]
    assert np.array_equal(results[0].outputs["y"], results[1].outputs["y"])
    assert results[0].stats["cycles"] < results[1].stats["cycles"]
    # Never stored: per chain, each result but the last that only the next node reads.
    never = {_blocks: 2 * reduced, _joins: reduced if len(chains[0].split(" + ")) == 3 else 0}[make]
    assert _stored_bytes(apart) - _stored_bytes(together) == never * size * size


def test_a_chain_that_does_not_fit_on_chip_runs_as_separate_kernels():
    """On tiny (16 KiB of scratchpad) no two of the filters fit: the convolutions run apart, exactly as with
    the step disabled."""
    model, samples = _joins(256, 160, 6), _samples(256, 6)
    precision = Precision("int8", samples)
    program = compile(model, "tiny", opt_level=2, precision=precision)
    reference = compile(model, "tiny", opt_level=2, precision=precision, disabled_passes=["conv_chain"])
    assert program.instructions == reference.instructions
    assert [notes[0] for name, notes in program.notes.items() if " + " in name] == ["nothing else fits: apart"]


def test_a_projection_block_chains_its_main_branch():
    """The shortcut's convolution runs first (fuse_tail), so the 3x3, the expansion joined with the shortcut,
    the next reduction and the next expansion (joined with j) run as one chain: the values are -O1's and
    those of the kernels apart, bit for bit, without hazards, in fewer cycles."""
    model, samples = _projection_block(32, 128, 32, 12), _samples(32, 12)
    precision = Precision("int8", samples)
    programs = [compile(model, "edge", opt_level=2, precision=precision),
                compile(model, "edge", opt_level=2, precision=precision, disabled_passes=["conv_chain"]),
                compile(model, "edge", opt_level=1, precision=precision)]
    chains = [notes[-1] for notes in programs[0].notes.values() if notes[-1].startswith("convolution chain")]
    assert len(chains) == 1 and chains[0].startswith("convolution chain on chip (3x3, then 1x1, then 1x1, then 1x1)")
    results = [run(program, samples[0], check_hazards=True) for program in programs]
    assert [result.stats["hazards"] for result in results] == [0, 0, 0]
    assert np.array_equal(results[0].outputs["y"], results[1].outputs["y"])
    assert np.array_equal(results[0].outputs["y"], results[2].outputs["y"])
    assert results[0].stats["cycles"] < results[1].stats["cycles"]
