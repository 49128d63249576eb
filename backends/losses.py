"""The output layers with their objectives, written once on a backend's primitives (`ops`).

Each loss gives the per-sample objective J_i and its per-sample output gradient dJ_i/do_i: no 1/n. The step
scales the gradient by 1/n (the batch mean, what makes an SGD step `lr x mean gradient`) only where weights learn
from it; FGSM takes the sign of each sample's own input gradient, which is then independent of the batch size and
never flushed to zero by the 1/n (a per-sample gradient of 1e-42 / 1000 is 0 in float32).

The gradients are written so that float32 does not cancel: sigmoid(o_y) - 1 is exactly 0 in float32 once
o_y > 16.7, but equals -sigmoid(-o_y), which keeps its ~7 significant digits down to 1e-38; likewise
softmax's p_y - 1 is minus the sum of the other classes' probabilities. The other entries (sigmoid(o_k), p_k)
involve no subtraction.
"""

from __future__ import annotations


def sigmoid_bce(ops, o, y):
    """Logistic output units with per-unit binary cross-entropy on one-hot targets (the paper's MNIST setting).
    J_i = sum_k softplus(o_ik) - o_iy."""
    return ops.sum_rows(ops.softplus(o)) - ops.take_labels(o, y)


def sigmoid_bce_grad(ops, o, y):
    """dJ_i/do_ik = sigmoid(o_ik) - t_ik, the true class's entry as -sigmoid(-o_iy)."""
    g = ops.sigmoid(o)
    return ops.set_labels_(g, y, -ops.sigmoid(-ops.take_labels(o, y)))


def softmax_ce(ops, o, y):
    """Softmax output with cross-entropy (the paper's CIFAR-10 setting). J_i = -log softmax(o_i)_y."""
    return -ops.take_labels(ops.log_softmax(o), y)


def softmax_ce_grad(ops, o, y):
    """dJ_i/do_ik = p_ik - t_ik, the true class's entry as -(sum of the other classes' p_ik)."""
    p = ops.exp(ops.log_softmax(o))
    ops.set_labels_(p, y, 0.0)
    return ops.set_labels_(p, y, -ops.sum_rows(p))


LOSSES = {"sigmoid_bce": (sigmoid_bce, sigmoid_bce_grad), "softmax_ce": (softmax_ce, softmax_ce_grad)}
