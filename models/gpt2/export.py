"""Export a GPT-2-style decoder with a static KV cache to ONNX: a prefill and a decode graph.

    python models/gpt2/export.py --size test|small [--out-dir DIR] [--force]

The model is transformers' GPT2LMHeadModel built from a config with seeded random weights
(`torch.manual_seed(0)`, GPT-2's own initialisation), so nothing is fetched from a hub. Its
parameters are run by `static_cache_modules`, which keeps the attention cache in fixed-size
tensors instead of transformers' growing one. Two files per size, written into the model cache
(models/cache.py; `$ACC_CACHE/models/gpt2` or `~/.cache/acc/models/gpt2`) unless --out-dir
says otherwise:

    gpt2-{size}_prefill.onnx   input_ids int64 [1, N], past_key.{i}, past_value.{i}
                               -> logits float32 [1, N, V], present_key.{i}, present_value.{i}
    gpt2-{size}_decode.onnx    input_ids int64 [1, 1], position int64 [1], past_key.{i}, past_value.{i}
                               -> logits float32 [1, 1, V], present_key.{i}, present_value.{i}

Every cache tensor is float32 [MAX, H, D], token-major: row t holds all heads' key (value) of
token t, the layout of one row of c_attn's output. Each present is one ScatterND (reduction
"none") of its past: the prefill writes rows 0..N-1 (indices a constant [[0], ..., [N-1]]),
the decode writes row `position` (indices Reshape(position, [1, 1])); no other node reads a
past. The prefill's attention is causal over its N tokens; the decode's reads all MAX rows of
the present cache (K transposed to [H, D, MAX], V to [H, MAX, D]) with rows after `position`
replaced by MASKED_SCORE before the softmax. `position` is also the decode token's position id
(Gather(wpe, position)).

The TorchScript exporter turns `index_put` and slice assignment into a ScatterND whose updates
are reshaped through Shape(past), a second reader of the past. So the cache write is an
autograd.Function, `ScatterRows`, whose ONNX symbolic is exactly ScatterND(past, indices,
updates); everything else is as the exporter makes it. A file already present and valid (loads,
passes onnx.checker, carries this script's EXPORT_TAG, size and graph kind) is left alone.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

OPSET = 17
GRAPHS = ("prefill", "decode")
# Written into each file's metadata; change it whenever the exported graph changes, so that
# cached files made by an older version of this script are regenerated.
EXPORT_TAG = "acc gpt2 static-cache export 1"
# What a masked attention score becomes: finite, so no -inf (nor inf - inf = NaN) can arise,
# and far enough below any real score that its softmax weight is exactly 0 in float32.
MASKED_SCORE = -1e9
SEED = 0


@dataclass(frozen=True)
class Gpt2Size:
    """One GPT-2 shape: the transformer's dimensions and the static cache's lengths."""

    name: str
    layers: int
    embed: int
    heads: int
    vocab: int
    max_cache: int  # MAX: rows of each cache tensor, also n_positions
    prefill_length: int  # N: tokens of the prefill graph

    @property
    def head_dim(self) -> int:
        return self.embed // self.heads

    @property
    def cache_shape(self) -> tuple[int, int, int]:
        return (self.max_cache, self.heads, self.head_dim)


SIZES = {
    size.name: size
    for size in (
        Gpt2Size("test", layers=2, embed=128, heads=4, vocab=512, max_cache=64, prefill_length=16),
        Gpt2Size("small", layers=12, embed=768, heads=12, vocab=50257, max_cache=256, prefill_length=128),
    )
}


def gpt2_size(name: str) -> Gpt2Size:
    if name not in SIZES:
        raise ValueError(f"unknown GPT-2 size {name!r}; known: {', '.join(SIZES)}")
    return SIZES[name]


def gpt2_filename(size: str, graph: str) -> str:
    if graph not in GRAPHS:
        raise ValueError(f"unknown graph {graph!r}; known: {', '.join(GRAPHS)}")
    return f"gpt2-{gpt2_size(size).name}_{graph}.onnx"


def cache_names(layers: int, kind: str) -> list[str]:
    """The cache tensors' names, per layer key then value: kind "past" (inputs) or "present" (outputs)."""
    return [f"{kind}_{tensor}.{layer}" for layer in range(layers) for tensor in ("key", "value")]


