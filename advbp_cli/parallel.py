"""The local sweep executor: a sweep's runs in parallel worker processes on this machine (`advbp sweep
--workers N|auto`, the default executor).

Each (preset, seed) that is not complete trains in a process of its own (`python -m advbp_cli.sweep_worker`,
one run per process), at most `workers` at a time, each with its share of the CPUs as its thread count
(advbp_cli.threads: small MNIST steps use one thread anyway). A worker calls the same `sweep.run_one` as the
serial executor, so the run directories, their files and the summary are the same, and resuming works as always:
complete runs are skipped, half-written ones continue from their checkpoint.

`workers` auto: one worker per CPU a run uses (usable CPUs // the runs' --threads, 1 for auto), never more than
the runs left to do, and 1 for runs on a GPU. With one worker the runs train in this process, one after another
(`sweep.serial_executor`).

Ctrl-C stops every worker the way `advbp train` stops (each keeps its completed epochs), then the sweep exits 130
and `advbp sweep --resume` continues it. A sweep killed outright takes its workers with it (see sweep_worker).
"""

from __future__ import annotations

import json
import os
import selectors
import signal
import subprocess
import sys
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

from .errors import Interrupted
from .rundir import RunDir
from .sweep import RunOutcome, run_config, run_relpath, serial_executor
from .threads import AUTO, auto_workers, parse_threads, resolve_threads, usable_cpus, worker_env

STOP_SECONDS = 60.0  # how long stopped workers may take to wind down before they are killed
POLL_SECONDS = 0.5
STDERR_LINES = 20  # of a worker's stderr kept for the message of a failed run


def parse_workers(value) -> str | int:
    """--workers: "auto" or a positive integer (the same rule as --threads)."""
    try:
        return parse_threads(value)
    except ValueError:
        raise ValueError("expected 'auto' or a positive integer number of worker processes") from None


@dataclass
class _Worker:
    preset: str
    seed: int
    total: int
    proc: subprocess.Popen
    buffers: dict = field(default_factory=dict)  # fd -> bytes not yet ending in a newline
    stderr: deque = field(default_factory=lambda: deque(maxlen=STDERR_LINES))
    outcome: object = None
    interrupted: bool = False
    open_fds: int = 2


class LocalExecutor:
    """Callable as `sweep.run_sweep`'s executor. `workers`: "auto" or N; `cpus`: the CPUs the workers share
    (default: all usable ones)."""

    def __init__(self, workers="auto", cpus: int | None = None, stop_seconds: float = STOP_SECONDS):
        self.workers = parse_workers(workers)
        self.cpus = cpus or usable_cpus()
        self.stop_seconds = stop_seconds

    def worker_count(self, request, pending: list[tuple[str, int]]) -> int:
        if not pending:
            return 1
        if self.workers != AUTO:
            return min(self.workers, len(pending))
        configs = [run_config(p, s, request.overrides) for p, s in pending]
        if any(_on_gpu(c) for c in configs):
            return 1
        per_run = max(c.runtime.threads if c.runtime.threads != AUTO else 1 for c in configs)
        return min(auto_workers(per_run), len(pending))

    def __call__(self, sweep_dir: Path, request, data_dir: Path, ev) -> list:
        pending = [(p, s) for p, s in request.runs() if not RunDir(Path(sweep_dir) / run_relpath(p, s)).is_complete()]
        n = self.worker_count(request, pending)
        if n <= 1:
            return serial_executor(sweep_dir, request, data_dir, ev)
        return _Pool(Path(sweep_dir).resolve(), request, Path(data_dir).resolve(), ev, n, self.cpus,
                     self.stop_seconds).run()


def _on_gpu(cfg) -> bool:
    rt = cfg.runtime
    if rt.backend != "torch" or rt.device == "cpu":
        return False
    if rt.device == "cuda":
        return True
    # device auto: CUDA only where a driver is present; torch (slow to import) is asked only then
    if sys.platform.startswith("linux") and not Path("/dev/nvidiactl").exists():
        return False
    import torch

    return torch.cuda.is_available()


