"""Our hand-written backward passes against independent computations: central finite differences, and torch
autograd in float64 (micrograd's style: small, and checking the math, not the plumbing)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from advbp_cli.backends import numpy as npo
from advbp_cli.backends import step
from conftest import CountingOps, assert_matches_central_difference, fresh, small_model

ACTIVATIONS = ["logistic", "tanh", "relu"]
OUTPUTS = ["sigmoid_bce", "softmax_ce"]


def _problem(activation, output, seed=0, n=4, d=6):
    model = small_model(hidden=(5, 4), activation=activation, output=output, input_size=d)
    rng = np.random.default_rng(seed)
    raw = fresh(model, seed)
    # larger weights than the paper's init so every unit is exercised and relu kinks are far from the samples
    params = [(raw[f"layers.{i}.weight"] * 30 + rng.normal(0, 0.3, raw[f"layers.{i}.weight"].shape),
               rng.normal(0, 0.1, raw[f"layers.{i}.bias"].shape)) for i in range(3)]
    x = rng.uniform(0, 1, (n, d))
    y = rng.integers(0, 10, n)
    return model, params, x, y


def _mean_loss(params, x, y, model):
    net = step.make_net(npo, model)
    return net.loss(npo, step.forward(net, params, x)[1], y, want_grad=False)[0].mean()


@pytest.mark.parametrize("output", OUTPUTS)
@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_weight_and_input_gradients_match_finite_differences(activation, output):
    model, params, x, y = _problem(activation, output)
    _, grads, e = step.gradients(step.make_net(npo, model), params, x, y)
    for li, (w, b) in enumerate(params):
        for arr, grad in ((w, grads[li][0]), (b, grads[li][1])):
            for idx in [tuple(np.unravel_index(k, arr.shape)) for k in range(0, arr.size, max(1, arr.size // 7))]:
                assert_matches_central_difference(lambda: _mean_loss(params, x, y, model), arr, idx, grad[idx])
    for idx in [(0, 0), (1, 3), (3, 5)]:
        assert_matches_central_difference(lambda: _mean_loss(params, x, y, model), x, idx, e[idx])


def _torch_reference(params, x, y, model):
    """The same network written with torch.nn.functional and differentiated by autograd, in float64."""
    tparams = [(torch.tensor(w, requires_grad=True), torch.tensor(b, requires_grad=True)) for w, b in params]
    tx = torch.tensor(x, requires_grad=True)
    act = {"relu": torch.relu, "tanh": torch.tanh, "logistic": torch.sigmoid}[model.activation]
    h = tx
    for i, (w, b) in enumerate(tparams):
        h = h @ w + b
        if i < len(tparams) - 1:
            h = act(h)
    ty = torch.tensor(y)
    if model.output == "sigmoid_bce":
        t = torch.nn.functional.one_hot(ty, 10).double()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(h, t, reduction="sum") / len(y)
    else:
        loss = torch.nn.functional.cross_entropy(h, ty)
    loss.backward()
    return loss.item(), [(w.grad.numpy(), b.grad.numpy()) for w, b in tparams], tx.grad.numpy()


@pytest.mark.parametrize("output", OUTPUTS)
@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_backward_matches_torch_autograd(activation, output):
    model, params, x, y = _problem(activation, output, seed=3)
    ref_loss, ref_grads, ref_e = _torch_reference(params, x, y, model)
    net = step.make_net(npo, model)
    per_sample, grads, e = step.gradients(net, params, x, y)
    assert per_sample.mean() == pytest.approx(ref_loss, rel=1e-12)
    for (gw, gb), (rw, rb) in zip(grads, ref_grads):
        np.testing.assert_allclose(gw, rw, rtol=1e-10, atol=1e-14)
        np.testing.assert_allclose(gb, rb, rtol=1e-10, atol=1e-14)
    np.testing.assert_allclose(e, ref_e, rtol=1e-10, atol=1e-14)
    # the per-sample input gradient is the batch mean's times n: row i is dJ_i/dx_i
    np.testing.assert_allclose(step.input_gradient(net, params, x, y), ref_e * len(x), rtol=1e-10, atol=1e-14)


def test_input_gradient_pass_computes_no_weight_gradients():
    """Algorithm 1's step 2 needs only dJ/dx: the outer products of the weight gradients are skipped."""
    from conftest import step_spec

    model, params, x, y = _problem("relu", "sigmoid_bce")
    ops = CountingOps(npo)
    net = step.make_net(ops, model)
    def weight_gradients():  # the general update's and plain SGD's fused one
        return ops.calls["matmul_tn"] + ops.calls["sub_matmul_tn_"]

    step.input_gradient(net, params, x, y)
    assert weight_gradients() == 0 and ops.calls["linear_grad_input"] == len(params)
    for spec in (step_spec(method="adversarial", eps=0.1, lr=0.1),
                 step_spec(method="adversarial", eps=0.1, lr=0.1, momentum=0.9)):
        before = weight_gradients()
        step.train_step(net, step.make_plan(spec), params, x, y, velocity=[None] * len(params))
        assert weight_gradients() - before == len(params)  # only the pass on z computes weight gradients
