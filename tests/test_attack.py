"""`advbp attack` and attack evaluation (issue 3): FGSM parity across backends and with torch autograd, set
files without pickle, round trips through `advbp eval`, refusals, eps parsing and the zero-gradient warning."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from advbp_cli.attack import fgsm_signs, gradient_network, parse_eps, perturb
from advbp_cli.backends import load_backend
from advbp_cli.config import RunConfig
from advbp_cli.errors import UsageProblem
from conftest import forge_set, fresh, read_set_arrays, small_model

LIMIT = 300  # images per attack set in the CLI tests


# ------------------------------------------------------------------------------------------------ helpers
def _params(model, seed=1):
    """Weights large enough that the network's outputs and gradients are far from trivial."""
    rng = np.random.default_rng(seed)
    return {k: v * 20 + (rng.normal(0, 0.05, v.shape) if v.ndim == 2 else 0) for k, v in fresh(model, seed).items()}


def _checkpoint(path: Path, params: dict, eval_split="validation", **model_kw) -> Path:
    from advbp_cli.checkpoint import save_checkpoint

    cfg = RunConfig.model_validate({"model": model_kw, "data": {"eval_split": eval_split},
                                    "runtime": {"backend": "numpy"}})
    save_checkpoint(path, params, cfg.model_dump(mode="json"), epoch=1)
    return path


def _autograd_z(params, x, y, eps, clip, output):
    import torch

    n_layers = len(params) // 2
    tp = [(torch.tensor(params[f"layers.{i}.weight"]), torch.tensor(params[f"layers.{i}.bias"])) for i in range(n_layers)]
    tx = torch.tensor(x, requires_grad=True)
    h = tx
    for i, (w, b) in enumerate(tp):
        h = h @ w + b
        if i < n_layers - 1:
            h = torch.relu(h)
    ty = torch.tensor(y)
    if output == "sigmoid_bce":
        t = torch.nn.functional.one_hot(ty, 10).double()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(h, t, reduction="sum")
    else:
        loss = torch.nn.functional.cross_entropy(h, ty, reduction="sum")
    loss.backward()  # the sum: each row of the gradient is that sample's own dJ/dx
    z = tx.detach() + eps * tx.grad.sign()
    return (z.clamp(*clip) if clip else z).numpy()


@pytest.fixture(scope="module")
def runs(tmp_path_factory, data_dir):
    """Two small trained run directories (validation mode), made through the real CLI."""
    from conftest import run_cli

    root = tmp_path_factory.mktemp("attack-runs")
    out = {}
    for name, extra in (("src", ["--method", "backprop", "--seed", "0"]),
                        ("tgt", ["--method", "adversarial", "--eps", "0.1", "--seed", "1"])):
        r = run_cli(["train", "--hidden", "32,32", "--epochs", "2", "--train-limit", "2000", "--eval-limit", "200",
                     "--eval-split", "validation", "--backend", "numpy", "--lr", "0.2", "--init-std", "0.1",
                     "--no-eval-train-error", "--data-dir", str(data_dir), "--out", str(root / name), *extra])
        assert r.exit_code == 0, r.stderr
        out[name] = root / name
    return out


def _attack(cli, data_dir, source, out, *extra):
    return cli(["attack", str(source), "--limit", str(LIMIT), "--data-dir", str(data_dir), "--out", str(out), *extra])


def _eval_json(cli, data_dir, *args):
    r = cli(["eval", *map(str, args), "--limit", str(LIMIT), "--data-dir", str(data_dir), "--json"])
    assert r.exit_code == 0, r.stderr
    return json.loads(r.stdout), r


