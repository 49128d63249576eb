"""Shared fixtures. Tests read real MNIST from the shared data folder (never from a download):
$ADVBP_DATA_DIR if set, else ../shared/data beside the repository."""

from __future__ import annotations

import contextlib
import io
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parent.parent


def _data_dir() -> Path:
    env = os.environ.get("ADVBP_DATA_DIR")
    return Path(env) if env else REPO.parent / "shared" / "data"


@pytest.fixture(scope="session")
def data_dir() -> Path:
    d = _data_dir()
    if not (d / "mnist" / "train-images-idx3-ubyte.gz").is_file():
        pytest.fail(f"MNIST not found in {d}/mnist: set ADVBP_DATA_DIR to the folder holding mnist/")
    return d


@pytest.fixture(scope="session")
def mnist(data_dir):
    from advbp_cli.data.mnist import load_mnist

    return load_mnist(data_dir, download=False)


@dataclass
class CliResult:
    exit_code: int
    stdout: str
    stderr: str


def run_cli(args: list[str], env: dict | None = None) -> CliResult:
    """Runs `advbp ARGS` in-process through the real entry point (main), capturing output and the exit code."""
    from advbp_cli.cli import main

    out, err = io.StringIO(), io.StringIO()
    old_env = {k: os.environ.get(k) for k in (env or {})}
    os.environ.update(env or {})
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                main(args)
                code = 0
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    finally:
        for k, v in old_env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    return CliResult(code, out.getvalue(), err.getvalue())


@pytest.fixture
def cli():
    return run_cli


def small_model(hidden=(7, 5), activation="relu", output="sigmoid_bce", input_size=784):
    from advbp_cli.config import ModelConfig

    return ModelConfig(input_size=input_size, hidden=list(hidden), activation=activation, output=output)


def step_spec(**kw):
    from advbp_cli.config import TrainConfig

    return TrainConfig(**kw)


def fresh(model, seed=0):
    from advbp_cli.rng import init_params, layer_sizes

    return init_params(layer_sizes(model.input_size, model.hidden, model.num_classes), model.init_std, seed)


def max_abs_diff(a: dict, b: dict) -> float:
    return max(float(np.abs(a[k].astype(np.float64) - b[k].astype(np.float64)).max()) for k in a)
