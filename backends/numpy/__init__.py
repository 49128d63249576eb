"""The numpy reference backend: hand-written forward and backward, float32 by default, float64 on request."""

from __future__ import annotations

import numpy as np

from .. import Backend
from . import step as _step
from .losses import loss_and_grad


class NumpyBackend(Backend):
    name = "numpy"

    def __init__(self, model, dtype: str = "float32", device: str = "cpu"):
        if device not in ("cpu", "auto"):
            raise ValueError("the numpy backend runs on the CPU only")
        super().__init__(model, dtype, "cpu")
        self._dtype = np.dtype(dtype)
        self.params: _step.Params = []

    def set_params(self, params):
        n = len(params) // 2
        self.params = [
            (
                np.array(params[f"layers.{i}.weight"], dtype=self._dtype, order="C"),
                np.array(params[f"layers.{i}.bias"], dtype=self._dtype),
            )
            for i in range(n)
        ]

    def get_params(self):
        out = {}
        for i, (w, b) in enumerate(self.params):
            out[f"layers.{i}.weight"] = w.copy()
            out[f"layers.{i}.bias"] = b.copy()
        return out

    def asarray(self, x, *, labels=False):
        return np.ascontiguousarray(x, dtype=np.int64 if labels else self._dtype)

    def train_steps(self, x, y, batches, step):
        losses = np.empty(len(batches))
        for k, idx in enumerate(batches):
            losses[k] = _step.train_step(self.params, x[idx], y[idx], self.model, step)
        return losses

    def logits(self, x):
        return _step.forward(self.params, x, self.model.activation)[1]

    def loss_per_sample(self, x, y):
        return loss_and_grad(self.model.output, self.logits(x), y)[0]

    def input_gradient(self, x, y):
        return _step.input_gradient(self.params, x, y, self.model)

    def hidden_activations(self, x):
        layer_inputs, _ = _step.forward(self.params, x, self.model.activation)
        return layer_inputs[1:]


BACKEND = NumpyBackend
