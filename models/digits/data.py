"""The digits data set (scikit-learn's `load_digits`, 8x8 images) split the one fixed way.

Training, the accuracy tests and int8 calibration all use this split, so the accuracies
recorded in README.md are measured on the same 450 test images everywhere. Pixels are
0..16 in the data set; the models take them scaled to [0, 1].
"""

from __future__ import annotations

from typing import Literal

import numpy as np

TEST_SIZE = 0.25
SPLIT_SEED = 0

# The layout each bundled model takes: the CNN an NCHW image, the MLP a flat row.
INPUT_SHAPES = {"cnn": (1, 8, 8), "mlp": (64,)}


def load_split(model: Literal["cnn", "mlp"] = "cnn") -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Return (x_train, y_train, x_test, y_test) for `model` ("cnn": float32 [N,1,8,8];
    "mlp": float32 [N,64]), pixels scaled to [0, 1], labels int64.

    The split is stratified, 25% test, random_state 0: 1347 training and 450 test images.
    """
    # Imported here so that importing this module (e.g. for INPUT_SHAPES) needs no scikit-learn.
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    if model not in INPUT_SHAPES:
        raise ValueError(f"model must be one of {sorted(INPUT_SHAPES)}, not {model!r}")
    digits = load_digits()
    x = (digits.data.astype(np.float32) / 16.0).reshape((-1, *INPUT_SHAPES[model]))
    y = digits.target.astype(np.int64)
    x_train, x_test, y_train, y_test = train_test_split(
        x, y, test_size=TEST_SIZE, random_state=SPLIT_SEED, stratify=y
    )
    return x_train, y_train, x_test, y_test
