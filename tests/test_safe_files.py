"""Issue 13: no silent wrong answer, no user file lost. Per class of the issue, for every command that writes:

1. Everything read is verified: attack sets against the digests of their folder (tampered, swapped, missing,
   forged-but-consistent non-finite or out-of-range inputs, mixed folders, loose files), and a folder of sets is
   written as a whole: real SIGKILLs between its files, inside the move into place and at random moments leave
   the old sets or the new ones, never a mix, and the next run removes the leftovers.
2. A run is one record: config.json, the checkpoint's metadata, metrics and summary must agree; an edited field is
   refused by `train --resume`, `eval`, `attack`, `report` and `sweep`, naming it; what may change on resume is
   recorded; checkpoints have deterministic bytes.
3. advbp only deletes what advbp wrote: folders without the marker are refused by train, sweep (also --resume),
   attack and report; --overwrite keeps a user's own files.
4. No traceback: paths that cannot be written, a real file-size limit (RLIMIT_FSIZE, as `ulimit -f`), a full disk
   (fault injection), permission errors (injected: the tests run as root) and memory errors (a real
   `--hidden 100000,100000` under RLIMIT_AS, injected ones elsewhere) end in one line, exit 2, nothing left behind.
5. Non-finite is never an answer: NaN/Inf options, overflowing eps, NaN outputs, metrics and summaries.
"""

from __future__ import annotations

import errno
import json
import os
import random
import resource
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import forge_set, read_set_arrays, run_cli, sha256_file

MARKER = ".advbp-folder.json"
TINY = ["--no-download", "--train-limit", "300", "--eval-limit", "100", "--hidden", "20", "--backend", "numpy",
        "--eval-split", "validation", "--no-eval-train-error"]
SWEEP = ["mnist-relu-2x400-adv", "--seeds", "1", "--epochs", "1", "--train-limit", "200", "--eval-limit", "50",
         "--hidden", "8", "--backend", "numpy", "--no-eval-train-error", "--no-download"]


# --------------------------------------------------------------------------------------------------- helpers
def train_args(data_dir, out, *extra, epochs=2):
    return ["train", "--data-dir", str(data_dir), *TINY, "--epochs", str(epochs), "--out", str(out), *extra]


def attack_args(data_dir, source, out, *extra, eps="0.1,0.2"):
    return ["attack", str(source), "--eps", eps, "--limit", "100", "--data-dir", str(data_dir), "--no-download",
            "--out", str(out), *extra]


def report_args(data_dir, source, out, *extra):
    return ["report", str(source), "--out", str(out), "--limit", "50", "--tiles", "4", "--data-dir", str(data_dir),
            "--no-download", *extra]


def sweep_args(data_dir, out, *extra):
    return ["sweep", *SWEEP, "--data-dir", str(data_dir), "--out", str(out), *extra]


def curve_args(data_dir, source, sets, curve, *extra):
    return ["eval", str(source), "--attack-set", str(sets), "--limit", "50", "--data-dir", str(data_dir),
            "--no-download", "--curve-out", str(curve), *extra]


def one_line(res, *needles, code=2) -> str:
    assert res.exit_code == code, (res.exit_code, res.stderr)
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert "Traceback" not in res.stderr, res.stderr
    assert lines and lines[-1].startswith("Error: "), res.stderr
    assert len([ln for ln in lines if ln.startswith("Error")]) == 1, res.stderr
    for needle in needles:
        assert needle in lines[-1], (needle, lines[-1])
    return lines[-1]


def tree(folder: Path) -> dict[str, bytes]:
    """Every file under `folder` (hidden ones too) with its bytes: a snapshot to compare."""
    folder = Path(folder)
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def user_folder(path: Path) -> Path:
    """A user's own folder with files named like advbp's, a temporary file and a note."""
    path.mkdir(parents=True)
    (path / "config.json").write_text('{"mine": true}\n')
    (path / "metrics.jsonl").write_text('{"epoch": 1}\n')
    (path / "summary.json").write_text('{"headline": "mine"}\n')
    (path / "manifest.json").write_text('{"mine": 1}\n')
    (path / ".draft.tmp").write_text("unsaved work")
    (path / ".config.json.abc123.tmp").write_text("also mine")
    (path / "notes.txt").write_text("my notes")
    return path


def env() -> dict:
    e = dict(os.environ)
    e.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", PYTHONUNBUFFERED="1",
             ADVBP_MNIST_MIRRORS="http://127.0.0.1:9/")
    return e


def advbp_process(args, cwd, fsize: int | None = None, address_space: int | None = None, script: str | None = None):
    """`advbp ARGS` in a real process, optionally under RLIMIT_FSIZE / RLIMIT_AS (what `ulimit -f` / `ulimit -v`
    set) or with a fault-injecting `script` run before the entry point."""
    def limits():
        if fsize is not None:
            resource.setrlimit(resource.RLIMIT_FSIZE, (fsize, fsize))
        if address_space is not None:
            resource.setrlimit(resource.RLIMIT_AS, (address_space, address_space))

    code = (script or "") + "\nimport sys\nfrom advbp_cli.cli import main\nmain(sys.argv[1:])\n"
    return subprocess.Popen([sys.executable, "-c", code, *map(str, args)], cwd=cwd, env=env(), preexec_fn=limits,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


class Res:
    def __init__(self, proc):
        self.stdout, self.stderr = proc.communicate(timeout=300)
        self.exit_code = proc.returncode


def no_leftovers(folder: Path, users: tuple[str, ...] = ()) -> None:
    """No lock, no temporary, no staging folder (the user's own files aside): what a finished command leaves."""
    left = [p.name for p in folder.rglob("*") if p.name not in users and (
        p.name == ".lock" or p.name.endswith(".tmp") or p.name == ".advbp-staging")]
    assert not left, left


# --------------------------------------------------------------------------------------------------- shared runs
@pytest.fixture(scope="module")
def world(tmp_path_factory, data_dir):
    """Two tiny runs (seeds 0 and 1), a folder of sets from each, and a one-run sweep."""
    root = tmp_path_factory.mktemp("safe-files")
    w = {"root": root}
    for name, seed in (("a", "0"), ("b", "1")):
        r = run_cli(train_args(data_dir, root / name, "--seed", seed))
        assert r.exit_code == 0, r.stderr
        w[name] = root / name
        r = run_cli(attack_args(data_dir, root / name, root / f"sets-{name}"))
        assert r.exit_code == 0, r.stderr
        w[f"sets-{name}"] = root / f"sets-{name}"
    r = run_cli(sweep_args(data_dir, root / "sweep"))
    assert r.exit_code == 0, r.stderr
    w["sweep"] = root / "sweep"
    return w


def copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst, symlinks=True)
    return dst


