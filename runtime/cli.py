"""acc-run: simulate a model.bin and report outputs, cycles and counters."""

from __future__ import annotations

import io
import json
import sys
import zipfile
from pathlib import Path

import numpy as np

from isa import binfile
from isa.assembly import disassemble_instruction
from isa.cli_common import ArgumentParser, atomic_write, run_tool
from isa.errors import InputError
from isa.program import Program, pairs_text
from runtime.compare import (
    TOLERANCES,
    compare_arrays,
    first_divergence,
    layer_tensors,
    load_reference,
    reference_outputs,
)
from runtime.simulator import prepare_inputs, run
from runtime.trace import trace_json

EXIT_CHECK_FAILED = 1
MAX_HAZARDS_SHOWN = 20


def load_inputs(path: str, program: Program) -> dict[str, np.ndarray]:
    """Inputs from an .npz keyed by input name, or a lone .npy for a single-input program."""
    data = load_arrays(path)
    if isinstance(data, np.ndarray):
        if len(program.inputs) != 1:
            raise InputError(f"a lone .npy fits a single-input program; this one has inputs "
                             f"{', '.join(t.name for t in program.inputs) or 'none'}: use an .npz")
        return {program.inputs[0].name: data}
    return data


def load_arrays(path: str, what: str = "input file") -> np.ndarray | dict[str, np.ndarray]:
    """The array of an .npy, or the arrays of an .npz by name."""
    if not Path(path).is_file():
        raise InputError(f"{what} {path!r} does not exist")
    try:
        data = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError, zipfile.BadZipFile):
        raise InputError(f"{what} {path!r} is not a readable .npz or .npy file") from None
    if isinstance(data, np.ndarray):
        return data
    try:
        with data:
            return {name: data[name] for name in data.files}
    except (ValueError, OSError, zipfile.BadZipFile) as err:
        raise InputError(f"{what} {path!r} is corrupt ({err})") from None


def _save_npz(path: str, arrays: dict[str, np.ndarray]) -> None:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    atomic_write(path, buffer.getvalue())


def summary(stats: dict, outputs: dict[str, np.ndarray]) -> str:
    lines = ["outputs:"]
    for name, value in outputs.items():
        finite = value[np.isfinite(value)] if value.dtype.kind == "f" else value
        span = f"min {finite.min():.6g} max {finite.max():.6g}" if finite.size else "no finite values"
        lines.append(f"  {name:<20} {str(value.dtype):<8} {str(list(value.shape)):<20} {span}")
        if value.size <= 16:  # small outputs (class scores) are worth seeing whole
            lines.append("    " + np.array2string(value.reshape(-1), precision=4, max_line_width=100))
    if stats["state"]:
        lines.append(f"state (outputs updated in place): {pairs_text(stats['state'])}")
    cycles = stats["cycles"]
    lines.append(f"cycles: {cycles} ({stats['time_us']:.3f} us)   roofline bound: {stats['roofline_cycles']:.0f}   "
                 f"efficiency: {stats['roofline_efficiency']:.3f}")
    lines.append("engines busy: " + ", ".join(
        f"{name} {busy} ({stats['utilization'][name]:.0%})" for name, busy in stats["engines"].items()))
    lines.append(f"MACs: {stats['macs']}   DRAM read: {stats['dram_bytes_read']} B   "
                 f"written: {stats['dram_bytes_written']} B   instructions: {stats['instructions']}")
    lines.append(f"DRAM: {stats['dram_size']:,} B, activations at peak {stats['activation_bytes']:,} B")
    if stats["host_steps"]:
        lines.append("host steps (not on the accelerator): " + "; ".join(stats["host_steps"]))
    return "\n".join(lines)


