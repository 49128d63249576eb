"""The torch backend (CPU or CUDA): the primitives of backends/numpy.py (the specification), function for function,
with torch tensors. No autograd: gradients are the chain rule written out in backends/step.py; convolution and
pooling call torch's kernels for the arithmetic (F.conv2d, aten.convolution_backward, F.max_pool2d with indices).
Parameters are plain tensors (requires_grad False), so no operation records a graph."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from .layout import pool_geometry

# ------------------------------------------------------------------------------------------ arrays, device


def device(requested: str, tf32: bool = False) -> str:
    """The device for a requested `auto | cpu | cuda`. TF32 changes results, so it is off unless asked for (and then
    recorded in the run's config)."""
    if requested == "auto":
        requested = "cuda" if torch.cuda.is_available() else "cpu"
    elif requested == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda was asked for, but torch sees no CUDA device (accepted: auto, cpu, cuda)")
    torch.backends.cuda.matmul.allow_tf32 = tf32
    torch.backends.cudnn.allow_tf32 = tf32
    return requested


def compute_context():
    """inference_mode: no tensor here needs autograd, and leaving its dispatch keys out saves about a third of
    each small operation's overhead, which at batch 10 is a good part of a step. (Tensors made inside cannot be
    changed in place outside it: the Backend updates its parameters and buffers only inside.)"""
    return torch.inference_mode()


def eval_chunk(device: str) -> int:
    """Images per evaluation batch of a conv net (activations grow with the batch)."""
    return 5000 if device.startswith("cuda") else 500


def asarray(a, dtype: str, device: str) -> torch.Tensor:
    t = torch.as_tensor(np.asarray(a), device=device)  # converted on the device: a bool mask crosses as 1 byte
    want = getattr(torch, dtype)
    return t if t.dtype == want else t.to(want)


def to_numpy(a: torch.Tensor) -> np.ndarray:
    return a.detach().cpu().numpy()


def copy(a: torch.Tensor) -> torch.Tensor:
    return a.clone()


def stack(arrays: list) -> torch.Tensor:
    return torch.stack(arrays)


def take_rows(a: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    return a.index_select(0, idx)


# ---------------------------------------------------------------------------------------- linear layers


def linear(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.addmm(b, x, w)


def linear_grad_input(g: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    return g @ w.T


def matmul_tn(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return a.T @ b


# ---------------------------------------------------------------------------------------------- activations


def relu_(a: torch.Tensor) -> torch.Tensor:
    return a.relu_()


def relu_grad(y: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    return torch.ops.aten.threshold_backward(g, y, 0)  # g where y > 0, else 0, in one pass


def tanh_(a: torch.Tensor) -> torch.Tensor:
    return a.tanh_()


def tanh_grad(y: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    return g * (1 - y * y)


def sigmoid(a: torch.Tensor) -> torch.Tensor:
    return F.logsigmoid(a).exp_()  # torch.sigmoid is 0 below -88.7 in float32; see backends/numpy.py


def sigmoid_(a: torch.Tensor) -> torch.Tensor:
    return a.sigmoid_()


def sigmoid_grad(y: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    return g * y * (1 - y)


# --------------------------------------------------------------------------------- losses' building blocks


def softplus(a: torch.Tensor) -> torch.Tensor:
    return torch.logaddexp(a, a.new_zeros(()))


def log_softmax(a: torch.Tensor) -> torch.Tensor:
    return torch.log_softmax(a, dim=1)


def exp(a: torch.Tensor) -> torch.Tensor:
    return torch.exp(a)


def take_labels(a: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return a.gather(1, y.view(-1, 1)).view(-1)  # .view, not [:, None]: indexing costs more per call at batch 10


def set_labels_(a: torch.Tensor, y: torch.Tensor, v: torch.Tensor | float) -> torch.Tensor:
    return a.scatter_(1, y.view(-1, 1), v if isinstance(v, float) else v.view(-1, 1))


def sum_rows(a: torch.Tensor) -> torch.Tensor:
    return a.sum(dim=1)


def sum_batch(a: torch.Tensor) -> torch.Tensor:
    return a.sum(dim=0)


def mean(a: torch.Tensor) -> torch.Tensor:
    return a.mean()


def argmax_rows(a: torch.Tensor) -> torch.Tensor:
    return a.argmax(dim=1)


def count_different(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (a != b).sum()


def count_zeros(a: torch.Tensor) -> torch.Tensor:
    return a.numel() - torch.count_nonzero(a)


def count_nonfinite(a: torch.Tensor) -> torch.Tensor:
    return a.numel() - torch.count_nonzero(torch.isfinite(a))


# ----------------------------------------------------------------------------------- FGSM, the update


def sign(a: torch.Tensor) -> torch.Tensor:
    return torch.sign(a)


def clip_(a: torch.Tensor, lo: float, hi: float) -> torch.Tensor:
    return a.clamp_(lo, hi)


def clamp_(a: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor) -> torch.Tensor:
    return a.clamp_(min=lo, max=hi)


def sub_(w: torch.Tensor, g: torch.Tensor, alpha: float) -> torch.Tensor:
    return w.sub_(g, alpha=alpha)


def sub_matmul_tn_(w: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return w.addmm_(a.T, b, alpha=-1)  # one GEMM that reads and writes w in place (beta = 1)


def max_norm_(w: torch.Tensor, c: float) -> torch.Tensor:
    dims = (0,) if w.dim() == 2 else (1, 2, 3)
    norms = (w * w).sum(dim=dims, keepdim=True).sqrt()
    cc = torch.tensor(c, dtype=w.dtype, device=w.device)
    return w.mul_(torch.clamp(cc / norms.clamp_min(torch.finfo(w.dtype).tiny), max=1.0))


# ------------------------------------------------------------------------------------------ convolution


def conv2d(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:
    return F.conv2d(x, w, b, padding=w.shape[-1] // 2)


def conv2d_grad_input(g: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    k = w.shape[-1]
    shape = (g.shape[0], w.shape[1], *g.shape[2:])  # 'same' padding: the input's spatial size
    return torch.ops.aten.convolution_backward(
        g, g.new_empty(1).expand(shape), w, None, [1, 1], [k // 2, k // 2], [1, 1], False, [0, 0], 1,
        [True, False, False])[0]


def conv2d_grad_params(x: torch.Tensor, g: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    w_shape = (g.shape[1], x.shape[1], k, k)
    _, gw, gb = torch.ops.aten.convolution_backward(
        g, x, g.new_empty(1).expand(w_shape), [g.shape[1]], [1, 1], [k // 2, k // 2], [1, 1], False, [0, 0], 1,
        [False, True, True])
    return gw, gb


# ---------------------------------------------------------------------------------------------- pooling


def max_pool(x: torch.Tensor, k: int, s: int, mode: str) -> tuple[torch.Tensor, torch.Tensor]:
    lo = pool_geometry(x.shape[2], k, s, mode)[1]
    return F.max_pool2d(x, kernel_size=k, stride=s, padding=lo, ceil_mode=(mode == "ceil"), return_indices=True)


def max_pool_grad(g: torch.Tensor, arg: torch.Tensor, x_shape, k: int, s: int, mode: str) -> torch.Tensor:
    n, c, h, w = x_shape
    gx = g.new_zeros((n, c, h * w))
    gx.scatter_add_(2, arg.reshape(n, c, -1), g.reshape(n, c, -1))
    return gx.reshape(n, c, h, w)
