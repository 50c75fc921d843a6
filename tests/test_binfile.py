"""Tests of model.bin (isa/binfile.py): round trip, determinism, refusals and a seeded fuzz.

The fuzz takes a real program (a small int8 GEMM with requantization, assembled below),
mutates its bytes in seeded ways and demands that every mutant either loads and runs to
completion in the simulator, or raises an AccError. Half of the mutants get a fresh
SHA-256 so that they pass the checksum and reach the deeper checks: the section table,
the JSON sections, instruction decode, the I/O table, the constants and the simulator.
A failure message names the mutation kind and seed; `mutate(VALID, kind, seed)`
rebuilds the mutant.
"""

from __future__ import annotations

import hashlib
import json
import random
import resource
import signal
import struct
import time
import traceback
from contextlib import contextmanager

import numpy as np
import pytest

from isa import binfile
from isa.assembly import assemble
from isa.config import PRESETS
from isa.errors import AccError, BinaryFormatError
from isa.spec import BY_OPCODE, INSTRUCTION_BYTES
from runtime.simulator import prepare_inputs, run

# An int8 GEMM, Y = requantize(A @ W), on the tiny chip: A (16x8) is an input, W (8x8),
# the per-column scales S and zero points Z are constants; both the int32 accumulator
# and the int8 result are outputs. E gathers rows IDS of W (an embedding lookup), so the
# fuzz also reaches the index-driven DMA.
M, K, N = 16, 8, 8
RNG = np.random.default_rng(1234)
W_VALUES = RNG.integers(-128, 128, size=(K, N))
S_VALUES = np.array([0.01, 0.02, 0.03, 0.05, 0.07, 0.11, 0.13, 0.17])
Z_VALUES = np.array([0, 1, -1, 2, -2, 3, -3, 4])
IDS_VALUES = np.array([3, 0, 7, 3])


def _tuple(values) -> str:
    return "(" + ", ".join(str(v) for v in np.asarray(values).reshape(-1).tolist()) + ")"


GEMM_SOURCE = f"""
; int8 GEMM with per-column requantization, for the tiny preset
.input  A dram=0x0 shape=({M}, {K}) dtype=i8 scale=(0.5,) zero_point=(0,)
.const  W dram=0x100 dtype=i8 values={_tuple(W_VALUES)}
.const  S dram=0x140 dtype=f32 values={_tuple(S_VALUES)}
.const  Z dram=0x160 dtype=i32 values={_tuple(Z_VALUES)}
.const  IDS dram=0x180 dtype=i32 values={_tuple(IDS_VALUES)}
.output ACC dram=0x200 shape=({M}, {N}) dtype=i32
.output Y dram=0x400 shape=({M}, {N}) dtype=i8 scale=(0.25,) zero_point=(1,)
.output E dram=0x500 shape=({len(IDS_VALUES)}, {N}) dtype=i8
.node load
dma_load dram=0x0 local=0x0 esize=1 n0={K} n1={M} ds1={K} ls1={K} signal=1
dma_load dram=0x100 local=0x100 esize=1 n0={K * N} signal=2
dma_load dram=0x140 local=0x200 esize=4 n0=16 signal=4
dma_load dram=0x180 local=0x240 esize=4 n0={len(IDS_VALUES)}
dma_gather dram=0x100 local=0x280 index=0x240 rows={len(IDS_VALUES)} n0={N} ds1={N} ls1={N} limit={K} signal=6
.node gemm
load_weights dtype=i8 addr=0x100 k={K} n={N} stride={N} wait=2
matmul dtype=i8 a=0x0 a_rs={K} m={M} c=ACC_BASE c_rs={N} wait=1 signal=3
.node requantize
sync engine=vector wait=4
vreq dtype=i8 dst=0x300 dst_rs={N} a=ACC_BASE a_rs={N} b=0x200 b_rs=0 c=0x220 c_rs=0 rows={M} cols={N} wait=3 signal=5
.node store
dma_store dram=0x200 local=ACC_BASE esize=4 n0={M * N} wait=5
dma_store dram=0x400 local=0x300 esize=1 n0={M * N}
dma_store dram=0x500 local=0x280 esize=1 n0={len(IDS_VALUES) * N} wait=6
end
"""


