"""Real models compiled for the accelerator match onnxruntime in fp32 (max abs error at most
1e-4 of the output's magnitude, cosine at least 0.99999), every intermediate tensor too.

The full set (all nine light models, both weight variants) is benchmarks/light_models.py;
here: the bundled digits models on edge and tiny, SqueezeNet and ResNet-50 with random
weights, and all-MiniLM-L6-v2 with its real weights (static and bound dynamic shapes).
Each also checks the cost model against the simulator, layer by layer.
"""

from pathlib import Path

import numpy as np
import onnx
import pytest

from compiler.pipeline import compile
from compiler.report import prediction_errors
from models.light import light_path, randomized
from runtime.compare import TOLERANCES, compare_arrays, first_divergence, reference_outputs
from runtime.simulator import run

ROOT = Path(__file__).parent.parent
FP32 = TOLERANCES["fp32"]


def check(model: onnx.ModelProto, config: str, inputs: dict | None = None, input_shapes: dict | None = None):
    # The verifier runs after import and after every pass.
    program = compile(model, config, input_shapes=input_shapes, verify_each=True)
    if inputs is None:
        rng = np.random.default_rng(1)
        inputs = {t.name: rng.standard_normal(t.shape).astype(np.float32) for t in program.inputs}
    result = run(program, inputs, keep_tensors=True)
    expected = reference_outputs(model, inputs, [t.name for t in program.debug_tensors])
    for t in program.outputs:
        comparison = compare_arrays(t.name, result.outputs[t.name], expected[t.name], FP32)
        assert comparison.passed, comparison.line()
    layers, first = first_divergence([(t.node, t.name) for t in program.debug_tensors], result.tensors, expected, FP32)
    assert first is None, f"first divergence at node {first[0]}: {first[1].line()}"
    assert result.stats["cycles"] >= result.stats["roofline_cycles"]
    # The cost model (acc-compile --report) predicts each layer's own cycles within 5%.
    assert [e for e in prediction_errors(program, result.stats["layers"]) if e[3] > 0.05] == []
    return result


@pytest.mark.parametrize("config", ["edge", "tiny"])
@pytest.mark.parametrize("name,input_name", [("digits_cnn", "image"), ("digits_mlp", "pixels")])
def test_digits_models(config, name, input_name):
    model = onnx.load(str(ROOT / "models" / "digits" / f"{name}.onnx"))
    shape = (4, 1, 8, 8) if name == "digits_cnn" else (4, 64)
    x = np.random.default_rng(0).random(shape).astype(np.float32)
    check(model, config, {input_name: x}, {input_name: shape})


@pytest.mark.parametrize("variant", ["shipped", "random"])
def test_squeezenet(variant):
    model = randomized("squeezenet") if variant == "random" else onnx.load(str(light_path("squeezenet")))
    check(model, "edge")


@pytest.mark.slow
def test_resnet50_random_weights():
    check(randomized("resnet50"), "edge")


def _sentence_inputs(batch: int, length: int, real: int) -> dict:
    rng = np.random.default_rng(2)
    ids = rng.integers(1000, 30000, size=(batch, length)).astype(np.int64)
    mask = np.zeros((batch, length), dtype=np.int64)
    mask[:, :real] = 1
    ids[:, 0], ids[:, real - 1] = 101, 102  # [CLS] ... [SEP]
    ids[:, real:] = 0
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}


@pytest.mark.slow
def test_minilm_static():
    from models.cache import minilm_onnx

    check(onnx.load(str(minilm_onnx(static=True))), "edge", _sentence_inputs(1, 128, 37))


@pytest.mark.slow
def test_minilm_dynamic_bound_by_input_shape():
    from models.cache import minilm_onnx

    shapes = {name: (2, 24) for name in ("input_ids", "attention_mask", "token_type_ids")}
    check(onnx.load(str(minilm_onnx(static=False))), "edge", _sentence_inputs(2, 24, 17), shapes)