# ------------------------------------------------------------------------------------------------ FGSM arithmetic
@pytest.mark.parametrize("loss", ["model", "softmax_ce"])
@pytest.mark.parametrize("clip", [None, (0.0, 1.0)])
def test_fgsm_numpy_equals_torch_equals_autograd(mnist, loss, clip):
    model = small_model(hidden=(64, 64))
    params = _params(model)
    x = mnist["x_train"][-256:].astype(np.float64) / 255
    y = mnist["y_train"][-256:].astype(np.int64)
    cfg = RunConfig.model_validate({"model": model.model_dump()})
    zs = {}
    for name in ("numpy", "torch"):
        net = load_backend(name)(model, dtype="float64", device="cpu")
        net.set_params(params)
        gnet, _ = gradient_network(net, cfg, loss)
        grads = fgsm_signs(gnet, x, y, batch_size=100)  # 100 does not divide 256: a short last batch too
        zs[name] = {eps: perturb(x, grads.signs, eps, clip) for eps in (0.25, 0.5)}
        assert (grads.signs != 0).mean() > 0.5  # a real gradient, not a comparison of zeros
    output = "sigmoid_bce" if loss == "model" else loss
    for eps in (0.25, 0.5):
        np.testing.assert_array_equal(zs["numpy"][eps], zs["torch"][eps])
        np.testing.assert_array_equal(zs["numpy"][eps], _autograd_z(params, x, y, eps, clip, output))


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_perturb_is_the_reference_fgsm_perturb(dtype):
    from advbp_cli.backends import numpy as npo
    from advbp_cli.backends.step import fgsm_perturb

    rng = np.random.default_rng(0)
    x = rng.random((50, 784)).astype(dtype)
    e = rng.normal(size=(50, 784)).astype(dtype) * (rng.random((50, 784)) > 0.1)  # some exact zeros
    signs = np.sign(e).astype(np.int8)
    for eps in (0.05, 0.1, 0.25, 0.3, 0.5):
        for clip in (None, (0.0, 1.0)):
            z = perturb(x, signs, eps, clip)
            assert z.dtype == x.dtype
            np.testing.assert_array_equal(z, fgsm_perturb(npo, x, e, eps, clip))


def test_fgsm_does_not_depend_on_batch_size(mnist):
    model = small_model(hidden=(32, 16))
    net = load_backend("numpy")(model, dtype="float64")
    net.set_params(_params(model, 3))
    x = mnist["x_test"][:120].astype(np.float64) / 255
    y = mnist["y_test"][:120].astype(np.int64)
    ref = fgsm_signs(net, x, y, batch_size=1).signs
    for b in (7, 64, 120, 1000):
        np.testing.assert_array_equal(fgsm_signs(net, x, y, batch_size=b).signs, ref)


# ------------------------------------------------------------------------------------------------ eps parsing
@pytest.mark.parametrize("values,expected", [
    (["0.25", "0.5"], [0.25, 0.5]),
    (["0.1,0.25", "0.5"], [0.1, 0.25, 0.5]),
    (["0.05:0.5:0.05"], [0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.35, 0.4, 0.45, 0.5]),
    (["0:0.3:0.1"], [0.0, 0.1, 0.2, 0.3]),
    (["0.1:0.35:0.1"], [0.1, 0.2, 0.3]),  # STOP is included only when the steps land on it
    (["0.25", "0.1:0.3:0.05", "0.25"], [0.25, 0.1, 0.15, 0.2, 0.3]),  # duplicates dropped, order kept
    ([" 0.1 , 0.2 "], [0.1, 0.2]),
])
def test_parse_eps(values, expected):
    got = parse_eps(values)
    assert got == expected
    assert all(repr(v) == repr(round(v, 12)) for v in got)  # 0.15, not 0.15000000000000002


@pytest.mark.parametrize("value", ["abc", "-0.1", "0.1:0.5", "0.5:0.1:0.1", "0.1:0.5:0", "0.1:0.5:-1", "nan", ",",
                                   "0:1000:0.1"])
def test_parse_eps_refuses(value):
    with pytest.raises(UsageProblem):
        parse_eps([value])


def test_bad_eps_is_exit_2_and_writes_nothing(cli, data_dir, runs, tmp_path):
    r = _attack(cli, data_dir, runs["src"], tmp_path / "sets", "--eps", "0.1:x:0.1")
    assert r.exit_code == 2 and r.stderr.startswith("Error: invalid value for --eps") and "Traceback" not in r.stderr
    assert not (tmp_path / "sets").exists()


# ------------------------------------------------------------------------------------------------ round trips
@pytest.fixture(scope="module")
def npz_sets(runs, data_dir, tmp_path_factory):
    from conftest import run_cli

    root = tmp_path_factory.mktemp("sets")
    for clip in ("--clip", "--no-clip"):
        r = run_cli(["attack", str(runs["src"]), "--eps", "0.1,0.25", "--limit", str(LIMIT), clip, "--batch-size", "64",
                     "--data-dir", str(data_dir), "--out", str(root / clip.strip("-"))])
        assert r.exit_code == 0, r.stderr
    return {"clip": root / "clip", "no-clip": root / "no-clip"}