def _main(argv: list[str]) -> int:
    parser = ArgumentParser(prog="acc-run", description="Simulate a model.bin on its accelerator config.")
    parser.add_argument("model", help="model.bin")
    parser.add_argument("--input", help="inputs: .npz keyed by input name, or .npy for a single-input model "
                                        "(default: seeded random inputs)")
    parser.add_argument("--output", help="write the outputs to this .npz")
    parser.add_argument("--stats", help="write counters as JSON")
    parser.add_argument("--trace", help="write a Chrome trace (Perfetto) of the engines")
    parser.add_argument("--check-hazards", action="store_true",
                        help="report engines touching the same memory without a dependency (exit 1 if any)")
    parser.add_argument("--compare", metavar="MODEL.onnx",
                        help="run onnxruntime on the same inputs and compare every output (exit 1 on FAIL)")
    parser.add_argument("--compare-layers", action="store_true",
                        help="with --compare: compare every intermediate tensor and name the first node that diverges")
    parser.add_argument("--roofline", metavar="PLOT.png",
                        help="draw each layer with multiply-adds against the config's roofline (PNG)")
    parser.add_argument("--layers", action="store_true",
                        help="print per source node: cycles, MACs, DRAM bytes, utilization, compute- or memory-bound")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random inputs (default 0)")
    generation = parser.add_argument_group("generation (MODEL is the decode program; both compiled with --state)")
    generation.add_argument("--generate", type=int, metavar="N",
                            help="greedy generation: the prefill, then N decode steps with the KV cache kept in "
                                 "DRAM; prints the tokens and the cycles per token against the bandwidth bound")
    generation.add_argument("--prefill", metavar="PREFILL.bin", help="the prefill program (needed by --generate)")
    prompt = generation.add_mutually_exclusive_group()
    prompt.add_argument("--prompt", metavar="IDS.npy", help="the prompt's token ids, as many as the prefill takes")
    prompt.add_argument("--prompt-seed", type=int, default=0, metavar="S",
                        help="a seeded random prompt instead (default seed 0)")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    args = parser.parse_args(argv)
    if args.generate is not None:
        return _generate(parser, args)
    if args.prefill or args.prompt:
        parser.error("--prefill and --prompt go with --generate N")

    if args.compare_layers and not args.compare:
        parser.error("--compare-layers needs --compare MODEL.onnx")
    program = binfile.load(args.model)
    reference = load_reference(args.compare) if args.compare else None
    inputs = load_inputs(args.input, program) if args.input else None
    inputs = prepare_inputs(program, inputs, seed=args.seed)
    result = run(program, inputs, check_hazards=args.check_hazards, keep_events=bool(args.trace),
                 keep_tensors=args.compare_layers)
    print(summary(result.stats, result.outputs))
    verdict = 0
    if reference is not None:
        verdict = _compare(program, reference, inputs, result, args.compare_layers)
    if args.output:
        _save_npz(args.output, result.outputs)
    if args.layers:
        print(layer_table(result.stats["layers"]))
    if args.roofline:
        from runtime.roofline import plot_roofline

        atomic_write(args.roofline, plot_roofline(result.stats["layers"], program.config, program.precision,
                                                  Path(args.model).name))
    if args.stats:
        atomic_write(args.stats, json.dumps(result.stats, indent=2, sort_keys=True) + "\n")
    if args.trace:
        atomic_write(args.trace, trace_json(program, result.events))
    if args.check_hazards:
        for hazard in result.hazards[:MAX_HAZARDS_SHOWN]:
            print("hazard: " + hazard.describe(lambda i: disassemble_instruction(program.instructions[i])),
                  file=sys.stderr)
        if len(result.hazards) > MAX_HAZARDS_SHOWN:
            print(f"... and {len(result.hazards) - MAX_HAZARDS_SHOWN} more hazards", file=sys.stderr)
        print(f"hazard check: {len(result.hazards)} hazards", file=sys.stderr)
        if result.hazards:
            return EXIT_CHECK_FAILED
    return verdict


# What acc-run does with one run that generation, many runs on one machine, does not offer.
_NOT_WITH_GENERATE = ("input", "trace", "compare", "compare_layers", "roofline", "layers")


