"""Does a second thread pay? ms per training step with 1 thread against N threads, in one process, for the
workloads the `auto` thread policy (advbp_cli/threads.py) tells apart: the paper's MNIST networks at batch 10
and CIFAR-10's 2x3000 and CONV networks at batch 128 (plus points in between, to place the threshold).

    python benchmarks/threads_bench.py [--threads 2] [--repeats 5] [--seconds 0.6] [--only NAME,...]

Each workload trains on random data of its real shape (the cost of a step does not depend on pixel values) with
advbp's own backend (`train_steps`, float32); 1 thread and N threads alternate, `--repeats` times, and the
median time per step of each is reported with the speed-up t(1)/t(N) and what `--threads auto` picks. The load
average is printed before and after: on a machine where other processes run, N threads cannot get N cores and
the speed-up reads low.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import numpy as np

from advbp_cli import presets
from advbp_cli.backends import architecture, uses_dropout
from advbp_cli.config import build_config
from advbp_cli.networks import build_backend, fresh_params
from advbp_cli.rng import DropoutMasks
from advbp_cli.threads import apply_threads, resolve_threads, step_macs, usable_cpus

# name -> (preset, overrides, backend)
WORKLOADS = {
    "mnist-2x400-b10-torch": ("mnist-relu-2x400-adv", {}, "torch"),
    "mnist-2x400-b10-numpy": ("mnist-relu-2x400-adv", {}, "numpy"),
    "mnist-2x1200-b10-torch": ("mnist-relu-2x1200-adv", {}, "torch"),
    "mnist-2x1200-b10-numpy": ("mnist-relu-2x1200-adv", {}, "numpy"),
    "mnist-2x1200-b50-torch": ("mnist-relu-2x1200-adv", {"train": {"batch_size": 50}}, "torch"),
    "mnist-2x1200-b100-torch": ("mnist-relu-2x1200-adv", {"train": {"batch_size": 100}}, "torch"),
    "cifar-2x3000-b10-torch": ("cifar10-2x3000-adv-simple", {"train": {"batch_size": 10}}, "torch"),
    "cifar-2x3000-b128-torch": ("cifar10-2x3000-adv-simple", {}, "torch"),
    "cifar-2x3000-b128-numpy": ("cifar10-2x3000-adv-simple", {}, "numpy"),
    "cifar-conv-b128-torch": ("cifar10-conv-adv-simple", {}, "torch"),
}


def make_stepper(preset: str, overrides: dict, backend: str):
    values = {"preset": preset, **presets.config_values(presets.load_preset(preset))}
    cfg = build_config(values, {**overrides, "runtime": {"backend": backend, "device": "cpu"}})
    net = build_backend(cfg)
    net.set_params(fresh_params(cfg))
    rng = np.random.default_rng(0)
    n, b = 2048, cfg.train.batch_size
    x = rng.standard_normal((n, cfg.model.input_size), dtype=np.float32)
    y = rng.integers(0, cfg.model.num_classes, n)
    xd, yd = net.asarray(x), net.asarray(y, labels=True)
    dropout = uses_dropout(architecture(cfg.model), cfg.train)
    counter = {"step": 0}

    def run(steps: int) -> float:
        idx = np.stack([rng.choice(n, b, replace=False) for _ in range(steps)])
        extra = {"masks": DropoutMasks(0, 0, counter["step"])} if dropout else {}
        t0 = time.perf_counter()
        net.train_steps(xd, yd, idx, cfg.train, **extra)
        counter["step"] += steps
        return (time.perf_counter() - t0) / steps

    return cfg, run


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=min(2, usable_cpus()) if usable_cpus() > 1 else 2,
                    help="the N compared with 1 thread (default 2)")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--seconds", type=float, default=0.6, help="about how long one timing lasts")
    ap.add_argument("--only", default=None, help="comma-separated workload names (default: all)")
    args = ap.parse_args()
    names = args.only.split(",") if args.only else list(WORKLOADS)
    import torch

    print(f"usable CPUs {usable_cpus()}, torch {torch.__version__}, numpy {np.__version__}; 1 against "
          f"{args.threads} threads, median of {args.repeats} alternating timings of ~{args.seconds}s each")
    print(f"load average before: {' '.join(f'{v:.2f}' for v in os.getloadavg())}")
    print(f"{'workload':26s} {'M MAC/batch':>12s} {'ms/step 1T':>11s} {f'ms/step {args.threads}T':>11s} "
          f"{'speed-up':>9s}  auto picks (alone / 2 workers)")
    for name in names:
        preset, overrides, backend = WORKLOADS[name]
        cfg, run = make_stepper(preset, overrides, backend)
        apply_threads(1)
        run(1)  # warm-up (allocations, first-call dispatch)
        steps = max(1, round(args.seconds / run(1)))
        times: dict[int, list[float]] = {1: [], args.threads: []}
        for _ in range(args.repeats):
            for t in times:
                apply_threads(t)
                times[t].append(run(steps))
        t1, tn = statistics.median(times[1]), statistics.median(times[args.threads])
        alone = resolve_threads("auto", cfg, cpus=args.threads).threads
        shared = resolve_threads("auto", cfg, cpus=args.threads, workers=2).threads
        print(f"{name:26s} {step_macs(cfg.model, cfg.train.batch_size) / 1e6:12.0f} {t1 * 1e3:11.3f} "
              f"{tn * 1e3:11.3f} {t1 / tn:8.2f}x  {alone} / {shared}", flush=True)
    print(f"load average after: {' '.join(f'{v:.2f}' for v in os.getloadavg())}")


if __name__ == "__main__":
    main()
