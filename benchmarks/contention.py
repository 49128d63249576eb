"""Two trainings at once on 2 cores: how much slower is each than one training alone? advbp v1's default (no
thread setting: torch and BLAS take one thread per core each) against the thread policy (`--threads auto`).

    python benchmarks/contention.py [--data-dir DIR] [--train-limit 6000] [--epochs 1] [--backend torch]
                                    [--cpus 0,1] [--repeats 1] [--preset mnist-relu-2x400-adv]

Every training is a real process on real data (`--data-dir`, else $ADVBP_DATA_DIR): by default the 2x400 ReLU
network, adversarial, batch 10, on the first --train-limit MNIST images (a CIFAR-10 preset such as
cifar10-2x3000-adv-simple with --train-limit 2560 shows the large-step case, where `auto` gives each training
its own share of the CPUs). For each mode it runs one training alone, then two started
together, all pinned to the same --cpus (default: the first two this process may use), and reads each
training's own time from its metrics.jsonl (`train_seconds`: the epochs' SGD steps, without process start, data
loading and evaluation). The slowdown is (mean time of the pair) / (time alone), per mode, measured in this one
run; the load average before and after says how busy the machine was (other processes distort every ratio).

The v1 mode runs advbp's trainer without any thread setting, with the thread variables removed from its
environment: what v1 did. The policy mode is `advbp train` as a user types it.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from machine import autogroup  # benchmarks/machine.py (this folder is sys.path[0] when a script runs)

THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")
PRESET = "mnist-relu-2x400-adv"

# advbp v1's code path: the trainer with no thread setting at all
V1_TRAIN = """
import sys
from pathlib import Path
from advbp_cli import presets
from advbp_cli.config import build_config
from advbp_cli.rundir import RunDir
from advbp_cli.trainer import train

preset, backend, out, data_dir, limit, epochs = sys.argv[1:]
cfg = build_config({"preset": preset, **presets.config_values(presets.load_preset(preset))},
                   {"train": {"epochs": int(epochs)},
                    "data": {"train_limit": int(limit), "eval_limit": 1000, "eval_train_error": False},
                    "runtime": {"backend": backend}})
run = RunDir(out)
run.lock()
train(cfg, run, Path(data_dir))
"""


def command(mode: str, out: Path, args) -> list[str]:
    if mode == "v1":
        return [sys.executable, "-c", V1_TRAIN, args.preset, args.backend, str(out), str(args.data_dir),
                str(args.train_limit), str(args.epochs)]
    threads = ["--threads", "1"] if mode == "threads1" else []  # "policy": advbp train as typed (--threads auto)
    return [sys.executable, "-m", "advbp_cli", "train", "--preset", args.preset, "--backend", args.backend,
            "--train-limit", str(args.train_limit), "--eval-limit", "1000", "--no-eval-train-error",
            "--epochs", str(args.epochs), "--data-dir", str(args.data_dir), "--out", str(out), *threads]


def run_together(mode: str, n: int, root: Path, args) -> list[float]:
    """Starts n trainings at once; returns each one's training seconds (sum over its epochs)."""
    env = {k: v for k, v in os.environ.items() if k not in THREAD_VARS}
    cpus = args.cpu_set

    def pin():
        os.sched_setaffinity(0, cpus)

    outs = [root / f"{mode}-{n}-{i}-{time.monotonic_ns()}" for i in range(n)]
    # Each training in a session of its own, as when started from two terminals: with Linux's autogroup
    # scheduling (sched_autogroup_enabled), processes of one session share one session's CPU time, so on a machine
    # where other sessions run, two trainings in this script's session would each get half of what one got.
    procs = [subprocess.Popen(command(mode, out, args), env=env, preexec_fn=pin, stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, text=True, start_new_session=True) for out in outs]
    for p in procs:
        _, err = p.communicate()
        if p.returncode != 0:
            sys.exit(f"a {mode} training failed (exit {p.returncode}): {err.strip().splitlines()[-1:]}")
    times = []
    for out in outs:
        rows = [json.loads(ln) for ln in (out / "metrics.jsonl").read_text().splitlines()]
        times.append(sum(r["train_seconds"] for r in rows))
    return times


def threads_of(root: Path, mode: str) -> str:
    """What the libraries used in the last training of a mode (config.json's record)."""
    cfgs = sorted(root.glob(f"{mode}-1-*/config.json"))
    r = json.loads(cfgs[-1].read_text())
    return f"{r['resolved']['threads']} ({r['resolved'].get('threads_reason', '')})"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-dir", default=os.environ.get("ADVBP_DATA_DIR"), help="folder holding mnist/")
    ap.add_argument("--train-limit", type=int, default=6000)
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--backend", choices=["torch", "numpy"], default="torch")
    ap.add_argument("--cpus", default=None, help="CPU ids to pin the trainings to (default: the first two usable)")
    ap.add_argument("--preset", default=PRESET)
    ap.add_argument("--repeats", type=int, default=1, help="alone/pair measurements per mode (medians reported)")
    ap.add_argument("--modes", default="v1,policy",
                    help="v1 (no thread setting), policy (--threads auto), threads1 (--threads 1); default v1,policy")
    args = ap.parse_args()
    if not args.data_dir:
        sys.exit("give --data-dir (the folder holding mnist/) or set ADVBP_DATA_DIR")
    usable = sorted(os.sched_getaffinity(0))
    args.cpu_set = [int(c) for c in args.cpus.split(",")] if args.cpus else usable[:2]
    print(f"{len(args.cpu_set)} CPU(s) {args.cpu_set} of {len(usable)} usable; {args.preset}, {args.backend}, "
          f"{args.train_limit} images x {args.epochs} epoch(s); {args.repeats} repeat(s)")
    print(f"load average before: {' '.join(f'{v:.2f}' for v in os.getloadavg())}; {autogroup()}", flush=True)
    results = {}
    with tempfile.TemporaryDirectory(prefix="advbp-contention-") as tmp:
        root = Path(tmp)
        for mode in args.modes.split(","):
            alone, pair = [], []
            for _ in range(args.repeats):
                alone += run_together(mode, 1, root, args)
                pair.append(statistics.fmean(run_together(mode, 2, root, args)))
            results[mode] = (statistics.median(alone), statistics.median(pair))
            print(f"{mode:7s} threads per training: {threads_of(root, mode)}", flush=True)
    print(f"load average after: {' '.join(f'{v:.2f}' for v in os.getloadavg())}")
    print(f"\n{'mode':28s} {'alone s':>9s} {'each of 2 s':>12s} {'slowdown':>9s}")
    names = {"v1": "v1 default (no thread setting)", "policy": "thread policy (auto)", "threads1": "--threads 1"}
    for mode, (alone, pair) in results.items():
        print(f"{names[mode]:28s} {alone:9.2f} {pair:12.2f} {pair / alone:8.2f}x")
    if "v1" in results and "policy" in results:
        (v1a, v1p), (pa, pp) = results["v1"], results["policy"]
        print(f"\npolicy against v1: alone {pa / v1a:.2f}x the time, two at once {pp / v1p:.2f}x the time")
    if "policy" in results:
        pa, pp = results["policy"]
        verdict = "met" if pp / pa <= 1.3 else "NOT met"
        print(f"goal (two at once <= 1.3x alone with the policy): {verdict} ({pp / pa:.2f}x)")
        if "threads1" in results:
            print(f"two at once with --threads 1 against one alone with the policy: {results['threads1'][1] / pa:.2f}x")


if __name__ == "__main__":
    main()
