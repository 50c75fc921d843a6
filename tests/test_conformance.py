"""onnx's conformance cases through the acc backend, classified by benchmarks/conformance.py.

A fast subset of node cases across op families (each passed when chosen) and a few that
acc must refuse cleanly; the classification itself on a stand-in backend (wrong values,
shape, dtype or count; NotImplementedError; other exceptions; a worker that overruns or
dies); and, marked slow, the whole node suite and the small model data sets, which must
have no wrong result and no crash (issue 3's acceptance).
"""

from __future__ import annotations

import os
import sys
import time

import numpy as np
import pytest
from onnx import TensorProto, helper

from benchmarks.conformance import (
    MODEL_SUITES,
    Case,
    Outcome,
    format_acceptance,
    format_failures,
    format_tables,
    load_cases,
    load_node_cases,
    run_case,
    run_cases,
    short_message,
)

# Node cases that passed when chosen: one or two per op family.
PASSING = [
    # element-wise arithmetic, broadcasting, integer types
    "test_add_bcast", "test_sub_int8", "test_mul_uint8", "test_div_int32_trunc", "test_pow_bcast_array",
    "test_max_two_inputs", "test_min_int8", "test_sum_example", "test_mean_two_inputs",
    # unary and activations
    "test_abs", "test_neg", "test_sqrt", "test_exp", "test_log", "test_reciprocal", "test_erf",
    "test_floor", "test_ceil", "test_round", "test_sign", "test_relu", "test_sigmoid", "test_tanh",
    "test_leakyrelu", "test_elu", "test_selu", "test_hardsigmoid", "test_hardswish", "test_softplus",
    "test_prelu_broadcast", "test_gelu_tanh_2", "test_clip_example_expanded",
    # comparisons, logic, select
    "test_equal_bcast", "test_less_equal", "test_greater_uint8", "test_and_bcast3v1d", "test_xor4d",
    "test_not_3d", "test_where_example",
    # matrix unit
    "test_matmul_4d", "test_matmul_bcast", "test_gemm_default_no_bias",
    # convolution, pooling
    "test_maxpool_2d_precomputed_pads", "test_maxpool_1d_default", "test_averagepool_2d_precomputed_same_upper",
    "test_globalaveragepool", "test_globalmaxpool",
    # rows: normalisation, softmax, reductions, arg reductions
    "test_softmax_example", "test_logsoftmax_large_number", "test_hardmax_axis_0",
    "test_layer_normalization_4d_axis0_expanded", "test_instancenorm_epsilon", "test_lrn",
    "test_l1normalization_axis_0", "test_reduce_max_default_axes_keepdim_example", "test_argmax_keepdims_random",
    # shape and data movement, folded or aliased
    "test_flatten_axis2", "test_shape_start_1", "test_identity", "test_constant", "test_dropout_default_mask",
    "test_cast_FLOAT_to_BFLOAT16", "test_scatternd",
]
# Cases acc must refuse with NotImplementedError naming what it does not handle.
REFUSED = {"test_string_concat": "StringConcat", "test_regex_full_match_basic": "RegexFullMatch",
           "test_cast_FLOAT_to_DOUBLE": "double"}


@pytest.fixture(scope="module")
def node_cases() -> dict[str, Case]:
    return {case.name: case for case in load_node_cases()}


@pytest.mark.parametrize("name", PASSING)
def test_node_case_passes(node_cases: dict[str, Case], name: str) -> None:
    outcome = run_case(node_cases[name])
    assert outcome.status == "passed", f"{name}: {outcome.status} in {outcome.phase}: {outcome.message}"


@pytest.mark.parametrize("name", sorted(REFUSED))
def test_node_case_is_refused_naming_what_is_unsupported(node_cases: dict[str, Case], name: str) -> None:
    outcome = run_case(node_cases[name])
    assert outcome.status == "unsupported", f"{name}: {outcome.status}: {outcome.message}"
    assert outcome.phase == "compile"
    assert REFUSED[name] in outcome.message


def test_model_data_set_and_light_cases_load() -> None:
    cases = load_cases(("pytorch-converted", "simple", "light"), r"test_(Linear|single_relu_model|squeezenet)$")
    assert sorted(case.id for case in cases) == ["light/test_squeezenet", "pytorch-converted/test_Linear",
                                                 "simple/test_single_relu_model"]
    assert next(case for case in cases if case.suite == "light").light_output.endswith("_output_0.pb")
    outcome = run_case(next(case for case in cases if case.name == "test_single_relu_model"))
    assert outcome.status == "passed", outcome.message


# --- the classification, on a stand-in backend ------------------------------------------


def relu_case() -> Case:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3])
    model = helper.make_model(helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "relu", [x], [y]))
    data = np.array([[-1.0, 0.0, 1.0], [2.0, -3.0, 4.0]], dtype=np.float32)
    return Case("node", "test_stand_in_relu", "Relu", 1e-3, 1e-7, model=model,
                data_sets=[([data], [np.maximum(data, 0)])])


class StandInRep:
    def __init__(self, outputs):
        self.outputs = outputs

    def run(self, inputs):
        if isinstance(self.outputs, BaseException):
            raise self.outputs
        return self.outputs(inputs[0]) if callable(self.outputs) else self.outputs


