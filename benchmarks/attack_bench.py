"""Benchmark (not a test): generating the eps 0.25 and 0.5 FGSM sets for the 10 000 validation images against
one forward+backward pass over the same images (issue 3 asks for <= about 1.5x), and one BIM and one PGD set
against one FGSM set (issue 14: about K input-gradient passes per restart), all in the same process.

    python benchmarks/attack_bench.py [--source RUN_OR_CHECKPOINT] [--backend numpy|torch] [--batch-size 1000]
                                      [--repeats 5] [--steps 10] [--restarts 2] [--data-dir DIR]

Timed, each the median of --repeats runs, interleaved so that load changes hit all of them alike:
  fwd+bwd      forward + backward with weight gradients over the 10k images (what one training pass costs,
               without the update), in batches of --batch-size
  grad only    the input gradient alone (forward + backward to the input, no weight gradients)
  generate     advbp's attack: one input gradient per sample, then z = clip(x + eps sign(e)) for eps 0.25 and 0.5
  + manifest   generate plus the source network's error on each set (what `advbp attack` records in the manifest)
  fgsm set     ONE FGSM set at eps 0.25 (gradient, perturbation, the source's error): the baseline of the next two
  bim set      BIM, --steps K iterations, eps 0.25, step 2.5 eps / K, plus the source's error
  pgd set      PGD, --steps K, --restarts R, seed 0: R random starts, K iterations each, one forward pass per restart
               to keep each sample's worst case (which also gives the source's error)
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
    ap.add_argument("--steps", type=int, default=10, help="K of the bim and pgd sets")
    ap.add_argument("--restarts", type=int, default=2, help="R of the pgd set")
    ap.add_argument("--data-dir", default=os.environ.get("ADVBP_DATA_DIR", "/work/shared/data"))
    args = ap.parse_args()

    net, cfg, x, y = _source(args)
    jobs = _jobs(net, x, y, args)
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
    bs = args.batch_size
    print(f"backend {net.name} {net.dtype}, network 784-{'-'.join(map(str, cfg.model.hidden))}-10, "
          f"{len(x)} validation images, batch size {bs}, median of {args.repeats}")
    for name, t in med.items():
        spread = f"{min(times[name]):.3f}-{max(times[name]):.3f}"
        print(f"  {name:11s} {t:7.3f} s  ({spread})  ratio to fwd+bwd {t / base:5.2f}x")
    print(f"generate eps 0.25 + 0.5 / one forward+backward pass = {med['generate'] / base:.2f}x "
          f"({med['+ manifest'] / base:.2f}x with the source's error on both sets)")
    k, r, fgsm = args.steps, args.restarts, med["fgsm set"]
    print(f"one BIM set (K={k}) / one FGSM set = {med['bim set'] / fgsm:.2f}x ({med['bim set'] / fgsm / k:.2f}x per "
          f"step); one PGD set (K={k}, R={r}) / one FGSM set = {med['pgd set'] / fgsm:.2f}x "
          f"({med['pgd set'] / fgsm / (k * r):.2f}x per step and restart)")


def _source(args):
    """The network (from --source, or a fresh 2x400 ReLU) and the 10 000 validation images in its dtype."""
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
    return net, cfg, data.x, data.y


def _jobs(net, x, y, args) -> dict:
    """What is timed, by name (the module docstring says what each is)."""
    from advbp_cli.attack import error_of, fgsm_signs, perturb
    from advbp_cli.attack_methods import AttackParams, run_attack
    from advbp_cli.backends import step

    bs = args.batch_size
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

    def one_fgsm_set():
        error_of(net, perturb(x, fgsm_signs(net, x, y, bs).signs, 0.25, (0.0, 1.0)), y)

    def iterative_set(method: str):
        params = AttackParams(method, batch_size=bs, steps=args.steps,
                              restarts=args.restarts if method == "pgd" else None, seed=0 if method == "pgd" else None)
        for adv in run_attack(params, net, x, y, [0.25], (0.0, 1.0)).sets:
            if method == "bim":  # pgd's restart selection has judged its set already
                error_of(net, adv.z, y)

    jobs = {"fwd+bwd": fwd_bwd, "grad only": grad_only, "generate": lambda: generate(False),
            "+ manifest": lambda: generate(True), "fgsm set": one_fgsm_set, "bim set": lambda: iterative_set("bim"),
            "pgd set": lambda: iterative_set("pgd")}
    return jobs


if __name__ == "__main__":
    main()
