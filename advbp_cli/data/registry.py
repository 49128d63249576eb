"""The registry of data sets: the only list of them (as backends/__init__.py is of backends).

A data set is one module that reads its files and defines `SPEC` (a data.spec.DatasetSpec), plus one line in
`_MODULES`. Config validation, the choices of --dataset, `advbp train/sweep`'s data checks, the splits, the
protocol's sizes and the attack manifests all read the spec. An unknown name is an error, never a fallback.
"""

from __future__ import annotations

import importlib

from ..errors import UsageProblem
from .spec import DatasetSpec

_MODULES = (
    "advbp_cli.data.mnist",
    "advbp_cli.data.cifar10",
)

DEFAULT_DATASET = "mnist"  # the paper's first table, and the config's defaults

_REGISTRY: dict[str, DatasetSpec] = {}


def register_dataset(spec: DatasetSpec) -> None:
    """Adds a data set (the built-in ones are registered from _MODULES when this module is imported)."""
    if spec.name in _REGISTRY and _REGISTRY[spec.name] != spec:
        raise ValueError(f"data set {spec.name!r} is already registered (from {_REGISTRY[spec.name].module})")
    _REGISTRY[spec.name] = spec


def unregister_dataset(name: str) -> None:
    _REGISTRY.pop(name, None)


def dataset_names() -> list[str]:
    return list(_REGISTRY)


def get_dataset(name: str) -> DatasetSpec:
    """The spec of data set `name`; an unknown name is one line naming the accepted ones."""
    spec = _REGISTRY.get(name)
    if spec is None:
        raise UsageProblem(f"unknown data set {name!r} (accepted: {', '.join(_REGISTRY)})")
    return spec


for _module in _MODULES:
    register_dataset(importlib.import_module(_module).SPEC)