def graph_input_names(size: Gpt2Size, graph: str) -> list[str]:
    tokens = ["input_ids"] if graph == "prefill" else ["input_ids", "position"]
    return tokens + cache_names(size.layers, "past")


def graph_output_names(size: Gpt2Size) -> list[str]:
    return ["logits"] + cache_names(size.layers, "present")


def size_metadata(size: Gpt2Size, graph: str) -> dict[str, str]:
    """What a file says about itself in metadata_props (all values strings, as ONNX stores them)."""
    return {
        "acc_export": EXPORT_TAG,
        "graph": graph,
        "size": size.name,
        "max_cache": str(size.max_cache),
        "prefill_length": str(size.prefill_length),
        "layers": str(size.layers),
        "heads": str(size.heads),
        "head_dim": str(size.head_dim),
        "vocab": str(size.vocab),
    }


def is_valid_export(path: Path, size: str, graph: str) -> bool:
    """Whether `path` is a complete export by this version of the script, of this size and graph."""
    from models.cache import load_checked

    model = load_checked(path)
    if model is None:
        return False
    metadata = {prop.key: prop.value for prop in model.metadata_props}
    expected = size_metadata(gpt2_size(size), graph)
    return (
        all(metadata.get(key) == value for key, value in expected.items())
        and [value.name for value in model.graph.input] == graph_input_names(gpt2_size(size), graph)
        and [value.name for value in model.graph.output] == graph_output_names(gpt2_size(size))
    )


