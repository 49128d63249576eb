"""Attack-set claims against independent computations: every set of a multi-eps attack is x + eps sign(dJ/dx)
with ITS OWN eps (and its manifest says that eps), the sign being torch autograd's in float64 on the stored
weights; the manifest's source error is the error of a plain forward on the stored images; and
`--model-mode train` draws its dropout masks from the run's seed, one draw per batch."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.numpy import load_file

from conftest import run_cli

EPS = (0.05, 0.1, 0.2)
N = 200  # images per set
VALIDATION = 50_000  # a validation-mode run is attacked on training images 50000..


@pytest.fixture(scope="module")
def source(data_dir, tmp_path_factory) -> Path:
    """A float64 ReLU run (validation mode), so the independent float64 gradient has the run's own signs."""
    out = tmp_path_factory.mktemp("attack-src") / "run"
    r = run_cli(["train", "--data-dir", str(data_dir), "--no-download", "--train-limit", "1000", "--eval-limit", "100",
                 "--epochs", "2", "--hidden", "32,16", "--backend", "numpy", "--dtype", "float64",
                 "--eval-split", "validation", "--method", "backprop", "--lr", "0.2", "--init-std", "0.1",
                 "--no-eval-train-error", "--out", str(out)])
    assert r.exit_code == 0, r.stderr
    return out


