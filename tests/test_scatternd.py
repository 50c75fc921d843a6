"""ScatterND (compiler/codegen/kernels/scatter.py), int64 comparisons, and the GPT-2 test graphs that need both.

Node cases are one-node ONNX models compiled for `tiny` (the scratchpad forces blocks of rows
and of columns) and `edge`, simulated with the hazard check and compared exactly with
onnxruntime. The GPT-2 cases compile the test-size prefill and decode graphs
(models/gpt2/README.md) and compare logits and present caches with onnxruntime.
"""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
from test_decompositions import Const, assert_close, const, model

import compiler
from compiler.errors import ModelError, UnsupportedOpError
from isa.errors import SimulationError
from runtime.simulator import run

RNG = np.random.default_rng(0)


def ort_outputs(proto, feeds: dict) -> dict[str, np.ndarray]:
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    return dict(zip([o.name for o in session.get_outputs()], session.run(None, feeds), strict=True))


def simulate(proto, feeds: dict, config: str = "edge") -> dict[str, np.ndarray]:
    result = run(compiler.compile(proto, config), feeds, check_hazards=True)
    assert not result.hazards
    return result.outputs


def scatter_model(data, indices, updates, opset: int = 18, **attrs):
    return model("ScatterND", {"data": data, "indices": indices, "updates": updates}, ["y"], opset, **attrs)


def feeds_of(inputs: dict) -> dict:
    """The run-time inputs (those not given as initializers)."""
    return {name: np.asarray(a) for name, a in inputs.items() if not isinstance(a, Const)}


def check_scatter(data, indices, updates, config: str) -> None:
    proto = scatter_model(data, indices, updates)
    feeds = feeds_of({"data": data, "indices": indices, "updates": updates})
    np.testing.assert_array_equal(simulate(proto, feeds, config)["y"], ort_outputs(proto, feeds)["y"])


def randn(*shape, dtype=np.float32) -> np.ndarray:
    return RNG.standard_normal(shape).astype(dtype)


# ScatterND against onnxruntime ---------------------------------------------------------------------
CASES = {
    # data shape, indices, updates dtype: whole rows (k = 1), rows of a 3-D cache, single elements
    "block of rows (prefill)": ((12, 4, 3), np.array([[2], [3], [4], [5]])),
    "one row (decode)": ((12, 4, 3), np.array([[7]])),
    "rows with a negative index": ((12, 4, 3), np.array([[5], [-1], [0]])),
    "1-D elements": ((10,), np.array([[3], [-2], [9]])),
    "2-D elements": ((6, 5), np.array([[5, 1], [-1, -5], [0, 4]])),
    "3-D pairs (rows of the last axis)": ((4, 3, 7), np.array([[[3, 2], [-4, 0]], [[1, -1], [0, 0]]])),
    "3-D elements": ((4, 3, 7), np.array([[3, 2, 6], [-4, 0, -7], [1, 1, 1]])),
    "many rows (blocks on tiny)": ((300, 40), RNG.permutation(300)[:200].reshape(200, 1)),
    "rows wider than a buffer on tiny": ((5, 5000), np.array([[4], [0]])),
}


@pytest.mark.parametrize("config", ["tiny", "edge"])
@pytest.mark.parametrize("constant", [False, True], ids=["run-time indices", "constant indices"])
@pytest.mark.parametrize("case", list(CASES))
def test_scatter_nd_matches_onnxruntime(case, constant, config):
    shape, tuples = CASES[case]
    tuples = tuples.astype(np.int64)
    updates = randn(*tuples.shape[:-1], *shape[tuples.shape[-1]:])
    check_scatter(randn(*shape), const(tuples) if constant else tuples, updates, config)


@pytest.mark.parametrize("dtype", [np.int64, np.int8, np.bool_])
def test_scatter_nd_moves_any_dtype(dtype):
    data = RNG.integers(-100, 100, size=(6, 4)).astype(dtype)
    updates = RNG.integers(-100, 100, size=(2, 4)).astype(dtype)
    check_scatter(data, np.array([[4], [-6]], np.int64), updates, "tiny")


@pytest.mark.parametrize("tuples", [[[1], [12]], [[1], [-13]], [[0, 5], [1, 0]], [[1, -5], [0, 0]]],
                         ids=["past the end", "before the start", "a component past its axis",
                              "a component before its axis"])
def test_out_of_range_index_stops_the_run(tuples):
    """As Gather's: also where the bad component would still give a row inside the table."""
    shape = (12, 4) if len(tuples[0]) == 1 else (2, 4, 3)
    tuples = np.array(tuples, np.int64)
    updates = randn(*tuples.shape[:-1], *shape[tuples.shape[-1]:])
    proto = scatter_model(randn(*shape), tuples, updates)
    with pytest.raises(SimulationError, match=r"dma_scatter .* is outside"):
        simulate(proto, {"data": randn(*shape), "indices": tuples, "updates": updates})


