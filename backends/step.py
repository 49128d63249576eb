"""One SGD step of back-propagation or adversarial back-propagation (Nøkland 2015, Algorithm 1), written once on a
backend's primitives (`net.ops`: backends/numpy.py, backends/torch.py, or any registered module like them).

  1. forward x .................................. forward
  2. back-propagate to the input (no weights) .. input_gradient = forward + backward(want_input_grad=True)
  3. z = x + eps * sign(e) ...................... fgsm_perturb (iterated under the L-inf ball, for attacks:
                                                 linf_bounds, linf_step, linf_attack)
  4. forward and backward on z .................. learn_from
  5. update the weights ......................... optimizer_update (weight decay, momentum, max-norm), or
                                                 sgd_update (plain SGD, fused), called by backward for each
                                                 layer as soon as its gradient is known
  all five, one mini-batch ...................... train_step

Every function here works only on its arguments (no hidden state): `net` (the primitives, layout, activation and
loss of one network, resolved once), `plan` (the step's hyper-parameters, resolved once), `params` (a list of
(weight, bias), conv layers first, updated in place), `velocity` (momentum buffers, one (v_w, v_b) or None per
layer, updated in place) and `masks` (one scaled dropout mask per site of layout.dropout_sites, None where a site
has no dropout; masks=None is evaluation).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from .layout import Architecture, architecture
from .losses import LOSSES

# activation name in the config -> (in-place activation, gradient in terms of the output) among the primitives
ACTIVATIONS = {"relu": ("relu_", "relu_grad"), "tanh": ("tanh_", "tanh_grad"), "logistic": ("sigmoid_", "sigmoid_grad")}


@dataclass(frozen=True)
class Net:
    """A network's arithmetic, resolved once from the model config: the backend's primitives, the layout, the
    activation and the loss (per-sample value and per-sample output gradient)."""

    ops: Any
    arch: Architecture
    act_: Callable
    act_grad: Callable
    loss: Callable  # (ops, logits, y, want_loss, want_grad) -> (J_i per sample, dJ_i/do_i): backends/losses.py
    pooled_shapes: tuple  # (C, H, W) after each conv block's pooling


def make_net(ops, model) -> Net:
    arch = architecture(model)
    act, act_grad = ACTIVATIONS[model.activation]
    return Net(ops, arch, getattr(ops, act), getattr(ops, act_grad), LOSSES[model.output], tuple(arch.conv_outputs()))


@dataclass(frozen=True)
class Plan:
    """The hyper-parameters of a step (a StepSpec such as advbp_cli.config.TrainConfig), read once per block."""

    adversarial: bool
    eps: float
    clip: tuple[float, float] | None
    adv_weight: float  # a in a J(x) + (1 - a) J(z); 0 is the paper
    adv_masks_same: bool  # the perturbation uses the training pass's dropout masks (adv_dropout = "same")
    lr: float
    weight_decay: float
    momentum: float
    dampening: float
    max_norm: float | None

    @property
    def plain_sgd(self) -> bool:
        """No weight decay, momentum or max-norm: w <- w - lr * (mean gradient), fused into one primitive."""
        return not (self.weight_decay or self.momentum or self.max_norm is not None)


def make_plan(step) -> Plan:
    return Plan(step.method == "adversarial", float(getattr(step, "eps", 0.0)), getattr(step, "clip", None),
                float(getattr(step, "adv_weight", 0.0)), getattr(step, "adv_dropout", "same") == "same",
                float(step.lr), float(getattr(step, "weight_decay", 0.0) or 0.0),
                float(getattr(step, "momentum", 0.0) or 0.0), float(getattr(step, "dampening", 0.0) or 0.0),
                getattr(step, "max_norm", None))


class Tape:
    """What forward keeps for backward: the input of every weight layer (after dropout; (n, C, H, W) for conv,
    (n, d) for fully connected), every hidden layer's activation output (before pooling and dropout), the argmax
    of every pooling window, and the masks."""

    __slots__ = ("inputs", "acts", "pool_args", "masks")

    def __init__(self, masks):
        self.inputs, self.acts, self.pool_args, self.masks = [], [], [], masks


def forward(net: Net, params, x, masks=None):
    """Algorithm 1, steps 1 and 4: returns the tape and the logits."""
    ops, arch = net.ops, net.arch
    nc = arch.n_conv
    tape = Tape(masks)
    h = x
    if masks is not None and masks[0] is not None:
        h = h * masks[0]
    if nc:
        h = h.reshape((x.shape[0], *arch.input_shape))
    last = len(params) - 1
    for i, (w, b) in enumerate(params):
        tape.inputs.append(h)
        if i < nc:  # conv block: convolution -> activation -> max pooling -> dropout
            r = net.act_(ops.conv2d(h, w, b))
            tape.acts.append(r)
            h, arg = ops.max_pool(r, arch.pool_size, arch.pool_stride, arch.pool_mode)
            tape.pool_args.append(arg)
            if i == nc - 1:
                h = h.reshape((x.shape[0], -1))
        else:  # fully connected: linear -> activation -> dropout
            a = ops.linear(h, w, b)
            if i == last:
                return tape, a
            h = net.act_(a)
            tape.acts.append(h)
        if masks is not None and masks[i + 1] is not None:
            h = h * masks[i + 1].reshape(h.shape)
    raise AssertionError("a network ends with a fully connected layer")


def backward(net: Net, params, tape: Tape, g, *, want_input_grad: bool, on_layer: Callable | None = None):
    """Back-propagates the output gradient g through the layers, last to first. For every layer i, once the gradient
    with respect to its input is computed, on_layer(i, layer input, layer output gradient) is called: learning
    passes compute the weight gradient there and update layer i in place (its old weights are no longer needed).
    The input-gradient pass of Algorithm 1 (step 2) passes no on_layer: no weight gradients, which saves the outer
    products (about a third of a backward pass). Returns dJ/dx (flat, like x) if want_input_grad, else None."""
    ops, arch = net.ops, net.arch
    nc = arch.n_conv
    masks = tape.masks
    for i in range(len(params) - 1, -1, -1):
        g_out = g
        if i > 0 or want_input_grad:
            w = params[i][0]
            g = ops.conv2d_grad_input(g_out, w) if i < nc else ops.linear_grad_input(g_out, w)
        if on_layer is not None:
            on_layer(i, tape.inputs[i], g_out)
        if i == 0:
            break
        # g is now the gradient with respect to layer i's input: the output of block i - 1 after its dropout
        m = masks[i] if masks is not None else None
        j = i - 1
        if j < nc:
            g = g.reshape((g.shape[0], *net.pooled_shapes[j]))
            if m is not None:
                g = g * m
            g = ops.max_pool_grad(g, tape.pool_args[j], tape.acts[j].shape, arch.pool_size, arch.pool_stride,
                                  arch.pool_mode)
        elif m is not None:
            g = g * m
        g = net.act_grad(tape.acts[j], g)
    if not want_input_grad:
        return None
    if masks is not None and masks[0] is not None:
        g = g * masks[0].reshape(g.shape)
    return g.reshape((g.shape[0], -1)) if nc else g


def input_gradient(net: Net, params, x, y, masks=None):
    """Algorithm 1, steps 1-2: e_i = dJ_i/dx_i, each sample's own input gradient (no 1/n, so its sign depends on
    nothing else in the batch), computing no weight gradients."""
    tape, logits = forward(net, params, x, masks)
    return backward(net, params, tape, net.loss(net.ops, logits, y, want_loss=False)[1], want_input_grad=True)


def fgsm_perturb(ops, x, e, eps: float, clip: tuple[float, float] | None):
    """Algorithm 1, step 3: z = x + eps * sign(e). sign(0) = 0, so a zero gradient leaves x unchanged.
    No clipping unless asked (the paper does not clip)."""
    z = ops.sign(e)
    z *= eps
    z += x
    if clip is not None:
        ops.clip_(z, clip[0], clip[1])
    return z


def linf_bounds(ops, x, eps: float, clip: tuple[float, float] | None):
    """(lo, hi): the box every iterate of an L-inf attack stays in, [x - eps, x + eps] intersected with the pixel
    box `clip` when given. x + eps rounds exactly as fgsm_perturb's x + eps * sign(e) does where sign(e) = 1 (and
    x - eps where it is -1), so one step of size eps from x lands on the bound: K = 1 is FGSM bit for bit."""
    lo, hi = x - eps, x + eps
    if clip is not None:
        ops.clip_(lo, clip[0], clip[1])
        ops.clip_(hi, clip[0], clip[1])
    return lo, hi


def linf_step(ops, z, e, step_size: float, lo, hi):
    """One iteration of BIM / PGD, in place: z <- min(max(z + step_size * sign(e), lo), hi), the projection onto
    the eps-ball around x and the pixel box (linf_bounds) in one clamp."""
    s = ops.sign(e)
    s *= step_size
    z += s
    return ops.clamp_(z, lo, hi)


def linf_attack(net: Net, params, z, y, lo, hi, step_size: float, steps: int, masks_at: Callable | None = None,
                observe: Callable | None = None):
    """BIM / PGD (Kurakin et al. 2016; Madry et al. 2018): `steps` iterations of linf_step on z (in place), each
    from the sample's own input gradient at the current iterate (step 2 of Algorithm 1). masks_at(t) gives
    iteration t's dropout masks (None: evaluation mode); observe(t, z) sees every iterate. Returns z and the
    number of NaN or Inf gradient components met (a 0-d array: one device sync at the end, not one per step)."""
    ops = net.ops
    nonfinite = None
    for t in range(steps):
        e = input_gradient(net, params, z, y, masks_at(t) if masks_at is not None else None)
        bad = ops.count_nonfinite(e)
        nonfinite = bad if nonfinite is None else nonfinite + bad
        linf_step(ops, z, e, step_size, lo, hi)
        if observe is not None:
            observe(t, z)
    return z, nonfinite


def gradients(net: Net, params, x, y, masks=None):
    """A learning pass without the update, for tests and benchmarks: the per-sample losses, the gradients of the
    batch-mean loss with respect to every layer's (weight, bias), and its input gradient (row i: dJ_i/dx_i / n)."""
    tape, logits = forward(net, params, x, masks)
    losses, g = net.loss(net.ops, logits, y)
    g *= 1.0 / x.shape[0]
    grads: list = [None] * len(params)

    def keep(i, x_i, g_i):
        grads[i] = layer_gradients(net, i, x_i, g_i)

    e = backward(net, params, tape, g, want_input_grad=True, on_layer=keep)
    return losses, grads, e


