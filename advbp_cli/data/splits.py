"""Train / evaluation splits of a data set, as the paper and dfa-torch's `-validate` define them."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import preprocess as pp
from .registry import get_dataset
from .spec import DatasetSpec

# The hold-out of arrays handed in without their data set (a plain dict from a loader, in tests and benchmarks);
# `load_raw`'s RawData carries its spec, whose validation_size is used instead. Every registered set holds out 10 000.
VALIDATION_SIZE = 10_000


@dataclass
class Split:
    name: str  # train | test | validation
    x: np.ndarray  # float, shape (n, features): x/255 in [0, 1] unless the run preprocesses otherwise
    y: np.ndarray  # int64 labels
    indices: np.ndarray  # positions in the original file, so attack sets can name their source samples
    source: str  # which original file the indices refer to: "train" or "test"
    preprocess: dict = field(default_factory=lambda: {"kind": "scale01"})  # what was applied (Preprocessor.describe)


class RawData(dict):
    """A data set's uint8 arrays (x_train, y_train, x_test, y_test) with the spec they came from."""

    def __init__(self, arrays: dict, spec: DatasetSpec):
        super().__init__(arrays)
        self.spec = spec


def ensure_dataset(dataset: str, data_dir: Path, download: bool = True, log=print) -> None:
    """Checks (and downloads if allowed) the files of `dataset`: called before a run directory is created."""
    get_dataset(dataset).ensure(data_dir, download=download, log=log)


def load_raw(dataset: str, data_dir: Path, download: bool = True, log=print) -> RawData:
    """uint8 x_train, y_train, x_test, y_test of `dataset` (images flattened to the spec's features)."""
    spec = get_dataset(dataset)
    return RawData(spec.load(data_dir, download=download, log=log), spec)


def _validation_size(raw: dict) -> int:
    spec = getattr(raw, "spec", None)
    return spec.validation_size if spec is not None else VALIDATION_SIZE


def training_count(data_cfg) -> int:
    """How many images of the training file a run with this DataConfig learned from: the first N."""
    n = get_dataset(data_cfg.dataset).training_images(data_cfg.eval_split)
    return n if data_cfg.train_limit is None else min(n, data_cfg.train_limit)


def split_definition(split: str, data_cfg) -> str:
    """Which images a split of the run's data set is, in words (recorded in attack manifests)."""
    spec = get_dataset(data_cfg.dataset)
    n_file, held_out = spec.train_size, spec.validation_size
    if split == "validation":
        return f"training images {n_file - held_out}..{n_file - 1} (the last {_count(held_out)})"
    if split == "test":
        return f"the {_count(spec.test_size)} test images"
    if data_cfg.eval_split == "validation":
        return f"training images 0..{n_file - held_out - 1} (the source's training data)"
    return f"all {n_file} training images"


def recorded_image_shape(cfg) -> list[int]:
    """How a manifest records one input image of a run (RunConfig): (H, W) for a data set whose images IDX files
    hold (MNIST's 28 x 28), else the conv net's input_shape, else the data set's (C, H, W); [input_size] for a flat
    input of another size."""
    spec = get_dataset(cfg.data.dataset)
    if spec.idx_image_shape is not None and cfg.model.input_size == math.prod(spec.idx_image_shape):
        return list(spec.idx_image_shape)
    if cfg.model.input_shape is not None:
        return list(cfg.model.input_shape)
    return list(spec.image_shape) if cfg.model.input_size == spec.features else [cfg.model.input_size]


def idx_writable(cfg) -> bool:
    """Whether a run's inputs can be written as IDX files: uint8 images of a data set with an IDX shape, pixels in
    [0, 1] (scale01) and the whole image as input."""
    spec = get_dataset(cfg.data.dataset)
    return (spec.idx_image_shape is not None and cfg.data.preprocess == "scale01"
            and cfg.model.input_size == math.prod(spec.idx_image_shape))


def _count(n: int) -> str:
    return f"{n:,}".replace(",", " ")  # 10 000


def train_indices(n_train: int, eval_split: str, validation_size: int = VALIDATION_SIZE) -> np.ndarray:
    """The run's training images: all of them, or all but the last `validation_size` in validation mode."""
    return np.arange(n_train - validation_size if eval_split == "validation" else n_train)


def preprocessor_for(data_cfg, raw: dict[str, np.ndarray], log=print) -> pp.Preprocessor:
    """The run's preprocessing, fitted on its training split (the whole split, whatever train_limit says: a limit
    makes a smoke run smaller, not its preprocessing different) and never on evaluation images. ZCA fits are
    cached in the per-user cache folder, so `advbp eval` recomputes the run's exact transform cheaply."""
    kind = getattr(data_cfg, "preprocess", "scale01")
    if kind == "scale01":
        return pp.Scale01()
    x = raw["x_train"][: len(train_indices(len(raw["x_train"]), data_cfg.eval_split, _validation_size(raw)))]
    return pp.fit(kind, x, zca_epsilon=getattr(data_cfg, "zca_epsilon", pp.DEFAULT_ZCA_EPSILON),
                  cache=pp.cache_dirs(data_cfg.dataset), log=log)


def split_of(raw: dict[str, np.ndarray], name: str, eval_split: str, dtype: str, limit: int | None = None,
             preprocess: pp.Preprocessor | None = None, *, data_cfg=None, log=print) -> Split:
    """`train` in validation mode is all but the training images held out for validation (the data set's
    validation_size, 10 000 for MNIST and CIFAR-10); `validation` is those held-out images.
    The images are preprocessed by `preprocess`, else by the run's preprocessing when `data_cfg` is given
    (fitted on its training split, see preprocessor_for), else scaled to [0, 1]."""
    n_train, held_out = len(raw["x_train"]), _validation_size(raw)
    if name == "train":
        idx, source = train_indices(n_train, eval_split, held_out), "train"
    elif name == "validation":
        idx, source = np.arange(n_train - held_out, n_train), "train"
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
    raw = load_raw(data_cfg.dataset, data_dir, download=download, log=log)
    prep = preprocessor_for(data_cfg, raw, log)
    train = split_of(raw, "train", data_cfg.eval_split, dtype, data_cfg.train_limit, prep)
    evaluation = split_of(raw, data_cfg.eval_split, data_cfg.eval_split, dtype, data_cfg.eval_limit, prep)
    return train, evaluation