def gemm_program():
    program = assemble(GEMM_SOURCE, PRESETS["tiny"], source="gemm_int8.s")
    program.host_steps = ["argmax over Y"]
    return program


VALID = binfile.to_bytes(gemm_program())
DRAM_BYTES = gemm_program().dram_bytes


def reference_outputs(a: np.ndarray) -> dict[str, np.ndarray]:
    acc = a.astype(np.int64) @ W_VALUES
    scaled = (acc.astype(np.float32) * S_VALUES.astype(np.float32)).astype(np.float64)
    y = np.clip(np.rint(scaled) + Z_VALUES, -128, 127)
    return {"ACC": acc.astype(np.int32), "Y": y.astype(np.int8), "E": W_VALUES[IDS_VALUES].astype(np.int8)}


# The file layout, as the docstring of isa/binfile.py gives it --------------------------------------------
HEADER = struct.Struct("<8sII")
SECTION = struct.Struct("<IIQQ")
CHECKSUM_BYTES = 32
KIND_CONFIG, KIND_INSTRUCTIONS, KIND_META, KIND_CONSTANTS, KIND_DEBUG = 1, 2, 3, 4, 5
JSON_KINDS = (KIND_CONFIG, KIND_META, KIND_DEBUG)


def with_checksum(body: bytes) -> bytes:
    return body + hashlib.sha256(body).digest()


def split_sections(data: bytes) -> list[tuple[int, bytes]]:
    _, _, count = HEADER.unpack_from(data)
    sections = []
    for index in range(count):
        kind, _, offset, size = SECTION.unpack_from(data, HEADER.size + index * SECTION.size)
        sections.append((kind, data[offset:offset + size]))
    return sections


def build_file(sections: list[tuple[int, bytes]], magic: bytes = b"ACCMODEL", version: int = 1) -> bytes:
    """A model.bin with a consistent section table and checksum around any payloads."""
    offset = HEADER.size + SECTION.size * len(sections)
    table = b""
    for kind, payload in sections:
        table += SECTION.pack(kind, 0, offset, len(payload))
        offset += len(payload)
    return with_checksum(HEADER.pack(magic, version, len(sections)) + table + b"".join(p for _, p in sections))


def replace_section(data: bytes, kind: int, payload: bytes) -> bytes:
    return build_file([(k, payload if k == kind else p) for k, p in split_sections(data)])


def replace_json(data: bytes, kind: int, edit) -> bytes:
    sections = dict(split_sections(data))
    value = json.loads(sections[kind])
    value = edit(value) or value
    return replace_section(data, kind, json.dumps(value).encode())


def test_layout_helpers_rebuild_the_writer_output():
    assert build_file(split_sections(VALID)) == VALID
    assert [kind for kind, _ in split_sections(VALID)] == [1, 2, 3, 4, 5]


# Round trip and determinism ------------------------------------------------------------------------------
def test_save_load_round_trip(tmp_path):
    program = gemm_program()
    path = tmp_path / "model.bin"
    binfile.save(program, path)
    loaded = binfile.load(path)
    assert loaded == program
    assert loaded.config == PRESETS["tiny"]
    assert loaded.instructions == program.instructions
    assert loaded.inputs == program.inputs and loaded.outputs == program.outputs
    assert loaded.constants == program.constants
    assert loaded.debug == program.debug
    assert loaded.dram_bytes == program.dram_bytes
    assert loaded.host_steps == ["argmax over Y"]
    assert path.read_bytes() == VALID
    assert [p.name for p in tmp_path.iterdir()] == ["model.bin"]  # no temporary file left behind


def test_loaded_program_runs_and_computes_the_gemm():
    program = binfile.from_bytes(VALID)
    result = run(program, check_hazards=True)
    a = prepare_inputs(program, None)["A"]
    expected = reference_outputs(a)
    np.testing.assert_array_equal(result.outputs["ACC"], expected["ACC"])
    np.testing.assert_array_equal(result.outputs["Y"], expected["Y"])
    np.testing.assert_array_equal(result.outputs["E"], expected["E"])
    assert result.hazards == []
    assert result.stats["macs"] == M * K * N


