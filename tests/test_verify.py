"""The verifier: a valid graph passes, and each broken invariant gets a message naming the node and the problem."""

import numpy as np
import pytest

from compiler.ir import Node, parse
from compiler.verify import VerifyError, verify

VALID = """\
graph g
  input %x: f32[2, 4]
  const %w: f32[4, 3] = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0, 10.0, 11.0, 12.0]
  %y: f32[2, 3] = MatMul(%x, %w)  @mm
  %z: f32[2, 3] = Relu(%y)  @relu
  output %z
"""


def _graph(body: str):
    """A graph from the text of its nodes, with input %x: f32[2, 4] and output %z."""
    return parse("graph g\n  input %x: f32[2, 4]\n" + body + "  output %z\n")


def _fails(graph, message: str):
    with pytest.raises(VerifyError) as caught:
        verify(graph)
    assert str(caught.value) == message
    assert isinstance(caught.value, ValueError)


def test_a_valid_graph_passes():
    verify(parse(VALID))


def test_unknown_op():
    _fails(_graph("  %z: f32[2, 4] = Frobnicate(%x)  @f\n"), "node 'f' (Frobnicate): unknown op 'Frobnicate'")


def test_wrong_input_arity():
    _fails(_graph("  %z: f32[2, 4] = Relu(%x, %x)  @r\n"), "node 'r' (Relu): 2 inputs, expected 1")
    _fails(_graph("  %z: f32[2, 4] = Gemm(%x)  @gemm\n"), "node 'gemm' (Gemm): 1 inputs, expected 2 to 3")
    _fails(_graph("  %z: f32[2, 4] = Sum()  @s\n"), "node 's' (Sum): 0 inputs, expected 1 or more")


def test_absent_required_input():
    _fails(_graph("  %z: f32[2, 4] = Add(_, %x)  @a\n"), "node 'a' (Add): required input 0 is absent")


def test_wrong_output_arity():
    _fails(_graph("  %z: f32[2, 4], %extra: f32[2, 4] = Relu(%x)  @r\n"), "node 'r' (Relu): 2 outputs, expected 1")


def test_nameless_nodes_are_named_by_position_and_output():
    _fails(_graph("  %z: f32[2, 4] = Relu(%x, %x)\n"), "node #0 (Relu -> %z): 2 inputs, expected 1")


def test_unknown_attribute():
    _fails(_graph("  %z: f32[2, 4] = Relu(%x) {alpha=0.5}  @r\n"),
           "node 'r' (Relu): unknown attribute 'alpha' (the op has none)")
    _fails(_graph("  %z: f32[2, 4] = LeakyRelu(%x) {slope=0.5}  @r\n"),
           "node 'r' (LeakyRelu): unknown attribute 'slope' (the op has alpha)")


def test_missing_required_attribute():
    _fails(_graph("  %z: f32[4, 2] = Transpose(%x)  @t\n"), "node 't' (Transpose): missing required attribute 'perm'")


def test_value_used_before_it_is_defined():
    _fails(_graph("  %z: f32[2, 4] = Relu(%y)  @first\n  %y: f32[2, 4] = Neg(%x)  @second\n"),
           "node 'first' (Relu): %y is used before it is defined")


def test_value_never_defined():
    _fails(_graph("  %z: f32[2, 4] = Add(%x, %ghost)  @a\n"), "node 'a' (Add): %ghost is never defined")


def test_value_defined_twice():
    _fails(_graph("  %z: f32[2, 4] = Relu(%x)  @one\n  %z: f32[2, 4] = Neg(%x)  @two\n"),
           "node 'two' (Neg): %z is defined twice (single assignment)")
    _fails(_graph("  const %k: f32[] = [1.0]\n  %x: f32[2, 4] = Expand(%k) {shape=[2, 4]}  @again\n"
                  "  %z: f32[2, 4] = Neg(%x)  @n\n"),
           "node 'again' (Expand): %x is defined twice (single assignment)")


def test_graph_output_never_defined():
    graph = parse(VALID)
    graph.outputs.append("nowhere")
    _fails(graph, "graph output %nowhere is never defined")


def test_graph_input_without_value_or_constant():
    graph = parse(VALID)
    graph.inputs.append("missing")
    _fails(graph, "graph input %missing has no value")
    graph = parse(VALID)
    graph.inputs.append("w")
    _fails(graph, "graph input %w is a constant")


def test_cycle():
    graph = _graph("  %a: f32[2, 4] = Add(%x, %b)  @add\n  %b: f32[2, 4] = Relu(%a)  @relu\n"
                   "  %z: f32[2, 4] = Neg(%b)  @neg\n")
    _fails(graph, "cycle: node 'add' (Add) -> node 'relu' (Relu) -> node 'add' (Add)")


