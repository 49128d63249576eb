"""Issue 14: the iterative attacks BIM and PGD under the L-inf ball, against independent computations.

- every iterate (seen through Backend.linf_attack's observer) lies in [x - eps, x + eps] and in the pixel box;
- eps = 0 is the identity; BIM with K = 1, a = eps is FGSM bit for bit (library and `advbp attack`);
- restarts keep, per sample, the worst case of the restarts run one by one (misclassified first, then the loss);
- the iterates of numpy, torch and the tests' wrapped backend agree in float64, and with torch autograd;
- FGSM and PGD sets do not depend on --batch-size; a PGD set is rebuilt from its manifest alone, byte for byte;
- bad options (negative steps, step size 0/nan, restarts 0, pgd without steps, ...) are one line, exit 2.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from advbp_cli.attack import fgsm_signs, perturb
from advbp_cli.attack_methods import METHODS, AttackParams, linf_iterates, resolve_attacks, run_attack
from advbp_cli.backends import load_backend
from conftest import fresh, run_cli, small_model

N = 64  # images per library test
LIMIT = 120  # images per CLI set


def _net(backend: str, dtype: str = "float64", hidden=(32, 16), seed: int = 1, output: str = "sigmoid_bce"):
    """A network with weights large enough that its gradients are far from trivial (as tests/test_attack.py)."""
    model = small_model(hidden=hidden, output=output)
    rng = np.random.default_rng(seed)
    params = {k: v * 20 + (rng.normal(0, 0.05, v.shape) if v.ndim == 2 else 0) for k, v in fresh(model, seed).items()}
    net = load_backend(backend)(model, dtype=dtype, device="cpu")
    net.set_params(params)
    return net, params


@pytest.fixture(scope="module")
def xy(mnist):
    return mnist["x_test"][:N].astype(np.float64) / 255, mnist["y_test"][:N].astype(np.int64)


def _observed(net, x, y, params: AttackParams, eps, clip, restart):
    """linf_iterates' last iterate and every iterate before it (copies: the observer sees a view)."""
    seen = []
    z = linf_iterates(net, x, y, eps, params.step_size_for(eps), params, clip, restart,
                      observe=lambda t, zt: seen.append((t, np.array(zt))))
    return z, seen


# ------------------------------------------------------------------------------------ projection and clipping
@pytest.mark.parametrize("backend", ["numpy", "torch"])
@pytest.mark.parametrize("clip", [None, (0.0, 1.0), (-0.2, 1.25)])  # the last: a box like `simple` preprocessing's
@pytest.mark.parametrize("method", ["bim", "pgd"])
def test_every_iterate_is_in_the_eps_ball_and_the_box(xy, backend, clip, method):
    x, y = xy
    net, _ = _net(backend)
    eps, steps = 0.3, 6
    p = AttackParams(method, steps=steps, step_size=0.12, restarts=1, seed=3, batch_size=N)  # one batch: one observer
    z, seen = _observed(net, x, y, p, eps, clip, 0 if method == "pgd" else None)
    assert [t for t, _ in seen] == list(range(steps))
    lo, hi = x - eps, x + eps  # computed here, in numpy, the same float64 operations as the bounds must be
    if clip is not None:
        lo, hi = np.clip(lo, *clip), np.clip(hi, *clip)
    u = np.finfo(np.float64).eps / 2
    moved, at_box = 0, 0
    for _, zt in seen:
        assert (zt >= lo).all() and (zt <= hi).all()
        if clip is not None:
            assert (zt >= clip[0]).all() and (zt <= clip[1]).all()
        # within eps of x up to the rounding of x + eps and of the difference: |z - x| <= eps + 3 (|x| + eps) u
        assert (np.abs(zt - x) <= eps + 3 * (np.abs(x) + eps) * u).all()
        moved = max(moved, int((zt != x).sum()))
        at_box = max(at_box, 0 if clip is None else int(((zt == clip[0]) | (zt == clip[1])).sum()))
    np.testing.assert_array_equal(z, seen[-1][1])
    assert moved > 0.5 * x.size  # the iterates really move
    assert clip is None or at_box > 0.1 * x.size  # and the box binds


