"""The DRAM plan (compiler/codegen/memory.py): the allocator, liveness, and reuse that changes
no result.

Reuse is checked end to end: the same graph compiled with every intermediate kept and with
DRAM reused must give bit-identical outputs, with no hazard between engines.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

import compiler
from compiler.cli import main as acc_compile
from compiler.codegen import generate
from compiler.codegen.emitter import Emitter
from compiler.codegen.kernels import ALIASES
from compiler.codegen.memory import DRAM_ALIGN, DramAllocator, Lifetimes
from compiler.ir import parse
from compiler.verify import verify
from isa import binfile
from isa.config import load_config
from isa.errors import BinaryFormatError
from runtime.simulator import run

DIGITS_CNN = "models/digits/digits_cnn.onnx"


# The allocator ---------------------------------------------------------------------------------
def test_first_fit_takes_the_lowest_hole_that_fits():
    dram = DramAllocator(1 << 20)
    a, b, c = dram.allocate(100), dram.allocate(64), dram.allocate(300)
    assert (a, b, c) == (0, 128, 192)
    dram.free(a)
    assert dram.allocate(200) == 512  # the 128-byte hole is too small
    assert dram.allocate(64) == 0  # this fits it
    assert dram.end == 768 and dram.peak_live == 704  # the 64 bytes at 64 stay a hole


def test_freed_neighbours_coalesce():
    dram = DramAllocator(1024)
    blocks = [dram.allocate(256) for _ in range(4)]
    for address in (blocks[1], blocks[3], blocks[2], blocks[0]):  # middle, last, then the ones between
        dram.free(address)
    assert (dram.starts, dram.ends, dram.live) == ([0], [1024], 0)
    assert dram.allocate(1024) == 0  # only possible if every hole merged


def test_blocks_are_aligned_and_the_limit_is_kept():
    dram = DramAllocator(4 * DRAM_ALIGN)
    addresses = [dram.allocate(n) for n in (1, DRAM_ALIGN + 1, 3)]
    assert addresses == [0, DRAM_ALIGN, 3 * DRAM_ALIGN]
    assert all(address % DRAM_ALIGN == 0 for address in addresses)
    with pytest.raises(MemoryError, match="activations need more than 256 bytes"):
        dram.allocate(1)


def test_overwritten_blocks():
    dram = DramAllocator(1 << 20)
    a, b = dram.allocate(64), dram.allocate(64)
    dram.free(a)
    dram.allocate(32)  # lands on a
    dram.free(b)
    assert dram.overwritten() == [True, False, False]


def _dma(emitter: Emitter, mnemonic: str, dram: int, local: int):
    return emitter.emit(mnemonic, dram=dram, local=local, esize=4, n0=16, n1=1, n2=1, ds0=1, ds1=0, ds2=0,
                        ls1=16, ls2=16)


def test_the_emitter_orders_a_reused_range_after_the_old_tensor():
    emitter = Emitter(load_config("tiny"))
    emitter.register_dram(0, 128)
    emitter.register_dram(128, 256)
    _dma(emitter, "dma_load", 64, 0)  # the load engine reads the old tensors...
    emitter.register_dram(64, 192)  # ... whose DRAM a new one takes over
    later = _dma(emitter, "dma_store", 128, 1024)  # the store engine writes it: after the read
    emitter.finish()
    assert later.fields["wait"] != 0
    assert emitter.dram_starts == [0, 64, 192] and emitter.dram_ends == [64, 192, 256]


# Liveness ------------------------------------------------------------------------------------------
ALIASED = """
graph g
  input %x: f32[4, 8]
  %a: f32[4, 8] = Relu(%x)
  %r: f32[32] = Reshape(%a) {shape=[32]}
  %b: f32[4, 8] = Neg(%a)
  %c: f32[32] = Abs(%r)
  %d: f32[4, 8] = Neg(%b)
  %o: f32[8, 4] = Reshape(%d) {shape=[8, 4]}
  output %c
  output %o
