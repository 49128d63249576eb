"""`advbp sweep`: the aggregate equals the run directories, --report reprints it, a killed sweep resumes
without redoing complete runs, and bad input leaves nothing behind."""

from __future__ import annotations

import csv
import json
import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pytest

PRESETS = ["mnist-relu-2x400-adv", "mnist-relu-2x400-backprop"]
SMALL = ["--seeds", "2", "--epochs", "2", "--train-limit", "500", "--eval-limit", "200", "--backend", "numpy"]


def _runs(sweep_dir: Path) -> dict[tuple[str, int], dict]:
    return {(p, s): json.loads((sweep_dir / p / f"seed-{s}" / "summary.json").read_text()) for p in PRESETS for s in (0, 1)}


def _check_summary_matches_runs(sweep_dir: Path) -> dict:
    runs = _runs(sweep_dir)
    summary = json.loads((sweep_dir / "summary.json").read_text())
    assert summary["complete"] and summary["runs_complete"] == summary["runs_total"] == 4
    csv_rows = {r["preset"]: r for r in csv.DictReader((sweep_dir / "summary.csv").read_text().splitlines())}
    md = (sweep_dir / "summary.md").read_text()
    assert [r["preset"] for r in summary["presets"]] == PRESETS
    for row in summary["presets"]:
        p = row["preset"]
        values = [runs[(p, s)]["headline"]["value"] for s in (0, 1)]
        assert runs[(p, 0)]["seed"] == 0 and runs[(p, 1)]["seed"] == 1 and runs[(p, 0)]["preset"] == p
        assert row["values"] == values and row["seeds"] == [0, 1] and row["n_seeds"] == 2
        assert row["mean"] == statistics.fmean(values)
        assert row["std"] == statistics.stdev(values)
        assert float(csv_rows[p]["mean"]) == row["mean"] and float(csv_rows[p]["std"]) == row["std"]
        assert f"| {p} | 2/2 | {row['mean']:.3f} ± {row['std']:.3f} |" in md
        paper = runs[(p, 0)]["paper"]
        if paper and paper.get("std"):
            # 2 epochs on 500 images is not the paper's protocol: its number is shown, no difference is computed
            assert row["paper_error"] == paper["error"] and row["paper_protocol"] is False
            assert row["diff"] is None and row["diff_in_paper_std"] is None
            assert row["protocol"].startswith(f"{runs[(p, 0)]['epochs_completed']} epochs on the first ")
    (pair,) = summary["comparisons"]
    assert pair["adversarial"] == PRESETS[0] and pair["backprop"] == PRESETS[1]
    return summary


def test_sweep_writes_summary_equal_to_runs_and_report_reprints_it(cli, data_dir, tmp_path):
    out = tmp_path / "sw"
    r = cli(["sweep", *PRESETS, *SMALL, "--out", str(out), "--data-dir", str(data_dir)])
    assert r.exit_code == 0, r.stderr
    summary = _check_summary_matches_runs(out)
    record = json.loads((out / "sweep.json").read_text())
    assert record["request"]["presets"] == PRESETS and record["request"]["seeds"] == [0, 1]
    assert record["request"]["overrides"] == {"train": {"epochs": 2}, "data": {"train_limit": 500, "eval_limit": 200},
                                              "runtime": {"backend": "numpy"}}
    assert record["provenance"]["git"] and record["provenance"]["advbp_version"]
    for p in PRESETS:
        cfg = json.loads((out / p / "seed-1" / "config.json").read_text())["config"]
        assert cfg["preset"] == p and cfg["runtime"]["seed"] == 1 and cfg["train"]["epochs"] == 2
    assert not list(out.rglob("*.tmp"))

    rep = cli(["sweep", "--report", str(out), "--json"])
    assert rep.exit_code == 0, rep.stderr
    assert json.loads(rep.stdout) == summary
    text = cli(["sweep", "--report", str(out)])
    assert text.exit_code == 0, text.stderr
    printed = "".join(ln for ln in r.stdout.splitlines(keepends=True) if not ln.startswith("written:"))
    assert text.stdout == printed and "mnist-relu-2x400-adv" in text.stdout

    # A second sweep into the same directory is refused; --resume of a complete sweep trains nothing.
    again = cli(["sweep", *PRESETS, *SMALL, "--out", str(out), "--data-dir", str(data_dir)])
    assert again.exit_code == 2 and "--resume" in again.stderr
    changed = cli(["sweep", "--resume", "--out", str(out), "--epochs", "3", "--data-dir", str(data_dir)])
    assert changed.exit_code == 2 and changed.stderr.count("\n") == 1 and "--epochs 3" in changed.stderr
    before = {p: p.stat().st_mtime_ns for p in out.rglob("seed-*/summary.json")}
    res = cli(["sweep", "--resume", "--out", str(out), "--data-dir", str(data_dir)])
    assert res.exit_code == 0, res.stderr
    assert {p: p.stat().st_mtime_ns for p in out.rglob("seed-*/summary.json")} == before
    assert res.stderr.count("already complete, kept") == 4
    assert json.loads((out / "summary.json").read_text()) == summary


