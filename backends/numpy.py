"""The numpy backend: every primitive advbp's arithmetic is built from, written out by hand. This module is the
readable specification; backends/torch.py has the same functions under the same names.

A backend is one module like this one. Algorithm 1, the losses and the bookkeeping are written once on top of
the primitives (backends/step.py, backends/losses.py, backends/network.py). Besides these functions, a backend's
arrays offer: `.shape`, `.reshape(shape)`, slicing of the first axis `a[i:j]`, iteration over the first axis, and
+ - * with arrays of the same shape and with Python floats (in place as +=, -=, *= where the left side is an array
the caller owns).
Conventions: weights of a linear layer are (fan_in, fan_out); conv weights (out, in, k, k); images (n, C, H, W).
A name ending in `_` works in place on its first argument and returns it.
"""

from __future__ import annotations

import contextlib

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from .layout import pool_geometry

# ------------------------------------------------------------------------------------------ arrays, device


def device(requested: str, tf32: bool = False) -> str:
    """The device this backend computes on for a requested `auto | cpu | cuda` (tf32 has no meaning here)."""
    if requested not in ("cpu", "auto"):
        raise ValueError("the numpy backend runs on the CPU only")
    return "cpu"


def compute_context():
    """The context every verb of the Backend computes in (torch: no autograd bookkeeping; numpy: nothing)."""
    return contextlib.nullcontext()


def eval_chunk(device: str) -> int:
    """Images per evaluation batch of a conv net (im2col grows with the batch)."""
    return 250


def asarray(a, dtype: str, device: str) -> np.ndarray:
    """Data as this backend's array: `dtype` float32 | float64 for inputs, int64 for labels and indices."""
    return np.ascontiguousarray(a, dtype=dtype)


def to_numpy(a) -> np.ndarray:
    """A numpy array with a's values (it may share a's memory)."""
    return np.asarray(a)


def copy(a: np.ndarray) -> np.ndarray:
    return a.copy()


def stack(arrays: list) -> np.ndarray:
    """Scalars (0-d arrays) into one 1-d array."""
    return np.array(arrays)


