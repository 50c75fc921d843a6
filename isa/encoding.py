"""Instructions as values, and their fixed-width binary encoding (derived from isa/spec.py).

An `Instruction` is a mnemonic plus a value for every field of its format (missing
fields are 0). `encode` packs it into 32 little-endian bytes and refuses any value that
does not fit its field, naming the field; `decode` is its exact inverse and refuses
unknown opcodes, invalid enum values and set reserved bits.
"""

from __future__ import annotations

import operator
import struct

import numpy as np

from isa.dtypes import DType
from isa.errors import EncodingError
from isa.spec import (
    BY_MNEMONIC,
    BY_OPCODE,
    FORMULA_HELPERS,
    HEADER,
    INSTRUCTION_BITS,
    INSTRUCTION_BYTES,
    Engine,
    Field,
    FieldKind,
    InstructionDef,
    dma_transfer_cycles,
)

_ESIZE_CODES = {1: 0, 2: 1, 4: 2}


class Instruction:
    """One instruction: `mnemonic` and `fields` (name -> value, without the opcode)."""

    __slots__ = ("definition", "fields")

    def __init__(self, mnemonic: str, **values):
        layout = _LAYOUTS.get(mnemonic)
        if layout is None:
            raise EncodingError(f"unknown instruction {mnemonic!r}")
        definition, known, defaults, canonical = layout
        self.definition: InstructionDef = definition
        fields = defaults.copy()  # in the definition's order, every value canonical
        rest = None  # names whose values are not already canonical and in range (or not fields at all)
        for name, value in values.items():
            kind = canonical.get(name)
            if kind is not None and type(value) is kind[0] and value in kind[1]:
                fields[name] = value  # the common case
            elif rest is None:
                rest = [name]
            else:
                rest.append(name)
        if rest is not None or "imm" in known:
            _complete(mnemonic, known, values, fields, rest or ())
        self.fields = fields

    def replaced(self, **values) -> Instruction:
        """A copy with the fields in `values` changed, each checked as the constructor checks it (the
        others are checked already)."""
        definition, known, _, canonical = _LAYOUTS[self.definition.mnemonic]
        fields = {**self.fields, **values}
        rest = [name for name, value in values.items()
                if name not in canonical or type(value) is not canonical[name][0] or value not in canonical[name][1]]
        if rest:
            _complete(definition.mnemonic, known, fields, fields, rest)
        copy = Instruction.__new__(Instruction)
        copy.definition, copy.fields = definition, fields
        return copy

    def set_sync(self, wait: int, signal: int) -> None:
        """Set the semaphore fields in place (for the instruction's creator, before anyone shares it)."""
        if not (0 <= wait < _SEMAPHORE_LIMIT and 0 <= signal < _SEMAPHORE_LIMIT):
            for name, value in (("wait", wait), ("signal", signal)):
                _field_bits(_HEADER_FIELDS[name], value, DType.F32)  # raises, naming the field
        self.fields["wait"] = wait
        self.fields["signal"] = signal

    @property
    def mnemonic(self) -> str:
        return self.definition.mnemonic

    @property
    def engine(self) -> Engine:
        if self.definition.engine is None:
            return self.fields["engine"] if "engine" in self.fields else Engine.VECTOR
        return self.definition.engine

    def __getitem__(self, name: str):
        return self.fields[name]

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Instruction) and self.mnemonic == other.mnemonic and self.fields == other.fields

    def __hash__(self) -> int:
        return hash((self.mnemonic, tuple(self.fields.items())))

    def __repr__(self) -> str:
        from isa.assembly import disassemble_instruction

        return f"<{disassemble_instruction(self)}>"


def _complete(mnemonic: str, known: dict, values: dict, fields: dict, rest) -> None:
    """Set in `fields` the values named in `rest`, made canonical and checked (or refused, naming the
    field), and the immediate's default by the dtype."""
    if not values.keys() <= known.keys():
        name = next(name for name in values if name not in known)
        raise EncodingError(f"{mnemonic} has no field '{name}' (fields: {', '.join(known)})")
    dtype = values.get("dtype", DType.F32)
    if type(dtype) is not DType and "dtype" in known:
        dtype = _coerce(known["dtype"], dtype)
    for name in rest:
        f = known[name]
        fields[name] = _coerce_imm(values[name], dtype) if f.kind is FieldKind.IMM32 else _coerce(f, values[name])
        _field_bits(f, fields[name], dtype)  # refuse now what could not be encoded later
    if "imm" in known and "imm" not in values:
        fields["imm"] = _coerce_imm(known["imm"].default, dtype)  # 0.0 or 0, by the dtype


_HEADER_FIELDS = {f.name: f for f in HEADER}
_SEMAPHORE_LIMIT = 1 << _HEADER_FIELDS["wait"].width


