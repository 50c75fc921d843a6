"""Greedy generation with a KV cache that stays in the accelerator's DRAM.

A decoder compiled as two programs with the same state declaration (acc-compile --state auto,
compiler/state.py) shares one cache: both place their state inputs first in DRAM, at the same
addresses, and update them in place. `generate` runs both on one `Machine` whose DRAM persists
from run to run: the prefill on the prompt (the cache starts as the machine's zeros), then one
decode run per new token. The host writes only the token ids and the position and reads only
the logits; the cache never leaves the device.

The programs follow the interface of models/gpt2: the prefill takes `input_ids` [1, N] and
the decode `input_ids` [1, 1] and `position` [1] (the number of tokens already in the cache,
the row it writes), besides the state; both give `logits` [1, T, V]. The cache's rows (MAX)
are the state tensors' first axis. The next token is the argmax of the last logits row, taken
on the host.

The figures: the decode's per-token bandwidth bound is the bytes it must read from DRAM each
step, its weights and the state it reads (the whole cache: the decode graph attends over all
MAX rows, masked), over the config's DRAM bytes per cycle; `ratio` is the simulated cycles
over that bound. The weights are the constants the decode's instructions read
(`weight_bytes_read`): whole for a constant a dma_load reads, the gathered rows for a table
only dma_gather reads (an embedding), nothing for a constant no instruction reads.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass

import numpy as np

from isa.cli_common import ProgressLine
from isa.errors import InputError
from isa.program import Program, TensorInfo
from runtime.machine import Machine
from runtime.simulator import run

TOKENS_INPUT, POSITION_INPUT, LOGITS_OUTPUT = "input_ids", "position", "logits"


@dataclass(frozen=True)
class Generation:
    """What a generation produced and what it cost."""

    tokens: np.ndarray  # int64 [steps + 1]: the prefill's next token, then one per decode step
    logits: np.ndarray  # float32 [steps + 1, vocab]: the row each token was chosen from
    cycles: np.ndarray  # int64 [steps + 1]: the prefill's cycles, then each decode step's
    prompt_length: int
    clock_mhz: float
    weight_bytes: int  # the decode program's constants it reads per token (weight_bytes_read)
    constant_bytes: int  # all of its constants, as stored
    state_bytes: int  # the state it reads per token
    dram_bytes_per_cycle: float
    hazards: int = 0  # found by check_hazards, over every run
    prefill_roofline_cycles: float = 0.0  # the simulator's roofline of the prefill run

    @property
    def prefill_roofline_efficiency(self) -> float:
        """The prefill's roofline cycles over its simulated cycles (1.0: at the roofline)."""
        return self.prefill_roofline_cycles / self.prefill_cycles if self.prefill_cycles else 1.0

    @property
    def prefill_cycles(self) -> int:
        return int(self.cycles[0])

    @property
    def decode_cycles_per_token(self) -> float:
        return float(self.cycles[1:].mean())

    @property
    def tokens_per_second(self) -> float:
        return self.clock_mhz * 1e6 / self.decode_cycles_per_token

    @property
    def bound_cycles(self) -> float:
        """A decode step's DRAM bound: weights and state read once, at full bandwidth."""
        return (self.weight_bytes + self.state_bytes) / self.dram_bytes_per_cycle

    @property
    def bound_ratio(self) -> float:
        return self.decode_cycles_per_token / self.bound_cycles

    def figures(self) -> dict:
        """The figures of `table`, for JSON (acc-run --generate --stats)."""
        return {"prompt_tokens": self.prompt_length, "decode_steps": len(self.cycles) - 1,
                "prefill_cycles": self.prefill_cycles, "prefill_roofline_cycles": self.prefill_roofline_cycles,
                "decode_cycles_per_token": self.decode_cycles_per_token,
                "decode_cycles": [int(c) for c in self.cycles[1:]], "tokens_per_second": self.tokens_per_second,
                "clock_mhz": self.clock_mhz, "weight_bytes": self.weight_bytes, "state_bytes": self.state_bytes,
                "constant_bytes": self.constant_bytes, "bound_cycles": self.bound_cycles,
                "bound_ratio": self.bound_ratio, "tokens": [int(t) for t in self.tokens]}

    def table(self) -> str:
        steps = len(self.cycles) - 1
        decode = self.cycles[1:]
        rows = [
            ("prefill", f"{self.prefill_cycles:,} cycles", f"{self.prompt_length} prompt tokens, "
                                                           f"{self.prefill_cycles / self.clock_mhz:,.1f} us, "
                                                           f"{self.prefill_roofline_efficiency:.2f} of its roofline"),
            ("decode", f"{self.decode_cycles_per_token:,.0f} cycles/token",
             f"mean of {steps} steps, {int(decode.min()):,} .. {int(decode.max()):,}"),
            ("tokens/s", f"{self.tokens_per_second:,.0f}", f"at {self.clock_mhz:g} MHz"),
            ("bound", f"{self.bound_cycles:,.0f} cycles/token",
             f"(weights {self.weight_bytes:,} B + state {self.state_bytes:,} B) / "
             f"{self.dram_bytes_per_cycle:g} B/cycle; constants stored {self.constant_bytes:,} B"),
            ("ratio", f"{self.bound_ratio:.2f}", "decode cycles / bound"),
        ]
        return "\n".join(f"{name:<10} {value:>22}   {note}" for name, value, note in rows)


