"""Per-layer figures of a run (stats["layers"], acc-run --layers): attribution and the roofline per layer."""

from __future__ import annotations

from pathlib import Path

import pytest

from compiler.pipeline import compile
from isa.dtypes import DType
from runtime.cli import main as run_main
from runtime.simulator import run

CNN = Path(__file__).parent.parent / "models" / "digits" / "digits_cnn.onnx"


@pytest.mark.parametrize("config", ["tiny", "edge"])
def test_layers_account_for_the_run(config):
    program = compile(CNN, config, input_shapes={"image": (1, 1, 8, 8)})
    stats = run(program, None).stats
    layers = stats["layers"]
    assert [layer["node"] for layer in layers] == [entry.node for entry in program.debug]
    assert sum(layer["macs"] for layer in layers) == stats["macs"]
    assert sum(layer["dram_bytes"] for layer in layers) == stats["dram_bytes_read"] + stats["dram_bytes_written"]
    for layer in layers:
        # No layer beats its own roofline, and a layer without MACs is memory-bound.
        assert 0 < layer["efficiency"] <= 1.0 + 1e-9
        assert layer["cycles"] >= layer["roofline_cycles"]
        assert layer["bound"] == ("compute" if layer["macs"] and layer["utilization"] * layer["cycles"] >=
                                  layer["dram_bytes"] / program.config.dram_bytes_per_cycle else "memory")
        assert layer["start"] + layer["cycles"] <= stats["cycles"]


def test_acc_run_prints_the_layer_table(tmp_path, capsys):
    from isa import binfile

    target = tmp_path / "cnn.bin"
    binfile.save(compile(CNN, "edge", input_shapes={"image": (1, 1, 8, 8)}), target)
    assert run_main([str(target), "--layers"]) == 0
    lines = capsys.readouterr().out.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("node"))
    rows = lines[header + 1:header + 10]
    assert rows[0].startswith("/0/Conv") and rows[-1].startswith("/11/Gemm")
    assert all(row.split()[-1] in ("compute", "memory") for row in rows)


def test_roofline_plot(tmp_path):
    """acc-run --roofline writes a PNG; every plotted layer lies on or under its roof."""
    from isa import binfile
    from runtime.roofline import roofline_points

    program = compile(CNN, "edge", input_shapes={"image": (1, 1, 8, 8)}, opt_level=2)
    target, plot = tmp_path / "cnn.bin", tmp_path / "roof.png"
    binfile.save(program, target)
    assert run_main([str(target), "--roofline", str(plot)]) == 0
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    config = program.config
    points = roofline_points(run(program, None).stats["layers"])
    assert len(points) == 4  # three convolutions and the classifier
    for _, intensity, achieved in points:
        assert achieved <= min(config.peak_macs_per_cycle(DType.F32), config.dram_bytes_per_cycle * intensity) + 1e-9


@pytest.mark.parametrize("config", ["tiny", "edge"])
def test_report_predicts_each_layer_within_five_percent(config, capsys):
    """acc-compile --report's cost model (the timing rules replayed on a layer's instructions) is
    within 5% of the cycles the layer adds to the simulated run; the busiest resource by the
    latency formulas is a bound the layer's span never beats."""
    from compiler.cli import main as compile_main
    from compiler.report import layer_reports, prediction_errors

    program = compile(CNN, config, input_shapes={"image": (1, 1, 8, 8)}, opt_level=2)
    stats = run(program, None).stats
    layers = {layer["node"]: layer for layer in stats["layers"]}
    reports = layer_reports(program)
    assert [r.node for r in reports] == list(layers)
    assert sum(layer["own_cycles"] for layer in layers.values()) == stats["cycles"]
    for report, (_, predicted, own, error) in zip(reports, prediction_errors(program, stats["layers"]), strict=True):
        assert report.predicted == predicted and error <= 0.05, (report.node, predicted, own)
        assert 0 < report.busiest <= layers[report.node]["cycles"]
        assert 0 < report.scratchpad_bytes <= program.config.spad_bytes
    assert any("stationary" in note for report in reports for note in report.notes)
    assert compile_main([str(CNN), "--input-shape", "image=1,1,8,8", "--report", "-O2", "--config", config,
                         "-o", "/dev/null"]) in (0, 2)
    out = capsys.readouterr().out
    assert "predicted total" in out


@pytest.mark.slow
def test_cost_model_on_int8_resnet50():
    """The issue's check on its model: int8 ResNet-50 (seeded random weights) at -O2 on edge,
    every layer's prediction within 5% of the cycles it adds to the simulated run."""
    import numpy as np

    from compiler.pipeline import Precision
    from compiler.report import prediction_errors
    from models.light import randomized

    sample = {"gpu_0/data_0": np.random.default_rng(0).random((1, 3, 224, 224), dtype=np.float32)}
    program = compile(randomized("resnet50"), "edge", opt_level=2, precision=Precision("int8", [sample]))
    errors = prediction_errors(program, run(program, None).stats["layers"])
    assert len({node for layer, *_ in errors for node in layer.split(" + ")}) > 50  # a fused chain is one layer
    assert [e for e in errors if e[3] > 0.05] == []