def _generate(parser: ArgumentParser, args) -> int:
    """acc-run DECODE.bin --generate N --prefill PREFILL.bin: greedy generation, tokens and figures."""
    from runtime.generate import check_programs, generate, seeded_prompt

    given = [name for name in _NOT_WITH_GENERATE if getattr(args, name)]
    if given:
        parser.error(f"--generate does not combine with --{given[0].replace('_', '-')}")
    if not args.prefill:
        parser.error("--generate needs --prefill PREFILL.bin")
    decode, prefill = binfile.load(args.model), binfile.load(args.prefill)
    prompt_length, _, vocab = check_programs(prefill, decode)
    if args.prompt:
        prompt = load_arrays(args.prompt, "prompt file")
        if isinstance(prompt, dict):
            raise InputError(f"prompt file {args.prompt!r}: give the token ids as one .npy array")
    else:
        prompt = seeded_prompt(prompt_length, vocab, args.prompt_seed)
    result = generate(prefill, decode, prompt, args.generate, progress=sys.stderr.isatty(),
                      check_hazards=args.check_hazards)
    print("prompt:    " + " ".join(str(token) for token in np.asarray(prompt).reshape(-1)))
    print("generated: " + " ".join(str(token) for token in result.tokens))
    print(result.table())
    if args.output:
        _save_npz(args.output, {"tokens": result.tokens, "logits": result.logits, "cycles": result.cycles})
    if args.stats:
        atomic_write(args.stats, json.dumps(result.figures(), indent=2, sort_keys=True) + "\n")
    if args.check_hazards:
        print(f"hazard check: {result.hazards} hazards", file=sys.stderr)
        if result.hazards:
            return EXIT_CHECK_FAILED
    return 0


def _compare(program: Program, reference, inputs, result, layers: bool) -> int:
    tolerance = TOLERANCES[program.precision]
    extra = [name for t in program.debug_tensors for name in (t.name, t.source) if name] if layers else None
    expected = reference_outputs(reference, inputs, extra)
    print(f"comparison with onnxruntime ({program.precision} tolerance: max abs error <= {tolerance.rel:g} x "
          f"max |reference|, cosine >= {tolerance.cosine}):")
    failed = False
    for t in program.outputs:
        if t.name not in expected:
            print(f"  {t.name:<24} not an output of the reference model   FAIL")
            failed = True
            continue
        comparison = compare_arrays(t.name, result.outputs[t.name], expected[t.name], tolerance)
        print(comparison.line())
        failed |= not comparison.passed
    if layers:
        order, actual = layer_tensors(program.debug_tensors, result.tensors, expected)
        compared, first = first_divergence(order, actual, expected, tolerance)
        print(f"per layer ({len(compared)} tensors compared):")
        for node, comparison in compared:
            print(f"  {node[:28]:<28}" + comparison.line()[2:])
        if first is None:
            print("no layer diverges")
        else:
            print(f"first divergence: node {first[0]!r} (output {first[1].name!r})")
    print("RESULT: " + ("FAIL" if failed else "PASS"))
    return EXIT_CHECK_FAILED if failed else 0


def layer_table(layers: list[dict]) -> str:
    """The per-layer figures of a run's stats as an aligned table, in program order (cycles: the
    layer's span; own: the cycles it added to the run)."""
    lines = [f"{'node':<36} {'cycles':>10} {'own':>10} {'MACs':>12} {'DRAM bytes':>11} {'util':>6} {'eff':>6}  bound"]
    for layer in layers:
        lines.append(f"{layer['node'][:36]:<36} {layer['cycles']:>10,} {layer['own_cycles']:>10,} {layer['macs']:>12,} "
                     f"{layer['dram_bytes']:>11,} "
                     f"{layer['utilization']:>6.2f} {layer['efficiency']:>6.2f}  {layer['bound']}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    return run_tool("acc-run", _main, argv)
