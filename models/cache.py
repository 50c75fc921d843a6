"""The cache of generated models: models too large to commit, made on first use.

The cache is `$ACC_CACHE/models/` when ACC_CACHE is set, else `~/.cache/acc/models/`. Each
function here returns the path of one model, generating it first when the file is missing,
stale or corrupt, so a test can simply call it.
"""

from __future__ import annotations

import os
from pathlib import Path

CACHE_ENV = "ACC_CACHE"


def cache_dir() -> Path:
    """The directory generated models are kept in (not created here)."""
    root = os.environ.get(CACHE_ENV)
    return (Path(root).expanduser() if root else Path.home() / ".cache" / "acc") / "models"


def minilm_onnx(static: bool = True) -> Path:
    """all-MiniLM-L6-v2 as ONNX, with its real weights: batch 1 x sequence 128 when `static`,
    else dynamic axes (batch, sequence). Exports it on first use (torch and transformers
    needed then; a few seconds), afterwards only checks the file.
    """
    # Imported here: the exporter is only needed when the file has to be made.
    from models.minilm.export import export_minilm, is_valid_export, minilm_filename

    path = cache_dir() / "minilm" / minilm_filename(static)
    if not is_valid_export(path, static):
        export_minilm(path, static)
    return path


def gpt2_onnx(size: str, graph: str) -> Path:
    """The GPT-2-style static-KV-cache decoder of models/gpt2 (size "test" or "small", seeded random
    weights) as ONNX: `graph` "prefill" or "decode". Exports both graphs on first use (torch and
    transformers needed then; seconds for "test", about a minute for "small"), afterwards only
    checks the file.
    """
    # Imported here: the exporter is only needed when the file has to be made.
    from models.gpt2.export import GRAPHS, export_gpt2, gpt2_filename, is_valid_export

    directory = cache_dir() / "gpt2"
    path = directory / gpt2_filename(size, graph)
    if not is_valid_export(path, size, graph):
        # Made from one build of the model: this graph, and its partner too when that is stale.
        stale = [other for other in GRAPHS if not is_valid_export(directory / gpt2_filename(size, other), size, other)]
        export_gpt2(size, directory, stale)
    return path