@pytest.mark.parametrize("method", ["bim", "pgd"])
def test_eps_zero_is_the_identity(xy, method):
    x, y = xy
    net, _ = _net("numpy")
    for clip in (None, (0.0, 1.0)):
        p = AttackParams(method, steps=5, restarts=2, seed=0, batch_size=30)
        (adv,) = run_attack(p, net, x, y, [0.0], clip).sets
        np.testing.assert_array_equal(adv.z, x)


@pytest.mark.parametrize("backend", ["numpy", "torch"])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("clip", [None, (0.0, 1.0)])
def test_one_step_of_size_eps_is_fgsm_bit_for_bit(xy, backend, dtype, clip):
    x, y = xy
    x = x.astype(dtype)
    net, _ = _net(backend, dtype)
    signs = fgsm_signs(net, x, y, 16).signs
    for eps in (0.05, 0.1, 0.3):
        (adv,) = run_attack(AttackParams("bim", steps=1, step_size=eps, batch_size=16), net, x, y, [eps], clip).sets
        assert adv.z.dtype == x.dtype
        np.testing.assert_array_equal(adv.z, perturb(x, signs, eps, clip))
        # a step larger than eps is projected back onto the ball: the same set (where sign(e) != 0)
        (big,) = run_attack(AttackParams("bim", steps=1, step_size=3 * eps, batch_size=16), net, x, y, [eps],
                            clip).sets
        np.testing.assert_array_equal(big.z, adv.z)