def test_same_program_gives_identical_bytes(tmp_path):
    first, second = gemm_program(), gemm_program()
    assert binfile.to_bytes(first) == binfile.to_bytes(second)
    binfile.save(first, tmp_path / "a.bin")
    binfile.save(second, tmp_path / "b.bin")
    assert (tmp_path / "a.bin").read_bytes() == (tmp_path / "b.bin").read_bytes()
    assert binfile.to_bytes(binfile.from_bytes(VALID)) == VALID  # a loaded program writes the same file


def test_save_replaces_an_existing_file(tmp_path):
    path = tmp_path / "model.bin"
    path.write_bytes(b"old contents")
    binfile.save(gemm_program(), path)
    assert path.read_bytes() == VALID


def test_save_into_missing_directory_is_a_user_error(tmp_path):
    with pytest.raises(AccError, match="does not exist"):
        binfile.save(gemm_program(), tmp_path / "no" / "such" / "model.bin")


# Refusals -------------------------------------------------------------------------------------------
def test_bad_magic():
    with pytest.raises(BinaryFormatError, match="bad magic"):
        binfile.from_bytes(b"ACCM0DEL" + VALID[8:])
    with pytest.raises(BinaryFormatError, match="bad magic"):
        binfile.from_bytes(with_checksum(b"\x7fELF\x02\x01\x01\x00" + VALID[8:-CHECKSUM_BYTES]))


@pytest.mark.parametrize("version", [0, 2, 7, 0xFFFFFFFF])
def test_unknown_format_version_is_named(version):
    body = bytearray(VALID[:-CHECKSUM_BYTES])
    struct.pack_into("<I", body, 8, version)
    with pytest.raises(BinaryFormatError, match=f"version {version}\\b"):
        binfile.from_bytes(with_checksum(bytes(body)))


