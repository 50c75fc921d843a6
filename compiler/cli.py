"""acc-compile: ONNX model -> model.bin (or --check / --list-ops / --dump-after)."""

from __future__ import annotations

import sys
from argparse import BooleanOptionalAction
from pathlib import Path

from isa import binfile
from isa.cli_common import ArgumentParser, run_tool
from isa.errors import AccError
from isa.program import state_text


def parse_input_shape(text: str) -> tuple[str, tuple[int, ...]]:
    """`name=1,3,224,224` -> ("name", (1, 3, 224, 224))."""
    name, sep, dims = text.rpartition("=")
    try:
        shape = tuple(int(d) for d in dims.split(",")) if dims.strip() else ()
    except ValueError:
        shape = None
    if not sep or not name or shape is None or any(d < 0 for d in shape):
        raise AccError(f"--input-shape expects NAME=D0,D1,... with non-negative integers, got {text!r}")
    return name, shape


def parse_keep(text: str) -> tuple[str, str]:
    """`node=bf16` -> ("node", "bf16")."""
    name, sep, kept = text.rpartition("=")
    if not sep or not name or kept not in ("fp32", "bf16"):
        raise AccError(f"--keep-precision expects NODE=fp32 or NODE=bf16, got {text!r}")
    return name, kept


def _list_ops() -> int:
    from compiler.support import supported_ops

    for op, note in supported_ops():
        print(f"{op:<28} {note}".rstrip())
    return 0


def _check(path: str, input_shapes) -> int:
    from compiler.support import unsupported_in_model

    problems = unsupported_in_model(path, input_shapes)
    if not problems:
        print(f"{path}: every op is supported")
        return 0
    for problem in problems:
        print(problem)
    print(f"{path}: {len(problems)} unsupported", file=sys.stderr)
    return 1


