"""Layers, forward and backward, written out by hand: linear (weights (fan_in, fan_out)), activations,
2D convolution (weights (out, in, k, k), stride 1, 'same' zero padding, via im2col), max pooling (argmax
indices), inverted dropout, and the max-norm constraint. Conventions: see backends/__init__.py."""

from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from .. import pool_geometry


def linear_forward(x: np.ndarray, w: np.ndarray, b: np.ndarray) -> np.ndarray:
    return x @ w + b


def linear_backward_input(grad_out: np.ndarray, w: np.ndarray) -> np.ndarray:
    return grad_out @ w.T


def linear_backward_params(x: np.ndarray, grad_out: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return x.T @ grad_out, grad_out.sum(axis=0)


def sigmoid(a: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore"):  # exp(-a) overflows to inf for very negative a; 1/inf = 0 is right
        return 1.0 / (1.0 + np.exp(-a))


def activation_forward(name: str, a: np.ndarray) -> np.ndarray:
    if name == "relu":
        return np.maximum(a, 0)
    if name == "tanh":
        return np.tanh(a)
    if name == "logistic":
        return sigmoid(a)
    raise ValueError(f"unknown activation {name!r}")


def activation_backward(name: str, y: np.ndarray, grad_y: np.ndarray) -> np.ndarray:
    """Gradient through the activation, written in terms of its output y (what forward kept)."""
    if name == "relu":
        return np.where(y > 0, grad_y, 0)
    if name == "tanh":
        return grad_y * (1 - y * y)
    if name == "logistic":
        return grad_y * y * (1 - y)
    raise ValueError(f"unknown activation {name!r}")


# ------------------------------------------------------------------------------------------ convolution


def _im2col(x: np.ndarray, k: int, pad: int) -> np.ndarray:
    """(n, C, H, W) -> (n*H'*W', C*k*k): one row per output position, its k x k receptive field of every channel."""
    n, c = x.shape[:2]
    xp = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    win = sliding_window_view(xp, (k, k), axis=(2, 3))  # (n, C, H', W', k, k), a view
    return win.transpose(0, 2, 3, 1, 4, 5).reshape(-1, c * k * k)


def conv2d_forward(x: np.ndarray, w: np.ndarray, b: np.ndarray | None) -> np.ndarray:
    """Stride 1, zero padding k // 2: (n, C, H, W) -> (n, O, H, W)."""
    n, _, h, wd = x.shape
    o, _, k, _ = w.shape
    out = _im2col(x, k, k // 2) @ w.reshape(o, -1).T  # (n*H*W, O)
    if b is not None:
        out += b
    return np.ascontiguousarray(out.reshape(n, h, wd, o).transpose(0, 3, 1, 2))


def conv2d_backward_input(grad_out: np.ndarray, w: np.ndarray) -> np.ndarray:
    """For stride 1 and 'same' padding the input gradient is the same convolution with the kernel flipped in space
    and its in/out channels swapped."""
    return conv2d_forward(grad_out, np.ascontiguousarray(w.transpose(1, 0, 2, 3)[:, :, ::-1, ::-1]), None)


def conv2d_backward_params(x: np.ndarray, grad_out: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    n, o = grad_out.shape[:2]
    g = grad_out.transpose(0, 2, 3, 1).reshape(-1, o)  # (n*H*W, O)
    gw = (g.T @ _im2col(x, k, k // 2)).reshape(o, x.shape[1], k, k)
    return gw, g.sum(axis=0)


# ---------------------------------------------------------------------------------------------- pooling


def _pool_pads(x_shape, k: int, s: int, mode: str):
    """Per spatial axis: (output size, pixels used, padding before, padding after)."""
    out = []
    for size in x_shape[2:]:
        o, lo, hi = pool_geometry(size, k, s, mode)
        out.append((o, size + min(hi, 0), lo, max(hi, 0)))
    return out


def maxpool_forward(x: np.ndarray, k: int, s: int, mode: str) -> tuple[np.ndarray, np.ndarray]:
    """k x k max pooling with stride s. Returns the output and, for backward, the argmax of every window
    (row-major in the window; the first of equal values wins, as in torch)."""
    n, c = x.shape[:2]
    (oh, uh, lh, hh), (ow, uw, lw, hw) = _pool_pads(x.shape, k, s, mode)
    xp = np.full((n, c, lh + uh + hh, lw + uw + hw), -np.inf, dtype=x.dtype)
    xp[:, :, lh : lh + uh, lw : lw + uw] = x[:, :, :uh, :uw]
    win = sliding_window_view(xp, (k, k), axis=(2, 3))[:, :, ::s, ::s].reshape(n, c, oh, ow, k * k)
    arg = win.argmax(axis=-1)
    return np.take_along_axis(win, arg[..., None], axis=-1)[..., 0], arg


def maxpool_backward(grad_out: np.ndarray, arg: np.ndarray, x_shape, k: int, s: int, mode: str) -> np.ndarray:
    """Each window's gradient goes to its argmax; overlapping windows add up."""
    n, c = x_shape[:2]
    (oh, uh, lh, hh), (ow, uw, lw, hw) = _pool_pads(x_shape, k, s, mode)
    gp = np.zeros((n, c, lh + uh + hh, lw + uw + hw), dtype=grad_out.dtype)
    for di in range(k):
        for dj in range(k):
            gp[:, :, di : di + s * (oh - 1) + 1 : s, dj : dj + s * (ow - 1) + 1 : s] += np.where(
                arg == di * k + dj, grad_out, 0)
    gx = np.zeros(x_shape, dtype=grad_out.dtype)
    gx[:, :, :uh, :uw] = gp[:, :, lh : lh + uh, lw : lw + uw]
    return gx


# ---------------------------------------------------------------------------------- dropout, max-norm


def dropout_mask(keep: np.ndarray, rate: float, dtype) -> np.ndarray:
    """Inverted dropout: kept units are scaled by 1 / (1 - rate) at training time, dropped ones are 0."""
    return keep.astype(dtype) * np.asarray(1.0 / (1.0 - rate), dtype=dtype)


def max_norm_(w: np.ndarray, c: float) -> None:
    """Rescales, in place, every unit's incoming weight vector whose L2 norm exceeds c to norm c. A unit's incoming
    weights are a column of a linear weight (fan_in, fan_out), or one output filter (in, k, k) of a conv weight."""
    axes = 0 if w.ndim == 2 else (1, 2, 3)
    norms = np.sqrt((w * w).sum(axis=axes, keepdims=True))
    w *= np.minimum(np.asarray(1.0, w.dtype), np.asarray(c, w.dtype) / np.maximum(norms, np.finfo(w.dtype).tiny))
