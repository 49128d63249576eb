"""Resume claims, for both backends: a run with momentum (whose buffers must come back from the checkpoint),
interrupted after epoch 2 and continued by `advbp train --resume`, ends bit for bit where the uninterrupted run
ends; resuming with another --backend continues the same arithmetic (float64: within the README's parity bound);
and --device on resume is honoured and recorded.

The runs are made with the trainer (momentum has no command-line option; the presets that use it are CIFAR-10
ones) and continued through the real command line."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file

from conftest import run_cli

TIMING = ("seconds", "train_seconds")


def config(backend: str, dtype: str = "float32", device: str = "cpu", **train):
    from advbp_cli.config import RunConfig

    return RunConfig.model_validate({
        "model": {"hidden": [24]},
        "train": {"method": "adversarial", "eps": 0.1, "lr": 0.05, "momentum": 0.9, "weight_decay": 1e-4,
                  "epochs": 4, "batch_size": 10, **train},
        "data": {"train_limit": 300, "eval_limit": 100, "eval_train_error": False},
        "runtime": {"backend": backend, "dtype": dtype, "device": device, "seed": 2},
    })


class StopAfter(Exception):
    pass


def trainer_run(cfg, out: Path, data_dir: Path, stop_after: int | None = None) -> None:
    """Trains cfg into `out` like `advbp train` does; with stop_after, Ctrl-C arrives after that epoch's save."""
    from advbp_cli.rundir import RunDir
    from advbp_cli.trainer import Reporter, train

    def epoch_end(row):
        if stop_after is not None and row["epoch"] == stop_after:
            raise KeyboardInterrupt

    run = RunDir(out)
    out.mkdir(parents=True)
    run.lock()
    try:
        train(cfg, run, data_dir, reporter=Reporter(epoch_end=epoch_end), download=False)
    except Exception as exc:  # the trainer's Interrupted
        if stop_after is None or getattr(exc, "exit_code", None) != 130:
            raise
    finally:
        run.unlock()


def tensors(run: Path) -> dict[str, np.ndarray]:
    return load_file(str(run / "checkpoint.safetensors"))


def rows(run: Path) -> list[dict]:
    return [{k: v for k, v in json.loads(line).items() if k not in TIMING}
            for line in (run / "metrics.jsonl").read_text().splitlines()]


def resume(data_dir: Path, run: Path, *extra: str):
    r = run_cli(["train", "--resume", str(run), "--data-dir", str(data_dir), "--no-download", *extra])
    assert r.exit_code == 0, r.stderr
    return r


@pytest.fixture(scope="module")
def references(data_dir, tmp_path_factory):
    made = {}

    def get(backend: str, dtype: str = "float32") -> Path:
        if (backend, dtype) not in made:
            out = tmp_path_factory.mktemp(f"ref-{backend}-{dtype}") / "run"
            trainer_run(config(backend, dtype), out, data_dir)
            made[backend, dtype] = out
        return made[backend, dtype]

    return get


@pytest.mark.parametrize("backend", ["numpy", "torch"])
def test_resume_with_momentum_is_bit_identical_to_an_uninterrupted_run(backend, references, data_dir, tmp_path):
    ref = references(backend)
    run = tmp_path / "run"
    trainer_run(config(backend), run, data_dir, stop_after=2)
    saved = tensors(run)
    momentum = sorted(k for k in saved if k.startswith("momentum."))
    assert momentum == sorted(f"momentum.{k}" for k in saved if not k.startswith("momentum."))
    assert all(np.abs(saved[k]).max() > 0 for k in momentum)  # real buffers: losing them changes the next steps
    assert len(rows(run)) == 2
    resume(data_dir, run)
    got, want = tensors(run), tensors(ref)
    assert sorted(got) == sorted(want)
    for k in want:
        assert got[k].dtype == want[k].dtype and np.array_equal(got[k], want[k]), f"{k} differs after resume"
    assert rows(run) == rows(ref)
    assert json.loads((run / "summary.json").read_text())["headline"] == \
        json.loads((ref / "summary.json").read_text())["headline"]


@pytest.mark.parametrize("first,then", [("numpy", "torch"), ("torch", "numpy")])
def test_resume_with_another_backend_continues_the_same_run(first, then, references, data_dir, tmp_path):
    """float64, so the two backends agree to the README's parity bound (1e-9) step for step; the momentum buffers
    written by one backend are read by the other."""
    ref = references(first, "float64")
    run = tmp_path / "run"
    trainer_run(config(first, "float64"), run, data_dir, stop_after=2)
    resume(data_dir, run, "--backend", then)
    got, want = tensors(run), tensors(ref)
    assert sorted(got) == sorted(want)
    for k in want:
        assert got[k].dtype == np.float64
        assert float(np.abs(got[k] - want[k]).max()) < 1e-9, k
    assert [r["eval_error"] for r in rows(run)] == [r["eval_error"] for r in rows(ref)]
    record = json.loads((run / "config.json").read_text())
    assert record["config"]["runtime"]["backend"] == then and record["resolved"]["backend"] == then
    assert record["resumed"][-1]["after_epoch"] == 2


def test_resume_with_another_device_is_honoured_and_identical(data_dir, tmp_path):
    """A torch run started with --device auto (the CPU here) and resumed with --device cpu: the same arithmetic,
    so bit-identical weights, and the device asked for is recorded."""
    ref, run = tmp_path / "ref", tmp_path / "run"
    trainer_run(config("torch", device="auto"), ref, data_dir)
    trainer_run(config("torch", device="auto"), run, data_dir, stop_after=2)
    resume(data_dir, run, "--device", "cpu")
    got, want = tensors(run), tensors(ref)
    assert all(np.array_equal(got[k], want[k]) for k in want)
    record = json.loads((run / "config.json").read_text())
    assert record["config"]["runtime"]["device"] == "cpu" and record["resolved"]["device"] == "cpu"


def test_resume_refuses_a_device_the_machine_lacks_without_touching_the_run(references, data_dir, tmp_path):
    import shutil

    import torch

    if torch.cuda.is_available():
        pytest.skip("CUDA is available here, so --device cuda is valid")
    run = tmp_path / "run"
    shutil.copytree(references("torch"), run)
    before = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file() and p.name != ".lock"}
    r = run_cli(["train", "--resume", str(run), "--epochs", "5", "--device", "cuda", "--data-dir", str(data_dir),
                 "--no-download"])
    assert r.exit_code == 2 and r.stderr.startswith("Error: ") and "cuda" in r.stderr.lower(), r.stderr
    assert {p.name: p.read_bytes() for p in run.iterdir() if p.is_file() and p.name != ".lock"} == before
