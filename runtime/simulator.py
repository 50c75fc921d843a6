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
from isa.encoding import instruction_latencies
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


# The kinds of matrix-engine instruction, for its timing (see the module docstring).
_LOAD_WEIGHTS, _MATMUL, _FENCE = 0, 1, 2
_MATRIX_KINDS = {"load_weights": _LOAD_WEIGHTS, "matmul": _MATMUL}


def _disassemble(program: Program, index: int) -> str:
    from isa.assembly import disassemble_instruction

    return disassemble_instruction(program.instructions[index])


def prepare_inputs(program: Program, inputs: dict[str, np.ndarray] | None, seed: int = 0,
                   resident: frozenset[str] | set[str] = frozenset()) -> dict[str, np.ndarray]:
    """Check user inputs against the I/O table, or make seeded random ones when none are given.
    Inputs named in `resident` (state already in the device's DRAM) may be left out, and are not made."""
    if inputs is None:
        rng = np.random.default_rng(seed)
        made = {}
        for t in program.inputs:
            if t.name in resident:
                continue
            if t.dtype.is_float:
                made[t.name] = rng.standard_normal(t.shape).astype(t.dtype.numpy)
            else:
                # i64 and bool inputs are mostly indices, token ids and masks: 0 and 1 index any axis.
                low, high = {DType.I8: (-128, 127), DType.U8: (0, 255), DType.I32: (-1000, 1000), DType.I64: (0, 1),
                             DType.BOOL: (0, 1)}.get(t.dtype, (0, 1))
                made[t.name] = rng.integers(low, high, size=t.shape, endpoint=True).astype(t.dtype.numpy)
        return made
    expected = {t.name: t for t in program.inputs}
    for name in inputs:
        if name not in expected:
            raise InputError(f"unknown input '{name}' (the program's inputs: {', '.join(expected) or 'none'})")
    checked = {}
    for name, t in expected.items():
        if name not in inputs and name in resident:
            continue
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


def load_program(machine: Machine, program: Program) -> None:
    """Put `program` on `machine`: DRAM large enough for it (what it holds is kept) and its constants written."""
    machine.reserve_dram(program.dram_bytes)
    for constant in program.constants:
        machine.dram[constant.dram:constant.dram + len(constant.data)] = np.frombuffer(constant.data, np.uint8)
    machine.loaded = program


def roofline_cycles(config, macs_by_dtype: dict[DType, int], dram_bytes: int) -> float:
    compute = sum(macs / config.peak_macs_per_cycle(dtype) for dtype, macs in macs_by_dtype.items())
    return max(compute, dram_bytes / config.dram_bytes_per_cycle)


