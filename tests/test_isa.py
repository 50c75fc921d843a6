"""Tests of the ISA table, the binary encoding, the assembler/disassembler and the generated SPEC.md.

Operands are drawn from seeded generators, so a failure names its seed and repeats.
"""

from __future__ import annotations

import math
import random
import struct

import numpy as np
import pytest

from isa import spec, specdoc
from isa.assembly import assemble, disassemble, disassemble_instruction
from isa.config import PRESETS
from isa.dtypes import DType
from isa.encoding import Instruction, decode, decode_program, encode, encode_program, instruction_latency
from isa.errors import AccError, AssemblyError, EncodingError
from isa.program import Constant, DebugRange, TensorInfo
from isa.spec import (
    BY_MNEMONIC,
    BY_OPCODE,
    HEADER,
    INSTRUCTION_BITS,
    INSTRUCTION_BYTES,
    INSTRUCTIONS,
    Engine,
    FieldKind,
)

CASES_PER_OPCODE = 300
MNEMONICS = [d.mnemonic for d in INSTRUCTIONS]
MATRIX_DTYPES = (DType.I8, DType.U8, DType.BF16, DType.F32)
ESIZES = (1, 2, 4)


def operand_fields(definition):
    return [f for f in definition.fields if f.name != "opcode"]


def random_float32(rng: random.Random) -> float:
    """Any fp32 value but NaN (NaN != NaN would make equality meaningless): normals,
    subnormals, zeros of both signs and infinities all occur."""
    while True:
        if rng.random() < 0.1:
            value = rng.choice([0.0, -0.0, 1.0, -1.0, math.inf, -math.inf, 1e-45, 3.4028234663852886e38])
        else:
            value = struct.unpack("<f", struct.pack("<I", rng.getrandbits(32)))[0]
        if not math.isnan(value):
            return value


def random_uint(rng: random.Random, width: int) -> int:
    choice = rng.random()
    if choice < 0.1:
        return 0
    if choice < 0.2:
        return (1 << width) - 1
    return rng.getrandbits(width)


def random_fields(definition, rng: random.Random) -> dict:
    """A value for every operand field, each within its field's range; enums over all valid values."""
    values = {}
    for f in operand_fields(definition):
        if f.kind is FieldKind.DTYPE:
            values[f.name] = rng.choice(list(DType))
        elif f.kind is FieldKind.ENGINE:
            values[f.name] = rng.choice(list(Engine))
        elif f.kind is FieldKind.ESIZE:
            values[f.name] = rng.choice(ESIZES)
        elif f.kind is FieldKind.FLAG:
            values[f.name] = rng.getrandbits(1)
        elif f.kind is FieldKind.IMM32:
            continue  # depends on the dtype, below
        else:
            values[f.name] = random_uint(rng, f.width)
    if any(f.kind is FieldKind.IMM32 for f in definition.fields):
        dtype = values.get("dtype", DType.F32)
        values["imm"] = random_float32(rng) if dtype.is_float else rng.randint(-(2**31), 2**31 - 1)
    return values


# The table ------------------------------------------------------------------------------------------
def test_validate_tables_accepts_the_table():
    spec.validate_tables()


def test_every_field_fits_256_bits_without_overlap():
    """Checked here independently of validate_tables, with a bitmap per instruction."""
    for definition in INSTRUCTIONS:
        owner = [None] * INSTRUCTION_BITS
        for f in definition.fields:
            assert 0 <= f.lo <= f.hi < INSTRUCTION_BITS, f"{definition.mnemonic}.{f.name}: bits {f.hi}..{f.lo}"
            assert f.width == f.hi - f.lo + 1
            for bit in range(f.lo, f.hi + 1):
                assert owner[bit] is None, f"{definition.mnemonic}: bit {bit} in '{owner[bit]}' and '{f.name}'"
                owner[bit] = f.name


