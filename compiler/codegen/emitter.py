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

Local memory is tracked in 64-byte blocks, DRAM in the allocations the DRAM plan made,
each cut into DRAM_PIECES equal pieces once it is PIECED_BYTES or more (so a kernel
reading a tensor's first rows waits only for the writes of about those rows); an
allocation that reuses dead tensors' DRAM inherits their history, and a span that
covers more only adds dependencies, never loses one. Every program the
compiler emits is therefore free of hazards by construction.

Lookups in local memory are most of the work (a model has hundreds of thousands of
instructions), so each engine's recent accesses are a short list that a lookup scans from
the newest back to what the looking engine is already ordered after: a few entries, since
the engines run only a little apart. An entry every other engine is ordered after can
never matter again and is dropped. Only when an engine is far behind (the store engine,
idle while a layer computes) do old entries pile up; they are then folded into per-block
arrays, which are written in large batches and only when a lookup reaches them. The
result is the same as looking every block up in full arrays (tests/test_emitter.py).
"""

from __future__ import annotations

import bisect
import functools
import operator
from contextlib import contextmanager

import numpy as np

from isa.config import AcceleratorConfig
from isa.encoding import Instruction
from isa.footprint import DRAM, footprint
from isa.program import DebugRange
from isa.spec import Engine

BLOCK = 64
DRAM_PIECES = 4  # what a large DRAM allocation is tracked in: MiniLM's 128-row tensors by 32-row blocks
PIECED_BYTES = 4096
RECENT = 256  # entries an engine keeps in its list before dropping or folding old ones
ENGINES = len(Engine)
OTHERS = tuple(tuple(other for other in range(ENGINES) if other != engine) for engine in range(ENGINES))


def pair_semaphore(producer: int, consumer: int) -> int:
    """Semaphore id of the producer -> consumer pair: 1..12."""
    return 1 + producer * (ENGINES - 1) + (consumer if consumer < producer else consumer - 1)


@functools.cache
def _sync(engine: int, wait: int = 0, signal: int = 0) -> Instruction:
    """A `sync` on `engine` that takes or gives a token (one shared value each: nothing changes a
    program's syncs, and a model has tens of thousands)."""
    return Instruction("sync", engine=Engine(engine), wait=wait, signal=signal)


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
        # Local memory, per engine: its recent instructions' accesses, oldest first, each as (sequence number
        # (1-based), first and end block of the spans it reads, first and end block of those it writes, and
        # the spans as (first block, end block, is it a write)). An entry every other engine is already
        # ordered after is dropped; when too many are left, the oldest are folded into per-block arrays
        # (per engine, the sequence number of its last folded write / access of each block).
        self.recent: list[list[tuple]] = [[] for _ in range(ENGINES)]
        self.folded = [0] * ENGINES  # per engine: the newest sequence number folded
        self.unpainted: list[list[tuple]] = [[] for _ in range(ENGINES)]  # folded, not yet in the arrays
        blocks = -(-config.local_bytes // BLOCK)
        self.local_write = np.zeros((ENGINES, blocks), dtype=np.int64)
        self.local_touch = np.zeros((ENGINES, blocks), dtype=np.int64)
        # DRAM allocations as sorted, disjoint ranges, each with the slot that tracks it (the DRAM
        # plan registers them as it makes them); slot 0 stands for any DRAM outside every allocation.
        # Per slot, per engine: the sequence number of the engine's last write / access of it.
        self.dram_starts: list[int] = []
        self.dram_ends: list[int] = []
        self.dram_slots: list[int] = []
        self.dram_write: list[list[int]] = [[0] * ENGINES]
        self.dram_touch: list[list[int]] = [[0] * ENGINES]
        # Per memory, indexed by "is it a write": per engine the latest sequence number among its writes
        # [False] and among all its accesses [True], anywhere in that memory.
        self.local_latest = ([0] * ENGINES, [0] * ENGINES)
        self.dram_latest = ([0] * ENGINES, [0] * ENGINES)
        # Vector clocks: clock[e][f] = the last instruction of engine f that engine e is ordered after.
        self.clock = [[0] * ENGINES for _ in range(ENGINES)]
        self.clock_at: list[list[tuple]] = [[] for _ in range(ENGINES)]  # engine -> seq-1 -> its clock then
        self.current_node: str | None = None
        self.recorded: list[tuple[Instruction, str | None]] | None = None  # see `recording`

    def fresh(self) -> Emitter:
        """An emitter with no instructions and no history that knows the same DRAM allocations (for
        emitting a trial schedule: its dependencies are those it would have alone)."""
        other = Emitter(self.config)
        other.dram_starts, other.dram_ends, other.dram_slots = (list(self.dram_starts), list(self.dram_ends),
                                                                list(self.dram_slots))
        other.dram_write = [[0] * ENGINES for _ in self.dram_write]
        other.dram_touch = [[0] * ENGINES for _ in self.dram_touch]
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
    def register_dram(self, start: int, end: int, pieces: bool = True) -> None:
        """Track [start, end) as one allocation: in DRAM_PIECES pieces of whole blocks when it is
        PIECED_BYTES or more (and `pieces`: not for constants, which only the host writes), else in one.
        More pieces would let more work start early, but a strided DMA's span then covers many of them,
        and each is looked up (ResNet-50's code generation)."""
        step = end - start
        if pieces and step >= PIECED_BYTES:
            step = -(-step // DRAM_PIECES // BLOCK) * BLOCK
        for piece in range(start, end, step):
            self._register_piece(piece, min(piece + step, end))

    def _register_piece(self, start: int, end: int) -> None:
        """Track [start, end) in a new slot. Where it overlaps earlier allocations (DRAM reused
        after their tensors died) the new slot starts with their history, so its first access
        waits for the last accesses to the old tensors; what is left of them keeps their slots."""
        first = bisect.bisect_right(self.dram_ends, start)  # the first range ending after `start`
        last = bisect.bisect_left(self.dram_starts, end)  # ranges [first, last) overlap
        slot = len(self.dram_write)
        old = self.dram_slots[first:last]
        for table in (self.dram_write, self.dram_touch):
            table.append([max(seqs) for seqs in zip(*(table[o] for o in old), strict=True)] or [0] * ENGINES)
        pieces = []
        if first < last and self.dram_starts[first] < start:
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

    def _local_conflict(self, other: int, after: int, access: tuple) -> int:
        """The sequence number of engine `other`'s latest local access that conflicts with `access` (an
        entry as in `recent`, without its number) if it is later than `after`, else 0."""
        read_low, read_high, write_low, write_high, spans = access
        for seq, other_read_low, other_read_high, other_write_low, other_write_high, other_spans in reversed(
                self.recent[other]):
            if seq <= after:
                return 0
            # Only where one side's writes meet the other's reads or writes can a pair of spans conflict (the
            # bounds of reads and writes apart: an instruction reads the scratchpad, writes the accumulator).
            if ((other_write_low < write_high and write_low < other_write_high)
                    or (other_write_low < read_high and read_low < other_write_high)
                    or (other_read_low < write_high and write_low < other_read_high)):
                for first, end, write in spans:
                    for other_first, other_end, other_write in other_spans:
                        if other_first < end and first < other_end and (write or other_write):
                            return seq
        if self.folded[other] <= after:
            return 0
        self._paint(other)
        found = max(int((self.local_touch if write else self.local_write)[other, first:end].max())
                    for first, end, write in spans)
        return found if found > after else 0

    def _shorten(self, engine: int) -> None:
        """Keep the engine's list of recent entries short (see `recent`)."""
        recent = self.recent[engine]
        # Drop what every other engine is ordered after: no later access can depend on it.
        known = min(self.clock[other][engine] for other in OTHERS[engine])
        drop = 0
        while drop < len(recent) and recent[drop][0] <= known:
            drop += 1
        # Still too many (an engine that does not follow this one): fold the oldest half into the arrays.
        if len(recent) - drop >= RECENT:
            self.unpainted[engine].extend(recent[drop:drop + RECENT // 2])
            drop += RECENT // 2
            self.folded[engine] = recent[drop - 1][0]
        del recent[:drop]

    def _paint(self, engine: int) -> None:
        """Write the engine's folded entries not yet in the per-block arrays into them, all at once (few
        lookups reach the arrays, so most folded entries are painted in a few large batches)."""
        entries = self.unpainted[engine]
        if not entries:
            return
        spans = [(seq, first, end, write) for seq, *_, entry_spans in entries for first, end, write in entry_spans]
        seqs, firsts, ends, writes = (np.array(column, dtype=np.int64) for column in zip(*spans, strict=True))
        lengths = ends - firsts
        # Every block of every span, with its span's sequence number: the latest one wins.
        blocks = np.repeat(firsts - np.cumsum(lengths) + lengths, lengths) + np.arange(lengths.sum())
        numbers = np.repeat(seqs, lengths)
        np.maximum.at(self.local_touch[engine], blocks, numbers)
        written = np.repeat(writes.astype(bool), lengths)
        np.maximum.at(self.local_write[engine], blocks[written], numbers[written])
        entries.clear()

    # Emission ---------------------------------------------------------------------------------
    def emit(self, mnemonic: str, **fields) -> Instruction:
        """Append one instruction, its dependencies on other engines added automatically (or, inside
        `recording`, collect it to be appended later)."""
        if "wait" in fields or "signal" in fields:
            raise ValueError("kernels do not set wait/signal: the emitter does")
        instruction = Instruction(mnemonic, **fields)
        if self.recorded is not None:
            self.recorded.append((instruction, self.current_node))
        else:
            self.append(instruction, self.current_node)
        return instruction

    @contextmanager
    def recording(self):
        """Collect the instructions emitted in the block, with their nodes, instead of appending them
        (yields the list): code generation may reorder them before it `append`s them."""
        previous, self.recorded = self.recorded, []
        try:
            yield self.recorded
        finally:
            self.recorded = previous

    def append(self, instruction: Instruction, node: str | None) -> None:
        """Append an instruction made by `emit`, under `node`, with its dependencies."""
        engine = int(instruction.engine)
        clock = self.clock[engine]
        others = OTHERS[engine]
        needed = [0] * ENGINES
        dram_accesses = []  # (slots, write)
        spans = []  # local: (first block, end block, write)
        read_low = write_low = 1 << 62  # the bounding blocks of the local spans read, and of those written
        read_high = write_high = 0
        for memory, start, end, write in footprint(instruction, self.config, BLOCK):
            if memory == DRAM:
                slots = self._dram_slots(start, end)
                dram_accesses.append((slots, write))
                # A write conflicts with any earlier access, a read with earlier writes. Only an access this
                # engine is not yet ordered after can add a dependency: look only when some engine has one.
                if not any(map(operator.gt, self.dram_latest[write], clock)):
                    continue
                table = self.dram_touch if write else self.dram_write
                for slot in slots:
                    seqs = table[slot]
                    for other in others:
                        if seqs[other] > needed[other]:
                            needed[other] = seqs[other]
                continue
            first, end = start // BLOCK, -(-end // BLOCK)
            if end <= first:
                continue  # no block: nothing to order, nothing to record
            if write:
                if first < write_low:
                    write_low = first
                if end > write_high:
                    write_high = end
            elif spans and spans[-1] == (first, end, True):
                continue  # what it writes it may read first (a matmul that accumulates): the write covers that
            else:
                if first < read_low:
                    read_low = first
                if end > read_high:
                    read_high = end
            spans.append((first, end, write))
        access = None
        if spans:
            access = (read_low, read_high, write_low, write_high, spans)
            latest = self.local_latest[write_high > 0]
            for other in others:
                after = clock[other] if clock[other] > needed[other] else needed[other]
                if latest[other] > after:
                    seq = self._local_conflict(other, after, access)
                    if seq:
                        needed[other] = seq
        item = _Item(instruction, engine, node)
        for producer in others:
            if needed[producer] > clock[producer]:  # else not needed, or implied by an earlier wait
                self._order_after(item, engine, producer, needed[producer])
        self.items.append(item)
        by_engine = self.by_engine[engine]
        by_engine.append(len(self.items) - 1)
        seq = len(by_engine)
        clock[engine] = seq
        self.clock_at[engine].append(tuple(clock))
        for slots, write in dram_accesses:
            for slot in slots:
                self.dram_touch[slot][engine] = seq
                if write:
                    self.dram_write[slot][engine] = seq
            self.dram_latest[True][engine] = seq
            if write:
                self.dram_latest[False][engine] = seq
        if access is not None:
            recent = self.recent[engine]
            recent.append((seq, *access))
            if len(recent) >= RECENT:
                self._shorten(engine)
            self.local_latest[True][engine] = seq
            if write_high:
                self.local_latest[False][engine] = seq

    def _order_after(self, item: _Item, engine: int, producer: int, seq: int) -> None:
        """Make `item` (on `engine`) wait for instruction `seq` of `producer`, by a semaphore token."""
        clock = self.clock[engine]
        semaphore = pair_semaphore(producer, engine)
        producer_item = self.items[self.by_engine[producer][seq - 1]]
        if producer_item.signal == 0:
            producer_item.signal = semaphore
        else:
            producer_item.after = (producer_item.after or []) + [_sync(producer, signal=semaphore)]
        if item.wait == 0:
            item.wait = semaphore
        else:
            item.before = (item.before or []) + [_sync(engine, wait=semaphore)]
        clock[:] = map(max, clock, self.clock_at[producer][seq - 1])

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
