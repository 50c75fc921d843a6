"""Calibration: sample files checked against the model, minmax ranges equal to what onnxruntime
computes for each tensor on its own, the histogram methods inside minmax and narrower where
there is an outlier, and the one-line errors for bad sample files."""

import numpy as np
import onnx
import onnxruntime
import pytest
from onnx import TensorProto, helper, numpy_helper

from compiler.errors import CalibrationError, InputShapeError
from compiler.quantize import TensorRange, collect_ranges, load_samples
from models.digits.data import load_split

CNN = "models/digits/digits_cnn.onnx"
F, I64 = TensorProto.FLOAT, TensorProto.INT64
HISTOGRAM_METHODS = ["percentile", "entropy", "mse"]


def make(nodes, inputs, outputs, initializers=()):
    """A checked opset-17 model; inputs/outputs are (name, elem_type, shape) triples."""
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info(*i) for i in inputs],
                              [helper.make_tensor_value_info(*o) for o in outputs],
                              [numpy_helper.from_array(np.asarray(a), n) for n, a in initializers])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    return model


def two_inputs():
    return make([helper.make_node("Add", ["x", "y"], ["z"])], [("x", F, [1, 4]), ("y", F, [1, 4])], [("z", F, [1, 4])])


@pytest.fixture(scope="module")
def images():
    return load_split("cnn")[2][:16]


@pytest.fixture(scope="module")
def cnn_samples(images, tmp_path_factory):
    path = tmp_path_factory.mktemp("npz") / "digits.npz"
    np.savez(path, image=images)
    return load_samples(path, CNN, input_shapes={"image": (1, 1, 8, 8)})