def test_every_instruction_starts_with_the_header():
    for definition in INSTRUCTIONS:
        assert definition.fields[:len(HEADER)] == HEADER, definition.mnemonic
        assert definition.fields[0].name == "opcode" and (definition.fields[0].lo, definition.fields[0].hi) == (0, 7)
        names = [f.name for f in definition.fields]
        assert len(names) == len(set(names)), definition.mnemonic


def test_opcodes_and_mnemonics_are_unique_and_fit_8_bits():
    opcodes = [d.opcode for d in INSTRUCTIONS]
    assert len(set(opcodes)) == len(opcodes)
    assert len(set(MNEMONICS)) == len(MNEMONICS)
    assert all(0 < op < 256 for op in opcodes)
    assert set(BY_OPCODE) == set(opcodes) and set(BY_MNEMONIC) == set(MNEMONICS)


def test_field_kinds_have_the_widths_their_values_need():
    for definition in INSTRUCTIONS:
        for f in definition.fields:
            if f.kind is FieldKind.DTYPE:
                assert 1 << f.width > max(DType), f"{definition.mnemonic}.{f.name}"
            elif f.kind is FieldKind.ENGINE:
                assert 1 << f.width > max(Engine)
            elif f.kind is FieldKind.SEM:
                assert 1 << f.width == spec.NUM_SEMAPHORES
            elif f.kind is FieldKind.IMM32:
                assert f.width == 32
            elif f.kind is FieldKind.FLAG:
                assert f.width == 1


def _with_definition(monkeypatch, definition):
    monkeypatch.setattr(spec, "INSTRUCTIONS", spec.INSTRUCTIONS + (definition,))


def test_validate_tables_refuses_overlap(monkeypatch):
    fields = HEADER + (spec.Field("x", 40, 30), spec.Field("y", 35, 35))
    _with_definition(monkeypatch, spec.InstructionDef("bad", 0xFE, "none", None, "", "0", fields))
    with pytest.raises(ValueError, match="'y' overlaps"):
        spec.validate_tables()


def test_validate_tables_refuses_bits_past_256(monkeypatch):
    fields = HEADER + (spec.Field("x", 256, 250),)
    _with_definition(monkeypatch, spec.InstructionDef("bad", 0xFE, "none", None, "", "0", fields))
    with pytest.raises(ValueError, match="'x' bits 256..250"):
        spec.validate_tables()


def test_validate_tables_refuses_duplicate_opcode(monkeypatch):
    _with_definition(monkeypatch, spec.InstructionDef("bad", 0x01, "none", None, "", "0", HEADER))
    with pytest.raises(ValueError, match="opcode 0x1"):
        spec.validate_tables()


def test_validate_tables_refuses_unknown_latency_name(monkeypatch):
    _with_definition(monkeypatch, spec.InstructionDef("bad", 0xFE, "none", None, "", "warp_speed * 2", HEADER))
    with pytest.raises(ValueError, match="warp_speed"):
        spec.validate_tables()


# Encoding round trip ---------------------------------------------------------------------------------
@pytest.mark.parametrize("mnemonic", MNEMONICS)
def test_decode_inverts_encode(mnemonic):
    definition = BY_MNEMONIC[mnemonic]
    for seed in range(CASES_PER_OPCODE):
        rng = random.Random(f"{mnemonic}/{seed}")
        values = random_fields(definition, rng)
        instruction = Instruction(mnemonic, **values)
        word = encode(instruction)
        assert len(word) == INSTRUCTION_BYTES
        assert word[0] == definition.opcode
        decoded = decode(word)
        assert decoded == instruction, f"{mnemonic} seed {seed}: {values}"
        assert encode(decoded) == word, f"{mnemonic} seed {seed}"
        for name, value in values.items():
            if isinstance(value, float):
                assert struct.pack("<f", decoded[name]) == struct.pack("<f", value), f"{mnemonic}.{name} seed {seed}"
            else:
                assert decoded[name] == value, f"{mnemonic}.{name} seed {seed}"