def test_constant_index_out_of_range_is_the_models_error():
    with pytest.raises(ModelError, match="outside the data's axes"):
        compiler.compile(scatter_model(randn(4, 2), const(np.array([[4]], np.int64)), randn(1, 2)))


def test_reductions_are_refused_by_name():
    proto = scatter_model(randn(4, 2), np.array([[1]], np.int64), randn(1, 2), reduction="add")
    with pytest.raises(UnsupportedOpError, match=r"ScatterND.*reduction 'add'"):
        compiler.compile(proto)


# int64 comparisons ---------------------------------------------------------------------------------
@pytest.mark.parametrize("position", [0, 16, 63, 2**31 - 1, 2**33, -(2**33)])
def test_int64_mask_matches_onnxruntime_for_every_position(position):
    """The decode graph's mask: a constant arange against the run-time position, exact even where
    the position does not fit int32 (it saturates, and stays on its side of every constant)."""
    inputs = {"steps": const(np.arange(64, dtype=np.int64)), "position": np.array([position], np.int64)}
    proto = model("LessOrEqual", inputs, ["mask"], 17)
    feeds = {"position": inputs["position"]}
    assert_close("mask", simulate(proto, feeds)["mask"], ort_outputs(proto, feeds)["mask"])


@pytest.mark.parametrize("op", ["Equal", "Less", "Greater", "LessOrEqual", "GreaterOrEqual"])
def test_int64_comparisons_match_onnxruntime(op):
    a = RNG.integers(-(2**31), 2**31 - 1, size=(3, 8)).astype(np.int64)
    b = np.where(RNG.random((3, 8)) < 0.3, a, RNG.integers(-(2**31), 2**31 - 1, size=(3, 8))).astype(np.int64)
    proto = model(op, {"a": a, "b": b}, ["y"], 17)
    assert_close("y", simulate(proto, {"a": a, "b": b})["y"], ort_outputs(proto, {"a": a, "b": b})["y"])
    far = np.array([0, 2**32, -(2**40), 7, 2**62], np.int64)  # a run-time value against a constant
    proto = model(op, {"a": far, "b": const(np.array(7, np.int64))}, ["y"], 17)
    assert_close("y", simulate(proto, {"a": far})["y"], ort_outputs(proto, {"a": far})["y"])


def test_int64_constant_outside_int32_is_refused():
    proto = model("Less", {"a": np.zeros(4, np.int64), "b": const(np.array([1, 2**40, 3, 4], np.int64))}, ["y"], 17)
    with pytest.raises(UnsupportedOpError, match=r"Less.*outside"):
        compiler.compile(proto)


# The GPT-2 test graphs -----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def gpt2_graphs():
    from models.cache import gpt2_onnx

    return gpt2_onnx("test", "prefill"), gpt2_onnx("test", "decode")


def compare_with_onnxruntime(path, feeds: dict, opt_level: int) -> dict[str, np.ndarray]:
    got = run(compiler.compile(path, "edge", opt_level=opt_level), feeds).outputs
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    for name, want in zip(names, session.run(None, feeds), strict=True):
        assert_close(name, got[name], want)
    return got


@pytest.mark.parametrize("opt_level", [1, 2])
def test_gpt2_prefill_then_decode_match_onnxruntime(gpt2_graphs, opt_level):
    """Prefill with zero caches, then decode at position 16 from the caches acc's prefill wrote."""
    from models.gpt2.export import cache_names, gpt2_size
    from models.gpt2.reference import prompt_ids

    size = gpt2_size("test")
    prefill, decode = gpt2_graphs
    pasts, presents = cache_names(size.layers, "past"), cache_names(size.layers, "present")
    feeds = {"input_ids": prompt_ids("test"), **{name: np.zeros(size.cache_shape, np.float32) for name in pasts}}
    after_prefill = compare_with_onnxruntime(prefill, feeds, opt_level)
    token = after_prefill["logits"][0, -1].argmax()
    feeds = {"input_ids": np.array([[token]], np.int64), "position": np.array([size.prefill_length], np.int64),
             **{past: after_prefill[present] for past, present in zip(pasts, presents, strict=True)}}
    after_decode = compare_with_onnxruntime(decode, feeds, opt_level)
    for past, present in zip(pasts, presents, strict=True):  # only row `position` was written
        written = after_decode[present] != feeds[past]
        assert not written[:size.prefill_length].any() and not written[size.prefill_length + 1:].any()