def run_alone(model, tensor, feeds):
    """`tensor` computed by onnxruntime from the part of `model` that produces it, for each feed."""
    part = onnx.utils.Extractor(onnx.shape_inference.infer_shapes(model)).extract_model([i.name for i in model.graph.input], [tensor])
    options = onnxruntime.SessionOptions()
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = onnxruntime.InferenceSession(part.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return [session.run([tensor], feed)[0] for feed in feeds]


def test_load_samples_splits_the_stack(images, cnn_samples):
    assert len(cnn_samples) == 16
    assert all(list(feed) == ["image"] and feed["image"].shape == (1, 1, 8, 8) for feed in cnn_samples)
    np.testing.assert_array_equal(cnn_samples[3]["image"][0], images[3])


def test_minmax_is_the_min_and_max_onnxruntime_computes(cnn_samples):
    model = onnx.load(CNN)
    ranges = collect_ranges(CNN, cnn_samples, method="minmax")
    node_outputs = [name for node in model.graph.node for name in node.output]
    assert sorted(ranges) == sorted(["image", *node_outputs])
    for name in node_outputs:
        values = run_alone(model, name, cnn_samples)
        assert ranges[name] == TensorRange(min(float(v.min()) for v in values), max(float(v.max()) for v in values))
    assert ranges["image"] == TensorRange(0.0, 1.0)


@pytest.mark.parametrize("method", HISTOGRAM_METHODS)
def test_histogram_methods_stay_within_minmax(cnn_samples, method):
    minmax = collect_ranges(CNN, cnn_samples, method="minmax")
    ranges = collect_ranges(onnx.load(CNN), cnn_samples, method=method)
    assert sorted(ranges) == sorted(minmax)
    for name, tensor in ranges.items():
        assert minmax[name].low <= tensor.low <= tensor.high <= minmax[name].high, name
    # Relu outputs stay one-sided: the symmetric threshold is clipped to what was seen.
    assert ranges["/2/Relu_output_0"].low == 0.0


@pytest.mark.parametrize("method", HISTOGRAM_METHODS)
def test_histogram_methods_clip_an_outlier(method):
    model = make([helper.make_node("Mul", ["x", "two"], ["y"])], [("x", F, [1, 4096])], [("y", F, [1, 4096])],
                 [("two", np.float32(2.0))])
    rng = np.random.default_rng(0)
    samples = [{"x": rng.standard_normal((1, 4096)).astype(np.float32)} for _ in range(32)]
    samples[5]["x"][0, 7] = 50.0  # one value in 131,072
    minmax = collect_ranges(model, samples)
    assert minmax["y"].high == 100.0
    ranges = collect_ranges(model, samples, method=method)
    for name in ("x", "y"):
        assert minmax[name].low <= ranges[name].low < 0 < ranges[name].high < 0.8 * minmax[name].high, (name, ranges)


def test_histogram_keeps_earlier_samples_when_a_later_one_exceeds_it():
    model = make([helper.make_node("Relu", ["x"], ["y"])], [("x", F, [1, 1000])], [("y", F, [1, 1000])])
    small = {"x": np.linspace(-1, 1, 1000, dtype=np.float32).reshape(1, 1000)}
    large = {"x": small["x"] * 9}
    # Half the |x| are uniform on [0, 1], half on [0, 9]: the median is 0.9 (4.5 had the first sample been lost).
    median = collect_ranges(model, [small, large], method="percentile", percentile=50)["x"]
    assert median.low == pytest.approx(-0.9, abs=0.02) and median.high == pytest.approx(0.9, abs=0.02)
    assert collect_ranges(model, [small, large], method="percentile")["x"] == TensorRange(-9.0, 9.0)


def test_dynamic_batch_with_input_shapes(images, cnn_samples, tmp_path):
    path = tmp_path / "batched.npz"
    np.savez(path, image=images)
    with pytest.raises(InputShapeError, match="dynamic dimension"):
        load_samples(path, CNN)
    samples = load_samples(path, CNN, input_shapes={"image": (4, 1, 8, 8)})
    assert len(samples) == 4 and samples[1]["image"].shape == (4, 1, 8, 8)
    batched, single = collect_ranges(CNN, samples), collect_ranges(CNN, cnn_samples)
    assert sorted(batched) == sorted(single)
    for name, tensor in batched.items():
        assert tensor.low == pytest.approx(single[name].low, rel=1e-5, abs=1e-5)
        assert tensor.high == pytest.approx(single[name].high, rel=1e-5, abs=1e-5)
    with pytest.raises(CalibrationError, match=r"expected \[N\*3, 1, 8, 8\]"):
        load_samples(path, CNN, input_shapes={"image": (3, 1, 8, 8)})


def test_int64_inputs_take_int32_arrays(tmp_path):
    model = make([helper.make_node("Cast", ["ids"], ["f"], to=F)], [("ids", I64, [1, 3])], [("f", F, [1, 3])])
    np.savez(tmp_path / "ids.npz", ids=np.arange(6, dtype=np.int32).reshape(2, 3))
    samples = load_samples(tmp_path / "ids.npz", model)
    assert samples[1]["ids"].dtype == np.int64 and samples[1]["ids"].tolist() == [[3, 4, 5]]
    assert collect_ranges(model, samples) == {"f": TensorRange(0.0, 5.0)}
    np.savez(tmp_path / "ids.npz", ids=np.zeros((2, 3), np.float32))
    with pytest.raises(CalibrationError, match="dtype float32; the model input takes int64 or int32"):
        load_samples(tmp_path / "ids.npz", model)


def test_progress_on_stderr(cnn_samples, capsys):
    collect_ranges(CNN, cnn_samples[:3], progress=True)
    assert "calibrating: 3/3 samples" in capsys.readouterr().err


BATCH = np.zeros((3, 4), np.float32)
NAN_INF = np.zeros((3, 4), np.float32)
NAN_INF[0, :2], NAN_INF[2, 3] = np.nan, np.inf


@pytest.mark.parametrize("arrays, message", [
    ({}, "no arrays"),
    ({"x": BATCH, "y": BATCH, "w": BATCH}, "array 'w' is not an input of the model"),
    ({"x": BATCH}, "no array for model input 'y'"),
    ({"x": BATCH[:0], "y": BATCH[:0]}, "no samples"),
    ({"x": BATCH, "y": BATCH[:2]}, "different numbers of samples: 'x' 3, 'y' 2"),
    ({"x": BATCH[:, None], "y": BATCH}, r"array 'x' has shape \[3, 1, 4\]; expected \[N, 4\]"),
    ({"x": BATCH, "y": np.zeros((3, 5), np.float32)}, r"array 'y' has shape \[3, 5\]; expected \[N, 4\]"),
    ({"x": BATCH.astype(np.float64), "y": BATCH}, "array 'x' has dtype float64; the model input takes float32"),
    ({"x": BATCH, "y": NAN_INF}, "array 'y' has 2 NaN and 1 infinite values"),
], ids=["empty", "unknown", "missing", "zero-samples", "differing-n", "rank", "shape", "dtype", "nan"])
def test_bad_sample_files(tmp_path, arrays, message):
    path = tmp_path / "samples.npz"
    np.savez(path, **arrays)
    with pytest.raises(CalibrationError, match=message):
        load_samples(path, two_inputs())


def test_unreadable_sample_files(tmp_path):
    (tmp_path / "text.npz").write_text("not a zip")
    np.save(tmp_path / "single.npy", BATCH)
    for name, message in [("text.npz", "not a readable .npz file"), ("absent.npz", "not a readable .npz file"),
                          ("single.npy", "not an .npz archive")]:
        with pytest.raises(CalibrationError, match=message):
            load_samples(tmp_path / name, two_inputs())


def test_collect_ranges_refusals():
    with pytest.raises(CalibrationError, match="no calibration samples"):
        collect_ranges(two_inputs(), [])
    with pytest.raises(ValueError, match="method must be one of"):
        collect_ranges(two_inputs(), [{"x": BATCH[:1], "y": BATCH[:1]}], method="kl")
    with pytest.raises(CalibrationError, match=r"sample 0: onnxruntime failed: .*invalid dimensions for input: image"):
        collect_ranges(CNN, [{"image": np.zeros((1, 1, 9, 8), np.float32)}])
    model = make([helper.make_node("Log", ["x"], ["y"])], [("x", F, [1, 4])], [("y", F, [1, 4])])
    with pytest.raises(CalibrationError, match="sample 1: tensor 'y' has 1 NaN or infinite values"):
        collect_ranges(model, [{"x": np.ones((1, 4), np.float32)}, {"x": np.array([[1, 2, -1, 3]], np.float32)}])