def layer_gradients(net: Net, i: int, x_i, g):
    """(weight gradient, bias gradient) of layer i from its input x_i and output gradient g."""
    if i < net.arch.n_conv:
        return net.ops.conv2d_grad_params(x_i, g, net.arch.conv_kernel)
    return net.ops.matmul_tn(x_i, g), net.ops.sum_batch(g)


def optimizer_update(ops, plan: Plan, params, i: int, gw, gb, velocity) -> None:
    """Algorithm 1, step 5, for layer i, with the CIFAR-10 settings, in this order:
    1. weight decay: g <- g + weight_decay * w for weights (biases are not decayed);
    2. momentum, in torch.optim.SGD's form: v <- g at a layer's first step, then v <- m v + (1 - dampening) g,
       and the step uses v (dampening 0 is PyTorch's default; Torch7's optim.sgd, which the author's code used,
       defaults to dampening = momentum);
    3. w <- w - lr * step (the one primitive that changes parameters: ops.sub_);
    4. max-norm: every unit's incoming weight vector is scaled back to norm max_norm if it is longer.
    With none of them set this is plain SGD: w <- w - lr * (mean gradient over the batch)."""
    w, b = params[i]
    if plan.weight_decay:
        gw = gw + plan.weight_decay * w
    if plan.momentum:
        if velocity[i] is None:
            velocity[i] = (ops.copy(gw), ops.copy(gb))
        else:
            vw, vb = velocity[i]
            vw *= plan.momentum
            vw += (1 - plan.dampening) * gw
            vb *= plan.momentum
            vb += (1 - plan.dampening) * gb
        gw, gb = velocity[i]
    ops.sub_(w, gw, plan.lr)
    ops.sub_(b, gb, plan.lr)
    if plan.max_norm is not None:
        ops.max_norm_(w, plan.max_norm)


