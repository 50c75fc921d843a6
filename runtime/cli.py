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
from isa.program import Program
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
    if not Path(path).is_file():
        raise InputError(f"input file {path!r} does not exist")
    try:
        data = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError, zipfile.BadZipFile):
        raise InputError(f"input file {path!r} is not a readable .npz or .npy file") from None
    if isinstance(data, np.ndarray):
        if len(program.inputs) != 1:
            raise InputError(f"a lone .npy fits a single-input program; this one has inputs "
                             f"{', '.join(t.name for t in program.inputs) or 'none'}: use an .npz")
        return {program.inputs[0].name: data}
    try:
        with data:
            return {name: data[name] for name in data.files}
    except (ValueError, OSError, zipfile.BadZipFile) as err:
        raise InputError(f"input file {path!r} is corrupt ({err})") from None


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
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    args = parser.parse_args(argv)

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
    """The per-layer figures of a run's stats as an aligned table, in program order."""
    lines = [f"{'node':<36} {'cycles':>10} {'MACs':>12} {'DRAM bytes':>11} {'util':>6} {'eff':>6}  bound"]
    for layer in layers:
        lines.append(f"{layer['node'][:36]:<36} {layer['cycles']:>10,} {layer['macs']:>12,} {layer['dram_bytes']:>11,} "
                     f"{layer['utilization']:>6.2f} {layer['efficiency']:>6.2f}  {layer['bound']}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    return run_tool("acc-run", _main, argv)
