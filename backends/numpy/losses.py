"""Output layers with their objectives. Each returns per-sample losses and the gradient of the *batch mean*
loss with respect to the logits, which is what makes an SGD step `lr x mean gradient` (the paper)."""

from __future__ import annotations

import numpy as np

from .layers import sigmoid


def one_hot(y: np.ndarray, num_classes: int, dtype) -> np.ndarray:
    t = np.zeros((y.shape[0], num_classes), dtype=dtype)
    t[np.arange(y.shape[0]), y] = 1
    return t


def softplus(o: np.ndarray) -> np.ndarray:
    return np.maximum(o, 0) + np.log1p(np.exp(-np.abs(o)))


def sigmoid_bce(logits: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Logistic output units with per-unit binary cross-entropy on one-hot targets (the paper's MNIST setting).
    Per sample: sum_k softplus(o_k) - t_k o_k. Gradient at the output: sigmoid(o) - t."""
    t = one_hot(y, logits.shape[1], logits.dtype)
    per_sample = (softplus(logits) - t * logits).sum(axis=1)
    return per_sample, (sigmoid(logits) - t) / logits.shape[0]


def softmax_ce(logits: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Softmax output with cross-entropy (the paper's CIFAR-10 setting). Gradient: softmax(o) - t."""
    shifted = logits - logits.max(axis=1, keepdims=True)
    log_z = np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    log_p = shifted - log_z
    per_sample = -log_p[np.arange(y.shape[0]), y]
    t = one_hot(y, logits.shape[1], logits.dtype)
    return per_sample, (np.exp(log_p) - t) / logits.shape[0]


OUTPUTS = {"sigmoid_bce": sigmoid_bce, "softmax_ce": softmax_ce}


def loss_and_grad(output: str, logits: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return OUTPUTS[output](logits, y)
