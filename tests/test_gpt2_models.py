"""The GPT-2-style static-KV-cache decoder of models/gpt2, "test" size, against transformers.

The static-cache torch module must compute what transformers' GPT2LMHeadModel computes (whole
sequences and steps with its own cache); the exported prefill and decode graphs, run by
onnxruntime in the reference greedy loop, must generate transformers' greedy tokens; the graphs
must have the interface the compiler relies on (one ScatterND per cache tensor, the only reader
of its past; static shapes); the model cache must keep valid files and remake bad ones.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx
import pytest

from models.cache import CACHE_ENV, gpt2_onnx
from models.gpt2.export import (
    GRAPHS,
    SIZES,
    build_gpt2,
    cache_names,
    example_inputs,
    graph_input_names,
    graph_output_names,
    is_valid_export,
    static_cache_modules,
)
from models.gpt2.reference import generate_onnxruntime, prompt_ids

torch = pytest.importorskip("torch")
SIZE = SIZES["test"]
DECODE_STEPS = 32


def relative_error(actual, expected) -> float:
    """Largest absolute difference, relative to the largest magnitude of `expected`."""
    actual, expected = np.asarray(actual, dtype=np.float64), np.asarray(expected, dtype=np.float64)
    return float(np.abs(actual - expected).max() / np.abs(expected).max())


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> Iterator[dict[str, Path]]:
    """Both graphs, exported into a fresh model cache that the module's tests share."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(CACHE_ENV, str(tmp_path_factory.mktemp("acc_cache")))
        yield {graph: gpt2_onnx(SIZE.name, graph) for graph in GRAPHS}


@pytest.fixture(scope="module")
def transformers_model():
    return build_gpt2(SIZE)


def test_static_cache_module_matches_transformers(transformers_model) -> None:
    prefill, decode = static_cache_modules(transformers_model, SIZE)
    n, total = SIZE.prefill_length, SIZE.prefill_length + 8
    ids = torch.from_numpy(prompt_ids(SIZE.name, total, seed=1))
    with torch.no_grad():
        whole = transformers_model(ids).logits
        logits, *present = prefill(ids[:, :n], *example_inputs(SIZE, "prefill")[1:])
        assert relative_error(logits, whole[:, :n]) < 1e-5

        # Decode steps against transformers' own cache, and against the whole-sequence logits.
        step = transformers_model(ids[:, :n], use_cache=True)
        for position in range(n, total):
            token = ids[:, position:position + 1]
            step = transformers_model(token, past_key_values=step.past_key_values, use_cache=True)
            logits, *present = decode(token, torch.tensor([position]), *present)
            assert logits.shape == (1, 1, SIZE.vocab)
            assert relative_error(logits, step.logits) < 1e-5, position
            assert relative_error(logits[0, 0], whole[0, position]) < 1e-5, position
    # The cache rows written are transformers' keys and values, token-major; the rest stay zero.
    keys = step.past_key_values.layers[0].keys[0].transpose(0, 1)  # [total, H, D]
    assert relative_error(present[0][:total], keys) < 1e-5
    assert not present[0][total:].any()


def test_onnxruntime_greedy_generation_matches_transformers(exported, transformers_model) -> None:
    prompt = prompt_ids(SIZE.name)
    with torch.no_grad():
        expected = transformers_model.generate(
            torch.from_numpy(prompt), max_new_tokens=DECODE_STEPS + 1, do_sample=False,
            pad_token_id=SIZE.vocab - 1, output_logits=True, return_dict_in_generate=True)
    expected_tokens = expected.sequences[0, SIZE.prefill_length:].numpy()
    expected_logits = torch.cat(expected.logits).numpy()

    result = generate_onnxruntime((exported["prefill"], exported["decode"]), prompt, DECODE_STEPS)

    assert result.tokens.shape == (DECODE_STEPS + 1,) and result.logits.shape == (DECODE_STEPS + 1, SIZE.vocab)
    np.testing.assert_array_equal(result.tokens, expected_tokens)
    assert relative_error(result.logits, expected_logits) < 1e-4


def tensor_type(value: onnx.ValueInfoProto) -> tuple[int, list[int]]:
    tensor = value.type.tensor_type
    return tensor.elem_type, [dim.dim_value if dim.HasField("dim_value") else dim.dim_param
                              for dim in tensor.shape.dim]