@pytest.fixture(scope="module")
def sets(source, data_dir, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("attack-sets")
    out = {}
    for clip in ("--no-clip", "--clip"):
        folder = root / clip.strip("-")
        r = run_cli(["attack", str(source), "--eps", ",".join(map(str, EPS)), "--limit", str(N), clip,
                     "--batch-size", "64", "--data-dir", str(data_dir), "--no-download", "--out", str(folder)])
        assert r.exit_code == 0, r.stderr
        out[clip.strip("-")] = folder
    return out


def _forward(weights: dict, x: torch.Tensor) -> torch.Tensor:
    n_layers = len([k for k in weights if k.endswith(".weight")])
    h = x
    for i in range(n_layers):
        h = h @ torch.tensor(weights[f"layers.{i}.weight"], dtype=torch.float64) + torch.tensor(
            weights[f"layers.{i}.bias"], dtype=torch.float64)
        if i < n_layers - 1:
            h = torch.relu(h)
    return h


def autograd_signs(weights: dict, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """sign(dJ_i/dx_i) for every sample (sigmoid_bce, the run's output) and which signs are certain: a component
    within float64 summation noise of zero (1e-10 of the row's largest) could go either way in another order."""
    tx = torch.tensor(x, requires_grad=True)
    logits = _forward(weights, tx)
    t = torch.nn.functional.one_hot(torch.tensor(y), 10).double()
    torch.nn.functional.binary_cross_entropy_with_logits(logits, t, reduction="sum").backward()
    e = tx.grad.numpy()
    certain = np.abs(e) > 1e-10 * np.abs(e).max(axis=1, keepdims=True)
    return np.sign(e), certain


@pytest.fixture(scope="module")
def clean(mnist, source):
    x = mnist["x_train"][VALIDATION:VALIDATION + N].astype(np.float64) / 255
    y = mnist["y_train"][VALIDATION:VALIDATION + N].astype(np.int64)
    signs, certain = autograd_signs(load_file(str(source / "checkpoint.safetensors")), x, y)
    assert certain.mean() > 0.99
    return x, y, signs, certain


@pytest.mark.parametrize("kind", ["no-clip", "clip"])
def test_every_set_is_fgsm_with_its_own_eps_and_says_so(sets, clean, source, kind):
    x, y, signs, certain = clean
    weights = load_file(str(source / "checkpoint.safetensors"))
    folder = sets[kind]
    assert sorted(p.name for p in folder.glob("fgsm-eps*.json")) == sorted(f"fgsm-eps{e}.json" for e in EPS)
    listing = json.loads((folder / "manifest.json").read_text())["sets"]  # the folder's list of its sets
    assert [(s["eps"], s["manifest"]) for s in listing] == [(e, f"fgsm-eps{e}.json") for e in EPS]
    seen = []
    for eps in EPS:
        manifest = json.loads((folder / f"fgsm-eps{eps}.json").read_text())
        with np.load(folder / f"fgsm-eps{eps}.npz", allow_pickle=False) as f:
            stored, labels = f["x"], f["y"]
            inner = json.loads(f["manifest"].tobytes().decode())
        assert manifest["eps"] == eps and inner["eps"] == eps, (eps, manifest["eps"], inner["eps"])
        assert manifest["clip"] == (None if kind == "no-clip" else [0.0, 1.0])
        np.testing.assert_array_equal(labels, y)
        want = x + eps * signs
        if kind == "clip":
            want = np.clip(want, 0.0, 1.0)
        # stored as float32: equal to the float64 FGSM image rounded to float32, wherever the sign is certain
        diff = np.abs(stored.astype(np.float64) - want.astype(np.float32).astype(np.float64))
        assert diff[certain].max() <= 1e-7, (eps, diff[certain].max())
        assert (diff[~certain] <= 2 * eps + 1e-6).all()
        # the manifest's source error is the source network's error on these very images
        logits = _forward(weights, torch.tensor(stored.astype(np.float64))).detach().numpy()
        top2 = np.sort(logits, axis=1)[:, -2:]
        unsure = (top2[:, 1] - top2[:, 0]) < 1e-9
        wrong = int((logits.argmax(axis=1) != y).sum())
        assert abs(manifest["source_error"] * N / 100 - wrong) <= unsure.sum() + 1e-9, (eps, manifest["source_error"])
        seen.append(manifest["source_error"])
        assert listing[EPS.index(eps)]["source_error"] == manifest["source_error"]
    assert seen == sorted(seen) and seen[0] < seen[-1]  # a larger step, a stronger attack (and distinct sets)


def _dropout_run(data_dir: Path, out: Path, seed: int = 6) -> Path:
    from advbp_cli.config import RunConfig
    from advbp_cli.rundir import RunDir
    from advbp_cli.trainer import train

    cfg = RunConfig.model_validate({
        "model": {"hidden": [32, 32]},
        "train": {"method": "adversarial", "eps": 0.1, "lr": 0.1, "epochs": 1, "dropout_input": 0.2,
                  "dropout_fc": 0.5},
        "data": {"train_limit": 300, "eval_limit": 50, "eval_split": "validation", "eval_train_error": False},
        "runtime": {"backend": "numpy", "seed": seed},
    })
    run = RunDir(out)
    out.mkdir(parents=True)
    run.lock()
    try:
        train(cfg, run, data_dir, download=False)
    finally:
        run.unlock()
    return out


def _attack_x(data_dir: Path, run: Path, out: Path, mode: str, batch: int = 50) -> np.ndarray:
    r = run_cli(["attack", str(run), "--eps", "0.1", "--limit", "100", "--batch-size", str(batch), "--model-mode", mode,
                 "--data-dir", str(data_dir), "--no-download", "--out", str(out)])
    assert r.exit_code == 0, r.stderr
    assert json.loads((out / "fgsm-eps0.1.json").read_text())["attack"]["model_mode"] == mode
    with np.load(out / "fgsm-eps0.1.npz", allow_pickle=False) as f:
        return f["x"]


def test_train_mode_masks_are_keyed_by_the_runs_seed_one_draw_per_batch(data_dir, tmp_path):
    from advbp_cli.attack import fgsm_signs
    from advbp_cli.networks import load_network

    run = _dropout_run(data_dir, tmp_path / "run")
    a = _attack_x(data_dir, run, tmp_path / "a", "train")
    again = _attack_x(data_dir, run, tmp_path / "again", "train")
    np.testing.assert_array_equal(a, again)  # the masks come from the seed, not from a fresh generator
    # the same weights under another seed. A run's config.json cannot be edited any more (advbp refuses a config
    # that differs from its checkpoint's), so the seed is changed where the attack reads it: the run's config.
    net, cfg = load_network(run)[:2]
    seed7 = cfg.model_copy(update={"runtime": cfg.runtime.model_copy(update={"seed": 7})})
    clean = np.clip(a, 0, 1)  # any 100 inputs do: only the masks are compared
    y = np.zeros(len(clean), dtype=np.int64)
    s_run = fgsm_signs(net, clean, y, 50, train_mode_cfg=cfg).signs
    s_again = fgsm_signs(net, clean, y, 50, train_mode_cfg=cfg).signs
    s_seed7 = fgsm_signs(net, clean, y, 50, train_mode_cfg=seed7).signs
    np.testing.assert_array_equal(s_run, s_again)
    assert (s_run != s_seed7).any(axis=1).mean() > 0.5, "another seed must give other masks"
    # one draw per batch: batches of 100 instead of 50 give samples 50..99 the masks of another draw
    c = _attack_x(data_dir, run, tmp_path / "c", "train", batch=100)
    assert (a[50:] != c[50:]).any(axis=1).mean() > 0.5
    # evaluation mode has no masks: the seed and the batch size change nothing
    e1 = _attack_x(data_dir, run, tmp_path / "e1", "eval")
    e_seed7 = fgsm_signs(net, clean, y, 50).signs  # eval mode: no masks, so no seed to key them by
    np.testing.assert_array_equal(fgsm_signs(net, clean, y, 50).signs, e_seed7)
    np.testing.assert_array_equal(e1, _attack_x(data_dir, run, tmp_path / "e3", "eval", batch=100))
    assert (a != e1).any(axis=1).mean() > 0.5  # and dropout really was active in train mode


def test_idx_sets_are_read_back_as_the_plain_uint8_images_over_255(source, data_dir, tmp_path):
    """`advbp eval --attack-set` on an IDX set must see the images a plain IDX reader sees, divided by 255: its
    error is the error of a float64 forward of the stored weights on exactly those images."""
    out = tmp_path / "idx"
    r = run_cli(["attack", str(source), "--eps", "0.1", "--limit", str(N), "--format", "idx", "--data-dir",
                 str(data_dir), "--no-download", "--out", str(out)])
    assert r.exit_code == 0, r.stderr
    raw = (out / "fgsm-eps0.1-images-idx3-ubyte").read_bytes()
    assert raw[:4] == b"\x00\x00\x08\x03" and int.from_bytes(raw[4:8], "big") == N  # ubyte, 3 dimensions
    images = np.frombuffer(raw, np.uint8, offset=16).reshape(N, 784).astype(np.float64) / 255
    labels = np.frombuffer((out / "fgsm-eps0.1-labels-idx1-ubyte").read_bytes(), np.uint8, offset=8)
    logits = _forward(load_file(str(source / "checkpoint.safetensors")), torch.tensor(images)).numpy()
    top2 = np.sort(logits, axis=1)[:, -2:]
    unsure = int(((top2[:, 1] - top2[:, 0]) < 1e-9).sum())
    wrong = int((logits.argmax(axis=1) != labels).sum())
    got = run_cli(["eval", str(source), "--attack-set", str(out / "fgsm-eps0.1.json"), "--data-dir", str(data_dir),
                   "--no-download", "--json"])
    assert got.exit_code == 0, got.stderr
    (row,) = [a for a in json.loads(got.stdout)["attacks"] if a.get("eps") == 0.1]
    assert abs(row["error"] * N / 100 - wrong) <= unsure, (row["error"], wrong)
    assert 0 < wrong < N


def test_eps_lists_are_capped_at_1000_values():
    from advbp_cli.attack import parse_eps
    from advbp_cli.errors import UsageProblem

    assert len(parse_eps(["0.001:1:0.001"])) == 1000
    with pytest.raises(UsageProblem, match="1001 values"):
        parse_eps(["0:1:0.001"])
