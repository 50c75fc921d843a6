"""What each optimisation gives: simulated cycles at -O0, -O1 and -O2, and at -O2 without each
pass of -O1/-O2 and code generation step (interleave), and without DRAM reuse, with each one's
share of the -O0 -> -O2 gain; then -O2 with --fast-math (the FAST_MATH passes, which -O2 does
not run unless asked).

    python benchmarks/passes.py [--config edge] [--models resnet50,minilm] [--precision int8]

int8 models are quantized once (minmax on a few seeded random inputs) and the same QDQ model
is compiled at every level, so the figures differ only by the passes. A pass's share is
(cycles without it - cycles at -O2) / (cycles at -O0 - cycles at -O2): the shares need not
add up to 1 (passes enable each other: fuse_tail needs fuse_elementwise's nodes).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import numpy as np  # noqa: E402
from precision import models_and_inputs  # noqa: E402  (the models and their seeded inputs)


def cycles(model, config: str, precision: str, inputs: dict, **options) -> int:
    from compiler.pipeline import compile
    from runtime.simulator import run

    return run(compile(model, config, precision=precision, **options), inputs).stats["cycles"]


def main() -> int:
    from compiler.pipeline import CODEGEN_STEPS, FAST_MATH, PASSES, Precision, quantize_for

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="edge")
    parser.add_argument("--models", default="resnet50,minilm")
    parser.add_argument("--precision", choices=["fp32", "bf16", "int8"], default="int8")
    parser.add_argument("--samples", type=int, default=4)
    args = parser.parse_args()
    optional = [name for name, _, level in PASSES if level >= 1 and name not in FAST_MATH] + list(CODEGEN_STEPS)
    for name, model, make_input in models_and_inputs(args.models.split(",")):
        rng = np.random.default_rng(0)
        samples = [make_input(rng) for _ in range(args.samples)]
        precision = args.precision
        if precision == "int8":
            model, _ = quantize_for(model, Precision("int8", samples))
            precision = "fp32"  # the QDQ model is int8 whatever the mode
        levels = {level: cycles(model, args.config, precision, samples[0], opt_level=level) for level in (0, 1, 2)}
        gain = levels[0] - levels[2]
        print(f"\n{name} ({args.precision}, {args.config})\n")
        print("| program | cycles | vs -O2 | share of the -O0 -> -O2 gain |")
        print("|---|---:|---:|---:|")
        for level, value in levels.items():
            print(f"| -O{level} | {value:,} | {value / levels[2]:.2f}x | |")
        rows = [(f"-O2 without {p}", cycles(model, args.config, precision, samples[0], opt_level=2,
                                            disabled_passes=[p])) for p in optional]
        rows.append(("-O2 without DRAM reuse", cycles(model, args.config, precision, samples[0], opt_level=2,
                                                      keep_intermediates=True)))
        for label, value in rows:
            share = (value - levels[2]) / gain if gain else 0.0
            print(f"| {label} | {value:,} | {value / levels[2]:.2f}x | {share:.1%} |")
        fast = cycles(model, args.config, precision, samples[0], opt_level=2, fast_math=True)
        print(f"| -O2 with --fast-math | {fast:,} | {fast / levels[2]:.2f}x | (beyond -O2) |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
