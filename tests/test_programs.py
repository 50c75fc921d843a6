"""The hand-written assembly programs in models/asm, end to end.

Each program is assembled for the tiny and the edge config, run on seeded random inputs
with the hazard check on, and compared with numpy. The int8 GEMM is larger than the
scratchpad on both configs; its double-buffered and serial variants are also compared in
time. A last test shows the hazard check catching a missing wait.
"""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import pytest

from isa.assembly import assemble
from isa.config import load_config
from isa.program import Program
from runtime.simulator import ENGINE_NAMES, RunResult, run

ASM = Path(__file__).resolve().parent.parent / "models" / "asm"
CONFIGS = ["tiny", pytest.param("edge", marks=pytest.mark.slow)]
GEMM_SIZES = {"tiny": {"M": 64, "K": 256, "N": 128}, "edge": {"M": 256, "K": 1024, "N": 512}}


def run_program(name: str, config_name: str, inputs: dict[str, np.ndarray], **defines) -> tuple[Program, RunResult]:
    """Assemble models/asm/NAME.s for the config, run it with the hazard check and check
    that it has no hazards and is not faster than its roofline."""
    program = assemble((ASM / f"{name}.s").read_text(), load_config(config_name), defines=defines,
                       source=f"{name}.s")
    result = run(program, inputs, check_hazards=True, keep_events=True)
    assert result.stats["hazards"] == 0, result.hazards[:3]
    assert result.stats["cycles"] >= result.stats["roofline_cycles"]
    return program, result


# int8 GEMM ----------------------------------------------------------------------------------
def gemm_inputs(sizes: dict[str, int]) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(1)
    return {"A": rng.integers(-128, 127, (sizes["M"], sizes["K"]), endpoint=True, dtype=np.int8),
            "B": rng.integers(-128, 127, (sizes["K"], sizes["N"]), endpoint=True, dtype=np.int8)}


@functools.cache
def gemm_run(config_name: str, double_buffer: int) -> tuple[dict[str, np.ndarray], Program, RunResult]:
    """One run per (config, variant), shared by the correctness and the timing tests."""
    sizes = GEMM_SIZES[config_name]
    inputs = gemm_inputs(sizes)
    return inputs, *run_program("gemm_int8", config_name, inputs, DOUBLE_BUFFER=double_buffer, **sizes)


@pytest.mark.parametrize("config_name", CONFIGS)
@pytest.mark.parametrize("double_buffer", [1, 0], ids=["double_buffered", "serial"])
def test_gemm_int8_is_exact(config_name, double_buffer):
    sizes = GEMM_SIZES[config_name]
    assert sizes["M"] * sizes["K"] + sizes["K"] * sizes["N"] > load_config(config_name).spad_bytes
    inputs, _, result = gemm_run(config_name, double_buffer)
    expected = (inputs["A"].astype(np.int64) @ inputs["B"].astype(np.int64)).astype(np.int32)
    assert np.array_equal(result.outputs["C"], expected)


def busy_intervals(program: Program, result: RunResult, engine: str) -> list[tuple[int, int]]:
    """Merged [start, end) intervals of an engine's instructions, syncs left out (they only
    pass tokens)."""
    spans = sorted((e.start, e.end) for e in result.events
                   if ENGINE_NAMES[e.engine] == engine and program.instructions[e.index].mnemonic != "sync")
    merged: list[tuple[int, int]] = []
    for start, end in spans:
        if merged and start < merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], end))
        else:
            merged.append((start, end))
    return merged


def intervals_intersect(first: list[tuple[int, int]], second: list[tuple[int, int]]) -> bool:
    i = j = 0
    while i < len(first) and j < len(second):
        if max(first[i][0], second[j][0]) < min(first[i][1], second[j][1]):
            return True
        if first[i][1] < second[j][1]:
            i += 1
        else:
            j += 1
    return False


ENGINE_PAIRS = [("load", "matrix"), ("matrix", "store"), ("load", "store")]


@pytest.mark.parametrize("config_name", CONFIGS)
def test_gemm_int8_double_buffering_overlaps_engines(config_name):
    _, program, overlapped = gemm_run(config_name, 1)
    _, serial_program, serial = gemm_run(config_name, 0)
    for first, second in ENGINE_PAIRS:
        assert intervals_intersect(busy_intervals(program, overlapped, first),
                                   busy_intervals(program, overlapped, second)), f"{first} and {second} never overlap"
        # The serial variant is the baseline: nothing overlaps in it.
        assert not intervals_intersect(busy_intervals(serial_program, serial, first),
                                       busy_intervals(serial_program, serial, second)), \
            f"{first} and {second} overlap in the serial variant"
    assert overlapped.stats["cycles"] < serial.stats["cycles"]
    for result in (overlapped, serial):
        assert result.stats["cycles"] >= result.stats["roofline_cycles"]


# Other programs -----------------------------------------------------------------------------
@pytest.mark.parametrize("config_name, sizes", [("tiny", {"M": 32, "K": 64, "N": 48}),
                                                ("edge", {"M": 128, "K": 256, "N": 192})], ids=["tiny", "edge"])