def eval_sets(data_dir, model, sets) -> list[dict]:
    r = run_cli(["eval", str(model), "--attack-set", str(sets), "--limit", "20", "--data-dir", str(data_dir), "--json"])
    assert r.exit_code == 0, r.stderr
    return json.loads(r.stdout)["attacks"][1:]


# ======================================================================= 1. every attack set is verified on read
def _tamper(folder: Path, case: str, world) -> tuple[Path, tuple[str, ...]]:
    """Breaks `folder` (a copy of sets-a) as `case` says; returns the file to name and what the error must say."""
    npz, side = folder / "fgsm-eps0.1.npz", folder / "fgsm-eps0.1.json"
    if case in ("x-rewritten", "x-nan"):
        arrays, manifest = read_set_arrays(npz)
        arrays["x"] = arrays["x"].copy()
        arrays["x"][0, :5] = np.nan if case == "x-nan" else 0.5
        arrays["manifest"] = np.frombuffer(json.dumps(manifest).encode(), np.uint8)
        np.savez(npz, **arrays)
        return npz, ("sha256", "changed or replaced")
    if case == "set-of-another-run":  # the same name and shape, from the other model
        shutil.copy(world["sets-b"] / npz.name, npz)
        return npz, ("sha256",)
    if case == "manifest-edited":
        m = json.loads(side.read_text())
        m["source_error"] = 1.0
        side.write_text(json.dumps(m))
        return side, ("sha256", "manifest.json")
    if case == "manifest-of-another-run":
        shutil.copy(world["sets-b"] / side.name, side)
        return side, ("sha256",)
    if case == "file-missing":
        npz.unlink()
        return npz, ("is missing",)
    raise AssertionError(case)


@pytest.mark.parametrize("case", ["x-rewritten", "x-nan", "set-of-another-run", "manifest-edited",
                                  "manifest-of-another-run", "file-missing"])
def test_a_changed_set_is_refused_naming_the_file(case, world, data_dir, tmp_path, cli):
    folder = copy(world["sets-a"], tmp_path / "sets")
    bad, needles = _tamper(folder, case, world)
    before = tree(folder)
    for arg in (folder, folder / "fgsm-eps0.1.json", folder / "fgsm-eps0.1.npz"):
        if not arg.exists():
            continue
        res = cli(["eval", str(world["a"]), "--attack-set", str(arg), "--limit", "20", "--data-dir", str(data_dir)])
        one_line(res, str(bad), *needles)
    assert tree(folder) == before  # a reader changes nothing
    # the untouched set of the same folder is still usable on its own
    assert eval_sets(data_dir, world["a"], folder / "fgsm-eps0.2.json")[0]["error"] >= 0


def test_idx_sets_are_verified_too(world, data_dir, tmp_path, cli):
    out = tmp_path / "idx"
    assert cli(attack_args(data_dir, world["a"], out, "--format", "idx", eps="0.1")).exit_code == 0
    assert eval_sets(data_dir, world["a"], out)[0]["attack"] == "whitebox-set"
    images = out / "fgsm-eps0.1-images-idx3-ubyte"
    raw = bytearray(images.read_bytes())
    raw[-1] ^= 0xFF  # one pixel of the last image
    images.write_bytes(bytes(raw))
    one_line(cli(["eval", str(world["a"]), "--attack-set", str(out), "--data-dir", str(data_dir)]), str(images), "sha256")


@pytest.mark.parametrize("case", ["nan", "inf", "outside-clip"])
def test_consistent_but_non_finite_or_out_of_range_sets_are_refused(case, world, data_dir, tmp_path, cli):
    """Every digest recomputed (a forger's set): the content itself is refused."""
    arrays, manifest = read_set_arrays(world["sets-a"] / "fgsm-eps0.1.npz")
    arrays["x"] = arrays["x"].copy()
    arrays["x"][3, 7] = {"nan": np.nan, "inf": np.inf, "outside-clip": 1.5}[case]
    bad = forge_set(tmp_path / "forged", "fgsm-eps0.1", arrays, manifest)
    needle = "outside the clipping range" if case == "outside-clip" else "NaN or infinite"
    one_line(cli(["eval", str(world["a"]), "--attack-set", str(bad), "--data-dir", str(data_dir)]), str(bad), needle)


def test_a_folder_mixing_sets_of_two_attacks_is_refused(world, data_dir, tmp_path, cli):
    """What a kill of the old `attack --overwrite` between files left, rebuilt with every digest consistent."""
    folder = copy(world["sets-a"], tmp_path / "mixed")
    fields = {k: v for k, v in json.loads((folder / "manifest.json").read_text()).items() if k != "sets"}
    arrays, manifest = read_set_arrays(world["sets-b"] / "fgsm-eps0.2.npz")
    forge_set(folder, "fgsm-eps0.2", arrays, json.loads((world["sets-b"] / "fgsm-eps0.2.json").read_text()), fields)
    one_line(cli(["eval", str(world["a"]), "--attack-set", str(folder), "--data-dir", str(data_dir)]),
             "fgsm-eps0.2.json", "mixes sets of different attacks")