def _main(argv: list[str]) -> int:
    parser = ArgumentParser(prog="acc-compile", description="Compile an ONNX model for the acc accelerator.")
    parser.add_argument("model", nargs="?", help="model.onnx")
    parser.add_argument("-o", "--output", help="model.bin to write")
    parser.add_argument("--config", default=None, help="preset (tiny, edge, server) or JSON file; default edge")
    parser.add_argument("-O", dest="opt_level", type=int, choices=[0, 1, 2, 3], default=1,
                        help="optimisation level: -O0 only what correctness needs, -O1 (default), -O2, -O3 (-O2, "
                             "and each convolution's loop order searched with the cost model: slower to compile)")
    parser.add_argument("--keep-intermediates", action=BooleanOptionalAction, default=None,
                        help="give every intermediate tensor its own DRAM, kept for acc-run --compare-layers "
                             "(default below -O2); --no-keep-intermediates reuses the DRAM of dead tensors")
    parser.add_argument("--input-shape", action="append", default=[], metavar="NAME=D0,D1,...",
                        help="bind an input's dynamic dimensions (repeatable)")
    parser.add_argument("--state", action="append", default=[], metavar="OUT=IN|auto",
                        help="OUT updates input IN in place (same DRAM, placed first), e.g. a KV cache; "
                             "repeatable. 'auto': every output named like an input with 'present' for 'past'")
    parser.add_argument("--check", action="store_true", help="list every unsupported op of the model and exit")
    parser.add_argument("--list-ops", action="store_true", help="print the supported ops and exit")
    parser.add_argument("--dump-after", metavar="PASS", help="print the IR after this pass (see --list-passes)")
    parser.add_argument("--list-passes", action="store_true", help="print the pass pipeline and exit")
    parser.add_argument("--disable-pass", action="append", default=[], metavar="PASS",
                        help="do not run this pass of the -O level, or code generation step (--list-passes), "
                             "to see what it gives; repeatable")
    parser.add_argument("--fast-math", action="store_true",
                        help="also run the rewrites that may change a result by one rounding (a division by a "
                             "constant becomes a multiplication by its reciprocal); without it -O2 computes every "
                             "value as -O1 does")
    parser.add_argument("--report", action="store_true",
                        help="print per layer the kernel's choices, scratchpad used and predicted cycles")
    precision = parser.add_argument_group("precision")
    precision.add_argument("--precision", choices=["fp32", "bf16", "w8a16", "int8"], default="fp32",
                           help="fp32 (default); bf16 operands with fp32 accumulation; w8a16 weight-only int8 "
                                "(MatMul/Gemm weights int8 per output column, bf16 activations); int8 "
                                "post-training quantization (needs --calibration). A QDQ-quantized model is "
                                "int8 in any mode")
    precision.add_argument("--calibration", metavar="SAMPLES.npz",
                           help="int8: sample inputs, one array per model input with the samples along axis 0")
    precision.add_argument("--calibration-method", choices=["minmax", "percentile", "entropy", "mse"],
                           default="minmax", help="int8: how activation ranges are chosen (default minmax)")
    precision.add_argument("--per-channel", dest="per_channel", action="store_true", default=True,
                           help="int8: weight scales per output channel (default)")
    precision.add_argument("--per-tensor", dest="per_channel", action="store_false",
                           help="int8: one weight scale per tensor")
    precision.add_argument("--asymmetric", dest="symmetric", action="store_false", default=False,
                           help="int8: activations uint8 with a zero point (default)")
    precision.add_argument("--symmetric", dest="symmetric", action="store_true",
                           help="int8: activations int8 with zero point 0")
    precision.add_argument("--keep-precision", action="append", default=[], metavar="NODE=fp32|bf16,...|auto",
                           help="keep these nodes out of int8 (or, with bf16, in fp32); repeatable. 'auto' "
                                "(int8): keep the most sensitive matrix nodes in bf16 until --auto-cosine is met")
    precision.add_argument("--auto-cosine", type=float, default=0.99, metavar="COSINE",
                           help="with --keep-precision auto: the worst cosine of any float output against the "
                                "fp32 model on the calibration samples (default 0.99)")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    args = parser.parse_args(argv)
    from compiler.pipeline import CODEGEN_STEPS, FAST_MATH, Precision, compile, pass_names
    from compiler.state import state_from_options

    if args.list_ops:
        return _list_ops()
    if args.list_passes:
        print("\n".join([name + (" (--fast-math)" if name in FAST_MATH else "") for name in pass_names()]
                        + [f"{name} (code generation)" for name in CODEGEN_STEPS]))
        return 0
    if not args.model:
        parser.error("the model is required")
    input_shapes = dict(parse_input_shape(text) for text in args.input_shape)
    if args.check:
        return _check(args.model, input_shapes)
    if args.dump_after and args.dump_after not in pass_names():
        raise AccError(f"--dump-after: unknown pass {args.dump_after!r} (passes: {', '.join(pass_names())})")
    if not args.output and not args.dump_after:
        parser.error("-o/--output is required")
    if args.output:
        directory = Path(args.output).parent
        if str(directory) and not directory.is_dir():
            raise AccError(f"cannot write {args.output!r}: directory {str(directory)!r} does not exist")
    if args.calibration and args.precision != "int8":
        raise AccError("--calibration is only used with --precision int8")
    entries = [text for item in args.keep_precision for text in item.split(",") if text]
    auto = "auto" in entries
    if auto and args.precision != "int8":
        raise AccError("--keep-precision auto is only used with --precision int8")
    keep = dict(parse_keep(text) for text in entries if text != "auto")
    precision = Precision(args.precision, args.calibration, args.calibration_method, args.per_channel,
                          args.symmetric, keep, progress=sys.stderr.isatty(),
                          auto_cosine=args.auto_cosine if auto else None)
    state = state_from_options(args.state)
    program = compile(args.model, args.config, opt_level=args.opt_level, input_shapes=input_shapes,
                      dump_after=args.dump_after, precision=precision, keep_intermediates=args.keep_intermediates,
                      report=lambda line: print(line, file=sys.stderr), state=state,
                      disabled_passes=args.disable_pass, fast_math=args.fast_math)
    print(f"DRAM: {program.dram_bytes:,} bytes (activations at peak {program.activation_bytes:,}, "
          f"constants {program.dram_bytes - program.activation_bytes:,})", file=sys.stderr)
    if program.state:
        print(f"state (updated in place): {state_text(program)}", file=sys.stderr)
    if args.report:
        from compiler.report import report_text

        print(report_text(program))
    if args.output:
        binfile.save(program, args.output)
        print(f"{args.output}: {len(program.instructions)} instructions, {len(program.constants)} constants, "
              f"config '{program.config.name}'", file=sys.stderr)
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_tool("acc-compile", _main, argv)
