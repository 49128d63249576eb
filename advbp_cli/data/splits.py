"""Train / evaluation splits of a data set, as the paper and dfa-torch's `-validate` define them."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .mnist import load_mnist

VALIDATION_SIZE = 10_000


@dataclass
class Split:
    name: str  # train | test | validation
    x: np.ndarray  # float in [0, 1], shape (n, 784)
    y: np.ndarray  # int64 labels
    indices: np.ndarray  # positions in the original file, so attack sets can name their source samples
    source: str  # which original file the indices refer to: "train" or "test"


def _scaled(x_uint8: np.ndarray, dtype: str) -> np.ndarray:
    return x_uint8.astype(dtype) / np.asarray(255, dtype=dtype)


def split_of(raw: dict[str, np.ndarray], name: str, eval_split: str, dtype: str, limit: int | None = None) -> Split:
    """`train` in validation mode is the first 50k; `validation` is the last 10k training images."""
    n_train = len(raw["x_train"])
    if name == "train":
        stop = n_train - VALIDATION_SIZE if eval_split == "validation" else n_train
        idx, source = np.arange(stop), "train"
    elif name == "validation":
        idx, source = np.arange(n_train - VALIDATION_SIZE, n_train), "train"
    elif name == "test":
        idx, source = np.arange(len(raw["x_test"])), "test"
    else:
        raise ValueError(name)
    if limit is not None:
        idx = idx[:limit]
    x = raw[f"x_{source}"][idx]
    y = raw[f"y_{source}"][idx].astype(np.int64)
    return Split(name, _scaled(x, dtype), y, idx, source)


def load_splits(data_cfg, dtype: str, data_dir: Path, download: bool = True, log=print) -> tuple[Split, Split]:
    """(training split, evaluation split) for a run's DataConfig."""
    raw = load_mnist(data_dir, download=download, log=log)
    train = split_of(raw, "train", data_cfg.eval_split, dtype, data_cfg.train_limit)
    evaluation = split_of(raw, data_cfg.eval_split, data_cfg.eval_split, dtype, data_cfg.eval_limit)
    return train, evaluation


def fingerprint(split: Split) -> str:
    """sha256 of a split's pixels and labels, recorded with attack sets and results."""
    h = hashlib.sha256()
    h.update(np.ascontiguousarray(split.x).tobytes())
    h.update(np.ascontiguousarray(split.y).tobytes())
    return h.hexdigest()
