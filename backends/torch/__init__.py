"""The torch backend: the same hand-written arithmetic as the numpy reference, on CPU or CUDA."""

from __future__ import annotations

import numpy as np
import torch

from .. import Backend, architecture
from . import step as _step
from .layers import dropout_mask
from .losses import loss_and_grad

EVAL_CHUNK_CONV = {"cpu": 500, "cuda": 5000}  # conv activations grow with the batch: evaluate in chunks


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
        self.arch = architecture(model)
        self.params: _step.Params = []
        self.velocity: list = []

    def _tensor(self, a):
        return torch.tensor(np.asarray(a), dtype=self._dtype, device=self._device)

    def set_params(self, params):
        self.params = [(self._tensor(params[wn]), self._tensor(params[bn])) for wn, bn in self.arch.layer_names()]
        self.velocity = [None] * len(self.params)

    def get_params(self):
        out = {}
        for (wn, bn), (w, b) in zip(self.arch.layer_names(), self.params):
            out[wn] = w.detach().cpu().numpy().copy()
            out[bn] = b.detach().cpu().numpy().copy()
        return out

    def get_optimizer_state(self):
        out = {}
        for (wn, bn), v in zip(self.arch.layer_names(), self.velocity):
            if v is not None:
                out[f"momentum.{wn}"] = v[0].detach().cpu().numpy().copy()
                out[f"momentum.{bn}"] = v[1].detach().cpu().numpy().copy()
        return out

    def set_optimizer_state(self, state):
        self.velocity = [
            (self._tensor(state[f"momentum.{wn}"]), self._tensor(state[f"momentum.{bn}"]))
            if f"momentum.{wn}" in state else None
            for wn, bn in self.arch.layer_names()
        ]

    def asarray(self, x, *, labels=False):
        return torch.as_tensor(np.asarray(x), dtype=torch.int64 if labels else self._dtype, device=self._device)

    def _mask_array(self, keep, rate):
        return dropout_mask(torch.as_tensor(keep).to(self._device, non_blocking=True), rate, self._dtype)

    @torch.no_grad()
    def train_steps(self, x, y, batches, step, masks=None, errors=None):
        if len(self.velocity) != len(self.params):
            self.velocity = [None] * len(self.params)
        idx_all = torch.as_tensor(np.asarray(batches), dtype=torch.int64, device=self._device)
        losses, wrongs = [], []
        for k, idx in enumerate(idx_all):
            m = self._masks(masks, k, step, len(idx))
            loss, wrong = _step.train_step(self.params, x.index_select(0, idx), y.index_select(0, idx), self.model,
                                           step, m, self.velocity)
            losses.append(loss)
            wrongs.append(wrong)
        if errors is not None:
            errors[: len(wrongs)] = torch.stack(wrongs).cpu().numpy()
        return torch.stack(losses).double().cpu().numpy()

    def _chunks(self, n):
        size = EVAL_CHUNK_CONV.get(self._device.type, 500)
        if not self.arch.n_conv or n <= size:
            return [slice(None)]
        return [slice(s, s + size) for s in range(0, n, size)]

    def _forward(self, x):
        return _step.forward(self.params, x, self.model.activation, arch=self.arch)

    def _logits(self, x):
        parts = [self._forward(x[c])[1] for c in self._chunks(len(x))]
        return torch.cat(parts) if len(parts) != 1 else parts[0]

    @torch.no_grad()
    def logits(self, x):
        return self._logits(x).cpu().numpy()

    @torch.no_grad()
    def loss_per_sample(self, x, y):
        return loss_and_grad(self.model.output, self._logits(x), y)[0].cpu().numpy()

    @torch.no_grad()
    def input_gradient(self, x, y, masks=None, k=0, step=None):
        if masks is not None:  # dropout active (an attack in train mode): masks of step k, no chunking
            e = _step.input_gradient(self.params, x, y, self.model, self._masks(masks, k, step, len(x)))
            return e.cpu().numpy()
        if not self.arch.n_conv:
            return _step.input_gradient(self.params, x, y, self.model).cpu().numpy()
        n = len(x)
        return torch.cat([_step.input_gradient(self.params, x[c], y[c], self.model) * (len(x[c]) / n)
                          for c in self._chunks(n)]).cpu().numpy()

    @torch.no_grad()
    def hidden_activations(self, x):
        parts = [self._forward(x[c])[0].acts[self.arch.n_conv:] for c in self._chunks(len(x))]
        return [torch.cat(layer).cpu().numpy() for layer in zip(*parts)]


BACKEND = TorchBackend
