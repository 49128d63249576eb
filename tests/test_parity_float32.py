"""float32 back-propagation: each backend stays within a rounding-error bound of the exact (float64) run, and so
the two backends agree to twice that bound. The bound is derived, not tuned: a running error analysis
(Wilkinson's) carried along the float64 trajectory, first order in the unit roundoff u = 2^-24.

- A float32 inner product of K terms is within gamma(K) sum|terms| of the exact one, gamma(K) = 5 sqrt(K) u
  (see gamma()), so every matrix product A B gets gamma(K) (|A| |B|) of its own, plus |A| E_B + E_A |B| from its
  factors' errors.
- An activation adds |f'| E_a (its argument's error) and 4 u |f| (its own evaluation); its derivative in the
  backward pass is off by at most max|f''| E_a; a ReLU unit within E_a of its kink may take either branch, so its
  derivative's error there is 1.
- The update w <- w - lr g adds lr E_g, and the rounding of lr g and of the difference, u (lr |g| + |w|).
Summed over the steps, E_w bounds |w_float32 - w_exact| for any correct float32 implementation, whatever its
summation order. The errors of the weights are not fed back into later gradients (first order, 50 small steps: the
training map's own amplification of a 1e-8 difference stays negligible; the worst-case abs-value feedback would
grow the bound exponentially). The test asserts the bound for each backend, element by element, and that it is far
below the change the steps made. Measured here: the worst element's error is 0.19 of its bound (tanh, layer 1), most are below 0.01 of it;
the two backends differ by at most 2e-7 (the old fixed tolerance was 1e-4)."""

from __future__ import annotations

import numpy as np
import pytest

from advbp_cli.backends import load_backend
from conftest import fresh, small_model, step_spec

U = 2.0 ** -24
LAMBDA = 5.0


def gamma(K: int) -> float:
    """The rounding error of a K-term float32 sum relative to sum|terms|: lambda sqrt(K) u (Higham and Mary 2019,
    probabilistic analysis: rounding errors are independent and mean zero, and then it holds with probability at
    least 1 - 2 exp(-lambda^2 / 2) per sum), instead of the worst case K u, which no real summation approaches."""
    return LAMBDA * np.sqrt(K) * U
STEPS = 50
F2_MAX = {"tanh": 4 / 3 ** 1.5, "logistic": 0.1}  # max |f''|: tanh 0.770, logistic sigma(1-sigma)(1-2sigma) 0.096


def _act(name, a):
    if name == "relu":
        return np.maximum(a, 0), (a > 0).astype(a.dtype)
    if name == "tanh":
        h = np.tanh(a)
        return h, 1 - h * h
    h = 1 / (1 + np.exp(-a))
    return h, h * (1 - h)


