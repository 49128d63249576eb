"""`advbp sweep --executor ray`: a real local Ray instance (loopback only, 2 CPUs) runs the same runs as the local
executor, with the same summary; a worker killed mid-run is retried and its run resumes from its checkpoint; a
run that fails for a real reason is reported, not retried; --resume works across executors; without Ray the
option says how to install it. One Ray instance is shared by the module's tests (it takes seconds to start)."""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest

PRESETS = ["mnist-relu-2x400-adv", "mnist-relu-2x400-backprop"]
SETTINGS = ["--epochs", "2", "--train-limit", "400", "--eval-limit", "200", "--backend", "numpy"]
SMALL = ["--seeds", "2", *SETTINGS]
OVERRIDES = {"train": {"epochs": 2}, "data": {"train_limit": 400, "eval_limit": 200}, "runtime": {"backend": "numpy"}}
INSTALL = "pip install 'advbp[ray]'"

needs_ray = pytest.mark.skipif(importlib.util.find_spec("ray") is None,
                               reason=f"ray is not installed ({INSTALL}); CI installs it so these tests run")


def _summary(sweep_dir: Path) -> dict:
    return json.loads((sweep_dir / "summary.json").read_text())


def _metrics(run_dir: Path) -> list[dict]:  # without the timings
    rows = [json.loads(ln) for ln in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if "seconds" not in k} for r in rows]


def _same_runs(a: Path, b: Path, presets=PRESETS, seeds=(0, 1)) -> None:
    for p in presets:
        for s in seeds:
            ra, rb = a / p / f"seed-{s}", b / p / f"seed-{s}"
            assert _metrics(ra) == _metrics(rb), f"{p}/seed-{s}"
            ha, hb = (json.loads((r / "summary.json").read_text())["headline"] for r in (ra, rb))
            assert ha == hb


# --------------------------------------------------------------------------------------------- without Ray
def test_advbp_never_imports_ray_at_import_time():
    code = ("import sys, advbp_cli.cli, advbp_cli.executors, advbp_cli.commands.sweep, advbp_cli.sweep; "
            "assert 'ray' not in sys.modules, 'ray imported'")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_without_ray_the_executor_says_how_to_install_it(cli, data_dir, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError, as if it were not installed
    out = tmp_path / "sw"
    r = cli(["sweep", *PRESETS, *SMALL, "--executor", "ray", "--out", str(out), "--data-dir", str(data_dir)])
    assert r.exit_code == 2, r.stderr
    (line,) = r.stderr.strip().splitlines()
    assert line.startswith("Error: ") and INSTALL in line and "Traceback" not in r.stderr
    assert not out.exists()
    # The Ray options mean nothing to the local executor (the default): a usage error, not silently ignored.
    r = cli(["sweep", *PRESETS, *SMALL, "--gpus-per-run", "1", "--out", str(out), "--data-dir", str(data_dir)])
    assert r.exit_code == 2 and r.stderr.count("\n") == 1 and "--executor ray" in r.stderr
    assert not out.exists()


# --------------------------------------------------------------------------------------------- the CLI's own Ray
@needs_ray
def test_the_cli_starts_and_stops_its_own_local_ray_instance(data_dir, tmp_path):
    """No --address: `advbp sweep --executor ray` starts a local instance, runs the sweep on it, shuts it down."""
    out = tmp_path / "sw"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    args = ["sweep", PRESETS[1], "--seeds", "1", "--epochs", "1", "--train-limit", "200", "--eval-limit", "100",
            "--backend", "numpy", "--executor", "ray", "--out", str(out), "--data-dir", str(data_dir), "--json"]
    p = subprocess.run([sys.executable, "-m", "advbp_cli", *args], env=env, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    summary = json.loads(p.stdout)
    assert summary["complete"] and summary["runs_complete"] == 1
    assert summary["presets"][0]["values"] == [json.loads((out / PRESETS[1] / "seed-0" / "summary.json").read_text())["headline"]["value"]]


# --------------------------------------------------------------------------------------------- a shared instance
def _tcp_listeners() -> dict[int, str]:
    """socket inode -> local address, for the listening TCP sockets of this machine."""
    out = {}
    for name in ("tcp", "tcp6"):
        try:
            lines = Path(f"/proc/net/{name}").read_text().splitlines()[1:]
        except OSError:
            continue
        for ln in lines:
            f = ln.split()
            if f[3] != "0A":  # LISTEN
                continue
            hexaddr = f[1].split(":")[0]
            raw = bytes.fromhex(hexaddr)
            raw = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))  # each 32-bit word is little-endian
            out[int(f[9])] = socket.inet_ntop(socket.AF_INET if len(raw) == 4 else socket.AF_INET6, raw)
    return out