@pytest.mark.parametrize("mnemonic", MNEMONICS)
def test_missing_fields_take_their_defaults(mnemonic):
    definition = BY_MNEMONIC[mnemonic]
    instruction = Instruction(mnemonic)
    for f in operand_fields(definition):
        expected = f.default
        assert instruction[f.name] == expected, f"{mnemonic}.{f.name}"
    assert decode(encode(instruction)) == instruction


def test_program_round_trip_and_error_names_the_index():
    rng = random.Random(7)
    program = [Instruction(m, **random_fields(BY_MNEMONIC[m], rng)) for m in MNEMONICS]
    data = encode_program(program)
    assert len(data) == len(program) * INSTRUCTION_BYTES
    assert decode_program(data) == program
    broken = bytearray(data)
    broken[5 * INSTRUCTION_BYTES] = 0x00  # opcode 0 is not an instruction
    with pytest.raises(EncodingError, match="instruction 5: unknown opcode 0x00"):
        decode_program(bytes(broken))
    with pytest.raises(EncodingError, match="multiple of 32"):
        decode_program(data[:-1])


def test_float_immediates_are_rounded_to_fp32():
    instruction = Instruction("vaddi", dtype=DType.F32, imm=0.1)
    assert instruction["imm"] == float(np.float32(0.1))
    assert decode(encode(instruction))["imm"] == float(np.float32(0.1))
    bf16 = Instruction("vfill", dtype=DType.BF16, imm=-2.5)
    assert decode(encode(bf16))["imm"] == -2.5


def test_nan_immediate_stays_nan():
    decoded = decode(encode(Instruction("vfill", dtype=DType.F32, imm=math.nan)))
    assert math.isnan(decoded["imm"])


@pytest.mark.parametrize("dtype", [DType.I8, DType.U8, DType.I32])
def test_integer_immediates_are_twos_complement(dtype):
    for value in (-(2**31), -1, 0, 1, 2**31 - 1):
        instruction = Instruction("vmuli", dtype=dtype, imm=value)
        word = int.from_bytes(encode(instruction), "little")
        imm_field = next(f for f in BY_MNEMONIC["vmuli"].fields if f.name == "imm")
        assert (word >> imm_field.lo) & 0xFFFFFFFF == value & 0xFFFFFFFF
        assert decode(encode(instruction))["imm"] == value


# Values that do not fit --------------------------------------------------------------------------------
@pytest.mark.parametrize("mnemonic", MNEMONICS)
def test_value_too_wide_names_its_field(mnemonic):
    definition = BY_MNEMONIC[mnemonic]
    for f in operand_fields(definition):
        if f.kind not in (FieldKind.UINT, FieldKind.SEM, FieldKind.FLAG):
            continue
        for value in (1 << f.width, (1 << f.width) + 12345, -1):
            with pytest.raises(EncodingError) as info:
                encode(Instruction(mnemonic, **{f.name: value}))
            assert f"field '{f.name}': {value} does not fit in {f.width} bits" in str(info.value), str(info.value)
        encode(Instruction(mnemonic, **{f.name: (1 << f.width) - 1}))  # the largest value fits


def test_huge_value_is_refused_with_a_short_message():
    with pytest.raises(EncodingError, match="field 'dst'"):
        encode(Instruction("vadd", dst=1 << 100_000))


def test_documented_example_message():
    with pytest.raises(EncodingError, match=r"^field 'dst': 67108864 does not fit in 26 bits$"):
        encode(Instruction("vadd", dst=1 << 26))


@pytest.mark.parametrize("value", [2**31, -(2**31) - 1, 2**40])
def test_integer_immediate_out_of_int32_names_the_field(value):
    with pytest.raises(EncodingError, match=f"field 'imm': {value} does not fit in 32 bits"):
        encode(Instruction("vaddi", dtype=DType.I32, imm=value))