@pytest.mark.parametrize("length", [0, 1, 7, 8, 15, 16, 47, 100, len(VALID) // 2, len(VALID) - 32, len(VALID) - 1])
def test_truncated_file(length):
    with pytest.raises(BinaryFormatError):
        binfile.from_bytes(VALID[:length])


def test_checksum_mismatch():
    for position in (20, len(VALID) // 2, len(VALID) - 40, len(VALID) - 1):
        corrupt = bytearray(VALID)
        corrupt[position] ^= 0x01
        with pytest.raises(BinaryFormatError, match="checksum"):
            binfile.from_bytes(bytes(corrupt))


def test_bytes_appended_after_the_checksum():
    with pytest.raises(BinaryFormatError):
        binfile.from_bytes(VALID + b"\x00")


def test_missing_file_and_directory(tmp_path):
    with pytest.raises(BinaryFormatError, match="does not exist"):
        binfile.load(tmp_path / "missing.bin")
    with pytest.raises(BinaryFormatError, match="directory"):
        binfile.load(tmp_path)


# Deeper refusals: consistent checksum, inconsistent contents -----------------------------------------------
def _drop_section(kind):
    return build_file([(k, p) for k, p in split_sections(VALID) if k != kind])


def _repeat_section(kind):
    sections = split_sections(VALID)
    return build_file(sections + [(kind, dict(sections)[kind])])


def _set_meta(key, value):
    return replace_json(VALID, KIND_META, lambda meta: meta.__setitem__(key, value))


def _set_tensor(key, value, which="inputs"):
    return replace_json(VALID, KIND_META, lambda meta: meta[which][0].__setitem__(key, value))


def _set_constant(key, value):
    return replace_json(VALID, KIND_META, lambda meta: meta["constants"][0].__setitem__(key, value))


def _set_config(key, value):
    return replace_json(VALID, KIND_CONFIG, lambda config: config.__setitem__(key, value))


def _instructions(edit):
    sections = dict(split_sections(VALID))
    words = [sections[KIND_INSTRUCTIONS][i:i + INSTRUCTION_BYTES]
             for i in range(0, len(sections[KIND_INSTRUCTIONS]), INSTRUCTION_BYTES)]
    return replace_section(VALID, KIND_INSTRUCTIONS, b"".join(edit(words)))


def _table_entry(index, field, value):
    body = bytearray(VALID[:-CHECKSUM_BYTES])
    offset = HEADER.size + index * SECTION.size + {"kind": 0, "zero": 4, "offset": 8, "size": 16}[field]
    struct.pack_into("<I" if field in ("kind", "zero") else "<Q", body, offset, value)
    return with_checksum(bytes(body))


INCONSISTENT = {
    "section missing": lambda: _drop_section(KIND_DEBUG),
    "section repeated": lambda: _repeat_section(KIND_META),
    "unknown section kind": lambda: _table_entry(2, "kind", 9),
    "nonzero reserved word": lambda: _table_entry(0, "zero", 1),
    "section offset past the end": lambda: _table_entry(4, "offset", 1 << 40),
    "section size past the end": lambda: _table_entry(4, "size", 1 << 63),
    "section overlap": lambda: _table_entry(1, "offset", HEADER.size + 5 * SECTION.size),
    "trailing bytes": lambda: with_checksum(VALID[:-CHECKSUM_BYTES] + b"junk"),
    "config not JSON": lambda: replace_section(VALID, KIND_CONFIG, b"{not json"),
    "config not UTF-8": lambda: replace_section(VALID, KIND_CONFIG, b'{"name": "\xff"}'),
    "config impossible": lambda: _set_config("spad_bytes", 3000),
    "config unknown field": lambda: _set_config("warp_drive", 1),
    "config a list": lambda: replace_section(VALID, KIND_CONFIG, b"[1, 2, 3]"),
    "config base a list": lambda: _set_config("base", ["tiny"]),
    "config huge integer": lambda: replace_section(VALID, KIND_CONFIG, b'{"base": "tiny", "dma_latency": '
                                                   + b"7" * 5000 + b"}"),
    "config deeply nested": lambda: replace_section(VALID, KIND_CONFIG, b"[" * 100_000 + b"]" * 100_000),
    "instructions not whole": lambda: replace_section(VALID, KIND_INSTRUCTIONS,
                                                      dict(split_sections(VALID))[KIND_INSTRUCTIONS][:-1]),
    "instructions empty": lambda: replace_section(VALID, KIND_INSTRUCTIONS, b""),
    "no end": lambda: _instructions(lambda words: words[:-1]),
    "unknown opcode": lambda: _instructions(lambda words: [b"\xee" + words[0][1:]] + words[1:]),
    "reserved bit": lambda: _instructions(lambda words: words[:-1] + [words[-1][:-1] + b"\x80"]),
    "meta not JSON": lambda: replace_section(VALID, KIND_META, b"\x00"),
    "meta a list": lambda: replace_section(VALID, KIND_META, b"[]"),
    "meta key missing": lambda: replace_json(VALID, KIND_META, lambda meta: meta.pop("host_steps")),
    "meta extra key": lambda: _set_meta("extra", 1),
    "dram_bytes negative": lambda: _set_meta("dram_bytes", -1),
    "dram_bytes past config": lambda: _set_meta("dram_bytes", (1 << 32) + 1),
    "dram_bytes a float": lambda: _set_meta("dram_bytes", 1024.0),
    "dram_bytes a bool": lambda: _set_meta("dram_bytes", True),
    "dram_bytes a string": lambda: _set_meta("dram_bytes", "1024"),
    "inputs not a list": lambda: _set_meta("inputs", {"A": 1}),
    "tensor not an object": lambda: _set_meta("outputs", [5]),
    "tensor unknown key": lambda: _set_tensor("layout", "nchw"),
    "tensor empty name": lambda: _set_tensor("name", ""),
    "tensor name a number": lambda: _set_tensor("name", 5),
    "duplicate tensor names": lambda: _set_tensor("name", "Y"),
    "shape not a list": lambda: _set_tensor("shape", 16),
    "shape negative": lambda: _set_tensor("shape", [-16, -8]),
    "shape too many dims": lambda: _set_tensor("shape", [1] * 9),
    "shape float": lambda: _set_tensor("shape", [16.0, 8]),
    "shape huge": lambda: _set_tensor("shape", [2**40, 2**40]),
    "dtype unknown": lambda: _set_tensor("dtype", "i4"),
    "dtype a number": lambda: _set_tensor("dtype", 2),
    "dtype a list": lambda: _set_tensor("dtype", ["i8"]),
    "tensor dram a string": lambda: _set_tensor("dram", "0"),
    "tensor dram negative": lambda: _set_tensor("dram", -8),
    "tensor dram misaligned": lambda: _set_tensor("dram", 0x202, "outputs"),
    "tensor past dram_bytes": lambda: _set_tensor("dram", DRAM_BYTES - 8, "outputs"),
    "tensor dram null": lambda: _set_tensor("dram", None),
    "scale not a list": lambda: _set_tensor("scale", 0.5),
    "scale length mismatch": lambda: _set_tensor("scale", [0.5, 0.25]),
    "scale a string": lambda: _set_tensor("scale", ["0.5"]),
    "scale huge integer": lambda: _set_tensor("scale", [10**400]),
    "zero point a float": lambda: _set_tensor("zero_point", [0.5]),
    "axis out of range": lambda: _set_tensor("axis", 2),
    "axis a string": lambda: _set_tensor("axis", "0"),
    "constant missing key": lambda: replace_json(VALID, KIND_META, lambda m: m["constants"][0].pop("name")),
    "constant past the section": lambda: _set_constant("size", 10_000),
    "constant past dram_bytes": lambda: _set_constant("dram", DRAM_BYTES - 8),
    "constant negative offset": lambda: _set_constant("offset", -1),
    "constant name a number": lambda: _set_constant("name", 1),
    "constants not a list": lambda: _set_meta("constants", None),
    "host step not a string": lambda: _set_meta("host_steps", [1]),
    "debug not JSON": lambda: replace_section(VALID, KIND_DEBUG, b"[[0, 1"),
    "debug not a list": lambda: replace_section(VALID, KIND_DEBUG, b'{"a": 1}'),
    "debug entry short": lambda: replace_section(VALID, KIND_DEBUG, b"[[0, 1]]"),
    "debug past the program": lambda: replace_section(VALID, KIND_DEBUG, b'[[0, 99, "x"]]'),
    "debug empty range": lambda: replace_section(VALID, KIND_DEBUG, b'[[3, 3, "x"]]'),
    "debug node a number": lambda: replace_section(VALID, KIND_DEBUG, b"[[0, 1, 5]]"),
}


@pytest.mark.parametrize("case", sorted(INCONSISTENT))
def test_inconsistent_contents_are_refused(case):
    data = INCONSISTENT[case]()
    assert data[-CHECKSUM_BYTES:] == hashlib.sha256(data[:-CHECKSUM_BYTES]).digest()
    with pytest.raises(BinaryFormatError):
        binfile.from_bytes(data)


def test_section_order_does_not_matter_but_must_be_contiguous():
    """The section table may list sections in any order, as long as payloads follow one another."""
    sections = split_sections(VALID)
    reordered = build_file(list(reversed(sections)))
    assert binfile.from_bytes(reordered) == binfile.from_bytes(VALID)


# Hostile but well-formed programs ----------------------------------------------------------------------
# Each stays inside memory by repeating elements through zero strides, so only the element count is
# extreme. Writing one element twice is refused by the simulator (a SimulationError); the program
# must be refused that way, without first materialising billions of element offsets.
HOSTILE = {
    "dma_store repeating one row 2^32 times": "dma_store dram=0x0 local=0x0 esize=4 n0=128 n1=65535 n2=65535",
    "dma_load repeating one row 2^32 times": "dma_load dram=0x0 local=0x0 esize=1 n0=8 n1=65535 n2=65535",
    "vector op over 65535 rows of one row": "vaddi dtype=i8 dst=0x0 a=0x0 rows=65535 cols=16384 imm=1",
    "vfill of 65535 identical rows": "vfill dtype=i8 dst=0x0 rows=65535 cols=16384 imm=1",
}


@pytest.mark.timeout(60)
@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_element_counts_are_simulation_errors(case):
    program = assemble(f".dram 0x1000\n{HOSTILE[case]}\nend\n", PRESETS["tiny"])
    data = binfile.to_bytes(program)
    with case_budget():
        with pytest.raises(AccError, match="more than once|overlap"):
            run(binfile.from_bytes(data))


# Fuzz ---------------------------------------------------------------------------------------------------
FUZZ_CASES = {"flip": 200, "truncate": 100, "splice": 300, "payload": 600}  # payload: half of the 1,200
CASE_CPU_SECONDS = 5  # a mutant that computes longer than this is reported as a hang
CASE_MEMORY_BYTES = 6 << 30  # address space a mutant may add (the tiny chip's 4 GiB DRAM fits)
FUZZ_SOFT_SECONDS = 50  # stop early (reporting what failed) rather than let pytest-timeout kill the run
INTERESTING_BYTES = b"\x00\x01\x7f\x80\xff0123456789-.,:[]{}\"eE tfn"
INTERESTING_VALUES = [0, 1, -1, 2, 3, 7, 8, 16, 255, 256, 1023, 1024, 65535, 2**31 - 1, 2**31, 2**32, 2**63, 2**64,
                      -(2**31), 0.5, -0.0, 1e300, 1e-300, "", "x", "i8", "f32", None, True, False, [], {}, [0], [[]]]


def _flip(data: bytes, rng: random.Random) -> bytes:
    out = bytearray(data)
    for _ in range(rng.randint(1, 8)):
        out[rng.randrange(len(out))] ^= 1 << rng.randrange(8)
    return bytes(out)


def _truncate(data: bytes, rng: random.Random) -> bytes:
    return data[:rng.randrange(len(data))]


def _splice(data: bytes, rng: random.Random) -> bytes:
    out = bytearray(data)
    for _ in range(rng.randint(1, 3)):
        position = rng.randrange(len(out) + 1)
        count = rng.randint(1, 16)
        if rng.random() < 0.5:
            out[position:position] = bytes(rng.getrandbits(8) for _ in range(count))
        else:
            del out[position:position + count]
    return bytes(out)


def _mutate_bytes(payload: bytes, rng: random.Random) -> bytes:
    """Random edits of a byte string: flips, interesting bytes, insertions, deletions, duplications."""
    out = bytearray(payload)
    for _ in range(rng.randint(1, 4)):
        choice = rng.random()
        position = rng.randrange(len(out) + 1)
        if choice < 0.3 and out:
            index = min(position, len(out) - 1)
            out[index] ^= 1 << rng.randrange(8)
        elif choice < 0.6 and out:
            out[min(position, len(out) - 1)] = rng.choice(INTERESTING_BYTES)
        elif choice < 0.75:
            out[position:position] = bytes([rng.choice(INTERESTING_BYTES)]) * rng.randint(1, 4)
        elif choice < 0.9:
            del out[position:position + rng.randint(1, 8)]
        else:
            length = rng.randint(1, 32)
            out[position:position] = out[position:position + length]
    return bytes(out)


def _random_value(rng: random.Random, old):
    choice = rng.random()
    if isinstance(old, int) and not isinstance(old, bool) and choice < 0.5:
        return old + rng.choice([-1, 1, -old, old, 1 << rng.randrange(40), -(1 << rng.randrange(40))])
    if isinstance(old, list) and old and choice < 0.5:
        new = list(old)
        action = rng.randrange(3)
        if action == 0:
            del new[rng.randrange(len(new))]
        elif action == 1:
            new.append(rng.choice(new))
        else:
            new[rng.randrange(len(new))] = rng.choice(INTERESTING_VALUES)
        return new
    return rng.choice(INTERESTING_VALUES)


def _mutate_json_value(value, rng: random.Random):
    """Replace one value somewhere inside a JSON document (or a key), keeping the rest."""
    paths = []

    def walk(node, path):
        paths.append(path)
        if isinstance(node, dict):
            for key, child in node.items():
                walk(child, path + (key,))
        elif isinstance(node, list):
            for index, child in enumerate(node):
                walk(child, path + (index,))

    walk(value, ())
    path = rng.choice(paths[1:] or paths)
    if not path:
        return _random_value(rng, value)
    parent = value
    for step in path[:-1]:
        parent = parent[step]
    if isinstance(parent, dict) and rng.random() < 0.2:
        parent[rng.choice(["base", "name", "extra", path[-1] + "_"])] = parent.pop(path[-1])
    else:
        parent[path[-1]] = _random_value(rng, parent[path[-1]])
    return value


def _mutate_instruction_field(instructions: bytes, rng: random.Random) -> bytes:
    """Set one field of one instruction to a random or boundary value of the field's width."""
    words = [int.from_bytes(instructions[i:i + INSTRUCTION_BYTES], "little")
             for i in range(0, len(instructions), INSTRUCTION_BYTES)]
    if rng.random() < 0.2:
        return _broadcast_bomb(words, rng)
    for _ in range(rng.randint(1, 3)):
        index = rng.randrange(len(words))
        definition = BY_OPCODE.get(words[index] & 0xFF)
        if definition is None:
            continue
        f = rng.choice(definition.fields)
        mask = (1 << f.width) - 1
        old = (words[index] >> f.lo) & mask
        value = rng.choice([0, 1, 2, mask, mask >> 1, old + 1, old - 1, old * 2, old // 2, rng.getrandbits(f.width),
                            1 << rng.randrange(f.width)]) & mask
        words[index] = words[index] & ~(mask << f.lo) | value << f.lo
    return b"".join(w.to_bytes(INSTRUCTION_BYTES, "little") for w in words)


COUNT_FIELDS = {"n0", "n1", "n2", "m", "rows", "cols", "k", "n"}
STRIDE_FIELDS = {"ds0", "ds1", "ds2", "ls1", "ls2", "stride", "a_rs", "a_cs", "b_rs", "b_cs", "c_rs", "c_cs",
                 "dst_rs"}


def _broadcast_bomb(words: list[int], rng: random.Random) -> bytes:
    """Large counts with zero strides: operands that stay in bounds but have billions of elements."""
    index = rng.randrange(len(words))
    definition = BY_OPCODE[words[index] & 0xFF]
    word = words[index]
    for f in definition.fields:
        mask = (1 << f.width) - 1
        if f.name in COUNT_FIELDS and f.name not in ("n0", "cols") and rng.random() < 0.8:
            word = word & ~(mask << f.lo) | rng.choice([mask, mask >> 1, mask >> 4]) << f.lo
        elif f.name in STRIDE_FIELDS and rng.random() < 0.8:
            word &= ~(mask << f.lo)
    words[index] = word
    return b"".join(w.to_bytes(INSTRUCTION_BYTES, "little") for w in words)


def _mutate_instruction_list(instructions: bytes, rng: random.Random) -> bytes:
    words = [instructions[i:i + INSTRUCTION_BYTES] for i in range(0, len(instructions), INSTRUCTION_BYTES)]
    action = rng.randrange(4)
    i, j = rng.randrange(len(words)), rng.randrange(len(words))
    if action == 0:
        words[i], words[j] = words[j], words[i]
    elif action == 1:
        words.insert(i, words[j])
    elif action == 2:
        del words[i]
    else:
        words[i] = bytes([rng.choice(list(BY_OPCODE))]) + words[i][1:]  # same operands, another instruction
    return b"".join(words)


def _payload(data: bytes, rng: random.Random) -> bytes:
    """A mutation before the checksum, then a fresh checksum, so the deeper checks run."""
    choice = rng.random()
    if choice < 0.15:
        return with_checksum(_mutate_bytes(data[:-CHECKSUM_BYTES], rng))
    sections = split_sections(data)
    index = rng.randrange(len(sections))
    kind, payload = sections[index]
    if choice < 0.45:
        kind = KIND_INSTRUCTIONS
        index = [k for k, _ in sections].index(kind)
        payload = sections[index][1]
        mutate = _mutate_instruction_field if rng.random() < 0.75 else _mutate_instruction_list
        payload = mutate(payload, rng)
    elif choice < 0.75:
        kind = rng.choice(JSON_KINDS)
        index = [k for k, _ in sections].index(kind)
        document = json.loads(sections[index][1])
        payload = json.dumps(_mutate_json_value(document, rng), sort_keys=rng.random() < 0.5).encode()
    else:
        payload = _mutate_bytes(payload, rng)
    sections[index] = (kind, payload)
    if rng.random() < 0.05:
        rng.shuffle(sections)
    return build_file(sections)


MUTATIONS = {
    "flip": _flip,  # checksum left stale: the checksum must catch these
    "truncate": _truncate,
    "splice": _splice,
    "payload": _payload,
}


def mutate(data: bytes, kind: str, seed: int) -> bytes:
    return MUTATIONS[kind](data, random.Random(f"{kind}/{seed}"))


class CaseBudgetExceeded(Exception):
    """A fuzz case computed for longer than CASE_CPU_SECONDS: a hang, for the report."""


@contextmanager
def case_budget():
    """Bound one fuzz case's CPU time (SIGVTALRM, so pytest-timeout keeps SIGALRM) and added memory."""

    def expire(signum, frame):
        raise CaseBudgetExceeded(f"more than {CASE_CPU_SECONDS} s of CPU")

    old_handler = signal.signal(signal.SIGVTALRM, expire)
    old_limit = resource.getrlimit(resource.RLIMIT_AS)
    with open("/proc/self/statm") as statm:
        in_use = int(statm.read().split()[0]) * resource.getpagesize()
    limit = in_use + CASE_MEMORY_BYTES
    if old_limit[1] == resource.RLIM_INFINITY or limit < old_limit[1]:
        resource.setrlimit(resource.RLIMIT_AS, (limit, old_limit[1]))
    signal.setitimer(signal.ITIMER_VIRTUAL, CASE_CPU_SECONDS)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_VIRTUAL, 0)
        signal.signal(signal.SIGVTALRM, old_handler)
        resource.setrlimit(resource.RLIMIT_AS, old_limit)


def run_mutant(data: bytes) -> str:
    """'refused', 'ran' or 'failed at run'; any exception other than AccError propagates."""
    try:
        program = binfile.from_bytes(data)
    except AccError:
        return "refused"
    try:
        run(program, check_hazards=len(data) % 2 == 1)  # about half the runs also exercise the hazard check
    except AccError:
        return "failed at run"
    return "ran"


@pytest.mark.timeout(120)
@pytest.mark.parametrize("kind", sorted(FUZZ_CASES))
def test_fuzz_mutated_model_bin(kind):
    """Every mutant loads and runs to completion, or raises an AccError; nothing else escapes."""
    failures = []
    outcomes: dict[str, int] = {}
    started = time.monotonic()
    for seed in range(FUZZ_CASES[kind]):
        if time.monotonic() - started > FUZZ_SOFT_SECONDS:
            failures.append(f"stopped at seed {seed}: the fuzz ran past {FUZZ_SOFT_SECONDS} s")
            break
        data = mutate(VALID, kind, seed)
        if data == VALID:  # e.g. the same bit flipped twice
            outcomes["unchanged"] = outcomes.get("unchanged", 0) + 1
            continue
        try:
            with case_budget():
                outcome = run_mutant(data)
        except Exception as err:  # anything but an AccError is a bug in acc
            failures.append(f"run_mutant(mutate(VALID, {kind!r}, {seed})): {type(err).__name__}: {err}\n"
                            + "".join(traceback.format_exception(err)[-6:]))
            continue
        outcomes[outcome] = outcomes.get(outcome, 0) + 1
    assert not failures, f"{len(failures)} of {FUZZ_CASES[kind]} '{kind}' mutants escaped AccError:\n\n" + \
        "\n".join(failures[:10])
    if kind == "payload":
        # The re-checksummed mutants must reach past the checksum: some load and run, some fail in the simulator.
        assert outcomes.get("ran", 0) > 0 and outcomes.get("failed at run", 0) > 0, outcomes
    else:
        assert set(outcomes) <= {"refused", "unchanged"}, outcomes  # a stale checksum is always caught


def test_fuzz_reaches_every_layer():
    """The re-checksummed mutations are not all stopped by one check: they hit JSON, decode, I/O and run."""
    messages = []
    for seed in range(FUZZ_CASES["payload"]):
        try:
            binfile.from_bytes(mutate(VALID, "payload", seed))
        except AccError as err:
            messages.append(str(err))
        except Exception:  # reported by test_fuzz_mutated_model_bin
            continue
    for layer in ("section", "not valid JSON", "instruction", "meta:", "config field", "debug"):
        assert any(layer in message for message in messages), f"no payload mutant was refused by '{layer}'"
