"""Sweep executors besides the serial one in advbp_cli.sweep: Ray, for sweeps that outgrow one machine.

`advbp sweep ... --executor ray` sends every (preset, seed) that is not complete yet to Ray as one task. The task
calls the same `sweep.run_one` as the local executor, so the run directories, their files and the aggregate
(computed by the driver from the runs' summary.json files) are the same whichever executor ran them, and a
sweep started by one executor can be resumed by the other: the run directories are the source of truth.

What it needs:
- A filesystem shared by the driver and every Ray node, at the same path: the tasks write their run directories
  under the sweep directory, the driver reads them for the live table and the aggregate, and every node reads
  the data from --data-dir (the driver makes sure the data is there before anything starts).
- advbp (the same version) and its dependencies installed on every node, where `import advbp_cli` works.

Failures: a task whose worker process (or node) dies is retried by Ray up to MAX_RETRIES times, and `run_one`
continues the run from its last checkpoint. A run that fails for a reason that a retry would not fix is not
retried: divergence comes back as status "diverged" (as with the local executor), a UsageProblem (e.g. the run
directory is locked by another process, or holds another config) as status "failed" with its message, and so
does an unexpected exception in the task (Ray does not retry exceptions: retry_exceptions=False).

Ray is an optional extra (`pip install 'advbp[ray]'`) and is imported only when this executor is used.
"""

from __future__ import annotations

import contextlib
import dataclasses
import ipaddress
import json
import logging
import os
import socket
import sys
from pathlib import Path

from .errors import Interrupted, UsageProblem
from .parallel import LocalExecutor
from .rundir import RunDir
from .sweep import RunOutcome, run_config, run_one, run_relpath

EXECUTORS = ("local", "ray")
INSTALL_HINT = "pip install 'advbp[ray]'"
MAX_RETRIES = 3  # per task, for lost workers (a killed process, a lost node); exceptions are never retried
POLL_SECONDS = 0.5  # how often the driver reads the run directories for the live table
# Read by Ray when it is imported: "0" makes Ray take 127.0.0.1 as this node's address, so that a local instance
# advertises and binds its servers on the loopback interface only (Ray's default on Linux is the routable address).
RAY_LOOPBACK_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"


def import_ray():
    try:
        import ray  # lazy: an optional extra, imported only for --executor ray
    except ImportError as exc:
        raise UsageProblem(f"--executor ray needs Ray, which cannot be imported here ({exc}); "
                           f"install it with: {INSTALL_HINT}") from None
    return ray


def make_executor(name: str, address: str | None, cpus_per_run: float | None, gpus_per_run: float | None,
                  workers=None):
    """A context manager for `advbp sweep --executor NAME`, entered around the sweep; it yields the executor
    to pass to `sweep.run_sweep`. Checks the options before anything is written."""
    given = [flag for flag, v in (("--address", address), ("--cpus-per-run", cpus_per_run),
                                  ("--gpus-per-run", gpus_per_run)) if v is not None]
    if name == "local":
        if given:
            raise UsageProblem(f"{', '.join(given)} only apply to --executor ray (the local executor runs its runs "
                               "in worker processes on this machine; --workers sets how many)")
        return contextlib.nullcontext(LocalExecutor("auto" if workers is None else workers))
    if name != "ray":
        raise UsageProblem(f"invalid value for --executor: {name!r} (expected one of {', '.join(EXECUTORS)})")
    if workers is not None:
        raise UsageProblem("--workers applies to the local executor; with --executor ray every run is a Ray task "
                           "(--cpus-per-run sets what each one reserves)")
    import_ray()
    if address is not None:
        check_address(address)
    return RayExecutor(address=address, cpus_per_run=1.0 if cpus_per_run is None else cpus_per_run,
                       gpus_per_run=0.0 if gpus_per_run is None else gpus_per_run)


def check_address(address: str) -> None:
    if address == "auto" or address.startswith("ray://"):
        return
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise UsageProblem(f"invalid value for --address: {address!r} (expected 'auto' for the cluster this node "
                           "belongs to, HOST:PORT of a Ray head node's GCS, or ray://HOST:PORT for Ray Client)")


