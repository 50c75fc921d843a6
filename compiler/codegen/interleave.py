"""Interleaving a kernel's code into the previous kernel's, so that their engines overlap (-O2).

Each engine runs its queue in order. Emitted one after the other, a LayerNorm's vector work
waits behind everything the matrix product before it puts in the vector queue, and so starts
only when the product's last row block is done, though its first rows were stored long
before. Code generation therefore records the code of a kernel without matrix work that
follows one with matrix work (`_interleaved` in compiler/codegen/__init__.py) and merges it
into the product's code before the emitter sees either:

- each of its instructions goes after the last instruction of the product's code it
  conflicts with (read after write, write after read or write after write on any byte of
  DRAM or local memory, by isa/footprint.py), so the merged program computes exactly what
  the two in sequence compute; its own instructions keep their order;
- and after the product's instructions that its engine would run before it is ready. The
  product's code is timed alone by the ISA's timing (isa/timing.py) and the new code's by
  the same latencies as it becomes ready; without this an instruction that waits for the
  product's store of a row block would hold up the product's next loads queued behind it.

Kernels with matrix work keep their place: the weights held in the array are state that
footprints do not describe. The emitter then derives the synchronisation from the merged
order as from any other. The interleaved kernel's on-chip buffers start above the
product's (`CodegenContext.local_floors`), or they would conflict with the product's
buffers and stay behind them. Its outputs may be placed in DRAM the product's dead inputs
held: its writes there then stay after the product's last reads of those bytes. (Keeping
that DRAM from it until its outputs were placed overlapped a little more, 0.2% on int8
MiniLM, but spread ResNet-50's activations over 13% more DRAM.)

The span where the two kernels' instructions alternate carries both their names ("a + b"):
it is one layer for the per-layer figures.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable

import numpy as np

from compiler.codegen.emitter import Emitter
from isa.config import AcceleratorConfig
from isa.encoding import Instruction, instruction_latencies
from isa.footprint import DRAM, LOCAL, footprint
from isa.spec import Engine
from isa.timing import Timeline

Recorded = list[tuple[Instruction, str | None]]  # instructions with the node (or group) each belongs to
JOIN = " + "
_MEMORY = {DRAM: 0, LOCAL: 1}
_UNTIMED = {"dram", "wait", "signal"}  # fields that do not change when code runs alone, or how long


def _spans(instruction: Instruction, config: AcceleratorConfig) -> list[tuple[int, int, int, bool]]:
    """The instruction's footprint with each memory as a number."""
    return [(_MEMORY[memory], start, end, write) for memory, start, end, write in footprint(instruction, config)]


