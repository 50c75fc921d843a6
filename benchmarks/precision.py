"""Simulated cycles of ResNet-50 (light model, seeded random weights) and all-MiniLM-L6-v2
(sequence 128) in fp32, bf16 and int8 on one config, with the roofline bound of each.

    python benchmarks/precision.py [--config edge] [--models resnet50,minilm,vgg19] [--samples 4] [-O 2]
                                   [--fast-math]

int8 is calibrated (minmax) on a few seeded random inputs: the figures are cycles, not
accuracy (tests/test_ptq.py and docs/quantization.md measure accuracy).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def _image(name: str):
    """A maker of random images for the model input `name`."""
    return lambda rng: {name: rng.random((1, 3, 224, 224), dtype=np.float32)}


def _sentence(rng: np.random.Generator) -> dict:
    ids = rng.integers(1000, 30000, size=(1, 128)).astype(np.int64)
    ids[0, 0], ids[0, -1] = 101, 102
    return {"input_ids": ids, "attention_mask": np.ones_like(ids), "token_type_ids": np.zeros_like(ids)}


def models_and_inputs(names: list[str]):
    """(name, ONNX model, input maker) per model."""
    import onnx

    from models.cache import minilm_onnx
    from models.light import randomized

    for name in names:
        if name in ("resnet50", "vgg19"):
            model = randomized(name)
            constants = {tensor.name for tensor in model.graph.initializer}
            yield name, model, _image(next(i.name for i in model.graph.input if i.name not in constants))
        elif name == "minilm":
            yield name, onnx.load(str(minilm_onnx(static=True))), _sentence
        else:
            raise SystemExit(f"unknown model {name!r} (resnet50, vgg19, minilm)")


def main() -> int:
    from compiler.pipeline import Precision, compile
    from compiler.report import prediction_errors
    from runtime.simulator import run

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="edge")
    parser.add_argument("--models", default="resnet50,minilm")
    parser.add_argument("--samples", type=int, default=4)
    parser.add_argument("-O", dest="opt_level", type=int, choices=[0, 1, 2, 3], default=2)
    parser.add_argument("--fast-math", action="store_true", help="compile with the FAST_MATH passes")
    args = parser.parse_args()
    print("| model | precision | cycles | roofline | efficiency | matrix busy | vs fp32 | compile s "
          "| layers predicted within 5% (worst) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, model, make in models_and_inputs(args.models.split(",")):
        rng = np.random.default_rng(0)
        inputs = make(rng)
        fp32_cycles = None
        for mode in ("fp32", "bf16", "int8"):
            samples = [make(rng) for _ in range(args.samples)] if mode == "int8" else None
            start = time.perf_counter()
            program = compile(model, args.config, opt_level=args.opt_level, precision=Precision(mode, samples),
                              fast_math=args.fast_math)
            seconds = time.perf_counter() - start
            stats = run(program, inputs).stats
            cycles = stats["cycles"]
            fp32_cycles = fp32_cycles or cycles
            errors = [error for *_, error in prediction_errors(program, stats["layers"])]
            print(f"| {name} | {mode} | {cycles:,} | {stats['roofline_cycles']:,} | "
                  f"{stats['roofline_cycles'] / cycles:.2f} | {stats['engines']['matrix']:,} | "
                  f"{fp32_cycles / cycles:.2f}x | {seconds:.1f} | "
                  f"{sum(e <= 0.05 for e in errors)} of {len(errors)} ({max(errors):.1%}) |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