def _layout(definition: InstructionDef) -> tuple[InstructionDef, dict, dict, dict]:
    """(definition, its fields by name without the opcode, each field's canonical default, and per
    field but the immediate the type and the values that are canonical and fit): what `Instruction`
    checks values against."""
    known = {f.name: f for f in definition.fields if f.name != "opcode"}
    defaults = {name: f.default if f.kind is FieldKind.IMM32 else _coerce(f, f.default) for name, f in known.items()}
    canonical = {}
    for name, f in known.items():
        if f.kind is FieldKind.DTYPE:
            canonical[name] = (DType, frozenset(d for d in DType if d >> f.width == 0))
        elif f.kind is FieldKind.ENGINE:
            canonical[name] = (Engine, frozenset(e for e in Engine if e >> f.width == 0))
        elif f.kind is FieldKind.ESIZE:
            canonical[name] = (int, frozenset(_ESIZE_CODES))
        elif f.kind is not FieldKind.IMM32:
            canonical[name] = (int, range(1 << f.width))
    return definition, known, defaults, canonical


def _coerce(f: Field, value):
    """The canonical Python value of a field (enums as enums); refuses values of the wrong kind."""
    try:
        if f.kind is FieldKind.DTYPE:
            return value if isinstance(value, DType) else DType(int(value))
        if f.kind is FieldKind.ENGINE:
            return value if isinstance(value, Engine) else Engine(int(value))
    except ValueError:
        raise EncodingError(f"field '{f.name}': {value!r} is not a valid {f.kind.value}") from None
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise EncodingError(f"field '{f.name}': expected an integer, got {value!r}")
    value = int(value)
    if f.kind is FieldKind.ESIZE and value not in _ESIZE_CODES:
        raise EncodingError(f"field '{f.name}': element size must be 1, 2 or 4 bytes, got {value}")
    return value


def _coerce_imm(value, dtype: DType):
    if dtype.is_float:
        if not isinstance(value, (int, float, np.floating, np.integer)) or isinstance(value, bool):
            raise EncodingError(f"field 'imm': expected a number, got {value!r}")
        return float(np.float32(value))
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool):
        raise EncodingError(f"field 'imm': a {dtype.asm_name} immediate must be an integer, got {value!r}")
    value = int(value)
    if not -(2**31) <= value < 2**31:
        raise EncodingError(f"field 'imm': {value} does not fit in 32 bits")
    return value


def _field_bits(f: Field, value, dtype: DType) -> int:
    if f.kind is FieldKind.ESIZE:
        raw = _ESIZE_CODES[value]
    elif f.kind is FieldKind.IMM32:
        if dtype.is_float:
            raw = struct.unpack("<I", struct.pack("<f", value))[0]
        else:
            raw = value & 0xFFFFFFFF
    else:
        raw = int(value)
    if raw < 0 or raw >> f.width:
        shown = value if abs(int(raw)).bit_length() <= 64 else f"a {abs(int(raw)).bit_length()}-bit value"
        raise EncodingError(f"field '{f.name}': {shown} does not fit in {f.width} bits")
    return raw << f.lo


_LAYOUTS = {mnemonic: _layout(definition) for mnemonic, definition in BY_MNEMONIC.items()}


def encode(instruction: Instruction) -> bytes:
    definition = instruction.definition
    dtype = instruction.fields.get("dtype", DType.F32)
    word = definition.opcode
    for f in definition.fields:
        if f.name != "opcode":
            word |= _field_bits(f, instruction.fields[f.name], dtype)
    return word.to_bytes(INSTRUCTION_BYTES, "little")


def decode(data: bytes) -> Instruction:
    if len(data) != INSTRUCTION_BYTES:
        raise EncodingError(f"an instruction is {INSTRUCTION_BYTES} bytes, got {len(data)}")
    word = int.from_bytes(data, "little")
    opcode = word & 0xFF
    definition = BY_OPCODE.get(opcode)
    if definition is None:
        raise EncodingError(f"unknown opcode {opcode:#04x}")
    used = 0
    raw: dict[str, int] = {}
    for f in definition.fields:
        mask = (1 << f.width) - 1
        used |= mask << f.lo
        raw[f.name] = (word >> f.lo) & mask
    if word & ~used & ((1 << INSTRUCTION_BITS) - 1):
        raise EncodingError(f"{definition.mnemonic}: reserved bits are set")
    values = {}
    dtype = DType.F32
    if "dtype" in raw:
        if raw["dtype"] not in DType._value2member_map_:
            raise EncodingError(f"{definition.mnemonic}: field 'dtype': {raw['dtype']} is not a dtype")
        dtype = DType(raw["dtype"])
    for f in definition.fields:
        if f.name == "opcode":
            continue
        bits = raw[f.name]
        if f.kind is FieldKind.ESIZE:
            if bits == 3:
                raise EncodingError(f"{definition.mnemonic}: field '{f.name}': code 3 is not an element size")
            values[f.name] = 1 << bits
        elif f.kind is FieldKind.DTYPE:
            if bits not in DType._value2member_map_:
                raise EncodingError(f"{definition.mnemonic}: field '{f.name}': {bits} is not a dtype")
            values[f.name] = DType(bits)
        elif f.kind is FieldKind.IMM32:
            if dtype.is_float:
                values[f.name] = struct.unpack("<f", struct.pack("<I", bits))[0]
            else:
                values[f.name] = bits - (1 << 32) if bits >> 31 else bits
        else:
            values[f.name] = bits
    return Instruction(definition.mnemonic, **values)


