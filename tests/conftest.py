"""Shared fixtures. Tests read real MNIST from the shared data folder (never from a download):
$ADVBP_DATA_DIR if set, else ../shared/data beside the repository. A relative $ADVBP_DATA_DIR (the README's
`ADVBP_DATA_DIR=../shared/data python -m pytest -q`) is resolved once, here, against the folder pytest started in,
before any test changes directory. The data folder is never written: caches go to a per-session folder
($XDG_CACHE_HOME), and `_data_folder_untouched` checks every file's size and mtime at the end of the session."""

from __future__ import annotations

import contextlib
import io
import os
import signal
import sys
from dataclasses import dataclass
from pathlib import Path

# One BLAS thread for the whole test session, set before numpy loads its BLAS: float32 sums depend on how a
# matmul is split across threads, and several tests compare runs bit for bit across processes (resume after
# SIGKILL, Ray workers, which advbp runs with one thread per CPU asked for). Users' runs keep their defaults.
_NUMPY_WAS_LOADED = "numpy" in sys.modules
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import shutil  # noqa: E402
import tempfile  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402

REPO = Path(__file__).resolve().parent.parent

if os.environ.get("ADVBP_DATA_DIR"):
    os.environ["ADVBP_DATA_DIR"] = str(Path(os.environ["ADVBP_DATA_DIR"]).resolve())
# Per-user caches (ZCA fits, the default data folder) of this session only: nothing outside the tests' own folders
# is written. Tests that need their own cache set XDG_CACHE_HOME themselves.
_SESSION_CACHE = tempfile.mkdtemp(prefix="advbp-test-cache-")
os.environ["XDG_CACHE_HOME"] = _SESSION_CACHE


def pytest_unconfigure(config):
    shutil.rmtree(_SESSION_CACHE, ignore_errors=True)


def pytest_configure(config):
    # A shell starts background jobs with SIGINT ignored, and Python then installs no KeyboardInterrupt handler:
    # the Ctrl-C tests (in-process, and the advbp processes they start, which inherit the disposition) need it.
    if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    if _NUMPY_WAS_LOADED and os.environ.get("OMP_NUM_THREADS") == "1":
        # numpy's BLAS read its thread count before this file ran; say so instead of failing obscurely later
        config.issue_config_time_warning(pytest.PytestConfigWarning(
            "numpy was imported before tests/conftest.py set OMP_NUM_THREADS=1; bit-for-bit tests may differ"), 2)


def _data_dir() -> Path:
    env = os.environ.get("ADVBP_DATA_DIR")
    return Path(env) if env else REPO.parent / "shared" / "data"


def folder_state(folder: Path) -> dict[str, tuple[int, int]]:
    """(size, mtime in ns) of every file and folder under `folder`: equal before and after means nothing was
    written, created or removed there."""
    out = {}
    for p in sorted(Path(folder).rglob("*")):
        st = p.stat()
        out[str(p.relative_to(folder))] = (st.st_size if p.is_file() else -1, st.st_mtime_ns)
    return out


@pytest.fixture(scope="session", autouse=True)
def _data_folder_untouched():
    """The tests never write into the data folder, whether it is read-only or writable (issue 12)."""
    d = _data_dir()
    before = folder_state(d) if d.is_dir() else None
    yield
    if before is not None:
        after = folder_state(d)
        changed = sorted(set(before) ^ set(after) | {k for k in before.keys() & after.keys() if before[k] != after[k]})
        assert not changed, f"the test session wrote into the data folder {d}: {changed[:5]}"


@pytest.fixture(scope="session")
def data_dir() -> Path:
    d = _data_dir()
    if not (d / "mnist" / "train-images-idx3-ubyte.gz").is_file():
        pytest.fail(f"MNIST not found in {d}/mnist: set ADVBP_DATA_DIR to the folder holding mnist/")
    return d


@pytest.fixture(scope="session", autouse=True)
def decode_shared_data_once():
    """The in-process commands of the suite load MNIST and CIFAR-10 from the shared folder a few hundred times;
    decoding it once per session (about 1.5 s for MNIST, 10 s for CIFAR-10 under load) saves minutes. Only the
    shared folder is cached, keyed by its files' names, sizes and mtimes: every test that makes its own data folder
    (damaged, raw, archived, downloaded files) goes through the real loader, and so does the first load here. The
    cached arrays are read-only, so a command that wrote into its input data would fail loudly, not leak."""
    import importlib

    from advbp_cli.data.registry import dataset_names, get_dataset

    shared = _data_dir().resolve()
    cache: dict = {}

    def cached(real, sub: str):
        def load(data_dir, download=True, log=print):
            folder = Path(data_dir).resolve()
            if folder != shared:
                return real(data_dir, download=download, log=log)
            files = sorted((str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in (folder / sub).rglob("*")
                           if p.is_file())
            key = (sub, tuple(files))
            if key not in cache:
                arrays = real(data_dir, download=download, log=log)
                for a in arrays.values():
                    a.setflags(write=False)
                cache[key] = arrays
            return dict(cache[key])

        return load

    mp = pytest.MonkeyPatch()
    for spec in map(get_dataset, dataset_names()):  # each data set's loader, by the name its spec calls it
        module = importlib.import_module(spec.module)
        mp.setattr(module, spec.loader, cached(getattr(module, spec.loader), spec.name))
    yield
    mp.undo()


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


# --- attack sets as a forger would write them -----------------------------------------------------------------------
def sha256_file(path: Path) -> str:
    import hashlib

    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def forge_set(folder: Path, name: str, arrays: dict, manifest: dict, folder_fields: dict | None = None,
              **override) -> Path:
    """Writes an npz attack set, its <name>.json manifest and its entry in folder/manifest.json with every sha256
    recomputed, as someone who knows the format would: the chain of digests holds, so whatever advbp still refuses
    is refused for the content. `manifest` gets this set's name, format and file; `override` fields are set last
    (hostile values); `folder_fields` are the folder manifest's own fields (e.g. a real folder's source)."""
    import json

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    data = folder / f"{name}.npz"
    keep = {k: v for k, v in manifest.items() if k not in ("sha256", "name", "files", "format", "file_format")}
    manifest = {"format": "advbp-attack-set/1", "name": name, "file_format": "npz", "files": {"data": data.name},
                **keep, **override}
    arrays = {**arrays, "manifest": np.frombuffer(json.dumps(manifest).encode(), dtype=np.uint8)}
    np.savez(data, **arrays)
    sidecar = folder / f"{name}.json"
    files = manifest["files"] if isinstance(manifest["files"], dict) else {}
    sidecar.write_text(json.dumps({**manifest, "sha256": {k: sha256_file(data) for k in files}}))
    listing = folder / "manifest.json"
    record = json.loads(listing.read_text()) if listing.is_file() else {"format": "advbp-attack-dir/1",
                                                                         **(folder_fields or {}), "sets": []}
    eps = manifest.get("eps") if isinstance(manifest.get("eps"), (int, float)) else 0.0
    record["sets"] = [s for s in record["sets"] if s["name"] != name] + [
        {"eps": eps, "name": name, "manifest": sidecar.name, "manifest_sha256": sha256_file(sidecar)}]
    listing.write_text(json.dumps(record))
    return data


def read_set_arrays(path: Path) -> tuple[dict, dict]:
    """(arrays, embedded manifest) of an npz attack set, to copy into a forged one."""
    import json

    with np.load(path, allow_pickle=False) as f:
        arrays = {k: f[k] for k in f.files}
    manifest = json.loads(arrays.pop("manifest").tobytes().decode())
    return arrays, manifest


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
