"""The instruction emitter: kernels append instructions; it inserts the synchronisation.

Kernels never write `wait` or `signal` themselves. For each new instruction the emitter
looks up, from the memory the instruction touches (isa/footprint.py), the latest
instruction of every other engine it conflicts with (read after write, write after
read, write after write) and makes the new instruction wait for it:

- one semaphore per ordered pair of engines (producer -> consumer); the producer's
  instruction gives a token (in its `signal` field, or by a `sync` placed right after it
  when the field is taken) and the consumer's takes it (in its `wait` field, or by a
  `sync` placed right before it for a second dependency). Both engines run in order and
  tokens of one semaphore are given and taken in the same order, so each wait takes
  exactly the token meant for it;
- what an engine is already ordered after is tracked with vector clocks, so a
  dependency implied by an earlier one costs nothing (and the memory is not even
  looked up while no other engine has an access newer than the clock).

Local memory is tracked in 64-byte blocks, DRAM in the allocations the DRAM plan made
(an allocation that reuses dead tensors' DRAM inherits their history); a span that
covers more only adds dependencies, never loses one. Every program the
compiler emits is therefore free of hazards by construction.
"""

from __future__ import annotations

import bisect
import operator
from contextlib import contextmanager

import numpy as np

from isa.config import AcceleratorConfig
from isa.encoding import Instruction
from isa.footprint import DRAM, footprint
from isa.program import DebugRange
from isa.spec import Engine

BLOCK = 64
ENGINES = len(Engine)


def pair_semaphore(producer: int, consumer: int) -> int:
    """Semaphore id of the producer -> consumer pair: 1..12."""
    return 1 + producer * (ENGINES - 1) + (consumer if consumer < producer else consumer - 1)


class _Item:
    """One emitted instruction and the synchronisation it gets (lists made only when needed:
    a large model has millions of items)."""

    __slots__ = ("instruction", "engine", "node", "before", "after", "signal", "wait")

    def __init__(self, instruction: Instruction, engine: int, node: str | None):
        self.instruction, self.engine, self.node = instruction, engine, node
        self.before: list[Instruction] | None = None  # syncs that take extra tokens
        self.after: list[Instruction] | None = None  # syncs that give extra tokens
        self.signal = self.wait = 0


