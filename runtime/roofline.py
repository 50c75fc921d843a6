"""`acc-run --roofline plot.png`: each layer of a run against the roofline of its config.

A layer with multiply-adds is a point at (arithmetic intensity = MACs per DRAM byte it
moved, achieved MACs per cycle over its span); the roof is min(peak MACs per cycle of the
program's precision, DRAM bytes per cycle x intensity). Layers without MACs (element-wise,
movement) have no place on this plot; their cycles are listed in the title. matplotlib is
imported only here, when a plot is asked for.
"""

from __future__ import annotations

import numpy as np

from isa.config import AcceleratorConfig
from isa.dtypes import DType

PRECISION_DTYPE = {"fp32": DType.F32, "bf16": DType.BF16, "w8a16": DType.BF16, "int8": DType.I8}


def roofline_points(layers: list[dict]) -> list[tuple[str, float, float]]:
    """(node, MACs per DRAM byte, MACs per cycle) of the layers that multiply."""
    return [(layer["node"], layer["macs"] / max(layer["dram_bytes"], 1), layer["macs"] / layer["cycles"])
            for layer in layers if layer["macs"]]


def plot_roofline(layers: list[dict], config: AcceleratorConfig, precision: str, title: str = "") -> bytes:
    """The plot as PNG bytes."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    peak = config.peak_macs_per_cycle(PRECISION_DTYPE[precision])
    bandwidth = config.dram_bytes_per_cycle
    points = roofline_points(layers)
    others = sum(layer["cycles"] for layer in layers if not layer["macs"])
    figure, axes = plt.subplots(figsize=(8, 5.5))
    intensities = [p[1] for p in points] or [1.0]
    low, high = min(intensities + [peak / bandwidth]) / 4, max(intensities + [peak / bandwidth]) * 4
    x = np.geomspace(low, high, 200)
    axes.plot(x, np.minimum(peak, bandwidth * x), color="black", label=f"roofline ({precision}: {peak:g} MACs/cycle, "
                                                                          f"{bandwidth:g} B/cycle)")
    if points:
        axes.scatter([p[1] for p in points], [p[2] for p in points], s=18, alpha=0.7, label="layers")
        # Name the layers furthest below their roof.
        worst = sorted(points, key=lambda p: p[2] / min(peak, bandwidth * p[1]))[:5]
        for node, intensity, achieved in worst:
            axes.annotate(node[:24], (intensity, achieved), fontsize=7, xytext=(4, -8), textcoords="offset points")
    axes.set_xscale("log")
    axes.set_yscale("log")
    axes.set_xlabel("arithmetic intensity (MACs per DRAM byte)")
    axes.set_ylabel("achieved MACs per cycle")
    heading = title or f"config {config.name}"
    axes.set_title(f"{heading}: {len(points)} layers with MACs; {others:,} cycles in layers without")
    axes.grid(True, which="both", alpha=0.3)
    axes.legend(loc="lower right", fontsize=8)
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=120)
    plt.close(figure)
    return buffer.getvalue()