def test_loose_and_legacy_sets_are_not_trusted(world, data_dir, tmp_path, cli):
    loose = tmp_path / "loose"
    loose.mkdir()
    shutil.copy(world["sets-a"] / "fgsm-eps0.1.npz", loose)
    one_line(cli(["eval", str(world["a"]), "--attack-set", str(loose / "fgsm-eps0.1.npz"), "--data-dir", str(data_dir)]),
             "holds no manifest.json")
    legacy = copy(world["sets-a"], tmp_path / "legacy")
    record = json.loads((legacy / "manifest.json").read_text())
    for s in record["sets"]:
        del s["manifest_sha256"]
    (legacy / "manifest.json").write_text(json.dumps(record))
    one_line(cli(["eval", str(world["a"]), "--attack-set", str(legacy), "--data-dir", str(data_dir)]),
             "without the sha256 of their manifests")
    unlisted = copy(world["sets-a"], tmp_path / "unlisted")
    record = json.loads((unlisted / "manifest.json").read_text())
    record["sets"] = record["sets"][1:]
    (unlisted / "manifest.json").write_text(json.dumps(record))
    one_line(cli(["eval", str(world["a"]), "--attack-set", str(unlisted / "fgsm-eps0.1.npz"), "--data-dir",
                  str(data_dir)]), "is not one of the sets")


# ------------------------------------------------------------ 1b. a folder of sets is written as a whole (real kills)
KILL_AFTER_WRITE_SET = """
import os, signal
import advbp_cli.attack_folder as cmd
real = cmd.write_set
count = [0]
def write_set(*a, **k):
    files = real(*a, **k)
    count[0] += 1
    if count[0] == 2:
        os.kill(os.getpid(), signal.SIGKILL)  # between the files of the folder: set 2 of 3 written
    return files
cmd.write_set = write_set
"""

KILL_WHILE_MOVING_INTO_PLACE = """
import os, signal
from pathlib import Path
real = os.replace
moved = [0]
def replace(src, dst):
    if Path(src).parent.name == ".advbp-staging" and Path(dst).parent.name != ".advbp-staging":
        real(src, dst)
        moved[0] += 1
        if moved[0] == 2:  # committed, two of its files moved into place, the others not yet
            os.kill(os.getpid(), signal.SIGKILL)
        return
    return real(src, dst)
os.replace = replace
"""


def _sources(folder: Path, data_dir) -> set[str]:
    """The source checkpoints of every set in a folder, each loaded through the verifying reader."""
    from advbp_cli.attack_sets import load_set, sets_in_dir

    return {load_set(p).manifest["source"]["checkpoint_sha256"] for p in sets_in_dir(folder)}


def test_a_kill_between_the_files_of_an_overwrite_leaves_the_old_sets(world, data_dir, tmp_path, cli):
    folder = tmp_path / "sets"
    assert cli(attack_args(data_dir, world["a"], folder, eps="0.1,0.2,0.3")).exit_code == 0
    (folder / "notes.txt").write_text("mine")
    before = tree(folder)
    proc = advbp_process(attack_args(data_dir, world["b"], folder, "--overwrite", eps="0.1,0.2,0.3"), tmp_path,
                         script=KILL_AFTER_WRITE_SET)
    res = Res(proc)
    assert res.exit_code == -signal.SIGKILL, res.stderr
    assert (folder / ".advbp-staging").is_dir()  # the kill really landed inside the write
    assert {k: v for k, v in tree(folder).items() if not k.startswith((".advbp-staging", ".lock"))} == \
        {k: v for k, v in before.items() if not k.startswith(".lock")}
    a_sha = sha256_file(world["a"] / "checkpoint.safetensors")
    assert _sources(folder, data_dir) == {a_sha}  # readers see the old sets, all of them
    assert len(eval_sets(data_dir, world["a"], folder)) == 3
    # the next run removes what the killed one left, and writes its sets as a whole
    assert cli(attack_args(data_dir, world["b"], folder, "--overwrite", eps="0.1,0.2,0.3")).exit_code == 0
    assert _sources(folder, data_dir) == {sha256_file(world["b"] / "checkpoint.safetensors")}
    no_leftovers(folder)
    assert (folder / "notes.txt").read_text() == "mine"


def test_a_kill_while_moving_the_new_sets_into_place_leaves_the_new_ones(world, data_dir, tmp_path, cli):
    folder = tmp_path / "sets"
    assert cli(attack_args(data_dir, world["a"], folder, eps="0.1,0.2,0.3")).exit_code == 0
    res = Res(advbp_process(attack_args(data_dir, world["b"], folder, "--overwrite", eps="0.2,0.3,0.4"), tmp_path,
                            script=KILL_WHILE_MOVING_INTO_PLACE))
    assert res.exit_code == -signal.SIGKILL, res.stderr
    assert (folder / ".advbp-staging" / "commit.json").is_file()  # committed, not all moved: the window was hit
    b_sha = sha256_file(world["b"] / "checkpoint.safetensors")
    assert _sources(folder, data_dir) == {b_sha}  # readers see the new sets, and only them
    rows = eval_sets(data_dir, world["b"], folder)
    assert [r["eps"] for r in rows] == [0.2, 0.3, 0.4] and {r["attack"] for r in rows} == {"whitebox-set"}
    # the next writer finishes the move (eps 0.1 of the old sets is gone), then writes its own sets
    assert cli(attack_args(data_dir, world["a"], folder, "--overwrite", eps="0.5")).exit_code == 0
    assert sorted(p.name for p in folder.iterdir() if p.suffix == ".npz") == ["fgsm-eps0.5.npz"]
    no_leftovers(folder)


