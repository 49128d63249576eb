"""One SGD step of back-propagation or adversarial back-propagation (Nøkland 2015, Algorithm 1).

This module is the written-out specification; backends/torch/step.py mirrors it function by function.
`params` is a list of (weight, bias) pairs, updated in place.
"""

from __future__ import annotations

import numpy as np

from .layers import (
    activation_backward,
    activation_forward,
    linear_backward_input,
    linear_backward_params,
    linear_forward,
)
from .losses import loss_and_grad

Params = list[tuple[np.ndarray, np.ndarray]]


def forward(params: Params, x: np.ndarray, activation: str) -> tuple[list[np.ndarray], np.ndarray]:
    """Algorithm 1, steps 1 and 4. Returns the input of every layer (kept for backward) and the logits."""
    layer_inputs = []
    h = x
    last = len(params) - 1
    for i, (w, b) in enumerate(params):
        layer_inputs.append(h)
        a = linear_forward(h, w, b)
        h = a if i == last else activation_forward(activation, a)
    return layer_inputs, h


def backward(
    params: Params,
    layer_inputs: list[np.ndarray],
    grad_logits: np.ndarray,
    activation: str,
    *,
    want_param_grads: bool,
    want_input_grad: bool,
) -> tuple[list[tuple[np.ndarray, np.ndarray]] | None, np.ndarray | None]:
    """Back-propagates grad_logits. The input-gradient pass of Algorithm 1 (step 2) asks for no weight
    gradients, which saves the outer products (about a third of a backward pass)."""
    grads: list = [None] * len(params)
    g = grad_logits
    for i in range(len(params) - 1, -1, -1):
        if want_param_grads:
            grads[i] = linear_backward_params(layer_inputs[i], g)
        if i == 0 and not want_input_grad:
            break
        g = linear_backward_input(g, params[i][0])
        if i > 0:  # layer_inputs[i] is the activation output of hidden layer i-1
            g = activation_backward(activation, layer_inputs[i], g)
    return (grads if want_param_grads else None), (g if want_input_grad else None)


def fgsm_perturb(x: np.ndarray, e: np.ndarray, eps: float, clip: tuple[float, float] | None) -> np.ndarray:
    """Algorithm 1, step 3: z = x + eps * sign(e). sign(0) = 0, so a zero gradient leaves x unchanged.
    No clipping unless asked (the paper does not clip)."""
    z = x + eps * np.sign(e).astype(x.dtype)
    if clip is not None:
        z = np.clip(z, clip[0], clip[1])
    return z


def sgd_update(params: Params, grads, lr: float) -> None:
    """Algorithm 1, step 5: w <- w - lr * (mean gradient over the batch)."""
    for (w, b), (gw, gb) in zip(params, grads):
        w -= lr * gw
        b -= lr * gb


def input_gradient(params: Params, x: np.ndarray, y: np.ndarray, model) -> np.ndarray:
    """e = dJ/dx of the batch-mean objective (Algorithm 1, steps 1-2), with no weight gradients."""
    layer_inputs, logits = forward(params, x, model.activation)
    _, g = loss_and_grad(model.output, logits, y)
    _, e = backward(params, layer_inputs, g, model.activation, want_param_grads=False, want_input_grad=True)
    return e


def learn_from(params: Params, x, y, model, lr: float, scale: float = 1.0, extra_grads=None):
    """Forward and backward on x, then the SGD update (back-propagation; Algorithm 1's steps 4-5 with x = z).
    `scale` weighs this pass's gradient; `extra_grads` (already weighted) are added before the update."""
    layer_inputs, logits = forward(params, x, model.activation)
    losses, g = loss_and_grad(model.output, logits, y)
    if scale != 1.0:
        g = g * scale
    grads, _ = backward(params, layer_inputs, g, model.activation, want_param_grads=True, want_input_grad=False)
    if extra_grads is not None:
        grads = [(gw + hw, gb + hb) for (gw, gb), (hw, hb) in zip(grads, extra_grads)]
    sgd_update(params, grads, lr)
    return losses.mean()


def train_step(params: Params, x, y, model, step) -> float:
    """One mini-batch. Returns the objective that was minimised: J(x) for back-propagation,
    a J(x) + (1 - a) J(z) for adversarial back-propagation (a = step.adv_weight, 0 in the paper)."""
    if step.method == "backprop":
        return float(learn_from(params, x, y, model, step.lr))
    a = step.adv_weight
    if a == 0:  # the paper: learn from z alone
        e = input_gradient(params, x, y, model)  # steps 1-2, no weight gradients
        z = fgsm_perturb(x, e, step.eps, step.clip)  # step 3
        return float(learn_from(params, z, y, model, step.lr))  # steps 4-5
    # a J(x) + (1 - a) J(z): the clean pass feeds the update too, so it computes weight gradients as well
    layer_inputs, logits = forward(params, x, model.activation)
    losses_x, g_x = loss_and_grad(model.output, logits, y)
    grads_x, e = backward(params, layer_inputs, g_x * a, model.activation, want_param_grads=True, want_input_grad=True)
    z = fgsm_perturb(x, e, step.eps, step.clip)
    loss_z = learn_from(params, z, y, model, step.lr, scale=1 - a, extra_grads=grads_x)
    return float(a * losses_x.mean() + (1 - a) * loss_z)
