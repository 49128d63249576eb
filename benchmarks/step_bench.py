"""Microseconds per SGD step (batch 10, MNIST-sized inputs) for advbp's backends against a naive eager PyTorch
loop (nn.Sequential + autograd + torch.optim.SGD, one run) measured in the same process.

    python benchmarks/step_bench.py [--device cpu|cuda] [--steps 600] [--sizes 400,800,1200]

Prints, per hidden size: us/step for the naive loop, the torch backend and the numpy backend (CPU only), for
the adversarial and the back-propagation step, each as a speed-up over the naive loop's adversarial/backprop
step, and the adversarial overhead (adversarial step / backprop step; the paper: about +70 %).
Random data stands in for MNIST: the cost of a step does not depend on the pixel values.
"""

from __future__ import annotations

import argparse
import platform
import time

import numpy as np
import torch

from advbp_cli.backends import load_backend
from advbp_cli.config import ModelConfig, TrainConfig
from advbp_cli.rng import init_params, layer_sizes

BATCH = 10


def naive_loop(hidden: int, device: str, adversarial: bool, x, y, batches, eps=0.08, lr=0.05):
    """What a user writes first: autograd for the input gradient (weight gradients computed and thrown away)."""
    net = torch.nn.Sequential(
        torch.nn.Linear(784, hidden), torch.nn.ReLU(), torch.nn.Linear(hidden, hidden), torch.nn.ReLU(),
        torch.nn.Linear(hidden, 10),
    ).to(device)
    opt = torch.optim.SGD(net.parameters(), lr=lr)
    lossf = torch.nn.BCEWithLogitsLoss(reduction="sum")
    xt = torch.as_tensor(x, device=device)
    yt = torch.nn.functional.one_hot(torch.as_tensor(y, device=device), 10).float()

    def run(n):
        for idx in batches[:n]:
            xb, yb = xt[idx], yt[idx]
            if adversarial:
                xb = xb.clone().requires_grad_(True)
                lossf(net(xb), yb).div(len(idx)).backward()
                xb = (xb + eps * xb.grad.sign()).detach()
            opt.zero_grad()
            lossf(net(xb), yb).div(len(idx)).backward()
            opt.step()
        if device == "cuda":
            torch.cuda.synchronize()

    return run


def advbp_runner(backend: str, hidden: int, device: str, adversarial: bool, x, y, batches):
    model = ModelConfig(hidden=[hidden, hidden])
    step = TrainConfig(method="adversarial" if adversarial else "backprop", eps=0.08, lr=0.05)
    net = load_backend(backend)(model, dtype="float32", device=device)
    net.set_params(init_params(layer_sizes(784, [hidden, hidden], 10), 0.01, 0))
    xd, yd = net.asarray(x), net.asarray(y, labels=True)

    def run(n):
        net.train_steps(xd, yd, batches[:n], step)
        if device == "cuda":
            torch.cuda.synchronize()

    return run


def us_per_step(run, steps: int, repeats: int = 3) -> float:
    run(min(50, steps))  # warm-up
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        run(steps)
        best = min(best, time.perf_counter() - t0)
    return best / steps * 1e6


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--steps", type=int, default=600)
    ap.add_argument("--sizes", default="400,800,1200")
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's own)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    rng = np.random.default_rng(0)
    x = rng.random((60000, 784), dtype=np.float32)
    y = rng.integers(0, 10, 60000)
    batches = rng.permutation(60000)[: args.steps * BATCH].reshape(-1, BATCH)
    dev_name = torch.cuda.get_device_name() if args.device == "cuda" else platform.processor() or platform.machine()
    print(f"device: {args.device} ({dev_name}), torch {torch.__version__}, threads {torch.get_num_threads()}, "
          f"batch {BATCH}, {args.steps} steps, best of 3, one run (seeds are trained one after another)")
    print(f"{'net':>8} {'impl':>14} {'adv us/step':>12} {'bp us/step':>11} {'adv speed-up':>13} {'bp speed-up':>12} {'adv/bp':>7}")
    for h in (int(s) for s in args.sizes.split(",")):
        base = {m: us_per_step(naive_loop(h, args.device, m, x, y, batches), args.steps) for m in (True, False)}
        rows = [("naive eager", base)]
        backends = ["torch"] + (["numpy"] if args.device == "cpu" else [])
        for b in backends:
            rows.append((f"advbp {b}", {m: us_per_step(advbp_runner(b, h, args.device, m, x, y, batches), args.steps)
                                        for m in (True, False)}))
        for name, t in rows:
            print(f"{'2x' + str(h):>8} {name:>14} {t[True]:>12.0f} {t[False]:>11.0f} {base[True] / t[True]:>12.2f}x "
                  f"{base[False] / t[False]:>11.2f}x {t[True] / t[False]:>7.2f}")


if __name__ == "__main__":
    main()
