"""Post-training quantization: calibration, and (later) the pass that quantizes the graph."""

from compiler.quantize.calibration import TensorRange, collect_ranges, load_samples

__all__ = ["TensorRange", "collect_ranges", "load_samples"]
