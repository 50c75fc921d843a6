"""Generates isa/SPEC.md from the ISA table; `python -m isa.specdoc` rewrites it.

tests/test_isa.py fails when the committed SPEC.md differs from what this produces.
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

from isa.config import PRESETS, AcceleratorConfig
from isa.spec import (
    FORMATS,
    HEADER,
    INSTRUCTION_BITS,
    INSTRUCTION_BYTES,
    INSTRUCTIONS,
    NUM_SEMAPHORES,
)

SPEC_PATH = Path(__file__).parent / "SPEC.md"

INTRO = f"""\
# acc ISA specification

Generated from `isa/spec.py` by `python -m isa.specdoc`; do not edit by hand (a test
fails when this file is stale).

## Machine model

- **Memories.** DRAM is byte-addressed (32-bit addresses). On-chip *local* memory is one
  byte-addressed space: the scratchpad at `[0, spad_bytes)` and the accumulator at
  `[acc_base, acc_base + acc_bytes)` with `acc_base = spad_bytes`. An operand lies wholly
  in one region and is aligned to its element size. The matrix unit reads the scratchpad
  and writes the accumulator; DMA and the vector unit reach both.
- **Tiles.** A vector operand is a `rows x cols` tile: element `[r, c]` of operand `x`
  is at `x + (r*x_rs + c*x_cs) * size`. A stride of 0 broadcasts: `x_rs = 0` repeats one
  row, `x_cs = 0` one column (one value per row). Results are written densely along a
  row (`dst_rs` apart) and may not write one element twice.
- **Element types** (3-bit `dtype`): f32 = 0, bf16 = 1, i8 = 2, u8 = 3, i32 = 4, and the
  storage-only i64 = 5, bool = 6 (one byte, 0 or 1) and f16 = 7 (IEEE half), which DMA
  moves and `vcvt` converts but nothing computes on. bf16 is the upper half of an fp32; rounding to it is
  to nearest, ties to even.
- **Numerics.** Float vector operations are computed in float64 from the operands'
  values and rounded once to fp32 (then to bf16 for bf16 results), which for + - * /
  and sqrt equals IEEE fp32 arithmetic. Integer operations are exact, then wrapped to
  the result type (vcvt, vreq and vquant saturate instead). The matrix unit is exact for
  integers (int32 results, wrapping) and sums floats in float64, rounding once to fp32.
  Weight-only int8: `load_weights` of i8 weights followed by a bf16 `matmul` multiplies
  bf16 activations by the integers (exact in bf16) and accumulates in fp32; the
  per-channel scale is applied to the accumulator afterwards (on the vector unit).
- **Engines.** Instructions are dispatched in program order to four in-order queues:
  load (`dma_load`, `dma_gather`), matrix (`load_weights`, `matmul`), vector (all `v*`) and store
  (`dma_store`, `dma_scatter`); `sync` joins the queue its `engine` field names. Dispatch stops at the
  first `end`; the run ends when every queue has drained.
- **Synchronisation.** {NUM_SEMAPHORES - 1} counting semaphores, ids 1..{NUM_SEMAPHORES - 1}
  (0 = none). `wait=s`: the instruction starts only once semaphore s holds a token, and
  takes one. `signal=s`: gives a token once the instruction **and every earlier
  instruction of its engine** have completed. Nothing else orders two engines; the
  hazard check (`acc-run --check-hazards`) reports two engines touching the same 4-byte
  word, at least one writing, with no chain of signals ordering them. The reference
  simulator applies each instruction's effect at its start time; only a program with a
  hazard can tell the difference.

## Timing

