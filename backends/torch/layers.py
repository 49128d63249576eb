"""Layers of the MLP, forward and backward, written out by hand (mirrors backends/numpy/layers.py).
No autograd: the backward pass is explicit so the input-gradient pass can skip weight gradients."""

from __future__ import annotations

import torch


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
    if name == "relu":
        return grad_y * (y > 0)
    if name == "tanh":
        return grad_y * (1 - y * y)
    if name == "logistic":
        return grad_y * y * (1 - y)
    raise ValueError(f"unknown activation {name!r}")