def _process_tree(root: int) -> set[int]:
    parents = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                parents[int(d.name)] = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                pass
    tree, grew = {root}, True
    while grew:
        new = {pid for pid, ppid in parents.items() if ppid in tree and pid not in tree}
        tree |= new
        grew = bool(new)
    return tree


def _listening_addresses_of(pids: set[int]) -> set[str]:
    listeners = _tcp_listeners()
    found = set()
    for pid in pids:
        try:
            fds = list(Path(f"/proc/{pid}/fd").iterdir())
        except OSError:
            continue
        for fd in fds:
            try:
                target = os.readlink(fd)
            except OSError:
                continue
            if target.startswith("socket:["):
                inode = int(target[8:-1])
                if inode in listeners:
                    found.add(listeners[inode])
    return found


@pytest.fixture(scope="module")
def ray_session():
    """One local Ray instance (2 CPUs, loopback only) for the module; the CLI uses the session it finds."""
    pytest.importorskip("ray", reason=f"ray is not installed ({INSTALL})")
    from advbp_cli.executors import local_ray

    old = os.environ.get("OMP_NUM_THREADS")
    os.environ["OMP_NUM_THREADS"] = "1"
    try:
        with local_ray(num_cpus=2) as ray:
            assert ray.get_runtime_context().gcs_address.startswith("127.0.0.1:")
            # Warm the worker pool up and check that nothing Ray started listens beyond the loopback interface.
            ray.get([ray.remote(lambda: os.getpid()).options(num_cpus=1).remote() for _ in range(2)])
            addresses = _listening_addresses_of(_process_tree(os.getpid()))
            assert addresses and all(a in ("127.0.0.1", "::1", "::ffff:127.0.0.1") for a in addresses), addresses
            yield ray
    finally:
        if old is None:
            os.environ.pop("OMP_NUM_THREADS", None)
        else:
            os.environ["OMP_NUM_THREADS"] = old


@pytest.fixture(scope="module")
def local_sweep(data_dir, tmp_path_factory):
    """The reference: the same sweep with the local executor, in parallel worker processes (test_sweep_parallel.py
    shows that it equals the serial one)."""
    from conftest import run_cli

    out = tmp_path_factory.mktemp("local") / "sw"
    r = run_cli(["sweep", *PRESETS, *SMALL, "--workers", "2", "--out", str(out), "--data-dir", str(data_dir)])
    assert r.exit_code == 0, r.stderr
    return out


@needs_ray
def test_ray_sweep_equals_the_local_one_and_resumes_with_the_local_executor(cli, data_dir, tmp_path, ray_session, local_sweep):
    out = tmp_path / "sw"
    r = cli(["sweep", *PRESETS, *SMALL, "--executor", "ray", "--cpus-per-run", "1", "--out", str(out),
             "--data-dir", str(data_dir)])
    assert r.exit_code == 0, r.stderr
    assert r.stderr.count(" trained: ") == 4
    summary = _summary(out)
    assert summary["complete"] and summary["runs_complete"] == 4 and summary["failures"] == []
    assert summary == _summary(local_sweep)  # the same numbers: numpy on CPU is deterministic
    _same_runs(out, local_sweep)
    assert (out / "summary.csv").read_text() == (local_sweep / "summary.csv").read_text()
    assert (out / "summary.md").read_text() == (local_sweep / "summary.md").read_text()
    assert not list(out.rglob("*.tmp"))

    # ray -> local: the run directories are the source of truth, nothing is redone
    before = {p: p.stat().st_mtime_ns for p in out.rglob("seed-*/summary.json")}
    res = cli(["sweep", "--resume", "--out", str(out), "--data-dir", str(data_dir)])
    assert res.exit_code == 0, res.stderr
    assert res.stderr.count("already complete, kept") == 4
    assert {p: p.stat().st_mtime_ns for p in out.rglob("seed-*/summary.json")} == before
    assert _summary(out) == summary


