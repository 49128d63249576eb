"""A trained network with its data, as `advbp eval`, `advbp attack` and `advbp report` use it: the network from its
run directory or checkpoint, the images of its data set, and its own preprocessing fitted on its training split
(ZCA read back from the cache), so every command sees the inputs the network was trained on."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from .data.paths import explained, resolve_data_dir
from .data.splits import load_raw, preprocessor_for, split_of
from .errors import UsageProblem
from .networks import load_network


@dataclass
class ModelWithData:
    source: str  # the run directory or checkpoint as given
    net: object  # the Backend holding the trained weights
    cfg: object  # its RunConfig
    checkpoint: Path
    meta: dict  # the checkpoint's metadata (epoch, ...)
    raw: dict | None = None  # uint8 x_train, y_train, x_test, y_test of its data set
    prep: object | None = None  # its fitted Preprocessor

    def split(self, name: str | None = None, limit: int | None = None):
        """A split of its data set (default: the one the run evaluated on) in the network's dtype, preprocessed as
        in training. `train` of a validation-mode run is the 50 000 images it was trained on."""
        return split_of(self.raw, name or self.cfg.data.eval_split, self.cfg.data.eval_split, self.net.dtype, limit,
                        self.prep)


def load_models(sources, *, backend: str | None = None, device: str | None = None, dtype: str | None = None,
                data_dir=None, download: bool = True, log: Callable = print,
                check: Callable[[list[ModelWithData]], None] | None = None,
                data_runs=None) -> list[ModelWithData]:
    """Every SOURCE's network, then its data: the networks load first, so a bad SOURCE fails before any data is read,
    and `check(models)` can refuse options that do not fit them (e.g. --clip for a ZCA model) before that too. The
    data folder is found as for any command that reads runs (data.paths.resolve_data_dir, from `data_runs`, default
    the sources); each data set is read once and each distinct preprocessing fitted once."""
    models = [ModelWithData(str(src), *load_network(src, backend=backend, device=device, dtype=dtype))
              for src in sources]
    if check is not None:
        check(models)
    data_path, origin = resolve_data_dir(data_dir, runs=list(data_runs if data_runs is not None else sources))
    with explained(data_path, origin):
        raws = {ds: load_raw(ds, data_path, download=download, log=log)
                for ds in dict.fromkeys(m.cfg.data.dataset for m in models)}
    preps: dict = {}
    for m in models:
        m.raw = raws[m.cfg.data.dataset]
        features = int(np.prod(m.raw["x_train"].shape[1:]))
        if m.cfg.model.input_size != features:
            raise UsageProblem(f"{m.source} takes inputs of size {m.cfg.model.input_size}, but {m.cfg.data.dataset} "
                               f"images have {features} pixels")
        d = m.cfg.data
        key = (d.dataset, d.preprocess, d.eval_split, d.zca_epsilon)
        if key not in preps:
            preps[key] = preprocessor_for(d, m.raw, log)
        m.prep = preps[key]
    return models