Every instruction's latency formula is listed with it below; the simulator evaluates
exactly these expressions, and the rules below for how instructions overlap are
isa/timing.py, which both the simulator and the compiler's cost model (`acc-compile
--report`, the schedule search of -O3) run. Names in formulas are the instruction's fields, the config's
fields (`isa/config.py`), `row_cycles` (cycles per streamed row for the instruction's
dtype: `int8_row_cycles`, `bf16_row_cycles` or `fp32_row_cycles`) and `transfer` (the
DRAM channel cycles of a DMA: each contiguous DRAM run costs
`ceil(run_bytes / dram_bytes_per_cycle)`; rows that are adjacent in DRAM merge into one
run). How instructions overlap:

- **DMA.** Each DMA engine issues at most one instruction per cycle. A DMA's data moves
  `dma_latency` cycles after issue, over the single DRAM channel shared by the load and
  store engines, in issue order, for `transfer` cycles; the DMA completes when its
  transfer does. DMAs thus pipeline, but DRAM never moves more than
  `dram_bytes_per_cycle` bytes per cycle.
- **Matrix unit** (weight-stationary, `array_rows` R x `array_cols` C). `load_weights`
  shifts its k rows into the array (k x row_cycles). `matmul` streams its m rows (m x
  row_cycles); the last result leaves the array R + C - 2 cycles after the last row
  entered (skew and drain). Each takes the `row_cycles` of its own `dtype`: i8 weights
  for bf16 activations shift in at `int8_row_cycles` per row (the weight path moves
  bytes), the bf16 rows stream at `bf16_row_cycles` (the multipliers are bf16 ones).
  - Without weight double-buffering (`weight_double_buffer = false`): a `load_weights`
    waits until the previous `matmul` has drained. One R x C tile costs
    `R + M + R + C - 2` cycles, `M + 3R - 2` on a square array (SCALE-Sim's
    weight-stationary model).
  - With it (the default, as in TPUs): the next tile's weights shift into shadow
    registers while the current tile streams; a `matmul` may start as soon as the
    previous one's last row has entered and its own weights are in. Back-to-back tiles
    then cost `max(M, K)` each, and the fill and drain `R + C - 2` once per chain. A
    `load_weights` waits only until the weights loaded before it have become active
    (the first `matmul` after them has started).
- **Vector unit.** One instruction at a time: `vector_latency` (pipeline depth) plus
  `rows * ceil(cols / vector_lanes)` cycles times the operation's cost (1 for simple
  operations, 2 for transcendental functions, 4 for division and pow).
- `sync` waits, on its engine, for every earlier instruction of that engine to
  complete, then takes 1 cycle.

**Against SCALE-Sim.** SCALE-Sim 3.0.0's weight-stationary compute cycles for a layer
are `folds x (2R + C + M - 2)`: the im2col GEMM `M x K x N` (M output pixels or rows,
K = input channels x kernel taps, N output channels) cut into `ceil(K/R) x ceil(N/C)`
weight tiles ("folds"), every fold streaming all M rows, with the operands already in
its SRAMs. The same formula is the simulator's cost of a chain of tiles without weight
double-buffering: a hand-written GEMM with SCALE-Sim's fold structure takes 22,400
cycles for 256x256x256 against its 22,399. Compiled layers differ from SCALE-Sim's
figure for two reasons, which `python benchmarks/scalesim.py` separates per layer (its
"acc folds" and "fold cycles" columns apply the formula to acc's own tiles):

- *Fold structure.* acc's kernels choose the orientation per layer (a GEMM whose rows
  fit on chip keeps them there and loads each weight tile once, so M=128, K=384, N=1536
  runs SCALE-Sim's 576 folds of 128 rows; one with few rows that do not keeps the
  activations stationary and streams the weights, `out^T = W^T A^T`), and a fold's
  results must fit half the accumulator (`acc_bytes`, double-buffered) until they are
  finished, where SCALE-Sim streams all M rows per fold. On `edge` (128 KiB) a 3x3
  convolution over 56x56x64 -> 64 runs 252 folds of up to 512 pixels (filters stationary
  in two blocks of 32 output channels, so that 512 pixels' results fit; SCALE-Sim: 36
  folds of 3,136) and a 1x1 56x56x64 -> 256 runs 196 folds of 256 output channels over
  32-pixel patch tiles (the plane as one row; SCALE-Sim: 16 folds of 3,136): each fold
  pays the fill and drain again. (Compiled for double-buffering, where a fold's fill and
  drain overlap the next, the 3x3 layer takes the other loop order: 98 pixel tiles of 32.)
- *Operand supply.* acc's span is measured on the whole program, so it includes the
  matrix unit waiting for DMA (`dma_latency` before the first tiles arrive) and for the
  vector unit (a convolution's patches turned into rows, results finished and stored);
  SCALE-Sim assumes operands are always ready.

The run's roofline bound is `max(sum over dtypes of MACs / (R * C / row_cycles), DRAM
bytes / dram_bytes_per_cycle)`; the simulator stops with an internal error if its cycle
count is ever below it.

## Encoding

Every instruction is {INSTRUCTION_BITS} bits ({INSTRUCTION_BYTES} bytes, little-endian);
bit 0 is the least significant bit of the first byte. Bits that no field of an
instruction uses are reserved and must be zero; a decoder refuses them. Field kinds:
`uint` unsigned; `dtype` the element type code; `engine` load = 0, matrix = 1,
vector = 2, store = 3; `esize` log2 of 1, 2 or 4 bytes; `flag` 0 or 1; `imm32` fp32
bits when the instruction's dtype is a float, else a two's-complement int32; `sem` a
semaphore id.
"""


def _field_table(fields) -> list[str]:
    lines = ["| field | bits | kind | meaning |", "|---|---|---|---|"]
    for f in fields:
        bits = f"{f.hi}..{f.lo}" if f.hi != f.lo else f"{f.lo}"
        default = f" (assembly default {f.default})" if f.default else ""
        lines.append(f"| `{f.name}` | {bits} | {f.kind.value} | {f.doc}{default} |")
    return lines


def render() -> str:
    out = [INTRO, "### Header (every instruction)", "", *_field_table(HEADER), ""]
    for name, fields in FORMATS.items():
        if fields:
            out += [f"### Format `{name}`", "", *_field_table(fields), ""]
    out += ["## Instructions", "",
            "| mnemonic | opcode | format | engine | semantics | latency (cycles) |",
            "|---|---|---|---|---|---|"]
    for d in INSTRUCTIONS:
        engine = d.engine.name.lower() if d.engine is not None else ("`engine` field" if d.format == "sync" else "-")
        semantics = d.semantics.replace("|", "\\|")
        out.append(f"| `{d.mnemonic}` | `{d.opcode:#04x}` | {d.format} | {engine} | {semantics} | `{d.latency}` |")
    out += ["", "## Configurations", "", "Presets (`isa/config.py`); a JSON file may give any of these fields, "
            "starting from `\"base\": PRESET`.", ""]
    names = [f.name for f in dataclasses.fields(AcceleratorConfig)]
    out.append("| field | " + " | ".join(PRESETS) + " |")
    out.append("|---" * (len(PRESETS) + 1) + "|")
    for name in names[1:]:
        out.append(f"| `{name}` | " + " | ".join(str(getattr(c, name)) for c in PRESETS.values()) + " |")
    out += ["", "Derived: `acc_base = spad_bytes`; peak MACs per cycle for a dtype = "
            "`array_rows * array_cols / row_cycles`.", ""]
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    SPEC_PATH.write_text(render())
    print(f"wrote {SPEC_PATH}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