@needs_ray
def test_local_sweep_with_a_half_written_run_is_finished_by_ray(cli, data_dir, tmp_path, ray_session, local_sweep):
    from advbp_cli.sweep import run_one
    from advbp_cli.errors import Interrupted
    from advbp_cli.trainer import Reporter

    out = tmp_path / "sw"
    r = cli(["sweep", *PRESETS, "--seeds", "1", *SETTINGS, "--out", str(out), "--data-dir", str(data_dir)])
    assert r.exit_code == 0, r.stderr

    def stop_after_first_epoch(row):
        raise KeyboardInterrupt

    overrides = json.loads((out / "sweep.json").read_text())["request"]["overrides"]
    assert overrides == OVERRIDES
    with pytest.raises((KeyboardInterrupt, Interrupted)):  # a local run killed after epoch 1's checkpoint
        run_one(out, PRESETS[0], 1, overrides, data_dir, reporter=Reporter(epoch_end=stop_after_first_epoch))
    assert not (out / PRESETS[0] / "seed-1" / "summary.json").exists()

    res = cli(["sweep", "--resume", "--seeds", "2", "--executor", "ray", "--out", str(out), "--data-dir", str(data_dir)])
    assert res.exit_code == 0, res.stderr
    assert res.stderr.count("already complete, kept") == 2
    assert f"{PRESETS[0]}/seed-1 trained (resumed after epoch 1)" in res.stderr
    assert f"{PRESETS[1]}/seed-1 trained: " in res.stderr
    assert _summary(out) == _summary(local_sweep)
    _same_runs(out, local_sweep)


def _kill_the_worker_of(run_dir: Path) -> tuple[threading.Thread, dict]:
    """A thread that SIGKILLs the process training run_dir (its PID is in the run directory's lock file) once the
    run has a checkpoint and before it ends; what it killed is in the returned dict."""
    from advbp_cli.rundir import LOCK

    killed: dict = {}

    def killer():
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            try:  # the checkpoint is written (atomically) after the epoch's metrics
                epochs = len((run_dir / "metrics.jsonl").read_text().splitlines())
                pid = int((run_dir / LOCK).read_text())
            except (OSError, ValueError):
                epochs = 0
            if epochs >= 1 and (run_dir / "checkpoint.safetensors").exists() and not (run_dir / "summary.json").exists():
                assert pid != os.getpid()
                killed.update(pid=pid, after_epoch=epochs, cmd=Path(f"/proc/{pid}/cmdline").read_bytes())
                os.kill(pid, signal.SIGKILL)
                return
            time.sleep(0.005)

    t = threading.Thread(target=killer, daemon=True)
    t.start()
    return t, killed


KILL_SETTINGS = ["--epochs", "12", "--train-limit", "400", "--eval-limit", "200", "--backend", "numpy"]


@needs_ray
def test_a_killed_worker_is_retried_and_its_run_resumes_from_its_checkpoint(cli, data_dir, tmp_path, ray_session):
    """SIGKILL the worker process that trains seed-0 after its first checkpoint: Ray retries the task on a new
    worker, which continues from the checkpoint; the summary is complete and equals the local executor's."""
    settings = ["--seeds", "2", *KILL_SETTINGS]
    out = tmp_path / "ray"
    run_dir = out / PRESETS[0] / "seed-0"
    t, killed = _kill_the_worker_of(run_dir)
    r = cli(["sweep", PRESETS[0], *settings, "--executor", "ray", "--out", str(out), "--data-dir", str(data_dir)])
    t.join(timeout=5)
    assert killed, "the killer never found seed-0 between its first checkpoint and its end"
    assert r.exit_code == 0, r.stderr
    assert "(raylet)" not in r.stdout  # Ray's own messages go to stderr, stdout is advbp's
    assert b"ray" in killed["cmd"].lower(), killed  # it was a Ray worker process, not this one
    assert f"{PRESETS[0]}/seed-0 trained (resumed after epoch " in r.stderr, r.stderr
    with pytest.raises(ProcessLookupError):
        os.kill(killed["pid"], 0)
    summary = _summary(out)
    assert summary["complete"] and summary["runs_complete"] == 2 and summary["failures"] == []
    config = json.loads((run_dir / "config.json").read_text())
    assert config["resumed"][0]["after_epoch"] >= 1

    ref = tmp_path / "local"
    r = cli(["sweep", PRESETS[0], *settings, "--out", str(ref), "--data-dir", str(data_dir)])
    assert r.exit_code == 0, r.stderr
    assert summary == _summary(ref)
    _same_runs(out, ref, presets=[PRESETS[0]])