def test_npz_files_hold_no_pickle(npz_sets):
    for folder in npz_sets.values():
        for f in sorted(folder.glob("*.npz")):
            with np.load(f, allow_pickle=False) as npz:
                assert set(npz.files) == {"x", "y", "indices", "manifest"}
                assert all(npz[k].dtype != object for k in npz.files)
                assert npz["x"].dtype == np.float32 and npz["x"].shape == (LIMIT, 784)
                manifest = json.loads(npz["manifest"].tobytes().decode())
                assert manifest["format"] == "advbp-attack-set/1"
                np.testing.assert_array_equal(npz["indices"], np.arange(50_000, 50_000 + LIMIT))
        assert not list(folder.glob(".*.tmp"))  # no temporary files left behind


def test_manifest_records_provenance(npz_sets, runs):
    from advbp_cli.data.download import sha256_of

    m = json.loads((npz_sets["clip"] / "fgsm-eps0.25.json").read_text())
    assert m["eps"] == 0.25 and m["clip"] == [0.0, 1.0] and m["dataset"]["split"] == "validation"
    assert m["dataset"]["name"] == "mnist" and len(m["dataset"]["checksum"]) == 64
    assert m["source"]["checkpoint_sha256"] == sha256_of(runs["src"] / "checkpoint.safetensors")
    assert m["source"]["config"]["model"]["hidden"] == [32, 32]
    assert m["attack"]["model_mode"] == "eval" and m["attack"]["gradient_loss"] == "sigmoid_bce"
    assert m["advbp_version"] and m["provenance"]["git"]
    assert m["sha256"]["data"] == sha256_of(npz_sets["clip"] / "fgsm-eps0.25.npz")
    assert m["quantised"] is False
    # the source's error on the set: the stored images through a plain float64 forward of its weights
    from safetensors.numpy import load_file

    w = load_file(str(runs["src"] / "checkpoint.safetensors"))
    with np.load(npz_sets["clip"] / "fgsm-eps0.25.npz", allow_pickle=False) as f:
        h, y = f["x"].astype(np.float64), f["y"]
    for i in range(3):
        h = h @ w[f"layers.{i}.weight"].astype(np.float64) + w[f"layers.{i}.bias"]
        h = np.maximum(h, 0) if i < 2 else h
    top2 = np.sort(h, axis=1)[:, -2:]
    unsure = int(((top2[:, 1] - top2[:, 0]) < 1e-4 * np.abs(top2).max(axis=1)).sum())  # float32 rounding of the run
    assert abs(m["source_error"] * LIMIT / 100 - (h.argmax(axis=1) != y).sum()) <= unsure
    m_unclipped = json.loads((npz_sets["no-clip"] / "fgsm-eps0.25.json").read_text())
    assert m_unclipped["clip"] is None and m_unclipped["dataset"]["checksum"] == m["dataset"]["checksum"]


def test_sets_are_fgsm_of_the_split(npz_sets, mnist):
    clean = mnist["x_train"][50_000:50_000 + LIMIT].astype(np.float32) / np.float32(255)
    with np.load(npz_sets["no-clip"] / "fgsm-eps0.25.npz", allow_pickle=False) as f:
        d = f["x"] - clean
        np.testing.assert_array_equal(f["y"], mnist["y_train"][50_000:50_000 + LIMIT])
    assert np.allclose(np.abs(d[d != 0]), 0.25, atol=1e-6) and (d != 0).mean() > 0.5
    with np.load(npz_sets["clip"] / "fgsm-eps0.25.npz", allow_pickle=False) as f:
        assert f["x"].min() >= 0 and f["x"].max() <= 1


