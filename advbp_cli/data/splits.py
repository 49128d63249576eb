"""Train / evaluation splits of a data set, as the paper and dfa-torch's `-validate` define them."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import preprocess as pp

VALIDATION_SIZE = 10_000


@dataclass
class Split:
    name: str  # train | test | validation
    x: np.ndarray  # float, shape (n, features): x/255 in [0, 1] unless the run preprocesses otherwise
    y: np.ndarray  # int64 labels
    indices: np.ndarray  # positions in the original file, so attack sets can name their source samples
    source: str  # which original file the indices refer to: "train" or "test"
    preprocess: dict = field(default_factory=lambda: {"kind": "scale01"})  # what was applied (Preprocessor.describe)


def _scaled(x_uint8: np.ndarray, dtype: str) -> np.ndarray:
    return pp.Scale01().apply(x_uint8, dtype)


def ensure_dataset(dataset: str, data_dir: Path, download: bool = True, log=print) -> None:
    """Checks (and downloads if allowed) the files of `dataset`: called before a run directory is created."""
    if dataset == "cifar10":
        from .cifar10 import ensure_files
    else:
        from .mnist import ensure_files
    ensure_files(data_dir, download=download, log=log)


def load_raw(dataset: str, data_dir: Path, download: bool = True, log=print) -> dict[str, np.ndarray]:
    """uint8 x_train, y_train, x_test, y_test of `dataset` (images flattened: 784 or 3072 features)."""
    if dataset == "cifar10":
        from .cifar10 import load_cifar10

        return load_cifar10(data_dir, download=download, log=log)
    from .mnist import load_mnist

    return load_mnist(data_dir, download=download, log=log)


def train_indices(n_train: int, eval_split: str) -> np.ndarray:
    """The run's training images: all of them, or all but the last VALIDATION_SIZE in validation mode."""
    return np.arange(n_train - VALIDATION_SIZE if eval_split == "validation" else n_train)


def preprocessor_for(data_cfg, raw: dict[str, np.ndarray], log=print) -> pp.Preprocessor:
    """The run's preprocessing, fitted on its training split (the whole split, whatever train_limit says: a limit
    makes a smoke run smaller, not its preprocessing different) and never on evaluation images. ZCA fits are
    cached in the per-user cache folder, so `advbp eval` recomputes the run's exact transform cheaply."""
    kind = getattr(data_cfg, "preprocess", "scale01")
    if kind == "scale01":
        return pp.Scale01()
    x = raw["x_train"][: len(train_indices(len(raw["x_train"]), data_cfg.eval_split))]
    return pp.fit(kind, x, zca_epsilon=getattr(data_cfg, "zca_epsilon", pp.DEFAULT_ZCA_EPSILON),
                  cache=pp.cache_dirs(data_cfg.dataset), log=log)


def split_of(raw: dict[str, np.ndarray], name: str, eval_split: str, dtype: str, limit: int | None = None,
             preprocess: pp.Preprocessor | None = None, *, data_cfg=None, log=print) -> Split:
    """`train` in validation mode is all but the last 10k training images; `validation` is the last 10k.
    The images are preprocessed by `preprocess`, else by the run's preprocessing when `data_cfg` is given
    (fitted on its training split, see preprocessor_for), else scaled to [0, 1]."""
    n_train = len(raw["x_train"])
    if name == "train":
        idx, source = train_indices(n_train, eval_split), "train"
    elif name == "validation":
        idx, source = np.arange(n_train - VALIDATION_SIZE, n_train), "train"
    elif name == "test":
        idx, source = np.arange(len(raw["x_test"])), "test"
    else:
        raise ValueError(name)
    if limit is not None:
        idx = idx[:limit]
    if preprocess is None:
        preprocess = preprocessor_for(data_cfg, raw, log) if data_cfg is not None else pp.Scale01()
    x = raw[f"x_{source}"][idx]
    y = raw[f"y_{source}"][idx].astype(np.int64)
    return Split(name, preprocess.apply(x, dtype), y, idx, source, preprocess.describe())


def load_splits(data_cfg, dtype: str, data_dir: Path, download: bool = True, log=print) -> tuple[Split, Split]:
    """(training split, evaluation split) for a run's DataConfig, both preprocessed as the run says."""
    raw = load_raw(getattr(data_cfg, "dataset", "mnist"), data_dir, download=download, log=log)
    prep = preprocessor_for(data_cfg, raw, log)
    train = split_of(raw, "train", data_cfg.eval_split, dtype, data_cfg.train_limit, prep)
    evaluation = split_of(raw, data_cfg.eval_split, data_cfg.eval_split, dtype, data_cfg.eval_limit, prep)
    return train, evaluation


def fingerprint(split: Split) -> str:
    """sha256 of a split's pixels and labels, recorded with attack sets and results."""
    h = hashlib.sha256()
    h.update(np.ascontiguousarray(split.x).tobytes())
    h.update(np.ascontiguousarray(split.y).tobytes())
    return h.hexdigest()