def take_rows(a: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """The rows idx of a (a mini-batch)."""
    return a[idx]


# ---------------------------------------------------------------------------------------- linear layers


def linear(x: np.ndarray, w: np.ndarray, b: np.ndarray) -> np.ndarray:
    out = x @ w
    out += b
    return out


def linear_grad_input(g: np.ndarray, w: np.ndarray) -> np.ndarray:
    """g @ w.T, computed as (w @ g.T).T: OpenBLAS is about 1.5x faster with the big matrix on the left for a
    batch of 10 rows (benchmarks/RESULTS.md). Returned C-ordered, as every result here: a BLAS call may round
    differently for a transposed operand, and FGSM's z = x + 0 must compute exactly as x does."""
    return np.ascontiguousarray((w @ g.T).T)


def matmul_tn(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """a.T @ b: a linear layer's weight gradient from its input a and output gradient b."""
    return a.T @ b


# ---------------------------------------------------------------------------------------------- activations
# Each activation works in place on a fresh pre-activation; its gradient is written in terms of its output y.


def relu_(a: np.ndarray) -> np.ndarray:
    return np.maximum(a, 0, out=a)


def relu_grad(y: np.ndarray, g: np.ndarray) -> np.ndarray:
    return np.where(y > 0, g, 0)


def tanh_(a: np.ndarray) -> np.ndarray:
    return np.tanh(a, out=a)


def tanh_grad(y: np.ndarray, g: np.ndarray) -> np.ndarray:
    return g * (1 - y * y)


def sigmoid(a: np.ndarray) -> np.ndarray:
    """1 / (1 + e^-a) as exp(log sigmoid(a)) = exp(-softplus(-a)): never overflows, so sigmoid of a very negative a
    keeps its digits down to the smallest floats (1 / (1 + e^-a) is 1 / inf = 0 below a = -88.7 in float32), with a
    relative error of about (|log sigmoid(a)| + 2) eps. For the output gradients (backends/losses.py)."""
    return np.exp(-np.logaddexp(0, -a))


def sigmoid_(a: np.ndarray) -> np.ndarray:
    """The logistic activation, in place: 1 / (1 + e^-a), whose 0 below a = -88.7 (float32) is as good as a
    denormal for a hidden unit's output."""
    with np.errstate(over="ignore"):  # exp(-a) overflows to inf for very negative a; 1/inf = 0
        np.negative(a, out=a)
        np.exp(a, out=a)
        a += 1.0
        return np.divide(1.0, a, out=a)


def sigmoid_grad(y: np.ndarray, g: np.ndarray) -> np.ndarray:
    return g * y * (1 - y)


# --------------------------------------------------------------------------------- losses' building blocks


def softplus(a: np.ndarray) -> np.ndarray:
    """log(1 + e^a) without overflow: max(a, 0) + log1p(e^-|a|)."""
    return np.logaddexp(a, 0)


def log_softmax(a: np.ndarray) -> np.ndarray:
    """Row-wise log(softmax(a)), shifted by the row maximum so that exp never overflows."""
    shifted = a - a.max(axis=1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))


def exp(a: np.ndarray) -> np.ndarray:
    return np.exp(a)


def take_labels(a: np.ndarray, y: np.ndarray) -> np.ndarray:
    """a[i, y[i]] for every row i."""
    return a[np.arange(len(y)), y]


def set_labels_(a: np.ndarray, y: np.ndarray, v: np.ndarray | float) -> np.ndarray:
    """a[i, y[i]] = v[i] for every row i (v: n values, or one Python float for all)."""
    a[np.arange(len(y)), y] = v
    return a


def sum_rows(a: np.ndarray) -> np.ndarray:
    """The sum of each row: (n, k) -> (n,)."""
    return a.sum(axis=1)


def sum_batch(a: np.ndarray) -> np.ndarray:
    """The sum over the batch (first) axis: a bias gradient."""
    return a.sum(axis=0)


def mean(a: np.ndarray) -> np.ndarray:
    return a.sum() / a.size  # what a.mean() computes, without its Python-level wrapper (a few us per step)


def argmax_rows(a: np.ndarray) -> np.ndarray:
    return a.argmax(axis=1)


def count_different(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """How many entries of a and b differ (misclassified samples, from predictions and labels)."""
    return np.count_nonzero(a != b)


def count_zeros(a: np.ndarray) -> np.ndarray:
    """How many entries of a are exactly zero (hidden-unit sparsity)."""
    return a.size - np.count_nonzero(a)


def count_nonfinite(a: np.ndarray) -> np.ndarray:
    """How many entries of a are NaN or Inf (an input gradient that defines no direction)."""
    return a.size - np.count_nonzero(np.isfinite(a))


# ----------------------------------------------------------------------------------- FGSM, the update


def sign(a: np.ndarray) -> np.ndarray:
    """-1, 0 or 1 in a's dtype; sign(0) = 0."""
    return np.sign(a)


def clip_(a: np.ndarray, lo: float, hi: float) -> np.ndarray:
    return np.clip(a, lo, hi, out=a)


def clamp_(a: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """a <- min(max(a, lo), hi) elementwise, with bounds of a's shape (the projection of iterative attacks onto
    their eps-ball and pixel box); NaN stays NaN."""
    return np.clip(a, lo, hi, out=a)


def sub_(w: np.ndarray, g: np.ndarray, alpha: float) -> np.ndarray:
    """w <- w - alpha * g: the parameter update (with sub_matmul_tn_, its fused form)."""
    if alpha == 1.0:
        w -= g  # no temporary: a new array the size of w costs page faults every step
    else:
        w -= alpha * g
    return w


def sub_matmul_tn_(w: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """w <- w - a.T @ b: a linear layer's plain SGD step straight from its input a and its output gradient b
    (scaled by lr / n), never holding a weight gradient and a scaled copy of it at once."""
    w -= a.T @ b
    return w


def max_norm_(w: np.ndarray, c: float) -> np.ndarray:
    """Rescales every unit's incoming weight vector whose L2 norm exceeds c to norm c. A unit's incoming weights are
    a column of a linear weight (fan_in, fan_out), or one output filter (in, k, k) of a conv weight."""
    axes = 0 if w.ndim == 2 else (1, 2, 3)
    norms = np.sqrt((w * w).sum(axis=axes, keepdims=True))
    w *= np.minimum(np.asarray(1.0, w.dtype), np.asarray(c, w.dtype) / np.maximum(norms, np.finfo(w.dtype).tiny))
    return w


# ------------------------------------------------------------------------------------------ convolution


def _im2col(x: np.ndarray, k: int, pad: int) -> np.ndarray:
    """(n, C, H, W) -> (n*H'*W', C*k*k): one row per output position, its k x k receptive field of every channel."""
    n, c = x.shape[:2]
    xp = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    win = sliding_window_view(xp, (k, k), axis=(2, 3))  # (n, C, H', W', k, k), a view
    return win.transpose(0, 2, 3, 1, 4, 5).reshape(-1, c * k * k)


def conv2d(x: np.ndarray, w: np.ndarray, b: np.ndarray | None) -> np.ndarray:
    """Stride 1, zero padding k // 2: (n, C, H, W) -> (n, O, H, W)."""
    n, _, h, wd = x.shape
    o, _, k, _ = w.shape
    out = _im2col(x, k, k // 2) @ w.reshape(o, -1).T  # (n*H*W, O)
    if b is not None:
        out += b
    return np.ascontiguousarray(out.reshape(n, h, wd, o).transpose(0, 3, 1, 2))


def conv2d_grad_input(g: np.ndarray, w: np.ndarray) -> np.ndarray:
    """For stride 1 and 'same' padding the input gradient is the same convolution with the kernel flipped in space
    and its in/out channels swapped."""
    return conv2d(g, np.ascontiguousarray(w.transpose(1, 0, 2, 3)[:, :, ::-1, ::-1]), None)


def conv2d_grad_params(x: np.ndarray, g: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(weight gradient, bias gradient) of a conv layer from its input x and output gradient g."""
    o = g.shape[1]
    gm = g.transpose(0, 2, 3, 1).reshape(-1, o)  # (n*H*W, O)
    gw = (gm.T @ _im2col(x, k, k // 2)).reshape(o, x.shape[1], k, k)
    return gw, gm.sum(axis=0)


# ---------------------------------------------------------------------------------------------- pooling


def _pool_pads(x_shape, k: int, s: int, mode: str):
    """Per spatial axis: (output size, pixels used, padding before, padding after)."""
    out = []
    for size in x_shape[2:]:
        o, lo, hi = pool_geometry(size, k, s, mode)
        out.append((o, size + min(hi, 0), lo, max(hi, 0)))
    return out


def max_pool(x: np.ndarray, k: int, s: int, mode: str) -> tuple[np.ndarray, np.ndarray]:
    """k x k max pooling with stride s. Returns the output and, for the gradient, the argmax of every window
    (row-major in the window; the first of equal values wins, as in torch)."""
    n, c = x.shape[:2]
    (oh, uh, lh, hh), (ow, uw, lw, hw) = _pool_pads(x.shape, k, s, mode)
    xp = np.full((n, c, lh + uh + hh, lw + uw + hw), -np.inf, dtype=x.dtype)
    xp[:, :, lh : lh + uh, lw : lw + uw] = x[:, :, :uh, :uw]
    win = sliding_window_view(xp, (k, k), axis=(2, 3))[:, :, ::s, ::s].reshape(n, c, oh, ow, k * k)
    arg = win.argmax(axis=-1)
    return np.take_along_axis(win, arg[..., None], axis=-1)[..., 0], arg


def max_pool_grad(g: np.ndarray, arg: np.ndarray, x_shape, k: int, s: int, mode: str) -> np.ndarray:
    """Each window's gradient goes to its argmax; overlapping windows add up."""
    n, c = x_shape[:2]
    (oh, uh, lh, hh), (ow, uw, lw, hw) = _pool_pads(x_shape, k, s, mode)
    gp = np.zeros((n, c, lh + uh + hh, lw + uw + hw), dtype=g.dtype)
    for di in range(k):
        for dj in range(k):
            gp[:, :, di : di + s * (oh - 1) + 1 : s, dj : dj + s * (ow - 1) + 1 : s] += np.where(
                arg == di * k + dj, g, 0)
    gx = np.zeros(x_shape, dtype=g.dtype)
    gx[:, :, :uh, :uw] = gp[:, :, lh : lh + uh, lw : lw + uw]
    return gx
