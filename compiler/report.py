"""`acc-compile --report`: per layer, what the kernel chose, the scratchpad it used and the cycles
predicted by the cost model.

The cost model is the ISA's timing (isa/timing.py: every instruction's latency formula,
the engines' queues and semaphores, the array's double buffering, the shared DRAM
channel) applied to the layer's own instructions, without data. A layer is timed alone
with the WINDOW layers before it and the one after it (whose loads may take the DRAM
channel before the layer's last stores), as if everything earlier had finished; its
prediction is how far its last instruction ends past theirs. The simulator's counterpart
is a layer's `own_cycles` (how far it moved the end of the run); the two differ only
where layers further away overlap it. It is a replay of the emitted instructions by the
timing rules, not a closed form per kernel.

Beside it, each layer's busiest resource by the same latency formulas (the matrix unit's
loads and streamed rows, the vector unit's instructions, the DRAM channel's transfers):
what bounds the layer, a figure no schedule of its instructions beats.
"""

from __future__ import annotations

from dataclasses import dataclass

from isa.encoding import instruction_latencies
from isa.program import Program
from isa.spec import Engine
from isa.timing import parts_alone

WINDOW = 2  # earlier layers timed with each layer (and the one after it), for the overlap between them


@dataclass(frozen=True)
class LayerReport:
    node: str
    instructions: int
    notes: tuple[str, ...]
    scratchpad_bytes: int
    predicted: int  # cycles the layer adds to the run, by the cost model
    matrix: int  # busy cycles per resource, by the latency formulas
    vector: int
    dram: int

    @property
    def busiest(self) -> int:
        return max(self.matrix, self.vector, self.dram)

    @property
    def bound(self) -> str:
        return max((self.matrix, "matrix"), (self.vector, "vector"), (self.dram, "DRAM"))[1]


def predicted_cycles(program: Program) -> list[int]:
    """The cost model's cycles for each of the program's layers (debug ranges; module docstring)."""
    ranges = program.debug
    parts = [(ranges[max(n - WINDOW, 0)].start, ranges[min(n + 1, len(ranges) - 1)].end) for n in range(len(ranges))]
    layer_at = {}  # instruction index -> layer
    for n, entry in enumerate(ranges):
        layer_at.update(dict.fromkeys(range(entry.start, entry.end), n))
    predicted = [0] * len(ranges)
    for n, timeline in parts_alone(program.instructions, program.config, parts):
        first = parts[n][0]
        ends: dict[int, int] = {}
        for index, _, _, end, _ in timeline:
            layer = layer_at.get(first + index)
            if layer is not None and end > ends.get(layer, 0):
                ends[layer] = end
        predicted[n] = max(ends[n] - max((ends.get(m, 0) for m in range(n - WINDOW, n)), default=0), 0)
    return predicted


def prediction_errors(program: Program, layers: list[dict]) -> list[tuple[str, int, int, float]]:
    """(node, predicted, simulated own cycles, relative error) per layer, against a run's
    stats["layers"]."""
    return [(layer["node"], predicted, layer["own_cycles"],
             abs(predicted - layer["own_cycles"]) / max(layer["own_cycles"], 1))
            for layer, predicted in zip(layers, predicted_cycles(program), strict=True)]


def layer_reports(program: Program) -> list[LayerReport]:
    config = program.config
    latencies = instruction_latencies(program.instructions, config)
    reports = []
    for entry, predicted in zip(program.debug, predicted_cycles(program), strict=True):
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
                                   program.scratchpad_peak.get(entry.node, 0), predicted, busy["matrix"],
                                   busy["vector"], busy["dram"]))
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
    lines.append(f"predicted total: {total:,} cycles")
    return "\n".join(lines)
