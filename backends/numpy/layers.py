"""Layers of the MLP, forward and backward, written out by hand. Weights have shape (fan_in, fan_out)."""

from __future__ import annotations

import numpy as np


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