@pytest.mark.parametrize(("mnemonic", "values", "message"), [
    ("vadd", {"dtype": len(DType)}, "field 'dtype'"),
    ("vcvt", {"src_dtype": len(DType)}, "field 'src_dtype'"),
    ("sync", {"engine": 4}, "field 'engine'"),
    ("dma_load", {"esize": 3}, "field 'esize'"),
    ("dma_load", {"esize": 8}, "field 'esize'"),
    ("dma_load", {"dram": 1.5}, "field 'dram'"),
    ("dma_load", {"n0": True}, "field 'n0'"),
    ("vaddi", {"dtype": DType.I32, "imm": 1.5}, "field 'imm'"),
    ("vaddi", {"dtype": DType.F32, "imm": "x"}, "field 'imm'"),
    ("vadd", {"imm": 1}, "no field 'imm'"),
    ("nop", {}, "unknown instruction 'nop'"),
])
def test_invalid_field_values_are_refused(mnemonic, values, message):
    with pytest.raises(EncodingError, match=message):
        encode(Instruction(mnemonic, **values))


def test_replaced_changes_only_the_fields_given_and_checks_them():
    original = Instruction("vaddi", dtype=DType.I32, dst=64, a=128, rows=2, cols=3, imm=-5)
    moved = original.replaced(dst=np.int64(256))
    assert moved == Instruction("vaddi", dtype=DType.I32, dst=256, a=128, rows=2, cols=3, imm=-5)
    assert type(moved["dst"]) is int and original["dst"] == 64
    assert original.replaced(imm=7.0)["imm"] == 7  # made canonical by the instruction's dtype
    with pytest.raises(EncodingError, match=r"^field 'dst': 67108864 does not fit in 26 bits$"):
        original.replaced(dst=1 << 26)
    with pytest.raises(EncodingError, match="no field 'dram'"):
        original.replaced(dram=0)


# Decoder refusals ----------------------------------------------------------------------------------------
def _word(opcode: int, **bits) -> int:
    """An instruction word with `opcode` and raw field bits (name -> raw value)."""
    word = opcode
    for f in BY_OPCODE[opcode].fields:
        if f.name in bits:
            word |= bits[f.name] << f.lo
    return word


def _bytes(word: int) -> bytes:
    return word.to_bytes(INSTRUCTION_BYTES, "little")


def test_decode_refuses_unknown_opcodes():
    unknown = [op for op in range(256) if op not in BY_OPCODE]
    assert 0 in unknown
    for opcode in unknown:
        with pytest.raises(EncodingError, match=f"unknown opcode {opcode:#04x}"):
            decode(bytes([opcode]) + bytes(INSTRUCTION_BYTES - 1))


@pytest.mark.parametrize("mnemonic", [d.mnemonic for d in INSTRUCTIONS
                                      if any(f.kind is FieldKind.DTYPE for f in d.fields)])
def test_decode_refuses_invalid_dtype_codes(mnemonic):
    definition = BY_MNEMONIC[mnemonic]
    for f in definition.fields:
        if f.kind is not FieldKind.DTYPE:
            continue
        for code in range(1 << f.width):
            word = _bytes(_word(definition.opcode, **{f.name: code}))
            if code < len(DType):  # every defined code decodes to its dtype ...
                assert decode(word)[f.name] is DType(code)
            else:  # ... and a code no dtype has is refused
                with pytest.raises(EncodingError, match=f"{mnemonic}: field '{f.name}': {code} is not a dtype"):
                    decode(word)


def test_decode_refuses_esize_code_3():
    for mnemonic in ("dma_load", "dma_store"):
        with pytest.raises(EncodingError, match="field 'esize'"):
            decode(_bytes(_word(BY_MNEMONIC[mnemonic].opcode, esize=3)))


