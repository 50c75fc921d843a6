"""The emitter's synchronisation on random instruction streams (compiler/codegen/emitter.py).

Kernels' programs exercise the emitter on regular patterns; these streams put random spans
of local memory and DRAM under all four engines, with one engine rarely used, so that the
other engines' old accesses are folded into the per-block arrays and later found there.
Each stream must run free of hazards, and its synchronisation must be exactly that of an
emitter that keeps every access in its lists (no dropping, no folding).
"""

from __future__ import annotations

import numpy as np
import pytest

import compiler.codegen.emitter as emitter_module
from compiler.codegen.emitter import Emitter
from isa.config import load_config
from isa.dtypes import DType
from isa.encoding import encode
from isa.program import Program
from runtime.simulator import run

CONFIG = load_config("tiny")
DRAM_BYTES = 1 << 16
F32 = DType.F32.size


def random_stream(emitter: Emitter, rng: np.random.Generator, count: int, rare: str) -> None:
    """`count` random instructions: DMA loads and stores, vector adds and weight loads, on f32 tiles;
    `rare` is one in a hundred."""
    words = CONFIG.spad_bytes // F32
    for start in range(0, DRAM_BYTES, 4096):  # tensors the DRAM plan would have registered
        emitter.register_dram(start, start + 4096)
    for _ in range(count):
        kinds = ["dma_load", "dma_store", "vadd", "load_weights"]
        kind = rng.choice(kinds, p=[0.01 if k == rare else 0.99 / 3 for k in kinds])
        rows, cols = int(rng.integers(1, 5)), int(rng.integers(1, 33))
        row_stride = cols + int(rng.integers(0, 16))
        top = words - rows * row_stride  # the highest word a [rows, row_stride] tile can start at
        dst, a, b = (int(word) * F32 for word in rng.integers(0, top, 3))
        if kind in ("dma_load", "dma_store"):
            dram = int(rng.integers(0, (DRAM_BYTES - rows * 64 * F32) // F32)) * F32
            emitter.emit(kind, dram=dram, local=dst, esize=F32, n0=cols, n1=rows, n2=1, ds0=1, ds1=64, ds2=0,
                         ls1=row_stride, ls2=0)
        elif kind == "vadd":
            emitter.emit("vadd", dtype=DType.F32, dst=dst, dst_rs=row_stride, a=a, a_rs=row_stride, a_cs=1,
                         b=b, b_rs=row_stride, b_cs=1, rows=rows, cols=cols)
        else:
            k, n = int(rng.integers(1, CONFIG.array_rows + 1)), int(rng.integers(1, CONFIG.array_cols + 1))
            stride = n + int(rng.integers(0, 40))
            emitter.emit("load_weights", dtype=DType.F32, addr=int(rng.integers(0, words - k * stride)) * F32,
                         k=k, n=n, stride=stride)


def emitted(seed: int, count: int, rare: str) -> tuple[Emitter, list]:
    emitter = Emitter(CONFIG)
    random_stream(emitter, np.random.default_rng(seed), count, rare)
    code, _ = emitter.finish()
    return emitter, code


# A rare store reads local memory: it looks for the other engines' old writes. A rare load writes it:
# it looks for their old reads too.
@pytest.mark.parametrize("rare", ["dma_store", "dma_load"])
@pytest.mark.parametrize("seed", [0, 1])
def test_random_streams_are_hazard_free_and_folding_changes_nothing(seed, rare, monkeypatch):
    monkeypatch.setattr(emitter_module, "RECENT", 32)  # short lists: folding starts early and often
    emitter, code = emitted(seed, 3000, rare)
    assert any(emitter.folded), "the stream should make the emitter fold old accesses"
    result = run(Program(CONFIG, code, dram_bytes=DRAM_BYTES), check_hazards=True)
    assert result.stats["hazards"] == 0, result.hazards[:3]
    monkeypatch.setattr(emitter_module, "RECENT", 1 << 30)  # keep every access in the lists
    keeping, kept_code = emitted(seed, 3000, rare)
    assert not any(keeping.folded)
    assert [encode(i) for i in code] == [encode(i) for i in kept_code]


def test_a_write_folded_away_long_ago_is_still_waited_for():
    emitter = Emitter(CONFIG)
    emitter.register_dram(0, 4096)
    emitter.register_dram(4096, 8192)

    def load(local: int):
        return emitter.emit("dma_load", dram=0, local=local, esize=F32, n0=16, n1=1, n2=1, ds0=1, ds1=0, ds2=0,
                            ls1=16, ls2=0)

    first = load(0)
    for _ in range(4 * emitter_module.RECENT):  # the store engine lags: the loads' entries are folded
        load(4096)
    assert emitter.folded[0] > 1
    store = emitter.emit("dma_store", dram=4096, local=0, esize=F32, n0=16, n1=1, n2=1, ds0=1, ds1=0, ds2=0,
                         ls1=16, ls2=0)
    emitter.finish()
    assert first.fields["signal"] != 0 and store.fields["wait"] == first.fields["signal"]


def test_a_read_of_a_large_tensors_first_rows_waits_only_for_the_writes_there():
    """An allocation of PIECED_BYTES or more is tracked in DRAM_PIECES pieces: a load of its first rows
    waits for the store there, not for a later store to its last rows; a smaller one is one piece."""
    piece = emitter_module.PIECED_BYTES

    def transfer(mnemonic: str, dram: int, local: int):
        return emitter.emit(mnemonic, dram=dram, local=local, esize=F32, n0=16, n1=1, n2=1, ds0=1, ds1=0, ds2=0,
                            ls1=16, ls2=0)

    for size, waits_for_last in ((emitter_module.DRAM_PIECES * piece, False), (piece - 64, True)):
        emitter = Emitter(CONFIG)
        emitter.register_dram(0, size)
        first = transfer("dma_store", 0, 0)
        last = transfer("dma_store", size - 64, 1024)
        load = transfer("dma_load", 0, 2048)
        emitter.finish()
        assert load.fields["wait"] != 0
        assert (last.fields["signal"] != 0) == waits_for_last
        assert (first.fields["signal"] != 0) != waits_for_last  # the store a load waits for gives its token
