"""Seconds per SGD step of the CIFAR-10 presets (batch 128, real CIFAR-10 images, the preset's preprocessing),
torch backend on the CPU, each against a fixed baseline measured in the same process.

    python benchmarks/cifar_step_bench.py --data-dir ../shared/data --threads 1 [--steps 5] [--repeats 3]

The baseline is one float32 matrix product of the size of a 2x3000 network's first layer (128 x 3072 times
3072 x 3000), timed right before each preset's steps, so every step time is also printed as a multiple of it:
on a shared machine the seconds move with the load, the multiples much less. Prints the machine load before and
after (os.getloadavg), the thread count, s/step (median over repeats), the baseline, their ratio, and the
time of a 50 000-image epoch (391 steps) at that speed. Steps use the presets' own settings (momentum, weight
decay, max-norm, dropout where the preset has it) on the first steps x 128 training images.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from advbp_cli import presets
from advbp_cli.config import build_config
from advbp_cli.data import load_splits
from advbp_cli.networks import build_backend, fresh_params
from advbp_cli.rng import DropoutMasks

BATCH = 128
EPOCH_STEPS = 391  # ceil(50 000 / 128)
PRESETS = ["cifar10-conv-adv-simple", "cifar10-conv-backprop-simple", "cifar10-2x3000-adv-simple",
           "cifar10-2x3000-backprop-simple", "cifar10-smoke-conv-adv", "cifar10-smoke-conv-backprop",
           "cifar10-smoke-mlp-adv", "cifar10-smoke-mlp-backprop"]


def baseline_seconds(repeats: int = 5) -> float:
    a = torch.randn(BATCH, 3072)
    b = torch.randn(3072, 3000)
    a @ b  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def step_seconds(name: str, data_dir: Path, steps: int, repeats: int) -> float:
    cfg = build_config(presets.config_values(presets.load_preset(name)),
                       {"data": {"train_limit": BATCH * steps, "eval_limit": 1}, "runtime": {"backend": "torch"}})
    train, _ = load_splits(cfg.data, "float32", data_dir, download=False, log=lambda m: None)
    net = build_backend(cfg)
    net.set_params(fresh_params(cfg))
    net.set_optimizer_state({})
    x, y = net.asarray(train.x), net.asarray(train.y, labels=True)
    blocks = np.arange(BATCH * steps).reshape(steps, BATCH)
    dropout = cfg.train.dropout_input or cfg.train.dropout_conv or cfg.train.dropout_fc
    masks = (lambda: {"masks": DropoutMasks(0, 0, 0)}) if dropout else dict
    net.train_steps(x, y, blocks[:1], cfg.train, **masks())  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        net.train_steps(x, y, blocks, cfg.train, **masks())
        times.append((time.perf_counter() - t0) / steps)
    return statistics.median(times)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-dir", type=Path, required=True)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--presets", default=",".join(PRESETS))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, batch {BATCH}, load before "
          f"{' '.join(f'{v:.1f}' for v in os.getloadavg())}")
    print("| preset | s/step | baseline GEMM (ms) | step / baseline | 50 000-image epoch (min) |")
    print("| --- | --- | --- | --- | --- |")
    for name in args.presets.split(","):
        base = baseline_seconds()
        s = step_seconds(name, args.data_dir, args.steps, args.repeats)
        print(f"| {name} | {s:.3f} | {base * 1e3:.1f} | {s / base:.1f} | {s * EPOCH_STEPS / 60:.1f} |", flush=True)
    print(f"load after {' '.join(f'{v:.1f}' for v in os.getloadavg())}")


if __name__ == "__main__":
    main()
