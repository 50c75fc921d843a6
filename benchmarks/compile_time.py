"""Compile wall time of ResNet-50 (light model, seeded random weights) and all-MiniLM-L6-v2
(sequence 128) at -O2, fp32 and int8, best of N runs.

    python benchmarks/compile_time.py [--config edge] [--models resnet50,minilm] [--repeat 3] [--profile]

int8 is calibrated on few samples (compile time, not accuracy): ResNet-50 on one seeded random image,
MiniLM on the first four calibration sentences. For int8 the table also splits the time into
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
import time
from functools import partial
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def models_and_calibration(names: list[str]):
    """(name, ONNX model, calibration feeds) per model."""
    from models.cache import minilm_onnx
    from models.light import randomized
    from models.minilm.sentences import CALIBRATION, tokenize

    for name in names:
        if name == "resnet50":
            rng = np.random.default_rng(0)
            yield name, randomized("resnet50"), [{"gpu_0/data_0": rng.random((1, 3, 224, 224), dtype=np.float32)}]
        elif name == "minilm":
            yield name, str(minilm_onnx(static=True)), list(tokenize(CALIBRATION[:4]))
        else:
            raise SystemExit(f"unknown model {name!r} (resnet50, minilm)")


def best_seconds(run, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return min(times)


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
    parser.add_argument("--profile", action="store_true")
    args = parser.parse_args()
    if not args.profile:
        print(f"| model | precision | compile s (best of {args.repeat}) | calibration s | rest s |")
        print("|---|---|---:|---:|---:|")
    for name, model, feeds in models_and_calibration(args.models.split(",")):
        for mode in ("fp32", "int8"):
            precision = Precision(mode, feeds if mode == "int8" else None)
            run = partial(compile, model, args.config, opt_level=2, precision=precision)
            if args.profile:
                print(f"\n### {name} {mode}\n")
                profile(run)
                continue
            seconds = best_seconds(run, args.repeat)
            split = "| |"
            if mode == "int8":
                calibration = best_seconds(partial(collect_ranges, load_onnx(model).model, feeds), args.repeat)
                split = f"{calibration:.2f} | {seconds - calibration:.2f} |"
            print(f"| {name} | {mode} | {seconds:.2f} | {split}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
