"""The real models acc is measured on: the committed digits CNN and MLP, and all-MiniLM-L6-v2.

Checks that the models themselves are sound, with onnxruntime as the executor: the digits
files reach the accuracies recorded in models/digits/README.md, and the exported MiniLM
gives the same sentence embeddings as the PyTorch model run by sentence-transformers.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from models.digits.data import load_split

ROOT = Path(__file__).resolve().parents[1]
DIGITS = ROOT / "models" / "digits"
# model kind for load_split, file, input name
DIGITS_MODELS = [("cnn", "digits_cnn.onnx", "image"), ("mlp", "digits_mlp.onnx", "pixels")]


def recorded_accuracy(filename: str) -> float:
    """The test accuracy, in percent, that models/digits/README.md's table gives for `filename`."""
    readme = (DIGITS / "README.md").read_text()
    match = re.search(rf"^\| `{re.escape(filename)}` \|.*\| (\d+\.\d+)% \|$", readme, re.MULTILINE)
    assert match, f"models/digits/README.md has no accuracy row for {filename}"
    return float(match.group(1))


@pytest.mark.parametrize(("kind", "filename", "input_name"), DIGITS_MODELS)
def test_digits_model_is_valid_onnx_with_a_dynamic_batch(kind: str, filename: str, input_name: str) -> None:
    model = onnx.load(DIGITS / filename)
    onnx.checker.check_model(model, full_check=True)
    (graph_input,) = model.graph.input
    (graph_output,) = model.graph.output
    assert graph_input.name == input_name
    assert graph_output.name == "logits"
    dims = [dim.dim_param or dim.dim_value for dim in graph_input.type.tensor_type.shape.dim]
    x_train, _, _, _ = load_split(kind)
    assert dims == ["batch", *x_train.shape[1:]]


@pytest.mark.parametrize(("kind", "filename", "input_name"), DIGITS_MODELS)
def test_digits_model_reaches_the_recorded_test_accuracy(kind: str, filename: str, input_name: str) -> None:
    _, _, x_test, y_test = load_split(kind)
    session = ort.InferenceSession(str(DIGITS / filename), providers=["CPUExecutionProvider"])
    (logits,) = session.run(["logits"], {input_name: x_test})
    accuracy = 100 * float((logits.argmax(axis=1) == y_test).mean())
    assert accuracy == pytest.approx(recorded_accuracy(filename), abs=0.1)


SENTENCES = [
    "The cat sits on the mat.",
    "A quick brown fox jumps over the lazy dog near the river bank this morning.",
    "Compilers translate programs written by people into instructions a machine can run.",
    "Hi",
]


@pytest.mark.slow
@pytest.mark.parametrize("static", [True, False], ids=["b1_s128", "dynamic"])
def test_minilm_onnx_matches_sentence_transformers(static: bool) -> None:
    from sentence_transformers import SentenceTransformer
    from transformers import AutoTokenizer

    from models.cache import minilm_onnx
    from models.minilm.export import INPUT_NAMES, STATIC_SEQUENCE, source_model_dir

    path = minilm_onnx(static=static)
    reference = SentenceTransformer(str(source_model_dir()), device="cpu").encode(SENTENCES)
    tokenizer = AutoTokenizer.from_pretrained(source_model_dir(), local_files_only=True)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])

    if static:  # one sentence at a time, padded to the fixed length
        batches = [tokenizer([s], padding="max_length", max_length=STATIC_SEQUENCE, return_tensors="np")
                   for s in SENTENCES]
    else:  # all at once, padded to the longest: exercises the attention mask
        batches = [tokenizer(SENTENCES, padding=True, return_tensors="np")]
    embeddings = np.concatenate([
        session.run(["sentence_embedding"], {name: batch[name].astype(np.int64) for name in INPUT_NAMES})[0]
        for batch in batches
    ])

    assert embeddings.shape == reference.shape == (len(SENTENCES), 384)
    cosine = (embeddings * reference).sum(axis=1) / (
        np.linalg.norm(embeddings, axis=1) * np.linalg.norm(reference, axis=1)
    )
    # The issue asks for 0.99; an fp32 export of the same weights agrees far more closely,
    # and a masking bug (padding attended to) would show up here long before 0.99.
    assert cosine.min() > 0.9999, cosine
    np.testing.assert_allclose(embeddings, reference, atol=1e-4)
