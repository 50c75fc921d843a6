"""acc-compile: ONNX model -> model.bin. The compiler itself is issue 3; until it lands the
command says so plainly instead of pretending."""

from __future__ import annotations

from isa.cli_common import ArgumentParser, run_tool
from isa.errors import AccError


def _main(argv: list[str]) -> int:
    parser = ArgumentParser(prog="acc-compile", description="Compile an ONNX model to a model.bin.")
    parser.add_argument("model", nargs="?", help="model.onnx")
    parser.add_argument("-o", "--output", help="model.bin to write")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    parser.parse_args(argv)
    raise AccError("the ONNX compiler is not built yet; assemble programs with acc-as meanwhile")


def main(argv: list[str] | None = None) -> int:
    return run_tool("acc-compile", _main, argv)
