"""README claims about runs, each checked against an independent computation from the files a run leaves:
the headline (mean of the LAST 10 epochs, from metrics.jsonl), `advbp eval`'s error and hidden-unit sparsity
(a plain numpy forward of the stored weights), the --max-error gate at the exact error, --dtype float64 from the
command line, config.json's provenance, the init N(0, 0.01^2) with zero biases, and checkpoints written before
conv layers existed."""

from __future__ import annotations

import importlib.metadata
import json
import math
import platform
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from conftest import REPO, run_cli

TIMING = ("seconds", "train_seconds")


def train(data_dir: Path, out: Path, *extra: str) -> dict:
    r = run_cli(["train", "--data-dir", str(data_dir), "--no-download", "--out", str(out), "--json", *extra])
    assert r.exit_code == 0, r.stderr
    return json.loads(r.stdout)


def metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def eval_json(data_dir: Path, run: Path, *extra: str) -> dict:
    r = run_cli(["eval", str(run), "--data-dir", str(data_dir), "--no-download", "--json", *extra])
    assert r.exit_code == 0, r.stderr
    return json.loads(r.stdout)


# A 12-epoch run: with the paper's last-10 headline, the first 10 and the last 10 epochs are different sets.
LONG = ["--train-limit", "200", "--eval-limit", "200", "--epochs", "12", "--hidden", "24,16", "--backend", "numpy",
        "--method", "adversarial", "--eps", "0.1", "--lr", "0.1", "--init-std", "0.1", "--seed", "5",
        "--no-eval-train-error"]


