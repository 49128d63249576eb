"""One run of a local parallel sweep, in its own process: `python -m advbp_cli.sweep_worker JOB_JSON`.

Started by advbp_cli.parallel.LocalExecutor with its thread count already in the environment (so numpy's BLAS
and torch start with it), it calls the same `sweep.run_one` as the serial executor and tells the parent what
happens as JSON lines on its standard output: {"event": "start" | "epoch" | "log" | "outcome" | "interrupted"}.
Anything else that would print on stdout goes to stderr, which the parent keeps for error messages.

It dies with its parent (a sweep killed with SIGKILL leaves no orphan training on, holding a run's lock), and it
stops at the first Ctrl-C (SIGINT from the terminal or forwarded by the parent) the way `advbp train` does: the
epoch in progress is dropped, the saved ones stay, later SIGINTs are ignored while it winds down.
"""

from __future__ import annotations

import ctypes
import dataclasses
import json
import os
import signal
import sys
import threading
import time

from .errors import Interrupted, UsageProblem
from .sweep import RunOutcome, run_one, run_relpath
from .trainer import Reporter

PARENT_POLL_SECONDS = 0.2


def _die_with_parent(parent_pid: int) -> None:
    """Linux: the kernel sends SIGKILL when the parent dies; elsewhere (and as a fallback) a thread that watches
    whether this process was re-parented. A run killed this way keeps its last checkpoint, as after any kill."""
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        except (OSError, AttributeError):
            pass

    def watch():
        while os.getppid() == parent_pid:
            time.sleep(PARENT_POLL_SECONDS)
        os.kill(os.getpid(), signal.SIGKILL)

    if os.getppid() != parent_pid:  # the parent died before the line above took effect
        os.kill(os.getpid(), signal.SIGKILL)
    threading.Thread(target=watch, daemon=True, name="advbp-parent-watch").start()


def _stop_once():
    state = {"stopping": False}

    def handler(signum, frame):
        if state["stopping"]:
            return
        state["stopping"] = True
        raise KeyboardInterrupt

    signal.signal(signal.SIGINT, handler)


def main(argv: list[str]) -> int:
    job = json.loads(argv[0])
    _die_with_parent(int(job["parent_pid"]))
    _stop_once()
    # the protocol gets its own copy of stdout; fd 1 itself now points at stderr, so a stray print cannot corrupt it
    proto = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)

    def send(event: str, **fields) -> None:
        proto.write(json.dumps({"event": event, **fields}, default=float) + "\n")
        proto.flush()


    preset, seed = job["preset"], int(job["seed"])
    reporter = Reporter(
        start=lambda first, epochs, steps: send("start", first_epoch=first, epochs=epochs),
        epoch_end=lambda row: send("epoch", row=row),
        log=lambda msg: send("log", message=str(msg)),
    )
    sys.argv = list(job["argv"])  # provenance records the sweep's command line, as with the serial executor
    try:
        outcome = run_one(job["sweep_dir"], preset, seed, job["overrides"], job["data_dir"], reporter=reporter,
                          workers=int(job["workers"]), cpus=int(job["cpus"]))
    except (Interrupted, KeyboardInterrupt):
        send("interrupted")
        return 130
    except UsageProblem as exc:
        outcome = RunOutcome(preset, seed, run_relpath(preset, seed), "failed", None, 0, _one_line(exc))
    except Exception as exc:  # noqa: BLE001 - reported to the parent as this run's failure, not as a traceback
        outcome = RunOutcome(preset, seed, run_relpath(preset, seed), "failed", None, 0,
                             f"error in its worker process ({type(exc).__name__}: {_one_line(exc)})")
    send("outcome", outcome=dataclasses.asdict(outcome))
    return 0


def _one_line(text) -> str:
    return " ".join(str(text).split())


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
