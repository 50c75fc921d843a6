"""Hazard check: two engines touching the same memory with nothing ordering them.

Ordering comes only from the program: instructions of one engine are ordered among
themselves, and a `signal` taken by a `wait` orders everything its engine had done before
the signal against everything the waiting engine does after. This is tracked with vector
clocks: each engine knows, per other engine, the last instruction it is ordered after.

Memory is tracked in 4-byte words (the width of a memory bank write): for each word, each
engine's last reading and last writing instruction. An access conflicts with another
engine's earlier access to the same word when at least one of them writes and the
earlier one is not ordered before it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from runtime.machine import Access

WORD = 4


@dataclass(frozen=True)
class Hazard:
    kind: str  # "read after write", "write after read", "write after write"
    memory: str
    address: int
    earlier: int  # instruction indices
    later: int

    def describe(self, disassemble) -> str:
        return (f"{self.kind} hazard on {self.memory} address {self.address:#x}: instruction {self.later} "
                f"({disassemble(self.later)}) is not ordered after instruction {self.earlier} "
                f"({disassemble(self.earlier)})")


class HazardChecker:
    def __init__(self, memory_sizes: dict[str, int], engines: int):
        self.engines = engines
        self.words = {name: -(-size // WORD) for name, size in memory_sizes.items()}
        # shadow[(memory, engine, is_write)] = per-word sequence number (1-based) of the last access
        self.shadow: dict[tuple[str, int, bool], np.ndarray] = {}
        self.instruction_of: list[list[int]] = [[] for _ in range(engines)]  # engine -> seq-1 -> index
        self.hazards: list[Hazard] = []

    def _array(self, memory: str, engine: int, write: bool) -> np.ndarray:
        key = (memory, engine, write)
        if key not in self.shadow:
            self.shadow[key] = np.zeros(self.words[memory], dtype=np.int64)
        return self.shadow[key]

    def record(self, index: int, engine: int, clock: np.ndarray, accesses: list[Access]) -> None:
        """Check the accesses of instruction `index` on `engine` (ordered after `clock`), then record them."""
        self.instruction_of[engine].append(index)
        seq = len(self.instruction_of[engine])
        for access in accesses:
            words = _words(access)
            for other in range(self.engines):
                if other == engine:
                    continue
                checks = [(True, "read after write" if not access.write else "write after write")]
                if access.write:
                    checks.append((False, "write after read"))
                for earlier_write, kind in checks:
                    key = (access.memory, other, earlier_write)
                    if key not in self.shadow:
                        continue
                    seen = self.shadow[key][words]
                    unordered = seen > clock[other]
                    if unordered.any():
                        position = int(np.argmax(seen * unordered))
                        earlier = self.instruction_of[other][int(seen[position]) - 1]
                        self.hazards.append(Hazard(kind, access.memory, int(words[position]) * WORD, earlier, index))
        for access in accesses:
            self._array(access.memory, engine, access.write)[_words(access)] = seq
            if access.write:
                # A write also counts as an access for later write-after-read checks.
                self._array(access.memory, engine, False)[_words(access)] = seq


def _words(access: Access) -> np.ndarray:
    first = access.offsets // WORD
    if access.size <= WORD:
        return np.unique(first) if access.size < WORD else first
    return np.unique(np.concatenate([first + k for k in range(access.size // WORD)]))