def sgd_update(net: Net, params, i: int, x_i, g) -> None:
    """Plain SGD for layer i straight from its output gradient g, already scaled by lr / n: w <- w - x_i^T g in one
    fused primitive, b <- b - sum(g). At batch 10 the update is memory-bound: a weight gradient the size of w,
    written and read again, would cost as much as the matmul that makes it."""
    ops = net.ops
    w, b = params[i]
    if i < net.arch.n_conv:
        gw, gb = ops.conv2d_grad_params(x_i, g, net.arch.conv_kernel)
        ops.sub_(w, gw, 1.0)
    else:
        ops.sub_matmul_tn_(w, x_i, g)
        gb = ops.sum_batch(g)
    ops.sub_(b, gb, 1.0)


def learn_from(net: Net, plan: Plan, params, x, y, masks=None, velocity=None, count_errors: bool = False,
               scale: float = 1.0, extra_grads: list | None = None):
    """Algorithm 1, steps 4-5 (with x = z), and plain back-propagation: forward and backward on x, each layer
    updated as soon as its gradient is known. The weights learn from scale * (gradient of the batch-mean loss)
    plus extra_grads (one (gw, gb) per layer, already weighted) when given.
    Returns the batch-mean loss and, if count_errors, the number of misclassified samples (else None)."""
    ops = net.ops
    tape, logits = forward(net, params, x, masks)
    losses, g = net.loss(ops, logits, y)
    loss = ops.mean(losses)
    wrong = ops.count_different(ops.argmax_rows(logits), y) if count_errors else None
    if plan.plain_sgd and extra_grads is None:  # the fast path: lr / n folded into g, fused updates
        g *= plan.lr * scale / x.shape[0]
        backward(net, params, tape, g, want_input_grad=False, on_layer=lambda i, x_i, g_i: sgd_update(
            net, params, i, x_i, g_i))
        return loss, wrong
    g *= scale / x.shape[0]

    def update(i, x_i, g_i):
        gw, gb = layer_gradients(net, i, x_i, g_i)
        if extra_grads is not None:
            gw, gb = gw + extra_grads[i][0], gb + extra_grads[i][1]
        optimizer_update(ops, plan, params, i, gw, gb, velocity)

    backward(net, params, tape, g, want_input_grad=False, on_layer=update)
    return loss, wrong