class Emitter:
    def __init__(self, config: AcceleratorConfig):
        self.config = config
        self.items: list[_Item] = []
        self.by_engine: list[list[int]] = [[] for _ in range(ENGINES)]  # engine -> item indices
        blocks = -(-config.local_bytes // BLOCK)
        # Per engine: sequence number (1-based) of its last instruction writing / touching each block.
        self.local_write = np.zeros((ENGINES, blocks), dtype=np.int64)
        self.local_touch = np.zeros((ENGINES, blocks), dtype=np.int64)
        # DRAM allocations as sorted, disjoint ranges, each with the slot that tracks it (the DRAM
        # plan registers them as it makes them); slot 0 stands for any DRAM outside every allocation.
        self.dram_starts: list[int] = []
        self.dram_ends: list[int] = []
        self.dram_slots: list[int] = []
        self.slot_count = 1
        self.dram_write = np.zeros((ENGINES, 64), dtype=np.int64)
        self.dram_touch = np.zeros((ENGINES, 64), dtype=np.int64)
        # Per memory, indexed by "is it a write": per engine the latest sequence number among its writes
        # [False] and among all its accesses [True], anywhere in that memory (bounds of the arrays above).
        self.local_latest = ([0] * ENGINES, [0] * ENGINES)
        self.dram_latest = ([0] * ENGINES, [0] * ENGINES)
        # Vector clocks: clock[e][f] = the last instruction of engine f that engine e is ordered after.
        self.clock = [[0] * ENGINES for _ in range(ENGINES)]
        self.clock_at: list[list[tuple]] = [[] for _ in range(ENGINES)]  # engine -> seq-1 -> its clock then
        self.current_node: str | None = None

    def fresh(self) -> Emitter:
        """An emitter with no instructions and no history that knows the same DRAM allocations (for
        emitting a trial schedule: its dependencies are those it would have alone)."""
        other = Emitter(self.config)
        other.dram_starts, other.dram_ends, other.dram_slots = (list(self.dram_starts), list(self.dram_ends),
                                                                list(self.dram_slots))
        other.slot_count = self.slot_count
        other.dram_write = np.zeros_like(self.dram_write)
        other.dram_touch = np.zeros_like(self.dram_touch)
        other.current_node = self.current_node
        return other

    # Node annotation ------------------------------------------------------------------------
    @contextmanager
    def node(self, name: str):
        previous, self.current_node = self.current_node, name
        try:
            yield
        finally:
            self.current_node = previous

    # Memory tracking ------------------------------------------------------------------------
    def register_dram(self, start: int, end: int) -> None:
        """Track [start, end) as one allocation, in a new slot. Where it overlaps earlier
        allocations (DRAM reused after their tensors died) the new slot starts with their
        history, so its first access waits for the last accesses to the old tensors; what
        is left of them keeps their slots."""
        first = bisect.bisect_right(self.dram_ends, start)  # the first range ending after `start`
        last = bisect.bisect_left(self.dram_starts, end)  # ranges [first, last) overlap
        slot = self.slot_count
        self.slot_count += 1
        if slot >= self.dram_write.shape[1]:
            grow = np.zeros_like(self.dram_write)
            self.dram_write = np.concatenate([self.dram_write, grow], axis=1)
            self.dram_touch = np.concatenate([self.dram_touch, grow], axis=1)
        pieces = []
        if first < last:
            old = self.dram_slots[first:last]
            self.dram_write[:, slot] = self.dram_write[:, old].max(axis=1)
            self.dram_touch[:, slot] = self.dram_touch[:, old].max(axis=1)
            if self.dram_starts[first] < start:
                pieces.append((self.dram_starts[first], start, self.dram_slots[first]))
        pieces.append((start, end, slot))
        if first < last and self.dram_ends[last - 1] > end:
            pieces.append((end, self.dram_ends[last - 1], self.dram_slots[last - 1]))
        self.dram_starts[first:last] = [p[0] for p in pieces]
        self.dram_ends[first:last] = [p[1] for p in pieces]
        self.dram_slots[first:last] = [p[2] for p in pieces]

    def _dram_slots(self, start: int, end: int) -> list[int]:
        """Slots of the allocations overlapping [start, end) (slot 0: DRAM outside every allocation)."""
        index = bisect.bisect_right(self.dram_ends, start)
        slots = []
        while index < len(self.dram_starts) and self.dram_starts[index] < end:
            slots.append(self.dram_slots[index])
            index += 1
        return slots or [0]

    # Emission ---------------------------------------------------------------------------------
    def emit(self, mnemonic: str, **fields) -> Instruction:
        """Append one instruction; its dependencies on other engines are added automatically."""
        if "wait" in fields or "signal" in fields:
            raise ValueError("kernels do not set wait/signal: the emitter does")
        instruction = Instruction(mnemonic, **fields)
        engine = int(instruction.engine)
        clock = self.clock[engine]
        accesses = []  # (write, writes, touches, where, latest) per span
        needed = [0] * ENGINES
        for memory, start, end, write in footprint(instruction, self.config):
            if memory == DRAM:
                writes, touches, latest = self.dram_write, self.dram_touch, self.dram_latest
                slots = self._dram_slots(start, end)
                # One slot (the usual case) is a plain index: a column, no reduction needed.
                where = slots[0] if len(slots) == 1 else slots
            else:
                writes, touches, latest = self.local_write, self.local_touch, self.local_latest
                first, last = start // BLOCK, -(-end // BLOCK)
                if last <= first:
                    continue  # no block: nothing to order, nothing to record
                where = slice(first, last)
            accesses.append((write, writes, touches, where, latest))
            # A write conflicts with any earlier access, a read with earlier writes. Only an access this
            # engine is not yet ordered after can add a dependency: look only when some engine has one.
            if not any(map(operator.gt, latest[write], clock)):
                continue
            block = (touches if write else writes)[:, where]
            found = (block if block.ndim == 1 else np.maximum.reduce(block, axis=1)).tolist()
            for other in range(ENGINES):
                if found[other] > needed[other]:
                    needed[other] = found[other]
        item = _Item(instruction, engine, self.current_node)
        self._order_after(item, engine, needed)
        self.items.append(item)
        self.by_engine[engine].append(len(self.items) - 1)
        seq = len(self.by_engine[engine])
        clock[engine] = seq
        self.clock_at[engine].append(tuple(clock))
        for write, writes, touches, where, latest in accesses:
            touches[engine, where] = seq
            latest[True][engine] = seq
            if write:
                writes[engine, where] = seq
                latest[False][engine] = seq
        return instruction

    def _order_after(self, item: _Item, engine: int, needed: list[int]) -> None:
        clock = self.clock[engine]
        for producer in range(ENGINES):
            if producer == engine or needed[producer] <= clock[producer]:
                continue  # not needed, or already implied by an earlier wait
            seq = needed[producer]
            semaphore = pair_semaphore(producer, engine)
            producer_item = self.items[self.by_engine[producer][seq - 1]]
            if producer_item.signal == 0:
                producer_item.signal = semaphore
            else:
                producer_item.after = (producer_item.after or []) + [
                    Instruction("sync", engine=Engine(producer), signal=semaphore)]
            if item.wait == 0:
                item.wait = semaphore
            else:
                item.before = (item.before or []) + [Instruction("sync", engine=Engine(engine), wait=semaphore)]
            for other, known in enumerate(self.clock_at[producer][seq - 1]):
                if known > clock[other]:
                    clock[other] = known

    # Output ---------------------------------------------------------------------------------
    def finish(self) -> tuple[list[Instruction], list[DebugRange]]:
        """The instructions in program order, ending with `end`, and the node of each range."""
        code: list[Instruction] = []
        nodes: list[str | None] = []
        for item in self.items:
            for sync in item.before or ():
                code.append(sync)
                nodes.append(item.node)
            # The instruction is the emitter's own: give it its semaphores in place.
            item.instruction.set_sync(item.wait, item.signal)
            code.append(item.instruction)
            nodes.append(item.node)
            for sync in item.after or ():
                code.append(sync)
                nodes.append(item.node)
        code.append(Instruction("end"))
        nodes.append(None)
        debug = []
        start = 0
        for index in range(1, len(nodes) + 1):
            if index == len(nodes) or nodes[index] != nodes[start]:
                if nodes[start] is not None:
                    debug.append(DebugRange(start, index, nodes[start]))
                start = index
        return code, debug