def test_npz_round_trip_gives_manifest_error(cli, data_dir, npz_sets, runs):
    for folder in npz_sets.values():
        for eps in ("0.1", "0.25"):
            manifest = json.loads((folder / f"fgsm-eps{eps}.json").read_text())
            for arg in (folder / f"fgsm-eps{eps}.npz", folder / f"fgsm-eps{eps}.json"):
                result, _ = _eval_json(cli, data_dir, runs["src"], "--attack-set", arg)
                row = result["attacks"][1]
                assert row["attack"] == "whitebox-set"  # the model is the set's own source
                assert row["error"] == manifest["source_error"]  # exactly
    # the same sets from the white-box path of eval (same gradient, same clipping)
    result, _ = _eval_json(cli, data_dir, runs["src"], "--fgsm-eps", "0.1,0.25")
    wb = [r for r in result["attacks"] if r["attack"] == "whitebox"]
    assert [r["error"] for r in wb] == [json.loads((npz_sets["clip"] / f"fgsm-eps{e}.json").read_text())["source_error"]
                                       for e in ("0.1", "0.25")]


def test_transfer_and_curve(cli, data_dir, npz_sets, runs, tmp_path):
    csv_path, json_path = tmp_path / "curve.csv", tmp_path / "curve.json"
    r = cli(["eval", str(runs["src"]), str(runs["tgt"]), "--attack-set", str(npz_sets["clip"]), "--limit", str(LIMIT),
             "--data-dir", str(data_dir), "--curve-out", str(csv_path)])
    assert r.exit_code == 0, r.stderr
    assert "error (%) against eps" in r.stdout and "0.25" in r.stdout
    lines = csv_path.read_text().splitlines()
    assert lines[0].startswith("model,attack,eps") and len(lines) == 1 + 2 * 3  # clean + 2 sets, per model
    assert {ln.split(",")[1] for ln in lines[1:]} == {"none", "whitebox-set", "transfer"}
    result, _ = _eval_json(cli, data_dir, runs["src"], runs["tgt"], "--attack-set", npz_sets["clip"],
                           "--fgsm-eps", "0.05:0.1:0.05", "--curve-out", json_path)
    assert len(result["models"]) == 2 and len(result["curve"]) == 2 * (1 + 2 + 2)
    saved = json.loads(json_path.read_text())
    assert saved["rows"] == result["curve"]


def test_idx_round_trip(cli, data_dir, runs, tmp_path):
    from advbp_cli.data.mnist import read_idx

    out = tmp_path / "idx"
    r = _attack(cli, data_dir, runs["src"], out, "--eps", "0.25", "--format", "idx")
    assert r.exit_code == 0, r.stderr
    m = json.loads((out / "fgsm-eps0.25.json").read_text())
    assert m["quantised"] is True and "round" in m["quantisation"]
    images = read_idx(out / "fgsm-eps0.25-images-idx3-ubyte")  # the plain MNIST reader
    labels = read_idx(out / "fgsm-eps0.25-labels-idx1-ubyte")
    assert images.shape == (LIMIT, 28, 28) and images.dtype == np.uint8 and labels.shape == (LIMIT,)
    for arg in ("fgsm-eps0.25.json", "fgsm-eps0.25-images-idx3-ubyte"):
        result, _ = _eval_json(cli, data_dir, runs["src"], "--attack-set", out / arg)
        assert result["attacks"][1]["error"] == m["source_error"]


def test_idx_refuses_unclipped(cli, data_dir, runs, tmp_path):
    r = _attack(cli, data_dir, runs["src"], tmp_path / "x", "--eps", "0.25", "--format", "idx", "--no-clip")
    assert r.exit_code == 2 and "--no-clip" in r.stderr
    assert not (tmp_path / "x").exists()


def test_existing_sets_need_overwrite(cli, data_dir, runs, tmp_path):
    out = tmp_path / "s"
    assert _attack(cli, data_dir, runs["src"], out, "--eps", "0.1").exit_code == 0
    r = _attack(cli, data_dir, runs["src"], out, "--eps", "0.1")
    assert r.exit_code == 2 and "--overwrite" in r.stderr
    assert _attack(cli, data_dir, runs["src"], out, "--eps", "0.1", "--overwrite").exit_code == 0