def test_sigkill_at_random_moments_of_an_overwrite_leaves_old_or_new_never_a_mix(world, data_dir, tmp_path, cli):
    folder = tmp_path / "sets"
    many = "0.01:0.2:0.01"  # 20 sets, so the write phase lasts long enough to be hit
    assert cli(attack_args(data_dir, world["a"], folder, eps=many)).exit_code == 0
    shas = {n: sha256_file(world[n] / "checkpoint.safetensors") for n in ("a", "b")}
    seen, rnd = [], random.Random()
    for k in range(3):
        source = ("b", "a", "b")[k]
        proc = advbp_process(attack_args(data_dir, world[source], folder, "--overwrite", eps=many), tmp_path)
        t_end = time.monotonic() + 120
        while not (folder / ".advbp-staging").exists() and proc.poll() is None and time.monotonic() < t_end:
            time.sleep(0.002)
        time.sleep(rnd.uniform(0, 0.25))
        proc.send_signal(signal.SIGKILL)
        proc.communicate()
        sources = _sources(folder, data_dir)
        assert sources in ({shas["a"]}, {shas["b"]}), "a mix of two attacks after a kill"
        assert len(eval_sets(data_dir, world["a"], folder)) == 20
        seen.append(sources == {shas[source]})
    # the next run completes cleanly whatever was left
    assert cli(attack_args(data_dir, world["a"], folder, "--overwrite", eps="0.1")).exit_code == 0
    no_leftovers(folder)


# ====================================================================================== 2. a run is one record
@pytest.mark.parametrize("field,value", [("train.eps", 0.3), ("train.lr", 0.2), ("runtime.seed", 7),
                                         ("data.train_limit", 250), ("data.preprocess", "simple"),
                                         ("runtime.dtype", "float64"), ("train.mean_last", 3)])
def test_an_edited_config_is_refused_by_every_command(field, value, world, data_dir, tmp_path, cli):
    run = copy(world["a"], tmp_path / "run")
    record = json.loads((run / "config.json").read_text())
    section, key = field.split(".")
    record["config"][section][key] = value
    (run / "config.json").write_text(json.dumps(record))
    before = tree(run)
    needles = (f"{field}=", str(run / "config.json"), "edited after training")
    one_line(cli(["train", "--resume", str(run), "--epochs", "3", "--data-dir", str(data_dir), "--no-download"]),
             *needles)
    one_line(cli(["eval", str(run), "--limit", "20", "--data-dir", str(data_dir)]), *needles)
    one_line(cli(attack_args(data_dir, run, tmp_path / "sets")), *needles)
    one_line(cli(report_args(data_dir, run, tmp_path / "rep")), *needles)
    assert tree(run) == before
    assert not (tmp_path / "sets").exists() and not (tmp_path / "rep").exists()


def test_edited_metrics_summary_and_metadata_are_refused(world, data_dir, tmp_path, cli):
    import hashlib

    from safetensors import safe_open
    from safetensors.numpy import save_file

    run = copy(world["a"], tmp_path / "run")
    rows = [json.loads(ln) for ln in (run / "metrics.jsonl").read_text().splitlines()]
    rows[0]["eval_error"] = 1.0  # a better-looking curve
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    one_line(cli(report_args(data_dir, run, tmp_path / "rep")), "metrics.jsonl differs")
    one_line(cli(["train", "--resume", str(run), "--epochs", "3", "--data-dir", str(data_dir), "--no-download"]),
             "metrics.jsonl differs")
    # a sweep's aggregate is computed from summaries that must match their runs
    sweep = copy(world["sweep"], tmp_path / "sweep")
    summary = next(sweep.glob("*/seed-0/summary.json"))
    s = json.loads(summary.read_text())
    s["headline"]["value"] = 0.5
    summary.write_text(json.dumps(s))
    one_line(cli(["sweep", "--resume", "--out", str(sweep), "--data-dir", str(data_dir), "--no-download"]),
             str(summary), "does not match its run")
    # metadata edited without its digest
    ckpt = copy(world["a"], tmp_path / "run2") / "checkpoint.safetensors"
    with safe_open(str(ckpt), framework="numpy") as fh:
        tensors, meta = {k: fh.get_tensor(k) for k in fh.keys()}, dict(fh.metadata())
    cfg = json.loads(meta["config"])
    cfg["train"]["lr"] = 0.5
    save_file(tensors, str(ckpt), metadata={**meta, "config": json.dumps(cfg)})
    one_line(cli(["eval", str(ckpt), "--data-dir", str(data_dir)]), "the metadata was edited")
    meta["config_sha256"] = hashlib.sha256(json.dumps(cfg).encode()).hexdigest()
    save_file(tensors, str(ckpt), metadata={**meta, "config": json.dumps(cfg)})  # consistent, but not config.json's
    one_line(cli(["eval", str(ckpt.parent), "--data-dir", str(data_dir)]), "train.lr=0.5")


def test_what_may_change_on_resume_is_recorded_as_a_resume_event(world, data_dir, tmp_path, cli):
    run = copy(world["a"], tmp_path / "run")
    res = cli(["train", "--resume", str(run), "--epochs", "3", "--backend", "torch", "--data-dir", str(data_dir),
               "--no-download"])
    assert res.exit_code == 0, res.stderr
    event = json.loads((run / "config.json").read_text())["resumed"][-1]
    assert event["after_epoch"] == 2
    assert event["changed"]["train.epochs"] == [2, 3] and event["changed"]["runtime.backend"] == ["numpy", "torch"]
    assert event["changed"]["resolved.backend"] == ["numpy", "torch"]


