"""Issue 8: nothing lost, nothing silently wrong when a run is killed, interrupted, locked or diverges.

- SIGKILL at an arbitrary moment, then `advbp train --resume`: the same weights (array_equal) and metrics (except
  timing fields) as an uninterrupted run, for --backend numpy and --backend torch on CPU (real subprocesses).
- Crashes at the exact points that matter (between the metrics and the checkpoint, in the middle of writing the
  checkpoint) simulated in-process, so those windows are hit every time instead of by luck.
- Atomic writes: a crash in the middle of a write never leaves a truncated file under the final name, and every
  write in advbp_cli goes through advbp_cli.files (checked on the source).
- The run-directory lock, Ctrl-C (SIGINT: exit 130, a resume hint, and a resumed run equal to an uninterrupted
  one), and divergence (exit 3, the epoch and the learning rate named, the last good checkpoint kept).
"""

from __future__ import annotations

import ast
import fcntl
import json
import os
import random
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from advbp_cli.checkpoint import read_checkpoint
from advbp_cli.rundir import RunDir

REPO = Path(__file__).resolve().parent.parent
TIMING = {"train_seconds", "seconds"}  # the only fields allowed to differ between two runs of the same config

# --------------------------------------------------------------------------------------------------- helpers

# Subprocess runs: big enough that an epoch takes a moment (so a kill can land mid-epoch), small enough to be quick.
SUB_EPOCHS = 5


def sub_args(data_dir: Path, backend: str, out: Path) -> list[str]:
    return ["train", "--data-dir", str(data_dir), "--no-download", "--train-limit", "2000", "--eval-limit", "300",
            "--epochs", str(SUB_EPOCHS), "--hidden", "200,200", "--backend", backend, "--seed", "3", "--out", str(out)]


def sub_env() -> dict:
    env = dict(os.environ)
    # One thread everywhere: kind to the shared machine, and the same arithmetic in every process of a comparison.
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", PYTHONUNBUFFERED="1",
               ADVBP_MNIST_MIRRORS="http://127.0.0.1:9/")  # never the real network, whatever happens
    return env


def start_advbp(args: list[str], cwd: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "advbp_cli", *args], cwd=cwd, env=sub_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def run_advbp(args: list[str], cwd: Path, timeout: float = 180) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "advbp_cli", *args], cwd=cwd, env=sub_env(), capture_output=True,
                          text=True, timeout=timeout)


def checkpoint_epoch(run: Path) -> int:
    """The epoch recorded in run/checkpoint.safetensors, 0 when there is none (read while training goes on)."""
    from safetensors import safe_open

    try:
        with safe_open(str(run / "checkpoint.safetensors"), framework="numpy") as fh:
            return int((fh.metadata() or {}).get("epoch", 0))
    except Exception:  # not there yet
        return 0


def wait_for_epoch(proc: subprocess.Popen, run: Path, epoch: int, timeout: float = 180) -> None:
    t_end = time.monotonic() + timeout
    while checkpoint_epoch(run) < epoch:
        if proc.poll() is not None:
            out, err = proc.communicate()
            pytest.fail(f"advbp exited ({proc.returncode}) before epoch {epoch}'s checkpoint appeared:\n{err[-2000:]}")
        if time.monotonic() > t_end:
            proc.kill()
            pytest.fail(f"no checkpoint of epoch {epoch} within {timeout} s")
        time.sleep(0.003)


def weights(run: Path) -> dict[str, np.ndarray]:
    return read_checkpoint(run / "checkpoint.safetensors")[0]


def metrics(run: Path) -> list[dict]:
    return [{k: v for k, v in row.items() if k not in TIMING} for row in RunDir(run).read_metrics()]


