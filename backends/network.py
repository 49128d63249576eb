"""The Backend: one network's parameters on one backend's primitives, and the verbs the trainer, the evaluator and
the attacker call. Written once: everything backend-specific is in the primitives module (`ops`).

Arrays cross this interface as numpy arrays; `asarray` moves data into the backend once (e.g. onto the GPU) and
the returned handle is passed back to the other verbs.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Callable, Protocol, Sequence

import numpy as np

from . import step as alg
from .layout import dropout_sites, uses_dropout


class MaskSource(Protocol):
    """Dropout keep-masks for the steps of one block (advbp_cli.rng.DropoutMasks implements it)."""

    def masks(self, k: int, sites: Sequence[tuple[tuple[int, ...], float]]) -> list:
        """Step k of the block: for each (shape, rate) a bool array of that shape (True = keep), None for rate 0."""
        ...


@dataclass
class Evaluated:
    """What one forward pass over a set of samples gives (numpy arrays)."""

    predictions: np.ndarray  # int64 argmax of the logits
    losses: np.ndarray | None  # per-sample objective J_i (None when no labels were given)
    hidden_zeros: list[int] | None  # exact zeros per fully connected hidden layer, summed over the samples


def computing(verb):
    """Runs a verb inside its backend's compute context (ops.compute_context: torch's inference mode)."""

    @functools.wraps(verb)
    def run(self, *args, **kwargs):
        with self.ops.compute_context():
            return verb(self, *args, **kwargs)

    return run


def scaled_masks(ops, keep: list, sites, dtype: str, device: str) -> list:
    """Boolean keep-masks (one per dropout site, None where the rate is 0) as the masks of inverted dropout:
    1 / (1 - rate) where kept, 0 where dropped, in the backend's arrays."""
    return [None if kp is None else ops.asarray(kp, dtype, device) * (1.0 / (1.0 - rate))
            for kp, (_, rate) in zip(keep, sites)]