def test_kill_then_resume_redoes_only_unfinished_runs(cli, data_dir, tmp_path):
    out = tmp_path / "sw"
    args = ["sweep", *PRESETS, "--seeds", "2", "--epochs", "3", "--train-limit", "1000", "--eval-limit", "200",
            "--backend", "numpy", "--out", str(out), "--data-dir", str(data_dir)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "advbp_cli", *args], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    first = out / PRESETS[0] / "seed-0" / "summary.json"
    try:
        deadline = time.monotonic() + 60
        while not first.exists():
            assert proc.poll() is None, "the sweep ended before its first run completed"
            assert time.monotonic() < deadline, "the first run did not complete within 60 s"
            time.sleep(0.01)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    done = {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in out.rglob("seed-*/summary.json")}
    assert first in done and len(done) < 4, "the kill came too late to leave an unfinished run"
    assert not (out / "summary.json").exists()

    r = cli(["sweep", "--resume", "--out", str(out), "--data-dir", str(data_dir)])
    assert r.exit_code == 0, r.stderr
    for path, (mtime, content) in done.items():  # completed runs were not redone
        assert path.stat().st_mtime_ns == mtime and path.read_bytes() == content
    assert r.stderr.count("already complete, kept") == len(done)
    assert r.stderr.count(" trained") == 4 - len(done)
    for summary in _runs(out).values():
        assert summary["epochs_completed"] == 3
    _check_summary_matches_runs(out)


def test_half_written_run_resumes_from_its_checkpoint_and_matches_an_uninterrupted_one(data_dir, tmp_path):
    from advbp_cli.sweep import run_one
    from advbp_cli.errors import Interrupted
    from advbp_cli.trainer import Reporter

    overrides = {"train": {"epochs": 2}, "data": {"train_limit": 300, "eval_limit": 100}, "runtime": {"backend": "numpy"}}

    def stop_after_first_epoch(row):
        raise KeyboardInterrupt

    with pytest.raises((KeyboardInterrupt, Interrupted)):  # dies after epoch 1's checkpoint, before the summary
        run_one(tmp_path / "a", PRESETS[0], 0, overrides, data_dir, reporter=Reporter(epoch_end=stop_after_first_epoch))
    run_dir = tmp_path / "a" / PRESETS[0] / "seed-0"
    assert (run_dir / "checkpoint.safetensors").is_file() and not (run_dir / "summary.json").exists()
    resumed = run_one(tmp_path / "a", PRESETS[0], 0, overrides, data_dir)
    assert resumed.status == "done" and resumed.resumed_from_epoch == 1
    straight = run_one(tmp_path / "b", PRESETS[0], 0, overrides, data_dir)
    assert straight.resumed_from_epoch == 0
    strip = lambda rows: [{k: v for k, v in r.items() if "seconds" not in k} for r in rows]  # noqa: E731
    metrics = lambda d: strip([json.loads(ln) for ln in (d / "metrics.jsonl").read_text().splitlines()])  # noqa: E731
    assert metrics(run_dir) == metrics(tmp_path / "b" / PRESETS[0] / "seed-0")
    assert resumed.summary["headline"] == straight.summary["headline"]
    assert run_one(tmp_path / "a", PRESETS[0], 0, overrides, data_dir).status == "skipped"


@pytest.mark.parametrize("args, needle", [
    (["no-such-group"], "table2"),
    (["table2", "--seeds", "0"], "--seeds"),
    ([], "table2"),
    (["table2", "--epochs", "0"], "--epochs"),
])
def test_bad_input_is_one_line_exit_2_and_leaves_no_sweep_dir(cli, data_dir, tmp_path, args, needle):
    out = tmp_path / "sw"
    r = cli(["sweep", *args, "--out", str(out), "--data-dir", str(data_dir)])
    assert r.exit_code == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ") and needle in lines[0], r.stderr
    assert "Traceback" not in r.stderr and r.stdout == ""
    assert not out.exists()