def train_step(net: Net, plan: Plan, params, x, y, masks=None, velocity=None, count_errors: bool = False):
    """One mini-batch. Returns the objective that was minimised (J(x) for back-propagation, a J(x) + (1 - a) J(z)
    for adversarial back-propagation, a = adv_weight, 0 in the paper; batch means) and, if count_errors, the
    number of misclassified samples in the pass the weights learned from (z when a = 0).
    Dropout: the training pass uses `masks`; the perturbation (steps 1-2) uses the same masks when
    adv_dropout is "same" (the default, dfa-torch's training mode) and none when it is "off"."""
    if not plan.adversarial:
        return learn_from(net, plan, params, x, y, masks, velocity, count_errors)
    adv_masks = masks if plan.adv_masks_same else None
    a = plan.adv_weight
    if a == 0:  # the paper: learn from z alone
        e = input_gradient(net, params, x, y, adv_masks)  # steps 1-2, no weight gradients
        z = fgsm_perturb(net.ops, x, e, plan.eps, plan.clip)  # step 3
        return learn_from(net, plan, params, z, y, masks, velocity, count_errors)  # steps 4-5
    return _train_step_mixed(net, plan, params, x, y, masks, adv_masks, velocity, count_errors)


def _train_step_mixed(net, plan, params, x, y, masks, adv_masks, velocity, count_errors):
    """a J(x) + (1 - a) J(z), 0 < a: the clean pass feeds the update too, so it computes weight gradients as well
    (kept, not applied: the pass on z must see the same weights)."""
    ops = net.ops
    a = plan.adv_weight
    tape, logits = forward(net, params, x, masks)
    losses_x, g = net.loss(ops, logits, y)  # g per sample: its input gradient is e, with the training masks
    loss_x = ops.mean(losses_x)
    grads_x: list = [None] * len(params)
    scale_x = a / x.shape[0]

    def keep(i, x_i, g_i):
        gw, gb = layer_gradients(net, i, x_i, g_i)
        grads_x[i] = (gw * scale_x, gb * scale_x)

    same = adv_masks is masks
    e = backward(net, params, tape, g, want_input_grad=same, on_layer=keep)
    if not same:  # the perturbation without dropout: its own pass
        e = input_gradient(net, params, x, y, None)
    z = fgsm_perturb(ops, x, e, plan.eps, plan.clip)
    loss_z, wrong = learn_from(net, plan, params, z, y, masks, velocity, count_errors, scale=1 - a,
                               extra_grads=grads_x)
    return loss_x * a + loss_z * (1 - a), wrong
