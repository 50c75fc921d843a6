"""model.bin: the file format of a compiled program, its writer and its validating loader.

Layout (all integers little-endian):

    0   8 bytes   magic b"ACCMODEL"
    8   u32       format version (FORMAT_VERSION)
    12  u32       number of sections
    16  sections  per section: u32 kind, u32 zero, u64 offset, u64 size
    ..  payloads  in the order of the section table, each starting where the last ended
    -32 32 bytes  SHA-256 of every byte before it

Sections, each exactly once: CONFIG (canonical JSON of the accelerator config),
INSTRUCTIONS (32-byte instructions), META (JSON: inputs, outputs, constants index,
DRAM footprint, host steps, intermediate tensors kept for comparison and, when the
program has any, its state pairs: outputs that update an input in place), CONSTANTS (raw
bytes the META index points into) and DEBUG (JSON list of [start, end, node]). `load`
checks every one of these facts before returning, so nothing runs from a file that is
not whole and consistent. Writing the same program twice gives the same bytes.
"""

from __future__ import annotations

import hashlib
import json
import math
import struct
from pathlib import Path

from isa.cli_common import atomic_write
from isa.config import config_from_dict
from isa.dtypes import DType
from isa.encoding import decode_program, encode_program
from isa.errors import AccError, BinaryFormatError
from isa.program import Constant, DebugRange, Program, TensorInfo

MAGIC = b"ACCMODEL"
FORMAT_VERSION = 1
SECTION_CONFIG, SECTION_INSTRUCTIONS, SECTION_META, SECTION_CONSTANTS, SECTION_DEBUG = 1, 2, 3, 4, 5
SECTION_NAMES = {SECTION_CONFIG: "config", SECTION_INSTRUCTIONS: "instructions", SECTION_META: "meta",
                 SECTION_CONSTANTS: "constants", SECTION_DEBUG: "debug"}
_HEADER = struct.Struct("<8sII")
_SECTION = struct.Struct("<IIQQ")
_CHECKSUM_BYTES = 32
_META_KEYS = {"inputs", "outputs", "constants", "dram_bytes", "host_steps", "debug_tensors", "precision",
              "activation_bytes"}


def _json(value) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":")).encode()


def _tensor_to_json(t: TensorInfo) -> dict:
    entry = {"name": t.name, "shape": list(t.shape), "dtype": t.dtype.asm_name, "dram": t.dram}
    if t.scale:
        entry["scale"] = list(t.scale)
        entry["zero_point"] = list(t.zero_point)
    if t.axis is not None:
        entry["axis"] = t.axis
    if t.node:
        entry["node"] = t.node
    if t.source:
        entry["source"] = t.source
    return entry


def to_bytes(program: Program) -> bytes:
    constants_blob = bytearray()
    constants_index = []
    for constant in program.constants:
        constants_index.append({"dram": constant.dram, "offset": len(constants_blob), "size": len(constant.data),
                                "name": constant.name})
        constants_blob += constant.data
    meta = {
        "inputs": [_tensor_to_json(t) for t in program.inputs],
        "outputs": [_tensor_to_json(t) for t in program.outputs],
        "constants": constants_index,
        "dram_bytes": program.dram_bytes,
        "host_steps": list(program.host_steps),
        "debug_tensors": [_tensor_to_json(t) for t in program.debug_tensors],
        "precision": program.precision,
        "activation_bytes": program.activation_bytes,
    }
    if program.state:  # absent otherwise, so programs without state keep their bytes
        meta["state"] = [list(pair) for pair in program.state]
    payloads = [
        (SECTION_CONFIG, program.config.to_json().encode()),
        (SECTION_INSTRUCTIONS, encode_program(program.instructions)),
        (SECTION_META, _json(meta)),
        (SECTION_CONSTANTS, bytes(constants_blob)),
        (SECTION_DEBUG, _json([[d.start, d.end, d.node] for d in program.debug])),
    ]
    offset = _HEADER.size + _SECTION.size * len(payloads)
    table = b""
    for kind, payload in payloads:
        table += _SECTION.pack(kind, 0, offset, len(payload))
        offset += len(payload)
    body = _HEADER.pack(MAGIC, FORMAT_VERSION, len(payloads)) + table + b"".join(p for _, p in payloads)
    return body + hashlib.sha256(body).digest()


def save(program: Program, path: str | Path) -> None:
    """Write atomically: the file appears whole or not at all."""
    atomic_write(path, to_bytes(program))


def load(path: str | Path) -> Program:
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        raise BinaryFormatError(f"{str(path)!r} does not exist") from None
    except IsADirectoryError:
        raise BinaryFormatError(f"{str(path)!r} is a directory, not a model.bin") from None
    except OSError as err:
        raise BinaryFormatError(f"cannot read {str(path)!r}: {err.strerror}") from None
    return from_bytes(data)


