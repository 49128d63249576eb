"""The one source of randomness. Initial weights and batch order come from numpy generators keyed by
(seed, stream, epoch), never from a backend, so numpy and torch runs see the same numbers. Keying by epoch
(instead of carrying one generator along) makes resuming trivial: epoch k's order depends on nothing else."""

from __future__ import annotations

import numpy as np

STREAM_INIT = 0
STREAM_SHUFFLE = 1


def layer_sizes(input_size: int, hidden: list[int], num_classes: int) -> list[int]:
    return [input_size, *hidden, num_classes]


def init_params(sizes: list[int], init_std: float, seed: int) -> dict[str, np.ndarray]:
    """Weights N(0, init_std^2) in float64, biases 0 (the paper's init). Weight i has shape (fan_in, fan_out)."""
    rng = np.random.default_rng([seed, STREAM_INIT])
    params: dict[str, np.ndarray] = {}
    for i, (fan_in, fan_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        params[f"layers.{i}.weight"] = rng.standard_normal((fan_in, fan_out)) * init_std
        params[f"layers.{i}.bias"] = np.zeros(fan_out)
    return params


def epoch_permutation(seed: int, epoch: int, n: int) -> np.ndarray:
    """The order of the n training samples in 0-based `epoch` (the paper reshuffles every epoch)."""
    return np.random.default_rng([seed, STREAM_SHUFFLE, epoch]).permutation(n)