def generate(prefill: Program, decode: Program, prompt_ids: np.ndarray, steps: int, *, progress: bool = False,
             check_hazards: bool = False) -> Generation:
    """Greedy generation of `steps` tokens after `prompt_ids` ([1, N] or [N], N the prefill's length):
    the prefill, then `steps` decode runs on one machine, each on the token the last one chose."""
    prompt_length, rows, vocab = check_programs(prefill, decode)
    prompt = np.asarray(prompt_ids).reshape(-1)
    if prompt.size != prompt_length:
        raise InputError(f"the prompt has {prompt.size} tokens; the prefill program takes {prompt_length}")
    if prompt.dtype.kind not in "iu" or prompt.min() < 0 or prompt.max() >= vocab:
        raise InputError(f"the prompt must be integer token ids in [0, {vocab})")
    if steps < 1 or prompt_length + steps > rows:
        raise InputError(f"{steps} decode steps after {prompt_length} prompt tokens: give 1 to "
                         f"{rows - prompt_length} (the cache holds {rows} tokens)")
    tokens_in = _input(prefill, TOKENS_INPUT)
    decode_tokens, position = _input(decode, TOKENS_INPUT), _input(decode, POSITION_INPUT)

    machine = Machine(prefill.config, max(prefill.dram_bytes, decode.dram_bytes))
    meter = ProgressLine("generating", steps + 1, "runs") if progress else None
    hazards = 0
    logits, cycles = [], []
    prefill_roofline = 0.0
    for step in range(steps + 1):
        if step == 0:
            program = prefill
            feeds = {TOKENS_INPUT: prompt.reshape(tokens_in.shape).astype(tokens_in.dtype.numpy)}
        else:
            program = decode
            token = np.full(decode_tokens.shape, logits[-1].argmax(), dtype=decode_tokens.dtype.numpy)
            feeds = {TOKENS_INPUT: token,
                     POSITION_INPUT: np.full(position.shape, prompt_length + step - 1, dtype=position.dtype.numpy)}
        result = run(program, feeds, machine=machine, check_hazards=check_hazards)
        hazards += len(result.hazards)
        logits.append(result.outputs[LOGITS_OUTPUT].reshape(-1, vocab)[-1])
        cycles.append(result.stats["cycles"])
        if step == 0:
            prefill_roofline = result.stats["roofline_cycles"]
        if meter:
            meter.step(f"{cycles[-1]:,} cycles")
    if meter:
        meter.close()
    logits = np.stack(logits)
    config = decode.config
    return Generation(tokens=logits.argmax(axis=1).astype(np.int64), logits=logits,
                      cycles=np.array(cycles, dtype=np.int64), prompt_length=prompt_length,
                      clock_mhz=config.clock_mhz, weight_bytes=weight_bytes_read(decode),
                      constant_bytes=sum(len(c.data) for c in decode.constants),
                      state_bytes=sum(t.nbytes for t in decode.state_inputs()),
                      dram_bytes_per_cycle=config.dram_bytes_per_cycle, hazards=hazards,
                      prefill_roofline_cycles=prefill_roofline)


