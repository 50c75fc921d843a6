"""How fast the simulator runs a compiled model, against onnxruntime on the same model.

    python benchmarks/simulator_speed.py [--config edge] [--models resnet50,...] [--repeat 3] [-O 2]

Prints, per onnx light model, the simulation wall time (best of --repeat), microseconds
per instruction, onnxruntime's single-threaded wall time and the ratio of the two (the
project's target: simulation within 20x onnxruntime).
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
from models.light import light_path  # noqa: E402
from runtime.simulator import run  # noqa: E402


def best_of(repeat: int, function) -> float:
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        function()
        best = min(best, time.perf_counter() - start)
    return best


def onnxruntime_seconds(model: onnx.ModelProto, inputs: dict[str, np.ndarray], repeat: int) -> float:
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    session = onnxruntime.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    session.run(None, inputs)  # warm up
    return best_of(repeat, lambda: session.run(None, inputs))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="edge")
    parser.add_argument("--models", default="resnet50")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("-O", dest="opt_level", type=int, choices=[0, 1, 2, 3], default=2)
    args = parser.parse_args()
    for name in args.models.split(","):
        model = onnx.load(str(light_path(name)))
        program = compile(model, args.config, opt_level=args.opt_level)
        x = np.random.default_rng(1).standard_normal(program.inputs[0].shape).astype(np.float32)
        inputs = {program.inputs[0].name: x}
        simulated = best_of(args.repeat, lambda: run(program, inputs))  # noqa: B023
        reference = onnxruntime_seconds(model, inputs, args.repeat)
        count = len(program.instructions)
        print(f"{name:14s} {args.config}: {count:7d} instructions  simulated {simulated:7.3f} s "
              f"({simulated / count * 1e6:5.1f} us/instruction)  onnxruntime {reference:6.3f} s  "
              f"ratio {simulated / reference:6.1f}x", flush=True)


if __name__ == "__main__":
    main()