# ------------------------------------------------------------------------------------------------- restarts
def _plain_forward(params: dict, z: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(misclassified, sigmoid BCE loss) per sample, from the weights, in float64 numpy: an independent judge."""
    n_layers = len(params) // 2
    h = z
    for i in range(n_layers):
        h = h @ params[f"layers.{i}.weight"] + params[f"layers.{i}.bias"]
        if i < n_layers - 1:
            h = np.maximum(h, 0)
    t = np.eye(10)[y]
    loss = (np.logaddexp(0, h) - t * h).sum(axis=1)
    return h.argmax(axis=1) != y, loss


def test_restarts_keep_each_samples_worst_case(xy):
    x, y = xy
    net, params = _net("numpy")
    eps, restarts = 0.08, 5
    p = AttackParams("pgd", steps=3, step_size=0.02, restarts=restarts, seed=11, batch_size=20)
    (adv,) = run_attack(p, net, x, y, [eps], (0.0, 1.0)).sets
    runs = [linf_iterates(net, x, y, eps, 0.02, p, (0.0, 1.0), r) for r in range(restarts)]  # one by one
    judged = [_plain_forward(params, z, y) for z in runs]
    wrong = np.stack([w for w, _ in judged])  # (R, n)
    loss = np.stack([lo for _, lo in judged])
    kept_wrong, kept_loss = _plain_forward(params, adv.z, y)
    np.testing.assert_array_equal(kept_wrong, wrong.any(axis=0))  # misclassified if any restart is
    for i in range(len(y)):
        among = loss[wrong[:, i] == kept_wrong[i], i]  # the highest loss among the restarts of the kept kind
        assert kept_loss[i] == pytest.approx(among.max(), rel=1e-12)
        assert any(np.array_equal(adv.z[i], z[i]) for z in runs)  # a real restart's iterate, not a mix
    errors = adv.per_set["error_after_restarts"]
    assert len(errors) == restarts and errors == sorted(errors)  # restarts never lower the error
    assert errors[-1] == pytest.approx(100 * kept_wrong.mean())
    assert errors[0] == pytest.approx(100 * wrong[0].mean())
    assert len({r.tobytes() for r in runs}) == restarts  # the restarts start in different places


# ---------------------------------------------------------------------------------------- backends, autograd
def _autograd_pgd(params: dict, x, y, eps, a, steps, clip, start):
    """PGD written directly in torch autograd (float64), from the same random start."""
    import torch

    n_layers = len(params) // 2
    tp = [(torch.tensor(params[f"layers.{i}.weight"]), torch.tensor(params[f"layers.{i}.bias"]))
          for i in range(n_layers)]
    tx = torch.tensor(x)
    lo, hi = tx - eps, tx + eps
    if clip is not None:
        lo, hi = lo.clamp(*clip), hi.clamp(*clip)
    z = torch.minimum(torch.maximum(tx + torch.tensor(start), lo), hi)
    t = torch.nn.functional.one_hot(torch.tensor(y), 10).double()
    out = []
    for _ in range(steps):
        z = z.detach().requires_grad_(True)
        h = z
        for i, (w, b) in enumerate(tp):
            h = h @ w + b
            h = torch.relu(h) if i < n_layers - 1 else h
        torch.nn.functional.binary_cross_entropy_with_logits(h, t, reduction="sum").backward()
        z = torch.minimum(torch.maximum(z.detach() + a * z.grad.sign(), lo), hi)
        out.append(z.numpy())
    return out


@pytest.mark.parametrize("clip", [None, (0.0, 1.0)])
def test_iterates_agree_across_backends_and_with_autograd_in_float64(xy, other_backend, clip):
    from advbp_cli.rng import RandomStarts

    x, y = xy
    eps, a, steps = 0.1, 0.03, 8
    p = AttackParams("pgd", steps=steps, step_size=a, restarts=1, seed=5, batch_size=N)
    iterates = {}
    for name in ("numpy", other_backend):
        net, params = _net(name)
        _, seen = _observed(net, x, y, p, eps, clip, 0)
        iterates[name] = [z for _, z in seen]
    start = RandomStarts(5, 0).next_rows(N, x.shape[1], eps)
    reference = _autograd_pgd(params, x, y, eps, a, steps, clip, start)
    for t in range(steps):
        np.testing.assert_array_equal(iterates[other_backend][t], iterates["numpy"][t])
        np.testing.assert_array_equal(iterates["numpy"][t], reference[t])


def test_random_starts_do_not_depend_on_how_rows_are_drawn():
    from advbp_cli.rng import RandomStarts

    whole = RandomStarts(7, 2).next_rows(100, 30, 0.3)
    parts = RandomStarts(7, 2)
    pieces = np.concatenate([parts.next_rows(k, 30, 0.3) for k in (1, 6, 64, 29)])
    np.testing.assert_array_equal(whole, pieces)
    assert whole.min() >= -0.3 and whole.max() < 0.3 and abs(whole.mean()) < 0.02
    assert not np.array_equal(whole, RandomStarts(7, 3).next_rows(100, 30, 0.3))  # another restart
    assert not np.array_equal(whole, RandomStarts(8, 2).next_rows(100, 30, 0.3))  # another seed


# ------------------------------------------------------------------------------------------------- the CLI
@pytest.fixture(scope="module")
def source(tmp_path_factory, data_dir) -> Path:
    out = tmp_path_factory.mktemp("iter-src") / "run"
    r = run_cli(["train", "--hidden", "32,32", "--epochs", "1", "--train-limit", "2000", "--eval-limit", "100",
                 "--eval-split", "validation", "--backend", "numpy", "--lr", "0.2", "--init-std", "0.1",
                 "--no-eval-train-error", "--data-dir", str(data_dir), "--no-download", "--out", str(out)])
    assert r.exit_code == 0, r.stderr
    return out


def _attack(data_dir, src, out, *extra, eps="0.05,0.2"):
    r = run_cli(["attack", str(src), "--eps", eps, "--limit", str(LIMIT), "--data-dir", str(data_dir),
                 "--no-download", "--out", str(out), *extra])
    assert r.exit_code == 0, r.stderr
    return out


def _x(folder: Path, name: str) -> np.ndarray:
    with np.load(folder / f"{name}.npz", allow_pickle=False) as f:
        return f["x"]


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_sets_do_not_depend_on_the_batch_size(source, data_dir, tmp_path, dtype):
    for method, extra in (("fgsm", []), ("pgd", ["--steps", "4", "--restarts", "2", "--seed", "9"])):
        sets = {b: _attack(data_dir, source, tmp_path / f"{method}-{b}", "--method", method, "--batch-size", str(b),
                           "--dtype", dtype, *extra) for b in (1, 7, 1000)}
        for eps in ("0.05", "0.2"):
            xs = [_x(folder, f"{method}-eps{eps}") for folder in sets.values()]
            assert all(x.tobytes() == xs[0].tobytes() for x in xs[1:]), (method, eps, dtype)


def test_bim_with_one_step_of_eps_makes_fgsm_sets(source, data_dir, tmp_path):
    fgsm = _attack(data_dir, source, tmp_path / "fgsm")
    bim = _attack(data_dir, source, tmp_path / "bim", "--method", "bim", "--steps", "1", "--step-size", "0.2")
    for eps in ("0.05", "0.2"):
        assert _x(bim, f"bim-eps{eps}").tobytes() == _x(fgsm, f"fgsm-eps{eps}").tobytes()
    m = json.loads((bim / "bim-eps0.05.json").read_text())
    assert m["attack"]["method"] == "bim" and m["attack"]["steps"] == 1 and m["step_size"] == 0.2


def _rebuild_args(manifest: dict, out: Path, data_dir: Path) -> list[str]:
    """An `advbp attack` command made from a set's manifest alone."""
    a, ds, src = manifest["attack"], manifest["dataset"], manifest["source"]
    args = ["attack", src["argument"], "--eps", repr(manifest["eps"]), "--method", a["method"],
            "--split", ds["split"], "--loss", a["gradient_loss"], "--batch-size", str(a["batch_size"]),
            "--model-mode", a["model_mode"], "--dtype", src["dtype"], "--backend", src["backend"],
            "--clip" if manifest["clip"] else "--no-clip", "--data-dir", str(data_dir), "--out", str(out)]
    if ds["limit"] is not None:
        args += ["--limit", str(ds["limit"])]
    for key, option in (("steps", "--steps"), ("step_size", "--step-size"), ("restarts", "--restarts"),
                        ("seed", "--seed")):
        if a.get(key) is not None:
            args += [option, repr(a[key])]
    return args


def test_a_pgd_set_is_rebuilt_from_its_manifest_alone(source, data_dir, tmp_path):
    first = _attack(data_dir, source, tmp_path / "first", "--method", "pgd", "--steps", "5", "--restarts", "3",
                    "--seed", "21", "--batch-size", "50", eps="0.1,0.15")
    manifest = json.loads((first / "pgd-eps0.15.json").read_text())
    assert manifest["attack"]["seed"] == 21 and manifest["attack"]["restarts"] == 3
    assert manifest["step_size"] == pytest.approx(2.5 * 0.15 / 5) and manifest["attack"]["step_size"] is None
    assert manifest["error_after_restarts"] == sorted(manifest["error_after_restarts"])
    assert manifest["error_after_restarts"][-1] == manifest["source_error"]
    again = tmp_path / "again"
    r = run_cli(_rebuild_args(manifest, again, data_dir))
    assert r.exit_code == 0, r.stderr
    for key in ("x", "y", "indices"):
        with np.load(first / "pgd-eps0.15.npz") as a, np.load(again / "pgd-eps0.15.npz") as b:
            assert a[key].tobytes() == b[key].tobytes(), key
    rebuilt = json.loads((again / "pgd-eps0.15.json").read_text())
    assert rebuilt["source_error"] == manifest["source_error"]
    other = _attack(data_dir, source, tmp_path / "seed22", "--method", "pgd", "--steps", "5", "--restarts", "3",
                    "--seed", "22", "--batch-size", "50", eps="0.15")
    assert _x(other, "pgd-eps0.15").tobytes() != _x(first, "pgd-eps0.15").tobytes()  # the seed matters


def test_eval_draws_fgsm_and_pgd_curves_side_by_side(source, data_dir, tmp_path):
    curve = tmp_path / "curve.json"
    r = run_cli(["eval", str(source), str(source / "checkpoint.safetensors"), "--eps", "0.1,0.2", "--method",
                 "fgsm,pgd", "--steps", "5", "--restarts", "2", "--limit", str(LIMIT), "--data-dir", str(data_dir),
                 "--no-download", "--curve-out", str(curve)])
    assert r.exit_code == 0, r.stderr
    assert "white-box FGSM" in r.stdout and "white-box PGD (5 steps, 2 restarts)" in r.stdout
    rows = [row for row in json.loads(curve.read_text())["rows"] if row["attack"] == "whitebox"]
    assert sorted({(row["method"], row["eps"]) for row in rows}) == [("fgsm", 0.1), ("fgsm", 0.2), ("pgd", 0.1),
                                                                     ("pgd", 0.2)]
    sets = _attack(data_dir, source, tmp_path / "pgd", "--method", "pgd", "--steps", "5", "--restarts", "2",
                   eps="0.1,0.2")
    for row in rows:
        if row["method"] == "pgd":  # the white-box PGD of eval is the set `advbp attack` writes
            assert row["error"] == json.loads((sets / f"pgd-eps{row['eps']}.json").read_text())["source_error"]
            assert row["error_after_restarts"][-1] == row["error"] and row["steps"] == 5 and row["restarts"] == 2
    fgsm = {row["eps"]: row["error"] for row in rows if row["method"] == "fgsm"}
    pgd = {row["eps"]: row["error"] for row in rows if row["method"] == "pgd"}
    assert all(pgd[e] >= fgsm[e] - 5 for e in fgsm)  # the stronger attack (not a strict law: a sanity bound)
    csv_path = tmp_path / "curve.csv"
    r = run_cli(["eval", str(source), "--fgsm-eps", "0.1", "--limit", "30", "--data-dir", str(data_dir),
                 "--curve-out", str(csv_path)])  # the older option names still work
    assert r.exit_code == 0, r.stderr
    header, *lines = csv_path.read_text().splitlines()
    assert header.split(",")[:3] == ["model", "attack", "eps"] and "method" in header.split(",")
    assert lines[1].split(",")[header.split(",").index("method")] == "fgsm"


def test_eval_attacks_with_another_loss_as_attack_does(source, data_dir, tmp_path):
    curve = tmp_path / "curve.csv"
    r = run_cli(["eval", str(source), "--eps", "0.15", "--method", "fgsm,pgd", "--steps", "4", "--restarts", "2",
                 "--loss", "softmax_ce", "--limit", str(LIMIT), "--data-dir", str(data_dir), "--no-download",
                 "--curve-out", str(curve)])
    assert r.exit_code == 0, r.stderr
    header, *lines = [line.split(",") for line in curve.read_text().splitlines()]
    rows = [dict(zip(header, line)) for line in lines if line[1] == "whitebox"]
    assert {row["gradient_loss"] for row in rows} == {"softmax_ce"} and len(rows) == 2
    for row in rows:  # the same sets `advbp attack --loss softmax_ce` writes, so the same source error
        extra = ["--steps", "4", "--restarts", "2"] if row["method"] == "pgd" else []
        sets = _attack(data_dir, source, tmp_path / row["method"], "--method", row["method"], "--loss", "softmax_ce",
                       *extra, eps="0.15")
        manifest = json.loads((sets / f"{row['method']}-eps0.15.json").read_text())
        assert manifest["attack"]["gradient_loss"] == "softmax_ce"
        assert float(row["error"]) == pytest.approx(manifest["source_error"], abs=5e-5)  # the CSV's 4 decimals
    default = run_cli(["eval", str(source), "--eps", "0.15", "--method", "pgd", "--steps", "4", "--restarts", "2",
                       "--limit", str(LIMIT), "--data-dir", str(data_dir), "--no-download", "--json"])
    assert default.exit_code == 0, default.stderr
    (pgd,) = [row for row in json.loads(default.stdout)["attacks"] if row["attack"] == "whitebox"]
    assert pgd["gradient_loss"] == "sigmoid_bce"  # the run's own objective when --loss is left out


def test_eval_attacks_in_the_dtype_asked_for(source, data_dir, tmp_path):
    r = run_cli(["eval", str(source), "--eps", "0.15", "--method", "pgd", "--steps", "3", "--dtype", "float64",
                 "--limit", str(LIMIT), "--data-dir", str(data_dir), "--no-download", "--json"])
    assert r.exit_code == 0, r.stderr
    result = json.loads(r.stdout)
    (pgd,) = [row for row in result["attacks"] if row["attack"] == "whitebox"]
    assert result["dtype"] == pgd["dtype"] == "float64"
    sets = _attack(data_dir, source, tmp_path / "f64", "--method", "pgd", "--steps", "3", "--dtype", "float64",
                   eps="0.15")
    assert pgd["error"] == json.loads((sets / "pgd-eps0.15.json").read_text())["source_error"]


def test_registry_gives_names_choices_and_manifest_method():
    assert list(METHODS) == ["fgsm", "bim", "pgd"]
    assert [METHODS[m].set_name(0.25) for m in METHODS] == ["fgsm-eps0.25", "bim-eps0.25", "pgd-eps0.25"]
    from advbp_cli.commands.attack import attack_cmd

    (method,) = [p for p in attack_cmd.params if p.name == "method"]
    assert list(method.type.choices) == list(METHODS)
    (pgd,) = resolve_attacks(["pgd"], steps=10)
    assert (pgd.restarts, pgd.seed, pgd.step_size_for(0.2)) == (1, 0, pytest.approx(0.05))
    assert METHODS["pgd"].describe(pgd)["method"] == "pgd"


# -------------------------------------------------------------------------------------------- bad options
@pytest.mark.parametrize("extra,needles", [
    (["--method", "pgd", "--steps", "-1"], ["--steps"]),
    (["--method", "pgd", "--steps", "0"], ["--steps"]),
    (["--method", "bim", "--steps", "3", "--step-size", "0"], ["--step-size"]),
    (["--method", "bim", "--steps", "3", "--step-size", "nan"], ["--step-size"]),
    (["--method", "bim", "--steps", "3", "--step-size", "-0.1"], ["--step-size"]),
    (["--method", "bim", "--steps", "3", "--step-size", "inf"], ["--step-size"]),
    (["--method", "pgd", "--steps", "3", "--restarts", "0"], ["--restarts"]),
    (["--method", "pgd"], ["--steps", "pgd"]),
    (["--method", "bim"], ["--steps", "bim"]),
    (["--steps", "3"], ["--steps", "fgsm"]),
    (["--step-size", "0.1"], ["--step-size", "fgsm"]),
    (["--method", "bim", "--steps", "3", "--restarts", "2"], ["--restarts", "pgd"]),
    (["--method", "bim", "--steps", "3", "--seed", "2"], ["--seed", "pgd"]),
    (["--method", "pgd", "--steps", "3", "--seed", "-1"], ["--seed"]),
    (["--method", "cw"], ["--method", "fgsm"]),
    (["--method", "pgd", "--steps", "2", "--step-size", "1e39", "--dtype", "float32"], ["--step-size", "overflow"]),
    (["--method", "pgd", "--steps", "2", "--eps", "1e308", "--no-clip", "--dtype", "float64"], ["--eps", "overflow"]),
])
def test_bad_attack_options_are_one_line(source, data_dir, tmp_path, cli, extra, needles):
    out = tmp_path / "sets"
    eps = [] if "--eps" in extra else ["--eps", "0.1"]
    r = cli(["attack", str(source), *eps, "--limit", "10", "--data-dir", str(data_dir), "--out", str(out), *extra])
    lines = r.stderr.strip().splitlines()
    assert r.exit_code == 2 and len(lines) == 1 and lines[0].startswith("Error: "), r.stderr
    assert "Traceback" not in r.stderr and all(n in lines[0] for n in needles), lines[0]
    assert not out.exists()


@pytest.mark.parametrize("extra,needles", [
    (["--eps", "0.1", "--method", "pgd"], ["--steps"]),
    (["--eps", "0.1", "--method", "fgsm,nope"], ["--method", "nope"]),
    (["--fgsm-eps", "0.1", "--method", "pgd", "--steps", "2"], ["--fgsm-eps", "--eps"]),
    (["--method", "pgd", "--steps", "2"], ["--eps"]),
    (["--eps", "0.1", "--restarts", "2"], ["--restarts", "pgd"]),
    (["--eps", "0.1", "--clip", "--fgsm-no-clip"], ["--clip"]),
    (["--eps", "0.1", "--method", "pgd", "--steps", "2", "--restarts", "0"], ["--restarts"]),
    (["--loss", "softmax_ce"], ["--loss", "--eps"]),
    (["--eps", "0.1", "--loss", "hinge"], ["--loss"]),
])
def test_bad_eval_attack_options_are_one_line(source, data_dir, cli, extra, needles):
    r = cli(["eval", str(source), "--limit", "10", "--data-dir", str(data_dir), *extra])
    lines = r.stderr.strip().splitlines()
    assert r.exit_code == 2 and len(lines) == 1 and lines[0].startswith("Error: "), r.stderr
    assert "Traceback" not in r.stderr and all(n in lines[0] for n in needles), lines[0]


@pytest.mark.parametrize("backend", ["numpy", "torch"])
def test_a_non_finite_gradient_makes_no_iterative_set(source, data_dir, tmp_path, cli, backend):
    """torch's sign(NaN) is 0, so a NaN gradient would leave z unchanged silently: it is counted instead."""
    from advbp_cli.checkpoint import read_checkpoint, save_checkpoint

    tensors, meta = read_checkpoint(source / "checkpoint.safetensors")
    huge = {k: (np.full_like(v, 1e30) if k.endswith("weight") else v) for k, v in tensors.items()}  # finite
    ckpt = tmp_path / "huge.safetensors"
    save_checkpoint(ckpt, huge, json.loads(meta["config"]), 1)
    for method in ("bim", "pgd"):
        out = tmp_path / f"sets-{method}"
        r = cli(["attack", str(ckpt), "--eps", "0.1", "--method", method, "--steps", "2", "--limit", "10",
                 "--backend", backend, "--data-dir", str(data_dir), "--out", str(out)])
        lines = r.stderr.strip().splitlines()
        assert r.exit_code == 2 and len(lines) == 1 and "NaN or Inf" in lines[0], r.stderr
        assert not out.exists()


def test_train_mode_iterations_draw_their_own_masks_and_one_step_is_fgsm(data_dir, tmp_path):
    """--model-mode train: iteration t of restart r uses the masks under epoch key ATTACK_MASK_EPOCH + r K + t, so
    one iteration of size eps is FGSM's train-mode set, while more iterations draw other masks (not a repeat of the
    first), reproducibly."""
    from advbp_cli.attack import ATTACK_MASK_EPOCH
    from advbp_cli.networks import load_network
    from advbp_cli.rng import DropoutMasks
    from test_attack_claims import _dropout_run

    run = _dropout_run(data_dir, tmp_path / "run")
    common = ["--eps", "0.1", "--limit", "60", "--batch-size", "30", "--model-mode", "train", "--data-dir",
              str(data_dir), "--no-download"]
    for name, extra in (("fgsm", []), ("bim", ["--method", "bim", "--steps", "1", "--step-size", "0.1"])):
        assert run_cli(["attack", str(run), *common, *extra, "--out", str(tmp_path / name)]).exit_code == 0
    assert _x(tmp_path / "bim", "bim-eps0.1").tobytes() == _x(tmp_path / "fgsm", "fgsm-eps0.1").tobytes()

    net, cfg = load_network(run)[:2]
    x = _x(tmp_path / "fgsm", "fgsm-eps0.1")[:30]  # any 30 inputs in [0, 1]
    y = np.zeros(30, dtype=np.int64)
    p = AttackParams("pgd", steps=3, step_size=0.05, restarts=2, seed=1, batch_size=30, model_mode="train")
    z = {r: linf_iterates(net, x, y, 0.1, 0.05, p, (0.0, 1.0), r, train_cfg=cfg) for r in (0, 1)}
    np.testing.assert_array_equal(z[1], linf_iterates(net, x, y, 0.1, 0.05, p, (0.0, 1.0), 1, train_cfg=cfg))
    eval_mode = linf_iterates(net, x, y, 0.1, 0.05, p, (0.0, 1.0), 1)
    assert (z[1] != eval_mode).any(axis=1).mean() > 0.5  # dropout really was active
    # iteration t of restart 1 uses epoch key ATTACK_MASK_EPOCH + 1 * 3 + t: rebuilt here step by step
    from advbp_cli.rng import RandomStarts

    seen, keys = [], []

    class Recording(DropoutMasks):
        def masks(self, k, sites):
            keys.append(self.epoch)
            return super().masks(k, sites)

    start = net.asarray(RandomStarts(1, 1).next_rows(30, x.shape[1], 0.1))
    zz, _ = net.linf_attack(net.asarray(x), net.asarray(y, labels=True), 0.1, 0.05, 3, (0.0, 1.0), start,
                            lambda t: Recording(cfg.runtime.seed, ATTACK_MASK_EPOCH + 3 + t), k=0, step=cfg.train,
                            observe=lambda t, zt: seen.append(t))
    np.testing.assert_array_equal(zz, z[1])
    assert keys == [ATTACK_MASK_EPOCH + 3 + t for t in range(3)] and seen == [0, 1, 2]


def test_pgd_on_a_cifar_conv_net_uses_fgsms_clipping_rule(cifar_runs, cifar_data_dir, tmp_path):
    """`simple` preprocessing: the box is the image of the pixel range, [-m/s, (255 - m)/s], as for FGSM; a conv
    net's iterations go through the same verb (its evaluation chunks)."""
    out = {}
    for method, extra in (("fgsm", []), ("pgd", ["--method", "pgd", "--steps", "3", "--restarts", "2"])):
        r = run_cli(["attack", str(cifar_runs["conv"]), "--eps", "0.3", "--limit", "12", "--data-dir",
                     str(cifar_data_dir), "--no-download", "--out", str(tmp_path / method), *extra])
        assert r.exit_code == 0, r.stderr
        assert "image of the pixel range [0, 1] under simple preprocessing" in r.stderr
        out[method] = json.loads((tmp_path / method / f"{method}-eps0.3.json").read_text())
    assert out["pgd"]["clip"] == out["fgsm"]["clip"] and out["pgd"]["attack"]["clip_rule"] == \
        out["fgsm"]["attack"]["clip_rule"]
    lo, hi = out["pgd"]["clip"]
    from advbp_cli.model_data import load_models

    (model,) = load_models([cifar_runs["conv"]], data_dir=cifar_data_dir, download=False, log=lambda m: None)
    clean = model.split("validation", 12).x  # the run's own preprocessing, as the attack saw it
    z = _x(tmp_path / "pgd", "pgd-eps0.3")
    assert z.min() >= np.float32(lo) and z.max() <= np.float32(hi) and z.shape == clean.shape == (12, 3072)
    d = np.abs(z.astype(np.float64) - clean)
    assert d.max() <= 0.3 + 4 * np.finfo(np.float32).eps and (d > 0.15).mean() > 0.5


# --------------------------------------------------------- gaps the mutation run of the attack group found
def test_restarts_are_judged_per_sample_across_evaluation_chunks(xy):
    """_judge evaluates CHUNK samples at a time: with more than one chunk each sample is still judged against its
    own label (a misaligned slice of y would compare sample i with another label)."""
    from advbp_cli.attack_methods import _judge
    from advbp_cli.evaluate import CHUNK

    x, y = xy
    net, _ = _net("numpy", hidden=(8, 8))
    reps = CHUNK // len(x) + 2  # more rows than one chunk
    xs, ys = np.tile(x, (reps, 1)), np.tile(y, reps)
    assert len(xs) > CHUNK
    wrong, losses = _judge(net, xs, ys)
    logits = net.logits(xs)
    np.testing.assert_array_equal(wrong, logits.argmax(axis=1) != ys)
    want, _ = net.net.loss(net.ops, logits, ys, want_grad=False)
    np.testing.assert_allclose(losses, want, rtol=1e-12)
    assert 0 < wrong.mean() < 1  # both kinds present, so a wrong label shows


def test_the_folder_manifest_records_the_source_data_and_attack_of_its_sets(source, data_dir, tmp_path):
    from advbp_cli.attack_sets import read_dir_manifest

    out = _attack(data_dir, source, tmp_path / "pgd", "--method", "pgd", "--steps", "3", "--restarts", "2")
    folder = read_dir_manifest(out)
    for entry in folder["sets"]:
        own = json.loads((out / entry["manifest"]).read_text())
        for key in ("source", "dataset", "attack", "preprocess", "input_shape", "provenance"):
            assert folder[key] == own[key], key
    assert folder["attack"]["method"] == "pgd" and folder["attack"]["steps"] == 3 and folder["attack"]["restarts"] == 2
    import hashlib

    ckpt = source / "checkpoint.safetensors"
    assert folder["source"]["checkpoint"] == str(ckpt) and folder["source"]["epoch"] == 1
    assert folder["source"]["checkpoint_sha256"] == hashlib.sha256(ckpt.read_bytes()).hexdigest()


@pytest.mark.parametrize("name", ["a.json", "pgd-eps0.05.jso", "../pgd-eps0.05.json"])
def test_a_folder_manifest_naming_another_set_manifest_is_refused(source, data_dir, tmp_path, cli, name):
    out = _attack(data_dir, source, tmp_path / "pgd", "--method", "pgd", "--steps", "2")
    m = json.loads((out / "manifest.json").read_text())
    m["sets"][0]["manifest"] = name
    (out / "manifest.json").write_text(json.dumps(m))
    r = cli(["eval", str(source), "--attack-set", str(out), "--data-dir", str(data_dir)])
    assert r.exit_code == 2 and "'sets' is not a list of" in r.stderr, r.stderr
