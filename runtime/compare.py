"""Compare a simulated run with onnxruntime: per output, and per layer to find where they part.

The verdict depends on the program's precision: float outputs pass when the largest
absolute error is at most `rel_tolerance` of the reference's magnitude and the cosine
similarity is at least `cosine`; integer and bool outputs must match exactly.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

from isa.errors import InputError


@dataclass(frozen=True)
class Tolerance:
    rel: float
    cosine: float


TOLERANCES = {"fp32": Tolerance(1e-4, 0.99999), "bf16": Tolerance(2e-2, 0.999), "w8a16": Tolerance(5e-2, 0.998),
              "int8": Tolerance(1e-1, 0.99)}


@dataclass(frozen=True)
class Comparison:
    name: str
    max_abs: float
    max_rel: float  # max abs error / max |reference|
    cosine: float
    passed: bool
    shape_ok: bool = True

    def line(self) -> str:
        if not self.shape_ok:
            return f"  {self.name:<24} shape differs from the reference   FAIL"
        return (f"  {self.name:<24} max abs {self.max_abs:.3e}   max rel {self.max_rel:.3e}   "
                f"cosine {self.cosine:.7f}   {'PASS' if self.passed else 'FAIL'}")


def compare_arrays(name: str, actual: np.ndarray, expected: np.ndarray, tolerance: Tolerance) -> Comparison:
    if actual.shape != expected.shape:
        return Comparison(name, np.inf, np.inf, 0.0, False, shape_ok=False)
    if expected.dtype.kind in "biu" or actual.dtype.kind in "biu":
        exact = np.array_equal(actual.astype(np.int64), expected.astype(np.int64))
        difference = np.abs(actual.astype(np.float64) - expected.astype(np.float64))
        max_abs = float(difference.max()) if difference.size else 0.0
        return Comparison(name, max_abs, max_abs / max(float(np.abs(expected).max(initial=0)), 1.0), 1.0 if exact
                          else 0.0, exact)
    a = actual.astype(np.float64).ravel()
    e = expected.astype(np.float64).ravel()
    both_nan = np.isnan(a) & np.isnan(e)
    a, e = np.where(both_nan, 0.0, a), np.where(both_nan, 0.0, e)
    difference = np.abs(a - e)
    max_abs = float(np.nanmax(difference, initial=0.0)) if not np.isnan(difference).any() else np.inf
    magnitude = float(np.abs(e).max(initial=0.0))
    max_rel = max_abs / magnitude if magnitude > 0 else max_abs
    norms = np.linalg.norm(a) * np.linalg.norm(e)
    cosine = float(a @ e / norms) if norms > 0 else (1.0 if max_abs == 0 else 0.0)
    passed = max_rel <= tolerance.rel and (cosine >= tolerance.cosine or max_abs == 0.0)
    return Comparison(name, max_abs, max_rel, cosine, bool(passed))


def _session(model: onnx.ModelProto) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.log_severity_level = 3
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def load_reference(path: str | Path) -> onnx.ModelProto:
    try:
        return onnx.load(str(path))
    except FileNotFoundError:
        raise InputError(f"reference model {str(path)!r} does not exist") from None
    except Exception as err:  # onnx raises protobuf's DecodeError and others for non-ONNX files
        raise InputError(f"reference model {str(path)!r} is not a readable ONNX file ({type(err).__name__})") from None


def reference_outputs(model: onnx.ModelProto, inputs: dict[str, np.ndarray],
                      extra: list[str] | None = None) -> dict[str, np.ndarray]:
    """onnxruntime's outputs for `inputs`; `extra` names intermediate values to return as well."""
    model = onnx.ModelProto.FromString(model.SerializeToString())
    if extra:
        inferred = onnx.shape_inference.infer_shapes(model)
        types = {v.name: v.type for v in list(inferred.graph.value_info) + list(inferred.graph.output)}
        present = {o.name for o in model.graph.output}
        for name in extra:
            if name in types and name not in present:
                model.graph.output.append(onnx.helper.make_value_info(name, types[name]))
    session = _session(model)
    wanted = {i.name for i in session.get_inputs()}
    feeds = {name: value for name, value in inputs.items() if name in wanted}
    missing = wanted - set(feeds)
    if missing:
        raise InputError(f"the reference model needs inputs the program does not have: {', '.join(sorted(missing))}")
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, feeds), strict=True))


def layer_tensors(debug_tensors, tensors: dict[str, np.ndarray], expected: dict[str, np.ndarray]):
    """(node, reference tensor name) in program order, and the program's values under those names.

    A tensor the reference model has is compared as it is; a quantized tensor the reference
    lacks (an fp32 model against an int8 program) is dequantized with its scale and zero point
    and compared with the float tensor it quantizes."""
    order, actual = [], {}
    for t in debug_tensors:
        if t.name not in tensors:
            continue
        if t.name in expected or not (t.source and t.scale):
            order.append((t.node or t.name, t.name))
            actual[t.name] = tensors[t.name]
        else:
            order.append((t.node or t.name, t.source))
            integers = tensors[t.name].astype(np.int64) - t.zero_point[0]
            actual[t.source] = (integers.astype(np.float32) * np.float32(t.scale[0])).astype(np.float32)
    return order, actual


def first_divergence(layers: list[tuple[str, str]], actual: dict[str, np.ndarray], expected: dict[str, np.ndarray],
                     tolerance: Tolerance) -> tuple[list[tuple[str, Comparison]], tuple[str, Comparison] | None]:
    """Compare each (node, tensor) in program order; returns all comparisons and the first failing one."""
    results = []
    first = None
    for node, tensor in layers:
        if tensor not in actual or tensor not in expected:
            continue
        comparison = compare_arrays(tensor, actual[tensor], expected[tensor], tolerance)
        results.append((node, comparison))
        if first is None and not comparison.passed:
            first = (node, comparison)
    return results, first
