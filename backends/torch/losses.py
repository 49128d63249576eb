"""Output layers with their objectives (mirrors backends/numpy/losses.py): per-sample losses and the gradient
of the batch-mean loss with respect to the logits."""

from __future__ import annotations

import torch

from .layers import sigmoid


def one_hot(y: torch.Tensor, num_classes: int, dtype) -> torch.Tensor:
    return torch.nn.functional.one_hot(y, num_classes).to(dtype)


def softplus(o: torch.Tensor) -> torch.Tensor:
    return torch.clamp_min(o, 0) + torch.log1p(torch.exp(-o.abs()))


def sigmoid_bce(logits: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    t = one_hot(y, logits.shape[1], logits.dtype)
    per_sample = (softplus(logits) - t * logits).sum(dim=1)
    return per_sample, (sigmoid(logits) - t) / logits.shape[0]


def softmax_ce(logits: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    log_p = torch.log_softmax(logits, dim=1)
    per_sample = -log_p.gather(1, y[:, None])[:, 0]
    t = one_hot(y, logits.shape[1], logits.dtype)
    return per_sample, (log_p.exp() - t) / logits.shape[0]


OUTPUTS = {"sigmoid_bce": sigmoid_bce, "softmax_ce": softmax_ce}


def loss_and_grad(output: str, logits: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return OUTPUTS[output](logits, y)
