"""`acc-compile --report`: per layer, what the kernel chose, the scratchpad it used and the cycles
predicted from the ISA's latency formulas.

The prediction is a resource bound: each engine's instructions of the layer, by their
latency formulas (isa.encoding.instruction_latencies) — the matrix unit's loads and
streamed rows, the vector unit's instructions, and the DRAM channel's transfer cycles
shared by the load and store engines — and the layer takes at least the busiest one.
Fill/drain of the array and waits between engines are not in it, so the simulator's
span of the layer is never below it; how close the two are says how well the layer's
engines overlap (benchmarks and tests print the ratio).
"""

from __future__ import annotations

from dataclasses import dataclass

from isa.encoding import instruction_latencies
from isa.program import Program
from isa.spec import Engine


@dataclass(frozen=True)
class LayerReport:
    node: str
    instructions: int
    notes: tuple[str, ...]
    scratchpad_bytes: int
    matrix: int  # predicted busy cycles per resource
    vector: int
    dram: int

    @property
    def predicted(self) -> int:
        return max(self.matrix, self.vector, self.dram)

    @property
    def bound(self) -> str:
        return max((self.matrix, "matrix"), (self.vector, "vector"), (self.dram, "DRAM"))[1]


def layer_reports(program: Program) -> list[LayerReport]:
    config = program.config
    latencies = instruction_latencies(program.instructions, config)
    reports = []
    for entry in program.debug:
        busy = {"matrix": 0, "vector": 0, "dram": 0}
        loads = streams = 0
        for instruction, cycles in zip(program.instructions[entry.start:entry.end], latencies[entry.start:entry.end],
                                       strict=True):
            definition = instruction.definition
            if definition.mnemonic in ("sync", "end"):
                continue
            if definition.mnemonic == "matmul":  # the rows streamed; fill and drain overlap the next
                streams += instruction.fields["m"] * config.row_cycles(instruction.fields["dtype"])
            elif definition.mnemonic == "load_weights":
                loads += cycles
            elif definition.engine is Engine.VECTOR:
                busy["vector"] += cycles
            elif definition.engine is not Engine.MATRIX:  # load and store share the DRAM channel
                busy["dram"] += max(cycles - config.dma_latency, 0)  # the fixed latency overlaps
        # With weight double-buffering the next tile shifts in while the current one streams.
        busy["matrix"] = max(loads, streams) if config.weight_double_buffer else loads + streams
        reports.append(LayerReport(entry.node, entry.end - entry.start, tuple(program.notes.get(entry.node, ())),
                                   program.scratchpad_peak.get(entry.node, 0), busy["matrix"], busy["vector"],
                                   busy["dram"]))
    return reports


def report_text(program: Program) -> str:
    spad = program.config.spad_bytes
    layers = layer_reports(program)
    lines = [f"{'node':<32} {'instr':>7} {'scratchpad':>12} {'predicted':>11}  bound   choices"]
    for layer in layers:
        used = f"{layer.scratchpad_bytes / 1024:.0f}K {100 * layer.scratchpad_bytes / spad:3.0f}%"
        lines.append(f"{layer.node[:32]:<32} {layer.instructions:>7,} {used:>12} {layer.predicted:>11,}  "
                     f"{layer.bound:<7} {'; '.join(layer.notes)}")
    total = sum(layer.predicted for layer in layers)
    lines.append(f"predicted total (layers one after another): {total:,} cycles")
    return "\n".join(lines)