def test_report_of_a_directory_without_a_sweep_is_a_usage_problem(cli, tmp_path):
    r = cli(["sweep", "--report", str(tmp_path)])
    assert r.exit_code == 2 and r.stderr.startswith("Error: ") and "sweep.json" in r.stderr


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # numpy's overflow warnings on the way to NaN
def test_a_diverged_run_is_reported_and_the_others_are_still_summarised(data_dir, tmp_path):
    from advbp_cli.sweep import make_request, run_sweep

    overrides = {"train": {"epochs": 1, "lr": 1e30}, "data": {"train_limit": 200, "eval_limit": 50},
                 "runtime": {"backend": "numpy"}}
    req = make_request([PRESETS[0]], 1, overrides)
    summary = run_sweep(tmp_path / "sw", req, data_dir)
    assert not summary["complete"] and summary["runs_complete"] == 0
    (failure,) = summary["failures"]
    assert failure["run_dir"] == f"{PRESETS[0]}/seed-0" and "diverged" in failure["message"]
    assert json.loads((tmp_path / "sw" / "summary.json").read_text()) == summary


# ------------------------------------------------------------------------------------------------ CIFAR-10
CIFAR_PRESETS = ["cifar10-2x3000-adv-simple", "cifar10-conv-backprop-simple"]


def test_cifar_sweep_of_an_mlp_and_a_conv_preset(cli, cifar_data_dir, tmp_path):
    out = tmp_path / "sw"
    r = cli(["sweep", *CIFAR_PRESETS, "--seeds", "1", "--epochs", "1", "--train-limit", "256", "--eval-limit", "128",
             "--hidden", "16,16", "--conv-channels", "8,8,8", "--backend", "torch", "--out", str(out),
             "--data-dir", str(cifar_data_dir), "--json"])
    assert r.exit_code == 0, r.stderr
    summary = json.loads(r.stdout)
    assert summary["complete"] and summary["runs_complete"] == summary["runs_total"] == 2
    assert [p["preset"] for p in summary["presets"]] == CIFAR_PRESETS
    for preset in CIFAR_PRESETS:
        run = json.loads((out / preset / "seed-0" / "config.json").read_text())
        cfg = run.get("config", run)
        assert cfg["data"]["dataset"] == "cifar10" and cfg["model"]["hidden"] == [16, 16]
        run_summary = json.loads((out / preset / "seed-0" / "summary.json").read_text())
        (row,) = [json.loads(ln) for ln in (out / preset / "seed-0" / "metrics.jsonl").read_text().splitlines()]
        assert run_summary["headline"]["value"] == row["eval_error"]  # one epoch: its error is the mean
        (agg,) = [p for p in summary["presets"] if p["preset"] == preset]
        assert agg["values"] == [row["eval_error"]]
    conv = json.loads((out / CIFAR_PRESETS[1] / "seed-0" / "config.json").read_text())
    assert conv.get("config", conv)["model"]["conv_channels"] == [8, 8, 8]
    assert "--hidden 16,16 --conv-channels 8,8,8" in (out / "summary.md").read_text()


@pytest.mark.parametrize("target", ["table3", CIFAR_PRESETS[1]])
def test_sweep_checks_the_data_of_every_dataset_before_writing(cli, data_dir, tmp_path, target):
    only_mnist = tmp_path / "data"
    only_mnist.mkdir()
    (only_mnist / "mnist").symlink_to(data_dir / "mnist")
    out = tmp_path / "sw"
    r = cli(["sweep", "mnist-relu-2x400-adv", target, "--seeds", "1", "--epochs", "1", "--out", str(out),
             "--data-dir", str(only_mnist), "--no-download"])
    assert r.exit_code == 2 and "Traceback" not in r.stderr, r.stderr
    assert r.stderr.startswith("Error: ") and "cifar" in r.stderr.lower()
    assert not out.exists() and not (only_mnist / "cifar10").exists()


@pytest.mark.parametrize("opt", ["--hidden", "--conv-channels"])
def test_sweep_layer_overrides_are_validated(cli, data_dir, tmp_path, opt):
    out = tmp_path / "sw"
    r = cli(["sweep", CIFAR_PRESETS[1], opt, "0,4", "--out", str(out), "--data-dir", str(data_dir)])
    assert r.exit_code == 2 and opt in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert not out.exists()