def test_gemm_fp32(config_name, sizes):
    rng = np.random.default_rng(2)
    a = rng.standard_normal((sizes["M"], sizes["K"])).astype(np.float32)
    b = rng.standard_normal((sizes["K"], sizes["N"])).astype(np.float32)
    _, result = run_program("gemm_fp32", config_name, {"A": a, "B": b}, **sizes)
    # The matrix unit rounds the accumulator to fp32 after every ARRAY_ROWS-long slice of K;
    # so does the reference, else outputs near zero would differ by those roundings.
    rows = load_config(config_name).array_rows
    expected = np.zeros((sizes["M"], sizes["N"]), np.float32)
    for k in range(0, sizes["K"], rows):
        partial = a[:, k:k + rows].astype(np.float64) @ b[k:k + rows].astype(np.float64)
        expected = (expected + partial).astype(np.float32)
    np.testing.assert_allclose(result.outputs["C"], expected, rtol=1e-5)


@pytest.mark.parametrize("config_name, sizes", [("tiny", {"M": 64, "N": 64}),
                                                ("edge", {"M": 128, "N": 256})], ids=["tiny", "edge"])
def test_requantize(config_name, sizes):
    rng = np.random.default_rng(3)
    x = rng.integers(-60000, 60000, (sizes["M"], sizes["N"]), endpoint=True, dtype=np.int32)
    scale = rng.uniform(1e-3, 4e-3, sizes["N"]).astype(np.float32)
    scale[:2] = (0.5, 0.25)  # products that end in .5: ties round to even
    zero = rng.integers(-20, 20, sizes["N"], endpoint=True, dtype=np.int32)
    _, result = run_program("requantize", config_name, {"X": x, "SCALE": scale, "ZERO": zero}, **sizes)
    scaled = x.astype(np.float32) * scale  # one fp32 rounding, as vreq
    expected = np.clip(np.rint(scaled) + zero, -128, 127).astype(np.int8)
    assert {-128, 127} <= set(np.unique(expected).tolist())  # saturation is exercised
    assert np.array_equal(result.outputs["Y"], expected)


@pytest.mark.parametrize("config_name, sizes", [("tiny", {"M": 32, "N": 40}),
                                                ("edge", {"M": 128, "N": 200})], ids=["tiny", "edge"])
def test_softmax(config_name, sizes):
    rng = np.random.default_rng(4)
    x = (4 * rng.standard_normal((sizes["M"], sizes["N"]))).astype(np.float32)
    _, result = run_program("softmax", config_name, {"X": x}, **sizes)
    # vsub rounds x - max to fp32 as any fp32 softmax does; from there on, float64.
    exp = np.exp((x - x.max(axis=1, keepdims=True)).astype(np.float64))
    np.testing.assert_allclose(result.outputs["Y"], exp / exp.sum(axis=1, keepdims=True), rtol=1e-6)


@pytest.mark.parametrize("config_name, sizes", [
    ("tiny", {"H": 32, "W": 24, "ROW0": 1, "ROW_STEP": 2, "COL0": 3, "COL_STEP": 1, "GR": 12, "GC": 16}),
    ("edge", {"H": 128, "W": 96, "ROW0": 3, "ROW_STEP": 3, "COL0": 5, "COL_STEP": 2, "GR": 40, "GC": 40}),
], ids=["tiny", "edge"])
def test_dma_gather(config_name, sizes):
    x = np.random.default_rng(5).standard_normal((sizes["H"], sizes["W"])).astype(np.float32)
    _, result = run_program("dma_gather", config_name, {"X": x}, **sizes)
    rows = sizes["ROW0"] + sizes["ROW_STEP"] * np.arange(sizes["GR"])
    cols = sizes["COL0"] + sizes["COL_STEP"] * np.arange(sizes["GC"])
    expected = x[rows][:, cols]
    assert np.array_equal(result.outputs["G"], expected)
    assert np.array_equal(result.outputs["T"], expected.T)


# The hazard check -----------------------------------------------------------------------------
# B is loaded, then A; the matmul must wait for A's DMA (semaphore 2). A_READY=0 drops that wait.
HAZARD_PROGRAM = """
.equ A_READY, 2
.input  A dram=0 shape=(8, 8) dtype=i8
.input  B dram=64 shape=(8, 8) dtype=i8
.output C dram=128 shape=(8, 8) dtype=i32
dma_load dram=64 local=64 n0=64 signal=1
dma_load dram=0 local=0 n0=64 signal=2
load_weights dtype=i8 addr=64 k=8 n=8 stride=8 wait=1
matmul dtype=i8 a=0 a_rs=8 m=8 c=ACC_BASE c_rs=8 wait=A_READY signal=3
dma_store esize=4 dram=128 local=ACC_BASE n0=64 wait=3
end
"""
LOAD_A, MATMUL = 1, 3


@pytest.mark.parametrize("a_ready, hazard", [(2, False), (0, True)], ids=["with_wait", "missing_wait"])
def test_hazard_check_finds_a_missing_wait(a_ready, hazard):
    program = assemble(HAZARD_PROGRAM, load_config("tiny"), defines={"A_READY": a_ready})
    assert program.instructions[LOAD_A]["local"] == 0 and program.instructions[MATMUL].mnemonic == "matmul"
    rng = np.random.default_rng(6)
    inputs = {name: rng.integers(-128, 127, (8, 8), endpoint=True, dtype=np.int8) for name in "AB"}
    result = run(program, inputs, check_hazards=True)
    if hazard:
        assert any(h.earlier == LOAD_A and h.later == MATMUL and h.kind == "read after write"
                   for h in result.hazards), result.hazards
    else:
        assert result.hazards == []
        expected = inputs["A"].astype(np.int32) @ inputs["B"].astype(np.int32)
        assert np.array_equal(result.outputs["C"], expected)