@pytest.mark.parametrize("graph", GRAPHS)
def test_graph_interface(exported, graph: str) -> None:
    model = onnx.load(exported[graph])
    onnx.checker.check_model(model, full_check=True)
    assert [opset.version for opset in model.opset_import if opset.domain in ("", "ai.onnx")] == [17]
    tokens = SIZE.prefill_length if graph == "prefill" else 1
    float32, int64 = onnx.TensorProto.FLOAT, onnx.TensorProto.INT64
    cache = (float32, list(SIZE.cache_shape))
    inputs = {value.name: tensor_type(value) for value in model.graph.input}
    outputs = {value.name: tensor_type(value) for value in model.graph.output}
    assert list(inputs) == graph_input_names(SIZE, graph)
    assert list(outputs) == graph_output_names(SIZE)
    assert inputs.pop("input_ids") == (int64, [1, tokens])
    if graph == "decode":
        assert inputs.pop("position") == (int64, [1])
    assert outputs.pop("logits") == (float32, [1, tokens, SIZE.vocab])
    assert all(value == cache for value in [*inputs.values(), *outputs.values()])

    # Static shapes everywhere: inference knows every intermediate's dims.
    inferred = onnx.shape_inference.infer_shapes(model, strict_mode=True)
    for value in inferred.graph.value_info:
        _, dims = tensor_type(value)
        assert all(isinstance(dim, int) and dim > 0 for dim in dims), (value.name, dims)

    producers = {output: node for node in model.graph.node for output in node.output}
    constants = {tensor.name: onnx.numpy_helper.to_array(tensor) for tensor in model.graph.initializer}
    constants.update({node.output[0]: onnx.numpy_helper.to_array(node.attribute[0].t)
                      for node in model.graph.node if node.op_type == "Constant"})
    scatters = [node for node in model.graph.node if node.op_type == "ScatterND"]
    assert len(scatters) == 2 * SIZE.layers
    for past, present in zip(cache_names(SIZE.layers, "past"), cache_names(SIZE.layers, "present"), strict=True):
        readers = [node for node in model.graph.node if past in node.input]
        assert len(readers) == 1 and readers[0].op_type == "ScatterND", (past, readers)
        (scatter,) = readers
        assert scatter.input[0] == past and list(scatter.output) == [present]
        assert all(attribute.s in (b"", b"none") for attribute in scatter.attribute if attribute.name == "reduction")
        if graph == "prefill":
            indices = constants[scatter.input[1]]
            np.testing.assert_array_equal(indices, np.arange(SIZE.prefill_length).reshape(-1, 1))
            assert indices.dtype == np.int64
        else:
            reshape = producers[scatter.input[1]]
            assert reshape.op_type == "Reshape" and reshape.input[0] == "position"
            assert constants[reshape.input[1]].tolist() == [1, 1]


def file_identity(path: Path) -> tuple[int, int]:
    status = path.stat()
    return status.st_ino, status.st_mtime_ns


def test_cache_keeps_valid_files_and_remakes_corrupt_and_stale_ones(exported, tmp_path, monkeypatch) -> None:
    # A second call leaves a valid file alone.
    before = {graph: file_identity(path) for graph, path in exported.items()}
    assert {graph: file_identity(gpt2_onnx(SIZE.name, graph)) for graph in GRAPHS} == before

    # In a cache of its own: a truncated prefill and a decode from an older export are both made again.
    monkeypatch.setenv(CACHE_ENV, str(tmp_path))
    prefill_path, decode_path = (tmp_path / "models" / "gpt2" / path.name
                                 for path in (exported["prefill"], exported["decode"]))
    prefill_path.parent.mkdir(parents=True)
    prefill_path.write_bytes(exported["prefill"].read_bytes()[:1000])
    stale = onnx.load(exported["decode"])
    onnx.helper.set_model_props(stale, {prop.key: prop.value for prop in stale.metadata_props} | {
        "acc_export": "an older export"})
    onnx.save(stale, decode_path)
    assert not is_valid_export(prefill_path, SIZE.name, "prefill")
    assert not is_valid_export(decode_path, SIZE.name, "decode")

    assert gpt2_onnx(SIZE.name, "prefill") == prefill_path
    assert is_valid_export(prefill_path, SIZE.name, "prefill")
    assert is_valid_export(decode_path, SIZE.name, "decode")
    assert prefill_path.read_bytes() == exported["prefill"].read_bytes()
    assert not list(prefill_path.parent.glob(".*partial"))
