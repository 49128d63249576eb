"""Microseconds per SGD step (batch 10, MNIST-sized inputs, 2 ReLU layers, sigmoid_bce, float32) for advbp's
backends against three loops written by hand, all measured in the same process:

- naive eager: what a user writes first (nn.Sequential + autograd + torch.optim.SGD; the adversarial step gets the
  input gradient from autograd, weight gradients included);
- lean torch: the best loop we can write in torch (no autograd, data resident, one index gather per step,
  in-place updates straight from the matmul: W.addmm_(h.T, g, alpha=-1) with lr/n folded into g);
- lean numpy: the best plain-numpy loop we can write (one gather, in-place activations, lr/n folded into g,
  w -= h.T @ g).
Every loop does what advbp's step does, the per-step loss included.

    python benchmarks/step_bench.py --threads 1 [--device cpu|cuda] [--steps 200] [--sizes 400,800,1200]
    python benchmarks/step_bench.py --check      # that every implementation computes the same weights

--threads N sets torch's intra-op threads and, before numpy is imported, OMP/OPENBLAS/MKL_NUM_THREADS (numpy's
BLAS). Timings are interleaved (each repeat times every implementation once, so load changes hit them alike) and
the best of --repeats is kept. Printed per network: us/step of each implementation, adversarial and
back-propagation, and its ratio to the lean loop in its own library (advbp torch / lean torch, advbp numpy /
lean numpy) and to the naive loop. Random data stands in for MNIST: the cost of a step does not depend on the
pixel values. The machine's load average is printed at the start and the end.
"""

from __future__ import annotations

import os
import sys


def _threads_from_argv() -> int | None:
    for i, a in enumerate(sys.argv):
        if a == "--threads" and i + 1 < len(sys.argv):
            return int(sys.argv[i + 1])
        if a.startswith("--threads="):
            return int(a.split("=", 1)[1])
    return None


if _threads_from_argv():  # numpy's BLAS reads its thread count when it is loaded: set it before the import
    for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[_var] = str(_threads_from_argv())

import argparse  # noqa: E402
import platform  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

from advbp_cli.backends import load_backend  # noqa: E402
from advbp_cli.config import ModelConfig, TrainConfig  # noqa: E402
from advbp_cli.rng import init_params, layer_sizes  # noqa: E402

BATCH = 10
EPS = 0.08
LR = 0.05


def _init(hidden: int) -> list[tuple[np.ndarray, np.ndarray]]:
    p = init_params(layer_sizes(784, [hidden, hidden], 10), 0.01, 0)
    return [(p[f"layers.{i}.weight"].astype(np.float32), p[f"layers.{i}.bias"].astype(np.float32)) for i in range(3)]


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def naive_loop(hidden: int, device: str, adversarial: bool, x, y, batches):
    """What a user writes first: autograd for the input gradient (weight gradients computed and thrown away)."""
    net = torch.nn.Sequential(
        torch.nn.Linear(784, hidden), torch.nn.ReLU(), torch.nn.Linear(hidden, hidden), torch.nn.ReLU(),
        torch.nn.Linear(hidden, 10),
    )
    with torch.no_grad():  # advbp's init, so that every implementation computes the same weights (--check)
        for layer, (w, b) in zip(net[::2], _init(hidden)):
            layer.weight.copy_(torch.as_tensor(w.T))
            layer.bias.copy_(torch.as_tensor(b))
    net.to(device)
    opt = torch.optim.SGD(net.parameters(), lr=LR)
    lossf = torch.nn.BCEWithLogitsLoss(reduction="sum")
    xt = torch.as_tensor(x, device=device)
    yt = torch.nn.functional.one_hot(torch.as_tensor(y, device=device), 10).float()

    def run(n):
        for idx in batches[:n]:
            xb, yb = xt[idx], yt[idx]
            if adversarial:
                xb = xb.clone().requires_grad_(True)
                lossf(net(xb), yb).div(len(idx)).backward()
                xb = (xb + EPS * xb.grad.sign()).detach()
            opt.zero_grad()
            lossf(net(xb), yb).div(len(idx)).backward()
            opt.step()
        _sync(device)

    run.weights = lambda: net[0].weight.detach().T.cpu().numpy()
    return run


