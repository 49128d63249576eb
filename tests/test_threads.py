"""The thread policy (advbp_cli/threads.py): what `auto` picks for which workload, that --threads is validated
on every command that computes, that the count is recorded where a result is, and that a run with --threads N
equals, weight for weight, a run of the code path without any thread setting made under OMP_NUM_THREADS=N."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from advbp_cli import presets
from advbp_cli import threads as th
from advbp_cli.config import build_config

MNIST_PRESETS = [p for p in presets.preset_names() if p.startswith("mnist-")]
CIFAR_LARGE = ["cifar10-2x3000-adv-simple", "cifar10-conv-adv-dropout-zca"]
THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


def _cfg(preset: str, **overrides):
    return build_config({"preset": preset, **presets.config_values(presets.load_preset(preset))}, overrides)


@pytest.fixture
def no_env_cap(monkeypatch):
    monkeypatch.setattr(th, "_outside_cap", None)  # conftest's OMP_NUM_THREADS=1 is a cap; these tests set their own


# ------------------------------------------------------------------------------------------ the resolver
@pytest.mark.parametrize("preset", MNIST_PRESETS)
def test_auto_is_one_thread_for_every_mnist_row_at_batch_10(preset, no_env_cap):
    cfg = _cfg(preset)
    for cpus, workers in ((2, 1), (16, 1), (64, 1), (16, 4)):
        choice = th.resolve_threads("auto", cfg, cpus=cpus, workers=workers)
        assert choice.threads == 1 and choice.setting == "auto" and "small steps" in choice.reason


@pytest.mark.parametrize("preset", CIFAR_LARGE)
def test_auto_gives_large_cifar_steps_their_share_of_the_cpus(preset, no_env_cap):
    cfg = _cfg(preset)
    share = {(cpus, w): th.resolve_threads("auto", cfg, cpus=cpus, workers=w).threads
             for cpus, w in ((2, 1), (2, 2), (8, 1), (8, 2), (8, 3), (8, 16), (1, 1))}
    assert share == {(2, 1): 2, (2, 2): 1, (8, 1): 8, (8, 2): 4, (8, 3): 2, (8, 16): 1, (1, 1): 1}


def test_explicit_counts_are_kept_and_the_environment_caps_auto(monkeypatch):
    cfg = _cfg("cifar10-2x3000-adv-simple")
    monkeypatch.setattr(th, "_outside_cap", 3)
    assert th.resolve_threads("auto", cfg, cpus=8).threads == 3  # OMP_NUM_THREADS=3 in the environment
    assert "OMP_NUM_THREADS=3" in th.resolve_threads("auto", cfg, cpus=8).reason
    assert th.resolve_threads("auto", cfg, cpus=2).threads == 2
    assert th.resolve_threads(5, cfg, cpus=2).threads == 5  # asked for: even more than the CPUs
    assert th.resolve_threads("auto", _cfg("cifar10-2x3000-adv-simple", runtime={"device": "cuda"}), cpus=8).threads == 1


def test_step_size_is_the_forward_multiply_adds_of_a_batch():
    mlp = _cfg("mnist-relu-2x400-adv")
    assert th.step_macs(mlp.model, 10) == 10 * (784 * 400 + 400 * 400 + 400 * 10)
    conv = _cfg("cifar10-conv-adv-simple")  # 3 -> 96 -> 128 -> 256 channels at 32, 16, 8 pixels, then 4x4x256 -> 2048
    per_image = (96 * 3 * 25 * 32 * 32 + 128 * 96 * 25 * 16 * 16 + 256 * 128 * 25 * 8 * 8
                 + 256 * 4 * 4 * 2048 + 2048 * 2048 + 2048 * 10)
    assert th.step_macs(conv.model, 128) == 128 * per_image
    # the threshold sits between the largest MNIST row at batch 10 and the smallest CIFAR-10 network at batch 128
    assert th.step_macs(_cfg("mnist-relu-2x1200-adv").model, 10) < th.SMALL_STEP_MACS
    assert th.step_macs(_cfg("cifar10-2x3000-adv-simple").model, 128) > th.SMALL_STEP_MACS


def test_cgroup_quota_caps_the_usable_cpus(tmp_path):
    (tmp_path / "cpu.max").write_text("150000 100000\n")
    assert th._cgroup_quota(tmp_path) == 2  # 1.5 CPUs of quota: 2 threads can use it
    (tmp_path / "cpu.max").write_text("max 100000\n")
    assert th._cgroup_quota(tmp_path) is None
    v1 = tmp_path / "v1"
    (v1 / "cpu").mkdir(parents=True)
    (v1 / "cpu" / "cpu.cfs_quota_us").write_text("400000\n")
    (v1 / "cpu" / "cpu.cfs_period_us").write_text("100000\n")
    assert th._cgroup_quota(v1) == 4
    assert th._cgroup_quota(tmp_path / "missing") is None


@pytest.mark.parametrize("value", ["0", "-1", "two", "nan", "1.5", "", "inf", "٣", 0, -2, True, 2.0, None])
def test_parse_refuses_what_is_not_auto_or_a_positive_integer(value):
    with pytest.raises(ValueError, match="positive integer"):
        th.parse_threads(value)


def test_parse_accepts_auto_and_positive_integers():
    assert [th.parse_threads(v) for v in ("auto", "AUTO", " 3 ", 4, "1")] == ["auto", "auto", 3, 4, 1]


# ------------------------------------------------------------------------------------------ the CLI
@pytest.mark.parametrize("value", ["0", "-1", "two", "nan"])
@pytest.mark.parametrize("command", ["train", "sweep", "eval", "attack", "report"])
def test_every_computing_command_refuses_a_bad_thread_count(cli, tmp_path, command, value):
    args = {"train": ["train", "--out", str(tmp_path / "r")],
            "sweep": ["sweep", "mnist-relu-2x400-adv", "--out", str(tmp_path / "r")],
            "eval": ["eval", str(tmp_path / "r")],
            "attack": ["attack", str(tmp_path / "r"), "--eps", "0.1", "--out", str(tmp_path / "sets")],
            "report": ["report", str(tmp_path / "r")]}[command]
    r = cli([*args, "--threads", value])
    assert r.exit_code == 2, r.stderr
    (line,) = r.stderr.strip().splitlines()
    assert line.startswith("Error: ") and "--threads" in line and "positive integer" in line and repr(value) in line
    assert r.stdout == "" and not (tmp_path / "r").exists() and not (tmp_path / "sets").exists()


def test_a_preset_file_with_a_bad_thread_count_names_the_field():
    from advbp_cli.errors import UsageProblem

    with pytest.raises(UsageProblem, match=r"--threads.*positive integer"):
        build_config({}, {"runtime": {"threads": 0}})
    assert build_config({}, {"runtime": {"threads": 2}}).runtime.threads == 2
    assert build_config({}, {}).runtime.threads == "auto"


def _train(args: list[str], out: Path, data_dir: Path, env: dict) -> None:
    cmd = [sys.executable, "-m", "advbp_cli", "train", "--preset", "mnist-relu-2x400-adv", "--train-limit", "300",
           "--eval-limit", "100", "--epochs", "1", "--data-dir", str(data_dir), "--out", str(out), *args]
    p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr


def _env_without_thread_vars() -> dict:
    return {k: v for k, v in os.environ.items() if k not in THREAD_VARS}


@pytest.mark.parametrize("backend", ["numpy", "torch"])
def test_the_count_applied_is_recorded_in_config_json(data_dir, tmp_path, backend):
    _train(["--backend", backend, "--threads", "2"], tmp_path / "r", data_dir, _env_without_thread_vars())
    record = json.loads((tmp_path / "r" / "config.json").read_text())
    assert record["config"]["runtime"]["threads"] == 2
    assert record["resolved"]["threads"] == 2 and record["resolved"]["threads_setting"] == 2
    # what the libraries really use, read back from them after the run was set up
    used = record["provenance"]["threads"]
    assert used["blas"] == 2 and used["torch"] == (2 if backend == "torch" else None)
    _train(["--backend", backend], tmp_path / "auto", data_dir, _env_without_thread_vars())
    resolved = json.loads((tmp_path / "auto" / "config.json").read_text())["resolved"]
    assert resolved["threads"] == 1 and resolved["threads_setting"] == "auto" and "small steps" in resolved["threads_reason"]


OLD_PATH = """
import sys
from pathlib import Path
from advbp_cli import presets
from advbp_cli.config import build_config
from advbp_cli.rundir import RunDir
from advbp_cli.trainer import train