@needs_ray
def test_retries_are_bounded_and_a_lost_run_is_finished_by_resume(cli, data_dir, tmp_path, ray_session):
    """With no retries left a lost worker is a failed run (reported, the others summarised); --resume (here with
    the local executor) continues it from its checkpoint."""
    from advbp_cli.executors import RayExecutor
    from advbp_cli.sweep import SweepEvents, make_request, run_sweep

    out = tmp_path / "sw"
    overrides = {"train": {"epochs": 12}, "data": {"train_limit": 400, "eval_limit": 200}, "runtime": {"backend": "numpy"}}
    progress = []  # what the live table is told, from the driver's polling of the run directory
    events = SweepEvents(progress=lambda *a: progress.append(a))
    t, killed = _kill_the_worker_of(out / PRESETS[0] / "seed-0")
    with RayExecutor(max_retries=0, poll_seconds=0.05) as execute:
        summary = run_sweep(out, make_request([PRESETS[0]], 1, overrides), data_dir, events=events, executor=execute)
    t.join(timeout=5)
    assert killed
    assert progress[0] == (PRESETS[0], 0, None, 12, None)  # queued
    done = [p[2] for p in progress[1:]]
    assert done == sorted(done) and done[-1] >= 1 and all(p[3] == 12 for p in progress)
    assert isinstance(progress[-1][4], float)  # the last epoch's eval error
    (failure,) = summary["failures"]
    assert failure["status"] == "failed" and "worker was lost 1 time(s)" in failure["message"], failure
    assert not summary["complete"]

    r = cli(["sweep", "--resume", "--out", str(out), "--data-dir", str(data_dir)])
    assert r.exit_code == 0, r.stderr
    assert f"{PRESETS[0]}/seed-0 trained (resumed after epoch " in r.stderr
    assert _summary(out)["complete"]


@needs_ray
@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_runs_failing_for_a_real_reason_are_reported_not_retried(cli, data_dir, tmp_path, ray_session):
    from advbp_cli.executors import RayExecutor
    from advbp_cli.rundir import RunDir
    from advbp_cli.sweep import make_request, run_sweep

    # seed-1's run directory is locked by another process (here: this one): a UsageProblem in its task
    from advbp_cli.outdir import write_marker

    out = tmp_path / "sw"
    out.mkdir()
    write_marker(out, "sweep")  # a sweep folder of advbp's (advbp writes only into its own folders)
    holder = RunDir(out / PRESETS[1] / "seed-1")
    holder.lock()
    try:
        t0 = time.monotonic()
        r = cli(["sweep", PRESETS[1], "--seeds", "2", "--epochs", "1", "--train-limit", "200", "--eval-limit", "100",
                 "--backend", "numpy", "--executor", "ray", "--resume", "--out", str(out), "--data-dir", str(data_dir)])
        elapsed = time.monotonic() - t0
    finally:
        holder.unlock()
    assert r.exit_code == 2, r.stderr
    assert f"{PRESETS[1]}/seed-1 FAILED: " in r.stderr and "in use by another advbp process" in r.stderr
    error = [ln for ln in r.stderr.splitlines() if ln.startswith("Error: ")]
    assert len(error) == 1 and "1 of 2 runs did not complete" in error[0] and "--resume" in error[0]
    summary = _summary(out)
    assert summary["runs_complete"] == 1 and not summary["complete"]
    (failure,) = summary["failures"]
    assert failure["status"] == "failed" and failure["run_dir"] == f"{PRESETS[1]}/seed-1"
    assert elapsed < 60

    # divergence comes back as "diverged", as with the local executor
    overrides = {"train": {"epochs": 1, "lr": 1e30}, "data": {"train_limit": 200, "eval_limit": 50},
                 "runtime": {"backend": "numpy"}}
    with RayExecutor() as execute:
        summary = run_sweep(tmp_path / "div", make_request([PRESETS[0]], 1, overrides), data_dir, executor=execute)
    (failure,) = summary["failures"]
    assert failure["status"] == "diverged" and "diverged" in failure["message"]
    assert summary["runs_complete"] == 0


@needs_ray
def test_bad_ray_options_are_usage_errors(cli, data_dir, tmp_path, ray_session):
    out = tmp_path / "sw"
    base = ["sweep", PRESETS[0], *SMALL, "--executor", "ray", "--out", str(out), "--data-dir", str(data_dir)]
    for extra, needle in ((["--address", "nohost"], "--address"), (["--address", "h:99999"], "--address"),
                          (["--cpus-per-run", "0"], "--cpus-per-run")):
        r = cli([*base, *extra])
        assert r.exit_code == 2 and r.stderr.count("\n") == 1 and needle in r.stderr, r.stderr
        assert not out.exists()