def test_output_shape_differs_from_the_rule():
    _fails(_graph("  %z: f32[4, 2] = Relu(%x)  @r\n"),
           "node 'r' (Relu): output %z is f32[4, 2] but the Relu rule gives f32[2, 4]")
    text = VALID.replace("%y: f32[2, 3] = MatMul", "%y: f32[2, 5] = MatMul").replace("%z: f32[2, 3]", "%z: f32[2, 5]")
    _fails(parse(text), "node 'mm' (MatMul): output %y is f32[2, 5] but the MatMul rule gives f32[2, 3]")


def test_output_dtype_differs_from_the_rule():
    _fails(_graph("  %z: i32[2, 4] = Cast(%x) {to=\"f32\"}  @cast\n"),
           "node 'cast' (Cast): output %z is i32[2, 4] but the Cast rule gives f32[2, 4]")
    _fails(_graph("  %z: f32[2, 4] = Less(%x, %x)  @less\n"),
           "node 'less' (Less): output %z is f32[2, 4] but the Less rule gives bool[2, 4]")


def test_inputs_the_rule_rejects():
    _fails(_graph("  const %w: f32[3, 3] = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0]\n"
                  "  %z: f32[2, 3] = MatMul(%x, %w)  @mm\n"), "node 'mm' (MatMul): [2, 4] and [3, 3] do not multiply")
    _fails(_graph("  const %i: i64[2] = [0, 1]\n  %z: f32[2, 4] = Add(%x, %i)  @a\n"),
           "node 'a' (Add): inputs have different dtypes f32, i64")
    _fails(_graph("  %z: f32[8] = Reshape(%x) {shape=[-1]}  @r\n"),
           "node 'r' (Reshape): shape=[-1] must be resolved (no -1)")
    _fails(_graph("  %z: f32[2, 4] = Softmax(%x) {axis=-1}  @s\n"), "node 's' (Softmax): axis=-1 is not in [0, 2)")


def test_attributes_of_the_wrong_type():
    _fails(_graph("  %z: f32[4, 2] = Transpose(%x) {perm=\"01\"}  @t\n"),
           "node 't' (Transpose): attribute perm must be a list of ints, not '01'")


def test_constant_data_must_match_its_declaration():
    graph = parse(VALID)
    graph.values["w"].const = np.zeros((4, 3), dtype=np.float64)
    _fails(graph, "constant %w is declared f32[4, 3] but holds float64[4, 3]")


def test_unnamed_outputs_are_skipped_but_one_must_be_named():
    graph = _graph("  %z: f32[2, 2], _ = TopK(%x) {k=2, axis=1}  @top\n")
    verify(graph)
    graph.nodes[0] = Node("TopK", ["x"], ["", ""], {"k": 2, "axis": 1}, "top")
    graph.outputs = ["x"]
    _fails(graph, "node 'top' (TopK): no output is named")


def test_a_gather_step_only_in_a_norm_prologue_and_only_of_table_rows():
    """A Gather is a step of a FusedLayerNorm's prologue only (elsewhere steps are element-wise), only of
    the rows of a 2-D input, before the prologue's other steps, and giving rows of X's whole shape (not
    broadcast)."""
    table = "  input %t: f32[5, 4]\n  input %i: i64[2]\n"
    rows = "  input %r: f32[2, 4]\n  input %j: i64[4]\n"
    _fails(_graph(rows + '  %z: f32[2, 4] = FusedElementwise(%r, %j) {steps=["Gather(x0, x1) {axis=0}"]}  @f\n'),
           "node 'f' (FusedElementwise): step 0 (Gather(x0, x1) {axis=0}): Gather is not element-wise here")
    _fails(_graph(table + '  %z: f32[2, 4] = FusedLayerNorm(%t, %i, %x) {axis=1, prologue=["Gather(x0, x1) '
                          '{axis=1}", "Add(s0, x2)"]}  @n\n'),
           "node 'n' (FusedLayerNorm): step 0 (Gather(x0, x1) {axis=1}): only rows of a 2-D input by indices that "
           "are inputs are gathered")
    _fails(_graph(table + '  %z: f32[2, 4] = FusedLayerNorm(%t, %i, %x) {axis=1, prologue=["Neg(x2)", '
                          '"Gather(x0, x1) {axis=0}", "Add(s1, s0)"]}  @n\n'),
           "node 'n' (FusedLayerNorm): the prologue's Gather steps must come first")
    _fails(_graph(table + '  input %j: i64[4]\n  input %y: f32[2, 4, 4]\n  %z: f32[2, 4, 4] = FusedLayerNorm(%t, %j, '
                          '%y) {axis=2, prologue=["Gather(x0, x1) {axis=0}", "Add(s0, x2)"]}  @n\n'),
           "node 'n' (FusedLayerNorm): the prologue's Gather steps must give f32 rows of X's shape [2, 4, 4]")
    verify(_graph(table + '  %z: f32[2, 4] = FusedLayerNorm(%t, %i, %x) {axis=1, prologue=["Gather(x0, x1) '
                          '{axis=0}", "Add(s0, x2)"]}  @n\n'))
