"""Why a shrunk CIFAR-10 CONV network needs a larger initialisation than the paper's N(0, 0.01^2): at
initialisation, the logits' standard deviation and, per layer, the size of the first SGD step against weight
decay and against the weights themselves, on one real batch of 128 CIFAR-10 training images.

    python benchmarks/cifar_init_scale.py --data-dir ../shared/data
    python benchmarks/cifar_init_scale.py --data-dir ../shared/data --curve cifar10-smoke-conv-adv:0.5,0.1

Per network (filters, fully connected units, init std, lr; the rest of cifar10-conv-backprop-simple: weight
decay 0.001, simple preprocessing) prints:
- logit std: the standard deviation of the 128 x 10 logits of the initial network;
- grad/decay: |lr * g| / |lr * wd * w| per weight tensor (Frobenius norms; g = the batch's mean gradient): below 1,
  weight decay removes more than the gradient moves, and the weights shrink towards zero;
- step/|w|: |lr * g| / |w| per weight tensor, the relative size of the first step (momentum's first step is the
  gradient itself).
With --curve PRESET:LR[,LR...]: the preset's first 120 steps (float32, torch, one epoch over the first 15 360
training images) at each learning rate, with the test error on the first 1000 test images after every 10 steps.
Not a timing: the numbers do not depend on the machine or its load (float32 rounding aside).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from advbp_cli import presets
from advbp_cli.config import build_config
from advbp_cli.data import load_splits
from advbp_cli.networks import build_backend, fresh_params

NETWORKS = [  # (conv filters, fully connected, init std, lr)
    ([96, 128, 256], [2048, 2048], 0.01, 0.5),  # the paper's network and settings
    ([16, 16, 32], [128, 128], 0.01, 0.5),  # the smoke presets' network with the paper's settings
    ([16, 16, 32], [128, 128], 0.05, 0.5),
    ([16, 16, 32], [128, 128], 0.05, 0.1),  # the smoke presets (cifar10-smoke-conv-*)
    ([32, 32, 64], [256, 256], 0.01, 0.5),  # issue 17's first try
    ([32, 32, 64], [256, 256], 0.05, 0.05),
]


def measure(filters, fc, init_std, lr, data_dir: Path) -> dict:
    base = presets.config_values(presets.load_preset("cifar10-conv-backprop-simple"))
    cfg = build_config(base, {"model": {"conv_channels": filters, "hidden": fc, "init_std": init_std},
                              "train": {"lr": lr}, "data": {"train_limit": 128, "eval_limit": 1},
                              "runtime": {"dtype": "float64", "backend": "numpy"}})
    train, _ = load_splits(cfg.data, "float64", data_dir, download=False, log=lambda m: None)
    net = build_backend(cfg)
    p0 = fresh_params(cfg)
    net.set_params(p0)
    logits = np.asarray(net.logits(net.asarray(train.x)))
    # one plain SGD step with lr 1 and no decay, momentum or max-norm: the weights move by exactly -g
    plain = cfg.train.model_copy(update={"lr": 1.0, "weight_decay": 0.0, "momentum": 0.0, "dampening": 0.0,
                                         "max_norm": None})
    net.train_steps(net.asarray(train.x), net.asarray(train.y, labels=True), np.arange(128)[None, :], plain)
    p1 = net.get_params()
    wd = cfg.train.weight_decay
    layers = {}
    for k in p0:
        if k.endswith("weight"):
            g, w = np.linalg.norm(p0[k] - p1[k]), np.linalg.norm(p0[k])
            layers[k.removesuffix(".weight")] = (g / (wd * w), lr * g / w)
    return {"logit_std": float(logits.std()), "layers": layers}


def curve(preset: str, lr: float, data_dir: Path, steps: int = 120, every: int = 10) -> list[float]:
    from advbp_cli.evaluate import evaluate_arrays
    from advbp_cli.rng import epoch_permutation

    cfg = build_config(presets.config_values(presets.load_preset(preset)),
                       {"train": {"lr": lr}, "data": {"train_limit": steps * 128, "eval_limit": 1000}})
    train, test = load_splits(cfg.data, "float32", data_dir, download=False, log=lambda m: None)
    net = build_backend(cfg)
    net.set_params(fresh_params(cfg))
    net.set_optimizer_state({})
    x, y = net.asarray(train.x), net.asarray(train.y, labels=True)
    batches = epoch_permutation(cfg.runtime.seed, 0, len(train.x)).reshape(steps, 128)  # the trainer's order
    errors = []
    for k in range(0, steps, every):
        net.train_steps(x, y, batches[k : k + every], cfg.train)
        errors.append(evaluate_arrays(net, test.x, test.y).error)
    return errors


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-dir", type=Path, required=True)
    ap.add_argument("--curve", default=None, help="PRESET:LR[,LR...]")
    args = ap.parse_args()
    if args.curve:
        preset, lrs = args.curve.split(":")
        for lr in map(float, lrs.split(",")):
            errors = curve(preset, lr, args.data_dir)
            print(f"{preset} lr {lr}: test error (%) after 10, 20, ... steps: " + " ".join(f"{e:.1f}" for e in errors))
        return
    for filters, fc, std, lr in NETWORKS:
        m = measure(filters, fc, std, lr, args.data_dir)
        name = f"conv {'-'.join(map(str, filters))} + {'x'.join(map(str, fc))}, init {std}, lr {lr}"
        print(f"{name}: logit std {m['logit_std']:.2g}")
        print("  grad/decay: " + ", ".join(f"{k} {v[0]:.2g}" for k, v in m["layers"].items()))
        print("  step/|w|:   " + ", ".join(f"{k} {v[1]:.2g}" for k, v in m["layers"].items()))


if __name__ == "__main__":
    main()
