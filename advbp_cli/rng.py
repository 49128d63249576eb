"""The one source of randomness. Initial weights, batch order and dropout masks come from numpy generators keyed
by (seed, stream, epoch[, step]), never from a backend, so numpy and torch runs see the same numbers. Keying by
epoch (instead of carrying one generator along) makes resuming trivial: epoch k's order depends on nothing else."""

from __future__ import annotations

import numpy as np

STREAM_INIT = 0
STREAM_SHUFFLE = 1
STREAM_DROPOUT = 2
STREAM_ATTACK = 3


def layer_sizes(input_size: int, hidden: list[int], num_classes: int) -> list[int]:
    return [input_size, *hidden, num_classes]


def init_params(sizes: list[int], init_std: float, seed: int) -> dict[str, np.ndarray]:
    """Weights N(0, init_std^2) in float64, biases 0 (the paper's init). Weight i has shape (fan_in, fan_out)."""
    shapes: dict[str, tuple[int, ...]] = {}
    for i, (fan_in, fan_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        shapes[f"layers.{i}.weight"] = (fan_in, fan_out)
        shapes[f"layers.{i}.bias"] = (fan_out,)
    return init_from_shapes(shapes, init_std, seed)


def init_from_shapes(shapes: dict[str, tuple[int, ...]], init_std: float, seed: int) -> dict[str, np.ndarray]:
    """Every `*.weight` N(0, init_std^2) in float64, drawn in the order of `shapes` (conv layers first, then the
    fully connected ones: Architecture.param_shapes), every `*.bias` 0. For an MLP this is init_params' order
    (layers.0.weight, layers.0.bias, layers.1.weight, ...), so both give the same weights for the same seed."""
    rng = np.random.default_rng([seed, STREAM_INIT])
    return {name: rng.standard_normal(shape) * init_std if name.endswith(".weight") else np.zeros(shape)
            for name, shape in shapes.items()}


def epoch_permutation(seed: int, epoch: int, n: int) -> np.ndarray:
    """The order of the n training samples in 0-based `epoch` (the paper reshuffles every epoch)."""
    return np.random.default_rng([seed, STREAM_SHUFFLE, epoch]).permutation(n)



class DropoutMasks:
    """Dropout keep-masks for the steps of one block: step k of the block is step first_step + k of the epoch, and
    its masks come from default_rng([seed, STREAM_DROPOUT, epoch, first_step + k]), drawn site by site in the
    order the backend lists them (backends.dropout_sites). A unit is kept when u >= rate, u ~ U[0, 1) in float32.
    Keyed by step, so a resumed epoch, a block boundary or another backend changes nothing."""

    def __init__(self, seed: int, epoch: int, first_step: int = 0):
        self.seed, self.epoch, self.first_step = seed, epoch, first_step

    def masks(self, k: int, sites) -> list:
        rng = np.random.default_rng([self.seed, STREAM_DROPOUT, self.epoch, self.first_step + k])
        return [None if rate <= 0 else rng.random(shape, dtype=np.float32) >= np.float32(rate)
                for shape, rate in sites]


class RandomStarts:
    """PGD's uniform random starts in the eps-ball, for restart r (0-based) of an attack keyed by `seed`: the rows
    of the attacked split, in order, take u ~ U[0, 1)^d from default_rng([seed, STREAM_ATTACK, r]) (float64), and
    the start is x + eps (2u - 1). The generator is consumed row after row, so the rows [a, b) get the same numbers
    whatever the batches they are drawn in (batch-size independence), the first n rows the same for any --limit,
    and every eps of one attack the same u (a set is rebuilt from its own manifest: seed, restarts, eps)."""

    def __init__(self, seed: int, restart: int):
        self._rng = np.random.default_rng([seed, STREAM_ATTACK, restart])

    def next_rows(self, n: int, d: int, eps: float) -> np.ndarray:
        """The offsets eps (2u - 1) of the next n rows (float64, in [-eps, eps))."""
        u = self._rng.random((n, d))
        u *= 2.0
        u -= 1.0
        u *= eps
        return u
