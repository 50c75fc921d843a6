"""acc-as (assembly text -> model.bin) and acc-objdump (model.bin -> readable listing)."""

from __future__ import annotations

import ast
import hashlib
import json
import sys

from isa import binfile
from isa.assembly import assemble, disassemble_instruction
from isa.cli_common import ArgumentParser, run_tool
from isa.config import load_config
from isa.errors import AccError
from isa.program import Program


def _parse_define(text: str) -> tuple[str, int | float]:
    name, sep, value = text.partition("=")
    if not sep or not name.isidentifier():
        raise AccError(f"-D expects NAME=VALUE, got {text!r}")
    try:
        number = ast.literal_eval(value)
    except (ValueError, SyntaxError):
        number = None
    if not isinstance(number, (int, float)) or isinstance(number, bool):
        raise AccError(f"-D {name}: {value!r} is not a number")
    return name, number


def _assemble(argv: list[str]) -> int:
    parser = ArgumentParser(prog="acc-as", description="Assemble acc assembly text into a model.bin.")
    parser.add_argument("source", help="assembly file (.s)")
    parser.add_argument("-o", "--output", required=True, help="model.bin to write")
    parser.add_argument("--config", default=None, help="preset name (tiny, edge, server) or JSON file; default edge")
    parser.add_argument("-D", "--define", action="append", default=[], metavar="NAME=VALUE",
                        help="set a symbol, overriding the program's .equ of the same name")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    args = parser.parse_args(argv)
    config = load_config(args.config)
    defines = dict(_parse_define(d) for d in args.define)
    try:
        with open(args.source, encoding="utf-8") as handle:
            text = handle.read()
    except FileNotFoundError:
        raise AccError(f"{args.source!r} does not exist") from None
    except (OSError, UnicodeDecodeError) as err:
        raise AccError(f"cannot read {args.source!r}: {err}") from None
    program = assemble(text, config, defines, source=args.source)
    binfile.save(program, args.output)
    print(f"{args.output}: {len(program.instructions)} instructions for config '{config.name}'", file=sys.stderr)
    return 0


def _tensor_line(t) -> str:
    text = f"  {t.name:<20} {t.dtype.asm_name:<5} {str(list(t.shape)):<20} dram={t.dram:#010x}"
    if t.scale:
        text += f" scale={list(t.scale)} zero_point={list(t.zero_point)}"
        if t.axis is not None:
            text += f" axis={t.axis}"
    return text


def listing(program: Program, data: bytes) -> str:
    """The objdump text: header, config, I/O table, constants and annotated disassembly."""
    lines = [
        f"model.bin format version {binfile.FORMAT_VERSION}, {len(data)} bytes, "
        f"sha256 {hashlib.sha256(data[:-32]).hexdigest()[:16]}... (valid)",
        f"instructions: {len(program.instructions)}   constants: {len(program.constants)} "
        f"({sum(len(c.data) for c in program.constants)} bytes)   DRAM used: {program.dram_bytes} bytes",
        "",
        "config:",
        *(f"  {key} = {value}" for key, value in json.loads(program.config.to_json()).items()),
        "",
        "inputs:",
        *(_tensor_line(t) for t in program.inputs),
        "outputs:",
        *(_tensor_line(t) for t in program.outputs),
    ]
    if program.state:
        lines += ["state (output = input, updated in place in the input's DRAM):",
                  *(f"  {output} = {input_name}" for output, input_name in program.state)]
    if program.constants:
        lines += ["", "constants:"]
        lines += [f"  {c.name or '-':<20} {len(c.data):>10} bytes at dram={c.dram:#010x}" for c in program.constants]
    if program.host_steps:
        lines += ["", "host steps (run on the host, not the accelerator):", *(f"  {s}" for s in program.host_steps)]
    lines += ["", "disassembly:"]
    width = len(str(len(program.instructions)))
    node_at = {}
    for entry in program.debug:
        for index in range(entry.start, entry.end):
            node_at[index] = entry.node
    for index, instruction in enumerate(program.instructions):
        text = f"  {index:>{width}}: {disassemble_instruction(instruction)}"
        if index in node_at:
            text += f"    ; {node_at[index]}"
        lines.append(text)
    return "\n".join(lines) + "\n"


def _objdump(argv: list[str]) -> int:
    parser = ArgumentParser(prog="acc-objdump", description="Print a model.bin: header, config, I/O and code.")
    parser.add_argument("model", help="model.bin")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    args = parser.parse_args(argv)
    try:
        with open(args.model, "rb") as handle:
            data = handle.read()
    except OSError:
        data = None
    program = binfile.load(args.model) if data is None else binfile.from_bytes(data)
    sys.stdout.write(listing(program, data))
    return 0


def assemble_main(argv: list[str] | None = None) -> int:
    return run_tool("acc-as", _assemble, argv)


def objdump_main(argv: list[str] | None = None) -> int:
    return run_tool("acc-objdump", _objdump, argv)
