"""Benchmark (not a test), issue 17: the time of a reduced CIFAR-10 CONV epoch with one forward pass per evaluated
batch (Backend.evaluate: predictions, losses and hidden zeros together) against two (the logits, then the losses:
what evaluate_arrays did before), measured in the same process.

    python benchmarks/eval_bench.py --threads 1 [--backend torch|numpy] [--repeats 3] [--data-dir DIR]

The epoch is what `advbp train --preset cifar10-conv-adv-dropout-simple --conv-channels 32,32,64 --hidden 256,256
--train-limit 2000` runs: 16 adversarial steps of batch 128 with dropout and momentum on 2 000 real CIFAR-10
images (simple preprocessing), then the clean error and loss on those 2 000 and on the 10 000 test images.
Timed with this process's CPU time (time.process_time, robust to other processes on the machine), each part the
best of --repeats interleaved rounds.
"""

from __future__ import annotations

import os
import sys


def _threads_from_argv() -> int | None:
    for i, a in enumerate(sys.argv):
        if a == "--threads" and i + 1 < len(sys.argv):
            return int(sys.argv[i + 1])
    return None


if _threads_from_argv():  # numpy's BLAS reads its thread count when it is loaded: set it before the import
    for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[_var] = str(_threads_from_argv())

import argparse  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402


def reduced_conv_run(backend: str, data_dir: str):
    """The network (fresh, paper init), config and data of the reduced CONV run."""
    from advbp_cli.config import RunConfig
    from advbp_cli.data import load_splits
    from advbp_cli.networks import build_backend, fresh_params
    from advbp_cli.presets import load_preset

    preset = load_preset("cifar10-conv-adv-dropout-simple")
    cfg = RunConfig.model_validate({
        "model": {**preset["model"], "conv_channels": [32, 32, 64], "hidden": [256, 256]},
        "train": preset["train"], "data": {**preset["data"], "train_limit": 2000},
        "runtime": {"backend": backend, "device": "cpu"}})
    train, test = load_splits(cfg.data, cfg.runtime.dtype, data_dir, download=False, log=lambda m: None)
    net = build_backend(cfg)
    net.set_params(fresh_params(cfg))
    return net, cfg, train, test


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backend", choices=["numpy", "torch"], default="torch")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--data-dir", default=os.environ.get("ADVBP_DATA_DIR", "/work/shared/data"))
    args = ap.parse_args()
    if args.threads and args.backend == "torch":
        import torch

        torch.set_num_threads(args.threads)

    from advbp_cli.evaluate import CHUNK, evaluate_arrays
    from advbp_cli.rng import DropoutMasks
    from advbp_cli.trainer import epoch_blocks

    net, cfg, train, test = reduced_conv_run(args.backend, args.data_dir)
    xd, yd = net.asarray(train.x), net.asarray(train.y, labels=True)

    def train_epoch(epoch=[0]):
        steps = 0
        for block in epoch_blocks(0, epoch[0], len(train.x), cfg.train.batch_size):
            net.train_steps(xd, yd, block, cfg.train, masks=DropoutMasks(0, epoch[0], steps))
            steps += len(block)
        epoch[0] += 1

    def eval_one_pass():
        for split in (train, test):
            evaluate_arrays(net, split.x, split.y)

    def eval_two_passes():  # what evaluate_arrays did before: the logits, then the losses, each a forward pass
        for split in (train, test):
            for s in range(0, len(split.x), CHUNK):
                xb, yb = net.asarray(split.x[s:s + CHUNK]), net.asarray(split.y[s:s + CHUNK], labels=True)
                net.logits(xb).argmax(axis=1)
                net.evaluate(xb, yb)

    jobs = {"train epoch": train_epoch, "eval, 1 pass": eval_one_pass, "eval, 2 passes": eval_two_passes}
    best = {k: float("inf") for k in jobs}
    load_start = os.getloadavg()
    for _ in range(args.repeats):
        for name, fn in jobs.items():
            t0 = time.process_time()
            fn()
            best[name] = min(best[name], time.process_time() - t0)
    old = best["train epoch"] + best["eval, 2 passes"]
    new = best["train epoch"] + best["eval, 1 pass"]
    print(f"backend {net.name}, {cfg.runtime.dtype}, threads {args.threads or 'default'}, CONV 32-32-64 + 256-256, "
          f"{len(train.x)} training + {len(test.x)} test images, best of {args.repeats}, CPU time; load average "
          f"{load_start[0]:.1f} at the start, {os.getloadavg()[0]:.1f} at the end")
    for name, t in best.items():
        print(f"  {name:15s} {t:7.2f} s")
    print(f"epoch before (2 passes): {old:.2f} s, evaluation {100 * best['eval, 2 passes'] / old:.0f} % of it")
    print(f"epoch now (1 pass):      {new:.2f} s = {new / old:.2f}x the epoch before "
          f"(evaluation alone {best['eval, 1 pass'] / best['eval, 2 passes']:.2f}x)")


if __name__ == "__main__":
    main()
