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


def load_checked(path: Path):
    """The ONNX model at `path` when it loads and passes onnx.checker, else None (a missing,
    partial or corrupt file, which its exporter then makes again)."""
    import onnx

    if not path.is_file():
        return None
    try:
        model = onnx.load(path)
        onnx.checker.check_model(model)
    except Exception:  # any unreadable or inconsistent file is simply made again
        return None
    return model


def export_torch(module, example_inputs: tuple, path: Path, metadata: dict[str, str], **options) -> None:
    """`module` exported to ONNX at `path` by torch's TorchScript exporter (dynamo=False needs no
    onnxscript), with `metadata` (plus the torch and transformers versions) in its properties
    and checked by onnx.checker. The file is written beside `path` and moved into place only
    when complete, so a crash never leaves a half-written model."""
    import warnings

    import onnx
    import torch
    import transformers

    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
    try:
        with warnings.catch_warnings(), torch.no_grad():
            # The TorchScript exporter announces its retirement, and tracing warns about shape
            # arithmetic that is constant for these models.
            warnings.simplefilter("ignore")
            torch.onnx.export(module, example_inputs, str(partial), dynamo=False, **options)
        model = onnx.load(partial)
        onnx.helper.set_model_props(model, {
            **metadata, "exporter": f"torch {torch.__version__}, transformers {transformers.__version__}"})
        onnx.checker.check_model(model)
        onnx.save(model, partial)
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)