def stand_in(monkeypatch, outputs=None, compile_error: BaseException | None = None) -> None:
    import runtime.backend

    def prepare(model, device="CPU", **kwargs):
        if compile_error is not None:
            raise compile_error
        return StandInRep(outputs)

    monkeypatch.setattr(runtime.backend, "prepare", prepare)


@pytest.mark.parametrize(("outputs", "status", "phase", "words"), [
    (lambda x: (np.maximum(x, 0),), "passed", "", ""),
    (lambda x: (np.maximum(x, 0) + 1e-3,), "wrong", "compare", "Not equal to tolerance"),
    (lambda x: (np.maximum(x, 0).ravel(),), "wrong", "compare", "incorrect shape"),
    (lambda x: (np.maximum(x, 0).astype(np.float64),), "wrong", "compare", "float64"),
    (lambda x: (np.maximum(x, 0), x), "wrong", "compare", "Items are not equal"),
    (lambda x: (None,), "wrong", "compare", "AttributeError"),
    (NotImplementedError("no Relu here"), "unsupported", "run", "no Relu here"),
    (RuntimeError("boom"), "crashed", "run", "RuntimeError: boom"),
])
def test_classification(monkeypatch, outputs, status: str, phase: str, words: str) -> None:
    stand_in(monkeypatch, outputs)
    outcome = run_case(relu_case())
    assert (outcome.status, outcome.phase) == (status, phase)
    assert words in outcome.message


def test_classification_of_compile_errors(monkeypatch) -> None:
    from compiler.errors import UnsupportedOpError

    stand_in(monkeypatch, compile_error=UnsupportedOpError("Relu", "r", 14, "not today"))
    outcome = run_case(relu_case())
    assert (outcome.status, outcome.phase) == ("unsupported", "compile")
    assert outcome.message == "UnsupportedOpError: unsupported op 'Relu' (node 'r', opset 14): not today"
    stand_in(monkeypatch, compile_error=ZeroDivisionError("division by zero"))
    outcome = run_case(relu_case())
    assert (outcome.status, outcome.phase) == ("crashed", "compile")
    assert "ZeroDivisionError" in outcome.traceback


@pytest.mark.skipif(sys.platform == "win32", reason="the stand-in backend reaches the workers by fork")
def test_a_worker_that_overruns_or_dies_is_a_crash(monkeypatch) -> None:
    def outputs(x):
        if x[0, 0] == 7:
            os._exit(3)
        if x[0, 0] == 8:
            time.sleep(60)
        return (np.maximum(x, 0),)

    stand_in(monkeypatch, outputs)
    cases = []
    for i, first in enumerate([8, 7, 1, 1]):
        case = relu_case()
        case.name = f"test_stand_in_{i}"
        x = np.full((2, 3), first, np.float32)
        case.data_sets = [([x], [x])]
        cases.append(case)
    cases[3].model, cases[3].model_path = None, "/nonexistent/model.onnx"
    start = time.monotonic()
    outcomes = run_cases(cases, jobs=2, timeout=2)
    assert time.monotonic() - start < 30
    assert [(o.name, o.status, o.phase) for o in outcomes] == [
        ("test_stand_in_0", "crashed", "worker"), ("test_stand_in_1", "crashed", "worker"),
        ("test_stand_in_2", "passed", ""), ("test_stand_in_3", "crashed", "load")]
    assert outcomes[0].message.startswith("timeout")
    assert outcomes[1].message == "worker process died (exit code 3)"


def test_tables_and_acceptance_figures() -> None:
    outcomes = [Outcome("node", "test_a", "Add", "passed"), Outcome("node", "test_b", "Add", "wrong", "x"),
                Outcome("simple", "test_c", "test_c", "unsupported", "y")]
    tables = format_tables(outcomes)
    assert "| Add | 1 | 0 | 1 | 0 | 2 |" in tables
    assert "| **all** | 1 | 1 | 1 | 0 | 3 |" in tables
    assert "node/test_b" in format_failures(outcomes)
    figures_text = format_acceptance({"node_passed": 1, "node_cases": 2, "node_passed_specialised": 0,
                                      "model_passed": 0, "model_cases": 1,
                                      "model_pass_rate": 0.0, "wrong": 1, "crashed": 0})
    assert "node cases passing: 1 of 2" in figures_text and "wrong: 1, crashed: 0" in figures_text


# --- the whole suites ---------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("suites", [("node",), MODEL_SUITES], ids=["node", "model-data-sets"])
def test_whole_suite_has_no_wrong_result_and_no_crash(suites: tuple[str, ...]) -> None:
    outcomes = run_cases(load_cases(suites), jobs=2, timeout=120)
    tables = format_tables(outcomes)
    print("\n" + tables[tables.index("### totals"):] + format_failures(outcomes))
    failed = [f"{o.id}: {o.status}: {short_message(o.message)}" for o in outcomes if o.status in ("wrong", "crashed")]
    assert not failed, f"{len(failed)} wrong or crashed:\n" + "\n".join(failed)