@pytest.mark.parametrize("mnemonic", MNEMONICS)
def test_decode_refuses_every_reserved_bit(mnemonic):
    definition = BY_MNEMONIC[mnemonic]
    used = 0
    for f in definition.fields:
        used |= ((1 << f.width) - 1) << f.lo
    valid = encode(Instruction(mnemonic))
    reserved = [bit for bit in range(INSTRUCTION_BITS) if not used >> bit & 1]
    for bit in reserved:
        with pytest.raises(EncodingError, match=f"{mnemonic}: reserved bits are set"):
            decode(_bytes(int.from_bytes(valid, "little") | 1 << bit))


@pytest.mark.parametrize("length", [0, 31, 33, 64])
def test_decode_refuses_wrong_length(length):
    with pytest.raises(EncodingError, match="32 bytes"):
        decode(bytes([0x01]) + bytes(length - 1) if length else b"")


def test_any_32_bytes_decode_or_raise_encoding_error():
    rng = random.Random(2024)
    for case in range(3000):
        opcode = rng.choice(list(BY_OPCODE)) if case % 2 else rng.getrandbits(8)
        mask = 0
        for f in BY_OPCODE.get(opcode, BY_OPCODE[0x01]).fields:
            mask |= ((1 << f.width) - 1) << f.lo
        word = (rng.getrandbits(INSTRUCTION_BITS) & (mask if case % 4 < 2 else ~0)) & ~0xFF | opcode
        try:
            instruction = decode(_bytes(word))
        except EncodingError:
            continue
        if isinstance(instruction.fields.get("imm"), float) and math.isnan(instruction["imm"]):
            continue  # a NaN's payload is not kept through a Python float
        assert encode(instruction) == _bytes(word), f"case {case}"


# Latency formulas ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("mnemonic", MNEMONICS)
def test_latency_formula_evaluates_for_every_preset(mnemonic):
    definition = BY_MNEMONIC[mnemonic]
    rng = random.Random(mnemonic)
    for _ in range(20):
        values = random_fields(definition, rng)
        if definition.engine is Engine.MATRIX:
            values["dtype"] = rng.choice(MATRIX_DTYPES)
        instruction = Instruction(mnemonic, **values)
        for config in PRESETS.values():
            latency = instruction_latency(instruction, config)
            assert isinstance(latency, int) and latency >= 0, f"{mnemonic} on {config.name}: {latency}"


# Assembly round trip ------------------------------------------------------------------------------------
def _asm_value(f, value) -> str:
    if f.kind is FieldKind.DTYPE:
        return value.asm_name
    if f.kind is FieldKind.ENGINE:
        return value.name.lower()
    if f.kind is FieldKind.IMM32:
        return repr(float(value)) if isinstance(value, float) else str(value)
    return hex(value) if f.name in ("dram", "local", "addr", "dst") else str(value)


def _asm_line(mnemonic: str, values: dict) -> str:
    fields = {f.name: f for f in BY_MNEMONIC[mnemonic].fields}
    return " ".join([mnemonic] + [f"{name}={_asm_value(fields[name], v)}" for name, v in values.items()])


ROUND_TRIP_HEADER = """\
; every directive and every mnemonic
.equ   ROWS, 4
.equ   TILE, ARRAY_ROWS * ROWS      ; config symbols are predefined
.input  X dram=0x0 shape=(8, 16) dtype=i8 scale=(0.5,) zero_point=(3,)
.input  Y dram=0x100 shape=(16,) dtype=f32
.input  Q dram=0x200 shape=(2, 3) dtype=u8 scale=(0.25, 0.125, 2.0) zero_point=(1, 2, 3) axis=1
.output Z dram=0x300 shape=(4, 4) dtype=bf16
.output W dram=0x400 shape=(2, 2, 2) dtype=i32
.const  S dram=0x1000 dtype=f32 values=(0.5, -0.25, 1e-3, 7)
.const  F dram=0x1100 dtype=i8 fill=-3 shape=(2, 5)
.const  H dram=0x1200 hex="00ff10ee"
.dram   0x20000
.node   prologue
dma_load dram=TILE local=0x40 esize=1 n0=ROWS*2 signal=1
.for i in 0..3
  vaddi dtype=i32 dst=ACC_BASE+i*16 a=i*(8+8) imm=-i rows=1 cols=4 wait=1
.endfor
.node "body part"
"""


