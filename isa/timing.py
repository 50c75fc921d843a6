"""The accelerator's timing: when each instruction of a program starts and ends.

One definition, used by the simulator (which applies each instruction's effect as it
starts) and by the compiler's cost model (which times a layer's instructions alone).
isa/SPEC.md, "Timing", says the same in prose:

- Instructions are dispatched in program order to four in-order queues (load, matrix,
  vector, store). An instruction with `wait=s` starts only when semaphore s holds a token,
  and takes it; `signal=s` gives a token when the instruction and every earlier
  instruction of its engine have completed. The first `end` stops dispatch.
- load/store: a DMA issues at most one per cycle per engine; after `dma_latency` its data
  moves over the one DRAM channel that both engines share, `transfer` cycles long, in
  issue order. So DMAs pipeline but the channel never carries more than
  `dram_bytes_per_cycle`.
- matrix: a weight-stationary array. `load_weights` shifts k rows in (k * row_cycles);
  `matmul` streams m rows (m * row_cycles) and its results finish array_rows +
  array_cols - 2 cycles later (skew and drain). With weight_double_buffer the next tile's
  weights shift into shadow registers while the current tile streams, and a matmul may
  start as soon as the previous one's last row has entered; without it, a load_weights
  waits for the previous matmul to drain.
- vector: one instruction at a time, `vector_latency + rows * ceil(cols / lanes) * cost`.

Among the engines whose next instruction can start, the earliest start goes first (ties:
the lower engine number). Busy cycles: the matrix engine counts cycles it loads weights
or streams rows, the vector engine its instructions' latencies, a DMA engine the cycles
its data is on the DRAM channel.
"""

from __future__ import annotations

import heapq
from collections import Counter
from collections.abc import Iterator, Sequence

from isa.config import AcceleratorConfig
from isa.encoding import Instruction, instruction_latencies
from isa.errors import SimulationError
from isa.spec import Engine

ENGINE_COUNT = len(Engine)
MATRIX, VECTOR = int(Engine.MATRIX), int(Engine.VECTOR)

# The kinds of matrix-engine instruction (see the module docstring).
_LOAD_WEIGHTS, _MATMUL, _FENCE = 0, 1, 2
_MATRIX_KINDS = {"load_weights": _LOAD_WEIGHTS, "matmul": _MATMUL}
NO_TOKEN = -1


