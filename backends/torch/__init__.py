"""The torch backend: the same hand-written arithmetic as the numpy reference, on CPU or CUDA."""

from __future__ import annotations

import numpy as np
import torch

from .. import Backend
from . import step as _step
from .losses import loss_and_grad


def resolve_device(device: str) -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda was asked for, but torch sees no CUDA device (accepted: auto, cpu, cuda)")
    return device


class TorchBackend(Backend):
    name = "torch"

    def __init__(self, model, dtype: str = "float32", device: str = "auto", tf32: bool = False):
        super().__init__(model, dtype, resolve_device(device))
        self._dtype = getattr(torch, dtype)
        self._device = torch.device(self.device)
        # TF32 changes results, so it is off unless asked for (and then recorded in the run's config).
        torch.backends.cuda.matmul.allow_tf32 = tf32
        torch.backends.cudnn.allow_tf32 = tf32
        self.params: _step.Params = []

    def set_params(self, params):
        n = len(params) // 2
        self.params = [
            (
                torch.tensor(np.asarray(params[f"layers.{i}.weight"]), dtype=self._dtype, device=self._device),
                torch.tensor(np.asarray(params[f"layers.{i}.bias"]), dtype=self._dtype, device=self._device),
            )
            for i in range(n)
        ]

    def get_params(self):
        out = {}
        for i, (w, b) in enumerate(self.params):
            out[f"layers.{i}.weight"] = w.detach().cpu().numpy().copy()
            out[f"layers.{i}.bias"] = b.detach().cpu().numpy().copy()
        return out

    def asarray(self, x, *, labels=False):
        return torch.as_tensor(np.asarray(x), dtype=torch.int64 if labels else self._dtype, device=self._device)

    @torch.no_grad()
    def train_steps(self, x, y, batches, step):
        idx_all = torch.as_tensor(np.asarray(batches), dtype=torch.int64, device=self._device)
        losses = []
        for idx in idx_all:
            losses.append(_step.train_step(self.params, x.index_select(0, idx), y.index_select(0, idx), self.model, step))
        return torch.stack(losses).double().cpu().numpy()

    @torch.no_grad()
    def logits(self, x):
        return _step.forward(self.params, x, self.model.activation)[1].cpu().numpy()

    @torch.no_grad()
    def loss_per_sample(self, x, y):
        logits = _step.forward(self.params, x, self.model.activation)[1]
        return loss_and_grad(self.model.output, logits, y)[0].cpu().numpy()

    @torch.no_grad()
    def input_gradient(self, x, y):
        return _step.input_gradient(self.params, x, y, self.model).cpu().numpy()

    @torch.no_grad()
    def hidden_activations(self, x):
        layer_inputs, _ = _step.forward(self.params, x, self.model.activation)
        return [h.cpu().numpy() for h in layer_inputs[1:]]


BACKEND = TorchBackend
