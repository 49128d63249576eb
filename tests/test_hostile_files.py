"""Issue 8: hostile and broken files get a clear one-line error (exit 2), never a traceback, never code execution.

Checkpoints are safetensors read without pickle. A pickle (or a torch.save zip) renamed to checkpoint.safetensors
must not run its payload; wrong shapes, dtypes, missing or extra tensors, NaN, missing or wrong metadata, and a
config.json that does not match the checkpoint are each refused with a message saying what is wrong. Every case
goes through the real entry point: `advbp eval RUN_DIR`, `advbp eval CHECKPOINT_FILE` and `advbp train --resume`.
(CIFAR-10 python batches are unpickled only by the restricted unpickler; the hostile-pickle case is in test_cifar10_data.py.)
"""

from __future__ import annotations

import ast
import hashlib
import json
import os
import pickle
import shutil
import struct
from pathlib import Path

import numpy as np
import pytest
from safetensors import safe_open
from safetensors.numpy import save_file

REPO = Path(__file__).resolve().parent.parent
CKPT = "checkpoint.safetensors"


class Payload:
    """Unpickling this creates a folder: proof that code ran."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


@pytest.fixture(scope="module")
def good_run(tmp_path_factory, data_dir):
    from conftest import run_cli

    out = tmp_path_factory.mktemp("hostile") / "run"
    res = run_cli(["train", "--data-dir", str(data_dir), "--no-download", "--train-limit", "200", "--eval-limit", "50",
                   "--hidden", "20", "--epochs", "1", "--backend", "numpy", "--out", str(out)])
    assert res.exit_code == 0, res.stderr
    return out


@pytest.fixture
def run(good_run, tmp_path):
    dst = tmp_path / "run"
    shutil.copytree(good_run, dst)
    return dst


def tensors_and_meta(path: Path):
    with safe_open(str(path), framework="numpy") as fh:
        return {k: fh.get_tensor(k) for k in fh.keys()}, dict(fh.metadata() or {})


def raw_safetensors(header: dict, data: bytes = b"") -> bytes:
    h = json.dumps(header).encode()
    h += b" " * (-len(h) % 8)
    return struct.pack("<Q", len(h)) + h + data


def snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file() and p.name != ".lock"}


def assert_refused(res, *needles: str) -> str:
    assert "Traceback" not in res.stderr
    lines = res.stderr.splitlines()
    assert res.exit_code == 2, (res.exit_code, res.stderr)
    assert res.stderr.count("\n") == 1 and lines[0].startswith("Error: "), res.stderr
    for n in needles:
        assert n in lines[0], (n, lines[0])
    return lines[0]


# ------------------------------------------------------------------------------ the checkpoint file itself


def _write_ckpt(run: Path, tensors: dict, meta: dict | None, sign: bool = True):
    """A checkpoint as a forger would write it: with `sign`, the metadata's config digest is made to fit its config
    (so what is tested is the content, not the digest)."""
    if meta is not None and sign:
        meta = {k: v for k, v in meta.items() if k != "config_sha256"}
        if "config" in meta:
            meta["config_sha256"] = hashlib.sha256(meta["config"].encode()).hexdigest()
    save_file(tensors, str(run / CKPT), metadata=meta)


def _mutate(run: Path, case: str, marker: Path) -> tuple[str, ...]:
    """Breaks run/checkpoint.safetensors as `case` says; returns what the error must mention."""
    path = run / CKPT
    t, meta = tensors_and_meta(path)
    if case == "pickle-renamed":
        path.write_bytes(pickle.dumps({"layers.0.weight": Payload(marker)}))
        return ("not a readable safetensors checkpoint",)
    if case == "torch-save-renamed":
        import torch

        torch.save({"layers.0.weight": torch.zeros(3), "x": Payload(marker)}, str(path))
        return ("not a readable safetensors checkpoint",)
    if case == "empty":
        path.write_bytes(b"")
        return ("not a readable safetensors checkpoint",)
    if case == "truncated":
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
        return ("not a readable safetensors checkpoint",)
    if case == "huge-header-length":
        path.write_bytes(struct.pack("<Q", 1 << 40) + b"{}")
        return ("not a readable safetensors checkpoint",)
    if case == "header-promises-missing-data":
        path.write_bytes(raw_safetensors(
            {"__metadata__": meta, "layers.0.weight": {"dtype": "F32", "shape": [784, 20], "data_offsets": [0, 62720]}}))
        return ("not a readable safetensors checkpoint",)
    if case == "wrong-shape":
        t["layers.0.weight"] = np.zeros((784, 21), np.float32)
        _write_ckpt(run, t, meta)
        return ("layers.0.weight has shape (784, 21)", "another architecture")
    if case == "transposed":
        t["layers.1.weight"] = np.ascontiguousarray(t["layers.1.weight"].T)
        _write_ckpt(run, t, meta)
        return ("layers.1.weight has shape (10, 20)",)
    if case == "int-dtype":
        t["layers.0.bias"] = t["layers.0.bias"].astype(np.int32)
        _write_ckpt(run, t, meta)
        return ("layers.0.bias has dtype int32",)
    if case == "float16":
        t["layers.1.weight"] = t["layers.1.weight"].astype(np.float16)
        _write_ckpt(run, t, meta)
        return ("layers.1.weight has dtype float16",)
    if case == "missing-tensor":
        del t["layers.1.bias"]
        _write_ckpt(run, t, meta)
        return ("missing ['layers.1.bias']",)
    if case == "extra-tensor":
        t["layers.2.weight"] = np.zeros((10, 10), np.float32)
        _write_ckpt(run, t, meta)
        return ("unexpected ['layers.2.weight']",)
    if case == "nan":
        t["layers.0.weight"][3, 4] = np.nan
        _write_ckpt(run, t, meta)
        return ("layers.0.weight holds NaN or Inf",)
    if case == "no-metadata":
        _write_ckpt(run, t, None)
        return ("is not an advbp checkpoint", "format is None")
    if case == "other-format":
        _write_ckpt(run, t, {**meta, "format": "someone-else/3"})
        return ("is not an advbp checkpoint", "'someone-else/3'")
    if case == "bad-epoch":
        _write_ckpt(run, t, {**meta, "epoch": "1; rm -rf /"})
        return ("metadata epoch is '1; rm -rf /'",)
    if case == "negative-epoch":
        _write_ckpt(run, t, {**meta, "epoch": "-3"})
        return ("metadata epoch is '-3'",)
    raise AssertionError(case)


CHECKPOINT_CASES = ["pickle-renamed", "torch-save-renamed", "empty", "truncated", "huge-header-length",
                    "header-promises-missing-data", "wrong-shape", "transposed", "int-dtype", "float16",
                    "missing-tensor", "extra-tensor", "nan", "no-metadata", "other-format", "bad-epoch",
                    "negative-epoch"]


@pytest.mark.parametrize("case", CHECKPOINT_CASES)
def test_broken_checkpoint_is_refused_by_eval(case, run, cli, tmp_path):
    marker = tmp_path / "PWNED"
    needles = _mutate(run, case, marker)
    before = snapshot(run)
    assert_refused(cli(["eval", str(run)]), str(run / CKPT), *needles)
    assert_refused(cli(["eval", str(run / CKPT)]), str(run / CKPT), *needles)
    assert not marker.exists(), "loading the file ran its pickle payload"
    assert snapshot(run) == before


@pytest.mark.parametrize("case", ["pickle-renamed", "truncated", "wrong-shape", "float16", "missing-tensor",
                                  "no-metadata", "bad-epoch"])
def test_broken_checkpoint_is_refused_by_resume_without_touching_the_run(case, run, cli, tmp_path, data_dir):
    marker = tmp_path / "PWNED"
    needles = _mutate(run, case, marker)
    before = snapshot(run)
    res = cli(["train", "--resume", str(run), "--epochs", "2", "--data-dir", str(data_dir), "--no-download"])
    assert_refused(res, *needles)
    assert not marker.exists()
    assert snapshot(run) == before, "a refused resume changed the run directory"


# -------------------------------------------------- metadata config, when a checkpoint is loaded on its own


@pytest.mark.parametrize("config,needle", [
    ("not json {", "carries no readable config"),
    (json.dumps({"model": {"hidden": [-4]}}), "is not valid"),
    (json.dumps([1, 2, 3]), "is not valid"),
    (json.dumps({"model": {"hidden": [30]}}), "layers.0.weight has shape (784, 20)"),
])
def test_checkpoint_file_with_bad_metadata_config(config, needle, run, cli):
    t, meta = tensors_and_meta(run / CKPT)
    _write_ckpt(run, t, {**meta, "config": config})
    assert_refused(cli(["eval", str(run / CKPT)]), needle)


def test_metadata_without_config(run, cli):
    t, meta = tensors_and_meta(run / CKPT)
    del meta["config"]
    _write_ckpt(run, t, meta)
    assert_refused(cli(["eval", str(run / CKPT)]), "carries no readable config")


def test_checkpoint_from_another_run_with_the_same_shapes_is_refused(run, cli, data_dir):
    """Same tensor shapes, different recipe in the metadata (a tanh checkpoint copied into a relu run)."""
    t, meta = tensors_and_meta(run / CKPT)
    other = json.loads(meta["config"])
    other["model"]["activation"] = "tanh"
    _write_ckpt(run, t, {**meta, "config": json.dumps(other)})
    assert_refused(cli(["eval", str(run)]), "trained with model.activation='tanh'",
                   "config.json says model.activation='relu'", "belongs to another run")
    # on its own, the file is a consistent tanh network: loading it is fine
    res = cli(["eval", str(run / CKPT), "--limit", "5", "--data-dir", str(data_dir), "--no-download", "--json"])
    assert res.exit_code == 0, res.stderr


# ------------------------------------------------------------------------------------------- config.json


def _set_config(run: Path, text: str | bytes):
    p = run / "config.json"
    p.write_bytes(text if isinstance(text, bytes) else text.encode())


def _edit_config(run: Path, **model):
    rec = json.loads((run / "config.json").read_text())
    rec["config"]["model"].update(model)
    _set_config(run, json.dumps(rec))


@pytest.mark.parametrize("case", ["other-architecture", "other-activation", "not-json", "pickle", "json-list",
                                  "no-config", "invalid-values"])
def test_config_json_that_does_not_match(case, run, cli, tmp_path, data_dir):
    marker = tmp_path / "PWNED"
    if case == "other-architecture":
        _edit_config(run, hidden=[30, 30])
        needles = ("does not fit a 784-30-30-10 network", "missing ['layers.2.bias', 'layers.2.weight']")
    elif case == "other-activation":
        _edit_config(run, activation="logistic")
        needles = ("trained with model.activation='relu'", "says model.activation='logistic'")
    elif case == "not-json":
        _set_config(run, "{ this is not json")
        needles = ("config.json is not valid JSON",)
    elif case == "pickle":
        _set_config(run, pickle.dumps(Payload(marker)))
        needles = ("config.json is not valid JSON",)
    elif case == "json-list":
        _set_config(run, "[1, 2]")
        needles = ("is not an advbp run config",)
    elif case == "no-config":
        _set_config(run, json.dumps({"something": "else"}))
        needles = ("config.json",)
    elif case == "invalid-values":
        rec = json.loads((run / "config.json").read_text())
        rec["config"]["train"]["lr"] = -1
        _set_config(run, json.dumps(rec))
        needles = ("config.json",)
    before = snapshot(run)
    assert_refused(cli(["eval", str(run)]), *needles)  # the whole config is checked, not only the model
    res = cli(["train", "--resume", str(run), "--epochs", "2", "--data-dir", str(data_dir), "--no-download"])
    assert_refused(res, *needles)
    assert not marker.exists()
    assert snapshot(run) == before


def test_corrupt_metrics_stop_a_resume(run, cli, data_dir):
    (run / "metrics.jsonl").write_bytes(pickle.dumps([1, 2]))
    res = cli(["train", "--resume", str(run), "--epochs", "2", "--data-dir", str(data_dir), "--no-download"])
    assert_refused(res, "metrics.jsonl is corrupt")
    (run / "metrics.jsonl").write_text('{"epoch": 7}\n')
    res = cli(["train", "--resume", str(run), "--epochs", "2", "--data-dir", str(data_dir), "--no-download"])
    assert_refused(res, "metrics.jsonl is corrupt")


def test_a_folder_named_like_the_checkpoint(run, cli):
    (run / CKPT).unlink()
    (run / CKPT).mkdir()
    assert_refused(cli(["eval", str(run)]), "no checkpoint.safetensors yet")


# ------------------------------------------------------------------------------------------- attack sets


def test_pickled_attack_set_does_not_run_code(tmp_path):
    from advbp_cli.attack_sets import load_set
    from advbp_cli.errors import UsageProblem

    from conftest import forge_set

    marker = tmp_path / "PWNED"
    # every digest fits (as a forger would make it), so the file really reaches np.load
    path = forge_set(tmp_path / "sets", "fgsm-eps0.1", {"x": np.array([Payload(marker)], dtype=object),
                     "y": np.zeros(1, np.int64), "indices": np.zeros(1, np.int64)},
                     {"eps": 0.1, "clip": None, "dataset": {"name": "mnist", "split": "test", "source_file": "test"}})
    with pytest.raises(UsageProblem, match="without pickle"):
        load_set(path)
    assert not marker.exists()


# ------------------------------------------------------------------------------------ no pickle, anywhere


# The one module allowed to import pickle: the CIFAR-10 python-layout reader, through a restricted Unpickler
# whose find_class admits only plain numpy arrays (checked below and in tests/test_cifar10_data.py).
RESTRICTED_UNPICKLER_MODULE = "advbp_cli/data/cifar10.py"


def test_advbp_cli_never_unpickles():
    bad = []
    for src in sorted((REPO / "advbp_cli").rglob("*.py")):
        tree = ast.parse(src.read_text())
        for node in ast.walk(tree):
            rel = f"{src.relative_to(REPO)}:{getattr(node, 'lineno', '?')}"
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                names = [a.name for a in node.names] + ([node.module] if isinstance(node, ast.ImportFrom) else [])
                if any(n and n.split(".")[0] in ("pickle", "cPickle", "dill", "joblib", "cloudpickle") for n in names):
                    if str(src.relative_to(REPO)) != RESTRICTED_UNPICKLER_MODULE:
                        bad.append(f"{rel}: imports a pickle module")
            if isinstance(node, ast.Call):
                f = node.func
                name = f"{getattr(f.value, 'id', '?')}.{f.attr}" if isinstance(f, ast.Attribute) else getattr(f, "id", "")
                if name in ("pickle.load", "pickle.loads", "pickle.Unpickler"):
                    bad.append(f"{rel}: unrestricted {name}")
                if name in ("torch.load", "np.load", "numpy.load"):
                    kw = {k.arg: k.value for k in node.keywords}
                    safe = (name == "torch.load" and isinstance(kw.get("weights_only"), ast.Constant)
                            and kw["weights_only"].value is True) or (
                        name != "torch.load" and isinstance(kw.get("allow_pickle"), ast.Constant)
                        and kw["allow_pickle"].value is False)
                    if not safe:
                        bad.append(f"{rel}: {ast.unparse(node)[:80]}")
    assert not bad, "\n".join(bad)
    tree = ast.parse((REPO / RESTRICTED_UNPICKLER_MODULE).read_text())
    unpicklers = [c for c in ast.walk(tree) if isinstance(c, ast.ClassDef)
                  and any(ast.unparse(b) == "pickle.Unpickler" for b in c.bases)]
    assert unpicklers and all(any(isinstance(f, ast.FunctionDef) and f.name == "find_class" for f in c.body)
                              for c in unpicklers)


def test_advbp_checkpoints_are_laid_out_as_safetensors_writes_them(tmp_path):
    """save_checkpoint writes the bytes itself (deterministic: sorted names and keys); the layout must still be
    the safetensors one: the header padded with spaces so the data starts 8-byte aligned, tensors in name order,
    back to back. safetensors' own writer pads the same way (checked on the same tensors)."""
    from advbp_cli.checkpoint import save_checkpoint

    rng = np.random.default_rng(0)
    for n in range(1, 9):  # header lengths of every residue mod 8
        params = {f"layers.{i}.weight": rng.normal(size=(3, n + i)).astype(np.float32) for i in range(2)}
        path = tmp_path / f"c{n}.safetensors"
        save_checkpoint(path, params, {"model": {"hidden": [n]}}, n)
        raw = path.read_bytes()
        (head_len,) = struct.unpack("<Q", raw[:8])
        assert (8 + head_len) % 8 == 0, n
        head = raw[8:8 + head_len]
        assert head_len - len(head.rstrip(b" ")) < 8  # padding only, spaces only (JSON ignores them)
        header = json.loads(head)
        data = raw[8 + head_len:]
        for name in sorted(params):
            lo, hi = header[name]["data_offsets"]
            np.testing.assert_array_equal(np.frombuffer(data[lo:hi], "<f4").reshape(params[name].shape), params[name])
        assert len(data) == sum(p.nbytes for p in params.values())
        ref = tmp_path / f"ref{n}.safetensors"
        save_file(params, str(ref), metadata={"x": "y" * n})
        (ref_len,) = struct.unpack("<Q", ref.read_bytes()[:8])
        assert (8 + ref_len) % 8 == 0  # the convention advbp follows
