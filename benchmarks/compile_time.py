"""Compile wall time of ResNet-50 (light model, seeded random weights) and all-MiniLM-L6-v2
(sequence 128) at -O2, fp32 and int8, best of N runs.

    python benchmarks/compile_time.py [--config edge] [--models resnet50,minilm] [--repeat 3] [--samples 1] [--profile]

The models and their seeded inputs are benchmarks/precision.py's; int8 is calibrated on
`--samples` of them (compile time, not accuracy). For int8 the table also splits the time into
calibration (`collect_ranges`: onnxruntime over the samples, timed on its own, best of N) and the
rest (best compile minus best calibration). `--profile` prints cProfile's top functions of one
compile per row instead (cumulative and own time). Figures are wall times on a shared, noisy
machine: compare ratios from one run, not absolute seconds across runs.
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import sys
from functools import partial
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from precision import models_and_inputs  # noqa: E402  (the models and their seeded inputs)
from simulator_speed import best_of  # noqa: E402


def profile(run, top: int = 25) -> None:
    profiler = cProfile.Profile()
    profiler.runcall(run)
    for order in ("cumulative", "tottime"):
        pstats.Stats(profiler).sort_stats(order).print_stats(top)


def main() -> int:
    from compiler.frontend.onnx_import import load_onnx
    from compiler.pipeline import Precision, compile
    from compiler.quantize.calibration import collect_ranges

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="edge")
    parser.add_argument("--models", default="resnet50,minilm")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--samples", type=int, default=1)
    parser.add_argument("--profile", action="store_true")
    args = parser.parse_args()
    if not args.profile:
        print(f"| model | precision | compile s (best of {args.repeat}) | calibration s | rest s |")
        print("|---|---|---:|---:|---:|")
    for name, model, make_input in models_and_inputs(args.models.split(",")):
        rng = np.random.default_rng(0)
        feeds = [make_input(rng) for _ in range(args.samples)]
        for mode in ("fp32", "int8"):
            precision = Precision(mode, feeds if mode == "int8" else None)
            run = partial(compile, model, args.config, opt_level=2, precision=precision)
            if args.profile:
                print(f"\n### {name} {mode}\n")
                profile(run)
                continue
            seconds = best_of(args.repeat, run)
            split = "| |"
            if mode == "int8":
                calibration = best_of(args.repeat, partial(collect_ranges, load_onnx(model).model, feeds))
                split = f"{calibration:.2f} | {seconds - calibration:.2f} |"
            print(f"| {name} | {mode} | {seconds:.2f} | {split}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