def _round_trip_source(seed: int):
    """Assembly text using every directive and every mnemonic, and the instructions it must give."""
    rng = random.Random(seed)
    config = PRESETS["edge"]
    lines = [ROUND_TRIP_HEADER]
    expected = [Instruction("dma_load", dram=config.array_rows * 4, local=0x40, esize=1, n0=8, signal=1)]
    expected += [Instruction("vaddi", dtype=DType.I32, dst=config.acc_base + i * 16, a=i * 16, imm=-i, rows=1,
                             cols=4, wait=1) for i in range(3)]
    for index, mnemonic in enumerate(MNEMONICS * 2):
        if index == len(MNEMONICS):
            lines.append('.node ""')  # instructions outside any node
        if mnemonic == "end":
            continue
        values = random_fields(BY_MNEMONIC[mnemonic], rng)
        lines.append(_asm_line(mnemonic, values))
        expected.append(Instruction(mnemonic, **values))
    lines += [".node epilogue", "sync engine=store wait=2 signal=3", "end", "end  ; after the first end"]
    expected += [Instruction("sync", engine=Engine.STORE, wait=2, signal=3), Instruction("end"), Instruction("end")]
    return "\n".join(lines) + "\n", expected


@pytest.mark.parametrize("seed", range(5))
def test_asm_bin_disasm_asm_round_trip(seed):
    from isa.binfile import from_bytes, to_bytes

    config = PRESETS["edge"]
    text, expected = _round_trip_source(seed)
    program = assemble(text, config, source=f"round_trip_{seed}.s")
    assert program.instructions == expected
    assert {i.mnemonic for i in program.instructions} == set(MNEMONICS)

    # The I/O table, constants and debug ranges as written.
    assert program.inputs == [
        TensorInfo("X", (8, 16), DType.I8, 0x0, (0.5,), (3,)),
        TensorInfo("Y", (16,), DType.F32, 0x100),
        TensorInfo("Q", (2, 3), DType.U8, 0x200, (0.25, 0.125, 2.0), (1, 2, 3), 1),
    ]
    assert program.outputs == [TensorInfo("Z", (4, 4), DType.BF16, 0x300),
                               TensorInfo("W", (2, 2, 2), DType.I32, 0x400)]
    assert program.constants == [
        Constant(0x1000, np.array([0.5, -0.25, 1e-3, 7], np.float32).tobytes(), "S"),
        Constant(0x1100, np.full(10, -3, np.int8).tobytes(), "F"),
        Constant(0x1200, bytes.fromhex("00ff10ee"), "H"),
    ]
    body_end = 4 + len(MNEMONICS) - 1
    assert program.debug == [DebugRange(0, 4, "prologue"), DebugRange(4, body_end, "body part"),
                             DebugRange(len(expected) - 3, len(expected), "epilogue")]
    assert program.dram_bytes == 0x20000

    # asm -> bin -> disasm -> asm
    restored = from_bytes(to_bytes(program))
    assert decode_program(encode_program(program.instructions)) == program.instructions
    text_again = disassemble(restored)
    again = assemble(text_again, config, source="disassembly.s")
    assert again.instructions == program.instructions
    assert [encode(i) for i in again.instructions] == [encode(i) for i in program.instructions]
    assert again.inputs == program.inputs
    assert again.outputs == program.outputs
    assert [(c.dram, c.data, c.name) for c in again.constants] == [(c.dram, c.data, c.name) for c in program.constants]
    assert again.debug == program.debug
    assert again.dram_bytes == program.dram_bytes
    assert disassemble(again) == text_again  # the disassembly is a fixed point


