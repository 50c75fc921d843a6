"""Calibration for int8 post-training quantization: the range of every float tensor over sample inputs.

`load_samples` reads an .npz of sample inputs and checks it against the model; `collect_ranges`
runs onnxruntime on each sample, with every float32 tensor a node produces made a graph output,
and reduces what it sees to one `TensorRange` per tensor (the graph's float inputs included).
The methods mirror onnxruntime.quantization's calibrators and TensorRT's:

- `minmax`: the lowest and highest value seen in any sample.
- `percentile`, `entropy`, `mse` choose a symmetric threshold t on a histogram of |x| and report
  (max(-t, min), min(t, max)): never wider than minmax, and one-sided when the values are
  (a Relu's output: low is 0).
  - `percentile`: t is the upper edge of the first bin at which the histogram's cumulative
    count reaches `percentile` % (99.999 by default) of all values.
  - `entropy` (TensorRT): for every i from 128 bins up to the last non-empty one, the
    reference P is the first i bins with the count beyond them added to bin i-1, Q is those i
    bins merged into 128 levels and spread back evenly over P's non-empty bins; t = i bin
    widths for the i minimising KL(P || Q) (both smoothed as onnxruntime does).
  - `mse` (as pytorch-quantization's histogram calibrator): for every candidate t of 128 bin
    widths and more, symmetric int8 fake quantization of the bin centres c,
    q = min(round(c * 127 / t), 127) * t / 127, with error sum(count * (c - q)^2); the t of
    the least error.

The histogram has `num_bins` bins over [0, T] and is filled one sample at a time, so only
one sample's activations are held. T starts at the first sample's max |x|; when a later sample
exceeds it, T doubles (adjacent bins merge pairwise, exactly) until the sample fits. The
resolution is therefore at worst half the bins over the range actually seen, and one pass over
the samples suffices. Tensors with no elements get no range.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import onnx

from compiler.errors import CalibrationError, ModelError
from compiler.frontend.input_shapes import dims_text, resolve_input_shapes, set_input_shapes
from compiler.frontend.onnx_import import ModelSource, load_onnx, without_large_initializers
from isa.cli_common import ProgressLine

if TYPE_CHECKING:
    import onnxruntime

METHODS = ("minmax", "percentile", "entropy", "mse")
QUANTIZED_LEVELS = 127  # int8 symmetric: levels -127..127, so 127 steps from zero to the threshold
ENTROPY_LEVELS = 128  # TensorRT's target bins for the KL search on |x|


@dataclass(frozen=True)
class TensorRange:
    """The range a tensor is quantized with: what was observed (minmax) or chosen within it."""

    low: float
    high: float


# Samples -------------------------------------------------------------------------------------------
def load_samples(path: str | Path, model: ModelSource,
                 input_shapes: Mapping[str, Iterable[int]] | None = None) -> list[dict[str, np.ndarray]]:
    """The feeds of the samples in the .npz at `path`, one dict per sample.

    The archive holds one array per model input, keyed by its name, with the samples stacked
    along axis 0: the input's shape with its first dimension multiplied by the number of
    samples N ([N, 1, 8, 8] for an input [1, 1, 8, 8]; [N] for a scalar input). Dynamic
    dimensions are bound by `input_shapes` as the compiler's are. Float inputs take float32;
    int64 inputs int64 or int32 (converted); others their own type. Anything else is a
    `CalibrationError` naming the array and the problem."""
    graph = load_onnx(model).model.graph
    shapes = _static_input_shapes(graph, dict(input_shapes or {}))
    arrays = _read_npz(path)
    source = str(path)
    if not arrays:
        raise CalibrationError(f"{source}: no arrays (empty calibration set)")
    unknown = [name for name in arrays if name not in shapes]
    if unknown:
        raise CalibrationError(f"{source}: array {unknown[0]!r} is not an input of the model "
                               f"(inputs: {', '.join(shapes)})")
    missing = [name for name in shapes if name not in arrays]
    if missing:
        raise CalibrationError(f"{source}: no array for model input {missing[0]!r}")
    elem_types = {value.name: value.type.tensor_type.elem_type for value in graph.input}
    counts = {}
    for name, dims in shapes.items():
        arrays[name] = _checked_dtype(source, name, arrays[name], elem_types[name])
        counts[name] = _sample_count(source, name, arrays[name], dims)
    if len(set(counts.values())) > 1:
        raise CalibrationError(f"{source}: the arrays hold different numbers of samples: "
                               + ", ".join(f"{name!r} {count}" for name, count in counts.items()))
    count = next(iter(counts.values()))
    if count == 0:
        raise CalibrationError(f"{source}: no samples (the arrays have 0 rows)")
    for name, array in arrays.items():
        if array.dtype.kind == "f":
            nan, infinite = int(np.isnan(array).sum()), int(np.isinf(array).sum())
            if nan or infinite:
                raise CalibrationError(f"{source}: array {name!r} has {nan} NaN and {infinite} infinite values")
    samples = []
    for index in range(count):
        feed = {}
        for name, dims in shapes.items():
            rows = dims[0] if dims else 1
            piece = arrays[name][index * rows:(index + 1) * rows]
            feed[name] = piece.reshape(dims)
        samples.append(feed)
    return samples


def _static_input_shapes(graph: onnx.GraphProto, bindings: dict) -> dict[str, list[int]]:
    """Every model input's static shape: the model's, with `bindings` fixing its dynamic dimensions."""
    resolved = resolve_input_shapes(graph, bindings)
    initializers = {t.name for t in graph.initializer} | {t.values.name for t in graph.sparse_initializer}
    return {value.name: resolved.get(value.name, [d.dim_value for d in value.type.tensor_type.shape.dim])
            for value in graph.input if value.name not in initializers}


def _read_npz(path: str | Path) -> dict[str, np.ndarray]:
    try:
        archive = np.load(path, allow_pickle=False)
        if not isinstance(archive, np.lib.npyio.NpzFile):
            raise CalibrationError(f"{path}: not an .npz archive (a single .npy array)")
        with archive:
            return {name: archive[name] for name in archive.files}
    except CalibrationError:
        raise
    except Exception as error:  # missing file, not a zip, pickled objects, a corrupt member, ...
        raise CalibrationError(f"{path}: not a readable .npz file: {_one_line(error)}") from None


def _checked_dtype(source: str, name: str, array: np.ndarray, elem_type: int) -> np.ndarray:
    expected = onnx.helper.tensor_dtype_to_np_dtype(elem_type)
    if array.dtype == expected:
        return array
    if expected == np.int64 and array.dtype == np.int32:
        return array.astype(np.int64)
    accepted = "int64 or int32" if expected == np.int64 else str(expected)
    raise CalibrationError(f"{source}: array {name!r} has dtype {array.dtype}; the model input takes {accepted}")


def _sample_count(source: str, name: str, array: np.ndarray, dims: list[int]) -> int:
    """N, from an array holding N samples of shape `dims` stacked along axis 0."""
    rows = dims[0] if dims else 1
    stacked = ["N" if rows == 1 else f"N*{rows}", *map(str, dims[1:])]
    expected = "[" + ", ".join(stacked) + "]"
    if array.ndim != max(len(dims), 1) or list(array.shape[1:]) != dims[1:] or array.shape[0] % rows:
        raise CalibrationError(f"{source}: array {name!r} has shape {dims_text(array.shape)}; expected {expected} "
                               f"(N samples of the input's shape {dims_text(dims)})")
    return array.shape[0] // rows


# Ranges --------------------------------------------------------------------------------------------
def collect_ranges(model: ModelSource, samples: Sequence[Mapping[str, np.ndarray]], method: str = "minmax",
                   progress: bool = False, *, percentile: float = 99.999,
                   num_bins: int = 2048) -> dict[str, TensorRange]:
    """The range of every float32 tensor (graph inputs and node outputs) over `samples`, by `method`.

    `samples` are feeds as `load_samples` returns them. With `progress`, a progress line on
    stderr counts the samples run. A sample onnxruntime refuses, or one that makes a tensor NaN
    or infinite, is a `CalibrationError` naming the sample."""
    if method not in METHODS:
        raise ValueError(f"method must be one of {', '.join(METHODS)}, not {method!r}")
    if not 0 < percentile <= 100:
        raise ValueError(f"percentile must be in (0, 100], not {percentile}")
    if num_bins < 2 * ENTROPY_LEVELS or num_bins % 2:
        raise ValueError(f"num_bins must be even and at least {2 * ENTROPY_LEVELS}, not {num_bins}")
    if not samples:
        raise CalibrationError("no calibration samples")
    session, input_names = _observing_session(load_onnx(model), samples)
    output_names = [output.name for output in session.get_outputs()]
    bins = None if method == "minmax" else num_bins
    stats: dict[str, _TensorStats] = {}
    report = ProgressLine("calibrating", len(samples), "samples") if progress else None
    try:
        for index, feed in enumerate(samples):
            try:
                outputs = session.run(output_names, dict(feed))
            except Exception as error:  # onnxruntime's InvalidArgument, Fail, ... on this sample's values
                raise CalibrationError(f"sample {index}: onnxruntime failed: {_one_line(error)}") from None
            values = [(name, feed[name]) for name in input_names] + list(zip(output_names, outputs, strict=True))
            for name, value in values:
                if value.size:
                    stats.setdefault(name, _TensorStats(bins)).add(name, index, value)
            if report:
                report.step()
    finally:
        if report:
            report.close()
    return {name: tensor.range(method, percentile) for name, tensor in stats.items()}


def _observing_session(loaded, samples) -> tuple[onnxruntime.InferenceSession, list[str]]:
    """A CPU session on a copy of the model whose outputs are every float32 node output; the float inputs' names.

    The copy's dynamic inputs get the samples' shapes when all samples agree, so that shape
    inference types every tensor it can; tensors it leaves untyped are not observed."""
    # Imported here: importing compiler.quantize (for the quantization pass) need not load onnxruntime.
    import onnxruntime

    model = onnx.ModelProto()
    model.CopyFrom(loaded.model)
    graph = model.graph
    initializers = {t.name for t in graph.initializer}
    inputs = [value for value in graph.input if value.name not in initializers]
    agreed = {}
    for value in inputs:
        dims = [d.dim_value if d.HasField("dim_value") else None for d in value.type.tensor_type.shape.dim]
        shapes = {tuple(np.shape(feed[value.name])) for feed in samples if value.name in feed}
        # Only shapes that fit the model's: onnxruntime refuses the others, naming the sample.
        if len(shapes) == 1 and None in dims:
            shape = shapes.pop()
            if len(shape) == len(dims) and all(d in (None, size) for d, size in zip(dims, shape, strict=True)):
                agreed[value.name] = list(shape)
    set_input_shapes(graph, agreed)
    try:
        inferred = onnx.shape_inference.infer_shapes(without_large_initializers(model)).graph
    except Exception as error:  # onnx's InferenceError, ValidationError
        raise ModelError(f"{loaded.source}: shape inference failed: {_one_line(error)}") from None
    float_type = onnx.TensorProto.FLOAT
    typed = {value.name: value.type.tensor_type.elem_type for value in (*inferred.value_info, *inferred.output)}
    present = {output.name for output in graph.output}
    for node in graph.node:
        for name in node.output:
            if name and typed.get(name) == float_type and name not in present:
                graph.output.add().name = name
                graph.output[-1].type.tensor_type.elem_type = float_type
                present.add(name)
    options = onnxruntime.SessionOptions()
    # The unfused graph's tensors are the ones the quantizer sees; fusion would hide some of them.
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.log_severity_level = 3
    try:
        session = onnxruntime.InferenceSession(model.SerializeToString(), options,
                                               providers=["CPUExecutionProvider"])
    except Exception as error:
        raise ModelError(f"{loaded.source}: onnxruntime cannot load it: {_one_line(error)}") from None
    float_inputs = [value.name for value in inputs if value.type.tensor_type.elem_type == float_type]
    return session, float_inputs


class _TensorStats:
    """One tensor's min and max over the samples and, when `bins`, its histogram of |x| (see the module doc)."""

    def __init__(self, bins: int | None):
        self.low, self.high = np.inf, -np.inf
        self.hist = np.zeros(bins, np.int64) if bins else None
        self.top = 0.0  # T: the histogram covers [0, top]; 0 while every value seen was 0

    def add(self, name: str, index: int, value: np.ndarray) -> None:
        low, high = float(value.min()), float(value.max())
        if not (np.isfinite(low) and np.isfinite(high)):
            bad = int((~np.isfinite(value)).sum())
            raise CalibrationError(f"sample {index}: tensor {name!r} has {bad} NaN or infinite values")
        self.low, self.high = min(self.low, low), max(self.high, high)
        if self.hist is None:
            return
        amax = max(-low, high)
        if self.top == 0.0:
            self.top = amax
        while amax > self.top:
            self.hist = np.concatenate([self.hist.reshape(-1, 2).sum(axis=1), np.zeros(self.hist.size // 2, np.int64)])
            self.top *= 2
        if self.top == 0.0:
            self.hist[0] += value.size
        else:
            self.hist += np.histogram(np.abs(value), bins=self.hist.size, range=(0.0, self.top))[0]

    def range(self, method: str, percentile: float) -> TensorRange:
        if method == "minmax" or self.top == 0.0:
            return TensorRange(self.low, self.high)
        width = self.top / self.hist.size
        hist = self.hist[:int(np.flatnonzero(self.hist)[-1]) + 1]  # bins beyond the last value change nothing
        if method == "percentile":
            cumulative = np.cumsum(hist)
            threshold = (int(np.searchsorted(cumulative, cumulative[-1] * percentile / 100.0)) + 1) * width
        elif method == "entropy":
            threshold = _entropy_bins(hist) * width
        else:
            threshold = _mse_bins(hist) * width
        return TensorRange(max(-float(threshold), self.low), min(float(threshold), self.high))


def _entropy_bins(hist: np.ndarray, levels: int = ENTROPY_LEVELS) -> int:
    """The number of bins i >= `levels` whose KL divergence after quantization to `levels` levels is least."""
    if hist.size <= levels:
        return hist.size
    counts = hist.astype(np.float64)
    beyond = counts[::-1].cumsum()[::-1]  # beyond[i]: the count in bins i and up
    best, best_divergence = hist.size, np.inf
    for i in range(levels, hist.size + 1):
        reference = counts[:i].copy()
        if i < hist.size:
            reference[-1] += beyond[i]
        merged = i // levels
        level_of = np.minimum(np.arange(i) // merged, levels - 1)
        level_counts = np.bincount(level_of, weights=counts[:i], minlength=levels)
        nonzero = reference != 0
        spread = np.bincount(level_of[nonzero], minlength=levels)
        candidate = np.where(nonzero, level_counts[level_of] / np.maximum(spread[level_of], 1), 0.0)
        divergence = _kl_divergence(reference, candidate)
        if divergence < best_divergence:
            best, best_divergence = i, divergence
    return best


def _kl_divergence(p: np.ndarray, q: np.ndarray, epsilon: float = 1e-4) -> float:
    """KL(p || q) of two histograms after onnxruntime's smoothing (zero bins get `epsilon`, taken from the others)."""
    smoothed = []
    for counts in (p, q):
        zero = counts == 0
        nonzero = counts.size - int(zero.sum())
        if nonzero == 0:
            return np.inf
        counts = counts + np.where(zero, epsilon, -epsilon * (counts.size - nonzero) / nonzero)
        smoothed.append(counts / counts.sum())
    p, q = smoothed
    return float(np.sum(p * np.log(p / q)))


def _mse_bins(hist: np.ndarray, levels: int = QUANTIZED_LEVELS, start: int = 128) -> float:
    """The threshold, in bin widths, of least int8 quantization error of the bin centres (candidates from `start`)."""
    if hist.size <= start:
        return float(hist.size)
    centres = np.arange(hist.size) + 0.5
    counts = hist.astype(np.float64)
    best, best_error = float(hist.size), np.inf
    for first in range(start, hist.size + 1, 256):  # in chunks, to bound the candidates x bins matrix
        thresholds = np.arange(first, min(first + 256, hist.size + 1), dtype=np.float64)[:, None]
        step = thresholds / levels
        quantized = np.minimum(np.round(centres / step), levels) * step
        errors = ((centres - quantized) ** 2 * counts).sum(axis=1)
        index = int(np.argmin(errors))
        if errors[index] < best_error:
            best, best_error = float(thresholds[index, 0]), errors[index]
    return best


def _one_line(error: BaseException, limit: int = 300) -> str:
    """An exception's message as one line (onnxruntime's run over several), cut at `limit` characters."""
    text = " ".join(str(error).split()) or type(error).__name__
    return text if len(text) <= limit else text[:limit - 3] + "..."
