"""The local sweep in parallel worker processes (advbp_cli/parallel.py): the same runs and summaries as the serial
executor (and so as Ray: test_sweep_ray.py compares Ray with this one), progress for the live table, a sweep killed
with SIGKILL takes its workers with it and resumes, Ctrl-C stops every worker cleanly (exit 130, resumable), a
worker that dies or fails is reported, and the worker count follows the thread policy."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from advbp_cli.sweep import SweepEvents, make_request, run_sweep

PRESETS = ["mnist-relu-2x400-adv", "mnist-relu-2x400-backprop"]
SMALL = ["--seeds", "2", "--epochs", "2", "--train-limit", "400", "--eval-limit", "100", "--backend", "numpy"]
OVERRIDES = {"train": {"epochs": 2}, "data": {"train_limit": 400, "eval_limit": 100}, "runtime": {"backend": "numpy"}}
# long enough to be stopped in the middle: 3 epochs of 150 steps each
LONGER = ["--seeds", "3", "--epochs", "3", "--train-limit", "1500", "--eval-limit", "100", "--backend", "numpy"]


def _metrics(run_dir: Path) -> list[dict]:
    rows = [json.loads(ln) for ln in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if "seconds" not in k} for r in rows]


def _same_runs(a: Path, b: Path) -> None:
    runs = sorted(p.relative_to(a) for p in a.glob("*/seed-*"))
    assert runs and runs == sorted(p.relative_to(b) for p in b.glob("*/seed-*"))
    for rel in runs:
        assert _metrics(a / rel) == _metrics(b / rel), rel
        ha, hb = (json.loads((d / rel / "summary.json").read_text())["headline"] for d in (a, b))
        assert ha == hb


@pytest.fixture(scope="module")
def serial_sweep(data_dir, tmp_path_factory):
    from conftest import run_cli

    out = tmp_path_factory.mktemp("serial") / "sw"
    r = run_cli(["sweep", *PRESETS, *SMALL, "--workers", "1", "--out", str(out), "--data-dir", str(data_dir)])
    assert r.exit_code == 0, r.stderr
    return out


def test_parallel_workers_give_the_serial_executors_runs_and_summary(data_dir, tmp_path, serial_sweep):
    from advbp_cli.parallel import LocalExecutor

    events = []
    ev = SweepEvents(progress=lambda *a: events.append(("progress", *a)), run_end=lambda o: events.append(("end", o)))
    out = tmp_path / "sw"
    summary = run_sweep(out, make_request(PRESETS, 2, OVERRIDES), data_dir, events=ev,
                        executor=LocalExecutor(workers=2))
    assert summary == json.loads((serial_sweep / "summary.json").read_text())
    _same_runs(out, serial_sweep)
    for name in ("summary.csv", "summary.md"):
        assert (out / name).read_text() == (serial_sweep / name).read_text()
    assert sorted(p.name for p in out.rglob("*") if p.is_file()) == sorted(
        p.name for p in serial_sweep.rglob("*") if p.is_file())  # the same files, no worker leftovers
    # every run: queued, started, one line per epoch with its eval error, then its outcome
    for preset in PRESETS:
        for seed in (0, 1):
            mine = [e[3:] for e in events if e[0] == "progress" and e[1:3] == (preset, seed)]
            assert mine[0] == (None, 2, None) and mine[1] == (0, 2, None)
            assert [m[0] for m in mine[2:]] == [1, 2] and all(isinstance(m[2], float) for m in mine[2:])
    ends = [e[1] for e in events if e[0] == "end"]
    assert sorted((o.preset, o.seed, o.status) for o in ends) == sorted((p, s, "done") for p in PRESETS for s in (0, 1))
    record = json.loads((out / PRESETS[0] / "seed-1" / "config.json").read_text())
    assert record["resolved"]["threads"] == 1  # batch-10 MNIST: one thread per worker


def test_the_cli_runs_two_workers_at_once(cli, data_dir, tmp_path, serial_sweep):
    out = tmp_path / "sw"
    r = cli(["sweep", *PRESETS, *SMALL, "--workers", "2", "--out", str(out), "--data-dir", str(data_dir)])
    assert r.exit_code == 0, r.stderr
    assert r.stderr.count(" trained: ") == 4
    _same_runs(out, serial_sweep)
    res = cli(["sweep", "--resume", "--workers", "2", "--out", str(out), "--data-dir", str(data_dir)])
    assert res.exit_code == 0 and res.stderr.count("already complete, kept") == 4, res.stderr


def _start(args: list[str], data_dir: Path, out: Path) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "advbp_cli", "sweep", *args, "--out", str(out), "--data-dir",
                             str(data_dir)], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)  # its own process group, as a terminal's foreground job


def _wait_for(pattern: str, root: Path, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not list(root.glob(pattern)):
        assert proc.poll() is None, f"the sweep ended before {pattern} appeared: {proc.communicate()[1]}"
        assert time.monotonic() < deadline, f"{pattern} did not appear within {timeout} s"
        time.sleep(0.02)


def _worker_pids(out: Path) -> set[int]:
    """The processes that locked the run directories (each writes its pid into the lock file)."""
    return {int(t) for p in out.rglob("seed-*/.lock") if (t := p.read_text().strip()).isdigit()}


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie is dead for our purpose
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return True


def _check_resumed_equals(cli, data_dir: Path, out: Path, reference: Path, done_before: dict) -> None:
    r = cli(["sweep", "--resume", "--out", str(out), "--data-dir", str(data_dir)])
    assert r.exit_code == 0, r.stderr
    for path, (mtime, content) in done_before.items():  # complete runs are never retrained
        assert path.stat().st_mtime_ns == mtime and path.read_bytes() == content
    assert r.stderr.count("already complete, kept") == len(done_before)
    _same_runs(out, reference)


@pytest.fixture(scope="module")
def longer_reference(data_dir, tmp_path_factory):
    from conftest import run_cli

    out = tmp_path_factory.mktemp("longer") / "sw"
    r = run_cli(["sweep", PRESETS[0], *LONGER, "--workers", "1", "--out", str(out), "--data-dir", str(data_dir)])
    assert r.exit_code == 0, r.stderr
    return out


def test_sigkill_of_the_sweep_takes_its_workers_along_and_the_sweep_resumes(cli, data_dir, tmp_path, longer_reference):
    out = tmp_path / "sw"
    proc = _start([PRESETS[0], *LONGER, "--workers", "2"], data_dir, out)
    try:
        _wait_for("*/seed-*/checkpoint.safetensors", out, proc)
        workers = _worker_pids(out)
        proc.send_signal(signal.SIGKILL)  # the sweep only, not its process group
    finally:
        proc.communicate()
    assert proc.returncode == -signal.SIGKILL and workers and os.getpid() not in workers
    deadline = time.monotonic() + 10
    while any(_alive(p) for p in workers):
        assert time.monotonic() < deadline, "the workers outlived their sweep"
        time.sleep(0.05)
    done = {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in out.rglob("seed-*/summary.json")}
    assert len(done) < 3 and not (out / "summary.json").exists()
    _check_resumed_equals(cli, data_dir, out, longer_reference, done)


@pytest.mark.parametrize("to_group", [True, False], ids=["ctrl-c-in-a-terminal", "sigint-to-the-sweep-only"])
def test_ctrl_c_stops_every_worker_exits_130_and_resumes(cli, data_dir, tmp_path, longer_reference, to_group):
    out = tmp_path / "sw"
    proc = _start([PRESETS[0], *LONGER, "--workers", "2"], data_dir, out)
    try:
        _wait_for("*/seed-*/checkpoint.safetensors", out, proc)
        workers = _worker_pids(out)
        if to_group:  # what a terminal does: every process of the foreground group gets it
            os.killpg(proc.pid, signal.SIGINT)
        else:  # the sweep alone: it passes the stop on to its workers
            proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
    assert proc.returncode == 130, err
    lines = [ln for ln in err.splitlines() if ln.startswith(("Stopped:", "Error:", "Traceback"))]
    assert len(lines) == 1 and lines[0].startswith("Stopped: interrupted") and "--resume" in lines[0], err
    assert "Traceback" not in err
    assert not any(_alive(p) for p in workers)  # stopped, not orphaned: the sweep waited for them
    assert not list(out.rglob("*.tmp")) and not (out / "summary.json").exists()
    done = {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in out.rglob("seed-*/summary.json")}
    _check_resumed_equals(cli, data_dir, out, longer_reference, done)


def test_a_worker_that_dies_or_fails_is_reported_and_the_others_complete(cli, data_dir, tmp_path):
    from advbp_cli.outdir import write_marker
    from advbp_cli.rundir import RunDir

    out = tmp_path / "sw"
    out.mkdir()
    write_marker(out, "sweep")  # a sweep folder of advbp's: advbp writes only into its own folders
    holder = RunDir(out / PRESETS[1] / "seed-0")  # locked by this process: that run fails for a real reason
    holder.lock()
    try:
        proc = _start([*PRESETS, *LONGER[:1], "1", *LONGER[2:], "--workers", "2", "--resume"], data_dir, out)
        _wait_for(f"{PRESETS[0]}/seed-0/checkpoint.safetensors", out, proc)
        (victim,) = _worker_pids(out) - {os.getpid()}
        os.kill(victim, signal.SIGKILL)  # a worker lost (e.g. to the OOM killer)
        _, err = proc.communicate(timeout=120)
    finally:
        holder.unlock()
    assert proc.returncode == 2, err
    err = " ".join(err.split())  # the live table's console wraps long lines
    assert f"{PRESETS[0]}/seed-0 FAILED: its worker process ended without a result (killed by signal 9" in err
    assert f"{PRESETS[1]}/seed-0 FAILED: " in err and "in use by another advbp process" in err
    summary = json.loads((out / "summary.json").read_text())
    assert {f["run_dir"] for f in summary["failures"]} == {f"{p}/seed-0" for p in PRESETS}
    r = cli(["sweep", "--resume", "--out", str(out), "--data-dir", str(data_dir)])
    assert r.exit_code == 0, r.stderr
    assert json.loads((out / "summary.json").read_text())["complete"]


def test_worker_count_follows_the_cpus_and_the_runs_thread_counts(monkeypatch):
    from advbp_cli import parallel, threads
    from advbp_cli.parallel import LocalExecutor

    monkeypatch.setattr(threads, "usable_cpus", lambda: 8)
    runs = [(p, s) for p in PRESETS for s in range(3)]
    auto = LocalExecutor("auto", cpus=8)
    assert auto.worker_count(make_request(PRESETS, 3, OVERRIDES), runs) == 6  # never more than the runs left
    assert auto.worker_count(make_request(PRESETS, 8, OVERRIDES), runs * 2) == 8
    assert auto.worker_count(make_request(PRESETS, 3, OVERRIDES), runs[:1]) == 1  # one run: in this process
    three = {**OVERRIDES, "runtime": {"backend": "numpy", "threads": 3}}
    assert auto.worker_count(make_request(PRESETS, 8, three), runs * 2) == 2  # 8 CPUs // 3 threads per run
    assert LocalExecutor(5, cpus=8).worker_count(make_request(PRESETS, 3, OVERRIDES), runs) == 5
    gpu = {**OVERRIDES, "runtime": {"backend": "torch", "device": "cuda"}}
    assert auto.worker_count(make_request(PRESETS, 3, gpu), runs) == 1
    assert parallel.parse_workers("auto") == "auto"


@pytest.mark.parametrize("args, needle", [
    (["--workers", "0"], "--workers"),
    (["--workers", "many"], "--workers"),
    (["--workers", "2", "--executor", "ray"], "--workers"),
])
def test_bad_workers_options_are_one_line_exit_2(cli, data_dir, tmp_path, args, needle):
    out = tmp_path / "sw"
    r = cli(["sweep", PRESETS[0], *SMALL, *args, "--out", str(out), "--data-dir", str(data_dir)])
    assert r.exit_code == 2, r.stderr
    (line,) = r.stderr.strip().splitlines()
    assert line.startswith("Error: ") and needle in line and not out.exists()
