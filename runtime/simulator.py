"""Runs a Program: functional results, cycle timing, counters, hazard check and trace.

Timing model (isa/SPEC.md, "Timing", says the same in prose):

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

The simulation is event driven: among the engines whose next instruction can start, the
earliest start runs first. An instruction's functional effect is applied when it starts;
in a program without hazards that is indistinguishable from applying it over its
duration, and a program where it makes a difference has a hazard (--check-hazards).
Busy cycles: the matrix engine counts cycles it loads weights or streams rows, the
vector engine its instructions' latencies, a DMA engine the cycles its data is on the
DRAM channel.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass, field

import numpy as np

from isa.dtypes import DType
from isa.encoding import Instruction, instruction_latency
from isa.errors import InputError, InternalError, SimulationError
from isa.program import Program, TensorInfo
from isa.spec import Engine
from runtime.hazards import Hazard, HazardChecker
from runtime.machine import DRAM, EXEC, LOCAL, Machine, OperandError

ENGINE_NAMES = [engine.name.lower() for engine in Engine]
ENGINE_COUNT = len(Engine)
ENGINE_RANGE = range(ENGINE_COUNT)
LOAD, MATRIX, VECTOR, STORE = (int(engine) for engine in (Engine.LOAD, Engine.MATRIX, Engine.VECTOR, Engine.STORE))


@dataclass
class Event:
    """One executed instruction on the timeline."""

    index: int
    engine: int
    start: int
    end: int


@dataclass
class RunResult:
    outputs: dict[str, np.ndarray]
    stats: dict
    events: list[Event] = field(default_factory=list)
    hazards: list[Hazard] = field(default_factory=list)
    tensors: dict[str, np.ndarray] = field(default_factory=dict)  # debug tensors, with keep_tensors


class _MatrixPipeline:
    """Timing state of the systolic array (see the module docstring)."""

    def __init__(self, config):
        self.config = config
        self.stream_free = 0  # when the array can accept the next activation row
        self.drained = 0  # when every issued matmul has written its results
        self.weights_ready = 0  # when the newest load_weights has finished shifting in
        self.new_weights = False  # a load_weights not yet used by a matmul
        self.shadow_free = 0  # double buffering: when the shadow registers may be overwritten
        self.loader_free = 0

    def start(self, instruction: Instruction, earliest: int) -> int:
        if instruction.mnemonic == "load_weights":
            if self.config.weight_double_buffer:
                return max(earliest, self.shadow_free, self.loader_free)
            return max(earliest, self.drained, self.loader_free)
        if instruction.mnemonic == "matmul":
            return max(earliest, self.stream_free, self.weights_ready if self.new_weights else 0)
        return max(earliest, self.drained, self.loader_free)  # sync: a fence

    def issue(self, instruction: Instruction, start: int, latency: int) -> tuple[int, int]:
        """Record the instruction; returns (end, busy cycles)."""
        end = start + latency
        if instruction.mnemonic == "load_weights":
            self.loader_free = self.weights_ready = end
            self.new_weights = True
            return end, latency
        if instruction.mnemonic == "matmul":
            streaming = instruction["m"] * self.config.row_cycles(instruction["dtype"])
            if self.new_weights:
                self.shadow_free = start  # the shadow weights became active: the next load may begin
                self.new_weights = False
            self.stream_free = start + streaming
            self.drained = max(self.drained, end)
            return end, streaming
        return end, latency


def _disassemble(program: Program, index: int) -> str:
    from isa.assembly import disassemble_instruction

    return disassemble_instruction(program.instructions[index])


def prepare_inputs(program: Program, inputs: dict[str, np.ndarray] | None, seed: int = 0) -> dict[str, np.ndarray]:
    """Check user inputs against the I/O table, or make seeded random ones when none are given."""
    if inputs is None:
        rng = np.random.default_rng(seed)
        made = {}
        for t in program.inputs:
            if t.dtype.is_float:
                made[t.name] = rng.standard_normal(t.shape).astype(t.dtype.numpy)
            else:
                low, high = {DType.I8: (-128, 127), DType.U8: (0, 255), DType.I32: (-1000, 1000)}[t.dtype]
                made[t.name] = rng.integers(low, high, size=t.shape, endpoint=True).astype(t.dtype.numpy)
        return made
    expected = {t.name: t for t in program.inputs}
    for name in inputs:
        if name not in expected:
            raise InputError(f"unknown input '{name}' (the program's inputs: {', '.join(expected) or 'none'})")
    checked = {}
    for name, t in expected.items():
        if name not in inputs:
            raise InputError(f"missing input '{name}' ({_describe(t)})")
        value = np.asarray(inputs[name])
        if tuple(value.shape) != t.shape:
            raise InputError(f"input '{name}' has shape {tuple(value.shape)}, expected {t.shape}")
        if value.dtype != t.dtype.numpy and not (t.dtype is DType.BF16 and value.dtype == np.float32):
            raise InputError(f"input '{name}' has dtype {value.dtype}, expected {t.dtype.numpy}")
        checked[name] = value.astype(t.dtype.numpy)
    return checked


def _describe(t: TensorInfo) -> str:
    return f"shape {t.shape}, dtype {t.dtype.numpy}"


def program_latencies(program: Program) -> list[int]:
    """Every instruction's latency by the ISA table (evaluated once per distinct instruction)."""
    by_fields: dict = {}
    latencies = []
    for instruction in program.instructions:
        key = (instruction.mnemonic, tuple(instruction.fields.values()))
        if key not in by_fields:
            by_fields[key] = instruction_latency(instruction, program.config)
        latencies.append(by_fields[key])
    return latencies


