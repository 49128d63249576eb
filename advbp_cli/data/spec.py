"""What advbp needs to know about a data set, in one place: `DatasetSpec`.

Each data set's module (data/mnist.py, data/cifar10.py) defines its `SPEC` beside the code that reads its files;
data/registry.py lists those modules. Everything else (config validation, --dataset's choices, the protocol's
sizes, the validation hold-out, attack manifests, figure tiles) asks the spec instead of keeping a table of its own.
"""

from __future__ import annotations

import importlib
import math
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Callable, Mapping


@dataclass(frozen=True)
class DatasetSpec:
    name: str  # the config value (--dataset NAME) and the data set's sub-folder of the data folder
    title: str  # how messages name it: "MNIST"
    description: str  # --help text beside the name
    image_shape: tuple[int, int, int]  # (C, H, W); a flat image holds its C planes of H x W, each row-major
    classes: int  # labels are 0 .. classes - 1
    train_size: int  # images in the training file(s)
    test_size: int  # images in the test file(s)
    validation_size: int  # --eval-split validation trains on all but the last N training images, evaluates on them
    files_sha256: Mapping[str, str]  # the official files and their sha256, as attack manifests record them
    module: str  # the dotted module that reads the files
    # Functions of `module`, looked up by name at each call (so the module keeps the one definition, and a test may
    # replace it): loader(data_dir, download=True, log=print) -> uint8 x_train (n, features), y_train, x_test,
    # y_test; checker(data_dir, download=True, log=print) verifies (and downloads) the files without decoding them.
    loader: str
    checker: str = "ensure_files"
    pixel_range: tuple[int, int] = (0, 255)  # the stored uint8 values; preprocessing scale01 maps them to [0, 1]
    idx_image_shape: tuple[int, int] | None = None  # (H, W) when its images can be written as IDX files (MNIST's)

    def __post_init__(self):
        object.__setattr__(self, "files_sha256", MappingProxyType(dict(self.files_sha256)))

    @property
    def features(self) -> int:
        """Values per flattened image (C * H * W)."""
        return math.prod(self.image_shape)

    def _function(self, name: str) -> Callable:
        return getattr(importlib.import_module(self.module), name)

    def load(self, data_dir: Path, download: bool = True, log=print) -> dict:
        return self._function(self.loader)(data_dir, download=download, log=log)

    def ensure(self, data_dir: Path, download: bool = True, log=print) -> None:
        self._function(self.checker)(data_dir, download=download, log=log)

    def training_images(self, eval_split: str) -> int:
        """How many images of the training file a run trains on: all, or all but the validation hold-out."""
        return self.train_size - (self.validation_size if eval_split == "validation" else 0)

    def eval_images(self, eval_split: str) -> int:
        return self.validation_size if eval_split == "validation" else self.test_size