class _Pool:
    """The parent's side: starts workers, reads their events, and collects one RunOutcome per run."""

    def __init__(self, sweep_dir: Path, request, data_dir: Path, ev, workers: int, cpus: int, stop_seconds: float):
        self.sweep_dir, self.request, self.data_dir, self.ev = sweep_dir, request, data_dir, ev
        self.workers, self.cpus, self.stop_seconds = workers, cpus, stop_seconds
        self.sel = selectors.DefaultSelector()
        self.running: list[_Worker] = []
        self.outcomes: dict = {}
        self.stopping = False

    def run(self) -> list:
        todo = deque()
        for preset, seed in self.request.runs():
            rel = run_relpath(preset, seed)
            run = RunDir(self.sweep_dir / rel)
            if run.is_complete():
                self.outcomes[(preset, seed)] = RunOutcome(preset, seed, rel, "skipped", run.read_summary())
                self.ev.run_end(self.outcomes[(preset, seed)])
                continue
            cfg = run_config(preset, seed, self.request.overrides)
            todo.append((preset, seed, cfg))
            self.ev.progress(preset, seed, None, cfg.train.epochs, None)
        try:
            while todo or self.running:
                while todo and len(self.running) < self.workers:
                    self._start(*todo.popleft())
                self._pump(POLL_SECONDS)
        except KeyboardInterrupt:
            stopped = self._stop()
            raise _interrupted(stopped, self.sweep_dir) from None
        finally:
            self.sel.close()
        return [self.outcomes[k] for k in self.request.runs()]

    # --- workers
    def _start(self, preset: str, seed: int, cfg) -> None:
        threads = resolve_threads(cfg.runtime.threads, cfg, cpus=self.cpus, workers=self.workers).threads
        job = {"sweep_dir": str(self.sweep_dir), "preset": preset, "seed": seed, "overrides": self.request.overrides,
               "data_dir": str(self.data_dir), "argv": list(sys.argv), "workers": self.workers, "cpus": self.cpus,
               "parent_pid": os.getpid()}
        proc = subprocess.Popen([sys.executable, "-m", "advbp_cli.sweep_worker", json.dumps(job)],
                                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                env={**os.environ, **worker_env(threads)})
        w = _Worker(preset, seed, cfg.train.epochs, proc)
        for stream in (proc.stdout, proc.stderr):
            os.set_blocking(stream.fileno(), False)
            self.sel.register(stream, selectors.EVENT_READ, w)
        self.running.append(w)

    def _pump(self, timeout: float) -> None:
        """Reads what the workers wrote (for up to `timeout` seconds) and finishes the workers that ended."""
        for key, _ in self.sel.select(timeout):
            w: _Worker = key.data
            fd = key.fileobj.fileno()
            chunk = os.read(fd, 65536)
            if not chunk:
                self.sel.unregister(key.fileobj)
                key.fileobj.close()
                w.open_fds -= 1
                chunk = b"\n"  # the last line, if it did not end with a newline
            data = w.buffers.pop(fd, b"") + chunk
            *lines, rest = data.split(b"\n")
            if rest:
                w.buffers[fd] = rest
            for line in lines:
                self._line(w, key.fileobj is w.proc.stdout, line.decode(errors="replace"))
        for w in [w for w in self.running if w.open_fds == 0]:
            w.proc.wait()
            self.running.remove(w)
            self._finish(w)

    def _line(self, w: _Worker, from_stdout: bool, line: str) -> None:
        if not line.strip():
            return
        if not from_stdout:
            w.stderr.append(line)
            return
        try:
            msg = json.loads(line)
        except json.JSONDecodeError:
            w.stderr.append(line)
            return
        event = msg.get("event")
        if event == "start":
            w.total = msg["epochs"]
            self.ev.progress(w.preset, w.seed, msg["first_epoch"], w.total, None)
        elif event == "epoch":
            row = msg["row"]
            self.ev.progress(w.preset, w.seed, row["epoch"], w.total, row.get("eval_error"))
        elif event == "outcome":
            w.outcome = msg["outcome"]
        elif event == "interrupted":
            w.interrupted = True

    def _finish(self, w: _Worker) -> None:
        if self.stopping:  # the sweep stops: what each run saved is the record, --resume goes on from there
            return
        if w.outcome is not None:
            outcome = RunOutcome(**w.outcome)
        else:
            code = w.proc.returncode
            how = f"killed by signal {-code}" if code < 0 else f"exit code {code}"
            last = f"; its last words: {w.stderr[-1].strip()}" if w.stderr else ""
            if w.interrupted:
                how = "stopped by SIGINT"
            outcome = RunOutcome(w.preset, w.seed, run_relpath(w.preset, w.seed), "failed", None, 0,
                                 f"its worker process ended without a result ({how}{last}); "
                                 "--resume continues it from its last checkpoint")
        self.outcomes[(w.preset, w.seed)] = outcome
        self.ev.run_end(outcome)

    # --- Ctrl-C
    def _stop(self) -> int:
        """Asks every worker to stop (SIGINT: the terminal may have sent it already; a second one is ignored),
        waits for them to save nothing more and exit, and kills those that do not within stop_seconds. A
        second Ctrl-C here kills them at once. Returns how many were running."""
        self.stopping = True
        stopped = len(self.running)
        for w in self.running:
            _signal(w.proc, signal.SIGINT)
        deadline = time.monotonic() + self.stop_seconds
        try:
            while self.running and time.monotonic() < deadline:
                self._pump(0.1)
        except KeyboardInterrupt:
            pass
        for w in self.running:
            _signal(w.proc, signal.SIGKILL)
            w.proc.wait()
        self.running.clear()
        return stopped


def _signal(proc: subprocess.Popen, sig: int) -> None:
    try:
        proc.send_signal(sig)
    except ProcessLookupError:
        pass


def _interrupted(stopped: int, sweep_dir: Path):
    return Interrupted(f"interrupted; {stopped} run(s) were stopped, their completed epochs are saved. "
                       f"Resume the sweep with: advbp sweep --resume --out {sweep_dir}")
