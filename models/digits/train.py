"""Train the bundled digits CNN and MLP on scikit-learn's `load_digits` and export them to ONNX.

    python models/digits/train.py [--out-dir models/digits]

Deterministic on one machine: fixed seeds, one thread, torch's deterministic algorithms and a
fixed data order, so a rerun writes the same weights. (Another CPU may round differently in
its float kernels; the committed .onnx files, not a retrain, are what the tests measure.)
Prints each model's test accuracy measured by onnxruntime on the exported file — the figures
recorded in README.md.
"""

from __future__ import annotations

import argparse
import time
import warnings
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from data import load_split  # the script's own folder is first on sys.path
from torch import nn

SEED = 0
OPSET = 17
HERE = Path(__file__).resolve().parent


def make_cnn() -> nn.Module:
    """Conv-BN-ReLU x2, MaxPool, Conv-ReLU, global average pool, Linear: about 24k parameters."""
    return nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1),
        nn.BatchNorm2d(16),
        nn.ReLU(),
        nn.Conv2d(16, 32, 3, padding=1),
        nn.BatchNorm2d(32),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(64, 10),
    )


def make_mlp() -> nn.Module:
    """64 -> 128 -> 64 -> 10 with ReLU."""
    return nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 64), nn.ReLU(), nn.Linear(64, 10))


def train(model: nn.Module, x: np.ndarray, y: np.ndarray, epochs: int, lr: float, batch_size: int = 32) -> nn.Module:
    """Adam with a cosine learning-rate schedule; batches drawn in a seeded order."""
    order = torch.Generator().manual_seed(SEED)
    xs, ys = torch.from_numpy(x), torch.from_numpy(y)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=1e-4)
    steps_per_epoch = (len(xs) + batch_size - 1) // batch_size
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs * steps_per_epoch)
    loss_fn = nn.CrossEntropyLoss()
    model.train()
    for _ in range(epochs):
        perm = torch.randperm(len(xs), generator=order)
        for start in range(0, len(xs), batch_size):
            idx = perm[start : start + batch_size]
            optimizer.zero_grad()
            loss_fn(model(xs[idx]), ys[idx]).backward()
            optimizer.step()
            schedule.step()
    return model.eval()


def export(model: nn.Module, example: np.ndarray, input_name: str, path: Path) -> None:
    """Export with a dynamic batch dimension named "batch"; output "logits".

    The TorchScript exporter (dynamo=False) needs no package beyond torch; the dynamo one
    needs onnxscript. In eval mode it folds each BatchNormalization into the Conv before it.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # the TorchScript exporter announces its retirement
        torch.onnx.export(
            model,
            (torch.from_numpy(example[:1]),),
            str(path),
            input_names=[input_name],
            output_names=["logits"],
            dynamic_axes={input_name: {0: "batch"}, "logits": {0: "batch"}},
            opset_version=OPSET,
            dynamo=False,
        )
    onnx.checker.check_model(onnx.load(path), full_check=True)


def onnx_accuracy(path: Path, x: np.ndarray, y: np.ndarray) -> float:
    """Fraction of `x` that onnxruntime, running the file at `path`, classifies as `y`."""
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (logits,) = session.run(None, {session.get_inputs()[0].name: x})
    return float((logits.argmax(axis=1) == y).mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out-dir", type=Path, default=HERE, help="where to write the .onnx files (default: here)")
    args = parser.parse_args()
    args.out_dir.mkdir(parents=True, exist_ok=True)

    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    recipes = [
        ("cnn", make_cnn, "image", "digits_cnn.onnx", 40, 3e-3),
        ("mlp", make_mlp, "pixels", "digits_mlp.onnx", 60, 3e-3),
    ]
    for kind, make, input_name, filename, epochs, lr in recipes:
        start = time.perf_counter()
        torch.manual_seed(SEED)
        x_train, y_train, x_test, y_test = load_split(kind)
        model = train(make(), x_train, y_train, epochs=epochs, lr=lr)
        path = args.out_dir / filename
        export(model, x_train, input_name, path)
        accuracy = onnx_accuracy(path, x_test, y_test)
        elapsed = time.perf_counter() - start
        print(f"{filename}: test accuracy {100 * accuracy:.2f}% ({len(y_test)} images), {elapsed:.1f} s")


if __name__ == "__main__":
    main()
