"""How many threads a run's arithmetic uses: the `runtime.threads` policy (`--threads N|auto`).

Why a policy: left alone, torch and numpy's BLAS each start one thread per core. Two trainings at once on 2 cores
then run 4 busy threads that spin-wait for each other at every small matrix product: 10-20x slower than one
training alone (benchmarks/RESULTS.md, "Threads"). The policy:

- `threads = N` uses N threads, whatever else runs (the user asked for it).
- `threads = "auto"` uses ONE thread when a step is small (forward multiply-adds of a mini-batch below
  SMALL_STEP_MACS: every MNIST network of the paper at batch 10, where a second thread gains nothing because
  each product takes a few microseconds), and otherwise this run's share of the CPUs: the usable CPUs
  (affinity, cgroup quota, and OMP_NUM_THREADS when the environment sets it) divided by the number of advbp
  workers that share them (the local parallel sweep passes its worker count), at least 1.

The count decides float32 bits (a matrix product split across threads sums in another order), so it is recorded
in config.json ("resolved": {"threads": N, ...}); the same count gives the same bits (tests/test_threads.py).

Applying a count (`apply_threads`): torch's intra-op threads (torch.set_num_threads, when torch is loaded),
every BLAS/OpenMP pool already loaded in this process through threadpoolctl (numpy's BLAS reads its environment
variables only when numpy is imported, which is before any option is parsed, so setting them would be too late),
and OMP_NUM_THREADS/OPENBLAS_NUM_THREADS/MKL_NUM_THREADS in os.environ for libraries loaded later (torch reads
OMP_NUM_THREADS when it is imported) and for child processes.
"""

from __future__ import annotations

import math
import os
import sys
from dataclasses import dataclass
from pathlib import Path

from threadpoolctl import threadpool_info, threadpool_limits

from .backends import architecture

AUTO = "auto"
THREAD_ENV = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")
# Below this many forward multiply-adds per mini-batch a second thread does not pay (benchmarks/threads_bench.py:
# MNIST 2x1200 at batch 10, 24 M, is no faster with 2 threads; CIFAR-10 2x3000 at batch 128, 2.3 G, is).
SMALL_STEP_MACS = 100_000_000


@dataclass(frozen=True)
class ThreadChoice:
    """The resolved thread count of one run and why: recorded in config.json's "resolved" section."""

    threads: int
    setting: str | int  # "auto" or the N asked for
    reason: str

    def to_json(self) -> dict:
        return {"threads": self.threads, "threads_setting": self.setting, "threads_reason": self.reason}


EXPECTED = "expected 'auto' or a positive integer number of threads"


def parse_threads(value) -> str | int:
    """'auto' or a positive integer (as text or int) -> "auto" | int; anything else raises ValueError(EXPECTED).
    Floats and booleans are refused (a thread count of 1.5 or True is a mistake, not a number to round)."""
    if isinstance(value, str):
        text = value.strip().lower()
        if text == AUTO:
            return AUTO
        if text.isascii() and text.isdigit() and int(text) >= 1:
            return int(text)
    elif isinstance(value, int) and not isinstance(value, bool) and value >= 1:
        return value
    raise ValueError(EXPECTED)


# ----------------------------------------------------------------------------------------- the machine
def usable_cpus() -> int:
    """CPUs this process may use: its CPU affinity, capped by a cgroup CPU quota (containers, CI runners)."""
    try:
        n = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        n = os.cpu_count() or 1
    quota = _cgroup_quota()
    return max(1, min(n, quota) if quota else n)


def _cgroup_quota(root: Path = Path("/sys/fs/cgroup")) -> int | None:
    """The cgroup CPU limit in whole CPUs (rounded up), or None when there is none or it cannot be read."""
    try:
        if (root / "cpu.max").is_file():  # cgroup v2: "QUOTA PERIOD" or "max PERIOD"
            quota, period = (root / "cpu.max").read_text().split()[:2]
        else:  # cgroup v1
            quota = (root / "cpu" / "cpu.cfs_quota_us").read_text().strip()
            period = (root / "cpu" / "cpu.cfs_period_us").read_text().strip()
        if quota in ("max", "-1"):
            return None
        return max(1, math.ceil(int(quota) / int(period)))
    except (OSError, ValueError):
        return None


def _positive_int(value: str | None) -> int | None:
    try:
        n = int(value) if value is not None else 0
    except ValueError:
        return None
    return n if n >= 1 else None