def test_the_partition_of_config_fields_is_declared_in_one_place():
    from advbp_cli.checkpoint import MAY_CHANGE, differing_fields, flat_fields
    from advbp_cli.config import RunConfig

    fields = flat_fields(RunConfig().model_dump(mode="json"))
    assert {"train.epochs", "runtime.backend", "runtime.device"} <= set(MAY_CHANGE)
    identity = set(fields) - set(MAY_CHANGE)
    assert {"train.eps", "train.lr", "runtime.seed", "runtime.dtype", "data.preprocess", "model.hidden"} <= identity
    a = RunConfig().model_dump(mode="json")
    b = json.loads(json.dumps(a))
    b["runtime"]["new_knob"] = 1  # a field unknown today counts as identity
    b["train"]["epochs"] = 9
    assert differing_fields(a, b) == ["runtime.new_knob"]
    assert differing_fields(a, b, identity=False) == ["train.epochs"]


@pytest.mark.parametrize("backend", ["numpy", "torch"])
def test_identical_runs_give_checkpoints_with_identical_bytes(backend, data_dir, tmp_path, cli):
    digests = set()
    for name in ("one", "two"):
        assert cli(train_args(data_dir, tmp_path / name, "--backend", backend, epochs=1)).exit_code == 0
        digests.add(sha256_file(tmp_path / name / "checkpoint.safetensors"))
    assert len(digests) == 1


def test_a_kill_inside_the_checkpoint_write_leaves_no_foreign_file(data_dir, tmp_path):
    """A real SIGKILL after half of a checkpoint is written: the previous checkpoint stands, only advbp's own
    temporary is left, and the resume removes it and finishes."""
    script = """
import os, signal
import advbp_cli.checkpoint as ck
real = ck._write_safetensors
n = [0]
def half(fh, head, arrays):
    n[0] += 1
    if n[0] == 2:
        fh.write(head[: len(head) // 2]); fh.flush(); os.fsync(fh.fileno())
        os.kill(os.getpid(), signal.SIGKILL)
    return real(fh, head, arrays)
ck._write_safetensors = half
"""
    run = tmp_path / "run"
    res = Res(advbp_process(train_args(data_dir, run, epochs=3), tmp_path, script=script))
    assert res.exit_code == -signal.SIGKILL, res.stderr
    left = sorted(p.name for p in run.iterdir())
    assert [n for n in left if n.endswith(".tmp")] and all(n.startswith(".checkpoint.safetensors.") for n in left
                                                           if n.endswith(".tmp"))
    from advbp_cli.checkpoint import read_metadata

    assert read_metadata(run / "checkpoint.safetensors")["epoch"] == "1"
    res = Res(advbp_process(["train", "--resume", run, "--data-dir", data_dir, "--no-download"], tmp_path))
    assert res.exit_code == 0, res.stderr
    assert not [p for p in run.iterdir() if p.name.endswith(".tmp")]


# ================================================================================ 3. advbp deletes only its own files
def _commands_into(data_dir, world, out):
    """Every command that writes a folder, pointed at `out`."""
    return {
        "train": train_args(data_dir, out, epochs=1),
        "train --overwrite": train_args(data_dir, out, "--overwrite", epochs=1),
        "sweep": sweep_args(data_dir, out),
        "sweep --resume": sweep_args(data_dir, out, "--resume"),
        "attack": attack_args(data_dir, world["a"], out),
        "attack --overwrite": attack_args(data_dir, world["a"], out, "--overwrite"),
        "report": report_args(data_dir, world["a"], out),
        "report --overwrite": report_args(data_dir, world["a"], out, "--overwrite"),
    }


COMMANDS = ["train", "train --overwrite", "sweep", "sweep --resume", "attack", "attack --overwrite", "report",
            "report --overwrite"]


@pytest.mark.parametrize("command", COMMANDS)
def test_a_users_folder_is_refused_and_left_as_it_was(command, world, data_dir, tmp_path, cli):
    out = user_folder(tmp_path / "mine")
    before = tree(out)
    one_line(cli(_commands_into(data_dir, world, out)[command]), str(out), "no advbp marker")
    assert tree(out) == before


@pytest.mark.parametrize("command", ["train --overwrite", "attack --overwrite", "report --overwrite",
                                     "sweep --resume"])
def test_overwrite_in_advbps_folder_keeps_the_users_files(command, world, data_dir, tmp_path, cli):
    out = tmp_path / "out"
    first = command.split()[0]
    args = _commands_into(data_dir, world, out)
    assert cli(args[first]).exit_code == 0
    mine = {"notes.txt": b"my notes", ".draft.tmp": b"unsaved", "figure-mine.png": b"\x89PNG mine"}
    for name, data in mine.items():
        (out / name).write_bytes(data)
    if first != "sweep":
        one_line(cli(args[first]), "already holds", "--overwrite")  # no silent replacement
    res = cli(args[command])
    assert res.exit_code == 0, res.stderr
    assert {name: (out / name).read_bytes() for name in mine} == mine
    assert (out / MARKER).is_file()
    no_leftovers(out, users=tuple(mine))


def test_another_kind_of_advbp_folder_is_refused(world, data_dir, tmp_path, cli):
    one_line(cli(train_args(data_dir, world["sets-a"], "--overwrite", epochs=1)), "is a folder of attack sets")
    one_line(cli(attack_args(data_dir, world["a"], world["a"], "--overwrite")), "is a run directory")
    one_line(cli(report_args(data_dir, world["a"], world["sweep"], "--overwrite")), "is a sweep directory")
    one_line(cli(sweep_args(data_dir, world["a"], "--resume")), "is a run directory")