def assert_same_run(got: Path, want: Path) -> None:
    """Bit-for-bit the same weights, the same metrics except timing, the same headline."""
    a, b = weights(got), weights(want)
    assert sorted(a) == sorted(b)
    for k in b:
        assert a[k].dtype == b[k].dtype and np.array_equal(a[k], b[k]), f"{k} differs from the uninterrupted run"
    assert metrics(got) == metrics(want)
    sa, sb = RunDir(got).read_summary(), RunDir(want).read_summary()
    assert sa["headline"] == sb["headline"] and sa["epochs_completed"] == sb["epochs_completed"]
    assert checkpoint_epoch(got) == checkpoint_epoch(want)


def assert_consistent_on_disk(run: Path) -> None:
    """What a killed run leaves: every file under its final name complete and readable."""
    if (run / "checkpoint.safetensors").exists():
        read_checkpoint(run / "checkpoint.safetensors")  # raises on a truncated file
    rows = RunDir(run).read_metrics()  # raises on a truncated line
    assert len(rows) >= checkpoint_epoch(run)
    json.loads((run / "config.json").read_text())


def one_line_error(res, *needles: str) -> str:
    lines = res.stderr.splitlines()
    assert res.exit_code == 2, (res.exit_code, res.stderr)
    assert res.stderr.count("\n") == 1 and lines[0].startswith("Error: "), res.stderr
    assert "Traceback" not in res.stderr
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


@pytest.fixture(scope="module")
def sub_reference(tmp_path_factory, data_dir):
    """Uninterrupted subprocess runs, one per backend, made on first use."""
    made: dict[str, Path] = {}

    def get(backend: str) -> Path:
        if backend not in made:
            out = tmp_path_factory.mktemp(f"ref-{backend}") / "run"
            res = run_advbp(sub_args(data_dir, backend, out), cwd=out.parent)
            assert res.returncode == 0, res.stderr
            made[backend] = out
        return made[backend]

    return get


# --------------------------------------------------------------------------------- 1. SIGKILL and --resume