"""


def test_liveness_follows_aliases_and_outputs():
    graph = parse(ALIASED)
    verify(graph)
    lifetimes = Lifetimes.of(graph, ALIASES)
    assert lifetimes.root["r"] == "a" and lifetimes.root["o"] == "d"
    # x dies after its one reader; a only after Abs read its alias r; b after Neg; c, d (via o) never.
    assert lifetimes.dies_after == [["x"], [], [], ["a"], ["b"], []]


# Reuse, end to end -----------------------------------------------------------------------------------
def _chain(length: int, outputs: str) -> str:
    lines = ["graph chain", "  input %v0: f32[64, 64]"]
    lines += [f"  %v{i}: f32[64, 64] = {'Relu' if i % 2 else 'Neg'}(%v{i - 1})" for i in range(1, length + 1)]
    return "\n".join(lines + [f"  output %{name}" for name in outputs.split()])


def _both(graph_text: str, config: str = "tiny"):
    """The programs for `graph_text` with every intermediate kept and with DRAM reused."""
    graph = parse(graph_text)
    verify(graph)
    return [generate(graph, load_config(config), keep_intermediates=keep) for keep in (True, False)]


def _same_results(kept, reused, inputs=None):
    inputs = inputs or {t.name: np.random.default_rng(0).standard_normal(t.shape).astype(np.float32)
                        for t in kept.inputs}
    a, b = (run(program, inputs, check_hazards=True, keep_tensors=True) for program in (kept, reused))
    assert a.stats["hazards"] == b.stats["hazards"] == 0
    for name, value in a.outputs.items():
        assert np.array_equal(value, b.outputs[name]), name
    # What the reused program still lists as debug tensors holds the values the kept one does.
    assert {t.name for t in reused.debug_tensors} <= {t.name for t in kept.debug_tensors}
    for t in reused.debug_tensors:
        assert np.array_equal(b.tensors[t.name], a.tensors[t.name]), t.name
    return a, b


def test_a_chain_needs_two_buffers():
    kept, reused = _both(_chain(6, "v6"))
    size = 64 * 64 * 4
    assert kept.activation_bytes == 7 * size
    assert reused.activation_bytes == 2 * size  # peak < sum: each value reuses the one before its input
    assert reused.dram_bytes == kept.dram_bytes - 5 * size
    assert [t.name for t in reused.debug_tensors] == ["v5"]  # the one value nothing overwrote
    _same_results(kept, reused)


def test_nothing_to_reuse_when_everything_is_an_output():
    graph = "\n".join(["graph fan", "  input %x: f32[64, 64]", "  %a: f32[64, 64] = Relu(%x)",
                       "  %b: f32[64, 64] = Neg(%x)", "  %c: f32[64, 64] = Abs(%x)",
                       "  output %a", "  output %b", "  output %c"])
    kept, reused = _both(graph)
    assert kept.activation_bytes == reused.activation_bytes == 4 * 64 * 64 * 4
    assert [t.dram for t in kept.outputs] == [t.dram for t in reused.outputs]
    _same_results(kept, reused)


def test_digits_cnn_is_bit_identical_with_reuse():
    kept, reused = (compiler.compile(DIGITS_CNN, "edge", input_shapes={"image": (1, 1, 8, 8)},
                                     keep_intermediates=keep) for keep in (True, False))
    assert reused.activation_bytes < kept.activation_bytes
    assert reused.dram_bytes == kept.dram_bytes - (kept.activation_bytes - reused.activation_bytes)
    image = np.load("models/digits/sample_digit.npy").reshape(1, 1, 8, 8).astype(np.float32)
    _same_results(kept, reused, {"image": image})


def _attention_block() -> onnx.ModelProto:
    """One self-attention layer with a residual and LayerNorm: MatMul, Reshape, Transpose,
    Softmax, Add, LayerNormalization, Gelu-free to stay in opset 17."""
    rng = np.random.default_rng(3)
    seq, dim, heads = 16, 32, 4

    def weight(name, *shape):
        return helper.make_tensor(name, TensorProto.FLOAT, shape, rng.standard_normal(shape).ravel() * 0.2)

    def shape(name, *dims):
        return helper.make_tensor(name, TensorProto.INT64, [len(dims)], list(dims))

    nodes = []
    for part in ("q", "k", "v"):
        nodes += [helper.make_node("MatMul", ["x", f"w{part}"], [f"{part}0"]),
                  helper.make_node("Reshape", [f"{part}0", "heads"], [f"{part}1"]),
                  helper.make_node("Transpose", [f"{part}1"], [part], perm=[0, 2, 1, 3] if part != "k" else [0, 2, 3, 1])]
    nodes += [helper.make_node("MatMul", ["q", "k"], ["scores"]),
              helper.make_node("Softmax", ["scores"], ["probs"], axis=-1),
              helper.make_node("MatMul", ["probs", "v"], ["context"]),
              helper.make_node("Transpose", ["context"], ["merged"], perm=[0, 2, 1, 3]),
              helper.make_node("Reshape", ["merged", "flat"], ["attended"]),
              helper.make_node("MatMul", ["attended", "wo"], ["projected"]),
              helper.make_node("Add", ["projected", "x"], ["residual"]),
              helper.make_node("LayerNormalization", ["residual", "gamma", "beta"], ["y"], axis=-1)]
    graph = helper.make_graph(
        nodes, "attention", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, seq, dim])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, seq, dim])],
        [weight(f"w{p}", dim, dim) for p in "qkvo"] + [weight("gamma", dim), weight("beta", dim),
                                                        shape("heads", 1, seq, heads, dim // heads),
                                                        shape("flat", 1, seq, dim)])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_attention_block_is_bit_identical_with_reuse():
    model = _attention_block()
    kept, reused = (compiler.compile(model, "tiny", keep_intermediates=keep) for keep in (True, False))
    assert reused.activation_bytes < kept.activation_bytes
    _same_results(kept, reused)


def test_reuse_is_the_default_from_O2():
    model = _attention_block()
    assert compiler.compile(model, "tiny", opt_level=1).debug_tensors  # kept for --compare-layers
    default = compiler.compile(model, "tiny", opt_level=2)
    kept = compiler.compile(model, "tiny", opt_level=2, keep_intermediates=True)
    assert default.activation_bytes < kept.activation_bytes


# model.bin and the command line -----------------------------------------------------------------------
def test_activation_bytes_round_trip_and_are_checked():
    _, reused = _both(_chain(3, "v3"))
    loaded = binfile.from_bytes(binfile.to_bytes(reused))
    assert loaded.activation_bytes == reused.activation_bytes == 2 * 64 * 64 * 4
    assert binfile.to_bytes(loaded) == binfile.to_bytes(reused)
    reused.activation_bytes = reused.dram_bytes + 1
    with pytest.raises(BinaryFormatError, match="activation_bytes"):
        binfile.from_bytes(binfile.to_bytes(reused))


def test_acc_compile_reports_the_dram(tmp_path, capsys):
    output = tmp_path / "cnn.bin"
    assert acc_compile([DIGITS_CNN, "-o", str(output), "--input-shape", "image=1,1,8,8",
                        "--no-keep-intermediates"]) == 0
    program = binfile.load(output)
    assert not program.debug_tensors or len(program.debug_tensors) < 9
    err = capsys.readouterr().err
    assert (f"DRAM: {program.dram_bytes:,} bytes (activations at peak {program.activation_bytes:,}, "
            f"constants {program.dram_bytes - program.activation_bytes:,})") in err
