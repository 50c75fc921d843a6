"""A compiled program: what model.bin holds, as Python objects.

Both the assembler and the compiler produce a `Program`; `isa.binfile` writes and reads
it; the simulator runs it. Tensors in DRAM are dense and row-major at their `dram`
byte address.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from isa.config import AcceleratorConfig
from isa.dtypes import DType
from isa.encoding import Instruction


@dataclass(frozen=True)
class TensorInfo:
    """A model input or output: where it lives in DRAM and how to read it."""

    name: str
    shape: tuple[int, ...]
    dtype: DType
    dram: int
    scale: tuple[float, ...] = ()  # quantization parameters of an integer tensor, if any
    zero_point: tuple[int, ...] = ()
    axis: int | None = None  # the channel axis of per-channel parameters
    node: str = ""  # for a debug tensor: the source node that produced it
    source: str = ""  # for a quantized debug tensor: the float tensor of the model it quantizes

    @property
    def size(self) -> int:
        return math.prod(self.shape)

    @property
    def nbytes(self) -> int:
        return self.size * self.dtype.size


@dataclass(frozen=True)
class Constant:
    """Bytes placed in DRAM at `dram` before the program starts (weights, tables)."""

    dram: int
    data: bytes
    name: str = ""


@dataclass(frozen=True)
class DebugRange:
    """Instructions [start, end) were generated for the source node `node`."""

    start: int
    end: int
    node: str


@dataclass
class Program:
    config: AcceleratorConfig
    instructions: list[Instruction]
    inputs: list[TensorInfo] = field(default_factory=list)
    outputs: list[TensorInfo] = field(default_factory=list)
    constants: list[Constant] = field(default_factory=list)
    debug: list[DebugRange] = field(default_factory=list)
    dram_bytes: int = 0  # DRAM the program uses: I/O, constants and scratch
    host_steps: list[str] = field(default_factory=list)  # steps that run on the host; reported by acc-run
    # Intermediate tensors still in DRAM when the run ends, for per-layer comparison.
    debug_tensors: list[TensorInfo] = field(default_factory=list)
    # What the matrix unit computes in: "fp32", "bf16", "w8a16" or "int8" (the lowest used); acc-run's tolerance.
    precision: str = "fp32"
    # The activations' DRAM (I/O, intermediates, kernels' scratch) at its peak: [0, activation_bytes)
    # holds them, constants follow. Smaller than the sum of all activations when DRAM is reused.
    activation_bytes: int = 0
    # State pairs (output, input), sorted by input name: the output is the input updated in place (same
    # DRAM), so a device that keeps its DRAM between runs feeds each run's output to the next run.
    state: list[tuple[str, str]] = field(default_factory=list)
    # From the compiler, not saved in model.bin: per source node, what its kernel chose and the
    # most scratchpad bytes it used (acc-compile --report).
    notes: dict[str, list[str]] = field(default_factory=dict, compare=False)
    scratchpad_peak: dict[str, int] = field(default_factory=dict, compare=False)

    def state_inputs(self) -> list[TensorInfo]:
        """The inputs that state outputs update in place, in state order (their DRAM order)."""
        by_name = {t.name: t for t in self.inputs}
        return [by_name[name] for _, name in self.state]

    def node_of(self, index: int) -> str | None:
        """The source node that instruction `index` was generated for, if recorded."""
        for entry in self.debug:
            if entry.start <= index < entry.end:
                return entry.node
        return None


def state_text(program: Program) -> str:
    """One line on a program's state: how many pairs, their DRAM, and each output=input."""
    tensors = program.state_inputs()
    nbytes = sum(t.nbytes for t in tensors)
    start = min((t.dram for t in tensors), default=0)
    return f"{len(program.state)} pair(s), {nbytes:,} B from DRAM {start:#x}: {pairs_text(program.state)}"


def pairs_text(pairs) -> str:
    """State pairs as `output=input, ...`, the spelling of acc-compile --state."""
    return ", ".join(f"{output}={input_name}" for output, input_name in pairs)