class Timeline:
    """The schedule of `instructions` on `config`'s engines. Iterating yields, in the order the
    instructions start, (index, engine, start, end, token): token is the index of the
    instruction whose signal the instruction's wait took (NO_TOKEN without a wait, or for a
    token that was there before). After the iteration: `cycles` (the last end) and `busy`
    (per engine, cycles in the union of its busy intervals).

    tokens_given: tokens that are there at cycle 0 — for timing part of a program alone
    (a layer), whose first waits take tokens that earlier parts gave."""

    def __init__(self, instructions: Sequence[Instruction], config: AcceleratorConfig,
                 tokens_given: dict[int, int] | None = None):
        self.instructions = instructions
        self.config = config
        self.tokens_given = tokens_given or {}
        self.cycles = 0
        self.busy = [0] * ENGINE_COUNT

    def __iter__(self) -> Iterator[tuple[int, int, int, int, int]]:
        config = self.config
        instructions = self.instructions
        latencies = instruction_latencies(instructions, config)
        # Per instruction, what the loop needs, read once (up to the first `end`, where dispatch stops).
        waits: list[int] = []
        signals: list[int] = []
        syncs: list[bool] = []
        queues: list[list[int]] = [[] for _ in Engine]
        matrix_kind: dict[int, int] = {}
        streaming: dict[int, int] = {}  # a matmul's streaming cycles
        row_cycles: dict = {}
        for index, instruction in enumerate(instructions):
            definition = instruction.definition
            mnemonic = definition.mnemonic
            if mnemonic == "end":
                break
            fields = instruction.fields
            waits.append(fields["wait"])
            signals.append(fields["signal"])
            syncs.append(mnemonic == "sync")
            engine = definition.engine
            engine = int(engine if engine is not None else instruction.engine)
            queues[engine].append(index)
            if engine == MATRIX:
                kind = matrix_kind[index] = _MATRIX_KINDS.get(mnemonic, _FENCE)
                if kind == _MATMUL:
                    dtype = fields["dtype"]
                    if dtype not in row_cycles:
                        row_cycles[dtype] = config.row_cycles(dtype)
                    streaming[index] = fields["m"] * row_cycles[dtype]

        # semaphore -> heap of (time, order, signalling instruction)
        tokens: dict[int, list] = {s: [(0, -n, NO_TOKEN) for n in range(count, 0, -1)]
                                   for s, count in self.tokens_given.items()}
        order = 0
        positions = [0] * ENGINE_COUNT  # position of each engine's next instruction in its queue
        heads = [queue[0] if queue else -1 for queue in queues]  # each engine's next instruction, -1: none
        next_issue = [0] * ENGINE_COUNT  # in-order issue per engine
        completed = [0] * ENGINE_COUNT  # latest completion per engine (signals wait for it)
        busy = self.busy
        busy_until = [0] * ENGINE_COUNT
        dram_channel_free = 0
        total = 0
        dma_latency = config.dma_latency
        # The systolic array's timing state (see the module docstring).
        double_buffer = config.weight_double_buffer
        stream_free = 0  # when the array can accept the next activation row
        drained = 0  # when every issued matmul has written its results
        weights_ready = 0  # when the newest load_weights has finished shifting in
        new_weights = False  # a load_weights not yet used by a matmul
        shadow_free = 0  # double buffering: when the shadow registers may be overwritten
        loader_free = 0

        # Each engine's candidate start is cached; it changes only when that engine runs an
        # instruction or a token of the semaphore its next instruction waits on comes or goes.
        unknown = -1
        candidates = [unknown] * ENGINE_COUNT  # start time, None while waiting for a token, or unknown
        engines = range(ENGINE_COUNT)
        matrix_engine, vector_engine = MATRIX, VECTOR
        heappop, heappush = heapq.heappop, heapq.heappush

        while True:
            best = None
            engine = -1
            for candidate_engine in engines:
                index = heads[candidate_engine]
                if index < 0:
                    continue
                start = candidates[candidate_engine]
                if start == unknown:
                    # When the engine's next instruction can start, or None while it waits for a token.
                    start = next_issue[candidate_engine]
                    wait = waits[index]
                    if wait:
                        heap = tokens.get(wait)
                        if not heap:
                            candidates[candidate_engine] = None
                            continue
                        if heap[0][0] > start:
                            start = heap[0][0]
                    if candidate_engine == matrix_engine:
                        kind = matrix_kind[index]
                        if kind == _MATMUL:
                            if stream_free > start:
                                start = stream_free
                            if new_weights and weights_ready > start:
                                start = weights_ready
                        else:  # load_weights waits for its registers; a fence for everything
                            ready = shadow_free if kind == _LOAD_WEIGHTS and double_buffer else drained
                            if ready > start:
                                start = ready
                            if loader_free > start:
                                start = loader_free
                    elif syncs[index] and completed[candidate_engine] > start:
                        start = completed[candidate_engine]
                    candidates[candidate_engine] = start
                elif start is None:
                    continue
                if best is None or start < best:
                    best, engine = start, candidate_engine
            if best is None:
                blocked = [heads[e] for e in engines if heads[e] >= 0]
                if not blocked:
                    break
                index = blocked[0]
                from isa.assembly import disassemble_instruction

                raise SimulationError(
                    f"deadlock: waits on semaphore {waits[index]}, which no running instruction will signal",
                    index, disassemble_instruction(instructions[index]))
            start = best
            index = heads[engine]
            position = positions[engine] = positions[engine] + 1
            queue = queues[engine]
            heads[engine] = queue[position] if position < len(queue) else -1
            candidates[engine] = unknown
            wait = waits[index]
            token = NO_TOKEN
            if wait:
                token = heappop(tokens[wait])[2]
                for other in engines:  # the engines waiting on this semaphore see one token fewer
                    if heads[other] >= 0 and waits[heads[other]] == wait:
                        candidates[other] = unknown
            latency = latencies[index]
            if engine == matrix_engine:
                end = start + latency
                kind = matrix_kind[index]
                if kind == _LOAD_WEIGHTS:
                    loader_free = weights_ready = end
                    new_weights = True
                    engine_busy = latency
                elif kind == _MATMUL:
                    engine_busy = streaming[index]
                    if new_weights:
                        shadow_free = start  # the shadow weights became active: the next load may begin
                        new_weights = False
                    stream_free = start + engine_busy
                    if end > drained:
                        drained = end
                else:
                    engine_busy = latency
                busy_from = start
                next_issue[engine] = start
            elif engine == vector_engine or syncs[index]:
                end = start + latency
                busy_from, engine_busy = start, latency
                next_issue[engine] = end
            else:  # load/store
                transfer_start = start + dma_latency
                if dram_channel_free > transfer_start:
                    transfer_start = dram_channel_free
                end = transfer_start + latency - dma_latency
                dram_channel_free = end
                next_issue[engine] = start + 1
                busy_from, engine_busy = transfer_start, end - transfer_start  # cycles its data is on the channel
            busy_end = busy_from + engine_busy
            if busy_end > busy_until[engine]:
                busy[engine] += busy_end - (busy_from if busy_from > busy_until[engine] else busy_until[engine])
                busy_until[engine] = busy_end
            if end > completed[engine]:
                completed[engine] = end
            signal = signals[index]
            if signal:
                order += 1
                heappush(tokens.setdefault(signal, []), (completed[engine], order, index))
                for other in engines:  # the engines waiting on this semaphore see a new token
                    if heads[other] >= 0 and waits[heads[other]] == signal:
                        candidates[other] = unknown
            if end > total:
                total = end
            yield index, engine, start, end, token
        self.cycles = total


def parts_alone(instructions: Sequence[Instruction], config: AcceleratorConfig,
                parts: Sequence[tuple[int, int]]) -> Iterator[tuple[int, Timeline]]:
    """Timelines of parts [start, end) of a program, each alone, as if everything before it had
    finished (a wait in the part that takes the token of a signal before it finds the token
    there): (part's number, its timeline, to iterate; indices from the part's start), by start."""
    outstanding: Counter = Counter()  # semaphore -> tokens given and not yet taken before `position`
    position = 0
    for number in sorted(range(len(parts)), key=lambda n: parts[n][0]):
        start, end = parts[number]
        for instruction in instructions[position:start]:
            fields = instruction.fields
            outstanding[fields["signal"]] += 1
            outstanding[fields["wait"]] -= 1
        position = start
        yield number, Timeline(instructions[start:end], config, {s: n for s, n in outstanding.items() if s and n > 0})