def from_bytes(data: bytes) -> Program:
    """Parse and validate a whole model.bin; any inconsistency raises BinaryFormatError."""
    if len(data) < _HEADER.size or data[:8] != MAGIC:
        raise BinaryFormatError("not a model.bin (bad magic)")
    _, version, count = _HEADER.unpack_from(data)
    if version != FORMAT_VERSION:
        raise BinaryFormatError(f"unknown model.bin format version {version} (this acc reads {FORMAT_VERSION})")
    if len(data) < _HEADER.size + _CHECKSUM_BYTES:
        raise BinaryFormatError("model.bin is truncated")
    body, checksum = data[:-_CHECKSUM_BYTES], data[-_CHECKSUM_BYTES:]
    if hashlib.sha256(body).digest() != checksum:
        raise BinaryFormatError("model.bin checksum mismatch: the file is corrupt or truncated")
    if count != len(SECTION_NAMES):
        raise BinaryFormatError(f"model.bin has {count} sections, expected {len(SECTION_NAMES)}")
    sections: dict[int, bytes] = {}
    expected_offset = _HEADER.size + _SECTION.size * count
    if expected_offset > len(body):
        raise BinaryFormatError("model.bin is truncated in its section table")
    for index in range(count):
        kind, zero, offset, size = _SECTION.unpack_from(body, _HEADER.size + index * _SECTION.size)
        if kind not in SECTION_NAMES or kind in sections:
            raise BinaryFormatError(f"section {index}: unknown or repeated section kind {kind}")
        if zero or offset != expected_offset or offset + size > len(body):
            raise BinaryFormatError(f"section '{SECTION_NAMES[kind]}': bad offset or size")
        sections[kind] = body[offset:offset + size]
        expected_offset = offset + size
    if expected_offset != len(body):
        raise BinaryFormatError("model.bin has bytes after its last section")
    try:
        return _parse_sections(sections)
    except BinaryFormatError:
        raise
    except AccError as err:
        raise BinaryFormatError(f"invalid model.bin: {err}") from None


def _parse_json(sections: dict[int, bytes], kind: int):
    try:
        return json.loads(sections[kind].decode())
    except (ValueError, RecursionError):  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        raise BinaryFormatError(f"section '{SECTION_NAMES[kind]}' is not valid JSON") from None


def _parse_sections(sections: dict[int, bytes]) -> Program:
    config = config_from_dict(_parse_json(sections, SECTION_CONFIG))
    instructions = decode_program(sections[SECTION_INSTRUCTIONS])
    if not instructions or instructions[-1].mnemonic != "end":
        raise BinaryFormatError("the program does not finish with an 'end' instruction")
    meta = _parse_json(sections, SECTION_META)
    _expect(isinstance(meta, dict) and _META_KEYS <= set(meta) <= _META_KEYS | {"state"},
            "meta section has the wrong keys")
    _expect(meta["precision"] in ("fp32", "bf16", "w8a16", "int8"), "meta: precision is not fp32, bf16, w8a16 or int8")
    dram_bytes = meta["dram_bytes"]
    _expect(_is_int(dram_bytes) and 0 <= dram_bytes <= config.dram_bytes,
            "meta: dram_bytes is not a size within the config's DRAM")
    _expect(_is_int(meta["activation_bytes"]) and 0 <= meta["activation_bytes"] <= dram_bytes,
            "meta: activation_bytes is not a size within the program's DRAM")
    inputs = [_parse_tensor(entry, dram_bytes) for entry in _list(meta["inputs"], "inputs")]
    outputs = [_parse_tensor(entry, dram_bytes) for entry in _list(meta["outputs"], "outputs")]
    names = [t.name for t in inputs + outputs]
    _expect(len(set(names)) == len(names), "meta: tensor names are not unique")
    blob = sections[SECTION_CONSTANTS]
    constants = []
    for entry in _list(meta["constants"], "constants"):
        _expect(isinstance(entry, dict) and set(entry) == {"dram", "offset", "size", "name"}
                and all(_is_int(entry[k]) and entry[k] >= 0 for k in ("dram", "offset", "size"))
                and isinstance(entry["name"], str), "meta: malformed constant entry")
        _expect(entry["offset"] + entry["size"] <= len(blob), "meta: constant lies outside the constants section")
        _expect(entry["dram"] + entry["size"] <= dram_bytes, f"meta: constant {entry['name']!r} lies outside DRAM")
        constants.append(Constant(entry["dram"], blob[entry["offset"]:entry["offset"] + entry["size"]], entry["name"]))
    host_steps = _list(meta["host_steps"], "host_steps")
    _expect(all(isinstance(s, str) for s in host_steps), "meta: host_steps must be strings")
    debug = []
    for entry in _list(_parse_json(sections, SECTION_DEBUG), "debug"):
        _expect(isinstance(entry, list) and len(entry) == 3 and _is_int(entry[0]) and _is_int(entry[1])
                and isinstance(entry[2], str) and 0 <= entry[0] < entry[1] <= len(instructions),
                "debug: an entry is not [start, end, node] within the program")
        debug.append(DebugRange(entry[0], entry[1], entry[2]))
    debug_tensors = [_parse_tensor(entry, dram_bytes) for entry in _list(meta["debug_tensors"], "debug_tensors")]
    state = _parse_state(meta.get("state", []), inputs, outputs)
    return Program(config, instructions, inputs, outputs, constants, debug, dram_bytes, host_steps, debug_tensors,
                   meta["precision"], meta["activation_bytes"], state=state)


