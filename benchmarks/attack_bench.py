"""Benchmark (not a test): generating the eps 0.25 and 0.5 FGSM sets for the 10 000 validation images against
one forward+backward pass over the same images, in the same process (issue 3 asks for <= about 1.5x).

    python benchmarks/attack_bench.py [--source RUN_OR_CHECKPOINT] [--backend numpy|torch] [--batch-size 1000]
                                      [--repeats 5] [--data-dir DIR]

Timed, each the median of --repeats runs, interleaved so that load changes hit all of them alike:
  fwd+bwd      forward + backward with weight gradients over the 10k images (what one training pass costs,
               without the update), in batches of --batch-size
  grad only    the input gradient alone (forward + backward to the input, no weight gradients)
  generate     advbp's attack: one input gradient per sample, then z = clip(x + eps sign(e)) for eps 0.25 and 0.5
  + manifest   generate plus the source network's error on each set (what `advbp attack` records in the manifest)
File writing (compression, sha256) is not timed here: it does not scale with the network.
Without --source a fresh 2x400 ReLU network (paper init, seed 0) is used: the arithmetic is the same.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--source", default=None, help="run directory or checkpoint (default: fresh 2x400 ReLU)")
    ap.add_argument("--backend", choices=["numpy", "torch"], default="numpy")
    ap.add_argument("--batch-size", type=int, default=1000)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--data-dir", default=os.environ.get("ADVBP_DATA_DIR", "/work/shared/data"))
    args = ap.parse_args()

    from advbp_cli.attack import error_of, fgsm_signs, perturb
    from advbp_cli.config import RunConfig
    from advbp_cli.data.mnist import load_mnist
    from advbp_cli.data.splits import split_of
    from advbp_cli.networks import build_backend, fresh_params, load_network

    if args.source:
        net, cfg, _, _ = load_network(args.source, backend=args.backend, device="cpu")
    else:
        cfg = RunConfig.model_validate({"model": {"hidden": [400, 400]}, "data": {"eval_split": "validation"}})
        net = build_backend(cfg, args.backend, "cpu", "float32")
        net.set_params(fresh_params(cfg))
    raw = load_mnist(args.data_dir, download=False, log=lambda m: None)
    data = split_of(raw, "validation", "validation", net.dtype)
    x, y, bs = data.x, data.y, args.batch_size

    from advbp_cli.backends import step

    if net.name == "torch":
        import torch

        def sync():
            if net.device == "cuda":
                torch.cuda.synchronize()
    else:
        def sync():
            pass

    batches = [(net.asarray(x[s:s + bs]), net.asarray(y[s:s + bs], labels=True)) for s in range(0, len(x), bs)]

    def fwd_bwd():
        for xb, yb in batches:
            step.gradients(net.net, net.params, xb, yb)  # what a learning pass computes, without the update
        sync()

    def grad_only():
        for xb, yb in batches:
            net.sample_input_gradients(xb, yb)
        sync()

    def generate(with_errors: bool):
        grads = fgsm_signs(net, x, y, bs)
        for eps in (0.25, 0.5):
            z = perturb(x, grads.signs, eps, (0.0, 1.0))
            if with_errors:
                error_of(net, z, y)

    jobs = {"fwd+bwd": fwd_bwd, "grad only": grad_only, "generate": lambda: generate(False),
            "+ manifest": lambda: generate(True)}
    for fn in jobs.values():  # warm-up
        fn()
    times: dict[str, list[float]] = {k: [] for k in jobs}
    for _ in range(args.repeats):
        for name, fn in jobs.items():
            t = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t)
    med = {k: statistics.median(v) for k, v in times.items()}
    base = med["fwd+bwd"]
    print(f"device: this CPU ({platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"load average {os.getloadavg()[0]:.1f} at the end)")
    print(f"backend {net.name} {net.dtype}, network 784-{'-'.join(map(str, cfg.model.hidden))}-10, "
          f"{len(x)} validation images, batch size {bs}, median of {args.repeats}")
    for name, t in med.items():
        spread = f"{min(times[name]):.3f}-{max(times[name]):.3f}"
        print(f"  {name:11s} {t:7.3f} s  ({spread})  ratio to fwd+bwd {t / base:5.2f}x")
    print(f"generate eps 0.25 + 0.5 / one forward+backward pass = {med['generate'] / base:.2f}x "
          f"({med['+ manifest'] / base:.2f}x with the source's error on both sets)")


if __name__ == "__main__":
    main()