# OMP_NUM_THREADS as this process found it: the user's, a batch scheduler's or Ray's limit on the threads of one
# process (not on how many processes a sweep starts). Read once, before apply_threads writes the variable.
_outside_cap = _positive_int(os.environ.get("OMP_NUM_THREADS"))


def env_cap() -> int | None:
    """The thread limit the environment gave this process (OMP_NUM_THREADS at start), or None."""
    return _outside_cap


# ----------------------------------------------------------------------------------------- the workload
def step_macs(model, batch_size: int) -> int:
    """Multiply-adds of one forward pass of a mini-batch (conv layers at their full, pre-pooling resolution)."""
    arch = architecture(model)
    per_sample = 0
    if arch.n_conv:
        in_c, h, w = arch.input_shape
        for c, (_, ph, pw) in zip(arch.conv_channels, arch.conv_outputs()):
            per_sample += c * in_c * arch.conv_kernel ** 2 * h * w
            in_c, h, w = c, ph, pw
    sizes = arch.fc_sizes()
    per_sample += sum(a * b for a, b in zip(sizes[:-1], sizes[1:]))
    return per_sample * batch_size


def resolve_threads(setting, cfg, cpus: int | None = None, workers: int = 1) -> ThreadChoice:
    """The thread count for training `cfg` (a RunConfig) under `setting` ("auto" or N). `cpus`: the CPUs the
    workers share (default: usable_cpus()); `workers`: how many advbp workers share them (each gets its share)."""
    setting = parse_threads(setting)
    if setting != AUTO:
        return ThreadChoice(setting, setting, "as asked")
    if cfg.runtime.device == "cuda":
        return ThreadChoice(1, AUTO, "auto: the GPU does the arithmetic")
    macs = step_macs(cfg.model, cfg.train.batch_size)
    size = f"{macs / 1e6:.0f} M multiply-adds per forward pass of a batch of {cfg.train.batch_size}"
    if macs < SMALL_STEP_MACS:
        return ThreadChoice(1, AUTO, f"auto: small steps ({size}) gain nothing from more threads")
    budget = usable_cpus() if cpus is None else max(1, int(cpus))
    share = max(1, budget // max(1, workers))
    why = f"auto: large steps ({size}); {budget} CPU(s)" + (f" shared by {workers} workers" if workers > 1 else "")
    cap = env_cap()
    if cap is not None and cap < share:
        share, why = cap, why + f", capped by OMP_NUM_THREADS={cap}"
    return ThreadChoice(share, AUTO, why)


def resolve_for_evaluation(setting) -> int:
    """eval/attack/report: their batches (1000 images) are large steps for every network here, so "auto" is
    all usable CPUs (capped by OMP_NUM_THREADS when set); N is N."""
    setting = parse_threads(setting)
    if setting != AUTO:
        return setting
    cap = env_cap()
    return min(usable_cpus(), cap) if cap else usable_cpus()


def auto_workers(per_run_threads: int) -> int:
    """How many runs a local sweep trains at once by default: one per `per_run_threads` usable CPUs."""
    return max(1, usable_cpus() // max(1, per_run_threads))


# ----------------------------------------------------------------------------------------- applying it
def apply_threads(n: int) -> None:
    """Use n threads from now on in this process, in torch and in every BLAS/OpenMP library (see the module
    docstring for how each is reached)."""
    n = int(n)
    for var in THREAD_ENV:
        os.environ[var] = str(n)
    threadpool_limits(n)  # process-wide; the returned object would only restore the old limits
    torch = sys.modules.get("torch")
    if torch is not None and torch.get_num_threads() != n:
        torch.set_num_threads(n)


def thread_counts() -> dict:
    """The thread counts in effect now, for provenance: torch's intra-op threads (None when torch is not loaded)
    and the largest BLAS thread pool loaded in this process (numpy's; None when none is loaded)."""
    torch = sys.modules.get("torch")
    blas = [p["num_threads"] for p in threadpool_info() if p.get("user_api") == "blas"]
    return {"torch": torch.get_num_threads() if torch is not None else None, "blas": max(blas) if blas else None}


def threads_in_effect(backend_name: str) -> int:
    """The thread count the backend's arithmetic uses now: torch's intra-op threads, or numpy's BLAS threads."""
    counts = thread_counts()
    n = counts["torch"] if backend_name == "torch" else counts["blas"]
    return n or 1


def worker_env(n: int) -> dict[str, str]:
    """Environment of a child process that should start with n threads in every library."""
    return {var: str(int(n)) for var in THREAD_ENV}