def _parse_state(entries, inputs: list[TensorInfo], outputs: list[TensorInfo]) -> list[tuple[str, str]]:
    """State pairs [output, input]: each names an output and an input of the same shape, dtype and DRAM."""
    by_input = {t.name: t for t in inputs}
    by_output = {t.name: t for t in outputs}
    pairs = []
    for entry in _list(entries, "state"):
        _expect(isinstance(entry, list) and len(entry) == 2 and all(isinstance(name, str) for name in entry),
                "meta: a state entry is not [output, input]")
        output, input_name = entry
        _expect(output in by_output and input_name in by_input,
                f"meta: state {output}={input_name} does not name an output and an input")
        out, inp = by_output[output], by_input[input_name]
        _expect((out.shape, out.dtype, out.dram) == (inp.shape, inp.dtype, inp.dram),
                f"meta: state {output}={input_name}: the output is not the input's DRAM")
        pairs.append((output, input_name))
    _expect(len({o for o, _ in pairs}) == len(pairs) == len({i for _, i in pairs}),
            "meta: a tensor is in more than one state pair")
    return pairs


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _finite_float(value) -> bool:
    try:
        return math.isfinite(float(value))
    except OverflowError:
        return False


def _expect(condition: bool, message: str) -> None:
    if not condition:
        raise BinaryFormatError(message)


def _list(value, what: str) -> list:
    _expect(isinstance(value, list), f"meta: {what} is not a list")
    return value


def _parse_tensor(entry, dram_bytes: int) -> TensorInfo:
    _expect(isinstance(entry, dict) and {"name", "shape", "dtype", "dram"} <= set(entry)
            and set(entry) <= {"name", "shape", "dtype", "dram", "scale", "zero_point", "axis", "node", "source"},
            "meta: malformed tensor entry")
    name = entry["name"]
    _expect(isinstance(name, str) and name != "", "meta: tensor name must be a non-empty string")
    shape = entry["shape"]
    _expect(isinstance(shape, list) and len(shape) <= 8 and all(_is_int(d) and 0 <= d < 2**31 for d in shape),
            f"meta: tensor {name!r} has an invalid shape")
    try:
        dtype = DType.from_name(entry["dtype"]) if isinstance(entry["dtype"], str) else None
    except ValueError:
        dtype = None
    _expect(dtype is not None, f"meta: tensor {name!r} has an unknown dtype")
    scale, zero_point = entry.get("scale", []), entry.get("zero_point", [])
    _expect(isinstance(scale, list) and isinstance(zero_point, list) and len(scale) == len(zero_point)
            and all(isinstance(s, (int, float)) and not isinstance(s, bool) and _finite_float(s) for s in scale)
            and all(_is_int(z) for z in zero_point), f"meta: tensor {name!r} has invalid quantization parameters")
    node, source = entry.get("node", ""), entry.get("source", "")
    _expect(isinstance(node, str) and isinstance(source, str), f"meta: tensor {name!r}: node and source must be "
                                                                "strings")
    axis = entry.get("axis")
    _expect(axis is None or (_is_int(axis) and 0 <= axis < max(len(shape), 1)), f"meta: tensor {name!r}: bad axis")
    tensor = TensorInfo(name, tuple(shape), dtype, entry["dram"], tuple(float(s) for s in scale),
                        tuple(zero_point), axis, node, source)
    _expect(_is_int(tensor.dram) and tensor.dram >= 0 and tensor.dram % dtype.size == 0
            and tensor.dram + tensor.nbytes <= dram_bytes, f"meta: tensor {name!r} lies outside DRAM or is misaligned")
    return tensor
