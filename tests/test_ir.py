"""The IR's text form: print -> parse -> print is the identity; large constants elide; prune."""

import math

import numpy as np
import pytest

from compiler.ir import Graph, IRParseError, Node, Value, parse, to_text
from compiler.verify import verify

EXAMPLE = """\
graph example
  input %x: f32[1, 3, 8, 8]
  input %"ids:0": i64[2]
  const %w: f32[4, 3, 1, 1] = [0.5, -1.0, 2.0, 0.25, 1e-05, 3.0, -0.0, 1.5, 2.5, -2.5, 0.125, 7.0]
  const %b: f32[4] = [inf, -inf, nan, 0.0]
  const %table: i32[5, 2] = [0, 1, 2, 3, 4, 5, 6, 7, 8, 9]
  const %mask: bool[8] = [1, 0, 0, 1, 1, 1, 0, 0]
  const %scalar: f32[] = [0.5]
  %y: f32[1, 4, 8, 8] = Conv(%x, %w, %b) {group=1, kernel_shape=[1, 1], strides=[1, 1], \
pads=[0, 0, 0, 0], dilations=[1, 1]}  @conv1
  %c: f32[1, 4, 8, 8] = Clip(%y) {min=-inf, max=6.0}  @"clip 1"
  %s1: f32[1, 1, 8, 8], _, %s3: f32[1, 2, 8, 8] = Split(%c) {axis=1, split=[1, 1, 2]}
  %g: i32[2, 2] = Gather(%table, %"ids:0") {axis=0}
  %m: f32[1, 1, 8, 8] = Where(%mask, %s1, %scalar)
  %r: f32[1, 2, 16, 16] = Resize(%s3) {sizes=[1, 2, 16, 16], scales=[1.0, 1.0, 2.0, 2.0], mode="nearest", \
coordinate_transformation_mode="asymmetric", nearest_mode="floor", cubic_coeff_a=-0.75, exclude_outside=0, \
extrapolation_value=0.0}
  %e: f32[1, 2, 16, 16] = Gelu(%r) {approximate="tanh"}
  %q: f32[1, 64] = Reshape(%m) {shape=[1, 64]}  @"model/layer:0/reshape"
  output %e
  output %g
  output %q
"""


def test_round_trip_is_identity():
    graph = parse(EXAMPLE)
    text = to_text(graph)
    assert to_text(parse(text)) == text


def test_parse_reads_every_part():
    graph = parse(EXAMPLE)
    assert graph.name == "example"
    assert graph.inputs == ["x", "ids:0"] and graph.outputs == ["e", "g", "q"]
    split = graph.nodes[2]
    assert split.outputs == ["s1", "", "s3"] and split.attrs == {"axis": 1, "split": [1, 1, 2]}
    assert graph.nodes[0].name == "conv1" and graph.nodes[1].name == "clip 1"
    assert graph.nodes[1].attrs["min"] == -math.inf
    assert graph.values["b"].const.dtype == np.float32 and np.isnan(graph.values["b"].const[2])
    assert graph.values["mask"].const.tolist()[:2] == [True, False]
    assert graph.nodes[-1].name == "model/layer:0/reshape"
    assert graph.values["scalar"].shape == () and graph.values["scalar"].const.shape == ()
    assert graph.values["table"].const.dtype == np.int32


def test_example_is_a_valid_graph():
    verify(parse(EXAMPLE))


def test_attributes_print_in_op_table_order():
    graph = parse(EXAMPLE)
    conv = next(line for line in to_text(graph).splitlines() if "Conv(" in line)
    assert "{group=1, kernel_shape=[1, 1], strides=[1, 1], pads=[0, 0, 0, 0], dilations=[1, 1]}" in conv


def test_float_constants_survive_exactly():
    graph = Graph()
    data = np.array([0.1, 1 / 3, -2.5e-38, 3.4e38, np.pi], dtype=np.float32)
    graph.const("k", data)
    graph.add_value(Value("x", "f32", (5,)))
    graph.inputs.append("x")
    graph.add_value(Value("y", "f32", (5,)))
    graph.nodes.append(Node("Add", ["x", "k"], ["y"]))
    graph.outputs.append("y")
    again = parse(to_text(graph))
    assert again.values["k"].const.tobytes() == data.tobytes()


def test_large_constants_elide_when_asked():
    graph = Graph()
    graph.add_value(Value("x", "f32", (4, 8)))
    graph.inputs.append("x")
    graph.const("w", np.ones((8, 4), dtype=np.float32))
    graph.add_value(Value("y", "f32", (4, 4)))
    graph.nodes.append(Node("MatMul", ["x", "w"], ["y"]))
    graph.outputs.append("y")
    short = to_text(graph, full_constants=False)
    assert "const %w: f32[8, 4] = <32 values>" in short
    assert "<" not in to_text(graph)


def test_unused_constants_are_not_printed():
    graph = parse(EXAMPLE)
    graph.const("spare", np.zeros(3, dtype=np.float32))
    assert "spare" not in to_text(graph)


def test_parse_errors_name_the_line():
    with pytest.raises(IRParseError, match="line 2: unknown dtype 'f33'"):
        parse("graph g\n  input %x: f33[1]\n")
    with pytest.raises(IRParseError, match="line 2: const %c has 3 values for shape \\[2\\]"):
        parse("graph g\n  const %c: f32[2] = [1.0, 2.0, 3.0]\n")


def test_prune_keeps_values_of_unused_outputs_of_kept_nodes():
    graph = parse("""\
graph g
  input %x: f32[4, 6]
  %v: f32[4, 2], %i: i64[4, 2] = TopK(%x) {k=2, axis=1, largest=1, sorted=1}
  %dead: f32[4, 6] = Relu(%x)
  output %v
""")
    graph.prune()
    assert [node.op for node in graph.nodes] == ["TopK"]
    assert "i" in graph.values and "dead" not in graph.values
    verify(graph)


def test_node_names_that_do_not_read_as_one_name_are_quoted():
    graph = parse(VALID_RELU)
    for name in ("7_relu", "0", "-1", "/model/layer.0/Relu", "with space"):
        graph.nodes[0].name = name
        assert parse(to_text(graph)).nodes[0].name == name


VALID_RELU = """\
graph g
  input %x: f32[2]
  %y: f32[2] = Relu(%x)
  output %y
"""