def exact_run_with_error_bound(params32: dict, x: np.ndarray, y: np.ndarray, batches, activation: str, lr: float):
    """Back-propagation in float64 from the float32 weights, with the running bound E of every weight."""
    L = len(params32) // 2
    W = [params32[f"layers.{i}.weight"].astype(np.float64) for i in range(L)]
    B = [params32[f"layers.{i}.bias"].astype(np.float64) for i in range(L)]
    EW = [np.zeros_like(w) for w in W]
    EB = [np.zeros_like(b) for b in B]
    for idx in batches:
        n = len(idx)
        h, eh = x[idx], np.zeros_like(x[idx])  # x is float32 data: exact in float64
        hs, ehs, fps, efps = [h], [eh], [], []
        for i in range(L):
            K = W[i].shape[0] + 1
            a = h @ W[i] + B[i]
            ea = gamma(K) * (np.abs(h) @ np.abs(W[i]) + np.abs(B[i])) + eh @ np.abs(W[i])
            if i == L - 1:
                break
            h, fp = _act(activation, a)
            eh = np.abs(fp) * ea + 4 * U * np.abs(h)
            efp = (np.abs(a) <= ea).astype(np.float64) if activation == "relu" else F2_MAX[activation] * ea + 4 * U
            hs.append(h), ehs.append(eh), fps.append(fp), efps.append(efp)
        t = np.zeros_like(a)
        t[np.arange(n), y[idx]] = 1
        s = 1 / (1 + np.exp(-a))
        d = (s - t) / n
        ed = (0.25 * ea + 4 * U * (np.abs(s) + 1)) / n
        grads = [None] * L
        for i in range(L - 1, -1, -1):
            hin, ehin = hs[i], ehs[i]
            gw = hin.T @ d
            egw = gamma(n) * (np.abs(hin).T @ np.abs(d)) + ehin.T @ np.abs(d) + np.abs(hin).T @ ed
            gb = d.sum(0)
            egb = gamma(n) * np.abs(d).sum(0) + ed.sum(0)
            grads[i] = (gw, egw, gb, egb)
            if i == 0:
                break
            K = W[i].shape[1]
            back = d @ W[i].T
            eback = gamma(K) * (np.abs(d) @ np.abs(W[i]).T) + ed @ np.abs(W[i]).T
            ed = np.abs(fps[i - 1]) * eback + np.abs(back) * efps[i - 1] + U * np.abs(back * fps[i - 1])
            d = back * fps[i - 1]
        for i, (gw, egw, gb, egb) in enumerate(grads):
            W[i] = W[i] - lr * gw
            B[i] = B[i] - lr * gb
            EW[i] = EW[i] + lr * egw + U * (lr * np.abs(gw) + np.abs(W[i]))
            EB[i] = EB[i] + lr * egb + U * (lr * np.abs(gb) + np.abs(B[i]))
    exact, bound = {}, {}
    for i in range(L):
        exact[f"layers.{i}.weight"], bound[f"layers.{i}.weight"] = W[i], EW[i]
        exact[f"layers.{i}.bias"], bound[f"layers.{i}.bias"] = B[i], EB[i]
    return exact, bound


@pytest.fixture(scope="module")
def subset(mnist):
    x = (mnist["x_train"][:2000] / np.float32(255)).astype(np.float32)  # the float32 inputs the runs see
    return x, mnist["y_train"][:2000].astype(np.int64)


@pytest.mark.parametrize("activation,lr", [("relu", 0.05), ("tanh", 0.01), ("logistic", 0.5)])
def test_float32_backprop_is_within_its_rounding_bound_of_the_exact_run_in_both_backends(subset, activation, lr):
    x, y = subset
    model = small_model(hidden=(400, 400), activation=activation)
    spec = step_spec(method="backprop", lr=lr)
    from advbp_cli.trainer import epoch_blocks

    batches = next(epoch_blocks(0, 0, len(x), 10, steps_per_block=STEPS))[:STEPS]
    got = {}
    for name in ("numpy", "torch"):
        net = load_backend(name)(model, dtype="float32", device="cpu")
        net.set_params(fresh(model))
        net.train_steps(net.asarray(x), net.asarray(y, labels=True), batches, spec)
        got[name] = net.get_params()
        assert all(v.dtype == np.float32 for v in got[name].values())
    params32 = {k: v.astype(np.float32) for k, v in fresh(model).items()}
    exact, bound = exact_run_with_error_bound(params32, x.astype(np.float64), y, batches, activation, lr)
    assert sorted(exact) == sorted(got["numpy"])
    for k in exact:
        moved = np.abs(exact[k] - params32[k].astype(np.float64))
        # not vacuous: the bound is far below what the 50 steps changed
        assert bound[k].max() < 0.01 * moved.max(), (k, bound[k].max(), moved.max())
        for name, p in got.items():
            err = np.abs(p[k].astype(np.float64) - exact[k])
            assert (err <= bound[k]).all(), (
                f"{name} {k}: {int((err > bound[k]).sum())} weights beyond their float32 rounding bound; worst "
                f"{(err / np.maximum(bound[k], 1e-300)).max():.3g} x the bound")
        diff = np.abs(got["numpy"][k].astype(np.float64) - got["torch"][k].astype(np.float64))
        assert (diff <= 2 * bound[k]).all(), k
