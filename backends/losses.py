"""The output layers with their objectives, written once on a backend's primitives (`ops`).

Each loss gives, for logits o and labels y, the per-sample objective J_i and its per-sample output gradient
dJ_i/do_i: no 1/n. The step scales the gradient by 1/n (the batch mean, what makes an SGD step `lr x mean
gradient`) only where weights learn from it; FGSM takes the sign of each sample's own input gradient, which is then
independent of the batch size and never flushed to zero by the 1/n (a gradient of 1e-42 / 1000 is 0 in float32).

The gradients are written so that float32 does not cancel: sigmoid(o_y) - 1 is exactly 0 in float32 once
o_y > 16.7, but equals -sigmoid(-o_y), which keeps float32's ~7 significant digits down to 1e-38; likewise
softmax's p_y - 1 is minus the sum of the other classes' probabilities. The other entries (sigmoid(o_k), p_k)
involve no subtraction. Mathematically nothing changes, so float64 results are the same to rounding.
"""

from __future__ import annotations


def sigmoid_bce(ops, o, y, want_loss: bool = True, want_grad: bool = True):
    """Logistic output units with per-unit binary cross-entropy on one-hot targets (the paper's MNIST setting).
    J_i = sum_k softplus(o_ik) - o_iy; dJ_i/do_ik = sigmoid(o_ik) - t_ik, the true class's entry as -sigmoid(-o_iy).
    Returns (J or None, dJ/do or None)."""
    o_y = ops.take_labels(o, y)
    loss = ops.sum_rows(ops.softplus(o)) - o_y if want_loss else None
    grad = ops.set_labels_(ops.sigmoid(o), y, -ops.sigmoid(-o_y)) if want_grad else None
    return loss, grad


def softmax_ce(ops, o, y, want_loss: bool = True, want_grad: bool = True):
    """Softmax output with cross-entropy (the paper's CIFAR-10 setting). J_i = -log softmax(o_i)_y;
    dJ_i/do_ik = p_ik - t_ik, the true class's entry as -(sum of the other classes' p_ik).
    Returns (J or None, dJ/do or None)."""
    log_p = ops.log_softmax(o)
    loss = -ops.take_labels(log_p, y) if want_loss else None
    grad = None
    if want_grad:
        grad = ops.set_labels_(ops.exp(log_p), y, 0.0)
        ops.set_labels_(grad, y, -ops.sum_rows(grad))
    return loss, grad


LOSSES = {"sigmoid_bce": sigmoid_bce, "softmax_ce": softmax_ce}
