"""Does a local sweep keep every core busy? The wall time of `advbp sweep` with its default (parallel workers)
against the sum of its runs' own times, measured in one run of this script.

    python benchmarks/sweep_parallel.py [--data-dir DIR] [--seeds 2] [--train-limit 60000] [--epochs 6]
                                        [--backend torch] [--cpus 0,1]

The sweep: the 2x400 ReLU row, adversarial and back-propagation, --seeds seeds each (4 runs by default), on real
MNIST (`--data-dir`, else $ADVBP_DATA_DIR), pinned to --cpus (default: the first two CPUs this process may use).
It runs twice: serially (`--workers 1`: one run after another in one process, what v1 did) and with the default
`--workers auto`. A run's own time is what its summary.json records (`wall_seconds_this_session`: its epochs,
training and evaluation, without process start and data loading), so the serial sweep's runs give each run's
time alone. Printed: wall(parallel) / sum of the runs' own times in the serial sweep (the goal: <= 0.6 on 2
cores, where 0.5 is perfect), wall(parallel) / wall(serial), and the load average before and after.

On a machine that other sessions keep busy this ratio cannot show much: with Linux's autogroup scheduling a
session's processes share one session's CPU time, and a sweep's workers are in the sweep's session (as they should
be: Ctrl-C in its terminal reaches them). Measure it on a quiet machine (benchmarks/quiet_machine.py). The default
size (runs of 17-38 s) is the smallest at which two workers' start-up (importing torch, decoding MNIST) stops
dominating: with 2 s runs the ratio is all overhead (benchmarks/RESULTS.md).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from machine import autogroup  # benchmarks/machine.py (this folder is sys.path[0] when a script runs)

PRESETS = ["mnist-relu-2x400-adv", "mnist-relu-2x400-backprop"]


def sweep(out: Path, workers: str, args) -> tuple[float, list[float]]:
    """Runs the sweep; returns its wall time and its runs' own times."""
    cmd = [sys.executable, "-m", "advbp_cli", "sweep", *PRESETS, "--seeds", str(args.seeds), "--epochs",
           str(args.epochs), "--train-limit", str(args.train_limit), "--eval-limit", "2000", "--no-eval-train-error",
           "--backend", args.backend, "--workers", workers, "--out", str(out), "--data-dir", str(args.data_dir)]
    t0 = time.perf_counter()
    p = subprocess.run(cmd, preexec_fn=lambda: os.sched_setaffinity(0, args.cpu_set), capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if p.returncode != 0:
        sys.exit(f"the sweep failed (exit {p.returncode}): {p.stderr.strip().splitlines()[-1:]}")
    own = [json.loads(s.read_text())["wall_seconds_this_session"] for s in sorted(out.glob("*/seed-*/summary.json"))]
    return wall, own


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-dir", default=os.environ.get("ADVBP_DATA_DIR"), help="folder holding mnist/")
    ap.add_argument("--seeds", type=int, default=2)
    ap.add_argument("--train-limit", type=int, default=60000)
    ap.add_argument("--epochs", type=int, default=6)
    ap.add_argument("--backend", choices=["torch", "numpy"], default="torch")
    ap.add_argument("--cpus", default=None, help="CPU ids to pin the sweeps to (default: the first two usable)")
    args = ap.parse_args()
    if not args.data_dir:
        sys.exit("give --data-dir (the folder holding mnist/) or set ADVBP_DATA_DIR")
    usable = sorted(os.sched_getaffinity(0))
    args.cpu_set = [int(c) for c in args.cpus.split(",")] if args.cpus else usable[:2]
    n_runs = len(PRESETS) * args.seeds
    print(f"{len(args.cpu_set)} CPU(s) {args.cpu_set} of {len(usable)} usable; {n_runs} runs of {args.train_limit} "
          f"images x {args.epochs} epoch(s), {args.backend}")
    print(f"load average before: {' '.join(f'{v:.2f}' for v in os.getloadavg())}; {autogroup()}", flush=True)
    with tempfile.TemporaryDirectory(prefix="advbp-sweep-bench-") as tmp:
        serial_wall, serial_own = sweep(Path(tmp) / "serial", "1", args)
        print(f"serial   (--workers 1):    wall {serial_wall:7.1f} s; runs' own times {sum(serial_own):7.1f} s "
              f"({', '.join(f'{t:.1f}' for t in serial_own)})", flush=True)
        par_wall, par_own = sweep(Path(tmp) / "parallel", "auto", args)
        workers = json.loads((Path(tmp) / "parallel" / PRESETS[0] / "seed-0" / "config.json").read_text())
        print(f"parallel (--workers auto): wall {par_wall:7.1f} s; runs' own times {sum(par_own):7.1f} s "
              f"({', '.join(f'{t:.1f}' for t in par_own)}); threads per run {workers['resolved']['threads']}")
    print(f"load average after: {' '.join(f'{v:.2f}' for v in os.getloadavg())}")
    ratio = par_wall / sum(serial_own)
    print(f"\nwall(parallel sweep) / sum of the runs' own times (alone, serial sweep): {ratio:.2f} "
          f"(goal <= 0.6: {'met' if ratio <= 0.6 else 'NOT met'})")
    print(f"wall(parallel sweep) / wall(serial sweep): {par_wall / serial_wall:.2f}")
    print(f"runs' own times, parallel / serial: {sum(par_own) / sum(serial_own):.2f} (how much the runs slowed each "
          f"other down)")


if __name__ == "__main__":
    main()