def roofline_cycles(config, macs_by_dtype: dict[DType, int], dram_bytes: int) -> float:
    compute = sum(macs / config.peak_macs_per_cycle(dtype) for dtype, macs in macs_by_dtype.items())
    return max(compute, dram_bytes / config.dram_bytes_per_cycle)


def run(program: Program, inputs: dict[str, np.ndarray] | None = None, *, check_hazards: bool = False,
        keep_events: bool = False, keep_tensors: bool = False) -> RunResult:
    """Simulate `program` on `inputs` (name -> array; None: seeded random inputs).

    keep_tensors: also return the program's debug tensors (intermediate values) as they are
    in DRAM at the end of the run."""
    config = program.config
    inputs = prepare_inputs(program, inputs)
    machine = Machine(config, program.dram_bytes)
    for constant in program.constants:
        machine.dram[constant.dram:constant.dram + len(constant.data)] = np.frombuffer(constant.data, np.uint8)
    for t in program.inputs:
        machine.dram[t.dram:t.dram + t.nbytes] = np.ascontiguousarray(inputs[t.name]).view(np.uint8).reshape(-1)

    latencies = program_latencies(program)
    instructions = program.instructions
    queues: list[list[int]] = [[] for _ in Engine]
    for index, instruction in enumerate(instructions):
        if instruction.mnemonic == "end":
            break
        queues[int(instruction.engine)].append(index)
    # Per instruction, what the loop needs, read once.
    waits = [i.fields["wait"] for i in instructions]
    signals = [i.fields["signal"] for i in instructions]
    is_sync = [i.definition.mnemonic == "sync" for i in instructions]
    executors = [EXEC[i.definition.mnemonic] for i in instructions]

    checker = HazardChecker({DRAM: machine.dram.size, LOCAL: machine.local.size}, len(Engine)) \
        if check_hazards else None
    clocks = np.zeros((len(Engine), len(Engine)), dtype=np.int64)  # vector clocks, per engine
    done_count = [0] * len(Engine)
    tokens: dict[int, list] = {}  # semaphore -> heap of (time, order, clock)
    order = 0
    positions = [0] * len(Engine)  # position of each engine's next instruction in its queue
    heads = [queue[0] if queue else -1 for queue in queues]  # index of each engine's next instruction, -1: none
    next_issue = [0] * len(Engine)  # in-order issue per engine
    completed = [0] * len(Engine)  # latest completion per engine (signals wait for it)
    busy = [0] * len(Engine)  # cycles in the union of each engine's busy intervals
    busy_until = [0] * len(Engine)
    dram_channel_free = 0
    matrix = _MatrixPipeline(config)
    macs: dict[DType, int] = {}
    dram_read = dram_written = 0
    events: list[Event] = []
    total = 0
    dma_latency = config.dma_latency

    def earliest_start(engine: int):
        """When the engine's next instruction can start, or None while it waits for a token."""
        index = heads[engine]
        earliest = next_issue[engine]
        wait = waits[index]
        if wait:
            heap = tokens.get(wait)
            if not heap:
                return None
            if heap[0][0] > earliest:
                earliest = heap[0][0]
        if engine == MATRIX:
            return matrix.start(instructions[index], earliest)
        if is_sync[index]:
            return max(earliest, completed[engine])
        return earliest

    # Each engine's candidate start is cached; it changes only when that engine runs an
    # instruction or a token of the semaphore its next instruction waits on comes or goes.
    unknown = object()
    candidates = [unknown] * ENGINE_COUNT

    def forget_waiters(semaphore: int) -> None:
        for other in ENGINE_RANGE:
            if heads[other] >= 0 and waits[heads[other]] == semaphore:
                candidates[other] = unknown

    while True:
        best = None
        engine = -1
        for candidate_engine in ENGINE_RANGE:
            if heads[candidate_engine] >= 0:
                start = candidates[candidate_engine]
                if start is unknown:
                    start = candidates[candidate_engine] = earliest_start(candidate_engine)
                if start is not None and (best is None or start < best):
                    best, engine = start, candidate_engine
        if best is None:
            blocked = [heads[e] for e in ENGINE_RANGE if heads[e] >= 0]
            if not blocked:
                break
            index = blocked[0]
            raise SimulationError(
                f"deadlock: waits on semaphore {waits[index]}, which no running instruction will signal",
                index, _disassemble(program, index))
        start = best
        index = heads[engine]
        positions[engine] += 1
        queue = queues[engine]
        heads[engine] = queue[positions[engine]] if positions[engine] < len(queue) else -1
        candidates[engine] = unknown
        wait = waits[index]
        if wait:
            _, _, token_clock = heapq.heappop(tokens[wait])
            if checker is not None:  # vector clocks serve only the hazard check
                np.maximum(clocks[engine], token_clock, out=clocks[engine])
            forget_waiters(wait)
        instruction = instructions[index]
        try:
            effects = executors[index](machine, instruction)
        except OperandError as err:
            raise SimulationError(str(err), index, _disassemble(program, index)) from None
        latency = latencies[index]
        if (engine == LOAD or engine == STORE) and not is_sync[index]:
            transfer_start = start + dma_latency
            if dram_channel_free > transfer_start:
                transfer_start = dram_channel_free
            end = transfer_start + latency - dma_latency
            dram_channel_free = end
            next_issue[engine] = start + 1
            busy_from, engine_busy = transfer_start, end - transfer_start  # cycles its data is on the channel
        elif engine == MATRIX:
            end, engine_busy = matrix.issue(instruction, start, latency)
            busy_from = start
            next_issue[engine] = start
        else:
            end = start + latency
            busy_from, engine_busy = start, latency
            next_issue[engine] = end
        busy_end = busy_from + engine_busy
        if busy_end > busy_until[engine]:
            busy[engine] += busy_end - max(busy_from, busy_until[engine])
            busy_until[engine] = busy_end
        if end > completed[engine]:
            completed[engine] = end
        done_count[engine] += 1
        if checker is not None:
            clocks[engine][engine] = done_count[engine]
            checker.record(index, engine, clocks[engine], effects.accesses)
        signal = signals[index]
        if signal:
            order += 1
            token_clock = clocks[engine].copy() if checker is not None else None
            heapq.heappush(tokens.setdefault(signal, []), (completed[engine], order, token_clock))
            forget_waiters(signal)
        if effects.macs:
            macs[effects.macs_dtype] = macs.get(effects.macs_dtype, 0) + effects.macs
        dram_read += effects.dram_read
        dram_written += effects.dram_written
        if end > total:
            total = end
        if keep_events:
            events.append(Event(index, engine, start, end))

    macs_total = sum(macs.values())
    roofline = roofline_cycles(config, macs, dram_read + dram_written)
    if total < roofline - 1e-6:
        raise InternalError(f"simulated {total} cycles, below the roofline bound {roofline:.0f}")
    outputs = {t.name: _read_tensor(machine, t) for t in program.outputs}
    stats = {
        "config": config.name,
        "cycles": total,
        "roofline_cycles": roofline,
        "roofline_efficiency": roofline / total if total else 1.0,
        "macs": macs_total,
        "macs_by_dtype": {d.asm_name: n for d, n in sorted(macs.items())},
        "dram_bytes_read": dram_read,
        "dram_bytes_written": dram_written,
        "engines": {ENGINE_NAMES[e]: busy[e] for e in Engine},
        "utilization": {ENGINE_NAMES[e]: (busy[e] / total if total else 0.0) for e in Engine},
        "instructions": sum(done_count),
        "time_us": total / config.clock_mhz,
        "host_steps": list(program.host_steps),
    }
    if checker is not None:
        stats["hazards"] = len(checker.hazards)
    tensors = {t.name: _read_tensor(machine, t) for t in program.debug_tensors} if keep_tensors else {}
    return RunResult(outputs, stats, events, checker.hazards if checker else [], tensors)


def _read_tensor(machine: Machine, t: TensorInfo) -> np.ndarray:
    return machine.dram[t.dram:t.dram + t.nbytes].view(t.dtype.numpy).reshape(t.shape).copy()