def test_disassembled_instruction_reassembles():
    rng = random.Random(11)
    config = PRESETS["tiny"]
    for mnemonic in MNEMONICS:
        for _ in range(20):
            instruction = Instruction(mnemonic, **random_fields(BY_MNEMONIC[mnemonic], rng))
            line = disassemble_instruction(instruction)
            assert assemble(f"{line}\nend\n", config).instructions[0] == instruction, line


def test_assembler_symbols_and_loops():
    config = PRESETS["tiny"]
    program = assemble("""
        .equ N, 3
        .for i in 0..N
          .for j in 1..3
            vfill dtype=i32 dst=(i << 4) + j imm=i*10+j-(7//2)%2 rows=ARRAY_ROWS/4 cols=SPAD_BYTES>>12
          .endfor
        .endfor
        vfill dtype=f32 dst=ACC_BASE imm=-inf rows=1 cols=1
        end
    """, config)
    fills = program.instructions[:-2]
    assert [(i["dst"], i["imm"]) for i in fills] == [((a << 4) + b, a * 10 + b - 1) for a in range(3) for b in (1, 2)]
    assert all(i["rows"] == 2 and i["cols"] == 4 for i in fills)
    assert program.instructions[-2]["dst"] == config.acc_base and program.instructions[-2]["imm"] == -math.inf


@pytest.mark.parametrize(("expression", "value"), [
    ("1 + 2 * 3", 7), ("(1 + 2) * 3", 9), ("-4 + 1", -3), ("+5", 5), ("7 // 2", 3), ("7 % 4", 3),
    ("12 / 4", 3), ("1 << 4", 16), ("256 >> 4 >> 1", 8), ("0x10 + 0b11", 19), ("2 - 3 - 4", -5),
    ("1 | 2", 3), ("6 & 3", 2), ("1 | 2 | 4", 7), ("7 & 6 & 4", 4), ("(1 << 4) | 2", 18), ("1 | 6 & 3", 3),
    ("ARRAY_ROWS * 2 + ACC_BASE", 8 * 2 + 16384),
])
def test_assembler_expressions(expression, value):
    """Integer operators with the grammar's precedence: | below &, below shifts, below + -, below * / // %."""
    program = assemble(f"vfill dtype=i32 imm={expression} rows=1 cols=1\nend\n", PRESETS["tiny"])
    assert program.instructions[0]["imm"] == value


def test_defines_override_equ():
    program = assemble(".equ N, 3\nvfill dtype=i32 imm=N rows=1 cols=1\nend\n", PRESETS["tiny"], defines={"N": 9})
    assert program.instructions[0]["imm"] == 9


# Assembler errors name the line ---------------------------------------------------------------------------
ASSEMBLER_ERRORS = {
    "unknown mnemonic": ("end\nend\nfrobnicate x=1\nend\n", 3, "unknown instruction 'frobnicate'"),
    "unknown field": ("vadd dtype=f32\nvadd dtyp=3\nend\n", 2, "no field 'dtyp'"),
    "unknown field with an enum value": ("vadd dtype=f32\nvadd dtyp=f32\nend\n", 2, "'dtyp'"),
    "unknown symbol": ("\n\nvfill dtype=i32 imm=UNDEFINED_THING rows=1 cols=1\nend\n", 3,
                       "unknown symbol 'UNDEFINED_THING'"),
    "unknown dtype": ("vadd dtype=float99\nend\n", 1, "unknown dtype 'float99'"),
    "unknown engine": ("sync engine=warp\nend\n", 1, "unknown symbol 'warp'"),
    "syntax error: unclosed parenthesis": ("end\nvadd dtype=f32 dst=(1 +\nend\n", 2, "syntax error"),
    "syntax error: stray =": ("vadd dtype=f32 = 3\nend\n", 1, "syntax error"),
    ".for without .endfor": ("end\n.for i in 0..2\nend\n", 2, ".for without .endfor"),
    ".endfor without .for": ("end\n\n.endfor\nend\n", 3, ".endfor without .for"),
    "value too wide": ("vadd dst=1 << 26\nend\n", 1, "field 'dst'"),
    "float for an integer immediate": ("vaddi dtype=i32 imm=1.5 rows=1 cols=1\nend\n", 1, "field 'imm'"),
    "field given twice": ("vadd dst=1 dst=2\nend\n", 1, "'dst' given twice"),
    "division by zero": ("vadd dst=1 // 0\nend\n", 1, "division by zero"),
    "tensor without shape": (".input A dram=0 dtype=i8\nend\n", 1, "needs dram=, shape=, dtype="),
    "constant with bad hex": ("end\n.const C dram=0 hex=\"zz\"\nend\n", 2, "not hexadecimal"),
}