def test_resume_clears_advbps_temporaries_but_not_a_users(world, data_dir, tmp_path, cli):
    run = copy(world["a"], tmp_path / "run")
    (run / ".checkpoint.safetensors.k1ll3d.tmp").write_bytes(b"\0" * 100)  # what a killed write leaves
    (run / ".my-draft.tmp").write_text("mine")
    assert cli(["train", "--resume", str(run), "--epochs", "3", "--data-dir", str(data_dir),
                "--no-download"]).exit_code == 0
    assert not (run / ".checkpoint.safetensors.k1ll3d.tmp").exists() and (run / ".my-draft.tmp").read_text() == "mine"


def test_a_run_of_an_older_advbp_is_adopted_by_resume_only(world, data_dir, tmp_path, cli):
    run = copy(world["a"], tmp_path / "old")
    (run / MARKER).unlink()
    one_line(cli(train_args(data_dir, run, "--overwrite", epochs=1)), "no advbp marker", "--resume")
    res = cli(["train", "--resume", str(run), "--epochs", "3", "--data-dir", str(data_dir), "--no-download"])
    assert res.exit_code == 0, res.stderr
    assert json.loads((run / MARKER).read_text())["kind"] == "run"


# ======================================================================================= 4. OS faults: one line
def _faulty_paths(tmp_path: Path) -> dict[str, tuple[Path, str]]:
    (tmp_path / "a-file").write_text("x")
    (tmp_path / "dangling").symlink_to(tmp_path / "nowhere")
    return {"under-a-file": (tmp_path / "a-file" / "out", "Not a directory"),
            "name-too-long": (tmp_path / ("n" * 300), "too long"),
            "dangling-link": (tmp_path / "dangling", "does not exist"),
            "in-the-way": (tmp_path / "a-file", "is a file")}


@pytest.mark.parametrize("fault", ["under-a-file", "name-too-long", "dangling-link", "in-the-way"])
@pytest.mark.parametrize("command", ["train", "sweep", "attack", "report", "eval --curve-out"])
def test_an_output_path_that_cannot_be_written_is_one_line(command, fault, world, data_dir, tmp_path, cli):
    out, needle = _faulty_paths(tmp_path)[fault]
    if command == "eval --curve-out":
        if fault == "dangling-link":  # not a fault for a file the user names: the link is replaced by the curve
            link = tmp_path / "dangling.csv"
            link.symlink_to(tmp_path / "nowhere.csv")
            res = cli(curve_args(data_dir, world["a"], world["sets-a"], link))
            assert res.exit_code == 0, res.stderr
            assert not link.is_symlink() and link.read_text().startswith("model,attack,eps")
            assert not (tmp_path / "nowhere.csv").exists()
            return
        if fault == "in-the-way":
            (tmp_path / "a-folder.csv").mkdir()
        curve = tmp_path / "a-folder.csv" if fault == "in-the-way" else Path(f"{out}.csv")
        args = curve_args(data_dir, world["a"], world["sets-a"], curve)
        needle = {"under-a-file": "Not a directory", "name-too-long": "too long", "in-the-way": "is a directory"}[fault]
    else:
        args = {"train": train_args(data_dir, out), "sweep": sweep_args(data_dir, out),
                "attack": attack_args(data_dir, world["a"], out), "report": report_args(data_dir, world["a"], out)}[command]
    before = tree(tmp_path)
    one_line(cli(args), needle)
    assert tree(tmp_path) == before  # nothing written, nothing left


@pytest.mark.parametrize("command", ["train", "sweep", "attack", "report", "eval --curve-out"])
def test_permission_denied_is_one_line(command, world, data_dir, tmp_path, cli, monkeypatch):
    """Injected (the tests run as root, whom permissions do not stop): creating the output is refused by the OS."""
    real_mkdir, real_mkstemp = Path.mkdir, __import__("tempfile").mkstemp

    def denied(*a, **k):
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(tmp_path / "locked"))

    monkeypatch.setattr(Path, "mkdir", lambda self, *a, **k: denied() if "locked" in str(self) else
                        real_mkdir(self, *a, **k))
    monkeypatch.setattr("tempfile.mkstemp", lambda *a, **k: denied() if "locked" in str(k.get("dir")) else
                        real_mkstemp(*a, **k))
    out = tmp_path / "locked" / "out"
    args = {"train": train_args(data_dir, out), "sweep": sweep_args(data_dir, out),
            "attack": attack_args(data_dir, world["a"], out), "report": report_args(data_dir, world["a"], out),
            "eval --curve-out": curve_args(data_dir, world["a"], world["sets-a"], out / "c.csv")}[command]
    one_line(cli(args), "Permission denied")
    assert not (tmp_path / "locked").exists()


FILE_SIZE_CASES = {  # each writes a file larger than the limit: checkpoint, set, figure, curve
    "train": (lambda d, w, out: train_args(d, out, "--hidden", "60"), 100_000),
    "sweep": (lambda d, w, out: sweep_args(d, out, "--hidden", "60"), 100_000),
    "attack": (lambda d, w, out: attack_args(d, w["a"], out, "--no-compress"), 100_000),
    "report": (lambda d, w, out: report_args(d, w["a"], out), 5_000),
    "eval --curve-out": (lambda d, w, out: curve_args(d, w["a"], w["sets-a"], out / "curve.csv",
                                                      "--fgsm-eps", "0.01:0.6:0.01"), 2_000),
}


@pytest.mark.parametrize("command", list(FILE_SIZE_CASES))
def test_a_real_file_size_limit_is_one_line_and_leaves_nothing(command, world, data_dir, tmp_path):
    make, limit = FILE_SIZE_CASES[command]
    out = tmp_path / "out"
    if command == "eval --curve-out":
        out.mkdir()
    res = Res(advbp_process(make(data_dir, world, out), tmp_path, fsize=limit))
    line = one_line(res, "File too large", "ulimit -f")
    assert "no epoch was saved" in line if command == "train" else True
    if command == "sweep":  # the sweep's record stays, so --resume continues it; the failed run leaves nothing
        assert [p.name for p in out.iterdir() if p.is_dir()] == []
        no_leftovers(out)
    elif command == "eval --curve-out":
        assert list(out.iterdir()) == []
    else:
        assert not out.exists(), sorted(p.name for p in out.rglob("*"))


