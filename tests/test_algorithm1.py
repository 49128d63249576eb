"""Algorithm 1 (Nøkland 2015) as each backend runs it, against an independent implementation: the same network
written with torch.nn.functional, its input gradient and weight gradients from torch autograd, the update from
torch.optim.SGD, all in float64. Only the Backend verbs are used (set_params, train_steps, get_params,
get_optimizer_state), so this checks each backend's own path for every step: the input gradient (1-2), the
perturbation z = x + eps sign(e) (3), the pass on z and the update (4-5). A flipped sign, a missing clip, a wrong
weighting of J(x) and J(z) or a momentum buffer applied wrongly moves the weights by about lr * eps, i.e. 1e-4
and more, far above float64 rounding.

Tolerance: the README's float64 parity claim, 1e-9 in every weight. Float64 rounding in these sums (at most 784
terms of size about 1) is below 1e-13, so the 1e-9 bound leaves room for summation order only."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from advbp_cli.backends import load_backend
from conftest import fresh, small_model, step_spec

TOL = 1e-9


def _loss(output: str, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The batch-mean objective: per sample, the sum of the output units' binary cross-entropies (sigmoid_bce)
    or the softmax cross-entropy."""
    if output == "sigmoid_bce":
        t = F.one_hot(y, logits.shape[1]).double()
        return F.binary_cross_entropy_with_logits(logits, t, reduction="sum") / len(y)
    return F.cross_entropy(logits, y)


def reference_training(params: dict, x: np.ndarray, y: np.ndarray, batches, model, spec) -> tuple[dict, list]:
    """Algorithm 1 step by step in torch autograd, float64. Returns the weights (and momentum buffers) after the
    batches, and the objective of every step."""
    n_layers = len(params) // 2
    ws = [torch.tensor(params[f"layers.{i}.weight"], requires_grad=True) for i in range(n_layers)]
    bs = [torch.tensor(params[f"layers.{i}.bias"], requires_grad=True) for i in range(n_layers)]
    act = {"relu": torch.relu, "tanh": torch.tanh, "logistic": torch.sigmoid}[model.activation]

    def net(inp):
        h = inp
        for i in range(n_layers):
            h = h @ ws[i] + bs[i]
            if i < n_layers - 1:
                h = act(h)
        return h

    groups = [{"params": ws, "weight_decay": spec.weight_decay}, {"params": bs, "weight_decay": 0.0}]
    opt = torch.optim.SGD(groups, lr=spec.lr, momentum=spec.momentum, dampening=spec.dampening)
    objectives = []
    for idx in batches:
        xb, yb = torch.tensor(x[idx]), torch.tensor(y[idx])
        if spec.method == "adversarial":
            xr = xb.clone().requires_grad_(True)
            (e,) = torch.autograd.grad(_loss(model.output, net(xr), yb), xr)  # steps 1-2
            z = xb + spec.eps * torch.sign(e)  # step 3
            if spec.clip is not None:
                z = z.clamp(*spec.clip)
            a = spec.adv_weight
            obj = (1 - a) * _loss(model.output, net(z), yb)
            if a:
                obj = obj + a * _loss(model.output, net(xb), yb)
        else:
            obj = _loss(model.output, net(xb), yb)
        opt.zero_grad()
        obj.backward()  # step 4
        opt.step()  # step 5
        objectives.append(obj.item())
    out = {}
    for i in range(n_layers):
        out[f"layers.{i}.weight"] = ws[i].detach().numpy()
        out[f"layers.{i}.bias"] = bs[i].detach().numpy()
        if spec.momentum:
            out[f"momentum.layers.{i}.weight"] = opt.state[ws[i]]["momentum_buffer"].numpy()
            out[f"momentum.layers.{i}.bias"] = opt.state[bs[i]]["momentum_buffer"].numpy()
    return out, objectives


CASES = {
    "relu-bce-paper": ("relu", "sigmoid_bce", dict(method="adversarial", eps=0.08, lr=0.05)),
    "relu-bce-clip": ("relu", "sigmoid_bce", dict(method="adversarial", eps=0.25, lr=0.05, clip=(0.0, 1.0))),
    "tanh-ce-half": ("tanh", "softmax_ce", dict(method="adversarial", eps=0.1, lr=0.1, adv_weight=0.5)),
    "logistic-bce-momentum": ("logistic", "sigmoid_bce", dict(method="adversarial", eps=0.08, lr=0.2, momentum=0.9,
                                                              weight_decay=1e-3, clip=(0.0, 1.0))),
    "relu-ce-momentum-dampening": ("relu", "softmax_ce", dict(method="adversarial", eps=0.05, lr=0.05, momentum=0.5,
                                                              dampening=0.5)),
    "relu-bce-backprop": ("relu", "sigmoid_bce", dict(method="backprop", lr=0.05)),
}


@pytest.fixture(scope="module")
def batch_data(mnist):
    x = mnist["x_train"][:120].astype(np.float64) / 255
    y = mnist["y_train"][:120].astype(np.int64)
    return x, y


