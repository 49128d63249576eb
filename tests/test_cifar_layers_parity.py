"""Issue 6, layers and training features: convolution, max pooling, dropout, max-norm, momentum, weight decay and
the halving schedule, in both backends.

- numpy (the specification) against torch, float64, step by step on small random images: < 1e-9.
- the hand-written conv/pool backward passes against torch autograd (and central finite differences), the input
  gradient included; pooling geometry against torch's own output sizes.
- the optimizer against torch.optim.SGD, the schedule against a literal transcription of dfa-torch's loop.
- resume after a crash is bit-exact with momentum + schedule + dropout (tiny conv net, fake data injected into the
  trainer, so this file does not depend on the CIFAR-10 loader).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from advbp_cli.backends import architecture, dropout_sites, load_backend, pool_geometry
from advbp_cli.backends import numpy as nl
from advbp_cli.backends import step as nstep
from advbp_cli.backends import torch as tl
from advbp_cli.backends.network import scaled_masks
from advbp_cli.checkpoint import expected_shapes
from advbp_cli.config import ModelConfig, RunConfig, TrainConfig
from advbp_cli.rng import DropoutMasks, init_from_shapes
from advbp_cli.trainer import epoch_blocks
from conftest import CountingOps, assert_matches_central_difference

MODES = ["ceil", "pad1", "valid"]


def np_masks(keep, sites):
    return scaled_masks(nl, keep, sites, "float64", "cpu")


def conv_model(mode="ceil", activation="relu", channels=(4, 5), hidden=(12, 7), shape=(3, 8, 8), output="softmax_ce",
               init_std=0.1):
    return ModelConfig(arch="conv", input_shape=shape, conv_channels=list(channels), hidden=list(hidden),
                       activation=activation, output=output, pool_mode=mode, init_std=init_std)


def fresh(model, seed=0):
    return init_from_shapes(expected_shapes(model), model.init_std, seed)


def data(n=60, d=192, seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, d)), rng.integers(0, 10, n)


def max_diff(a: dict, b: dict) -> float:
    assert sorted(a) == sorted(b)
    return max(float(np.abs(np.asarray(a[k], np.float64) - np.asarray(b[k], np.float64)).max()) for k in a)


# ------------------------------------------------------------------------------------------------ geometry


@pytest.mark.parametrize("mode", MODES)
def test_pool_geometry_is_torchs(mode):
    for size in range(3, 40):
        out, lo, hi = pool_geometry(size, 3, 2, mode)
        x = torch.zeros(1, 1, size, size)
        got = F.max_pool2d(x, 3, 2, padding=lo, ceil_mode=mode == "ceil").shape[-1]
        assert got == out, (size, mode)
        assert (out - 1) * 2 + 3 == lo + size + hi  # the padded extent is exactly what the windows cover


def test_the_paper_conv_net_shapes():
    m = ModelConfig(arch="conv", input_shape=(3, 32, 32), hidden=[2048, 2048], output="softmax_ce")
    arch = architecture(m)
    assert m.input_size == 3072
    assert arch.conv_outputs() == [(96, 16, 16), (128, 8, 8), (256, 4, 4)]
    shapes = expected_shapes(m)
    assert list(shapes)[:2] == ["conv.0.weight", "conv.0.bias"]
    assert shapes["conv.1.weight"] == (128, 96, 5, 5) and shapes["layers.0.weight"] == (4096, 2048)
    assert shapes["layers.2.weight"] == (2048, 10)
    valid = architecture(m.model_copy(update={"pool_mode": "valid"}))
    assert valid.conv_outputs()[-1] == (256, 3, 3)  # dfa-torch's 256*3*3


def test_mlp_parameter_names_are_the_checkpoint_names():
    """The init's distribution is pinned in test_run_claims (N(0, std^2) weights, zero biases); here the names and
    shapes a checkpoint of an MLP stores."""
    m = ModelConfig(hidden=[30, 20], init_std=0.01)
    params = fresh(m, 5)
    assert list(params) == ["layers.0.weight", "layers.0.bias", "layers.1.weight", "layers.1.bias", "layers.2.weight",
                            "layers.2.bias"]
    assert {k: v.shape for k, v in params.items()} == expected_shapes(m)
    assert expected_shapes(m)["layers.0.weight"] == (784, 30)


def test_conv_config_errors():
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="needs input_shape"):
        ModelConfig(arch="conv")
    with pytest.raises(ValidationError, match="must be odd"):
        ModelConfig(arch="conv", input_shape=(3, 8, 8), conv_kernel=4)
    with pytest.raises(ValidationError, match="too small"):
        ModelConfig(arch="conv", input_shape=(3, 4, 4), conv_channels=[2, 2, 2], pool_mode="valid")
    with pytest.raises(ValidationError, match="has 192 values but input_size is 100"):
        ModelConfig(arch="conv", input_shape=(3, 8, 8), input_size=100)
    with pytest.raises(ValidationError, match="dropout_conv has 2 rates but the model has 3 conv layers"):
        RunConfig.model_validate({"model": {"arch": "conv", "input_shape": [3, 32, 32]},
                                  "data": {"dataset": "cifar10"}, "train": {"dropout_conv": [0.1, 0.2]}})
    with pytest.raises(ValidationError, match="in \\[0, 1\\)"):
        TrainConfig(dropout_fc=[0.5, 1.0])


# ------------------------------------------------------------------------------------ layers, one by one


@pytest.mark.parametrize("mode", MODES)
def test_conv_and_pool_layers_agree_with_torch(mode):
    rng = np.random.default_rng(1)
    x = rng.normal(size=(3, 4, 9, 7))
    w = rng.normal(size=(5, 4, 5, 5))
    b = rng.normal(size=5)
    tx, tw, tb = (torch.tensor(a) for a in (x, w, b))
    y = nl.conv2d(x, w, b)
    np.testing.assert_allclose(y, tl.conv2d(tx, tw, tb).numpy(), rtol=0, atol=1e-12)
    g = rng.normal(size=y.shape)
    np.testing.assert_allclose(nl.conv2d_grad_input(g, w), tl.conv2d_grad_input(torch.tensor(g), tw).numpy(),
                               atol=1e-12)
    for a, bb in zip(nl.conv2d_grad_params(x, g, 5), tl.conv2d_grad_params(tx, torch.tensor(g), 5)):
        np.testing.assert_allclose(a, bb.numpy(), atol=1e-12)
    p, arg = nl.max_pool(y, 3, 2, mode)
    tp, targ = tl.max_pool(torch.tensor(y), 3, 2, mode)
    np.testing.assert_array_equal(p, tp.numpy())
    gp = rng.normal(size=p.shape)
    np.testing.assert_allclose(nl.max_pool_grad(gp, arg, y.shape, 3, 2, mode),
                               tl.max_pool_grad(torch.tensor(gp), targ, y.shape, 3, 2, mode).numpy(), atol=1e-12)


@pytest.mark.parametrize("mode", MODES)
def test_conv_and_pool_backward_match_autograd(mode):
    """The numpy layers' backward passes against torch autograd of F.conv2d / F.max_pool2d (torch's own
    conventions: a check of our padding and window bookkeeping, not only of the chain rule)."""
    rng = np.random.default_rng(2)
    x = rng.normal(size=(2, 3, 8, 6))
    w = rng.normal(size=(4, 3, 5, 5))
    b = rng.normal(size=4)
    tx, tw, tb = (torch.tensor(a, requires_grad=True) for a in (x, w, b))
    lo = pool_geometry(8, 3, 2, mode)[1]
    out = F.max_pool2d(torch.tanh(F.conv2d(tx, tw, tb, padding=2)), 3, 2, padding=lo, ceil_mode=mode == "ceil")
    gout = rng.normal(size=tuple(out.shape))
    out.backward(torch.tensor(gout))
    r = nl.tanh_(nl.conv2d(x, w, b))
    p, arg = nl.max_pool(r, 3, 2, mode)
    np.testing.assert_allclose(p, out.detach().numpy(), atol=1e-12)
    ga = nl.tanh_grad(r, nl.max_pool_grad(gout, arg, r.shape, 3, 2, mode))
    gw, gb = nl.conv2d_grad_params(x, ga, 5)
    np.testing.assert_allclose(nl.conv2d_grad_input(ga, w), tx.grad.numpy(), atol=1e-12)
    np.testing.assert_allclose(gw, tw.grad.numpy(), atol=1e-12)
    np.testing.assert_allclose(gb, tb.grad.numpy(), atol=1e-12)


def _reference_net(params, x, model, masks):
    """The conv net written with torch.nn.functional, differentiated by autograd (float64), with dropout as plain
    multiplications by the same scaled masks."""
    arch = architecture(model)
    act = {"relu": torch.relu, "tanh": torch.tanh, "logistic": torch.sigmoid}[model.activation]
    tp = [(torch.tensor(w, requires_grad=True), torch.tensor(b, requires_grad=True)) for w, b in params]
    tx = torch.tensor(x, requires_grad=True)
    ms = [None if m is None else torch.tensor(m) for m in (masks or [None] * 10)]
    h = tx if ms[0] is None else tx * ms[0]
    h = h.reshape(len(x), *arch.input_shape)
    for i in range(arch.n_conv):
        lo = pool_geometry(h.shape[2], 3, 2, model.pool_mode)[1]
        h = F.max_pool2d(act(F.conv2d(h, tp[i][0], tp[i][1], padding=2)), 3, 2, padding=lo,
                         ceil_mode=model.pool_mode == "ceil")
        if ms[i + 1] is not None:
            h = h * ms[i + 1]
    h = h.reshape(len(x), -1)
    for i in range(arch.n_conv, len(tp)):
        h = h @ tp[i][0] + tp[i][1]
        if i < len(tp) - 1:
            h = act(h)
            if ms[i + 1] is not None:
                h = h * ms[i + 1]
    return h, tp, tx


@pytest.mark.parametrize("dropout", [False, True])
@pytest.mark.parametrize("activation,mode", [("relu", "ceil"), ("tanh", "pad1"), ("logistic", "valid")])
def test_conv_net_backward_matches_autograd(activation, mode, dropout):
    model = conv_model(mode, activation)
    rng = np.random.default_rng(3)
    raw = fresh(model, 3)
    params = [(raw[w] * 20 + rng.normal(0, 0.2, raw[w].shape), rng.normal(0, 0.1, raw[b].shape))
              for w, b in architecture(model).layer_names()]
    x, y = data(6, seed=4)
    masks = None
    if dropout:
        step = TrainConfig(dropout_input=0.1, dropout_conv=[0.25, 0.5], dropout_fc=0.5)
        sites = dropout_sites(architecture(model), step, len(x))
        masks = np_masks(DropoutMasks(0, 0).masks(0, sites), sites)
    logits_ref, tp, tx = _reference_net(params, x, model, masks)
    loss = F.cross_entropy(logits_ref, torch.tensor(y))
    loss.backward()
    net = nstep.make_net(nl, model)
    per_sample, grads, e = nstep.gradients(net, params, x, y, masks)
    assert per_sample.mean() == pytest.approx(loss.item(), rel=1e-12)
    for (gw, gb), (tw, tb) in zip(grads, tp):
        np.testing.assert_allclose(gw, tw.grad.numpy(), rtol=1e-9, atol=1e-13)
        np.testing.assert_allclose(gb, tb.grad.numpy(), rtol=1e-9, atol=1e-13)
    np.testing.assert_allclose(e, tx.grad.numpy(), rtol=1e-9, atol=1e-13)
    # the per-sample input gradient (row i: dJ_i/dx_i) is n times the batch mean's
    np.testing.assert_allclose(nstep.input_gradient(net, params, x, y, masks), tx.grad.numpy() * len(x), rtol=1e-9,
                               atol=1e-13)


def test_conv_net_gradients_match_finite_differences():
    model = conv_model("ceil", "tanh", channels=(3, 4), hidden=(6,))
    rng = np.random.default_rng(5)
    raw = fresh(model, 5)
    params = [(raw[w] * 30 + rng.normal(0, 0.3, raw[w].shape), rng.normal(0, 0.1, raw[b].shape))
              for w, b in architecture(model).layer_names()]
    x, y = data(4, seed=6)
    net = nstep.make_net(nl, model)

    def mean_loss():
        return net.loss(nl, nstep.forward(net, params, x)[1], y, want_grad=False)[0].mean()

    _, grads, e = nstep.gradients(net, params, x, y)
    for li in (0, 1, 2):
        w = params[li][0]
        for k in range(0, w.size, max(1, w.size // 5)):
            idx = np.unravel_index(k, w.shape)
            assert_matches_central_difference(mean_loss, w, idx, grads[li][0][idx])
    for idx in [(0, 0), (1, 77), (3, 191)]:
        assert_matches_central_difference(mean_loss, x, idx, e[idx])


def test_input_gradient_pass_computes_no_weight_gradients_in_a_conv_net():
    model = conv_model()
    params = [(w.copy(), b.copy()) for w, b in nstep_params(model)]
    x, y = data(5)
    ops = CountingOps(nl)
    net = nstep.make_net(ops, model)

    def weight_gradients():
        return ops.calls["matmul_tn"] + ops.calls["sub_matmul_tn_"] + ops.calls["conv2d_grad_params"]

    nstep.input_gradient(net, params, x, y)
    assert weight_gradients() == 0 and ops.calls["conv2d_grad_input"] == 2
    nstep.train_step(net, nstep.make_plan(TrainConfig(method="adversarial", eps=0.1, lr=0.1)), params, x, y,
                     velocity=[None] * len(params))
    assert weight_gradients() == len(params)  # only the pass on z computes weight gradients


def nstep_params(model, seed=0):
    raw = fresh(model, seed)
    return [(raw[w], raw[b]) for w, b in architecture(model).layer_names()]


# ------------------------------------------------------------------------------- dropout masks


def test_dropout_masks_rate_scaling_and_keys():
    sites = [((1000, 50), 0.1), ((1000, 4, 3, 3), 0.25), ((1000, 20), 0.0), ((1000, 30), 0.5)]
    a = DropoutMasks(7, 2, 10).masks(3, sites)
    b = DropoutMasks(7, 2, 0).masks(13, sites)  # the same step of the epoch, from another block split
    assert a[2] is None
    for (shape, rate), ka, kb in zip(sites, a, b):
        if rate:
            assert ka.shape == shape and ka.dtype == np.bool_ and np.array_equal(ka, kb)
            assert abs(ka.mean() - (1 - rate)) < 0.01
            m = np_masks([ka], [(shape, rate)])[0]
            assert set(np.unique(m)) <= {0.0, 1 / (1 - rate)}  # inverted dropout: mean 1 at training time
    other = DropoutMasks(7, 3, 10).masks(3, sites)  # another epoch
    assert not np.array_equal(a[0], other[0])


def test_evaluation_uses_no_dropout():
    model = conv_model()
    x, y = data(8)
    step = TrainConfig(dropout_input=0.5, dropout_conv=0.5, dropout_fc=0.5)
    for name in ("numpy", "torch"):
        net = load_backend(name)(model, dtype="float64", device="cpu")
        net.set_params(fresh(model))
        ref = nstep.forward(nstep.make_net(nl, model), nstep_params(model), x)[1]
        np.testing.assert_allclose(net.logits(net.asarray(x)), ref, atol=1e-12)
        with pytest.raises(ValueError, match="mask source"):
            net.train_steps(net.asarray(x), net.asarray(y, labels=True), np.arange(8)[None], step)


@pytest.mark.parametrize("adv_dropout", ["same", "off"])
def test_adversarial_step_with_dropout_is_algorithm_1_with_the_chosen_masks(adv_dropout):
    """train_step = input gradient (with the training masks, or none) -> z -> learn from z with the masks."""
    model = conv_model()
    x, y = data(10)
    spec = TrainConfig(method="adversarial", eps=0.05, lr=0.1, dropout_input=0.1, dropout_conv=0.25, dropout_fc=0.5,
                       adv_dropout=adv_dropout)
    sites = dropout_sites(architecture(model), spec, len(x))
    masks = np_masks(DropoutMasks(0, 0).masks(0, sites), sites)
    net, plan = nstep.make_net(nl, model), nstep.make_plan(spec)
    got = nstep_params(model)
    nstep.train_step(net, plan, got, x, y, masks, [None] * len(got))
    want = nstep_params(model)
    e = nstep.input_gradient(net, want, x, y, masks if adv_dropout == "same" else None)
    z = nstep.fgsm_perturb(nl, x, e, spec.eps, None)
    nstep.learn_from(net, plan, want, z, y, masks, [None] * len(want))
    for (a, b), (c, d) in zip(got, want):
        assert np.array_equal(a, c) and np.array_equal(b, d)
    other = nstep_params(model)
    flipped = spec.model_copy(update={"adv_dropout": "off" if adv_dropout == "same" else "same"})
    nstep.train_step(net, nstep.make_plan(flipped), other, x, y, masks, [None] * len(other))
    assert max(np.abs(a - c).max() for (a, _), (c, _) in zip(got, other)) > 1e-8  # the option matters


# --------------------------------------------------------------------------- numpy vs torch, step by step

SPECS = {
    "conv-adv-dropout-momentum-wd-maxnorm": (
        dict(), dict(method="adversarial", eps=0.05, lr=0.1, dropout_input=0.1, dropout_conv=0.25, dropout_fc=0.5,
                     momentum=0.9, weight_decay=0.001, max_norm=0.6)),
    "conv-adv-dropout-off-a05": (
        dict(mode="pad1"), dict(method="adversarial", eps=0.05, lr=0.1, adv_weight=0.5, dropout_input=0.2,
                                dropout_conv=[0.25, 0.5], dropout_fc=[0.5, 0.3], adv_dropout="off", momentum=0.5,
                                dampening=0.5)),
    "conv-backprop-tanh-valid": (
        dict(mode="valid", activation="tanh"), dict(method="backprop", lr=0.2, momentum=0.9, max_norm=0.5)),
    "mlp-adv-dropout-maxnorm": (
        None, dict(method="adversarial", eps=0.03, lr=0.1, dropout_input=0.1, dropout_fc=0.5, max_norm=0.3)),
}


@pytest.mark.parametrize("case", list(SPECS))
def test_every_backend_agrees_with_numpy_step_by_step(case, other_backend):
    margs, targs = SPECS[case]
    model = conv_model(**margs) if margs is not None else ModelConfig(input_size=192, hidden=[40, 30],
                                                                       output="softmax_ce", init_std=0.1)
    spec = TrainConfig(**targs)
    x, y = data(100)
    nets = {}
    for name in ("numpy", other_backend):
        nets[name] = load_backend(name)(model, dtype="float64", device="cpu")
        nets[name].set_params(fresh(model))
    block = next(epoch_blocks(0, 0, len(x), 5))
    for k in range(20):
        out = {}
        for name, net in nets.items():
            errors = np.zeros(1, np.int64)
            loss = net.train_steps(net.asarray(x), net.asarray(y, labels=True), block[k : k + 1], spec,
                                   masks=DropoutMasks(0, 0, k), errors=errors)
            out[name] = (net.get_params(), loss, errors, net.get_optimizer_state())
        (pn, ln, en, vn), (pt, lt, et, vt) = out["numpy"], out[other_backend]
        assert max_diff(pn, pt) < 1e-9, f"step {k + 1}"
        assert abs(ln[0] - lt[0]) < 1e-9 and en[0] == et[0]
        if spec.momentum:
            assert max_diff(vn, vt) < 1e-9 and sorted(vn) == sorted(f"momentum.{p}" for p in pn)
        else:
            assert vn == {} and vt == {}
    assert max_diff(out["numpy"][0], fresh(model)) > 1e-3  # the steps did something
    if spec.max_norm:
        for name, w in out["numpy"][0].items():
            if name.endswith("weight"):
                norms = np.sqrt((w * w).sum(axis=0 if w.ndim == 2 else (1, 2, 3)))
                assert norms.max() <= spec.max_norm * (1 + 1e-12)


def test_float32_conv_backprop_stays_within_its_rounding_bound_of_the_float64_run():
    """Both backends' float32 runs against the exact (float64) one, so a float32-only fault shared by both is caught.
    The bound follows the probabilistic rounding model of test_parity_float32 (a K-term float32 sum is within
    lambda sqrt(K) u of exact, errors of independent sums add like a random walk): STEPS updates whose longest
    reduction has K terms (the first conv's weight gradient: batch x height x width) move a weight of size |w| by at
    most lambda sqrt(STEPS K) u |w|, and momentum m carries an error into later steps with total weight 1 / (1 - m).
    Measured: 4e-8 (numpy), 5e-8 (torch) against a bound of about 1e-4; the two backends differ by 4e-8."""
    model = conv_model()
    spec = TrainConfig(method="backprop", lr=0.1, momentum=0.9, weight_decay=0.001, dropout_conv=0.25)
    x, y = data(100)
    steps, batch = 10, 10
    block = next(epoch_blocks(0, 0, len(x), batch))
    got = {}
    for name, dtype in (("numpy", "float32"), ("torch", "float32"), ("numpy", "float64")):
        net = load_backend(name)(model, dtype=dtype, device="cpu")
        net.set_params(fresh(model))
        net.train_steps(net.asarray(x), net.asarray(y, labels=True), block, spec, masks=DropoutMasks(0, 0))
        got[name, dtype] = net.get_params()
    exact = got["numpy", "float64"]
    assert got["numpy", "float32"]["conv.0.weight"].dtype == np.float32
    K = batch * model.input_shape[1] * model.input_shape[2]
    w_max = max(np.abs(w).max() for w in exact.values())
    bound = 5.0 * np.sqrt(steps * K) * 2.0 ** -24 * w_max / (1 - spec.momentum)
    assert max_diff(exact, fresh(model)) > 1000 * bound  # the steps moved the weights far more than the bound
    for name in ("numpy", "torch"):
        assert max_diff(got[name, "float32"], exact) < bound, name


def test_block_split_does_not_change_the_masks():
    """Masks are keyed by the step of the epoch, so one block of 12 steps = blocks of 5 + 7 with offsets."""
    model = conv_model()
    spec = TrainConfig(method="adversarial", eps=0.05, lr=0.1, dropout_input=0.1, dropout_conv=0.25, dropout_fc=0.5,
                       momentum=0.9)
    x, y = data(60)
    block = next(epoch_blocks(3, 1, len(x), 5))
    a = load_backend("numpy")(model, dtype="float64")
    a.set_params(fresh(model))
    a.train_steps(x, y, block, spec, masks=DropoutMasks(3, 1, 0))
    b = load_backend("numpy")(model, dtype="float64")
    b.set_params(fresh(model))
    b.train_steps(x, y, block[:5], spec, masks=DropoutMasks(3, 1, 0))
    b.train_steps(x, y, block[5:], spec, masks=DropoutMasks(3, 1, 5))
    pa, pb = a.get_params(), b.get_params()
    assert all(np.array_equal(pa[k], pb[k]) for k in pa)


# ------------------------------------------------------------------------------------------- optimizer


@pytest.mark.parametrize("momentum,dampening,wd", [(0.9, 0.0, 0.001), (0.9, 0.9, 0.01), (0.0, 0.0, 0.1)])
def test_optimizer_is_torch_sgd_with_weight_decay_on_weights_only(momentum, dampening, wd):
    """Our update against torch.optim.SGD (weights in a group with weight_decay, biases in one without), over a
    sequence of gradients with a learning-rate halving in the middle."""
    rng = np.random.default_rng(8)
    w0, b0 = rng.normal(size=(6, 4)), rng.normal(size=4)
    tw, tb = torch.tensor(w0, requires_grad=True), torch.tensor(b0, requires_grad=True)
    opt = torch.optim.SGD([{"params": [tw], "weight_decay": wd}, {"params": [tb], "weight_decay": 0.0}], lr=0.5,
                          momentum=momentum, dampening=dampening)
    params = [(w0.copy(), b0.copy())]
    velocity = [None]
    for k in range(6):
        lr = 0.5 if k < 3 else 0.25
        for group in opt.param_groups:
            group["lr"] = lr
        gw, gb = rng.normal(size=w0.shape), rng.normal(size=b0.shape)
        tw.grad, tb.grad = torch.tensor(gw), torch.tensor(gb)
        opt.step()
        nstep.optimizer_update(nl, nstep.make_plan(TrainConfig(lr=lr, momentum=momentum, dampening=dampening,
                                                               weight_decay=wd)), params, 0, gw, gb, velocity)
        np.testing.assert_allclose(params[0][0], tw.detach().numpy(), rtol=1e-13, atol=1e-13)
        np.testing.assert_allclose(params[0][1], tb.detach().numpy(), rtol=1e-13, atol=1e-13)


def test_weight_decay_leaves_biases_alone_and_max_norm_caps_each_unit():
    w = np.array([[3.0, 0.1], [4.0, 0.1]])  # column norms 5 and ~0.14
    b = np.array([1.0, 2.0])
    params = [(w, b)]
    nstep.optimizer_update(nl, nstep.make_plan(TrainConfig(lr=0.5, weight_decay=0.1, max_norm=2.0)), params, 0,
                           np.zeros_like(w), np.zeros_like(b), [None])
    assert np.array_equal(b, [1.0, 2.0])
    np.testing.assert_allclose(w[:, 0], np.array([3.0, 4.0]) * 0.95 * 2.0 / (5 * 0.95))  # decayed, then capped at 2
    np.testing.assert_allclose(w[:, 1], np.array([0.1, 0.1]) * 0.95)  # decayed only
    cw = np.ones((2, 3, 2, 2))  # conv: one filter (3x2x2 = 12 weights, norm sqrt(12)) per output channel
    cw[1] *= 0.1
    nl.max_norm_(cw, 1.0)
    np.testing.assert_allclose(np.sqrt((cw[0] ** 2).sum()), 1.0)
    np.testing.assert_allclose(cw[1], 0.1)
    tcw = torch.ones((2, 3, 2, 2), dtype=torch.float64)
    tcw[1] *= 0.1
    tl.max_norm_(tcw, 1.0)
    np.testing.assert_array_equal(tcw.numpy(), cw)


# --------------------------------------------------------------------------------------------- schedule


def _dfa_torch(errors, max_halvings=8, stop=0.0001, lr=0.5):
    """Main.lua's loop (epoch_step 0), transcribed: errors are fractions. Returns (lr per epoch, stop epoch)."""
    train_err_mean, decay_count, lrs = 1.0, 0, []
    for epoch, err in enumerate(errors, 1):
        lrs.append(lr)
        train_err_mean = 0.75 * train_err_mean + 0.25 * err
        if decay_count >= max_halvings or train_err_mean <= stop:
            return lrs, epoch
        elif err >= train_err_mean:
            lr, decay_count = lr / 2, decay_count + 1
    return lrs, None


def test_schedule_is_dfa_torchs_rule():
    from advbp_cli.schedule import ScheduleState, after_epoch

    rng = np.random.default_rng(9)
    for trial in range(20):
        errors = list(np.clip(0.6 * 0.9 ** np.arange(80) + rng.normal(0, 0.02, 80), 0, 1))
        if trial == 0:
            errors = [0.5, 0.3, 0.1, 0.01, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0] + [0.0] * 30
        want_lrs, want_stop = _dfa_torch(errors)
        cfg = TrainConfig(lr=0.5, schedule="halve_on_plateau")
        state, lrs, stop = ScheduleState.start(cfg), [], None
        for epoch, err in enumerate(errors, 1):
            lrs.append(state.lr)
            state = after_epoch(state, cfg, 100 * err)
            state = ScheduleState.from_json(state.to_json(), "test")  # the checkpoint round trip is exact
            if state.stop_reason:
                stop = epoch
                break
        assert lrs == want_lrs and stop == want_stop
    assert after_epoch(ScheduleState(0.5), TrainConfig(), 50.0) == ScheduleState(0.5)  # constant


# ------------------------------------------------------------------------- trainer: resume, parity, stop

TINY_MODEL = {"arch": "conv", "input_shape": [4, 14, 14], "conv_channels": [3, 4], "hidden": [16],
              "output": "softmax_ce", "init_std": 0.1}
TINY_TRAIN = {"method": "adversarial", "eps": 0.05, "lr": 0.2, "batch_size": 16, "epochs": 5,
              "dropout_input": 0.1, "dropout_conv": 0.25, "dropout_fc": 0.5, "momentum": 0.9, "weight_decay": 0.001,
              "max_norm": 1.0, "schedule": "halve_on_plateau", "mean_last": 2}


@pytest.fixture
def fake_data(monkeypatch):
    """A small random 'data set' of 784-feature images (4x14x14) given to the trainer instead of the real loader."""
    from advbp_cli import trainer
    from advbp_cli.data import Split

    rng = np.random.default_rng(11)
    x = rng.normal(size=(120, 784))
    y = rng.integers(0, 3, 120)  # learnable-ish: 3 classes, the class shifts the mean of one channel
    x[:, :196] += y[:, None] * 0.8

    def load_splits(data_cfg, dtype, data_dir, download=True, log=print):
        return (Split("train", x[:96].astype(dtype), y[:96], np.arange(96), "train"),
                Split("test", x[96:].astype(dtype), y[96:], np.arange(96, 120), "test"))

    monkeypatch.setattr(trainer, "load_splits", load_splits)


def _cfg(backend="numpy", dtype="float32", **train):
    return RunConfig.model_validate({"model": TINY_MODEL, "train": {**TINY_TRAIN, **train},
                                     "runtime": {"backend": backend, "dtype": dtype, "device": "cpu", "seed": 4}})


def _train(cfg, path, resume=False):
    from advbp_cli.rundir import RunDir
    from advbp_cli.trainer import train

    run = RunDir(path)
    run.path.mkdir(parents=True, exist_ok=True)
    return train(cfg, run, path, resume=resume)


class Crash(BaseException):
    pass


def _rows(path):
    from advbp_cli.rundir import RunDir

    return [{k: v for k, v in r.items() if k not in ("seconds", "train_seconds")} for r in RunDir(path).read_metrics()]


def test_resume_after_a_crash_is_bit_exact_with_momentum_schedule_and_dropout(fake_data, tmp_path, monkeypatch):
    from advbp_cli import trainer
    from advbp_cli.checkpoint import read_checkpoint

    cfg = _cfg(lr=0.5, epochs=12)  # m starts at 100 %: the first halving comes after epoch 10 here
    ref = _train(cfg, tmp_path / "ref")
    rows = _rows(tmp_path / "ref")
    assert len({r["lr"] for r in rows}) > 1, "the schedule never halved: the test would not cover its state"
    real = trainer.save_checkpoint
    for crash_at in (4, 11):  # before and after the halving
        def dying(path, params, config, epoch, *a, _n=crash_at, **kw):
            if epoch == _n:
                raise Crash
            return real(path, params, config, epoch, *a, **kw)

        monkeypatch.setattr(trainer, "save_checkpoint", dying)
        run = tmp_path / f"crash{crash_at}"
        with pytest.raises(Crash):
            _train(cfg, run)
        monkeypatch.setattr(trainer, "save_checkpoint", real)
        tensors, meta = read_checkpoint(run / "checkpoint.safetensors")
        assert any(k.startswith("momentum.conv.0") for k in tensors) and json.loads(meta["schedule"])["lr"] > 0
        got = _train(cfg, run, resume=True)
        a, b = read_checkpoint(run / "checkpoint.safetensors"), read_checkpoint(tmp_path / "ref" / "checkpoint.safetensors")
        assert sorted(a[0]) == sorted(b[0])
        for k in b[0]:
            assert np.array_equal(a[0][k], b[0][k]), k  # weights and momentum buffers, bit for bit
        assert a[1]["schedule"] == b[1]["schedule"]
        assert _rows(run) == rows
        assert got["headline"] == ref["headline"] and got["stopped"] == ref["stopped"]


def test_trainer_numpy_and_torch_agree_in_float64_with_the_schedule(fake_data, tmp_path):
    from advbp_cli.checkpoint import read_checkpoint

    out = {}
    for backend in ("numpy", "torch"):
        _train(_cfg(backend, "float64", epochs=3, lr=0.3), tmp_path / backend)
        out[backend] = (read_checkpoint(tmp_path / backend / "checkpoint.safetensors"), _rows(tmp_path / backend))
    (tn, mn), rn = out["numpy"]
    (tt, mt), rt = out["torch"]
    assert max_diff(tn, tt) < 1e-9
    assert [r["lr"] for r in rn] == [r["lr"] for r in rt]
    assert [r["train_pass_error"] for r in rn] == [r["train_pass_error"] for r in rt]


def test_the_schedule_stops_a_run_normally_and_says_why(fake_data, tmp_path):
    from advbp_cli.networks import load_network

    summary = _train(_cfg(max_halvings=0, epochs=5), tmp_path / "run")
    assert summary["epochs_completed"] == 1 and "max_halvings" in summary["stopped"]
    # resuming a stopped run trains nothing more
    again = _train(_cfg(max_halvings=0, epochs=9), tmp_path / "run", resume=True)
    assert again["epochs_completed"] == 1 and again["stopped"] == summary["stopped"]
    # the checkpoint, momentum buffers and all, loads for evaluation
    net, cfg, _, _ = load_network(tmp_path / "run", backend="torch")
    assert cfg.model.arch == "conv" and net.logits(net.asarray(np.zeros((2, 784)))).shape == (2, 10)
    plain = _train(_cfg(epochs=2, schedule="constant"), tmp_path / "plain")
    assert plain["stopped"].startswith("the epoch cap") and "lr" not in _rows(tmp_path / "plain")[0]


def test_checkpoints_written_before_conv_layers_still_match_their_config(tmp_path):
    from advbp_cli.checkpoint import check_same_record
    from advbp_cli.config import RunConfig

    model = ModelConfig(hidden=[20])
    old = {k: v for k, v in model.model_dump(mode="json").items()
           if k in ("input_size", "hidden", "activation", "output", "num_classes", "init_std")}
    # an old record fills the conv fields with their defaults and matches the run it came from ...
    check_same_record(tmp_path / "c", {"config": json.dumps({"model": old})}, RunConfig(model=model), "config.json")
    # ... and is still compared field by field: a changed field of the old record is refused, naming it
    from advbp_cli.errors import UsageProblem

    with pytest.raises(UsageProblem, match=r"model.hidden=\[21\]"):
        check_same_record(tmp_path / "c", {"config": json.dumps({"model": old | {"hidden": [21]}})},
                          RunConfig(model=model), "config.json")