preset, backend, out, data_dir = sys.argv[1:]
cfg = build_config({"preset": preset, **presets.config_values(presets.load_preset(preset))},
                   {"train": {"epochs": 1}, "data": {"train_limit": 300, "eval_limit": 100},
                    "runtime": {"backend": backend}})
run = RunDir(out)
run.lock()
train(cfg, run, Path(data_dir))  # no thread setting at all: what advbp v1 did
"""


@pytest.mark.parametrize("backend", ["numpy", "torch"])
@pytest.mark.parametrize("n", [1, 2])
def test_threads_n_equals_the_old_code_path_under_the_same_environment_thread_count(data_dir, tmp_path, backend, n):
    from advbp_cli.checkpoint import read_checkpoint

    old_env = {**_env_without_thread_vars(), **{v: str(n) for v in THREAD_VARS}}
    p = subprocess.run([sys.executable, "-c", OLD_PATH, "mnist-relu-2x400-adv", backend, str(tmp_path / "old"),
                        str(data_dir)], env=old_env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    old_record = json.loads((tmp_path / "old" / "config.json").read_text())
    assert old_record["resolved"]["threads"] == n and old_record["resolved"]["threads_setting"] is None
    _train(["--backend", backend, "--threads", str(n)], tmp_path / "new", data_dir, _env_without_thread_vars())
    old, _ = read_checkpoint(tmp_path / "old" / "checkpoint.safetensors")
    new, _ = read_checkpoint(tmp_path / "new" / "checkpoint.safetensors")
    assert old.keys() == new.keys()
    for k in old:
        assert np.array_equal(old[k], new[k]), k  # bit for bit


def test_eval_and_attack_record_their_thread_count(cli, data_dir, tmp_path):
    run = tmp_path / "r"
    r = cli(["train", "--preset", "mnist-relu-2x400-adv", "--hidden", "16,16", "--train-limit", "200", "--eval-limit",
             "100", "--epochs", "1", "--data-dir", str(data_dir), "--out", str(run)])
    assert r.exit_code == 0, r.stderr
    r = cli(["eval", str(run), "--limit", "100", "--threads", "1", "--json", "--data-dir", str(data_dir)])
    assert r.exit_code == 0 and json.loads(r.stdout)["threads"] == 1, r.stderr
    r = cli(["attack", str(run), "--eps", "0.1", "--limit", "50", "--threads", "1", "--out", str(tmp_path / "sets"),
             "--data-dir", str(data_dir)])
    assert r.exit_code == 0, r.stderr
    manifest = json.loads((tmp_path / "sets" / "fgsm-eps0.1.json").read_text())
    assert manifest["source"]["threads"] == 1 and manifest["provenance"]["threads"]["blas"] == 1
