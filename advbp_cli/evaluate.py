"""Error, loss and hidden-unit sparsity of a network on a split, in chunks so memory stays bounded."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

CHUNK = 5000


@dataclass
class Evaluation:
    n: int
    error: float  # percent misclassified
    loss: float  # mean per-sample objective
    predictions: np.ndarray


def evaluate_arrays(backend, x: np.ndarray, y: np.ndarray) -> Evaluation:
    preds, losses = [], []
    for start in range(0, len(x), CHUNK):
        xd = backend.asarray(x[start : start + CHUNK])
        yd = backend.asarray(y[start : start + CHUNK], labels=True)
        preds.append(backend.logits(xd).argmax(axis=1))
        losses.append(backend.loss_per_sample(xd, yd))
    pred = np.concatenate(preds) if preds else np.zeros(0, np.int64)
    loss = np.concatenate(losses) if losses else np.zeros(0)
    err = float((pred != y).mean() * 100) if len(y) else float("nan")
    return Evaluation(len(y), err, float(loss.mean()) if len(loss) else float("nan"), pred)


def hidden_sparsity(backend, x: np.ndarray) -> list[float]:
    """Fraction of exact zeros among each hidden layer's activations (the paper's Figure 3: 39 % -> 61 %)."""
    zeros = None
    total = 0
    for start in range(0, len(x), CHUNK):
        acts = backend.hidden_activations(backend.asarray(x[start : start + CHUNK]))
        counts = [int((a == 0).sum()) for a in acts]
        zeros = counts if zeros is None else [z + c for z, c in zip(zeros, counts)]
        total += len(x[start : start + CHUNK])
    sizes = backend.model.hidden
    return [z / (total * s) for z, s in zip(zeros or [0] * len(sizes), sizes)]


def mean_last_epochs(metrics: list[dict], n: int, key: str = "eval_error") -> float:
    """The paper's statistic: the mean of `key` over the last n epochs (fewer if the run is shorter)."""
    values = [m[key] for m in metrics[-n:]]
    return float(np.mean(values)) if values else float("nan")