# --------------------------------------------------------------------------------------------- an existing cluster
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def ray_head(tmp_path):
    """A Ray head node as `ray start --head` makes one (here on the loopback interface, in its own process group,
    with its own HOME so its auth token stays in the test's directory): 'an existing cluster'."""
    pytest.importorskip("ray", reason=f"ray is not installed ({INSTALL})")
    port = _free_port()
    env = {**os.environ, "HOME": str(tmp_path / "home"), "OMP_NUM_THREADS": "1", "RAY_USAGE_STATS_ENABLED": "0",
           "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
    for k in ("RAY_AUTH_MODE", "RAY_ADDRESS"):  # ray.init() in this process sets RAY_AUTH_MODE; not for this cluster
        env.pop(k, None)
    log = open(tmp_path / "head.log", "w")
    # Its own temp dir (short: Ray's socket paths must fit 107 bytes), so that it records its address there and
    # not in /tmp/ray, where a later ray.init() on this machine would find it
    temp_dir = tempfile.mkdtemp(prefix="advbp-ray-", dir="/tmp")
    proc = subprocess.Popen([sys.executable, "-m", "ray.scripts.scripts", "start", "--head", "--block", "--port", str(port),
                             "--node-ip-address", "127.0.0.1", "--num-cpus", "2", "--include-dashboard", "false",
                             "--disable-usage-stats", "--temp-dir", temp_dir],
                            env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while "Ray runtime started" not in (tmp_path / "head.log").read_text():
            assert proc.poll() is None, (tmp_path / "head.log").read_text()
            assert time.monotonic() < deadline, "ray start --head did not come up within 60 s"
            time.sleep(0.2)
        yield proc, f"127.0.0.1:{port}", env
    finally:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=1)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            pass
        with contextlib.suppress(ProcessLookupError):  # whatever of its group is left (it is ours alone)
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        log.close()
        shutil.rmtree(temp_dir, ignore_errors=True)


@needs_ray
def test_a_sweep_on_an_existing_cluster_leaves_the_cluster_running(data_dir, tmp_path, ray_head):
    head, address, env = ray_head
    out = tmp_path / "sw"
    args = ["sweep", PRESETS[1], "--seeds", "2", "--epochs", "1", "--train-limit", "200", "--eval-limit", "100",
            "--backend", "numpy", "--executor", "ray", "--address", address, "--out", str(out),
            "--data-dir", str(data_dir), "--json"]
    driver_env = dict(env)
    driver_env.pop("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER")  # advbp itself keeps a loopback address on the loopback
    p = subprocess.run([sys.executable, "-m", "advbp_cli", *args], env=driver_env, capture_output=True, text=True,
                       timeout=120)
    assert p.returncode == 0, p.stderr
    summary = json.loads(p.stdout)
    assert summary["complete"] and summary["runs_complete"] == 2
    assert head.poll() is None  # the driver disconnected; the cluster is the user's and keeps running


@needs_ray
def test_a_lost_worker_is_retried_exactly_3_times_with_cpus_per_run_blas_threads(cli, data_dir, tmp_path, ray_session):
    """The README: a task whose worker is lost is retried up to 3 times, and --cpus-per-run sets the BLAS threads
    of the process that trains. Every process that takes the run is SIGKILLed as soon as it holds the run's lock
    (after its thread settings are read from its environment): Ray starts it 1 + 3 times, then reports it lost."""
    from advbp_cli.rundir import LOCK

    out = tmp_path / "sw"
    lock = out / PRESETS[0] / "seed-0" / LOCK
    seen: list[dict] = []
    stop = threading.Event()

    def killer():
        while not stop.is_set():
            try:
                pid = int(lock.read_text())
            except (OSError, ValueError):
                pid = None
            if pid and pid not in {s["pid"] for s in seen}:
                try:
                    env = dict(kv.split(b"=", 1) for kv in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0") if b"=" in kv)
                    os.kill(pid, signal.SIGKILL)
                    seen.append({"pid": pid, "env": env})
                except (OSError, ValueError):
                    pass  # a pid left in the lock file by a worker killed before
            time.sleep(0.005)

    t = threading.Thread(target=killer, daemon=True)
    t.start()
    try:
        r = cli(["sweep", PRESETS[0], "--seeds", "1", "--epochs", "50", "--train-limit", "400", "--eval-limit", "100",
                 "--backend", "numpy", "--executor", "ray", "--cpus-per-run", "2", "--out", str(out),
                 "--data-dir", str(data_dir)])
    finally:
        stop.set()
        t.join(timeout=5)
    summary = _summary(out)
    (failure,) = summary["failures"]
    assert "worker was lost 4 time(s)" in failure["message"], (failure, r.stderr)
    assert len(seen) == 4, seen  # the first attempt and exactly 3 retries
    for s in seen:
        assert s["env"].get(b"OMP_NUM_THREADS") == b"2" and s["env"].get(b"OPENBLAS_NUM_THREADS") == b"2", s
    assert r.exit_code != 0 or not summary["complete"]