@contextlib.contextmanager
def _loopback_node():
    """Within the block, Ray takes this machine's address to be 127.0.0.1 (not its routable address, Ray's default
    on Linux): a Ray instance started here advertises and binds its servers on the loopback interface only, and
    a driver connecting to a head node on 127.0.0.1 is not redirected to the routable address."""
    saved_env = {k: os.environ.get(k) for k in (RAY_LOOPBACK_ENV, "RAY_USAGE_STATS_ENABLED")}
    os.environ[RAY_LOOPBACK_ENV] = "0"  # for this process if Ray is imported now, and for Ray's own processes
    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"  # nothing leaves the machine
    ray = import_ray()
    constants = getattr(getattr(ray, "_private", None), "ray_constants", None)
    saved_const = getattr(constants, "ENABLE_RAY_CLUSTER", None)
    if saved_const is not None:  # Ray was imported before the variable was set
        constants.ENABLE_RAY_CLUSTER = False
    try:
        yield ray
    finally:
        for k, v in saved_env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        if saved_const is not None:
            constants.ENABLE_RAY_CLUSTER = saved_const


@contextlib.contextmanager
def local_ray(num_cpus: int | None = None, num_gpus: int | None = None):
    """A Ray instance on this machine for the duration of the block, reachable on the loopback interface only
    (its GCS, raylet and workers listen on 127.0.0.1), without a dashboard; shut down on exit."""
    with _loopback_node() as ray:
        # address="local": always a new instance (ray.init() alone would join a cluster that `ray start` or
        # RAY_ADDRESS recorded on this machine)
        ray.init(address="local", num_cpus=num_cpus, num_gpus=num_gpus, include_dashboard=False, _node_ip_address="127.0.0.1",
                 log_to_driver=False, logging_level=logging.ERROR)
        try:
            yield ray
        finally:
            ray.shutdown()


def _is_loopback(address: str) -> bool:
    host = address.removeprefix("ray://").rpartition(":")[0].strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def thread_env(cpus_per_run: float) -> dict[str, str]:
    """Worker environment: the BLAS/OpenMP thread pools sized to the CPUs a run asked for."""
    n = str(max(1, int(cpus_per_run)))
    return {"OMP_NUM_THREADS": n, "MKL_NUM_THREADS": n, "OPENBLAS_NUM_THREADS": n}


# --------------------------------------------------------------------------------------------- the task
def run_task(sweep_dir: str, preset: str, seed: int, overrides: dict, data_dir: str, argv: list[str]) -> dict:
    """The body of one Ray task: `run_one` for (preset, seed), its outcome as a plain dict. UsageProblem comes
    back as status "failed" (a retry would not fix it); TrainingDiverged already comes back as "diverged"."""
    old_argv = sys.argv
    sys.argv = list(argv)  # provenance records the sweep's command line, as with the local executor
    try:
        outcome = run_one(sweep_dir, preset, seed, overrides, data_dir)
    except UsageProblem as exc:
        outcome = RunOutcome(preset, seed, run_relpath(preset, seed), "failed", None, 0, _one_line(exc))
    finally:
        sys.argv = old_argv
    return dataclasses.asdict(outcome)


def _check_reachable(address: str, timeout: float = 10.0) -> None:
    """HOST:PORT must accept TCP connections: Ray itself would keep retrying an address where nothing listens."""
    if address == "auto" or address.startswith("ray://"):
        return
    host, _, port = address.rpartition(":")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout).close()
    except OSError as exc:
        raise UsageProblem(f"--address {address}: no Ray head node answers there ({exc.strerror or exc}); "
                           "check the address printed by 'ray start --head' on the head node") from None


def _one_line(text) -> str:
    return " ".join(str(text).split())