def run(program: Program, inputs: dict[str, np.ndarray] | None = None, *, check_hazards: bool = False,
        keep_events: bool = False, keep_tensors: bool = False, machine: Machine | None = None) -> RunResult:
    """Simulate `program` on `inputs` (name -> array; None: seeded random inputs).

    keep_tensors: also return the program's debug tensors (intermediate values) as they are
    in DRAM at the end of the run.

    machine: run on this device, whose DRAM persists across runs, instead of a fresh one. The
    program's constants are written when it is loaded onto the machine (when it is not the
    program that ran there last); its state inputs (Program.state) are not written from the
    host unless `inputs` gives them: they hold what the last run left there (zeros on a new
    machine); every other input is written as usual. Local memory starts clear, as in a
    fresh run."""
    config = program.config
    if machine is None:
        inputs = prepare_inputs(program, inputs)
        machine = Machine(config, program.dram_bytes)
        load_program(machine, program)
    else:
        inputs = prepare_inputs(program, inputs, resident={name for _, name in program.state})
        if machine.config != config:
            raise InputError(f"the program is built for config '{config.name}', the machine is "
                             f"'{machine.config.name}'")
        if machine.loaded is not program:
            load_program(machine, program)
        machine.clear_chip()
    for t in program.inputs:
        if t.name in inputs:
            machine.dram[t.dram:t.dram + t.nbytes] = np.ascontiguousarray(inputs[t.name]).view(np.uint8).reshape(-1)

    latencies = instruction_latencies(program.instructions, config)
    instructions = program.instructions
    # Per instruction, what the loop needs, read once (up to the first `end`, where dispatch stops).
    waits = [i.fields["wait"] for i in instructions]
    queues: list[list[int]] = [[] for _ in Engine]
    plan: list[tuple] = []  # per instruction: (signal, is_sync, executor, latency)
    # The matrix engine's instructions: what kind (below), and a matmul's streaming cycles.
    matrix_kind: dict[int, int] = {}
    streaming: dict[int, int] = {}
    row_cycles: dict = {}
    for index, instruction in enumerate(instructions):
        definition = instruction.definition
        mnemonic = definition.mnemonic
        if mnemonic == "end":
            break
        fields = instruction.fields
        engine = definition.engine
        engine = int(engine if engine is not None else instruction.engine)
        queues[engine].append(index)
        plan.append((fields["signal"], mnemonic == "sync", EXEC[mnemonic], latencies[index]))
        if engine == MATRIX:
            kind = matrix_kind[index] = _MATRIX_KINDS.get(mnemonic, _FENCE)
            if kind == _MATMUL:
                dtype = fields["dtype"]
                if dtype not in row_cycles:
                    row_cycles[dtype] = config.row_cycles(dtype)
                streaming[index] = fields["m"] * row_cycles[dtype]

    # Per source node (model.bin's debug ranges): first start, last end, MACs, compute-bound cycles, DRAM bytes.
    layer_names = [entry.node for entry in program.debug]
    layer_of = [-1] * len(plan)
    for number, entry in enumerate(program.debug):
        for index in range(entry.start, min(entry.end, len(plan))):
            layer_of[index] = number
    layer_start = [None] * len(layer_names)
    layer_end = [0] * len(layer_names)
    layer_macs = [0] * len(layer_names)
    layer_compute = [0.0] * len(layer_names)
    layer_bytes = [0] * len(layer_names)
    peak = {dtype: config.peak_macs_per_cycle(dtype) for dtype in (DType.I8, DType.U8, DType.BF16, DType.F32)}

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
    macs: dict[DType, int] = {}
    dram_read = dram_written = 0
    events: list[Event] = []
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
    engines = ENGINE_RANGE
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
                elif plan[index][1] and completed[candidate_engine] > start:
                    start = completed[candidate_engine]
                candidates[candidate_engine] = start
            elif start is None:
                continue
            if best is None or start < best:
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
        position = positions[engine] = positions[engine] + 1
        queue = queues[engine]
        heads[engine] = queue[position] if position < len(queue) else -1
        candidates[engine] = unknown
        wait = waits[index]
        if wait:
            _, _, token_clock = heappop(tokens[wait])
            if checker is not None:  # vector clocks serve only the hazard check
                np.maximum(clocks[engine], token_clock, out=clocks[engine])
            for other in engines:  # the engines waiting on this semaphore see one token fewer
                if heads[other] >= 0 and waits[heads[other]] == wait:
                    candidates[other] = unknown
        signal, sync, executor, latency = plan[index]
        try:
            effects = executor(machine, instructions[index])
        except OperandError as err:
            raise SimulationError(str(err), index, _disassemble(program, index)) from None
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
        elif engine == vector_engine or sync:
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
        done_count[engine] += 1
        if checker is not None:
            clocks[engine][engine] = done_count[engine]
            checker.record(index, engine, clocks[engine], effects.accesses)
        if signal:
            order += 1
            token_clock = clocks[engine].copy() if checker is not None else None
            heappush(tokens.setdefault(signal, []), (completed[engine], order, token_clock))
            for other in engines:  # the engines waiting on this semaphore see a new token
                if heads[other] >= 0 and waits[heads[other]] == signal:
                    candidates[other] = unknown
        if effects.macs:
            macs[effects.macs_dtype] = macs.get(effects.macs_dtype, 0) + effects.macs
        dram_read += effects.dram_read
        dram_written += effects.dram_written
        layer = layer_of[index]
        if layer >= 0:
            if layer_start[layer] is None:
                layer_start[layer] = start
            if end > layer_end[layer]:
                layer_end[layer] = end
            if effects.macs:
                layer_macs[layer] += effects.macs
                layer_compute[layer] += effects.macs / peak[effects.macs_dtype]
            layer_bytes[layer] += effects.dram_read + effects.dram_written
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
        "dram_size": program.dram_bytes,
        "activation_bytes": program.activation_bytes,
        "engines": {ENGINE_NAMES[e]: busy[e] for e in Engine},
        "utilization": {ENGINE_NAMES[e]: (busy[e] / total if total else 0.0) for e in Engine},
        "instructions": sum(done_count),
        "time_us": total / config.clock_mhz,
        "host_steps": list(program.host_steps),
        "state": [list(pair) for pair in program.state],
        "layers": [_layer_stats(config, name, first, last, layer_macs[n], layer_compute[n], layer_bytes[n])
                   for n, (name, first, last) in enumerate(zip(layer_names, layer_start, layer_end, strict=True))
                   if first is not None],
    }
    if checker is not None:
        stats["hazards"] = len(checker.hazards)
    tensors = {t.name: _read_tensor(machine, t) for t in program.debug_tensors} if keep_tensors else {}
    return RunResult(outputs, stats, events, checker.hazards if checker else [], tensors)


def _layer_stats(config, node: str, first: int, last: int, layer_macs: int, compute: float, nbytes: int) -> dict:
    """One source node's figures: its instructions ran from `first` to `last` (layers overlap when
    the engines pipeline them); its roofline is the larger of its compute and DRAM bounds."""
    memory = nbytes / config.dram_bytes_per_cycle
    cycles = max(last - first, 1)
    return {"node": node, "start": first, "cycles": cycles, "macs": layer_macs, "dram_bytes": nbytes,
            "roofline_cycles": max(compute, memory), "bound": "compute" if compute >= memory else "memory",
            "utilization": compute / cycles, "efficiency": max(compute, memory) / cycles}


def _read_tensor(machine: Machine, t: TensorInfo) -> np.ndarray:
    return machine.dram[t.dram:t.dram + t.nbytes].view(t.dtype.numpy).reshape(t.shape).copy()
