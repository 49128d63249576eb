"""The command line as a user meets it: train, eval, presets, JSON output, the CI gate, and bad input."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

SMOKE = ["--train-limit", "600", "--eval-limit", "300", "--epochs", "2", "--hidden", "32,32"]


def _train(cli, data_dir, out, *extra):
    r = cli(["train", "--preset", "mnist-relu-2x400-adv", *SMOKE, "--data-dir", str(data_dir), "--out", str(out), "--json", *extra])
    assert r.exit_code == 0, r.stderr
    return json.loads(r.stdout)


def test_train_writes_a_complete_run_directory(cli, data_dir, tmp_path):
    out = tmp_path / "run"
    summary = _train(cli, data_dir, out, "--backend", "numpy")
    assert {p.name for p in out.iterdir()} >= {"config.json", "metrics.jsonl", "checkpoint.safetensors", "summary.json"}
    record = json.loads((out / "config.json").read_text())
    assert record["config"]["preset"] == "mnist-relu-2x400-adv"
    assert record["config"]["model"]["hidden"] == [32, 32]  # the override, resolved
    assert record["config"]["train"]["eps"] == 0.08 and record["config"]["train"]["lr"] == 0.05
    assert record["provenance"]["advbp_version"] and "commit" in record["provenance"]["git"]
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2]
    assert summary["headline"]["value"] == pytest.approx(np.mean([r["eval_error"] for r in rows]))
    assert summary["paper"]["error"] == 0.83
    assert rows[1]["train_clean_loss"] < rows[0]["train_clean_loss"]  # it is learning


def test_torch_trained_model_gives_identical_predictions_with_numpy(cli, data_dir, tmp_path):
    out = tmp_path / "run"
    _train(cli, data_dir, out, "--backend", "torch", "--device", "cpu")
    from advbp_cli.data.mnist import load_mnist
    from advbp_cli.data.splits import split_of
    from advbp_cli.evaluate import evaluate_arrays
    from advbp_cli.networks import load_network

    test = split_of(load_mnist(data_dir, download=False), "test", "test", "float32")
    preds = {}
    for backend in ("torch", "numpy"):
        net, _, _, _ = load_network(out, backend=backend, device="cpu")
        preds[backend] = evaluate_arrays(net, test.x, test.y).predictions
    np.testing.assert_array_equal(preds["torch"], preds["numpy"])
    ev = {b: json.loads(cli(["eval", str(out), "--backend", b, "--data-dir", str(data_dir), "--json"]).stdout) for b in ("torch", "numpy")}
    assert ev["torch"]["error"] == ev["numpy"]["error"]
    assert ev["numpy"]["n"] == 10000  # eval uses the whole split unless --limit is given


def test_eval_json_and_max_error_gate(cli, data_dir, tmp_path):
    out = tmp_path / "run"
    _train(cli, data_dir, out, "--backend", "numpy")
    plain = json.loads(cli(["eval", str(out), "--data-dir", str(data_dir), "--limit", "500", "--json"]).stdout)
    # the gate at exactly the error passes (the error is not above it)
    ok = cli(["eval", str(out), "--data-dir", str(data_dir), "--limit", "500", "--json", "--max-error", repr(plain["error"])])
    assert ok.exit_code == 0, ok.stderr
    result = json.loads(ok.stdout)
    assert result["n"] == 500 and result["passed"] is True and result["error"] == plain["error"]
    assert 0 < result["error"] and round(result["error"] * 5) == result["error"] * 5  # whole images of 500
    assert len(result["hidden_zero_percent"]) == 2 and result["units"]["error"] == "percent of n"
    fail = cli(["eval", str(out / "checkpoint.safetensors"), "--data-dir", str(data_dir), "--limit", "500", "--max-error", "0"])
    assert fail.exit_code == 1 and "above --max-error" in fail.stderr


def test_eval_split_validation_and_train(cli, data_dir, tmp_path):
    out = tmp_path / "run"
    _train(cli, data_dir, out, "--backend", "numpy", "--eval-split", "validation")
    r = json.loads(cli(["eval", str(out), "--data-dir", str(data_dir), "--json"]).stdout)
    assert r["split"] == "validation" and r["n"] == 10000
    r = json.loads(cli(["eval", str(out), "--split", "train", "--data-dir", str(data_dir), "--json"]).stdout)
    assert r["n"] == 50000  # validation mode trains on the first 50k


def test_presets_list_and_show(cli):
    r = cli(["presets", "--json"])
    listing = json.loads(r.stdout)
    names = {p["name"]: p for p in listing["presets"]}
    assert len(names) == 34  # 18 MNIST (Table 2 and backprop baselines) + 12 CIFAR-10 (Table 3) + 4 CIFAR-10 smoke
    assert names["mnist-relu-2x800-adv"]["paper_error"] == 0.78
    assert names["mnist-tanh-2x800-backprop"]["paper_error"] == 1.49
    assert listing["groups"]["table2"] == sorted(listing["groups"]["table2"], key=listing["groups"]["table2"].index)
    shown = json.loads(cli(["presets", "show", "mnist-logistic-2x1200-adv", "--json"]).stdout)
    assert shown["config"]["model"]["activation"] == "logistic" and shown["config"]["train"]["lr"] == 0.5
    assert shown["config"]["train"]["epochs"] == 150 and shown["config"]["train"]["batch_size"] == 10
    assert "train.clip" in shown["paper_silent"]
    text = cli(["presets", "show", "mnist-relu-2x400-adv"]).stdout
    assert "where the paper is silent" in text


def _assert_usage_error(r, *needles):
    assert r.exit_code == 2, (r.stdout, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), r.stderr
    assert "Traceback" not in r.stderr
    for n in needles:
        assert n in lines[0], lines[0]


@pytest.mark.parametrize(
    "args,needles",
    [
        (["train", "--preset", "nope"], ["--preset", "nope", "advbp presets"]),
        (["train", "--eps", "-1"], ["--eps", "greater than or equal to 0"]),
        (["train", "--batch-size", "0"], ["--batch-size"]),
        (["train", "--hidden", "400,abc"], ["--hidden"]),
        (["train", "--clip", "1,0"], ["--clip"]),
        (["train", "--backend", "jax"], ["--backend", "numpy", "torch"]),
        (["train", "--lr", "fast"], ["--lr"]),
        (["train", "--adv-weight", "2"], ["--adv-weight"]),
        (["presets", "show", "nope"], ["nope"]),
        (["frobnicate"], ["frobnicate"]),
    ],
)
def test_bad_options_give_one_line_and_exit_2(cli, tmp_path, args, needles):
    out = tmp_path / "never"
    r = cli([*args, *(["--out", str(out)] if args[0] == "train" else [])])
    _assert_usage_error(r, *needles)
    assert not out.exists()


def test_missing_data_dir_is_a_clear_error_without_partial_files(cli, tmp_path):
    out = tmp_path / "run"
    r = cli(["train", "--data-dir", str(tmp_path / "typo"), "--no-download", "--out", str(out)])
    _assert_usage_error(r, str(tmp_path / "typo"), "(--data-dir) does not exist")
    assert sorted(tmp_path.iterdir()) == []  # a mistyped folder is reported, not created
    (tmp_path / "empty").mkdir()
    r = cli(["train", "--data-dir", str(tmp_path / "empty"), "--no-download", "--out", str(out)])
    _assert_usage_error(r, "train-images-idx3-ubyte.gz", "--data-dir", "download is off")
    assert not out.exists() and list((tmp_path / "empty").iterdir()) == []


@pytest.mark.parametrize("damage", ["truncate", "flip"])
def test_truncated_or_wrong_checksum_idx_is_refused(cli, data_dir, tmp_path, damage):
    bad = tmp_path / "data" / "mnist"
    bad.mkdir(parents=True)
    for f in (data_dir / "mnist").glob("*.gz"):
        (bad / f.name).write_bytes(f.read_bytes())
    victim = bad / "t10k-labels-idx1-ubyte.gz"
    raw = bytearray(victim.read_bytes())
    if damage == "truncate":
        raw = raw[: len(raw) // 2]
    else:
        raw[100] ^= 0xFF
    victim.write_bytes(bytes(raw))
    out = tmp_path / "run"
    r = cli(["train", "--data-dir", str(tmp_path / "data"), "--no-download", "--out", str(out)])
    _assert_usage_error(r, "t10k-labels-idx1-ubyte.gz", "corrupt")
    assert not out.exists()


def test_checkpoint_of_another_architecture_is_refused(cli, data_dir, tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    _train(cli, data_dir, a, "--backend", "numpy")
    r = cli(["train", "--preset", "mnist-relu-2x400-adv", "--train-limit", "600", "--eval-limit", "300", "--epochs", "1",
             "--hidden", "20,20", "--data-dir", str(data_dir), "--out", str(b), "--backend", "numpy"])
    assert r.exit_code == 0, r.stderr
    (b / "checkpoint.safetensors").write_bytes((a / "checkpoint.safetensors").read_bytes())
    _assert_usage_error(cli(["eval", str(b), "--data-dir", str(data_dir)]), "another architecture")


def test_existing_run_is_not_overwritten_silently(cli, data_dir, tmp_path):
    out = tmp_path / "run"
    _train(cli, data_dir, out, "--backend", "numpy")
    before = (out / "checkpoint.safetensors").read_bytes()
    r = cli(["train", "--preset", "mnist-relu-2x400-adv", *SMOKE, "--data-dir", str(data_dir), "--out", str(out)])
    _assert_usage_error(r, "already holds a run", "--resume")
    assert (out / "checkpoint.safetensors").read_bytes() == before
    _train(cli, data_dir, out, "--backend", "numpy", "--overwrite", "--seed", "3")
    assert (out / "checkpoint.safetensors").read_bytes() != before


def test_same_seed_same_run_different_seed_different_run(cli, data_dir, tmp_path):
    from safetensors.numpy import load_file

    for name, seed in (("a", "1"), ("b", "1"), ("c", "2")):
        _train(cli, data_dir, tmp_path / name, "--backend", "numpy", "--seed", seed)
    a, b, c = (load_file(str(tmp_path / n / "checkpoint.safetensors")) for n in "abc")
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert not np.array_equal(a["layers.0.weight"], c["layers.0.weight"])


def test_importing_advbp_cli_and_its_help_do_not_import_torch():
    code = (
        "import sys, advbp_cli, advbp_cli.cli, advbp_cli.trainer, advbp_cli.backends; "
        "from advbp_cli.backends import load_backend; load_backend('numpy'); "
        "assert 'torch' not in sys.modules, 'torch imported'; "
        "from advbp_cli.cli import main\n"
        "try: main(['presets', '--json'])\n"
        "except SystemExit: pass\n"
        "assert 'torch' not in sys.modules, 'torch imported by presets'"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


def test_console_script_runs(tmp_path):
    # the script installed beside this interpreter (a venv's), not whichever `advbp` comes first on PATH
    from pathlib import Path

    script = Path(sys.executable).parent / "advbp"
    r = subprocess.run([str(script) if script.exists() else "advbp", "--version"], capture_output=True, text=True)
    assert r.returncode == 0 and "advbp" in r.stdout