# --------------------------------------------------------------------------------------------- the executor
class _Watch:
    """The driver's view of one submitted run, from its run directory (shared filesystem): epochs completed and
    the last epoch's eval error, read from metrics.jsonl when it changes."""

    def __init__(self, preset: str, seed: int, path: Path, total: int):
        self.preset, self.seed, self.path, self.total = preset, seed, path, total
        self.seen = None

    def poll(self, ev) -> None:
        try:
            config = (self.path / "config.json").stat()
        except OSError:
            return  # not started (queued)
        metrics = self.path / "metrics.jsonl"
        try:
            st = metrics.stat()
            key = (config.st_mtime_ns, st.st_mtime_ns, st.st_size)
        except OSError:
            st, key = None, (config.st_mtime_ns, None, None)
        if key == self.seen:
            return
        self.seen = key
        done, last = 0, None
        if st is not None:
            try:
                lines = [ln for ln in metrics.read_text().splitlines() if ln.strip()]
                done = len(lines)
                last = json.loads(lines[-1]).get("eval_error") if lines else None
            except (OSError, ValueError, AttributeError):
                return  # a display only: read again at the next poll
        ev.progress(self.preset, self.seed, done, self.total, last)


class RayExecutor:
    """Runs a sweep's runs as Ray tasks, `cpus_per_run` CPUs and `gpus_per_run` GPUs each.

    As a context manager it connects to Ray: `address` None starts a local instance (loopback only, all of this
    machine's CPUs and GPUs) and shuts it down on exit; "auto", HOST:PORT or ray://HOST:PORT connect to an
    existing cluster, which is left running. A Ray session this process already holds (ray.init called before,
    e.g. by a test or a notebook) is used as it is. Inside the block the executor is the callable that
    `sweep.run_sweep` takes."""

    def __init__(self, address: str | None = None, cpus_per_run: float = 1.0, gpus_per_run: float = 0.0,
                 max_retries: int = MAX_RETRIES, poll_seconds: float = POLL_SECONDS, num_cpus: int | None = None):
        self.address = address
        self.cpus_per_run = cpus_per_run
        self.gpus_per_run = gpus_per_run
        self.max_retries = max_retries
        self.poll_seconds = poll_seconds
        self.num_cpus = num_cpus  # of a local instance; None: all of this machine's
        self._stack: contextlib.ExitStack | None = None
        self.started_local = False

    # --- connecting
    def __enter__(self):
        ray = import_ray()
        self._stack = contextlib.ExitStack()
        try:
            self._connect(ray)
            self._check_resources(ray)
        except BaseException:
            self._stack.close()
            self._stack = None
            raise
        return self

    def _connect(self, ray) -> None:
        # Ray's driver prints the cluster's error messages (e.g. "A worker died or was killed ...") on stdout, which
        # holds advbp's results (--json): they go to stderr while Ray is connected, beside the live table.
        self._stack.enter_context(contextlib.redirect_stdout(sys.stderr))
        if ray.is_initialized():
            return
        if self.address is None:
            self._stack.enter_context(local_ray(num_cpus=self.num_cpus))
            self.started_local = True
            return
        _check_reachable(self.address)
        if _is_loopback(self.address):  # a head node on this machine's loopback interface (e.g. a test's)
            self._stack.enter_context(_loopback_node())
        try:
            ray.init(address=self.address, log_to_driver=False, logging_level=logging.ERROR)
        except Exception as exc:  # noqa: BLE001 - any reason (unreachable, refused, auth): one line, exit 2
            raise UsageProblem(f"--address {self.address}: cannot connect to a Ray cluster ({_one_line(exc)}); "
                               "start one with 'ray start --head', or leave out --address for a local one") from None
        self._stack.callback(ray.shutdown)  # disconnects this driver; the cluster keeps running

    def __exit__(self, *exc):
        if self._stack is not None:
            self._stack.close()
            self._stack = None
        return False

    def _check_resources(self, ray) -> None:
        nodes = [n.get("Resources", {}) for n in ray.nodes() if n.get("Alive")]
        best_cpu = max((r.get("CPU", 0) for r in nodes), default=0)
        best_gpu = max((r.get("GPU", 0) for r in nodes), default=0)
        if best_cpu >= self.cpus_per_run and best_gpu >= self.gpus_per_run:
            return
        msg = (f"no Ray node has the {self.cpus_per_run:g} CPU(s) and {self.gpus_per_run:g} GPU(s) a run asks for "
               f"(--cpus-per-run, --gpus-per-run); the largest node has {best_cpu:g} CPU(s), {best_gpu:g} GPU(s)")
        if self.started_local:
            raise UsageProblem(msg)
        # An autoscaling cluster may add such nodes later: the runs wait for them.
        print(f"advbp: warning: {msg}; the runs wait until the cluster has such a node", file=sys.stderr)

    # --- running
    def __call__(self, sweep_dir: Path, request, data_dir: Path, ev) -> list:
        ray = import_ray()
        sweep_dir = Path(sweep_dir).resolve()  # workers may start in another directory (or on another node)
        data_dir = Path(data_dir).resolve()
        task = ray.remote(run_task)
        resources = dict(num_cpus=self.cpus_per_run, num_gpus=self.gpus_per_run, max_retries=self.max_retries,
                         retry_exceptions=False, runtime_env={"env_vars": thread_env(self.cpus_per_run)})
        outcomes: dict[tuple[str, int], RunOutcome] = {}
        pending: dict = {}  # ObjectRef -> (preset, seed)
        watches: dict[tuple[str, int], _Watch] = {}
        for preset, seed in request.runs():
            rel = run_relpath(preset, seed)
            run = RunDir(sweep_dir / rel)
            if run.is_complete():  # as run_one would: no task for a complete run
                outcomes[(preset, seed)] = RunOutcome(preset, seed, rel, "skipped", run.read_summary())
                ev.run_end(outcomes[(preset, seed)])
                continue
            total = run_config(preset, seed, request.overrides).train.epochs
            ref = task.options(name=f"advbp {rel}", **resources).remote(
                str(sweep_dir), preset, seed, request.overrides, str(data_dir), list(sys.argv))
            pending[ref] = (preset, seed)
            watches[(preset, seed)] = _Watch(preset, seed, run.path, total)
            ev.progress(preset, seed, None, total, None)
        try:
            while pending:
                ready, _ = ray.wait(list(pending), num_returns=len(pending), timeout=self.poll_seconds)
                for ref in ready:
                    preset, seed = pending.pop(ref)
                    watches.pop((preset, seed)).poll(ev)  # its last progress, e.g. how far a lost run got
                    outcomes[(preset, seed)] = self._outcome(ray, ref, preset, seed)
                    ev.run_end(outcomes[(preset, seed)])
                for w in watches.values():
                    w.poll(ev)
        except KeyboardInterrupt:
            for ref in pending:  # kills their workers; each run keeps its last checkpoint
                with contextlib.suppress(Exception):
                    ray.cancel(ref, force=True)
            raise Interrupted(f"interrupted; {len(pending)} run(s) were stopped, their completed epochs are saved. "
                              f"Resume the sweep with: advbp sweep --resume --out {sweep_dir}") from None
        return [outcomes[k] for k in request.runs()]

    def _outcome(self, ray, ref, preset: str, seed: int):
        rel = run_relpath(preset, seed)
        try:
            return RunOutcome(**ray.get(ref))
        except ray.exceptions.RayTaskError as exc:  # an exception run_task does not expect: not retried
            cause = getattr(exc, "cause", None)
            what = f"{type(cause).__name__}: {_one_line(cause)}" if cause is not None else _one_line(exc).split(" Traceback")[0]
            return RunOutcome(preset, seed, rel, "failed", None, 0, f"error in its Ray task ({what})")
        except ray.exceptions.RayError as exc:  # its worker or node was lost more often than the retries allow
            return RunOutcome(preset, seed, rel, "failed", None, 0,
                              f"its Ray worker was lost {self.max_retries + 1} time(s) ({type(exc).__name__}); "
                              "--resume continues it from its last checkpoint")