def lean_torch(hidden: int, device: str, adversarial: bool, x, y, batches):
    """The same step by hand in torch: no autograd, one gather of [x | one-hot y] per step, in-place updates."""
    (w1, b1), (w2, b2), (w3, b3) = [(torch.tensor(w, device=device), torch.tensor(b, device=device))
                                    for w, b in _init(hidden)]
    xt = torch.cat([torch.as_tensor(x), torch.nn.functional.one_hot(torch.as_tensor(y), 10).float()], 1).to(device)
    idx_all = torch.as_tensor(batches, device=device)
    losses = torch.empty(len(batches), device=device)
    relu_grad = torch.ops.aten.threshold_backward
    bce = torch.nn.functional.binary_cross_entropy_with_logits

    @torch.no_grad()
    def run(n):
        for k in range(n):
            xtb = xt.index_select(0, idx_all[k])
            xb, tb = xtb[:, :784], xtb[:, 784:]
            if adversarial:
                h1 = torch.addmm(b1, xb, w1).relu_()
                h2 = torch.addmm(b2, h1, w2).relu_()
                g = torch.addmm(b3, h2, w3).sigmoid_().sub_(tb)  # the per-sample output gradient
                d = relu_grad(torch.mm(g, w3.T), h2, 0)
                d = relu_grad(torch.mm(d, w2.T), h1, 0)
                xb = torch.mm(d, w1.T).sign_().mul_(EPS).add_(xb)
            h1 = torch.addmm(b1, xb, w1).relu_()
            h2 = torch.addmm(b2, h1, w2).relu_()
            o = torch.addmm(b3, h2, w3)
            losses[k] = bce(o, tb, reduction="sum") / BATCH
            g = o.sigmoid_().sub_(tb).mul_(LR / BATCH)
            d2 = relu_grad(torch.mm(g, w3.T), h2, 0)
            w3.addmm_(h2.T, g, alpha=-1)
            b3.sub_(g.sum(0))
            d1 = relu_grad(torch.mm(d2, w2.T), h1, 0)
            w2.addmm_(h1.T, d2, alpha=-1)
            b2.sub_(d2.sum(0))
            w1.addmm_(xb.T, d1, alpha=-1)
            b1.sub_(d1.sum(0))
        _sync(device)

    run.weights = lambda: w1.cpu().numpy()
    return run


def lean_numpy(hidden: int, adversarial: bool, x, y, batches):
    """The same step by hand in plain numpy: one gather, in-place activations, lr/n folded into g, each update as
    w -= h.T @ g (faster than into a preallocated np.dot(out=) buffer) and g @ w.T as (w @ g.T).T (faster in
    OpenBLAS): both measured, see RESULTS.md."""
    (w1, b1), (w2, b2), (w3, b3) = _init(hidden)
    xt = np.concatenate([x, np.eye(10, dtype=np.float32)[y]], axis=1)
    losses = np.empty(len(batches))
    scale = np.float32(LR / BATCH)

    def forward(xb):
        h1 = xb @ w1
        h1 += b1
        np.maximum(h1, 0, out=h1)
        h2 = h1 @ w2
        h2 += b2
        np.maximum(h2, 0, out=h2)
        o = h2 @ w3
        o += b3
        return h1, h2, o

    def run(n):
        for k in range(n):
            xtb = xt[batches[k]]
            xb, tb = xtb[:, :784], xtb[:, 784:]
            if adversarial:
                h1, h2, o = forward(xb)
                g = 1 / (1 + np.exp(-o))
                g -= tb
                d = (w3 @ g.T).T  # = g @ w3.T, faster in OpenBLAS with the big matrix on the left
                d *= h2 > 0
                d = (w2 @ d.T).T
                d *= h1 > 0
                z = np.sign((w1 @ d.T).T)
                z *= EPS
                z += xb
                xb = z
            h1, h2, o = forward(xb)
            losses[k] = (np.logaddexp(o, 0) - tb * o).sum() / BATCH
            g = 1 / (1 + np.exp(-o))
            g -= tb
            g *= scale
            d2 = (w3 @ g.T).T
            d2 *= h2 > 0
            np.subtract(w3, h2.T @ g, out=w3)
            np.subtract(b3, g.sum(0), out=b3)
            d1 = (w2 @ d2.T).T
            d1 *= h1 > 0
            np.subtract(w2, h1.T @ d2, out=w2)
            np.subtract(b2, d2.sum(0), out=b2)
            np.subtract(w1, xb.T @ d1, out=w1)
            np.subtract(b1, d1.sum(0), out=b1)

    run.weights = lambda: w1
    return run


def advbp_runner(backend: str, hidden: int, device: str, adversarial: bool, x, y, batches):
    model = ModelConfig(hidden=[hidden, hidden])
    step = TrainConfig(method="adversarial" if adversarial else "backprop", eps=EPS, lr=LR)
    net = load_backend(backend)(model, dtype="float32", device=device)
    net.set_params(init_params(layer_sizes(784, [hidden, hidden], 10), 0.01, 0))
    xd, yd = net.asarray(x), net.asarray(y, labels=True)

    def run(n):
        net.train_steps(xd, yd, batches[:n], step)
        _sync(device)

    run.weights = lambda: net.get_params()["layers.0.weight"]
    return run


def _load() -> str:
    return "load average " + " ".join(f"{v:.2f}" for v in os.getloadavg())


