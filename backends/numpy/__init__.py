"""The numpy reference backend: hand-written forward and backward, float32 by default, float64 on request."""

from __future__ import annotations

import numpy as np

from .. import Backend, architecture
from . import step as _step
from .layers import dropout_mask
from .losses import loss_and_grad

EVAL_CHUNK_CONV = 250  # im2col of a conv net grows with the batch: evaluate conv nets in chunks of this many


class NumpyBackend(Backend):
    name = "numpy"

    def __init__(self, model, dtype: str = "float32", device: str = "cpu"):
        if device not in ("cpu", "auto"):
            raise ValueError("the numpy backend runs on the CPU only")
        super().__init__(model, dtype, "cpu")
        self._dtype = np.dtype(dtype)
        self.arch = architecture(model)
        self.params: _step.Params = []
        self.velocity: list = []

    def set_params(self, params):
        self.params = [
            (np.array(params[wn], dtype=self._dtype, order="C"), np.array(params[bn], dtype=self._dtype))
            for wn, bn in self.arch.layer_names()
        ]
        self.velocity = [None] * len(self.params)

    def get_params(self):
        out = {}
        for (wn, bn), (w, b) in zip(self.arch.layer_names(), self.params):
            out[wn] = w.copy()
            out[bn] = b.copy()
        return out

    def get_optimizer_state(self):
        out = {}
        for (wn, bn), v in zip(self.arch.layer_names(), self.velocity):
            if v is not None:
                out[f"momentum.{wn}"] = v[0].copy()
                out[f"momentum.{bn}"] = v[1].copy()
        return out

    def set_optimizer_state(self, state):
        self.velocity = [
            (np.array(state[f"momentum.{wn}"], dtype=self._dtype), np.array(state[f"momentum.{bn}"], dtype=self._dtype))
            if f"momentum.{wn}" in state else None
            for wn, bn in self.arch.layer_names()
        ]

    def asarray(self, x, *, labels=False):
        return np.ascontiguousarray(x, dtype=np.int64 if labels else self._dtype)

    def _mask_array(self, keep, rate):
        return dropout_mask(keep, rate, self._dtype)

    def train_steps(self, x, y, batches, step, masks=None, errors=None):
        if len(self.velocity) != len(self.params):
            self.velocity = [None] * len(self.params)
        losses = np.empty(len(batches))
        for k, idx in enumerate(batches):
            m = self._masks(masks, k, step, len(idx))
            losses[k], wrong = _step.train_step(self.params, x[idx], y[idx], self.model, step, m, self.velocity)
            if errors is not None:
                errors[k] = wrong
        return losses

    def _chunks(self, n):
        if not self.arch.n_conv or n <= EVAL_CHUNK_CONV:
            return [slice(None)]
        return [slice(s, s + EVAL_CHUNK_CONV) for s in range(0, n, EVAL_CHUNK_CONV)]

    def _forward(self, x):
        return _step.forward(self.params, x, self.model.activation, arch=self.arch)

    def logits(self, x):
        parts = [self._forward(x[c])[1] for c in self._chunks(len(x))]
        return np.concatenate(parts) if len(parts) != 1 else parts[0]

    def loss_per_sample(self, x, y):
        return loss_and_grad(self.model.output, self.logits(x), y)[0]

    def input_gradient(self, x, y, masks=None, k=0, step=None):
        if masks is not None:  # dropout active (an attack in train mode): masks of step k, no chunking
            e = _step.input_gradient(self.params, x, y, self.model, self._masks(masks, k, step, len(x)))
            return e
        if not self.arch.n_conv:
            return _step.input_gradient(self.params, x, y, self.model)
        # per chunk, dJ/dx of the chunk mean, rescaled to the mean over the whole batch
        n = len(x)
        return np.concatenate([_step.input_gradient(self.params, x[c], y[c], self.model)
                               * np.asarray(len(x[c]) / n, self._dtype) for c in self._chunks(n)])

    def hidden_activations(self, x):
        parts = [self._forward(x[c])[0].acts[self.arch.n_conv:] for c in self._chunks(len(x))]
        return [np.concatenate(layer) for layer in zip(*parts)]


BACKEND = NumpyBackend