def build_gpt2(size: Gpt2Size):
    """transformers' GPT2LMHeadModel of this size with seeded random weights, in eval mode."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    config = GPT2Config(vocab_size=size.vocab, n_positions=size.max_cache, n_embd=size.embed,
                        n_layer=size.layers, n_head=size.heads,
                        # GPT-2's <|endoftext|> is its last token (50256 of 50257)
                        bos_token_id=size.vocab - 1, eos_token_id=size.vocab - 1,
                        # the reference implementation, which the static-cache module mirrors
                        attn_implementation="eager")
    torch.manual_seed(SEED)
    return GPT2LMHeadModel(config).eval()


def static_cache_modules(model, size: Gpt2Size):
    """(prefill, decode): torch modules that run `model`'s parameters with a static KV cache.

    prefill(input_ids [1, N], *past) and decode(input_ids [1, 1], position [1], *past) both return
    (logits [1, T, V], *present), the caches ordered as cache_names gives them.
    """
    import torch

    class ScatterRows(torch.autograd.Function):
        """data with rows indices[:, 0] replaced by updates; exported as one ScatterND."""

        @staticmethod
        def forward(ctx, data, indices, updates):
            written = data.clone()
            written[indices[:, 0]] = updates
            return written

        @staticmethod
        def symbolic(graph, data, indices, updates):
            return graph.op("ScatterND", data, indices, updates)

    class StaticCacheGPT2(torch.nn.Module):
        """The transformer over T new tokens, token-major ([T, embed]), writing rows of the caches."""

        def __init__(self) -> None:
            super().__init__()
            self.model = model

        @staticmethod
        def attend(query, keys, values, keep, scaling: float):
            """Attention of query [T, H, D] over keys and values [S, H, D]; keep [T or 1, S] bool."""
            scores = torch.matmul(query.transpose(0, 1), keys.permute(1, 2, 0)) * scaling
            scores = torch.where(keep, scores, torch.tensor(MASKED_SCORE))
            attended = torch.matmul(torch.softmax(scores, dim=-1), values.transpose(0, 1))
            return attended.transpose(0, 1).reshape(-1, size.embed)

        def run(self, token_ids, position_embeddings, rows, past, keep, attend_to_cache: bool):
            """logits [1, T, V] and the present caches, for tokens written to cache `rows` ([T, 1])."""
            transformer = self.model.transformer
            hidden = transformer.wte(token_ids) + position_embeddings
            present = []
            for layer, block in enumerate(transformer.h):
                # transformers' Conv1D layers are y = x @ weight + bias; on token-major [T, embed]
                # hidden states addmm is exactly that, and exports as one Gemm.
                attention = block.attn
                qkv = torch.addmm(attention.c_attn.bias, block.ln_1(hidden), attention.c_attn.weight)
                query, key, value = (part.reshape(-1, size.heads, size.head_dim)
                                     for part in qkv.split(size.embed, dim=1))
                present_key = ScatterRows.apply(past[2 * layer], rows, key)
                present_value = ScatterRows.apply(past[2 * layer + 1], rows, value)
                present += [present_key, present_value]
                if attend_to_cache:
                    key, value = present_key, present_value
                attended = self.attend(query, key, value, keep, attention.scaling)
                hidden = hidden + torch.addmm(attention.c_proj.bias, attended, attention.c_proj.weight)
                mlp = block.mlp
                inner = mlp.act(torch.addmm(mlp.c_fc.bias, block.ln_2(hidden), mlp.c_fc.weight))
                hidden = hidden + torch.addmm(mlp.c_proj.bias, inner, mlp.c_proj.weight)
            logits = self.model.lm_head(transformer.ln_f(hidden))
            return (logits.reshape(1, -1, size.vocab), *present)

    class Prefill(StaticCacheGPT2):
        def forward(self, input_ids, *past):
            n = size.prefill_length
            positions = torch.arange(n)
            causal = positions.reshape(n, 1) >= positions.reshape(1, n)
            return self.run(input_ids.reshape(n), self.model.transformer.wpe(positions),
                            positions.reshape(n, 1), past, causal, attend_to_cache=False)

    class Decode(StaticCacheGPT2):
        def forward(self, input_ids, position, *past):
            written_rows = torch.arange(size.max_cache) <= position
            return self.run(input_ids.reshape(1), self.model.transformer.wpe(position),
                            position.reshape(1, 1), past, written_rows.reshape(1, -1), attend_to_cache=True)

    return Prefill().eval(), Decode().eval()


def example_inputs(size: Gpt2Size, graph: str):
    """Inputs to trace with: zero caches and, for decode, the first position after a prefill."""
    import torch

    past = [torch.zeros(size.cache_shape) for _ in cache_names(size.layers, "past")]
    if graph == "prefill":
        return (torch.zeros(1, size.prefill_length, dtype=torch.int64), *past)
    return (torch.zeros(1, 1, dtype=torch.int64), torch.tensor([size.prefill_length]), *past)


def export_gpt2(size_name: str, out_dir: Path, graphs: tuple[str, ...] | list[str] = GRAPHS) -> list[Path]:
    """Export the listed graphs of one size into `out_dir`, each atomically (a reader never sees a
    half-written file). Returns their paths."""
    # Never ask a hub for anything; torch and transformers are imported here, not at the top, so
    # that checking a cached file needs neither.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    size = gpt2_size(size_name)
    modules = dict(zip(GRAPHS, static_cache_modules(build_gpt2(size), size), strict=True))
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for graph in graphs:
        path = out_dir / gpt2_filename(size.name, graph)
        from models.cache import export_torch

        export_torch(modules[graph], example_inputs(size, graph), path, {
            **size_metadata(size, graph),
            "source": f"transformers GPT2LMHeadModel, random weights, torch.manual_seed({SEED})"},
            input_names=graph_input_names(size, graph), output_names=graph_output_names(size),
            opset_version=OPSET)
        paths.append(path)
    return paths


def main() -> None:
    # Run as a script, this file's folder is on sys.path, not the repository that holds `models`.
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    from models.cache import cache_dir

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=list(SIZES), required=True)
    parser.add_argument("--out-dir", type=Path, default=None,
                        help=f"where to write the files (default: {cache_dir() / 'gpt2'})")
    parser.add_argument("--force", action="store_true", help="export again even if a valid file exists")
    args = parser.parse_args()
    out_dir = args.out_dir or cache_dir() / "gpt2"
    stale = []
    for graph in GRAPHS:
        path = out_dir / gpt2_filename(args.size, graph)
        if not args.force and is_valid_export(path, args.size, graph):
            print(f"{path}: present and valid, kept")
        else:
            stale.append(graph)
    if stale:
        start = time.perf_counter()
        paths = export_gpt2(args.size, out_dir, stale)
        sizes = ", ".join(f"{path.name} {path.stat().st_size / 2**20:.1f} MiB" for path in paths)
        print(f"{out_dir}: exported {sizes}, {time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    main()
