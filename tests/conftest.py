"""Shared fixtures. Tests read real MNIST from the shared data folder (never from a download):
$ADVBP_DATA_DIR if set, else ../shared/data beside the repository."""

from __future__ import annotations

import contextlib
import io
import os
import sys
from dataclasses import dataclass
from pathlib import Path

# One BLAS thread for the whole test session, set before numpy loads its BLAS: float32 sums depend on how a
# matmul is split across threads, and several tests compare runs bit for bit across processes (resume after
# SIGKILL, Ray workers, which advbp runs with one thread per CPU asked for). Users' runs keep their defaults.
_NUMPY_WAS_LOADED = "numpy" in sys.modules
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

REPO = Path(__file__).resolve().parent.parent


def pytest_configure(config):
    if _NUMPY_WAS_LOADED and os.environ.get("OMP_NUM_THREADS") == "1":
        # numpy's BLAS read its thread count before this file ran; say so instead of failing obscurely later
        config.issue_config_time_warning(pytest.PytestConfigWarning(
            "numpy was imported before tests/conftest.py set OMP_NUM_THREADS=1; bit-for-bit tests may differ"), 2)


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


# --- CIFAR-10: tiny real runs shared by the attack, report and sweep tests ------------------------------------------
CIFAR_TINY = ["--train-limit", "256", "--eval-limit", "128", "--epochs", "1", "--hidden", "16,16", "--backend", "torch"]


@pytest.fixture(scope="session")
def cifar_data_dir(data_dir) -> Path:
    if not (data_dir / "cifar10").is_dir():
        pytest.fail(f"CIFAR-10 not found in {data_dir}/cifar10: set ADVBP_DATA_DIR to the folder holding cifar10/")
    return data_dir


@pytest.fixture(scope="session")
def cifar_runs(cifar_data_dir, tmp_path_factory) -> dict[str, Path]:
    """Three tiny CIFAR-10 runs (1 epoch on 256 images): a conv net (8-8-8 filters, 16x16 FC, adversarial +
    dropout, simple preprocessing), a 16x16 MLP (simple) and a 16x16 MLP with scale01 inputs."""
    root = tmp_path_factory.mktemp("cifar-runs")
    specs = {
        "conv": ["--preset", "cifar10-conv-adv-dropout-simple", "--conv-channels", "8,8,8"],
        "mlp": ["--preset", "cifar10-2x3000-adv-simple"],
        "mlp01": ["--preset", "cifar10-2x3000-backprop-simple", "--preprocess", "scale01"],
    }
    out = {}
    for name, args in specs.items():
        r = run_cli(["train", *args, *CIFAR_TINY, "--data-dir", str(cifar_data_dir), "--out", str(root / name)])
        assert r.exit_code == 0, r.stderr
        out[name] = root / name
    return out


# --- backends: every one against the numpy specification ------------------------------------------------------------
def _other_backends() -> list[str]:
    from advbp_cli.backends import available_backends

    return [b for b in available_backends() if b != "numpy"] + ["wrapped"]


@pytest.fixture(params=_other_backends())
def other_backend(request):
    """Each backend that must agree with the numpy specification: every registered one, and the tests' own
    `wrapped` backend (tests/wrapped_backend.py: one module of primitives), registered for the test's duration."""
    from advbp_cli.backends import register_backend, unregister_backend

    if request.param != "wrapped":
        yield request.param
        return
    register_backend("wrapped", "wrapped_backend")
    try:
        yield "wrapped"
    finally:
        unregister_backend("wrapped")


class CountingOps:
    """A backend's primitives module, counting the calls of each primitive (to show what a pass computes)."""

    def __init__(self, module):
        import collections

        self._module = module
        self.calls = collections.Counter()

    def __getattr__(self, name):
        f = getattr(self._module, name)
        if not callable(f):
            return f

        def counted(*args, **kwargs):
            self.calls[name] += 1
            return f(*args, **kwargs)

        return counted


def assert_matches_central_difference(f, arr: np.ndarray, idx, analytic: float, h: float = 1e-6,
                                      big_h: float = 1e-4) -> None:
    """Checks d f / d arr[idx] (f() reads arr, float64) against the central difference (f(+h) - f(-h)) / 2h, with
    a tolerance derived from the arithmetic, not tuned:
    - rounding: f(+h) and f(-h) each carry a rounding error of about eps_mach |f| (the final rounding, and about as
      much again from inside the pass: the two evaluations run the same operations on nearly the same numbers, so
      most of the rest cancels), which the difference divides by 2h: 2 eps_mach |f| / h in all;
    - truncation: h^2 |f'''| / 6, with f''' estimated from the same quotient at a step big_h = 100 h, whose
      truncation is 10^4 times larger: FD(big_h) - FD(h) ~ (big_h^2 - h^2) f''' / 6, so the truncation at h is
      (h / big_h)^2 |FD(big_h) - FD(h)|.
    A wrong gradient entry is then caught down to about 2 eps_mach |f| / h (4.4e-10 |f| at h = 1e-6)."""
    old = arr[idx]

    def quotient(step):
        arr[idx] = old + step
        up = f()
        arr[idx] = old - step
        down = f()
        arr[idx] = old
        return (up - down) / (2 * step)

    fd, fd_big = quotient(h), quotient(big_h)
    tol = 2 * np.finfo(np.float64).eps * abs(f()) / h + (h / big_h) ** 2 * abs(fd_big - fd)
    assert abs(analytic - fd) <= tol, f"gradient {analytic:.6e}, central difference {fd:.6e} (tolerance {tol:.2e})"
