"""Layers, forward and backward, written out by hand (mirrors backends/numpy/layers.py).
No autograd: the backward pass is explicit so the input-gradient pass can skip weight gradients. Convolution and
pooling call torch's kernels for the arithmetic (F.conv2d, aten.convolution_backward, F.max_pool2d with indices)
but the chain rule is ours."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .. import pool_geometry


def linear_forward(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.addmm(b, x, w)


def linear_backward_input(grad_out: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    return grad_out @ w.T


def linear_backward_params(x: torch.Tensor, grad_out: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return x.T @ grad_out, grad_out.sum(dim=0)


def sigmoid(a: torch.Tensor) -> torch.Tensor:
    return torch.sigmoid(a)


def activation_forward(name: str, a: torch.Tensor) -> torch.Tensor:
    if name == "relu":
        return torch.relu(a)
    if name == "tanh":
        return torch.tanh(a)
    if name == "logistic":
        return torch.sigmoid(a)
    raise ValueError(f"unknown activation {name!r}")


def activation_backward(name: str, y: torch.Tensor, grad_y: torch.Tensor) -> torch.Tensor:
    """Gradient through the activation, written in terms of its output y (what forward kept)."""
    if name == "relu":  # grad_y where y > 0, else 0: one pass (numpy: np.where(y > 0, grad_y, 0))
        return torch.ops.aten.threshold_backward(grad_y, y, 0)
    if name == "tanh":
        return grad_y * (1 - y * y)
    if name == "logistic":
        return grad_y * y * (1 - y)
    raise ValueError(f"unknown activation {name!r}")


# ------------------------------------------------------------------------------------------ convolution


def conv2d_forward(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:
    """Stride 1, zero padding k // 2: (n, C, H, W) -> (n, O, H, W)."""
    return F.conv2d(x, w, b, padding=w.shape[-1] // 2)


def conv2d_backward_input(grad_out: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    k = w.shape[-1]
    shape = (grad_out.shape[0], w.shape[1], *grad_out.shape[2:])  # 'same' padding: the input's spatial size
    return torch.ops.aten.convolution_backward(
        grad_out, grad_out.new_empty(1).expand(shape), w, None, [1, 1], [k // 2, k // 2], [1, 1], False, [0, 0], 1,
        [True, False, False])[0]


def conv2d_backward_params(x: torch.Tensor, grad_out: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    w_shape = (grad_out.shape[1], x.shape[1], k, k)
    _, gw, gb = torch.ops.aten.convolution_backward(
        grad_out, x, grad_out.new_empty(1).expand(w_shape), [grad_out.shape[1]], [1, 1], [k // 2, k // 2], [1, 1],
        False, [0, 0], 1, [False, True, True])
    return gw, gb


# ---------------------------------------------------------------------------------------------- pooling


def _pool_args(x_shape, k: int, s: int, mode: str) -> dict:
    lo = pool_geometry(x_shape[2], k, s, mode)[1]
    return dict(kernel_size=k, stride=s, padding=lo, ceil_mode=(mode == "ceil"))


def maxpool_forward(x: torch.Tensor, k: int, s: int, mode: str) -> tuple[torch.Tensor, torch.Tensor]:
    """k x k max pooling with stride s; the indices (into each H*W plane) of every window's maximum."""
    return F.max_pool2d(x, return_indices=True, **_pool_args(x.shape, k, s, mode))


def maxpool_backward(grad_out: torch.Tensor, arg: torch.Tensor, x_shape, k: int, s: int, mode: str) -> torch.Tensor:
    """Each window's gradient goes to its argmax; overlapping windows add up."""
    n, c, h, w = x_shape
    gx = grad_out.new_zeros((n, c, h * w))
    gx.scatter_add_(2, arg.reshape(n, c, -1), grad_out.reshape(n, c, -1))
    return gx.reshape(n, c, h, w)


# ---------------------------------------------------------------------------------- dropout, max-norm


def dropout_mask(keep: torch.Tensor, rate: float, dtype) -> torch.Tensor:
    """Inverted dropout: kept units are scaled by 1 / (1 - rate) at training time, dropped ones are 0."""
    return keep.to(dtype) * torch.tensor(1.0 / (1.0 - rate), dtype=dtype, device=keep.device)


def max_norm_(w: torch.Tensor, c: float) -> None:
    """Rescales, in place, every unit's incoming weight vector whose L2 norm exceeds c to norm c (a column of a
    linear weight, one output filter of a conv weight)."""
    dims = (0,) if w.dim() == 2 else (1, 2, 3)
    norms = (w * w).sum(dim=dims, keepdim=True).sqrt()
    cc = torch.tensor(c, dtype=w.dtype, device=w.device)
    w.mul_(torch.clamp(cc / norms.clamp_min(torch.finfo(w.dtype).tiny), max=1.0))
