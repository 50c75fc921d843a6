"""The onnx light models on acc against onnxruntime: shipped weights and seeded random weights.

    python benchmarks/light_models.py [--config edge] [--models resnet50,...] [--variants shipped,random]

Prints, per model and variant, the largest error relative to the output's magnitude,
the cosine similarity, PASS/FAIL at the fp32 tolerance (1e-4, 0.99999), and the compile
and simulation wall times.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import onnx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from compiler.pipeline import compile  # noqa: E402
from models.light import NAMES, light_path, randomized  # noqa: E402
from runtime.compare import TOLERANCES, compare_arrays, first_divergence, reference_outputs  # noqa: E402
from runtime.simulator import run  # noqa: E402


def check(name: str, variant: str, config: str) -> tuple[bool, str]:
    model = onnx.load(str(light_path(name))) if variant == "shipped" else randomized(name, seed=0)
    start = time.perf_counter()
    program = compile(model, config)
    compiled = time.perf_counter() - start
    x = np.random.default_rng(1).standard_normal(program.inputs[0].shape).astype(np.float32)
    inputs = {program.inputs[0].name: x}
    start = time.perf_counter()
    result = run(program, inputs, keep_tensors=True)
    simulated = time.perf_counter() - start
    # Every intermediate tensor too: a saturated softmax at the end would hide errors before it.
    expected = reference_outputs(model, inputs, [t.name for t in program.debug_tensors])
    tolerance = TOLERANCES["fp32"]
    verdicts = [compare_arrays(t.name, result.outputs[t.name], expected[t.name], tolerance) for t in program.outputs]
    layers, first = first_divergence([(t.node, t.name) for t in program.debug_tensors], result.tensors, expected,
                                     tolerance)
    passed = all(v.passed for v in verdicts) and first is None
    worst = max(verdicts, key=lambda v: v.max_rel)
    worst_layer = max((c.max_rel for _, c in layers), default=0.0)
    line = (f"{name:<14} {variant:<8} output: max rel {worst.max_rel:.2e} cosine {worst.cosine:.8f}; "
            f"{len(layers)} layers: worst max rel {worst_layer:.2e}  {'PASS' if passed else 'FAIL'}  "
            f"compile {compiled:5.1f} s  simulate {simulated:5.1f} s  cycles {result.stats['cycles']}")
    if first is not None:
        line += f"\n    first divergence: node {first[0]!r}: {first[1].line().strip()}"
    return passed, line


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="edge")
    parser.add_argument("--models", default=",".join(NAMES))
    parser.add_argument("--variants", default="shipped,random")
    args = parser.parse_args()
    failures = 0
    for name in args.models.split(","):
        for variant in args.variants.split(","):
            passed, line = check(name, variant, args.config)
            failures += not passed
            print(line, flush=True)
    print(f"{failures} failed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