@pytest.mark.parametrize("case", list(ASSEMBLER_ERRORS))
def test_assembler_errors_name_the_line(case):
    text, line, message = ASSEMBLER_ERRORS[case]
    with pytest.raises(AssemblyError) as info:
        assemble(text, PRESETS["edge"], source="prog.s")
    text_of_error = str(info.value)
    assert text_of_error.startswith(f"prog.s:{line}:"), text_of_error
    assert message in text_of_error, text_of_error


BAD_DIRECTIVES = {
    "input dram a name": "end\n.input A dram=foo shape=(2,) dtype=i8\nend\n",
    "input shape a string": "end\n.input A dram=0 shape=\"x\" dtype=i8\nend\n",
    "input shape negative": "end\n.input A dram=0 shape=(-1,) dtype=i8\nend\n",
    "output scale a name": "end\n.output O dram=0 shape=(1,) dtype=i8 scale=foo zero_point=0\nend\n",
    "output axis a name": "end\n.output O dram=0 shape=(4,) dtype=i8 axis=foo\nend\n",
    "const hex a number": "end\n.const C dram=0 hex=5\nend\n",
    "const dram a string": "end\n.const C dram=\"x\" dtype=i8 values=(1,)\nend\n",
    "const fill shape a float": "end\n.const C dram=0 dtype=i8 fill=1 shape=(2.5,)\nend\n",
    "field value of 100,000 bits": "end\nvadd dst=1 << 100000\nend\n",
}


@pytest.mark.parametrize("case", list(BAD_DIRECTIVES))
def test_bad_directive_operands_are_assembly_errors(case):
    """Wrong kinds of values in directives are the user's mistake: an AssemblyError naming the line
    (line 2 in each case), never a ValueError or TypeError, and never a program that model.bin
    cannot hold."""
    with pytest.raises(AssemblyError, match="^prog.s:2:"):
        assemble(BAD_DIRECTIVES[case], PRESETS["edge"], source="prog.s")


def test_program_must_finish_with_end():
    with pytest.raises(AssemblyError, match="must finish with 'end'"):
        assemble("vadd dtype=f32\n", PRESETS["edge"])
    with pytest.raises(AssemblyError, match="must finish with 'end'"):
        assemble("", PRESETS["edge"])


def test_assembly_error_is_a_user_error():
    assert issubclass(AssemblyError, AccError) and issubclass(EncodingError, AccError)


# The generated specification ------------------------------------------------------------------------------
def test_spec_md_is_up_to_date():
    on_disk = specdoc.SPEC_PATH.read_text()
    assert on_disk == specdoc.render(), (
        "isa/SPEC.md is stale: it differs from what isa/spec.py generates. Run `python -m isa.specdoc` and commit it."
    )


def test_spec_md_lists_every_instruction_and_field():
    text = specdoc.render()
    for definition in INSTRUCTIONS:
        assert f"| `{definition.mnemonic}` | `{definition.opcode:#04x}` |" in text
        assert f"`{definition.latency}`" in text
    for fields in spec.FORMATS.values():
        for f in fields:
            bits = f"{f.hi}..{f.lo}" if f.hi != f.lo else f"{f.lo}"
            assert f"| `{f.name}` | {bits} | {f.kind.value} |" in text
