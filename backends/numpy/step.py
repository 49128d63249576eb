"""One SGD step of back-propagation or adversarial back-propagation (Nøkland 2015, Algorithm 1).

This module is the written-out specification; backends/torch/step.py mirrors it function by function.
`params` is a list of (weight, bias) pairs, conv layers first (see backends/__init__.py: Architecture),
updated in place. `masks` is one scaled dropout mask per site of `dropout_sites` (None: no dropout there), or None
for no dropout at all (evaluation).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .. import Architecture, architecture
from .layers import (
    activation_backward,
    activation_forward,
    conv2d_backward_input,
    conv2d_backward_params,
    conv2d_forward,
    linear_backward_input,
    linear_backward_params,
    linear_forward,
    max_norm_,
    maxpool_backward,
    maxpool_forward,
)
from .losses import loss_and_grad

Params = list[tuple[np.ndarray, np.ndarray]]


@dataclass
class Tape:
    """What forward keeps for backward. It is a list of the input of every layer (after dropout), as the first
    version of this module returned, plus what the conv blocks and dropout need."""

    inputs: list = field(default_factory=list)  # input of every weight layer: (n, C, H, W) for conv, (n, d) for fc
    acts: list = field(default_factory=list)  # activation output of every hidden layer (before pooling/dropout)
    pool_args: list = field(default_factory=list)  # argmax of every conv block's pooling windows
    masks: list | None = None  # the scaled dropout masks, one per site (input, conv blocks, hidden fc layers)
    arch: Architecture | None = None

    def __getitem__(self, i):
        return self.inputs[i]

    def __len__(self):
        return len(self.inputs)


def _mask(masks, site):
    return None if masks is None else masks[site]


def forward(params: Params, x: np.ndarray, activation: str, *, arch: Architecture | None = None,
            masks: list | None = None) -> tuple[Tape, np.ndarray]:
    """Algorithm 1, steps 1 and 4. Returns the tape (kept for backward) and the logits. `arch` is needed for a
    conv net (an MLP is the default)."""
    nc = arch.n_conv if arch is not None else 0
    tape = Tape(masks=masks, arch=arch)
    h = x
    if _mask(masks, 0) is not None:
        h = h * masks[0]
    if nc:
        h = h.reshape(x.shape[0], *arch.input_shape)
    last = len(params) - 1
    for i, (w, b) in enumerate(params):
        tape.inputs.append(h)
        if i < nc:  # conv block: convolution -> activation -> max pooling -> dropout
            r = activation_forward(activation, conv2d_forward(h, w, b))
            tape.acts.append(r)
            h, arg = maxpool_forward(r, arch.pool_size, arch.pool_stride, arch.pool_mode)
            tape.pool_args.append(arg)
            if i == nc - 1:
                h = h.reshape(x.shape[0], -1)
        else:  # fully connected: linear -> activation -> dropout
            a = linear_forward(h, w, b)
            if i == last:
                return tape, a
            h = activation_forward(activation, a)
            tape.acts.append(h)
        m = _mask(masks, i + 1)
        if m is not None:
            h = h * m.reshape(h.shape)
    raise AssertionError("unreachable")


def backward(
    params: Params,
    layer_inputs: Tape,
    grad_logits: np.ndarray,
    activation: str,
    *,
    want_param_grads: bool,
    want_input_grad: bool,
) -> tuple[list[tuple[np.ndarray, np.ndarray]] | None, np.ndarray | None]:
    """Back-propagates grad_logits. The input-gradient pass of Algorithm 1 (step 2) asks for no weight
    gradients, which saves the outer products (about a third of a backward pass)."""
    tape = layer_inputs
    arch = tape.arch
    nc = arch.n_conv if arch is not None else 0
    grads: list = [None] * len(params)
    g = grad_logits
    for i in range(len(params) - 1, -1, -1):
        x_i = tape.inputs[i]
        if i < nc:
            if want_param_grads:
                grads[i] = conv2d_backward_params(x_i, g, arch.conv_kernel)
            if i == 0 and not want_input_grad:
                break
            g = conv2d_backward_input(g, params[i][0])
        else:
            if want_param_grads:
                grads[i] = linear_backward_params(x_i, g)
            if i == 0 and not want_input_grad:
                break
            g = linear_backward_input(g, params[i][0])
        # g is now the gradient with respect to x_i, the output of the previous block (after its dropout)
        m = _mask(tape.masks, i)
        if i == 0:
            if m is not None:
                g = g * m.reshape(g.shape)
            g = g.reshape(g.shape[0], -1)
            break
        j = i - 1  # the previous hidden layer
        if j < nc:
            pooled_shape = (g.shape[0], *arch.conv_outputs()[j])
            g = g.reshape(pooled_shape)
            if m is not None:
                g = g * m
            g = maxpool_backward(g, tape.pool_args[j], tape.acts[j].shape, arch.pool_size, arch.pool_stride,
                                 arch.pool_mode)
        elif m is not None:
            g = g * m
        g = activation_backward(activation, tape.acts[j], g)
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


def optimizer_update(params: Params, grads, step, velocity: list | None) -> None:
    """Algorithm 1, step 5 with the CIFAR-10 settings, in this order:
    1. weight decay: g <- g + weight_decay * w for weights (biases are not decayed);
    2. momentum, in torch.optim.SGD's form: v <- g at a layer's first step, then v <- m v + (1 - dampening) g,
       and the step uses v (dampening 0 is PyTorch's default; Torch7's optim.sgd, which the author's code used,
       defaults to dampening = momentum);
    3. w <- w - lr * step;
    4. max-norm: every unit's incoming weight vector is scaled back to norm max_norm if it is longer.
    With none of them set this is exactly `sgd_update`. `velocity` holds one (v_w, v_b) per layer, None before
    the first step."""
    wd = getattr(step, "weight_decay", 0.0) or 0.0
    mom = getattr(step, "momentum", 0.0) or 0.0
    damp = getattr(step, "dampening", 0.0) or 0.0
    c = getattr(step, "max_norm", None)
    lr = step.lr
    for i, ((w, b), (gw, gb)) in enumerate(zip(params, grads)):
        if wd:
            gw = gw + wd * w
        if mom:
            if velocity[i] is None:
                velocity[i] = (gw.copy(), gb.copy())
            else:
                vw, vb = velocity[i]
                vw *= mom
                vw += (1 - damp) * gw
                vb *= mom
                vb += (1 - damp) * gb
            gw, gb = velocity[i]
        w -= lr * gw
        b -= lr * gb
        if c is not None:
            max_norm_(w, c)


def _grad_input_mean(params, x, y, model, masks, arch):
    tape, logits = forward(params, x, model.activation, arch=arch, masks=masks)
    _, g = loss_and_grad(model.output, logits, y)
    _, e = backward(params, tape, g, model.activation, want_param_grads=False, want_input_grad=True)
    return e


def input_gradient(params: Params, x: np.ndarray, y: np.ndarray, model, masks: list | None = None) -> np.ndarray:
    """e = dJ/dx of the batch-mean objective (Algorithm 1, steps 1-2), with no weight gradients."""
    return _grad_input_mean(params, x, y, model, masks, architecture(model))


def learn_from(params: Params, x, y, model, step, masks=None, velocity=None, scale: float = 1.0, extra_grads=None):
    """Forward and backward on x, then the update (back-propagation; Algorithm 1's steps 4-5 with x = z).
    `scale` weighs this pass's gradient; `extra_grads` (already weighted) are added before the update.
    Returns the mean loss and the number of misclassified samples of this pass."""
    tape, logits = forward(params, x, model.activation, arch=architecture(model), masks=masks)
    losses, g = loss_and_grad(model.output, logits, y)
    if scale != 1.0:
        g = g * scale
    grads, _ = backward(params, tape, g, model.activation, want_param_grads=True, want_input_grad=False)
    if extra_grads is not None:
        grads = [(gw + hw, gb + hb) for (gw, gb), (hw, hb) in zip(grads, extra_grads)]
    optimizer_update(params, grads, step, velocity)
    return losses.mean(), int((logits.argmax(axis=1) != y).sum())


def train_step(params: Params, x, y, model, step, masks=None, velocity=None) -> tuple[float, int]:
    """One mini-batch. Returns the objective that was minimised (J(x) for back-propagation, a J(x) + (1 - a) J(z)
    for adversarial back-propagation, a = step.adv_weight, 0 in the paper) and the number of misclassified samples
    in the pass the weights learned from (z when a = 0).
    Dropout: the training pass uses `masks`; the perturbation (steps 1-2) uses the same masks when
    step.adv_dropout is "same" (the default, dfa-torch's training mode) and none when it is "off"."""
    if step.method == "backprop":
        loss, wrong = learn_from(params, x, y, model, step, masks, velocity)
        return float(loss), wrong
    adv_masks = masks if getattr(step, "adv_dropout", "same") == "same" else None
    a = step.adv_weight
    if a == 0:  # the paper: learn from z alone
        e = input_gradient(params, x, y, model, adv_masks)  # steps 1-2, no weight gradients
        z = fgsm_perturb(x, e, step.eps, step.clip)  # step 3
        loss, wrong = learn_from(params, z, y, model, step, masks, velocity)  # steps 4-5
        return float(loss), wrong
    # a J(x) + (1 - a) J(z): the clean pass feeds the update too, so it computes weight gradients as well
    arch = architecture(model)
    tape, logits = forward(params, x, model.activation, arch=arch, masks=masks)
    losses_x, g_x = loss_and_grad(model.output, logits, y)
    same = adv_masks is masks
    grads_x, e = backward(params, tape, g_x * a, model.activation, want_param_grads=True, want_input_grad=same)
    if not same:  # the perturbation without dropout: its own pass
        e = _grad_input_mean(params, x, y, model, None, arch)
    z = fgsm_perturb(x, e, step.eps, step.clip)
    loss_z, wrong = learn_from(params, z, y, model, step, masks, velocity, scale=1 - a, extra_grads=grads_x)
    return float(a * losses_x.mean() + (1 - a) * loss_z), wrong