@pytest.fixture(scope="module")
def long_run(data_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("long") / "run"
    return out, train(data_dir, out, *LONG)


def test_headline_is_the_mean_eval_error_of_the_last_10_of_12_epochs(long_run):
    run, printed = long_run
    rows = metrics(run)
    assert [r["epoch"] for r in rows] == list(range(1, 13))
    errors = [r["eval_error"] for r in rows]
    last10, first10 = math.fsum(errors[2:]) / 10, math.fsum(errors[:10]) / 10
    assert last10 != first10, "this run cannot tell the last 10 epochs from the first 10: choose another seed"
    summary = json.loads((run / "summary.json").read_text())
    assert summary["headline"]["value"] == pytest.approx(last10, rel=1e-12, abs=0)
    assert "last 10 epochs" in summary["headline"]["statistic"]
    assert printed["headline"]["value"] == summary["headline"]["value"]
    for r in rows:  # the timings: the training part of an epoch, within the whole epoch
        assert 0 < r["train_seconds"] <= r["seconds"], r  # the epoch includes its training (no speed claim)
    assert summary["epochs_completed"] == 12 and summary["final_epoch"]["epoch"] == 12


def test_mean_last_option_is_respected(data_dir, tmp_path):
    out = tmp_path / "run"
    s = train(data_dir, out, "--train-limit", "100", "--eval-limit", "100", "--epochs", "5", "--hidden", "8",
              "--backend", "numpy", "--mean-last", "2", "--no-eval-train-error", "--lr", "0.2", "--init-std", "0.1")
    errors = [r["eval_error"] for r in metrics(out)]
    assert s["headline"]["value"] == pytest.approx((errors[3] + errors[4]) / 2, rel=1e-12)
    assert "last 2 epochs" in s["headline"]["statistic"]


# --------------------------------------------------------------------------- an independent forward pass

def _test_images(mnist, n: int) -> tuple[np.ndarray, np.ndarray]:
    return mnist["x_test"][:n].astype(np.float64) / 255, mnist["y_test"][:n].astype(np.int64)


def independent_forward(weights: dict[str, np.ndarray], x: np.ndarray):
    """ReLU MLP in float64 from the stored tensors. Returns the logits, each hidden layer's pre-activations, and
    for each of them the float32 rounding radius of the run's own computation: a float32 sum of K terms is within
    K * 2^-24 * sum(|terms|) of the exact one (Higham's gamma_K), and the layer input carries the previous layer's
    radius through |W| (plus its own rounding)."""
    u = 2.0 ** -24
    n_layers = len([k for k in weights if k.endswith(".weight")])
    h, radius = x, np.zeros_like(x) + u * np.abs(x)  # inputs are x/255 rounded to float32
    pre, radii = [], []
    for i in range(n_layers):
        w = weights[f"layers.{i}.weight"].astype(np.float64)
        b = weights[f"layers.{i}.bias"].astype(np.float64)
        a = h @ w + b
        terms = np.abs(h) @ np.abs(w) + np.abs(b)
        r = (w.shape[0] + 1) * u * terms + radius @ np.abs(w)
        if i == n_layers - 1:
            return a, pre, radii, r
        pre.append(a)
        radii.append(r)
        h, radius = np.maximum(a, 0), r
    raise AssertionError("unreachable")


def _assert_sparsity_matches(fractions, pre, radii) -> None:
    """The zeros of relu are the units with a pre-activation <= 0; a unit within its rounding radius of 0 may fall
    either way in float32. The long run's layers have different sizes (24, 16), so a count divided by the wrong
    layer's size shows."""
    assert len(fractions) == len(pre) == 2 and pre[0].shape[1] != pre[1].shape[1]
    for j, (a, r, f) in enumerate(zip(pre, radii, fractions)):
        sure_zero = int((a < -r).sum())
        unsure_units = int((np.abs(a) <= r).sum())
        zeros_reported = f * a.size
        assert sure_zero - 1e-6 <= zeros_reported <= sure_zero + unsure_units + 1e-6, (j, f, sure_zero / a.size)
        assert 0.05 < sure_zero / a.size < 0.95  # zeros and non-zeros both present: counting either is not the same
        assert unsure_units <= 1e-3 * a.size


@pytest.mark.parametrize("backend", ["numpy", "torch"])
def test_eval_error_and_sparsity_equal_a_plain_numpy_forward_of_the_stored_weights(long_run, data_dir, mnist, backend):
    run, _ = long_run
    n = 1000
    got = eval_json(data_dir, run, "--split", "test", "--limit", str(n), "--backend", backend)
    weights = load_file(str(run / "checkpoint.safetensors"))
    x, y = _test_images(mnist, n)
    logits, pre, radii, r_out = independent_forward(weights, x)
    # error: a prediction is certain unless the top two logits are within both their rounding radii
    order = np.argsort(logits, axis=1)
    top, second = order[:, -1], order[:, -2]
    rows = np.arange(n)
    margin = logits[rows, top] - logits[rows, second]
    unsure = margin <= r_out[rows, top] + r_out[rows, second]
    wrong_sure = int(((top != y) & ~unsure).sum())
    assert got["n"] == n
    wrong_reported = round(got["error"] * n / 100)
    assert wrong_reported / n * 100 == pytest.approx(got["error"], abs=1e-9)
    assert wrong_sure <= wrong_reported <= wrong_sure + int(unsure.sum()), (got["error"], wrong_sure, unsure.sum())
    assert 0 < wrong_sure < n  # neither trivial nor hopeless, so a wrong error rate would show
    _assert_sparsity_matches([p / 100 for p in got["hidden_zero_percent"]], pre, radii)  # eval --json: percent


@pytest.mark.parametrize("backend", ["numpy", "torch"])
def test_report_figure_3_sparsity_equals_a_plain_numpy_forward(long_run, mnist, backend):
    """`advbp report` counts Figure 3's zeros with evaluate.hidden_sparsity, a pass without labels."""
    from advbp_cli.backends import load_backend
    from advbp_cli.config import ModelConfig
    from advbp_cli.evaluate import hidden_sparsity

    run, _ = long_run
    weights = load_file(str(run / "checkpoint.safetensors"))
    x, _ = _test_images(mnist, 1000)
    net = load_backend(backend)(ModelConfig(hidden=[24, 16]), dtype="float32", device="cpu")
    net.set_params({k: v for k, v in weights.items() if not k.startswith("momentum.")})
    _, pre, radii, _ = independent_forward(weights, x)
    _assert_sparsity_matches(hidden_sparsity(net, x), pre, radii)


def test_max_error_gate_passes_at_the_error_and_fails_just_below(long_run, data_dir):
    run, _ = long_run
    err = eval_json(data_dir, run, "--limit", "500")["error"]
    assert 0 < err
    ok = run_cli(["eval", str(run), "--data-dir", str(data_dir), "--limit", "500", "--max-error", repr(err), "--json"])
    assert ok.exit_code == 0, ok.stderr
    assert json.loads(ok.stdout)["passed"] is True
    below = err - 100 / 500 / 2  # half an image below the error
    fail = run_cli(["eval", str(run), "--data-dir", str(data_dir), "--limit", "500", "--max-error", repr(below)])
    assert fail.exit_code == 1 and "above --max-error" in fail.stderr


def test_eval_reproduces_the_last_epoch_error_recorded_in_metrics(long_run, data_dir):
    run, _ = long_run
    got = eval_json(data_dir, run, "--limit", "200")  # the run evaluated on the first 200 test images
    assert got["error"] == metrics(run)[-1]["eval_error"]


# ------------------------------------------------------------------------------------- --dtype float64

def test_dtype_float64_from_the_cli_stores_float64_weights_and_the_backends_agree(data_dir, tmp_path):
    tiny = ["--train-limit", "300", "--eval-limit", "200", "--epochs", "2", "--hidden", "32,16", "--seed", "4",
            "--dtype", "float64", "--no-eval-train-error"]
    runs = {}
    for backend in ("numpy", "torch"):
        train(data_dir, tmp_path / backend, *tiny, "--backend", backend, "--device", "cpu")
        runs[backend] = load_file(str(tmp_path / backend / "checkpoint.safetensors"))
        record = json.loads((tmp_path / backend / "config.json").read_text())
        assert record["config"]["runtime"]["dtype"] == "float64"
        assert record["resolved"]["dtype"] == "float64" and record["resolved"]["backend"] == backend
    for name, w in runs["numpy"].items():
        assert w.dtype == np.float64 and runs["torch"][name].dtype == np.float64, name
        # the README's float64 parity: every weight within 1e-9 after 60 adversarial steps
        assert float(np.abs(w - runs["torch"][name]).max()) < 1e-9, name
    rows = {b: [{k: v for k, v in r.items() if k not in TIMING} for r in metrics(tmp_path / b)] for b in runs}
    assert [r["eval_error"] for r in rows["numpy"]] == [r["eval_error"] for r in rows["torch"]]
    default = tmp_path / "default"
    train(data_dir, default, "--train-limit", "50", "--eval-limit", "50", "--epochs", "1", "--hidden", "8",
          "--backend", "numpy")
    assert all(v.dtype == np.float32 for v in load_file(str(default / "checkpoint.safetensors")).values())


# ------------------------------------------------------------------------------------- config.json provenance

def test_config_json_records_versions_commit_and_the_command(data_dir, tmp_path):
    import numpy
    import torch

    out = tmp_path / "run"
    args = ["train", "--data-dir", str(data_dir), "--no-download", "--train-limit", "50", "--eval-limit", "50",
            "--epochs", "1", "--hidden", "8", "--backend", "torch", "--out", str(out)]
    proc = subprocess.run([sys.executable, "-m", "advbp_cli", *args], capture_output=True, text=True, timeout=300,
                          cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    record = json.loads((out / "config.json").read_text())
    prov = record["provenance"]
    assert prov["command"][1:] == args  # argv[0] is the program, then exactly what was typed
    assert prov["advbp_version"] == importlib.metadata.version("advbp")
    assert prov["libraries"]["numpy"] == numpy.__version__ and prov["libraries"]["torch"] == torch.__version__
    assert prov["python"] == platform.python_version()
    src = Path(__import__("advbp_cli").__file__).resolve().parent
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=src, capture_output=True, text=True)
    if head.returncode == 0:  # an installed (non-git) copy records None, which is checked below
        assert prov["git"]["commit"] == head.stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=src,
                               capture_output=True, text=True).stdout.strip()
        assert prov["git"]["dirty"] is bool(dirty)
    else:
        assert prov["git"]["commit"] is None
    assert record["config"]["model"]["hidden"] == [8] and record["config"]["data"]["train_limit"] == 50


