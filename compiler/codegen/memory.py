"""The DRAM plan: where activations live, when their space is free again, and where constants go.

DRAM holds two regions. Activations (model inputs and outputs, every intermediate value and
the scratch kernels allocate inside a node) come first, from a `DramAllocator`; constants
(weights and the tables kernels derive from them) follow them. Constants are made while
kernels run, before the activations' size is known, so they are placed at
`CONSTANTS_BASE` and moved down by `relocate_constants` once code generation is done:
the emitter sees one consistent address space, and the program a dense one.

With reuse on, `Lifetimes` says after which node each activation's space is free (ops
that alias their input share its region, which is free only when every alias is dead),
and the allocator places later values in that space; kernels' scratch is freed when
their node ends. The emitter tracks DRAM per address range, so a value placed where a
dead one was waits for the last access to the old one (compiler/codegen/emitter.py).
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass

from compiler.ir import Graph
from isa.encoding import Instruction
from isa.program import Constant

DRAM_ALIGN = 64
# Constants are placed here while code is generated, then moved to just after the activations.
# Half the 32-bit DRAM address: each region can grow to 2 GiB.
CONSTANTS_BASE = 1 << 31


def aligned(address: int) -> int:
    return -(-address // DRAM_ALIGN) * DRAM_ALIGN


class DramAllocator:
    """First-fit allocation of [0, limit) in DRAM_ALIGN-aligned blocks, with a free list that
    coalesces neighbours.

    Free space is a sorted list of disjoint [start, end) holes; the last one always reaches
    `limit`. `allocate` takes the lowest hole the request fits in, `free` gives a block back
    and merges it with the holes on either side, so the footprint (`end`, the highest address
    ever used) stays close to `peak_live` (the most bytes live at once). Without frees it is
    a bump allocator.
    """

    def __init__(self, limit: int):
        self.limit = limit
        self.starts: list[int] = [0]
        self.ends: list[int] = [limit]
        self.sizes: dict[int, int] = {}  # live block address -> aligned size
        self.live = 0
        self.peak_live = 0
        self.end = 0
        self.history: list[tuple[int, int]] = []  # every block handed out, in order

    def allocate(self, nbytes: int) -> int:
        size = aligned(max(nbytes, 1))
        index = next((i for i, (start, end) in enumerate(zip(self.starts, self.ends, strict=True))
                      if end - start >= size), None)
        if index is None:
            raise MemoryError(f"the model's activations need more than {self.limit} bytes of DRAM")
        start, end = self.starts[index], self.ends[index]
        if end - start == size:
            del self.starts[index], self.ends[index]
        else:
            self.starts[index] = start + size
        self.sizes[start] = size
        self.live += size
        self.peak_live = max(self.peak_live, self.live)
        self.end = max(self.end, start + size)
        self.history.append((start, start + size))
        return start

    def free(self, address: int) -> None:
        size = self.sizes.pop(address)
        self.live -= size
        start, end = address, address + size
        index = bisect.bisect_left(self.starts, start)
        if index < len(self.starts) and self.starts[index] == end:  # merge with the hole after
            end = self.ends[index]
            del self.starts[index], self.ends[index]
        if index > 0 and self.ends[index - 1] == start:  # and with the hole before
            self.ends[index - 1] = end
        else:
            self.starts.insert(index, start)
            self.ends.insert(index, end)

    def overwritten(self) -> list[bool]:
        """For each block of `history`: whether a block handed out after it overlaps it (so
        what was written there may not survive to the end of the program)."""
        result = [False] * len(self.history)
        starts: list[int] = []  # the union of the later blocks, as sorted disjoint ranges
        ends: list[int] = []
        for index in range(len(self.history) - 1, -1, -1):
            start, end = self.history[index]
            first = bisect.bisect_right(ends, start)  # the first later range ending after `start`
            result[index] = first < len(starts) and starts[first] < end
            last = bisect.bisect_left(starts, end + 1)  # ranges touching [start, end] merge with it
            if first < last:
                start, end = min(start, starts[first]), max(end, ends[last - 1])
            starts[first:last], ends[first:last] = [start], [end]
        return result


@dataclass
class Lifetimes:
    """Which activation regions die after each node.

    A region is named by its root value: a model input or a node output that owns its
    DRAM; an output of an op in `aliases` shares its input's region. A region is live from
    its producer (model inputs: from the start) to the last node that reads any of its
    aliases; model outputs, and the inputs named in `live_to_end` (state, which the program
    updates in place: compiler/state.py), live to the end. Constants are not activations
    and never die.
    """

    root: dict[str, str]  # value -> the value whose region it uses
    dies_after: list[list[str]]  # node index -> roots whose region is free once it has run

    @staticmethod
    def of(graph: Graph, aliases: set[str], live_to_end: frozenset[str] | set[str] = frozenset()) -> Lifetimes:
        root: dict[str, str] = {name: name for name in graph.inputs}
        last: dict[str, int] = {name: -1 for name in graph.inputs}
        never = len(graph.nodes)
        for index, node in enumerate(graph.nodes):
            for name in node.inputs:
                if name in root:
                    last[root[name]] = max(last[root[name]], index)
            outputs = [name for name in node.outputs if name]
            if node.op in aliases:
                if node.inputs[0] in root:  # not a constant
                    root[outputs[0]] = root[node.inputs[0]]
                continue
            for name in outputs:
                if name not in root and not graph.values[name].is_const:
                    root[name] = name
                    last[name] = index  # an output nobody reads dies with its node
        for name in [*graph.outputs, *live_to_end]:
            if name in root:
                last[root[name]] = never
        dies_after: list[list[str]] = [[] for _ in graph.nodes]
        for name, index in last.items():
            if 0 <= index < never:
                dies_after[index].append(name)
            elif index < 0 and graph.nodes:  # a model input nobody reads
                dies_after[0].append(name)
        return Lifetimes(root, dies_after)


def relocate_constants(instructions: list[Instruction], constants: list[Constant], start: int,
                       ) -> tuple[list[Instruction], list[Constant]]:
    """Move what was placed at CONSTANTS_BASE to `start`: every DRAM address at or above the
    base (a DMA's `dram` field, a constant's address) moves down by the same amount."""
    shift = CONSTANTS_BASE - start
    moved = [i.replaced(dram=i.fields["dram"] - shift) if i.fields.get("dram", 0) >= CONSTANTS_BASE else i
             for i in instructions]
    return moved, [Constant(c.dram - shift, c.data, c.name) for c in constants]