# ------------------------------------------------------------------------------------------------ refusals
def test_mismatched_input_shape_refused(cli, data_dir, npz_sets, runs, tmp_path):
    """A set whose images do not have the model's input size (here cut to 100 features) is refused. (A config
    with a model of another input size than its dataset cannot be built any more: RunConfig refuses it.)"""
    arrays, manifest = read_set_arrays(npz_sets["clip"] / "fgsm-eps0.25.npz")
    arrays["x"] = np.ascontiguousarray(arrays["x"][:, :100])
    bad = forge_set(tmp_path / "sets", "narrow", arrays, manifest)  # every digest fits: the content is refused
    r = cli(["eval", str(runs["src"]), "--attack-set", str(bad), "--limit", "10", "--data-dir", str(data_dir)])
    assert r.exit_code == 2, r.stderr
    assert "784" in r.stderr and "100" in r.stderr and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def test_mismatched_dataset_refused(cli, data_dir, npz_sets, runs, tmp_path):
    arrays, manifest = read_set_arrays(npz_sets["clip"] / "fgsm-eps0.25.npz")
    manifest["dataset"]["name"] = "cifar10"
    bad = forge_set(tmp_path / "sets", "cifar", arrays, manifest)
    r = cli(["eval", str(runs["src"]), "--attack-set", str(bad), "--limit", "10", "--data-dir", str(data_dir)])
    assert r.exit_code == 2 and "'cifar10'" in r.stderr and "'mnist'" in r.stderr


@pytest.mark.parametrize("kind", ["pickled", "not-a-set", "garbage"])
def test_unreadable_sets_refused(cli, data_dir, runs, tmp_path, kind):
    path = tmp_path / f"{kind}.npz"
    if kind == "pickled":
        np.savez(path, x=np.array([{"a": 1}], dtype=object), y=np.zeros(1), indices=np.zeros(1), manifest=np.zeros(1))
    elif kind == "not-a-set":
        np.savez(path, x=np.zeros((2, 784)))
    else:
        path.write_bytes(b"not a zip file")
    r = cli(["eval", str(runs["src"]), "--attack-set", str(path), "--limit", "10", "--data-dir", str(data_dir)])
    assert r.exit_code == 2 and r.stderr.startswith("Error: ") and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("field,value", [("eps", "0.25"), ("files", {"data": "../elsewhere.npz"}), ("dataset", None),
                                         ("clip", [0])])
def test_hostile_manifest_fields_refused(cli, data_dir, npz_sets, runs, tmp_path, field, value):
    arrays, manifest = read_set_arrays(npz_sets["clip"] / "fgsm-eps0.25.npz")
    bad = forge_set(tmp_path / "sets", "bad", arrays, manifest, **{field: value})
    r = cli(["eval", str(runs["src"]), "--attack-set", str(bad), "--limit", "10", "--data-dir", str(data_dir)])
    assert r.exit_code == 2 and f"manifest field {field!r}" in r.stderr and "Traceback" not in r.stderr


def test_warns_when_target_was_trained_on_the_set_images(cli, data_dir, npz_sets, tmp_path):
    model = small_model(hidden=(32, 32))
    ckpt = _checkpoint(tmp_path / "test-mode.safetensors", _params(model), eval_split="test", hidden=[32, 32])
    r = cli(["eval", str(ckpt), "--attack-set", str(npz_sets["clip"] / "fgsm-eps0.25.npz"), "--limit", "10",
             "--data-dir", str(data_dir)])
    assert r.exit_code == 0, r.stderr
    assert f"was trained on {LIMIT} of the {LIMIT} clean images" in r.stderr