def time_interleaved(runners: dict, steps: int, repeats: int, clock) -> dict:
    """us/step of every runner: a warm-up each, then `repeats` rounds timing each runner once; the best round."""
    for run in runners.values():
        run(min(50, steps))
    best = {name: float("inf") for name in runners}
    for _ in range(repeats):
        for name, run in runners.items():
            t0 = clock()
            run(steps)
            best[name] = min(best[name], clock() - t0)
    return {name: t / steps * 1e6 for name, t in best.items()}


def check_same_weights(x, y, batches, device: str) -> None:
    """Every implementation, 20 steps of a 784-50-50-10 network from the same init: the largest difference of
    the first layer's weights from advbp numpy's (all compute the same step; float32 rounding apart)."""
    for adv in (True, False):
        runners = {"naive eager": naive_loop(50, device, adv, x, y, batches),
                   "lean torch": lean_torch(50, device, adv, x, y, batches),
                   "lean numpy": lean_numpy(50, adv, x, y, batches),
                   "advbp torch": advbp_runner("torch", 50, device, adv, x, y, batches),
                   "advbp numpy": advbp_runner("numpy", 50, device, adv, x, y, batches)}
        for run in runners.values():
            run(20)
        ref = runners["advbp numpy"].weights()
        moved = np.abs(ref - _init(50)[0][0]).max()
        print(f"{'adversarial' if adv else 'back-prop'}: max |w - w(advbp numpy)| after 20 steps "
              + ", ".join(f"{k} {np.abs(r.weights() - ref).max():.1e}" for k, r in runners.items()
                          if k != "advbp numpy") + f" (the weights moved {moved:.1e})")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--steps", type=int, default=200, help="steps per timed round")
    ap.add_argument("--repeats", type=int, default=10, help="interleaved rounds; the best is kept")
    ap.add_argument("--clock", choices=["cpu", "wall"], default="cpu",
                    help="cpu: this process's CPU time (time.process_time; with one thread it is the step's own time "
                         "and hardly moves when other processes compete for the cores); wall: perf_counter")
    ap.add_argument("--sizes", default="400,800,1200")
    ap.add_argument("--check", action="store_true", help="only show that every implementation computes the same")
    ap.add_argument("--threads", type=int, default=None,
                    help="torch intra-op threads and numpy BLAS threads (default: the libraries' own)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    rng = np.random.default_rng(0)
    x = rng.random((60000, 784), dtype=np.float32)
    y = rng.integers(0, 10, 60000)
    batches = rng.permutation(60000)[: args.steps * BATCH].reshape(-1, BATCH)
    clock = time.process_time if args.clock == "cpu" else time.perf_counter
    if args.check:
        check_same_weights(x, y, batches, args.device)
        return
    cpu = args.device == "cpu"
    dev_name = torch.cuda.get_device_name() if not cpu else platform.processor() or platform.machine()
    print(f"device: {args.device} ({dev_name}, {os.cpu_count()} cores), torch {torch.__version__}, numpy "
          f"{np.__version__}, torch threads {torch.get_num_threads()}, OMP/OPENBLAS_NUM_THREADS "
          f"{os.environ.get('OMP_NUM_THREADS')}/{os.environ.get('OPENBLAS_NUM_THREADS')}, batch {BATCH}, "
          f"{args.steps} steps per round, best of {args.repeats} interleaved rounds, {args.clock} clock")
    print(f"start: {_load()}")
    print(f"{'net':>7} {'impl':>12} {'adv us':>8} {'bp us':>8} {'adv/lean':>9} {'bp/lean':>8} "
          f"{'naive/adv':>9} {'adv/bp':>7}")
    for h in (int(s) for s in args.sizes.split(",")):
        runners = {}
        for adv in (True, False):
            runners[("naive eager", adv)] = naive_loop(h, args.device, adv, x, y, batches)
            runners[("lean torch", adv)] = lean_torch(h, args.device, adv, x, y, batches)
            runners[("advbp torch", adv)] = advbp_runner("torch", h, args.device, adv, x, y, batches)
            if cpu:
                runners[("lean numpy", adv)] = lean_numpy(h, adv, x, y, batches)
                runners[("advbp numpy", adv)] = advbp_runner("numpy", h, args.device, adv, x, y, batches)
        t = time_interleaved(runners, args.steps, args.repeats, clock)
        for name in ("naive eager", "lean torch", "advbp torch", "lean numpy", "advbp numpy"):
            if (name, True) not in t:
                continue
            lean = "lean numpy" if name.endswith("numpy") else "lean torch"
            adv, bp = t[(name, True)], t[(name, False)]
            print(f"{'2x' + str(h):>7} {name:>12} {adv:>8.0f} {bp:>8.0f} {adv / t[(lean, True)]:>8.2f}x "
                  f"{bp / t[(lean, False)]:>7.2f}x {t[('naive eager', True)] / adv:>8.2f}x {adv / bp:>7.2f}")
        print(f"  ({_load()})", flush=True)


if __name__ == "__main__":
    main()
