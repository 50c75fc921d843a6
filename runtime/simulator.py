"""Runs a Program: functional results, cycle timing, counters, hazard check and trace.

Timing is isa/timing.py's Timeline (isa/SPEC.md, "Timing", says it in prose); the
simulator applies each instruction's functional effect when the timeline starts it. In
a program without hazards that is indistinguishable from applying it over its duration,
and a program where it makes a difference has a hazard (--check-hazards).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from isa.dtypes import DType
from isa.errors import InputError, InternalError, SimulationError
from isa.program import Program, TensorInfo
from isa.spec import Engine
from isa.timing import NO_TOKEN, Timeline
from runtime.hazards import Hazard, HazardChecker
from runtime.machine import DRAM, EXEC, LOCAL, Machine, OperandError

ENGINE_NAMES = [engine.name.lower() for engine in Engine]


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

    instructions = program.instructions
    # Per source node (model.bin's debug ranges): first start, last end, MACs, compute-bound cycles, DRAM bytes.
    layer_names = [entry.node for entry in program.debug]
    layer_of = [-1] * len(instructions)
    for number, entry in enumerate(program.debug):
        for index in range(entry.start, min(entry.end, len(instructions))):
            layer_of[index] = number
    layer_start = [None] * len(layer_names)
    layer_end = [0] * len(layer_names)
    layer_macs = [0] * len(layer_names)
    layer_compute = [0.0] * len(layer_names)
    layer_bytes = [0] * len(layer_names)
    peak = {dtype: config.peak_macs_per_cycle(dtype) for dtype in (DType.I8, DType.U8, DType.BF16, DType.F32)}

    checker = HazardChecker({DRAM: machine.dram.size, LOCAL: machine.local.size}, len(Engine)) \
        if check_hazards else None
    clocks = np.zeros((len(Engine), len(Engine)), dtype=np.int64)  # vector clocks, per engine (hazard check)
    token_clocks: dict[int, np.ndarray] = {}  # signalling instruction -> its engine's clock then
    done_count = [0] * len(Engine)
    macs: dict[DType, int] = {}
    dram_read = dram_written = 0
    events: list[Event] = []
    timeline = Timeline(instructions, config)
    for index, engine, start, end, token in timeline:
        instruction = instructions[index]
        try:
            effects = EXEC[instruction.definition.mnemonic](machine, instruction)
        except OperandError as err:
            raise SimulationError(str(err), index, _disassemble(program, index)) from None
        done_count[engine] += 1
        if checker is not None:
            if token != NO_TOKEN:
                np.maximum(clocks[engine], token_clocks.pop(token), out=clocks[engine])
            clocks[engine][engine] = done_count[engine]
            checker.record(index, engine, clocks[engine], effects.accesses)
            if instruction.fields["signal"]:
                token_clocks[index] = clocks[engine].copy()
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
        if keep_events:
            events.append(Event(index, engine, start, end))
    total, busy = timeline.cycles, timeline.busy

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
        "layers": _layers(config, layer_names, layer_start, layer_end, layer_macs, layer_compute, layer_bytes),
    }
    if checker is not None:
        stats["hazards"] = len(checker.hazards)
    tensors = {t.name: _read_tensor(machine, t) for t in program.debug_tensors} if keep_tensors else {}
    return RunResult(outputs, stats, events, checker.hazards if checker else [], tensors)


def _layers(config, names, starts, ends, layer_macs, compute, nbytes) -> list[dict]:
    """Each source node's figures, in program order: its instructions ran from `start` for `cycles`
    (layers overlap when the engines pipeline them); `own_cycles` is how far it moved the end of
    the run past every earlier layer's end (what the layers' own cycles add up to is the run's
    cycles; what acc-compile --report predicts); its roofline is the larger of its compute and
    DRAM bounds."""
    layers = []
    finished = 0  # the latest end of the layers so far
    for n, (node, first, last) in enumerate(zip(names, starts, ends, strict=True)):
        if first is None:
            continue
        memory = nbytes[n] / config.dram_bytes_per_cycle
        cycles = max(last - first, 1)
        layers.append({"node": node, "start": first, "cycles": cycles, "own_cycles": max(last - finished, 0),
                       "macs": layer_macs[n], "dram_bytes": nbytes[n], "roofline_cycles": max(compute[n], memory),
                       "bound": "compute" if compute[n] >= memory else "memory",
                       "utilization": compute[n] / cycles, "efficiency": max(compute[n], memory) / cycles})
        finished = max(finished, last)
    return layers


def _read_tensor(machine: Machine, t: TensorInfo) -> np.ndarray:
    return machine.dram[t.dram:t.dram + t.nbytes].view(t.dtype.numpy).reshape(t.shape).copy()
