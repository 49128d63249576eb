"""Our hand-written backward passes against independent computations: central finite differences, and torch
autograd in float64 (micrograd's style: small, and checking the math, not the plumbing)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from advbp_cli.backends.numpy import losses, step
from conftest import fresh, small_model

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
    _, logits = step.forward(params, x, model.activation)
    return losses.loss_and_grad(model.output, logits, y)[0].mean()


@pytest.mark.parametrize("output", OUTPUTS)
@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_weight_and_input_gradients_match_finite_differences(activation, output):
    model, params, x, y = _problem(activation, output)
    layer_inputs, logits = step.forward(params, x, model.activation)
    _, g = losses.loss_and_grad(model.output, logits, y)
    grads, e = step.backward(params, layer_inputs, g, model.activation, want_param_grads=True, want_input_grad=True)
    h = 1e-6
    for li, (w, b) in enumerate(params):
        for arr, grad in ((w, grads[li][0]), (b, grads[li][1])):
            for idx in [tuple(np.unravel_index(k, arr.shape)) for k in range(0, arr.size, max(1, arr.size // 7))]:
                old = arr[idx]
                arr[idx] = old + h
                up = _mean_loss(params, x, y, model)
                arr[idx] = old - h
                down = _mean_loss(params, x, y, model)
                arr[idx] = old
                assert grad[idx] == pytest.approx((up - down) / (2 * h), rel=1e-5, abs=1e-8)
    for idx in [(0, 0), (1, 3), (3, 5)]:
        xp, xm = x.copy(), x.copy()
        xp[idx] += h
        xm[idx] -= h
        fd = (_mean_loss(params, xp, y, model) - _mean_loss(params, xm, y, model)) / (2 * h)
        assert e[idx] == pytest.approx(fd, rel=1e-5, abs=1e-8)


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
    layer_inputs, logits = step.forward(params, x, model.activation)
    per_sample, g = losses.loss_and_grad(model.output, logits, y)
    grads, e = step.backward(params, layer_inputs, g, model.activation, want_param_grads=True, want_input_grad=True)
    assert per_sample.mean() == pytest.approx(ref_loss, rel=1e-12)
    for (gw, gb), (rw, rb) in zip(grads, ref_grads):
        np.testing.assert_allclose(gw, rw, rtol=1e-10, atol=1e-14)
        np.testing.assert_allclose(gb, rb, rtol=1e-10, atol=1e-14)
    np.testing.assert_allclose(e, ref_e, rtol=1e-10, atol=1e-14)
    np.testing.assert_allclose(step.input_gradient(params, x, y, model), ref_e, rtol=1e-10, atol=1e-14)


def test_input_gradient_pass_computes_no_weight_gradients(monkeypatch):
    """Algorithm 1's step 2 needs only dJ/dx: the outer products of the weight gradients are skipped."""
    model, params, x, y = _problem("relu", "sigmoid_bce")
    calls = []
    real = step.linear_backward_params
    monkeypatch.setattr(step, "linear_backward_params", lambda *a: calls.append(1) or real(*a))
    step.input_gradient(params, x, y, model)
    assert calls == []
    from conftest import step_spec

    step.train_step(params, x, y, model, step_spec(method="adversarial", eps=0.1, lr=0.1))
    assert len(calls) == len(params)  # only the pass on z computes weight gradients
