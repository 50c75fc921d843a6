"""The accelerator configuration: one frozen dataclass, its presets and its loader.

Every size the compiler or the simulator uses comes from an `AcceleratorConfig` that is
passed explicitly; derived sizes are properties, never copied constants. A config is
loaded from a preset name (`tiny`, `edge`, `server`) or from a JSON file whose keys are
the field names, optionally starting from a preset given as `"base"`.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from pathlib import Path

from isa.dtypes import DType
from isa.errors import ConfigError

# Widths of the instruction fields that hold on-chip addresses and DRAM addresses
# (see isa/spec.py); a config whose memories do not fit them cannot be encoded.
LOCAL_ADDRESS_BITS = 26
DRAM_ADDRESS_BITS = 32
MAX_ARRAY_DIM = 4095  # the K and N fields of the matrix instructions are 12 bits


@dataclass(frozen=True)
class AcceleratorConfig:
    """One accelerator: a weight-stationary systolic array, a vector unit, scratchpad,
    accumulator and DMA to DRAM.

    On-chip memory is one byte-addressed local space: the scratchpad occupies
    [0, spad_bytes) and the accumulator [acc_base, acc_base + acc_bytes), with
    acc_base == spad_bytes.
    """

    name: str
    array_rows: int  # R: rows of the MAC array = the K extent of one weight tile
    array_cols: int  # C: columns of the MAC array = the N extent of one weight tile
    spad_bytes: int
    acc_bytes: int
    dram_bytes: int
    dram_bytes_per_cycle: int
    dma_latency: int  # cycles from issue to the first byte of a DMA
    vector_lanes: int  # elements the vector unit processes per cycle
    vector_latency: int  # pipeline depth of the vector unit, paid once per instruction
    int8_row_cycles: int = 1  # cycles to stream one activation row through the array, per dtype
    bf16_row_cycles: int = 2
    fp32_row_cycles: int = 4
    weight_double_buffer: bool = True  # shift the next weight tile in while the current one streams
    clock_mhz: float = 1000.0

    def __post_init__(self) -> None:
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if field.type in ("int", int) and (not isinstance(value, int) or isinstance(value, bool)):
                raise ConfigError(f"config field '{field.name}': expected an integer, got {value!r}")
        if not isinstance(self.name, str) or not self.name:
            raise ConfigError("config field 'name': must be a non-empty string")
        for dim in ("array_rows", "array_cols"):
            if not 1 <= getattr(self, dim) <= MAX_ARRAY_DIM:
                raise ConfigError(f"config field '{dim}': must be between 1 and {MAX_ARRAY_DIM}")
        for field in ("spad_bytes", "acc_bytes", "dram_bytes", "dram_bytes_per_cycle", "vector_lanes"):
            value = getattr(self, field)
            if value < 1 or value & (value - 1):
                raise ConfigError(f"config field '{field}': must be a positive power of two, got {value}")
        if self.spad_bytes + self.acc_bytes > 1 << LOCAL_ADDRESS_BITS:
            raise ConfigError(
                f"config field 'spad_bytes': scratchpad plus accumulator ({self.spad_bytes + self.acc_bytes} "
                f"bytes) do not fit the {LOCAL_ADDRESS_BITS}-bit local address"
            )
        if self.dram_bytes > 1 << DRAM_ADDRESS_BITS:
            raise ConfigError(f"config field 'dram_bytes': more than the {DRAM_ADDRESS_BITS}-bit DRAM address")
        if self.acc_bytes < 4 * self.array_cols:
            raise ConfigError("config field 'acc_bytes': must hold at least one row of the array's outputs")
        if self.spad_bytes < 4 * self.array_rows * self.array_cols:
            raise ConfigError("config field 'spad_bytes': must hold at least one fp32 weight tile")
        for field in ("dma_latency", "vector_latency"):
            if getattr(self, field) < 0:
                raise ConfigError(f"config field '{field}': must not be negative")
        for field in ("int8_row_cycles", "bf16_row_cycles", "fp32_row_cycles"):
            if getattr(self, field) < 1:
                raise ConfigError(f"config field '{field}': must be at least 1")
        if not isinstance(self.weight_double_buffer, bool):
            raise ConfigError("config field 'weight_double_buffer': must be true or false")
        if not isinstance(self.clock_mhz, (int, float)) or isinstance(self.clock_mhz, bool) \
                or not math.isfinite(self.clock_mhz) or self.clock_mhz <= 0:
            raise ConfigError("config field 'clock_mhz': must be a positive number")

    # Derived sizes -------------------------------------------------------------------------
    @property
    def acc_base(self) -> int:
        """Local address of the first accumulator byte."""
        return self.spad_bytes

    @property
    def local_bytes(self) -> int:
        return self.spad_bytes + self.acc_bytes

    def row_cycles(self, dtype: DType) -> int:
        """Cycles the array takes per streamed activation row for operands of `dtype`."""
        by_dtype = {DType.I8: self.int8_row_cycles, DType.U8: self.int8_row_cycles,
                    DType.BF16: self.bf16_row_cycles, DType.F32: self.fp32_row_cycles}
        if dtype not in by_dtype:
            raise ConfigError(f"the matrix unit has no {dtype.name.lower()} mode")
        return by_dtype[dtype]

    def peak_macs_per_cycle(self, dtype: DType) -> float:
        return self.array_rows * self.array_cols / self.row_cycles(dtype)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        """Canonical JSON (sorted keys, no spaces): the same config always gives the same bytes."""
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))

    def replace(self, **changes) -> AcceleratorConfig:
        return dataclasses.replace(self, **changes)


KiB, MiB, GiB = 1 << 10, 1 << 20, 1 << 30

PRESETS: dict[str, AcceleratorConfig] = {
    "tiny": AcceleratorConfig(
        name="tiny", array_rows=8, array_cols=8, spad_bytes=16 * KiB, acc_bytes=4 * KiB,
        dram_bytes=4 * GiB, dram_bytes_per_cycle=8, dma_latency=32, vector_lanes=8, vector_latency=4,
        clock_mhz=200.0,
    ),
    "edge": AcceleratorConfig(
        name="edge", array_rows=32, array_cols=32, spad_bytes=512 * KiB, acc_bytes=128 * KiB,
        dram_bytes=4 * GiB, dram_bytes_per_cycle=64, dma_latency=100, vector_lanes=32, vector_latency=8,
        clock_mhz=1000.0,
    ),
    "server": AcceleratorConfig(
        name="server", array_rows=128, array_cols=128, spad_bytes=16 * MiB, acc_bytes=4 * MiB,
        dram_bytes=4 * GiB, dram_bytes_per_cycle=512, dma_latency=150, vector_lanes=128, vector_latency=8,
        clock_mhz=940.0,
    ),
}
DEFAULT_PRESET = "edge"


def config_from_dict(data: dict) -> AcceleratorConfig:
    """Build a config from a dict of field values; `"base": PRESET` fills the fields not given."""
    if not isinstance(data, dict):
        raise ConfigError("config must be a JSON object")
    data = dict(data)
    base_name = data.pop("base", None)
    known = {f.name for f in dataclasses.fields(AcceleratorConfig)}
    for key in data:
        if key not in known:
            raise ConfigError(f"config field '{key}' is not a config field (known: {', '.join(sorted(known))})")
    if base_name is not None:
        if not isinstance(base_name, str) or base_name not in PRESETS:
            raise ConfigError(f"config field 'base': unknown preset {base_name!r} (presets: {', '.join(PRESETS)})")
        data = {**PRESETS[base_name].to_dict(), **data}
    missing = known - set(data)
    if missing:
        raise ConfigError(f"config field '{sorted(missing)[0]}' is missing (or give \"base\": a preset)")
    return AcceleratorConfig(**data)


def load_config(name_or_path: str | Path | AcceleratorConfig | None = None) -> AcceleratorConfig:
    """A preset name, a path to a JSON file, or an existing config (returned as is)."""
    if isinstance(name_or_path, AcceleratorConfig):
        return name_or_path
    if name_or_path is None:
        return PRESETS[DEFAULT_PRESET]
    text = str(name_or_path)
    if text in PRESETS:
        return PRESETS[text]
    path = Path(text)
    if not path.suffix and not path.exists():
        raise ConfigError(f"unknown config {text!r}: not a preset ({', '.join(PRESETS)}) nor a JSON file")
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"config file {text!r} does not exist") from None
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"cannot read config file {text!r}: {err}") from None
    except json.JSONDecodeError as err:
        raise ConfigError(f"config file {text!r} is not valid JSON: {err}") from None
    except ValueError as err:  # e.g. an integer too long to convert
        raise ConfigError(f"config file {text!r}: {err}") from None
    if isinstance(data, dict) and "name" not in data:
        data["name"] = path.stem
    return config_from_dict(data)
