"""The greedy generation loop over the exported GPT-2 graphs, run by onnxruntime.

This is the reference that acc's own generation loop is checked against: run the prefill graph
on the prompt with zero caches, take the argmax of the last logits row, then run the decode
graph `steps` times, each time on the token just chosen, with the presents of the previous run
as pasts and `position` the number of tokens already in the cache (the row it writes).

    result = generate_onnxruntime("test", prompt_ids("test"), steps=32)
    result.tokens    # int64 [steps + 1]: the prefill's token, then one per decode step
    result.logits    # float32 [steps + 1, vocab]: the logits row each token was chosen from
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from models.gpt2.export import GRAPHS, cache_names, gpt2_size
from runtime.generate import seeded_prompt


@dataclass(frozen=True)
class GenerationResult:
    tokens: np.ndarray  # int64 [steps + 1]
    logits: np.ndarray  # float32 [steps + 1, vocab]


def prompt_ids(size: str, n: int | None = None, seed: int = 0) -> np.ndarray:
    """A seeded random prompt of `n` token ids (default: the size's prefill length), int64 [1, n]."""
    spec = gpt2_size(size)
    return seeded_prompt(spec.prefill_length if n is None else n, spec.vocab, seed)


def generate_onnxruntime(size_or_paths: str | tuple[Path, Path], prompt_ids: np.ndarray, steps: int,
                         threads: int = 1) -> GenerationResult:
    """Greedy generation after `prompt_ids` ([1, N] or [N]) with the prefill and decode graphs of a
    size name (taken from the model cache, exported on first use) or of (prefill, decode) paths."""
    import onnxruntime as ort

    if isinstance(size_or_paths, str):
        from models.cache import gpt2_onnx

        paths = [gpt2_onnx(size_or_paths, graph) for graph in GRAPHS]
    else:
        paths = list(size_or_paths)
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    prefill, decode = (ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
                       for path in paths)

    metadata = prefill.get_modelmeta().custom_metadata_map
    prefill_length, max_cache = int(metadata["prefill_length"]), int(metadata["max_cache"])
    layers, heads, head_dim = (int(metadata[key]) for key in ("layers", "heads", "head_dim"))
    prompt = np.asarray(prompt_ids, dtype=np.int64).reshape(1, -1)
    if prompt.shape[1] != prefill_length:
        raise ValueError(f"the prompt has {prompt.shape[1]} tokens; the prefill graph takes {prefill_length}")
    if prefill_length + steps > max_cache:
        raise ValueError(f"{steps} decode steps after {prefill_length} prompt tokens overflow the "
                         f"{max_cache}-row cache")

    past_names = cache_names(layers, "past")
    output_names = ["logits", *cache_names(layers, "present")]
    zeros = np.zeros((max_cache, heads, head_dim), dtype=np.float32)
    logits, *present = prefill.run(output_names, {"input_ids": prompt, **dict.fromkeys(past_names, zeros)})
    rows = [logits[0, -1]]
    for position in range(prefill_length, prefill_length + steps):
        token = np.array([[rows[-1].argmax()]], dtype=np.int64)
        logits, *present = decode.run(output_names, {"input_ids": token, "position": np.array([position]),
                                                     **dict(zip(past_names, present, strict=True))})
        rows.append(logits[0, -1])
    logits = np.stack(rows)
    return GenerationResult(tokens=logits.argmax(axis=1).astype(np.int64), logits=logits)