def encode_program(instructions: list[Instruction]) -> bytes:
    return b"".join(encode(i) for i in instructions)


def decode_program(data: bytes) -> list[Instruction]:
    """Decode a whole instruction section; an error names the instruction index."""
    if len(data) % INSTRUCTION_BYTES:
        raise EncodingError(f"instruction section is {len(data)} bytes, not a multiple of {INSTRUCTION_BYTES}")
    instructions = []
    for index in range(len(data) // INSTRUCTION_BYTES):
        try:
            instructions.append(decode(data[index * INSTRUCTION_BYTES:(index + 1) * INSTRUCTION_BYTES]))
        except EncodingError as err:
            raise EncodingError(f"instruction {index}: {err}") from None
    return instructions


def instruction_latency(instruction: Instruction, config) -> int:
    """Cycles of one instruction in isolation, by its latency formula in the ISA table."""
    definition = instruction.definition
    env = dict(config.__dict__)
    env.update(FORMULA_HELPERS)
    env.update(instruction.fields)
    if definition.format == "dma":
        f = instruction.fields
        env["transfer"] = dma_transfer_cycles(f["esize"], f["n0"], f["n1"], f["n2"], f["ds0"], f["ds1"],
                                              f["ds2"], config.dram_bytes_per_cycle)
    if definition.engine is Engine.MATRIX:
        env["row_cycles"] = config.row_cycles(instruction.fields["dtype"])
    return int(eval(_compiled_latency(definition), {"__builtins__": {}}, env))


_LATENCY_CODE: dict[str, object] = {}


def _compiled_latency(definition: InstructionDef):
    code = _LATENCY_CODE.get(definition.mnemonic)
    if code is None:
        code = _LATENCY_CODE[definition.mnemonic] = compile(definition.latency, definition.mnemonic, "eval")
    return code


def instruction_latencies(instructions, config) -> list[int]:
    """Every instruction's latency by the ISA table, each formula evaluated once per distinct set
    of the fields it reads (a model repeats a few instruction shapes tens of thousands of times)."""
    by_fields: dict = {}
    latencies = []
    relevant_by_mnemonic: dict = {}  # mnemonic -> fields -> the values that can change the latency
    for instruction in instructions:
        definition = instruction.definition
        mnemonic = definition.mnemonic
        if mnemonic in relevant_by_mnemonic:
            relevant = relevant_by_mnemonic[mnemonic]
        else:
            relevant = relevant_by_mnemonic[mnemonic] = _latency_fields(definition)
        key = (mnemonic, relevant(instruction.fields))
        latency = by_fields.get(key)
        if latency is None:
            latency = by_fields[key] = instruction_latency(instruction, config)
        latencies.append(latency)
    return latencies


_DMA_TRANSFER_FIELDS = ("esize", "n0", "n1", "n2", "ds0", "ds1", "ds2")


def _latency_fields(definition):
    """fields -> the values of the fields that instruction_latency reads for instructions of
    `definition`: those its formula names, for a DMA those of the transfer, for the matrix
    engine the dtype (of row_cycles). Instructions that differ only in other fields
    (addresses, semaphores) have the same latency, so the formula is evaluated once for them.
    A formula with nested code (whose names co_names does not list) keys on every field."""
    code = _compiled_latency(definition)
    if any(hasattr(constant, "co_names") for constant in code.co_consts):
        return lambda fields: tuple(fields.values())
    names = set(code.co_names)
    if definition.format == "dma":
        names.update(_DMA_TRANSFER_FIELDS)
    if definition.engine is Engine.MATRIX:
        names.add("dtype")
    relevant = sorted(f.name for f in definition.fields if f.name in names)
    if not relevant:
        return lambda fields: ()
    getter = operator.itemgetter(*relevant)
    return getter if len(relevant) > 1 else lambda fields: (getter(fields),)