def _disk_full_at(monkeypatch, pattern: str, nth: int = 1):
    """Fault injection: the nth fsync of a file whose name starts with `pattern` fails with ENOSPC, as on a full
    disk (atomic writes fsync every file before it gets its name)."""
    import advbp_cli.files as files

    real, seen = os.fsync, []

    def fsync(fd):
        name = Path(os.readlink(f"/proc/self/fd/{fd}")).name
        if name.startswith(pattern):
            seen.append(name)
            if len(seen) == nth:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(fd)

    monkeypatch.setattr(files.os, "fsync", fsync)
    return seen


def test_a_full_disk_during_training_keeps_the_last_epoch_resumable(data_dir, tmp_path, cli, monkeypatch):
    ref = tmp_path / "ref"
    assert cli(train_args(data_dir, ref, epochs=3)).exit_code == 0
    run = tmp_path / "run"
    _disk_full_at(monkeypatch, ".checkpoint.safetensors.", nth=3)
    line = one_line(cli(train_args(data_dir, run, epochs=3)), "checkpoint.safetensors: No space left on device")
    assert f"epochs 1-2 are saved in {run} and stay resumable: advbp train --resume {run}" in line, line
    assert not [p for p in run.iterdir() if p.name.endswith(".tmp")]
    monkeypatch.undo()
    assert cli(["train", "--resume", str(run), "--data-dir", str(data_dir), "--no-download"]).exit_code == 0
    assert sha256_file(run / "checkpoint.safetensors") == sha256_file(ref / "checkpoint.safetensors")


@pytest.mark.parametrize("command,pattern", [("sweep", ".checkpoint.safetensors."), ("attack", ".fgsm-eps0.2.npz."),
                                             ("report", ".index.md."), ("eval --curve-out", ".curve.csv.")])
def test_a_full_disk_in_every_other_command_is_one_line(command, pattern, world, data_dir, tmp_path, cli,
                                                        monkeypatch):
    out = tmp_path / "out"
    first = {"sweep": sweep_args(data_dir, out), "attack": attack_args(data_dir, world["a"], out),
             "report": report_args(data_dir, world["a"], out)}.get(command)
    if first is not None:  # a previous result is there; the failed overwrite must leave it untouched
        assert cli(first).exit_code == 0
        before = tree(out)
    again = {"sweep": sweep_args(data_dir, out, "--resume"), "attack": attack_args(data_dir, world["b"], out, "--overwrite"),
             "report": report_args(data_dir, world["b"], out, "--overwrite"),
             "eval --curve-out": curve_args(data_dir, world["a"], world["sets-a"], out / "curve.csv")}[command]
    if command == "sweep":  # a sweep that still has a run to train
        shutil.rmtree(next(out.glob("*/seed-0")))
    _disk_full_at(monkeypatch, pattern)
    one_line(cli(again), "No space left on device")
    monkeypatch.undo()
    if command in ("attack", "report"):
        assert {k: v for k, v in tree(out).items() if k != ".lock"} == {k: v for k, v in before.items() if k != ".lock"}
        no_leftovers(out)
    elif command == "eval --curve-out":
        assert not out.exists() or not list(out.iterdir())
    else:
        assert cli(sweep_args(data_dir, out, "--resume")).exit_code == 0  # and it continues once there is room


@pytest.mark.parametrize("command", ["attack", "report"])
def test_a_full_disk_while_taking_or_committing_a_folder_changes_nothing(command, world, data_dir, tmp_path, cli,
                                                                        monkeypatch):
    """The folder bookkeeping itself can meet a full disk: the marker written when a new --out is taken (the new
    folder is removed again), and the commit record of a whole-folder overwrite (the old files stay)."""
    make = {"attack": lambda src, out, *extra: attack_args(data_dir, src, out, *extra),
            "report": lambda src, out, *extra: report_args(data_dir, src, out, *extra)}[command]
    new = tmp_path / "parent" / "new"
    _disk_full_at(monkeypatch, "..advbp-folder.json.")
    one_line(cli(make(world["a"], new)), "No space left on device")
    monkeypatch.undo()
    assert not new.exists() and not new.parent.exists()
    out = tmp_path / "out"
    assert cli(make(world["a"], out)).exit_code == 0
    before = tree(out)
    _disk_full_at(monkeypatch, ".commit.json.")
    one_line(cli(make(world["b"], out, "--overwrite")), "No space left on device")
    monkeypatch.undo()
    assert {k: v for k, v in tree(out).items() if k != ".lock"} == {k: v for k, v in before.items() if k != ".lock"}
    no_leftovers(out)


@pytest.mark.parametrize("command,backend", [("train", "numpy"), ("train", "torch"), ("sweep", "numpy")])
def test_an_oversized_network_is_one_line_naming_the_option(command, backend, data_dir, tmp_path):
    """A real MemoryError: 2 x 100 000 hidden units need ~80 GB; RLIMIT_AS (6 GB) makes that fail on any machine."""
    out = tmp_path / "out"
    args = (train_args(data_dir, out, "--hidden", "100000,100000", "--backend", backend) if command == "train" else
            sweep_args(data_dir, out, "--hidden", "100000,100000", "--backend", backend))
    res = Res(advbp_process(args, tmp_path, address_space=6 * 2**30))
    one_line(res, "out of memory", "--hidden")
    if command == "train":
        assert not out.exists()
    else:
        no_leftovers(out)
        assert [p.name for p in out.iterdir() if p.is_dir()] == []