def seeded_prompt(length: int, vocab: int, seed: int = 0) -> np.ndarray:
    """`length` seeded random token ids, int64 [1, length] (models/gpt2/reference.py's prompt_ids
    calls it, so both loops can be run on one prompt)."""
    return np.random.default_rng(seed).integers(0, vocab, size=(1, length), dtype=np.int64)


def check_programs(prefill: Program, decode: Program) -> tuple[int, int, int]:
    """(N, MAX, V): the prefill's tokens, the cache's rows and the vocabulary, once the two programs are
    known to fit together: one config, the same state at the same addresses, the interface above."""
    if prefill.config != decode.config:
        raise InputError(f"the prefill is built for config '{prefill.config.name}', the decode for "
                         f"'{decode.config.name}'")
    if not decode.state:
        raise InputError("the decode program has no state: compile both with acc-compile --state auto "
                         "(or --state OUT=IN) so that the cache stays in DRAM")
    if prefill.state != decode.state:
        raise InputError("the prefill and decode programs declare different state (compile both with the "
                         "same --state)")
    for before, after in zip(prefill.state_inputs(), decode.state_inputs(), strict=True):
        if (before.shape, before.dtype, before.dram) != (after.shape, after.dtype, after.dram):
            raise InputError(f"state input {before.name!r} differs between the programs: {_describe(before)} "
                             f"in the prefill, {_describe(after)} in the decode")
    _expect_inputs(prefill, "prefill", {TOKENS_INPUT})
    _expect_inputs(decode, "decode", {TOKENS_INPUT, POSITION_INPUT})
    prompt_shape, token_shape = _input(prefill, TOKENS_INPUT).shape, _input(decode, TOKENS_INPUT).shape
    if len(prompt_shape) != 2 or prompt_shape[0] != 1 or token_shape != (1, 1):
        raise InputError(f"'{TOKENS_INPUT}' must be [1, N] in the prefill and [1, 1] in the decode, not "
                         f"{list(prompt_shape)} and {list(token_shape)}")
    if _input(decode, POSITION_INPUT).size != 1:
        raise InputError(f"the decode's '{POSITION_INPUT}' must hold one number")
    vocab = {program.outputs[0].shape[-1] if program.outputs and program.outputs[0].name == LOGITS_OUTPUT else None
             for program in (prefill, decode)}
    if None in vocab or len(vocab) != 1:
        raise InputError(f"both programs must give '{LOGITS_OUTPUT}' [1, T, V] first, with the same V")
    rows = {t.shape[0] if t.shape else 0 for t in decode.state_inputs()}
    if len(rows) != 1:
        raise InputError("the state tensors must all have the cache's rows as their first axis")
    return prompt_shape[1], rows.pop(), vocab.pop()


def weight_bytes_read(program: Program) -> int:
    """The constant bytes one run of `program` must read at least once: a constant some dma_load reads
    counts whole, a table that only dma_gather reads the rows gathered, a constant nothing reads nothing."""
    constants = sorted(program.constants, key=lambda constant: constant.dram)
    starts = [constant.dram for constant in constants]
    loaded: set[int] = set()
    gathered: dict[int, int] = {}
    for instruction in program.instructions:
        if instruction.mnemonic not in ("dma_load", "dma_gather"):
            continue
        fields = instruction.fields
        which = bisect.bisect_right(starts, fields["dram"]) - 1
        if which < 0 or fields["dram"] >= starts[which] + len(constants[which].data):
            continue  # an activation
        if instruction.mnemonic == "dma_load":
            loaded.add(which)
        else:
            gathered[which] = gathered.get(which, 0) + fields["rows"] * fields["n0"] * fields["esize"]
    return (sum(len(constants[which].data) for which in loaded)
            + sum(min(nbytes, len(constants[which].data)) for which, nbytes in gathered.items() if which not in loaded))


def _expect_inputs(program: Program, what: str, names: set[str]) -> None:
    others = {t.name for t in program.inputs} - {name for _, name in program.state}
    if others != names:
        raise InputError(f"the {what} program's inputs besides the state are {sorted(others)}; generation "
                         f"needs {sorted(names)}")


def _input(program: Program, name: str) -> TensorInfo:
    return next(t for t in program.inputs if t.name == name)


def _describe(t: TensorInfo) -> str:
    return f"{t.dtype.asm_name}{list(t.shape)} at DRAM {t.dram:#x}"