@pytest.mark.parametrize("backend", ["numpy", "torch"])
@pytest.mark.parametrize("case", list(CASES))
def test_train_steps_are_algorithm_1_computed_by_autograd(batch_data, backend, case):
    x, y = batch_data
    activation, output, kw = CASES[case]
    model = small_model(hidden=(32, 16), activation=activation, output=output)
    spec = step_spec(**kw)
    rng = np.random.default_rng(7)
    # larger than the paper's init, so every unit works and the gradient is far from zero everywhere
    params = {k: v * 15 + (rng.normal(0, 0.05, v.shape) if v.ndim == 2 else rng.normal(0, 0.1, v.shape))
              for k, v in fresh(model, 3).items()}
    batches = np.arange(60).reshape(6, 10)[[0, 3, 5, 1]]  # four steps, in a shuffled order
    net = load_backend(backend)(model, dtype="float64", device="cpu")
    net.set_params(params)
    losses = np.asarray(net.train_steps(net.asarray(x), net.asarray(y, labels=True), batches, spec))
    want, want_objectives = reference_training(params, x, y, batches, model, spec)
    got = {**net.get_params(), **net.get_optimizer_state()}
    assert sorted(got) == sorted(want)
    for k in want:
        diff = float(np.abs(got[k] - want[k]).max())
        assert diff < TOL, f"{backend} {case}: {k} differs from autograd's Algorithm 1 by {diff:.3g}"
    np.testing.assert_allclose(losses, want_objectives, rtol=TOL)
    moved = max(float(np.abs(want[k] - params[k]).max()) for k in params)
    assert moved > 1e-3  # the steps did something, so the comparison is not of two unchanged arrays


@pytest.mark.parametrize("backend", ["numpy", "torch"])
def test_the_perturbation_moves_every_pixel_by_eps_in_the_direction_that_raises_the_loss(batch_data, backend):
    """Steps 1-3 seen through the objective a step reports (J(z) in the paper's setting): it must be the loss at
    x + eps sign(e) with autograd's e, which is above the clean loss. A flipped sign (x - eps sign(e)) reports a
    loss below the clean one: the network would train on easier inputs than back-propagation."""
    x, y = batch_data
    model = small_model(hidden=(32, 16))
    params = {k: v * 15 for k, v in fresh(model, 5).items()}
    spec = step_spec(method="adversarial", eps=0.1, lr=1.0)
    batches = np.arange(10)[None, :]
    net = load_backend(backend)(model, dtype="float64", device="cpu")
    net.set_params(params)
    loss_on_z = float(net.train_steps(net.asarray(x), net.asarray(y, labels=True), batches, spec)[0])
    # the objective the backend reports for the step is J(z); J(x + eps sign e) > J(x) > J(x - eps sign e)
    ref = {k: torch.tensor(v) for k, v in params.items()}
    xb, yb = torch.tensor(x[:10], requires_grad=True), torch.tensor(y[:10])

    def j(inp):
        h = torch.relu(inp @ ref["layers.0.weight"] + ref["layers.0.bias"])
        h = torch.relu(h @ ref["layers.1.weight"] + ref["layers.1.bias"])
        return _loss("sigmoid_bce", h @ ref["layers.2.weight"] + ref["layers.2.bias"], yb)

    (e,) = torch.autograd.grad(j(xb), xb)
    up, clean, down = (j(xb.detach() + s * 0.1 * torch.sign(e)).item() for s in (1, 0, -1))
    assert up > clean > down
    assert loss_on_z == pytest.approx(up, rel=1e-12)


def test_a_cli_run_is_algorithm_1_over_the_documented_batch_order(data_dir, mnist, tmp_path):
    """End to end: `advbp train` on 25 images in batches of 10 (two full batches and a final batch of 5, every
    epoch) equals the autograd reference fed the same batches: each epoch's order is rng.epoch_permutation(seed,
    epoch, n), the init is N(0, init_std^2) keyed by the seed, the last partial batch is a step of its own."""
    from safetensors.numpy import load_file

    from advbp_cli.rng import epoch_permutation
    from conftest import run_cli

    out = tmp_path / "run"
    r = run_cli(["train", "--data-dir", str(data_dir), "--no-download", "--train-limit", "25", "--eval-limit", "10",
                 "--batch-size", "10", "--epochs", "2", "--hidden", "16", "--dtype", "float64", "--backend", "numpy",
                 "--method", "adversarial", "--eps", "0.1", "--lr", "0.1", "--init-std", "0.1", "--seed", "3",
                 "--no-eval-train-error", "--out", str(out)])
    assert r.exit_code == 0, r.stderr
    model = small_model(hidden=(16,))
    model = model.model_copy(update={"init_std": 0.1})
    x = mnist["x_train"][:25].astype(np.float64) / 255
    y = mnist["y_train"][:25].astype(np.int64)
    batches = []
    for epoch in range(2):
        perm = epoch_permutation(3, epoch, 25)
        batches += [perm[:10], perm[10:20], perm[20:]]
    want, _ = reference_training(fresh(model, 3), x, y, batches, model,
                                 step_spec(method="adversarial", eps=0.1, lr=0.1))
    got = load_file(str(out / "checkpoint.safetensors"))
    for k in want:
        assert float(np.abs(got[k] - want[k]).max()) < TOL, k