def test_empty_names_refused(cli, data_dir, runs, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    r = cli(["attack", str(runs["src"]), "--eps", "0.1", "--limit", "5", "--out", "", "--data-dir", str(data_dir)])
    assert r.exit_code == 2 and "--out" in r.stderr and not list(tmp_path.iterdir())
    r = cli(["eval", str(runs["src"]), "--attack-set", "", "--data-dir", str(data_dir)])
    assert r.exit_code == 2 and "--attack-set" in r.stderr


def test_curve_out_needs_csv_or_json(cli, data_dir, runs, tmp_path):
    r = cli(["eval", str(runs["src"]), "--fgsm-eps", "0.1", "--curve-out", str(tmp_path / "c.txt"),
             "--data-dir", str(data_dir)])
    assert r.exit_code == 2 and ".csv" in r.stderr and not (tmp_path / "c.txt").exists()


# ------------------------------------------------------------------------------------------------ zero gradients
def test_zero_gradient_warning(cli, data_dir, tmp_path):
    model = small_model(hidden=(16, 16))
    zero = {k: np.zeros_like(v) for k, v in fresh(model).items()}
    ckpt = _checkpoint(tmp_path / "zero.safetensors", zero, hidden=[16, 16])
    out = tmp_path / "sets"
    r = cli(["attack", str(ckpt), "--eps", "0.25", "--limit", "50", "--data-dir", str(data_dir), "--out", str(out)])
    assert r.exit_code == 0, r.stderr
    assert "warning: 50 of 50 samples have an exactly zero input gradient" in r.stderr
    m = json.loads((out / "fgsm-eps0.25.json").read_text())
    assert m["zero_gradient_samples"] == 50 and m["zero_gradient_fraction"] == 1.0
    r = cli(["eval", str(ckpt), "--fgsm-eps", "0.25", "--limit", "50", "--data-dir", str(data_dir)])
    assert r.exit_code == 0 and "exactly zero input gradient" in r.stderr


def test_plain_eval_unchanged(cli, data_dir, runs):
    result, r = _eval_json(cli, data_dir, runs["src"])
    assert "attacks" not in result and result["split"] == "validation" and result["n"] == LIMIT
    assert len(result["hidden_zero_percent"]) == 2


# ------------------------------------------------------------------------------------------------ CIFAR-10
CIFAR_LIMIT = 64


@pytest.fixture(scope="module")
def cifar_sets(cifar_runs, cifar_data_dir, tmp_path_factory):
    from conftest import run_cli

    root = tmp_path_factory.mktemp("cifar-sets")
    for name in ("conv", "mlp"):
        r = run_cli(["attack", str(cifar_runs[name]), "--eps", "0.1,0.25", "--limit", str(CIFAR_LIMIT),
                     "--data-dir", str(cifar_data_dir), "--out", str(root / name)])
        assert r.exit_code == 0, r.stderr
        assert "image of the pixel range [0, 1] under simple preprocessing" in r.stderr  # the rule is said
    return {"conv": root / "conv", "mlp": root / "mlp"}


def _simple_fit(cifar_data_dir):
    from advbp_cli.data import preprocess as pp
    from advbp_cli.data.splits import load_raw

    raw = load_raw("cifar10", cifar_data_dir, download=False)
    return raw, pp.Simple.fit(raw["x_train"])  # the runs are test-mode: fitted on all 50 000 training images


def test_cifar_sets_record_dataset_preprocessing_and_clip_to_the_image_of_the_pixel_box(cifar_sets, cifar_data_dir):
    raw, fit = _simple_fit(cifar_data_dir)
    lo, hi = -fit.mean / fit.std, (255 - fit.mean) / fit.std
    assert lo < -1.5 and hi > 1.5  # not [0, 1]: that would clip away most of the data
    clean = fit.apply(raw["x_train"][40_000:40_000 + CIFAR_LIMIT], "float32")
    for folder in cifar_sets.values():
        for eps in (0.1, 0.25):
            m = json.loads((folder / f"fgsm-eps{eps}.json").read_text())
            assert m["dataset"]["name"] == "cifar10" and m["dataset"]["split"] == "validation"
            assert m["dataset"]["split_definition"].startswith("training images 40000..49999")
            assert set(m["dataset"]["files_sha256"]) == {f"data_batch_{i}.bin" for i in range(1, 6)} | {"test_batch.bin"}
            assert m["preprocess"]["kind"] == "simple"
            assert m["preprocess"]["mean"] == fit.mean and m["preprocess"]["std"] == fit.std
            assert m["preprocess_identity"] == {"kind": "simple", "mean": fit.mean, "std": fit.std}
            assert m["clip"] == pytest.approx([lo, hi], rel=1e-12) and "simple" in m["attack"]["clip_rule"]
            assert m["image_shape"] == [3, 32, 32] and m["input_shape"] == [3072]
            with np.load(folder / f"fgsm-eps{eps}.npz", allow_pickle=False) as npz:
                x, idx = npz["x"], npz["indices"]
            np.testing.assert_array_equal(idx, np.arange(40_000, 40_000 + CIFAR_LIMIT))
            assert x.shape == (CIFAR_LIMIT, 3072) and x.dtype == np.float32
            assert x.min() >= np.float32(lo) and x.max() <= np.float32(hi)
            d = np.abs(x.astype(np.float64) - clean)
            assert d.max() <= eps + 1e-5 and (d > eps / 2).mean() > 0.5  # perturbed in the network's input units
            assert ((x == np.float32(lo)) | (x == np.float32(hi))).any()  # and clipping did happen somewhere
    conv = json.loads((cifar_sets["conv"] / "fgsm-eps0.1.json").read_text())
    assert "dropout is off" in conv["attack"]["model_mode_note"]  # an adversarial + dropout preset


def test_cifar_sets_round_trip_through_eval(cli, cifar_sets, cifar_runs, cifar_data_dir):
    for name in ("conv", "mlp"):
        r = cli(["eval", str(cifar_runs[name]), "--attack-set", str(cifar_sets[name]), "--fgsm-eps", "0.1",
                 "--split", "validation", "--limit", str(CIFAR_LIMIT), "--data-dir", str(cifar_data_dir), "--json"])
        assert r.exit_code == 0, r.stderr
        rows = json.loads(r.stdout)["attacks"]
        for row in rows:
            if row["attack"] == "whitebox-set":
                assert row["error"] == row["manifest_source_error"]
        (wb,) = [row for row in rows if row["attack"] == "whitebox"]
        m = json.loads((cifar_sets[name] / "fgsm-eps0.1.json").read_text())
        assert wb["clip"] == m["clip"]  # the same rule for white-box FGSM as for stored sets
        stored = [row for row in rows if row["attack"] == "whitebox-set" and row["eps"] == 0.1]
        assert stored and stored[0]["error"] == wb["error"]  # same images, same gradient, same clip


def test_eval_refuses_sets_of_another_dataset_or_preprocessing(cli, cifar_sets, cifar_runs, runs, cifar_data_dir):
    r = cli(["eval", str(cifar_runs["mlp01"]), "--attack-set", str(cifar_sets["mlp"]), "--data-dir",
             str(cifar_data_dir)])
    assert r.exit_code == 2 and "Traceback" not in r.stderr, r.stderr
    assert r.stderr.startswith("Error: attack set") and "holds simple inputs" in r.stderr and "scale01" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    r = cli(["eval", str(runs["src"]), "--attack-set", str(cifar_sets["conv"]), "--data-dir", str(cifar_data_dir)])
    assert r.exit_code == 2 and "made from data set 'cifar10'" in r.stderr


def test_same_preprocessing_compares_fitted_parameters(cifar_sets):
    from advbp_cli.attack_sets import check_compatible, load_set, same_preprocessing

    aset = load_set(cifar_sets["mlp"] / "fgsm-eps0.1.npz")
    p = aset.manifest["preprocess"]
    cfg = RunConfig.model_validate(aset.manifest["source"]["config"])
    check_compatible(aset, cfg, "model", p)
    other = dict(p, mean=p["mean"] + 0.5)  # e.g. fitted on the 40 000 images of a validation-mode run
    assert not same_preprocessing(p, other) and same_preprocessing(None, {"kind": "scale01"})
    assert not same_preprocessing({"kind": "zca", "key": "a", "epsilon": 0.01}, {"kind": "zca", "key": "b", "epsilon": 0.01})
    with pytest.raises(UsageProblem, match="fitted differently"):
        check_compatible(aset, cfg, "model", other)


def test_clip_rule_per_preprocessing():
    from advbp_cli.attack import clip_rule
    from advbp_cli.data import preprocess as pp

    assert clip_rule({"kind": "scale01"}, None).range == (0.0, 1.0)
    fit = pp.Simple(100.0, 50.0, 10)
    rule = clip_rule(fit.describe(), None)
    ends = fit.apply(np.array([[0, 255]], dtype=np.uint8), "float64")[0]
    assert rule.range == pytest.approx(tuple(ends), rel=1e-15)  # exactly the image of pixels 0 and 255
    assert clip_rule(fit.describe(), False).range is None
    zca = {"kind": "zca", "epsilon": 0.01, "key": "k"}
    assert clip_rule(zca, None).range is None and "not clipped" in clip_rule(zca, None).rule
    assert clip_rule(zca, False).range is None
    with pytest.raises(UsageProblem, match="--clip"):
        clip_rule(zca, True)


def _zca_checkpoint(path: Path) -> Path:
    from advbp_cli.checkpoint import save_checkpoint
    from advbp_cli.networks import fresh_params

    cfg = RunConfig.model_validate({"model": {"hidden": [8]}, "data": {"dataset": "cifar10", "preprocess": "zca"},
                                    "runtime": {"backend": "numpy"}})
    save_checkpoint(path, fresh_params(cfg), cfg.model_dump(mode="json"), epoch=1)
    return path


@pytest.mark.parametrize("args", [
    ["attack", "CKPT", "--eps", "0.1", "--clip", "--out", "OUT"],
    ["attack", "CKPT", "--eps", "0.1", "--format", "idx", "--out", "OUT"],
    ["eval", "CKPT", "--fgsm-eps", "0.1", "--fgsm-clip"],
])
def test_cifar_refusals_are_exit_2_before_any_work(cli, args, tmp_path):
    ckpt = _zca_checkpoint(tmp_path / "zca.safetensors")
    args = [str(ckpt) if a == "CKPT" else str(tmp_path / "out") if a == "OUT" else a for a in args]
    # an empty data folder: the refusal must come before any data is looked for (or a ZCA fit started)
    r = cli([*args, "--data-dir", str(tmp_path / "nodata"), "--no-download"])
    assert r.exit_code == 2 and "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert ("idx" in r.stderr and "cifar10" in r.stderr) or "zca inputs cannot be clipped" in r.stderr
    assert not (tmp_path / "out").exists() and not (tmp_path / "nodata").exists()


# ------------------------------------------------------------------------------------------- --model-mode train
def test_train_mode_input_gradient_agrees_between_backends_and_uses_dropout():
    """With a dropout mask source both backends compute the same dJ/dx (float64), and it differs from eval mode."""
    from advbp_cli.attack import ATTACK_MASK_EPOCH
    from advbp_cli.backends import load_backend
    from advbp_cli.config import RunConfig
    from advbp_cli.networks import fresh_params
    from advbp_cli.rng import DropoutMasks

    cfg = RunConfig.model_validate({"model": {"hidden": [32, 32]},
                                    "train": {"dropout_input": 0.1, "dropout_fc": 0.5}, "runtime": {"seed": 3}})
    params = {k: v * 30 for k, v in fresh_params(cfg).items()}
    rng = np.random.default_rng(0)
    x, y = rng.random((20, 784)), rng.integers(0, 10, 20)
    es = {}
    for name in ("numpy", "torch"):
        net = load_backend(name)(cfg.model, dtype="float64", device="cpu")
        net.set_params(params)
        xd, yd = net.asarray(x), net.asarray(y, labels=True)
        es[name] = net.sample_input_gradients(xd, yd, masks=DropoutMasks(3, ATTACK_MASK_EPOCH), k=2, step=cfg.train)
        es[name + "-eval"] = net.sample_input_gradients(xd, yd)
    np.testing.assert_allclose(es["numpy"], es["torch"], rtol=1e-9, atol=1e-15)
    np.testing.assert_allclose(es["numpy-eval"], es["torch-eval"], rtol=1e-9, atol=1e-15)
    assert (np.sign(es["numpy"]) != np.sign(es["numpy-eval"])).mean() > 0.05  # dropout really was active


def test_attack_in_train_mode_records_it_and_differs_from_eval_mode(cli, data_dir, cifar_runs, tmp_path):
    run = cifar_runs["conv"]
    sets = {}
    for mode in ("eval", "train"):
        out = tmp_path / mode
        r = cli(["attack", str(run), "--eps", "0.03", "--limit", "64", "--batch-size", "32", "--model-mode", mode,
                 "--out", str(out), "--data-dir", str(data_dir), "--backend", "numpy"])
        assert r.exit_code == 0, r.stderr
        manifest = json.loads((out / "fgsm-eps0.03.json").read_text())
        assert manifest["attack"]["model_mode"] == mode
        with np.load(out / "fgsm-eps0.03.npz", allow_pickle=False) as f:
            sets[mode] = f["x"]
    assert not np.array_equal(sets["eval"], sets["train"])