# ------------------------------------------------------------------------------------- the init

def _sampling_bounds_hold(w: np.ndarray, std: float) -> None:
    """w must look like n independent N(0, std^2) draws: the sample mean within 5 standard errors (std/sqrt(n)) of
    0, the sample std within 5 of its standard errors (about std/sqrt(2n)) of std, and the share of |w| < std
    within 5 binomial standard errors of 68.27 %. For a correct init each fails with probability < 1e-6."""
    n = w.size
    assert abs(w.mean()) < 5 * std / math.sqrt(n), (w.mean(), std, n)
    assert abs(w.std(ddof=1) / std - 1) < 5 / math.sqrt(2 * (n - 1)), (w.std(), std, n)
    p = math.erf(1 / math.sqrt(2))
    assert abs((np.abs(w) < std).mean() - p) < 5 * math.sqrt(p * (1 - p) / n), ((np.abs(w) < std).mean(), n)


@pytest.mark.parametrize("model,std", [({"hidden": [400, 400]}, 0.01), ({"hidden": [300], "init_std": 0.1}, 0.1),
                                       ({"arch": "conv", "input_shape": [3, 32, 32], "conv_channels": [16, 32],
                                         "hidden": [64], "output": "softmax_ce"}, 0.01)])
def test_init_is_normal_with_the_configured_std_and_zero_biases(model, std):
    from advbp_cli.config import RunConfig
    from advbp_cli.networks import fresh_params

    data = {"dataset": "cifar10"} if model.get("arch") == "conv" else {}
    cfg = RunConfig.model_validate({"model": model, "data": data, "runtime": {"seed": 3}})
    params = fresh_params(cfg)
    weights = [k for k in params if k.endswith(".weight")]
    assert len(weights) == len(model["hidden"]) + 1 + len(model.get("conv_channels", [])) * (model.get("arch") == "conv")
    for name, v in params.items():
        assert v.dtype == np.float64
        if name.endswith(".bias"):
            assert not v.any(), f"{name} is not all zeros"
        else:
            _sampling_bounds_hold(v, std)
    if model.get("arch") != "conv":
        sizes = [784, *model["hidden"], 10]
        assert [params[f"layers.{i}.weight"].shape for i in range(len(sizes) - 1)] == list(zip(sizes[:-1], sizes[1:]))
    # independent layers and seeds: no two weight arrays share their draws
    flat = [params[k].ravel()[:2000] for k in weights]
    for i in range(len(flat)):
        for j in range(i + 1, len(flat)):
            m = min(len(flat[i]), len(flat[j]))
            assert abs(np.corrcoef(flat[i][:m], flat[j][:m])[0, 1]) < 5 / math.sqrt(m)
    other = fresh_params(cfg.model_copy(update={"runtime": cfg.runtime.model_copy(update={"seed": 4})}))
    assert not np.array_equal(other[weights[0]], params[weights[0]])


