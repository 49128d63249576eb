"""README claims about where data comes from: the folder is --data-dir, else $ADVBP_DATA_DIR, else
$XDG_CACHE_HOME/advbp (~/.cache/advbp without XDG_CACHE_HOME); and the four IDX files may be raw instead of
gzip'd, giving the same run bit for bit.

Each folder below holds MNIST or nothing, so which one a command used shows in whether it works and in the
folder its error names. (Commands that read a run, like `advbp eval`, may also look at the run's own recorded
data folder; these tests use `advbp train`, which reads no run.)"""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file

from conftest import run_cli

TINY = ["--train-limit", "30", "--eval-limit", "30", "--epochs", "1", "--hidden", "5", "--backend", "numpy",
        "--no-download"]


def with_mnist(folder: Path, data_dir: Path) -> Path:
    (folder / "mnist").mkdir(parents=True)
    for f in (data_dir / "mnist").glob("*-ubyte.gz"):
        (folder / "mnist" / f.name).symlink_to(f)
    return folder


@pytest.fixture
def folders(tmp_path, data_dir, monkeypatch):
    """good (has MNIST) and empty folders for each of the three places, and no data settings inherited."""
    monkeypatch.delenv("ADVBP_DATA_DIR", raising=False)
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home-empty"))
    monkeypatch.setenv("ADVBP_MNIST_MIRRORS", "http://127.0.0.1:9/")  # never the network, whatever happens
    f = {"good": with_mnist(tmp_path / "good", data_dir), "empty": tmp_path / "empty"}
    f["empty"].mkdir()
    f["xdg-good"] = tmp_path / "xdg-good"
    with_mnist(f["xdg-good"] / "advbp", data_dir)
    f["home-good"] = tmp_path / "home-good"
    with_mnist(f["home-good"] / ".cache" / "advbp", data_dir)
    return f


def train(tmp_path: Path, *extra: str):
    out = tmp_path / f"run{len(list(tmp_path.glob('run*')))}"
    return run_cli(["train", *TINY, "--out", str(out), *extra])


def assert_missing_in(r, folder: Path) -> None:
    assert r.exit_code == 2, (r.exit_code, r.stderr)
    assert r.stderr.startswith("Error: ") and str(folder / "mnist") in r.stderr, r.stderr


def test_the_option_wins_over_the_environment_and_the_cache(folders, tmp_path, monkeypatch):
    monkeypatch.setenv("ADVBP_DATA_DIR", str(folders["empty"]))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg-empty"))
    r = train(tmp_path, "--data-dir", str(folders["good"]))
    assert r.exit_code == 0, r.stderr
    # ...even when the option's folder is the empty one and the others hold MNIST
    monkeypatch.setenv("ADVBP_DATA_DIR", str(folders["good"]))
    monkeypatch.setenv("XDG_CACHE_HOME", str(folders["xdg-good"]))
    assert_missing_in(train(tmp_path, "--data-dir", str(folders["empty"])), folders["empty"])


def test_the_environment_wins_over_the_cache(folders, tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(folders["xdg-good"]))
    monkeypatch.setenv("ADVBP_DATA_DIR", str(folders["good"]))
    assert train(tmp_path).exit_code == 0
    monkeypatch.setenv("ADVBP_DATA_DIR", str(folders["empty"]))
    assert_missing_in(train(tmp_path), folders["empty"])


def test_without_option_or_environment_the_per_user_cache_is_used(folders, tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(folders["xdg-good"]))
    assert train(tmp_path).exit_code == 0
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg-empty"))
    assert_missing_in(train(tmp_path), tmp_path / "xdg-empty" / "advbp")
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(folders["home-good"]))
    assert train(tmp_path).exit_code == 0  # ~/.cache/advbp


def test_raw_idx_files_give_the_same_run_as_the_gzipped_ones(data_dir, tmp_path):
    raw = tmp_path / "raw" / "mnist"
    raw.mkdir(parents=True)
    for f in (data_dir / "mnist").glob("*-ubyte.gz"):
        (raw / f.name.removesuffix(".gz")).write_bytes(gzip.decompress(f.read_bytes()))
    assert not list(raw.glob("*.gz")) and len(list(raw.iterdir())) == 4
    runs = {}
    for name, folder in (("gz", data_dir), ("raw", tmp_path / "raw")):
        out = tmp_path / "runs" / name  # not inside the data folder: advbp writes only into its own folders
        r = run_cli(["train", *TINY, "--train-limit", "200", "--hidden", "16", "--eval-split", "validation",
                     "--data-dir", str(folder), "--out", str(out)])
        assert r.exit_code == 0, r.stderr
        runs[name] = out
    a, b = (load_file(str(runs[n] / "checkpoint.safetensors")) for n in ("gz", "raw"))
    assert all(np.array_equal(a[k], b[k]) for k in a)
    ra, rb = ([json.loads(line)["eval_error"] for line in (runs[n] / "metrics.jsonl").read_text().splitlines()]
              for n in ("gz", "raw"))
    assert ra == rb
    # a damaged raw file is refused by its own checksum, like a damaged .gz
    victim = raw / "t10k-labels-idx1-ubyte"
    data = bytearray(victim.read_bytes())
    data[200] ^= 0xFF
    victim.write_bytes(bytes(data))
    r = run_cli(["train", *TINY, "--data-dir", str(tmp_path / "raw"), "--out", str(tmp_path / "bad")])
    assert r.exit_code == 2 and "t10k-labels-idx1-ubyte" in r.stderr and "corrupt" in r.stderr, r.stderr
