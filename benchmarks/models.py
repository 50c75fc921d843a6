"""Per model: compile and simulation wall time against onnxruntime, peak memory, cycles.

    python benchmarks/models.py [--config edge] [--models resnet50,minilm,...] [--json out.json]

Compile and simulation each run in a fresh process, so their peak memory (max RSS) is
their own; onnxruntime runs in this process on the same inputs, single-threaded and
multi-threaded, timed as the best of a few runs. Figures are wall times on this (shared,
noisy) machine: compare ratios from one run, not absolute seconds across runs.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

LIGHT = ["bvlc_alexnet", "densenet121", "inception_v1", "inception_v2", "resnet50", "shufflenet", "squeezenet",
         "vgg19", "zfnet512"]


def model_paths() -> dict[str, tuple[Path, dict]]:
    import onnx

    light = Path(onnx.__file__).parent / "backend" / "test" / "data" / "light"
    models = {"digits_cnn": (ROOT / "models/digits/digits_cnn.onnx", {"image": (1, 1, 8, 8)}),
              "digits_mlp": (ROOT / "models/digits/digits_mlp.onnx", {"pixels": (1, 64)})}
    models.update({name: (light / f"light_{name}.onnx", {}) for name in LIGHT})
    return models


def _child(code: str) -> tuple[dict, float, float]:
    """Run `code` in a fresh Python; it prints one JSON line. Returns (result, wall seconds, peak RSS MiB)."""
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(done.stderr.strip().splitlines()[-1] if done.stderr.strip() else "failed")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    return result, wall, result.pop("max_rss_kib") / 1024


_COMPILE = """
import json, resource, time
from compiler.pipeline import compile
from isa import binfile
start = time.perf_counter()
program = compile({path!r}, {config!r}, input_shapes={shapes!r})
seconds = time.perf_counter() - start
binfile.save(program, {target!r})
print(json.dumps({{"seconds": seconds, "instructions": len(program.instructions),
                  "max_rss_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}}))
"""

_SIMULATE = """
import json, resource, time
import numpy as np
from isa import binfile
from runtime.simulator import run
program = binfile.load({target!r})
inputs = dict(np.load({inputs!r}))
start = time.perf_counter()
result = run(program, inputs)
seconds = time.perf_counter() - start
np.savez({outputs!r}, **result.outputs)
stats = result.stats
print(json.dumps({{"seconds": seconds, "cycles": stats["cycles"], "roofline": stats["roofline_cycles"],
                  "max_rss_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}}))
"""


def _onnxruntime(path: Path, inputs: dict, threads: int) -> tuple[float, list]:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.log_severity_level = 3
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    outputs = session.run(None, inputs)
    best = float("inf")
    for _ in range(5):
        start = time.perf_counter()
        session.run(None, inputs)
        best = min(best, time.perf_counter() - start)
    return best, outputs


def sample_inputs(program) -> dict[str, np.ndarray]:
    """Seeded inputs of the right shapes and dtypes; token ids, masks and segment ids for a text model."""
    rng = np.random.default_rng(0)
    inputs = {}
    for t in program.inputs:
        if t.dtype.is_float:
            inputs[t.name] = rng.standard_normal(t.shape).astype(t.dtype.numpy)
        elif t.name == "attention_mask":
            inputs[t.name] = np.ones(t.shape, dtype=t.dtype.numpy)
        elif t.name == "token_type_ids":
            inputs[t.name] = np.zeros(t.shape, dtype=t.dtype.numpy)
        else:
            inputs[t.name] = rng.integers(1000, 30000, t.shape).astype(t.dtype.numpy)
    return inputs


def benchmark(name: str, path: Path, shapes: dict, config: str) -> dict:
    from isa import binfile

    with tempfile.TemporaryDirectory() as scratch:
        target = os.path.join(scratch, "model.bin")
        compiled, _, compile_rss = _child(_COMPILE.format(path=str(path), config=config, shapes=shapes, target=target))
        program = binfile.load(target)
        inputs = sample_inputs(program)
        np.savez(os.path.join(scratch, "in.npz"), **inputs)
        simulated, _, simulate_rss = _child(_SIMULATE.format(target=target, inputs=os.path.join(scratch, "in.npz"),
                                                             outputs=os.path.join(scratch, "out.npz")))
        ort_seconds, reference = _onnxruntime(path, inputs, threads=1)
        ort_default_seconds, _ = _onnxruntime(path, inputs, threads=0)  # onnxruntime's own choice (all cores)
        with np.load(os.path.join(scratch, "out.npz")) as outputs:
            actual = [outputs[t.name] for t in program.outputs]
    errors = [float(np.abs(a.astype(np.float64) - r).max() / max(np.abs(r).max(), 1e-30))
              for a, r in zip(actual, reference, strict=True)]
    return {"model": name, "compile_s": compiled["seconds"], "instructions": compiled["instructions"],
            "simulate_s": simulated["seconds"], "onnxruntime_s": ort_seconds,
            "onnxruntime_default_s": ort_default_seconds, "sim_over_ort": simulated["seconds"] / ort_seconds,
            "compile_peak_mib": compile_rss,
            "simulate_peak_mib": simulate_rss, "cycles": simulated["cycles"], "roofline_cycles": simulated["roofline"],
            "efficiency": simulated["roofline"] / simulated["cycles"], "max_rel_error": max(errors)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="edge")
    parser.add_argument("--models", help="comma-separated names (default: all)")
    parser.add_argument("--json", help="also write the rows as JSON")
    args = parser.parse_args()
    models = model_paths()
    try:
        from models.cache import minilm_onnx

        models["minilm"] = (minilm_onnx(static=True), {})
    except Exception as err:  # the export needs torch/transformers; say so and go on
        print(f"minilm skipped: {err}", file=sys.stderr)
    names = args.models.split(",") if args.models else list(models)
    header = (f"{'model':<14} {'compile s':>9} {'sim s':>8} {'ort s':>8} {'ort*':>8} {'sim/ort':>8} {'comp MiB':>9} "
              f"{'sim MiB':>8} {'cycles':>12} {'roofline':>12} {'eff':>6} {'rel err':>9}")
    print(f"config {args.config}; ort = onnxruntime single-threaded, ort* = its default threads; best of 5; "
          "sim/ort against the single-threaded figure")
    print(header)
    rows = []
    for name in names:
        path, shapes = models[name]
        try:
            row = benchmark(name, path, shapes, args.config)
        except Exception as err:
            print(f"{name:<14} failed: {err}")
            continue
        rows.append(row)
        print(f"{name:<14} {row['compile_s']:>9.2f} {row['simulate_s']:>8.2f} {row['onnxruntime_s']:>8.4f} "
              f"{row['onnxruntime_default_s']:>8.4f} "
              f"{row['sim_over_ort']:>8.1f} {row['compile_peak_mib']:>9.0f} {row['simulate_peak_mib']:>8.0f} "
              f"{row['cycles']:>12} {row['roofline_cycles']:>12.0f} {row['efficiency']:>6.3f} "
              f"{row['max_rel_error']:>9.1e}", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
