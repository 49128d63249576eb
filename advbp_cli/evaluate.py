"""Error, loss and hidden-unit sparsity of a network on a split: one forward pass per chunk of CHUNK samples, so
memory stays bounded."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .errors import UsageProblem

CHUNK = 5000


@dataclass
class Evaluation:
    n: int
    error: float  # percent misclassified
    loss: float  # mean per-sample objective
    predictions: np.ndarray
    losses: np.ndarray  # each sample's objective (in the network's dtype), the mean of which is `loss`
    hidden_zero_fraction: list[float] | None = None  # per hidden layer, when asked for (the paper's Figure 3)
    nonfinite: int = 0  # samples whose loss is NaN or Inf (their outputs are): no prediction (see check_finite)


def evaluate_arrays(backend, x: np.ndarray, y: np.ndarray, sparsity: bool = False) -> Evaluation:
    """Error and mean loss on (x, y), and with `sparsity` the fraction of exact zeros among each fully connected
    hidden layer's activations, all from the same forward pass (Backend.evaluate). Non-finite outputs are counted
    (Evaluation.nonfinite), not warned about: `check_finite` turns them into one line."""
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        return _evaluate(backend, x, y, sparsity)


def _evaluate(backend, x: np.ndarray, y: np.ndarray, sparsity: bool) -> Evaluation:
    preds, losses, zeros = [], [], [0] * len(backend.model.hidden)
    for start in range(0, len(x), CHUNK):
        xd = backend.asarray(x[start : start + CHUNK])
        yd = backend.asarray(y[start : start + CHUNK], labels=True)
        ev = backend.evaluate(xd, yd, hidden_zeros=sparsity)
        preds.append(ev.predictions)
        losses.append(ev.losses)
        if sparsity:
            zeros = [z + c for z, c in zip(zeros, ev.hidden_zeros)]
    pred = np.concatenate(preds) if preds else np.zeros(0, np.int64)
    loss = np.concatenate(losses) if losses else np.zeros(0)
    err = float((pred != y).mean() * 100) if len(y) else float("nan")
    fractions = None
    if sparsity:
        fractions = [z / (len(x) * s) if len(x) else float("nan") for z, s in zip(zeros, backend.model.hidden)]
    bad = int((~np.isfinite(loss)).sum())
    return Evaluation(len(y), err, float(loss.mean()) if len(loss) else float("nan"), pred, loss, fractions, bad)


def check_finite(ev: Evaluation, what: str) -> Evaluation:
    """An evaluation is an answer only if every output and the loss are finite numbers: otherwise one line."""
    if ev.nonfinite or not np.isfinite(ev.error) or not np.isfinite(ev.loss):
        count = f"for {ev.nonfinite} of {ev.n} samples" if ev.nonfinite else "in its loss"
        raise UsageProblem(f"{what}: the network's outputs are NaN or Inf {count}, so there is no error rate to "
                           "report (weights or inputs out of range)")
    return ev


def hidden_sparsity(backend, x: np.ndarray) -> list[float]:
    """Fraction of exact zeros among each hidden layer's activations (the paper's Figure 3: 39 % -> 61 %), from one
    forward pass per chunk."""
    zeros, total = [0] * len(backend.model.hidden), 0
    for start in range(0, len(x), CHUNK):
        ev = backend.evaluate(backend.asarray(x[start : start + CHUNK]), hidden_zeros=True)
        zeros = [z + c for z, c in zip(zeros, ev.hidden_zeros)]
        total += len(x[start : start + CHUNK])
    return [z / (total * s) if total else float("nan") for z, s in zip(zeros, backend.model.hidden)]


def mean_last_epochs(metrics: list[dict], n: int, key: str = "eval_error") -> float:
    """The paper's statistic: the mean of `key` over the last n epochs (fewer if the run is shorter)."""
    values = [m[key] for m in metrics[-n:]]
    return float(np.mean(values)) if values else float("nan")
