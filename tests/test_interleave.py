"""Interleaving a kernel's code into the matrix kernel's before it (compiler/codegen/interleave.py).

The merge on hand-made code (what moves up, what stays), then end to end: a LayerNorm after a
product runs while the product does, computes what it computes without interleaving, with no
hazard between engines, in fewer cycles.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper

import compiler
from compiler.codegen.emitter import Emitter
from compiler.codegen.interleave import JOIN, interleave
from isa.config import load_config
from isa.dtypes import DType
from isa.encoding import Instruction
from isa.timing import Timeline
from runtime.simulator import run

EDGE = load_config("edge")
X, Y, OUT = 0, 1 << 16, 2 << 16  # DRAM addresses of three 4 KiB tensors


def _dma(mnemonic: str, dram: int, local: int) -> Instruction:
    return Instruction(mnemonic, dram=dram, local=local, esize=4, n0=1024, n1=1, n2=1, ds0=1, ds1=0, ds2=0,
                       ls1=0, ls2=0)


def _vector(dst: int, a: int) -> Instruction:
    return Instruction("vadd", dtype=DType.F32, dst=dst, dst_rs=1024, a=a, a_rs=1024, a_cs=1, b=a, b_rs=1024,
                       b_cs=1, rows=1, cols=1024)


def _fresh() -> Emitter:
    emitter = Emitter(EDGE)
    for start in (X, Y, OUT):
        emitter.register_dram(start, start + 4096)
    return emitter


def _producer():
    """Load X, compute, store the result to OUT; then a long second part that stores nothing."""
    code = [_dma("dma_load", X, 0), _vector(4096, 0), _dma("dma_store", OUT, 4096)]
    code += [_vector(8192, 0) for _ in range(20)]
    return [(instruction, "p") for instruction in code]


def test_what_does_not_depend_on_the_producer_moves_up_and_what_does_waits_for_it():
    producer = _producer()
    independent = _dma("dma_load", Y, 65536)  # nothing of the producer's touches Y or these bytes
    dependent = _dma("dma_load", OUT, 69632)  # reads the producer's result
    merged = interleave(producer, [(independent, "c"), (dependent, "c")], EDGE, _fresh)
    order = [instruction for instruction, _ in merged]
    assert order.index(independent) < order.index(producer[1][0])  # ahead of the producer's vector work
    assert order.index(dependent) == order.index(producer[2][0]) + 1  # right after the store it reads
    assert order.index(dependent) < order.index(producer[-1][0])  # and still inside the producer's code
    # Everything of the producer's keeps its order; the span where the two alternate carries both names.
    assert [i for i in order if i not in (independent, dependent)] == [i for i, _ in producer]
    assert {node for _, node in merged} == {"p" + JOIN + "c", "p"}


def test_matrix_work_keeps_its_place():
    producer = _producer()
    weights = Instruction("load_weights", dtype=DType.F32, addr=65536, k=32, n=32, stride=32)
    merged = interleave(producer, [(weights, "c")], EDGE, _fresh)
    assert merged == producer + [(weights, "c")]


def test_code_that_conflicts_with_the_end_of_the_producer_stays_after_it():
    producer = _producer()
    late = _vector(8192, 12288)  # writes what the producer's last instruction writes
    assert interleave(producer, [(late, "c")], EDGE, _fresh) == producer + [(late, "c")]


def _product_then_norm(rows: int = 512, width: int = 64, names=("product", "norm")) -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    weights = helper.make_tensor("w", TensorProto.FLOAT, (width, width),
                                 (rng.standard_normal((width, width)) / 8).astype(np.float32).ravel())
    gamma = helper.make_tensor("g", TensorProto.FLOAT, (width,), rng.uniform(0.5, 1.5, width).astype(np.float32))
    beta = helper.make_tensor("b", TensorProto.FLOAT, (width,), rng.standard_normal(width).astype(np.float32))
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["h"], name=names[0]),
         helper.make_node("LayerNormalization", ["h", "g", "b"], ["y"], name=names[1], axis=-1)],
        "product_then_norm", [helper.make_tensor_value_info("x", TensorProto.FLOAT, (rows, width))],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, (rows, width))], [weights, gamma, beta])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_a_norm_after_a_product_runs_while_the_product_does():
    model = _product_then_norm()
    x = np.random.default_rng(1).standard_normal((512, 64)).astype(np.float32)
    apart, together = (compiler.compile(model, "edge", opt_level=2, disabled_passes=disabled)
                       for disabled in (["interleave"], []))
    assert [entry.node for entry in apart.debug] == ["product", "norm"]
    assert "product" + JOIN + "norm" in [entry.node for entry in together.debug]
    # y reuses x's DRAM: the norm's stores there must stay after the product's last reads of x.
    assert together.outputs[0].dram == together.inputs[0].dram
    results = [run(program, {"x": x}, check_hazards=True) for program in (apart, together)]
    assert [result.stats["hazards"] for result in results] == [0, 0]
    expected = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(
        None, {"x": x})[0]
    for result in results:
        np.testing.assert_allclose(result.outputs["y"], expected, rtol=1e-4, atol=1e-4)
    cycles = [result.stats["cycles"] for result in results]
    assert cycles[1] < cycles[0], cycles


def test_a_product_before_a_norm_finishes_rows_in_blocks_so_the_norm_stores_some_before_the_last_matmul():
    """The streamed product finishes block after block of array_rows rows, each with every column, when the
    LayerNorm after it interleaves: the norm's first rows reach DRAM while the array still works. Without
    interleaving the product finishes column group after column group, as before."""
    model = _product_then_norm()
    apart, together = (compiler.compile(model, "edge", opt_level=2, disabled_passes=disabled)
                       for disabled in (["interleave"], []))
    assert "finished in blocks of 32 rows" in together.notes["product"][0]
    assert "blocks of" not in apart.notes["product"][0]
    y = together.outputs[0]
    y_end = y.dram + int(np.prod(y.shape)) * 4
    first_store = last_matmul = None
    for index, _, start, end, _ in Timeline(together.instructions, together.config):
        instruction = together.instructions[index]
        if instruction.mnemonic == "matmul":
            last_matmul = max(last_matmul or 0, end)
        elif instruction.mnemonic == "dma_store" and y.dram <= instruction["dram"] < y_end:
            first_store = start if first_store is None else min(first_store, start)
    assert first_store < last_matmul, (first_store, last_matmul)


def test_below_o2_kernels_do_not_interleave():
    program = compiler.compile(_product_then_norm(), "edge", opt_level=1)
    assert [entry.node for entry in program.debug] == ["product", "norm"]


def test_a_node_name_with_the_join_in_it_is_only_a_name():
    program = compiler.compile(_product_then_norm(names=("q + k", "norm")), "edge", opt_level=2)
    assert "q + k" + JOIN + "norm" in [entry.node for entry in program.debug]
    assert program.notes["q + k" + JOIN + "norm"] == ["norm interleaved with q + k"]


def test_a_kernel_that_reads_nothing_the_previous_one_wrote_starts_loading_while_it_computes():
    """Attention's Q and K products (one input, two weights): the second one's buffers go above the first
    one's, so its first loads run under the first one's matrix work: the second product's first matmul
    comes sooner after the first one's last than when both start from the bottom of the scratchpad."""
    rng = np.random.default_rng(2)
    width = 256
    weights = [helper.make_tensor(name, TensorProto.FLOAT, (width, width),
                                  (rng.standard_normal((width, width)) / 16).astype(np.float32).ravel())
               for name in ("wq", "wk")]
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "wq"], ["q"], name="query"),
         helper.make_node("MatMul", ["x", "wk"], ["k"], name="key")],
        "two_products", [helper.make_tensor_value_info("x", TensorProto.FLOAT, (128, width))],
        [helper.make_tensor_value_info(name, TensorProto.FLOAT, (128, width)) for name in ("q", "k")], weights)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    x = rng.standard_normal((128, width)).astype(np.float32)
    apart, together = (compiler.compile(model, "edge", opt_level=2, disabled_passes=disabled)
                       for disabled in (["interleave"], []))
    results = [run(program, {"x": x}, check_hazards=True) for program in (apart, together)]
    assert [result.stats["hazards"] for result in results] == [0, 0]
    for name in ("q", "k"):
        assert np.array_equal(results[0].outputs[name], results[1].outputs[name])

    def matrix_gap(program) -> int:
        nodes = {index: entry.node for entry in program.debug for index in range(entry.start, entry.end)}
        spans = {}
        for index, _, start, end, _ in Timeline(program.instructions, program.config):
            if program.instructions[index].mnemonic == "matmul":
                first, last = spans.get(nodes[index], (start, end))
                spans[nodes[index]] = (min(first, start), max(last, end))
        return spans["key"][0] - spans["query"][1]

    assert matrix_gap(together) < matrix_gap(apart) / 2, (matrix_gap(together), matrix_gap(apart))
    assert results[1].stats["cycles"] < results[0].stats["cycles"]
