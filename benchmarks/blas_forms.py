"""Benchmark (not a test): the ways to write a batch-10 layer's two matmuls and its update in numpy and torch, one
thread, CPU time, each the best of --repeats rounds, as ratios to the form advbp uses. It is why
backends/numpy.py computes g @ w.T as (w @ g.T).T and updates plain SGD as w -= x.T @ g, and why
backends/torch.py updates with w.addmm_(x.T, g, alpha=-1).

    python benchmarks/blas_forms.py [--repeats 15]
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = "1"

import argparse  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402


def us(f, repeats: int, n: int = 100) -> float:
    f()
    best = float("inf")
    for _ in range(repeats):
        t0 = time.process_time()
        for _ in range(n):
            f()
        best = min(best, time.process_time() - t0)
    return best / n * 1e6


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=15)
    args = ap.parse_args()
    torch.set_num_threads(1)
    rng = np.random.default_rng(0)
    print(f"numpy {np.__version__}, torch {torch.__version__}, one thread, batch 10, us per call (CPU time), "
          f"load average {os.getloadavg()[0]:.1f}")
    for fan_in, fan_out in ((784, 400), (400, 400), (784, 1200), (1200, 1200)):
        w = rng.random((fan_in, fan_out), dtype=np.float32)
        x = rng.random((10, fan_in), dtype=np.float32)
        g = rng.random((10, fan_out), dtype=np.float32) * 1e-3
        buf = np.empty_like(w)
        tw, tx, tg = torch.tensor(w), torch.tensor(x), torch.tensor(g)

        def np_update_fused():
            np.subtract(w, x.T @ g, out=w)

        def np_update_buffer():
            np.dot(x.T, g, out=buf)
            np.subtract(w, buf, out=w)

        def np_update_scaled():
            np.subtract(w, 0.05 * (x.T @ g), out=w)

        t = {
            "numpy g @ w.T": us(lambda: g @ w.T, args.repeats),
            "numpy (w @ g.T).T, C order [advbp]": us(lambda: np.ascontiguousarray((w @ g.T).T), args.repeats),
            "numpy w -= x.T @ g [advbp]": us(np_update_fused, args.repeats),
            "numpy np.dot(out=buf); w -= buf": us(np_update_buffer, args.repeats),
            "numpy w -= lr * (x.T @ g)": us(np_update_scaled, args.repeats),
            "torch w.addmm_(x.T, g, alpha=-1) [advbp]": us(lambda: tw.addmm_(tx.T, tg, alpha=-1), args.repeats),
            "torch w.sub_(x.T @ g, alpha=lr)": us(lambda: tw.sub_(tx.T @ tg, alpha=0.05), args.repeats),
        }
        print(f"layer {fan_in}x{fan_out}:")
        pairs = {"numpy g @ w.T": "numpy (w @ g.T).T, C order [advbp]",
                 "numpy np.dot(out=buf); w -= buf": "numpy w -= x.T @ g [advbp]",
                 "numpy w -= lr * (x.T @ g)": "numpy w -= x.T @ g [advbp]",
                 "torch w.sub_(x.T @ g, alpha=lr)": "torch w.addmm_(x.T, g, alpha=-1) [advbp]"}
        for name, v in t.items():
            ref = pairs.get(name)
            ratio = f"  {v / t[ref]:.2f}x the advbp form" if ref else ""
            print(f"  {name:42s} {v:7.0f}{ratio}")


if __name__ == "__main__":
    main()
