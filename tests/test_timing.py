"""The timing model against its documented formulas (isa/SPEC.md, "Timing") and SCALE-Sim."""

import pytest

from isa.config import load_config
from isa.dtypes import DType
from isa.encoding import Instruction
from isa.errors import SimulationError
from isa.program import Program
from runtime.simulator import run


def gemm_tiles(config, m: int, k: int, n: int, dtype=DType.I8) -> Program:
    """Only the matrix work of an M x K x N GEMM: one load_weights + matmul per R x C tile.

    Operands sit in a zeroed scratchpad and every tile overwrites the same accumulator
    rows, so the data is meaningless but the instruction stream is the real one."""
    rows, cols = config.array_rows, config.array_cols
    code = []
    for _ in range(0, n, cols):
        for _ in range(0, k, rows):
            code.append(Instruction("load_weights", dtype=dtype, addr=0, k=rows, n=cols, stride=cols))
            code.append(Instruction("matmul", dtype=dtype, a=0, a_rs=rows, m=m, c=config.acc_base, c_rs=cols))
    code.append(Instruction("end"))
    return Program(config, code, dram_bytes=64)


# Compute cycles SCALE-Sim 3.0.0 reports for these layers on a 32x32 weight-stationary array.
SCALE_SIM_CYCLES = [
    ("gemm 256x256x256", 256, 256, 256, 22_399),
    ("gemm M=128 K=384 N=1536", 128, 384, 1536, 127_871),
]


@pytest.mark.parametrize("name,m,k,n,scale_sim", SCALE_SIM_CYCLES)
def test_without_double_buffering_matches_scale_sim(name, m, k, n, scale_sim):
    config = load_config("edge").replace(weight_double_buffer=False)
    cycles = run(gemm_tiles(config, m, k, n)).stats["cycles"]
    tiles = (k // 32) * (n // 32)
    assert cycles == tiles * (m + 3 * 32 - 2)  # SPEC.md: R + M + R + C - 2 per tile
    assert abs(cycles - scale_sim) / scale_sim < 0.001


@pytest.mark.parametrize("m", [16, 32, 100, 256])
def test_double_buffering_costs_max_m_r_per_tile(m):
    config = load_config("edge")
    rows = config.array_rows
    tiles = 4 * 4
    cycles = run(gemm_tiles(config, m, 4 * rows, 4 * rows)).stats["cycles"]
    # First weights shift in, then back-to-back tiles of max(M, R), one skew and drain at the end.
    assert cycles == rows + (tiles - 1) * max(m, rows) + m + rows + config.array_cols - 2
    serial = run(gemm_tiles(config.replace(weight_double_buffer=False), m, 4 * rows, 4 * rows)).stats["cycles"]
    assert serial == tiles * (m + 3 * rows - 2)
    assert cycles < serial


def test_row_cycles_follow_dtype():
    config = load_config("tiny")
    i8 = run(gemm_tiles(config, 64, 8, 8, DType.I8)).stats
    f32 = run(gemm_tiles(config, 64, 8, 8, DType.F32)).stats
    assert f32["engines"]["matrix"] == config.fp32_row_cycles * i8["engines"]["matrix"]
    assert f32["roofline_cycles"] == config.fp32_row_cycles * i8["roofline_cycles"]


def test_dma_latency_and_shared_channel():
    config = load_config("tiny")
    size = 4096
    load = Instruction("dma_load", dram=0, local=0, n0=size)
    store = Instruction("dma_store", dram=size, local=0, n0=size)
    one = run(Program(config, [load, Instruction("end")], dram_bytes=2 * size)).stats
    assert one["cycles"] == config.dma_latency + size // config.dram_bytes_per_cycle
    both = run(Program(config, [load, store, Instruction("end")], dram_bytes=2 * size)).stats
    # Load and store run on different engines but share the DRAM channel.
    assert both["cycles"] >= 2 * size // config.dram_bytes_per_cycle
    assert both["cycles"] >= both["roofline_cycles"]


def test_strided_dma_pays_per_run():
    config = load_config("tiny")
    contiguous = Instruction("dma_load", dram=0, local=0, n0=64, n1=16, ds1=64, ls1=64)
    strided = Instruction("dma_load", dram=0, local=0, n0=64, n1=16, ds1=128, ls1=64)
    every_other = Instruction("dma_load", dram=0, local=0, n0=64, n1=16, ds0=2, ds1=128, ls1=64)
    cycles = [run(Program(config, [i, Instruction("end")], dram_bytes=4096)).stats["cycles"] - config.dma_latency
              for i in (contiguous, strided, every_other)]
    assert cycles == [1024 // 8, 16 * (64 // 8), 1024]


def test_semaphore_orders_engines():
    config = load_config("tiny")
    code = [Instruction("dma_load", dram=0, local=0, n0=256, signal=1),
            Instruction("vaddi", dtype=DType.F32, dst=1024, a=0, imm=1.0, rows=1, cols=64, wait=1),
            Instruction("end")]
    result = run(Program(config, code, dram_bytes=256), keep_events=True)
    load, vector = result.events
    assert vector.start >= load.end


def test_deadlock_names_the_waiting_instruction():
    config = load_config("tiny")
    code = [Instruction("vaddi", dtype=DType.F32, dst=0, a=0, imm=1.0, rows=1, cols=8, wait=5),
            Instruction("end")]
    with pytest.raises(SimulationError, match=r"instruction 0 \(vaddi .*wait=5\).*deadlock"):
        run(Program(config, code, dram_bytes=64))


def test_sync_is_a_fence_for_its_engine():
    config = load_config("tiny")
    code = [Instruction("dma_load", dram=0, local=0, n0=1024),
            Instruction("sync", engine=0, signal=2),
            Instruction("vaddi", dtype=DType.F32, dst=4096, a=0, imm=1.0, rows=1, cols=8, wait=2),
            Instruction("end")]
    result = run(Program(config, code, dram_bytes=1024), keep_events=True, check_hazards=True)
    assert result.events[-1].start >= result.events[0].end
    assert not result.hazards