def interleave(pending: Recorded, new: Recorded, config: AcceleratorConfig,
               fresh_emitter: Callable[[], Emitter], timings: dict | None = None) -> Recorded:
    """`pending` then `new`, with each instruction of `new` moved up into `pending` (module docstring)
    and the span where they alternate named after both. `fresh_emitter` makes an emitter without
    history, to time `pending` alone; `timings` keeps those timings for code of the same shape."""
    if not pending or not new or any(instruction.definition.engine is Engine.MATRIX for instruction, _ in new):
        return pending + new
    rows = [(index, *span) for index, (instruction, _) in enumerate(pending) for span in _spans(instruction, config)]
    owner, memory, start, end, write = (np.array(column, dtype=np.int64) for column in zip(*rows, strict=True))
    write = write.astype(bool)
    began, ended = _timed(pending, config, fresh_emitter, timings)
    # Per engine, its pending instructions in program order and when each starts (in order, so sorted).
    queue: list[list[int]] = [[] for _ in Engine]
    queue_starts: list[list[int]] = [[] for _ in Engine]
    for index, (instruction, _) in enumerate(pending):
        queue[int(instruction.engine)].append(index)
        queue_starts[int(instruction.engine)].append(int(began[index]))
    latencies = instruction_latencies([instruction for instruction, _ in new], config)
    free = [0] * len(Engine)  # when each engine is done with the new instructions given to it so far
    placed_spans: list[tuple[int, int, int, bool, int]] = []  # the new instructions' spans, and when each ends
    merged: Recorded = []
    from_new: list[bool] = []
    placed = 0  # instructions of `pending` already in `merged`
    for (instruction, node), latency in zip(new, latencies, strict=True):
        last, ready = -1, 0  # the last pending instruction it conflicts with; when its inputs are ready
        spans = _spans(instruction, config)
        for span_memory, span_start, span_end, span_write in spans:
            found = np.flatnonzero((memory == span_memory) & (start < span_end) & (span_start < end)
                                   & (write | span_write))
            if len(found):
                last = max(last, int(owner[found[-1]]))
                ready = max(ready, int(ended[owner[found]].max()))
            for other_memory, other_start, other_end, other_write, other_ends in placed_spans:
                if other_memory == span_memory and other_start < span_end and span_start < other_end \
                        and (other_write or span_write):
                    ready = max(ready, other_ends)
        engine = int(instruction.engine)
        begins = max(ready, free[engine])
        free[engine] = begins + latency
        placed_spans.extend((*span, begins + latency) for span in spans)
        ahead = bisect.bisect_right(queue_starts[engine], begins)  # its engine's pending instructions before it
        position = max(placed, last + 1, queue[engine][ahead - 1] + 1 if ahead else 0)
        merged.extend(pending[placed:position])
        from_new.extend([False] * (position - placed))
        placed = position
        merged.append((instruction, node))
        from_new.append(True)
    merged.extend(pending[placed:])
    from_new.extend([False] * (len(pending) - placed))
    return _grouped(merged, from_new)


def _timed(code: Recorded, config: AcceleratorConfig, fresh_emitter: Callable[[], Emitter],
           timings: dict | None = None) -> tuple[np.ndarray, ...]:
    """When each instruction of `code` starts and ends when it runs alone (isa/timing.py). Code whose
    instructions differ only in DRAM addresses (a kernel of the next layer of a transformer) runs alike:
    `timings` holds what was timed, by that shape: MiniLM's feed-forward block is timed once (0.3 s), not
    once a layer. (A wrong hit could only place code worse, never make it wrong: what orders the merged
    code is its footprints and the real emitter's synchronisation.)"""
    shape = None
    if timings is not None:
        shape = tuple((instruction.mnemonic, *(value for name, value in instruction.fields.items()
                                                 if name not in _UNTIMED)) for instruction, _ in code)
        if shape in timings:
            return timings[shape]
    emitter = fresh_emitter()
    for instruction, node in code:
        emitter.append(instruction, node)
    program, _ = emitter.finish()  # sets the instructions' sync fields; the real emitter sets them again
    position = {id(instruction): index for index, (instruction, _) in enumerate(code)}
    began, ended = np.zeros(len(code), dtype=np.int64), np.zeros(len(code), dtype=np.int64)
    for index, _, begins, ends, _ in Timeline(program, config):
        at = position.get(id(program[index]))
        if at is not None:
            began[at], ended[at] = begins, ends
    if shape is not None:
        timings[shape] = began, ended
    return began, ended


def _grouped(merged: Recorded, from_new: list[bool]) -> Recorded:
    """The span from the first new instruction to the last pending one after it, named after its nodes,
    pending ones first."""
    first_new = from_new.index(True)
    last_pending = len(from_new) - 1 - from_new[::-1].index(False) if False in from_new else -1
    if last_pending < first_new:
        return merged
    span = range(first_new, last_pending + 1)
    names = dict.fromkeys(merged[index][1] or "" for newer in (False, True) for index in span
                          if from_new[index] == newer)
    group = JOIN.join(names)
    return merged[:first_new] + [(instruction, group) for instruction, _ in merged[first_new:last_pending + 1]] \
        + merged[last_pending + 1:]