class Backend:
    """The parameters of one network plus the verbs; `ops` is the backend's primitives module."""

    def __init__(self, name: str, ops, model, dtype: str = "float32", device: str = "auto", tf32: bool = False):
        self.name = name
        self.ops = ops
        self.model = model
        self.dtype = dtype
        self.device = ops.device(device, tf32)
        self.net = alg.make_net(ops, model)
        self.arch = self.net.arch
        self.params: list = []  # (weight, bias) per layer, conv layers first
        self.velocity: list = []  # momentum buffers: (v_w, v_b) per layer, None before its first momentum step

    # ------------------------------------------------------------------------------ parameters and state
    def _array(self, a):
        return self.ops.copy(self.ops.asarray(a, self.dtype, self.device))

    def set_params(self, params: dict[str, np.ndarray]) -> None:
        self.params = [(self._array(params[wn]), self._array(params[bn])) for wn, bn in self.arch.layer_names()]
        self.velocity = [None] * len(self.params)

    def get_params(self) -> dict[str, np.ndarray]:
        out = {}
        for (wn, bn), (w, b) in zip(self.arch.layer_names(), self.params):
            out[wn], out[bn] = np.array(self.ops.to_numpy(w)), np.array(self.ops.to_numpy(b))
        return out

    def get_optimizer_state(self) -> dict[str, np.ndarray]:
        """The momentum buffers as named arrays (`momentum.` + parameter name); empty before the first step with
        momentum, or without momentum."""
        out = {}
        for (wn, bn), v in zip(self.arch.layer_names(), self.velocity):
            if v is not None:
                out[f"momentum.{wn}"], out[f"momentum.{bn}"] = (np.array(self.ops.to_numpy(a)) for a in v)
        return out

    def set_optimizer_state(self, state: dict[str, np.ndarray]) -> None:
        """Restores what get_optimizer_state returned (an empty dict: no buffers yet)."""
        self.velocity = [(self._array(state[f"momentum.{wn}"]), self._array(state[f"momentum.{bn}"]))
                         if f"momentum.{wn}" in state else None for wn, bn in self.arch.layer_names()]

    def asarray(self, x: np.ndarray, *, labels: bool = False):
        """Data (float inputs, or int64 labels) in the backend's own array type, on its device."""
        return self.ops.asarray(x, "int64" if labels else self.dtype, self.device)

    # ---------------------------------------------------------------------------------------- training
    def _mask_arrays(self, keep: list, sites) -> list:
        return scaled_masks(self.ops, keep, sites, self.dtype, self.device)

    @computing
    def train_steps(self, x, y, batches: np.ndarray, step, masks: MaskSource | None = None,
                    errors: np.ndarray | None = None) -> np.ndarray:
        """Run len(batches) SGD steps; batches[k] holds the sample indices of step k. Returns each step's loss.
        `masks` gives step k's dropout masks (required when `step` has dropout). If `errors` is given, errors[k]
        is set to the number of misclassified samples in the pass that step k learned from (z for adversarial
        back-propagation, with dropout): the training error as dfa-torch measures it."""
        ops, net, params = self.ops, self.net, self.params
        plan = alg.make_plan(step)
        batches = np.asarray(batches)
        dropout = uses_dropout(self.arch, step)
        sites = dropout_sites(self.arch, step, batches.shape[1]) if dropout else None
        if dropout and masks is None:
            raise ValueError("this step uses dropout: train_steps needs a mask source")
        if len(self.velocity) != len(params):
            self.velocity = [None] * len(params)
        count = errors is not None
        losses, wrongs = [], []
        # iterating the index array splits it into rows in one call (torch: unbind), not one indexing per step
        for k, idx in enumerate(ops.asarray(batches, "int64", self.device)):
            m = self._mask_arrays(masks.masks(k, sites), sites) if sites is not None else None
            loss, wrong = alg.train_step(net, plan, params, ops.take_rows(x, idx), ops.take_rows(y, idx), m,
                                         self.velocity, count)
            losses.append(loss)
            wrongs.append(wrong)
        if count:
            errors[: len(wrongs)] = ops.to_numpy(ops.stack(wrongs))
        return ops.to_numpy(ops.stack(losses)).astype(np.float64)

    # -------------------------------------------------------------------------------------- evaluation
    def _chunks(self, n: int) -> list[slice]:
        size = self.ops.eval_chunk(self.device)
        if not self.arch.n_conv or n <= size:
            return [slice(None)]
        return [slice(s, s + size) for s in range(0, n, size)]

    @computing
    def evaluate(self, x, y=None, hidden_zeros: bool = False) -> Evaluated:
        """One forward pass (evaluation mode: no dropout) gives the predictions, the per-sample losses (if labels y
        are given) and, if asked, the exact zeros of every fully connected hidden layer."""
        ops, net = self.ops, self.net
        preds, losses, zeros = [], [], None
        for c in self._chunks(len(x)):
            tape, logits = alg.forward(net, self.params, x[c])
            preds.append(ops.to_numpy(ops.argmax_rows(logits)))
            if y is not None:
                losses.append(ops.to_numpy(net.loss(ops, logits, y[c], want_grad=False)[0]))
            if hidden_zeros:
                counts = [int(ops.count_zeros(a)) for a in tape.acts[self.arch.n_conv:]]
                zeros = counts if zeros is None else [z + c for z, c in zip(zeros, counts)]
        return Evaluated(np.concatenate(preds).astype(np.int64),
                         np.concatenate(losses) if y is not None else None,
                         (zeros or [0] * len(self.arch.hidden)) if hidden_zeros else None)

    @computing
    def logits(self, x) -> np.ndarray:
        """Output-layer pre-activations for every row of x (evaluation mode)."""
        return np.concatenate([self.ops.to_numpy(alg.forward(self.net, self.params, x[c])[1])
                               for c in self._chunks(len(x))])

    @computing
    def sample_input_gradients(self, x, y, masks: MaskSource | None = None, k: int = 0, step=None) -> np.ndarray:
        """dJ_i/dx_i for every sample i: each sample's own input gradient (no 1/n, independent of the batch),
        computing no weight gradients (Algorithm 1, step 2). Without `masks` the network is in evaluation mode;
        with a mask source (advbp_cli.rng.DropoutMasks) dropout is active with the masks of its step k and the
        rates of `step`."""
        ops, net = self.ops, self.net
        if masks is not None:  # dropout active (an attack in train mode): masks of step k, no chunking
            sites = dropout_sites(self.arch, step, len(x))
            m = self._mask_arrays(masks.masks(k, sites), sites)
            return ops.to_numpy(alg.input_gradient(net, self.params, x, y, m))
        return np.concatenate([ops.to_numpy(alg.input_gradient(net, self.params, x[c], y[c]))
                               for c in self._chunks(len(x))])

    @computing
    def linf_attack(self, x, y, eps: float, step_size: float, steps: int, clip: tuple[float, float] | None = None,
                    start=None, masks: Callable[[int], MaskSource] | None = None, k: int = 0, step=None,
                    observe: Callable | None = None) -> tuple[np.ndarray, int]:
        """BIM / PGD under the L-inf ball (step.linf_attack): `steps` iterations from z = x, or from x + start
        (PGD's random start, drawn by the caller, projected first), each from every sample's own input gradient,
        so sample i's iterates depend on sample i alone. Without `masks` the network is in evaluation mode;
        masks(t) gives iteration t's mask source, whose step k is used with the rates of `step`. observe(t, z)
        sees every iterate (a numpy view, valid during the call; one call per evaluation chunk).
        Returns the last iterate and the number of NaN or Inf input-gradient components met on the way."""
        ops = self.ops
        out, nonfinite = [], 0
        for c in ([slice(None)] if masks is not None else self._chunks(len(x))):
            xc, yc = x[c], y[c]
            lo, hi = alg.linf_bounds(ops, xc, eps, clip)
            z = ops.copy(xc) if start is None else ops.clamp_(xc + start[c], lo, hi)
            masks_at = None
            if masks is not None:
                sites = dropout_sites(self.arch, step, len(xc))
                masks_at = lambda t: self._mask_arrays(masks(t).masks(k, sites), sites)  # noqa: E731
            seen = None if observe is None else (lambda t, zt: observe(t, ops.to_numpy(zt)))
            z, bad = alg.linf_attack(self.net, self.params, z, yc, lo, hi, step_size, steps, masks_at, seen)
            out.append(ops.to_numpy(z))
            nonfinite += 0 if bad is None else int(ops.to_numpy(bad))
        return np.concatenate(out), nonfinite

    @computing
    def hidden_activations(self, x) -> list[np.ndarray]:
        """The output of every fully connected hidden layer, for sparsity measurements and histograms."""
        parts = [alg.forward(self.net, self.params, x[c])[0].acts[self.arch.n_conv:] for c in self._chunks(len(x))]
        return [np.concatenate([self.ops.to_numpy(a) for a in layer]) for layer in zip(*parts)]
