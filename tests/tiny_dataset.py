"""A data set defined inside the tests: one module with a loader and a SPEC, plus one registry line
(`register_dataset(tiny_dataset.SPEC)`, in tests/test_architecture.py), proving the seam that data/mnist.py and
data/cifar10.py sit behind. Its images are 2x3x3 (two planes), 4 classes, drawn from a fixed seed: the class is
which quarter of the image is brightest, so a small network learns it. No file is read; `ensure_files` checks
that the data folder exists, as a real loader's first step would."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from advbp_cli.data.spec import DatasetSpec
from advbp_cli.errors import UsageProblem

SHAPE = (2, 3, 3)
TRAIN, TEST, HELD_OUT = 120, 40, 30


def _images(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 4, n)
    x = rng.integers(0, 100, (n, *SHAPE))
    for i, c in enumerate(y):
        x[i, c % 2, :, c // 2 :] += 155  # class c: a bright region in plane c % 2
    return x.reshape(n, -1).astype(np.uint8), y.astype(np.uint8)


def ensure_files(data_dir: Path, download: bool = True, log=print) -> None:
    if not Path(data_dir).is_dir():
        raise UsageProblem(f"no tiny data set in {data_dir}")


def load_tiny(data_dir: Path, download: bool = True, log=print) -> dict[str, np.ndarray]:
    ensure_files(data_dir, download, log)
    x_train, y_train = _images(TRAIN, 0)
    x_test, y_test = _images(TEST, 1)
    return {"x_train": x_train, "y_train": y_train, "x_test": x_test, "y_test": y_test}


SPEC = DatasetSpec(
    name="tiny", title="TINY", description="a test data set of 2x3x3 images",
    image_shape=SHAPE, classes=4, train_size=TRAIN, test_size=TEST, validation_size=HELD_OUT,
    files_sha256={}, module=__name__, loader="load_tiny",
)