@pytest.mark.parametrize("command,target", [("eval", "advbp_cli.robustness.evaluate_arrays"),
                                            ("attack", "advbp_cli.attack_folder.run_attack"),
                                            ("report", "advbp_cli.report.hidden_sparsity"),
                                            ("eval --curve-out", "advbp_cli.robustness.evaluate_arrays")])
@pytest.mark.parametrize("kind", ["MemoryError", "torch"])
def test_out_of_memory_in_other_commands_is_one_line(command, target, kind, world, data_dir, tmp_path, cli,
                                                     monkeypatch):
    def oom(*a, **k):
        if kind == "MemoryError":
            raise MemoryError
        raise RuntimeError("[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: not enough memory: you tried to "
                           "allocate 4000000000000 bytes.")

    monkeypatch.setattr(target, oom)
    out = tmp_path / "out"
    args = {"eval": ["eval", str(world["a"]), "--data-dir", str(data_dir)],
            "attack": attack_args(data_dir, world["a"], out), "report": report_args(data_dir, world["a"], out),
            "eval --curve-out": curve_args(data_dir, world["a"], world["sets-a"], out / "c.csv")}[command]
    one_line(cli(args), "out of memory", "--limit")
    assert not out.exists()


# ============================================================================== 5. non-finite is never an answer
@pytest.mark.parametrize("args,needle", [
    (["eval", "RUN", "--max-error", "nan"], "--max-error"),
    (["eval", "RUN", "--max-error", "inf"], "--max-error"),
    (["sweep", "mnist-relu-2x400-adv", "--executor", "ray", "--cpus-per-run", "nan", "--out", "OUT"], "--cpus-per-run"),
    (["sweep", "mnist-relu-2x400-adv", "--executor", "ray", "--gpus-per-run", "inf", "--out", "OUT"], "--gpus-per-run"),
    (["train", "--eps", "nan", "--out", "OUT"], "--eps"),
    (["train", "--lr", "inf", "--out", "OUT"], "--lr"),
    (["attack", "RUN", "--eps", "nan", "--out", "OUT"], "--eps"),
    (["eval", "RUN", "--fgsm-eps", "inf"], "--fgsm-eps"),
])
def test_nan_and_inf_options_are_refused(args, needle, world, tmp_path, cli):
    args = [str(world["a"]) if a == "RUN" else str(tmp_path / "out") if a == "OUT" else a for a in args]
    res = cli(args)
    assert res.exit_code == 2 and needle in res.stderr and "Traceback" not in res.stderr, res.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("eps,clip", [("1e308", "--no-clip"), ("1e39", "--no-clip"), ("1e308", "--clip")])
def test_an_eps_that_overflows_is_refused_before_any_set_is_written(eps, clip, world, data_dir, tmp_path, cli):
    out = tmp_path / "sets"
    one_line(cli(attack_args(data_dir, world["a"], out, clip, eps=f"0.1,{eps}")), "--eps", "overflow")
    assert not out.exists()
    one_line(cli(["eval", str(world["a"]), "--fgsm-eps", eps, clip.replace("--", "--fgsm-"), "--limit", "20",
                  "--data-dir", str(data_dir)]), "--fgsm-eps", "overflow")


def test_training_with_an_overflowing_eps_blames_eps(data_dir, tmp_path, cli):
    line = one_line(cli(train_args(data_dir, tmp_path / "run", "--eps", "1e308")), "Likely cause: --eps 1e+308",
                    code=3)
    assert "diverged" in line


def test_a_network_whose_outputs_are_not_finite_has_no_error_rate(world, data_dir, tmp_path, cli):
    from advbp_cli.checkpoint import read_checkpoint, save_checkpoint

    tensors, meta = read_checkpoint(world["a"] / "checkpoint.safetensors")
    huge = {k: (np.full_like(v, 1e30) if k.endswith("weight") else v) for k, v in tensors.items()}  # finite
    ckpt = tmp_path / "huge.safetensors"
    save_checkpoint(ckpt, huge, json.loads(meta["config"]), 1)
    one_line(cli(["eval", str(ckpt), "--limit", "20", "--data-dir", str(data_dir)]), "NaN or Inf",
             "no error rate")
    one_line(cli(attack_args(data_dir, ckpt, tmp_path / "sets")), "NaN or Inf")
    assert not (tmp_path / "sets").exists()


def test_non_finite_metrics_and_summaries_are_refused(world, data_dir, tmp_path, cli):
    from advbp_cli.files import write_json_atomic
    from advbp_cli.errors import UsageProblem

    run = copy(world["a"], tmp_path / "run")
    text = (run / "metrics.jsonl").read_text().replace('"eval_error": ', '"eval_error": NaN, "x": ', 1)
    (run / "metrics.jsonl").write_text(text)
    one_line(cli(report_args(data_dir, run, tmp_path / "rep")), "metrics.jsonl is corrupt", "NaN")
    sweep = copy(world["sweep"], tmp_path / "sweep")
    summary = next(sweep.glob("*/seed-0/summary.json"))
    summary.write_text(summary.read_text().replace('"value": ', '"value": Infinity, "was": ', 1))
    one_line(cli(["sweep", "--resume", "--out", str(sweep), "--data-dir", str(data_dir), "--no-download"]),
             "summary.json is corrupt", "Infinity")
    with pytest.raises(UsageProblem, match="NaN or infinite"):
        write_json_atomic(tmp_path / "x.json", {"error": float("nan")})
    assert not (tmp_path / "x.json").exists()


def test_the_fixed_file_names_of_each_kind_are_the_modules_own():
    from advbp_cli import outdir, rundir, sweep

    assert outdir.FIXED_FILES["run"] == (rundir.CONFIG, rundir.METRICS, rundir.CHECKPOINT, rundir.SUMMARY)
    assert outdir.FIXED_FILES["sweep"] == (sweep.SWEEP_FILE, *sweep.SUMMARY_FILES)
