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
    nonfinite: int = 0  # samples whose outputs hold NaN or Inf: their argmax is no prediction (see check_finite)


def evaluate_arrays(backend, x: np.ndarray, y: np.ndarray) -> Evaluation:
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):  # non-finite outputs are counted instead
        return _evaluate(backend, x, y)


def _evaluate(backend, x: np.ndarray, y: np.ndarray) -> Evaluation:
    preds, losses, bad = [], [], 0
    for start in range(0, len(x), CHUNK):
        xd = backend.asarray(x[start : start + CHUNK])
        yd = backend.asarray(y[start : start + CHUNK], labels=True)
        logits = np.asarray(backend.logits(xd))
        bad += int((~np.isfinite(logits)).any(axis=1).sum())
        preds.append(logits.argmax(axis=1))
        losses.append(backend.loss_per_sample(xd, yd))
    pred = np.concatenate(preds) if preds else np.zeros(0, np.int64)
    loss = np.concatenate(losses) if losses else np.zeros(0)
    err = float((pred != y).mean() * 100) if len(y) else float("nan")
    return Evaluation(len(y), err, float(loss.mean()) if len(loss) else float("nan"), pred, bad)


def check_finite(ev: Evaluation, what: str) -> Evaluation:
    """An evaluation is an answer only if every output and the loss are finite numbers: otherwise one line."""
    from .errors import UsageProblem

    if ev.nonfinite or not np.isfinite(ev.error) or not np.isfinite(ev.loss):
        count = f"for {ev.nonfinite} of {ev.n} samples" if ev.nonfinite else "in its loss"
        raise UsageProblem(f"{what}: the network's outputs are NaN or Inf {count}, so there is no error rate to "
                           "report (weights or inputs out of range)")
    return ev


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