def test_a_run_starts_from_the_documented_init(data_dir, tmp_path):
    """The trainer uses the init above: one step with a learning rate too small to change a float64 weight
    leaves the checkpoint's weights equal to N(0, 0.01^2) draws keyed by the seed."""
    out = tmp_path / "run"
    train(data_dir, out, "--train-limit", "10", "--eval-limit", "10", "--epochs", "1", "--hidden", "300",
          "--backend", "numpy", "--dtype", "float64", "--lr", "1e-300", "--method", "backprop", "--seed", "9")
    w = load_file(str(out / "checkpoint.safetensors"))
    _sampling_bounds_hold(w["layers.0.weight"], 0.01)
    assert np.abs(w["layers.0.bias"]).max() < 1e-290  # zero before the step; the step adds lr * gradient


# ------------------------------------------------------------------- checkpoints from before conv layers existed

OLD_MODEL_FIELDS = ("input_size", "hidden", "activation", "output", "num_classes", "init_std")


def _old_style_copy(run: Path, dest: Path, **changes) -> Path:
    """The run's files with a checkpoint whose metadata config names only the model fields of the first version
    (no arch, conv or pooling fields), as checkpoints written before conv layers existed do."""
    import shutil

    shutil.copytree(run, dest)
    from safetensors import safe_open

    with safe_open(str(run / "checkpoint.safetensors"), framework="numpy") as fh:
        meta = dict(fh.metadata())
        tensors = {k: fh.get_tensor(k) for k in fh.keys()}
    cfg = json.loads(meta["config"])
    cfg["model"] = {k: v for k, v in cfg["model"].items() if k in OLD_MODEL_FIELDS} | changes
    assert "arch" not in cfg["model"] and "conv_channels" not in cfg["model"]
    meta["config"] = json.dumps(cfg)
    # nor the digests advbp records since (an old checkpoint has none; a present one would no longer match)
    meta.pop("config_sha256", None)
    meta.pop("metrics_sha256", None)
    (dest / "checkpoint.safetensors").unlink()
    save_file(tensors, str(dest / "checkpoint.safetensors"), metadata=meta)
    return dest


def test_checkpoints_written_before_conv_layers_still_load_and_a_changed_one_is_refused(long_run, data_dir, tmp_path):
    run, _ = long_run
    want = eval_json(data_dir, run, "--limit", "300")
    old = _old_style_copy(run, tmp_path / "old")
    got = eval_json(data_dir, old, "--limit", "300")
    assert got["error"] == want["error"] and got["hidden_zero_percent"] == want["hidden_zero_percent"]
    other = _old_style_copy(run, tmp_path / "other", activation="tanh")
    r = run_cli(["eval", str(other), "--data-dir", str(data_dir), "--limit", "10"])
    assert r.exit_code == 2 and "activation='tanh'" in r.stderr and "another run" in r.stderr, r.stderr