@pytest.mark.parametrize("backend,kills", [("numpy", 2), ("torch", 1)])
def test_sigkill_at_arbitrary_moments_then_resume_is_bit_identical(backend, kills, sub_reference, data_dir, tmp_path):
    ref = sub_reference(backend)
    run = tmp_path / "run"
    rnd = random.Random()
    log = []
    args = sub_args(data_dir, backend, run)
    for k in range(kills):
        proc = start_advbp(args, cwd=tmp_path)
        target = 2 + 2 * k  # kill after epoch 2's checkpoint, then (second time) after epoch 4's
        wait_for_epoch(proc, run, target - 1)
        t1 = time.monotonic()
        wait_for_epoch(proc, run, target)
        epoch_s = time.monotonic() - t1
        # anywhere from "right after the checkpoint" to late in the next epoch (writes included)
        delay = rnd.uniform(0, 0.8 * epoch_s)
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.communicate()
        log.append(f"killed at epoch {checkpoint_epoch(run)} + {delay:.3f}s")
        assert proc.returncode == -signal.SIGKILL, "the run ended before it could be killed: " + "; ".join(log)
        assert_consistent_on_disk(run)
        args = ["train", "--resume", str(run), "--data-dir", str(data_dir), "--no-download"]
    res = run_advbp(args, cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert "resuming" in res.stderr
    assert_same_run(run, ref)
    assert not list(run.glob(".*.tmp")), "a killed write's temporary file survived the resume"


def test_ctrl_c_exits_130_with_a_resume_hint_and_resumes_to_the_same_result(sub_reference, data_dir, tmp_path):
    ref = sub_reference("numpy")
    run = tmp_path / "run"
    proc = start_advbp(sub_args(data_dir, "numpy", run), cwd=tmp_path)
    wait_for_epoch(proc, run, 2)
    time.sleep(random.uniform(0, 0.1))
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    last = err.strip().splitlines()[-1]
    assert "Traceback" not in err
    assert f"Resume with: advbp train --resume {run}" in last, last
    m = re.search(r"epochs 1-(\d+) of 5 are saved", last) or re.search(r"after all (\d+) epochs were saved", last)
    assert m, last
    assert int(m.group(1)) == checkpoint_epoch(run), "the message names another epoch than the checkpoint holds"
    assert_consistent_on_disk(run)
    res = run_advbp(["train", "--resume", str(run), "--data-dir", str(data_dir), "--no-download"], cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert_same_run(run, ref)


# ---------------------------------------------------- in-process: crashes at the exact points that matter

TINY = ["--no-download", "--train-limit", "300", "--eval-limit", "100", "--hidden", "20", "--backend", "numpy",
        "--seed", "1"]


class Crash(BaseException):
    """Stands for the process dying: not an Exception, so nothing in advbp catches it."""


def tiny(data_dir: Path, out: Path, epochs: int = 4, *extra: str) -> list[str]:
    return ["train", "--data-dir", str(data_dir), *TINY, "--epochs", str(epochs), "--out", str(out), *extra]


def resume(data_dir: Path, run: Path, *extra: str) -> list[str]:
    return ["train", "--resume", str(run), "--data-dir", str(data_dir), "--no-download", *extra]


@pytest.fixture(scope="module")
def tiny_reference(tmp_path_factory, data_dir):
    from conftest import run_cli  # the `cli` fixture's function (fixtures are function-scoped)

    out = tmp_path_factory.mktemp("tiny-ref") / "run"
    res = run_cli(tiny(data_dir, out))
    assert res.exit_code == 0, res.stderr
    return out


def test_crash_between_metrics_and_checkpoint_then_resume(cli, data_dir, tmp_path, tiny_reference, monkeypatch):
    import advbp_cli.trainer as trainer

    real = trainer.save_checkpoint

    def dying_save(path, params, config, epoch, *a, **kw):
        if epoch == 3:
            raise Crash
        return real(path, params, config, epoch, *a, **kw)

    monkeypatch.setattr(trainer, "save_checkpoint", dying_save)
    run = tmp_path / "run"
    with pytest.raises(Crash):
        cli(tiny(data_dir, run))
    assert checkpoint_epoch(run) == 2 and len(RunDir(run).read_metrics()) == 3  # the window is really hit
    monkeypatch.setattr(trainer, "save_checkpoint", real)
    res = cli(resume(data_dir, run))
    assert res.exit_code == 0, res.stderr
    assert_same_run(run, tiny_reference)


def test_crash_in_the_middle_of_writing_the_checkpoint_keeps_the_previous_one(cli, data_dir, tmp_path, tiny_reference,
                                                                               monkeypatch):
    import io

    import advbp_cli.checkpoint as checkpoint

    real = checkpoint._write_safetensors
    calls = []

    def half_then_die(fh, head, arrays):
        calls.append(fh.name)
        if len(calls) == 3:  # epoch 3: write half of a real file under the temporary name, then die
            buf = io.BytesIO()
            real(buf, head, arrays)
            fh.write(buf.getvalue()[: len(buf.getvalue()) // 2])
            raise Crash
        return real(fh, head, arrays)

    monkeypatch.setattr(checkpoint, "_write_safetensors", half_then_die)
    run = tmp_path / "run"
    with pytest.raises(Crash):
        cli(tiny(data_dir, run))
    assert Path(calls[-1]).parent == run and Path(calls[-1]).name != "checkpoint.safetensors"
    assert checkpoint_epoch(run) == 2  # the previous checkpoint, complete
    assert not list(run.glob(".*.tmp"))
    monkeypatch.setattr(checkpoint, "_write_safetensors", real)
    res = cli(resume(data_dir, run))
    assert res.exit_code == 0, res.stderr
    assert_same_run(run, tiny_reference)


def test_killed_write_leftovers_are_removed_and_do_not_matter(cli, data_dir, tmp_path, tiny_reference, monkeypatch):
    import advbp_cli.trainer as trainer

    real = trainer.save_checkpoint

    def dying_save(path, params, config, epoch, *a, **kw):
        if epoch == 2:
            raise Crash
        return real(path, params, config, epoch, *a, **kw)

    monkeypatch.setattr(trainer, "save_checkpoint", dying_save)
    run = tmp_path / "run"
    with pytest.raises(Crash):
        cli(tiny(data_dir, run))
    monkeypatch.setattr(trainer, "save_checkpoint", real)
    # what SIGKILL during a write leaves: a temporary file that never got its final name
    junk = [run / ".checkpoint.safetensors.k1ll3d.tmp", run / ".metrics.jsonl.k1ll3d.tmp"]
    for j in junk:
        j.write_bytes(b"\x00garbage")
    res = cli(resume(data_dir, run))
    assert res.exit_code == 0, res.stderr
    assert not any(j.exists() for j in junk)
    assert_same_run(run, tiny_reference)


def test_epochs_on_resume_extends_a_complete_run(cli, data_dir, tmp_path, tiny_reference, monkeypatch):
    run = tmp_path / "run"
    assert cli(tiny(data_dir, run, 2)).exit_code == 0
    before = (run / "summary.json").read_bytes()
    one_line_error(cli(resume(data_dir, run)), "already complete", "--epochs")
    one_line_error(cli(resume(data_dir, run, "--epochs", "1")), "already has 2 epochs")
    assert (run / "summary.json").read_bytes() == before, "a refused resume changed the run"
    res = cli(resume(data_dir, run, "--epochs", "4"))
    assert res.exit_code == 0, res.stderr
    assert_same_run(run, tiny_reference)
    assert json.loads((run / "config.json").read_text())["config"]["train"]["epochs"] == 4


def test_an_interrupted_extension_resumes_to_the_extended_length(cli, data_dir, tmp_path, tiny_reference, monkeypatch):
    import advbp_cli.trainer as trainer

    run = tmp_path / "run"
    assert cli(tiny(data_dir, run, 2)).exit_code == 0
    real = trainer.save_checkpoint

    def dying_save(path, params, config, epoch, *a, **kw):
        if epoch == 4:
            raise Crash
        return real(path, params, config, epoch, *a, **kw)

    monkeypatch.setattr(trainer, "save_checkpoint", dying_save)
    with pytest.raises(Crash):
        cli(resume(data_dir, run, "--epochs", "4"))
    assert not (run / "summary.json").exists(), "an unfinished extension still looks complete"
    monkeypatch.setattr(trainer, "save_checkpoint", real)
    res = cli(resume(data_dir, run))  # no --epochs: the run remembers it is being extended to 4
    assert res.exit_code == 0, res.stderr
    assert_same_run(run, tiny_reference)


def test_resume_refuses_to_change_the_recipe(cli, data_dir, tmp_path):
    run = tmp_path / "run"
    assert cli(tiny(data_dir, run, 1)).exit_code == 0
    one_line_error(cli(resume(data_dir, run, "--lr", "0.1", "--epochs", "3")), "--resume cannot change --lr")
    one_line_error(cli(resume(data_dir, tmp_path / "nothing-here")), "not an advbp run directory")


# ------------------------------------------------------------------------------------------ 2. atomic writes


def _atomic_writers(tmp_path: Path):
    """(name, final path, write(content)) for every kind of file advbp writes."""
    from advbp_cli.checkpoint import save_checkpoint
    from advbp_cli.files import write_bytes_atomic, write_json_atomic, write_text_atomic

    run = RunDir(tmp_path / "run")
    params = {"layers.0.weight": np.ones((3, 2), np.float32), "layers.0.bias": np.zeros(2, np.float32)}
    return [
        ("bytes", tmp_path / "a.bin", lambda v: write_bytes_atomic(tmp_path / "a.bin", v.encode() * 1000)),
        ("text", tmp_path / "a.txt", lambda v: write_text_atomic(tmp_path / "a.txt", v * 1000)),
        ("json", tmp_path / "a.json", lambda v: write_json_atomic(tmp_path / "a.json", {"v": v * 1000})),
        ("config", run.config_path, lambda v: run.write_config({"config": {}, "v": v * 1000})),
        ("metrics", run.metrics_path, lambda v: run.write_metrics([{"epoch": 1, "v": v * 1000}])),
        ("summary", run.summary_path, lambda v: run.write_summary({"v": v * 1000})),
        ("checkpoint", run.checkpoint_path, lambda v: save_checkpoint(run.checkpoint_path, params, {"v": v}, 1)),
    ]


@pytest.mark.parametrize("which", ["bytes", "text", "json", "config", "metrics", "summary", "checkpoint"])
def test_a_crash_during_a_write_leaves_the_old_file_or_none(which, tmp_path, monkeypatch):
    import advbp_cli.files as files

    name, final, write = next(w for w in _atomic_writers(tmp_path) if w[0] == which)
    write("old")
    old = final.read_bytes()
    assert oct(final.stat().st_mode & 0o777) == oct(0o666 & ~_umask())  # not mkstemp's 0600

    # crash after the new content is fully written but before it is renamed: the old file must stand
    def dying_replace(src, dst):
        raise Crash

    monkeypatch.setattr(files.os, "replace", dying_replace)
    with pytest.raises(Crash):
        write("new")
    assert final.read_bytes() == old
    assert not list(final.parent.glob(".*.tmp"))
    # and a brand-new file that crashes is simply absent
    final.unlink()
    with pytest.raises(Crash):
        write("new")
    assert not final.exists() and not list(final.parent.glob(".*.tmp"))
    monkeypatch.undo()
    write("new")
    assert final.read_bytes() != old and final.exists()


def _umask() -> int:
    u = os.umask(0)
    os.umask(u)
    return u


def test_sigkill_in_the_middle_of_a_write_never_truncates_the_final_file(tmp_path):
    """A real process, killed by SIGKILL after writing half of the new content."""
    final = tmp_path / "metrics.jsonl"
    final.write_text('{"epoch": 1}\n' * 100)
    script = textwrap.dedent(f"""
        import os, signal
        from pathlib import Path
        from advbp_cli.files import write_text_atomic
        real = Path.write_bytes
        def half_then_sigkill(self, data):
            with open(self, "wb") as fh:
                fh.write(data[: len(data) // 2]); fh.flush(); os.fsync(fh.fileno())
            os.kill(os.getpid(), signal.SIGKILL)
        Path.write_bytes = half_then_sigkill
        write_text_atomic({str(final)!r}, '{{"epoch": 2}}\\n' * 5000)
    """)
    proc = subprocess.run([sys.executable, "-c", script], env=sub_env(), capture_output=True, text=True, timeout=60)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert final.read_text() == '{"epoch": 1}\n' * 100
    leftovers = list(tmp_path.glob(".metrics.jsonl.*.tmp"))
    assert len(leftovers) == 1 and 0 < leftovers[0].stat().st_size  # the half-written file never got the name
    from advbp_cli.outdir import write_marker

    write_marker(tmp_path, "run")  # an advbp run directory (advbp clears only its own folders)
    RunDir(tmp_path).lock()  # whoever takes the folder next clears it
    assert not list(tmp_path.glob(".*.tmp"))


# calls that write a file, and where they are allowed without an enclosing `with atomic_path(...)`
_WRITE_ATTRS = {"write_text", "write_bytes", "save", "savez", "savez_compressed", "save_file", "savefig", "to_csv",
                "dump", "touch", "copy", "copyfile", "copy2", "move", "rename", "replace", "tofile", "write_bytes_to"}
_ALLOWED = {
    ("files.py", None),  # the atomic helpers themselves
    ("outdir.py", "acquire"),  # the lock file: its content (a pid) is informational, flock is the lock
    ("outdir.py", "apply_commit"),  # renames files that were written atomically into the staging folder
    ("data/download.py", "_fetch"),  # writes only to the temporary path download_verified gets from atomic_path
}


def _unguarded_writes(source: str, rel: str) -> list[str]:
    tree = ast.parse(source, filename=rel)
    found = []
    in_memory = {  # names bound to io.BytesIO() / io.StringIO(): writing to them writes no file
        t.id for node in ast.walk(tree) if isinstance(node, ast.Assign) and isinstance(node.value, ast.Call)
        and getattr(node.value.func, "attr", getattr(node.value.func, "id", None)) in ("BytesIO", "StringIO")
        for t in node.targets if isinstance(t, ast.Name)
    }

    def is_atomic_with(node) -> bool:
        return isinstance(node, ast.With) and any(
            isinstance(it.context_expr, ast.Call) and getattr(it.context_expr.func, "id",
                                                              getattr(it.context_expr.func, "attr", None)) == "atomic_path"
            for it in node.items)

    def writes(call: ast.Call) -> bool:
        f = call.func
        if call.args and isinstance(call.args[0], ast.Name) and call.args[0].id in in_memory:
            return False
        if isinstance(f, ast.Name) and f.id == "open" or isinstance(f, ast.Attribute) and f.attr == "open" and \
                isinstance(f.value, ast.Name) and f.value.id in ("io", "os", "gzip"):
            mode = call.args[1] if len(call.args) > 1 else next((k.value for k in call.keywords if k.arg in ("mode", "flags")), None)
            if isinstance(mode, ast.Constant) and isinstance(mode.value, str):
                return any(c in mode.value for c in "wax+")
            return mode is not None and not isinstance(mode, ast.Constant)  # a computed mode: flag it
        if isinstance(f, ast.Attribute) and f.attr in _WRITE_ATTRS:
            if f.attr in ("replace", "rename") and not (isinstance(f.value, ast.Name) and f.value.id in ("os", "shutil")):
                return False  # str.replace and friends
            if f.attr == "dump" and not (isinstance(f.value, ast.Name) and f.value.id in ("json", "pickle", "np", "numpy", "torch")):
                return False
            if f.attr == "save" and not (isinstance(f.value, ast.Name) and f.value.id in ("np", "numpy", "torch")):
                return False
            return True
        return isinstance(f, ast.Name) and f.id in ("save_file", "savez", "savez_compressed")

    def visit(node, func: str | None, guarded: bool):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            func = node.name
        if is_atomic_with(node):
            guarded = True
        if isinstance(node, ast.Call) and writes(node) and not guarded:
            if (rel, None) not in _ALLOWED and (rel, func) not in _ALLOWED:
                found.append(f"{rel}:{node.lineno} in {func}(): {ast.unparse(node)[:80]}")
        for child in ast.iter_child_nodes(node):
            visit(child, func, guarded)

    visit(tree, None, False)
    return found


def test_every_write_in_advbp_cli_goes_through_atomic_files():
    sources = sorted((REPO / "advbp_cli").rglob("*.py"))
    assert len(sources) > 10
    bad = [hit for src in sources for hit in _unguarded_writes(src.read_text(), str(src.relative_to(REPO / "advbp_cli")))]
    assert not bad, "writes outside advbp_cli.files / atomic_path:\n" + "\n".join(bad)


def test_the_write_scanner_can_fail():
    sample = ("import json, numpy as np\nfrom pathlib import Path\n"
              "def f(p, obj):\n    Path(p).write_text('x')\n    np.save(p, obj)\n"
              "    with open(p, 'w') as fh:\n        json.dump(obj, fh)\n"
              "def g(p):\n    with atomic_path(p) as tmp:\n        tmp.write_text('ok')\n    open(p).read()\n"
              "    buf = io.BytesIO()\n    fig.savefig(buf)\n    fig.savefig(p)\n")
    hits = _unguarded_writes(sample, "probe.py")
    # write_text, np.save, open('w'), json.dump, savefig(p); not the guarded one, the read, or the in-memory one
    assert len(hits) == 5, hits


# ------------------------------------------------------------------------------------------------ 3. lock


def test_second_writer_is_refused_while_the_lock_is_held(cli, data_dir, tmp_path):
    run = tmp_path / "run"
    assert cli(tiny(data_dir, run, 1)).exit_code == 0
    before = {p.name: p.read_bytes() for p in run.iterdir() if p.name != ".lock"}
    with open(run / ".lock", "a+") as fh:  # another process's lock (flock is per open file, so this is one)
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        for args in (tiny(data_dir, run, 1), tiny(data_dir, run, 1, "--overwrite"), resume(data_dir, run, "--epochs", "2")):
            one_line_error(cli(args), str(run), "in use by another advbp process")
        fresh = tmp_path / "fresh"
        fresh.mkdir()
        with open(fresh / ".lock", "a+") as fh2:
            fcntl.flock(fh2, fcntl.LOCK_EX | fcntl.LOCK_NB)
            one_line_error(cli(tiny(data_dir, fresh, 1)), "in use by another advbp process")
    assert {p.name: p.read_bytes() for p in run.iterdir() if p.name != ".lock"} == before, "a refused run wrote"
    assert cli(resume(data_dir, run, "--epochs", "2")).exit_code == 0  # lock released: works


def test_a_real_second_process_is_refused(data_dir, tmp_path, cli):
    run = tmp_path / "run"
    args = sub_args(data_dir, "numpy", run)
    args[args.index("--epochs") + 1] = "1000"  # still running when the second one tries
    first = start_advbp(args, cwd=tmp_path)
    try:
        wait_for_epoch(first, run, 1)
        res = cli(["train", "--data-dir", str(data_dir), *TINY, "--epochs", "1", "--out", str(run), "--overwrite"])
        one_line_error(res, "in use by another advbp process")
        one_line_error(cli(resume(data_dir, run)), "in use by another advbp process")
        assert first.poll() is None, "the first run ended early: the refusals above prove nothing"
    finally:
        first.send_signal(signal.SIGINT)
        _, err = first.communicate(timeout=60)
    assert first.returncode == 130, err  # undisturbed by the refused writers, and stopped cleanly
    assert_consistent_on_disk(run)
    assert checkpoint_epoch(run) >= 1


# ---------------------------------------------------------------------------------------------- 4. Ctrl-C


def _interrupt_in_epoch(monkeypatch, epoch: int):
    import advbp_cli.trainer as trainer

    real = trainer.epoch_blocks

    def blocks(seed, e, *a, **k):
        if e + 1 == epoch:
            raise KeyboardInterrupt
        return real(seed, e, *a, **k)

    monkeypatch.setattr(trainer, "epoch_blocks", blocks)


def test_ctrl_c_in_epoch_1_says_nothing_was_saved_yet(cli, data_dir, tmp_path, monkeypatch):
    _interrupt_in_epoch(monkeypatch, 1)
    run = tmp_path / "run"
    res = cli(tiny(data_dir, run))
    assert res.exit_code == 130
    last = res.stderr.strip().splitlines()[-1]
    assert "before any epoch was saved" in last and f"advbp train --resume {run}" in last, last
    assert not (run / "checkpoint.safetensors").exists()


def test_ctrl_c_later_names_the_saved_epochs_and_resumes_identically(cli, data_dir, tmp_path, tiny_reference,
                                                                     monkeypatch):
    _interrupt_in_epoch(monkeypatch, 3)
    run = tmp_path / "run"
    res = cli(tiny(data_dir, run))
    assert res.exit_code == 130
    last = res.stderr.strip().splitlines()[-1]
    assert last.startswith("Stopped: interrupted in epoch 3; epochs 1-2 of 4 are saved"), last
    assert "(checkpoint and metrics; epoch 3 starts again)" in last, last
    assert checkpoint_epoch(run) == 2
    monkeypatch.undo()
    assert cli(resume(data_dir, run)).exit_code == 0
    assert_same_run(run, tiny_reference)


def test_ctrl_c_while_saving_is_held_until_metrics_and_checkpoint_are_both_written(cli, data_dir, tmp_path,
                                                                                   tiny_reference, monkeypatch):
    real = RunDir.write_metrics

    def write_then_ctrl_c(self, rows):
        digest = real(self, rows)
        if len(rows) == 2:
            os.kill(os.getpid(), signal.SIGINT)  # arrives between the metrics and the checkpoint
        return digest

    monkeypatch.setattr(RunDir, "write_metrics", write_then_ctrl_c)
    run = tmp_path / "run"
    res = cli(tiny(data_dir, run))
    assert res.exit_code == 130, res.stderr
    assert "epochs 1-2 of 4 are saved" in res.stderr
    assert checkpoint_epoch(run) == 2 and len(RunDir(run).read_metrics()) == 2  # the pair, not half of it
    monkeypatch.undo()
    assert cli(resume(data_dir, run)).exit_code == 0
    assert_same_run(run, tiny_reference)


def test_sigint_deferral_unit():
    from advbp_cli.trainer import _sigint_deferred

    with pytest.raises(KeyboardInterrupt):
        with _sigint_deferred():
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.05)  # a handler that raised would have done so by now
            done = True
    assert done
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # restored
    with _sigint_deferred():  # no Ctrl-C: nothing happens
        pass


# --------------------------------------------------------------------------------------------- 5. divergence


def _diverged(res) -> str:
    assert res.exit_code == 3, (res.exit_code, res.stderr)
    assert "Traceback" not in res.stderr and "RuntimeWarning" not in res.stderr
    last = res.stderr.strip().splitlines()[-1]
    assert last.startswith("Error: training diverged"), last
    return last


@pytest.mark.parametrize("backend", ["numpy", "torch"])
def test_divergence_in_epoch_1_says_no_checkpoint_exists(backend, cli, data_dir, tmp_path):
    run = tmp_path / "run"
    args = tiny(data_dir, run, 3, "--lr", "1e30", "--backend", backend)
    last = _diverged(cli(args))
    assert "in epoch 1 " in last and "learning rate 1e+30" in last and "no checkpoint was written" in last, last
    assert "checkpoint (epoch" not in last
    assert not (run / "checkpoint.safetensors").exists()


def test_divergence_later_keeps_the_last_good_checkpoint(cli, data_dir, tmp_path):
    run = tmp_path / "run"
    last = _diverged(cli(tiny(data_dir, run, 4, "--lr", "1e12", "--hidden", "50", "--train-limit", "500")))
    m = re.search(r"in epoch (\d+) with learning rate 1000000000000\.0 .*last good checkpoint \(epoch (\d+)\)", last)
    assert m and int(m.group(2)) == int(m.group(1)) - 1 >= 1, last
    good = int(m.group(2))
    assert checkpoint_epoch(run) == good
    assert all(np.isfinite(v).all() for v in weights(run).values())
    assert len(RunDir(run).read_metrics()) == good
    assert not (run / "summary.json").exists()


def test_huge_init_std_diverges_and_says_so(cli, data_dir, tmp_path):
    last = _diverged(cli(tiny(data_dir, tmp_path / "run", 2, "--init-std", "1e20")))
    assert "epoch 1 " in last and "Likely cause: --init-std 1e+20" in last, last


def test_nan_weights_with_finite_losses_are_caught_too(cli, data_dir, tmp_path, monkeypatch):
    from advbp_cli.backends import Backend as BACKEND

    real = BACKEND.train_steps
    calls = []

    def poisoned(self, x, y, batches, step):
        losses = real(self, x, y, batches, step)
        calls.append(len(batches))
        if sum(calls) == 60:  # the last block of epoch 2 (300 samples / batch 10 = 30 steps per epoch)
            p = self.get_params()
            p["layers.0.weight"][0, 0] = np.nan
            self.set_params(p)
        return losses

    monkeypatch.setattr(BACKEND, "train_steps", poisoned)
    run = tmp_path / "run"
    last = _diverged(cli(tiny(data_dir, run, 4)))
    assert "the weights became NaN or Inf in epoch 2" in last and "last good checkpoint (epoch 1)" in last, last
    assert checkpoint_epoch(run) == 1
