"""The backend seam itself (issues 17, 18 and 19): backends are sibling modules of primitives with the same names,
the registry is the only list of them, the plain-SGD fast path computes what the general update computes, and an
evaluation is one forward pass per batch."""

from __future__ import annotations

import dataclasses
import inspect

import numpy as np
import pytest

from advbp_cli.backends import available_backends, backend_module, load_backend, register_backend, unregister_backend
from advbp_cli.backends import numpy as npo
from advbp_cli.backends import step
from advbp_cli.backends.network import Backend
from advbp_cli.config import ModelConfig, TrainConfig
from conftest import CountingOps, fresh, small_model


def _primitives(module) -> dict:
    return {name: f for name, f in vars(module).items()
            if callable(f) and not name.startswith("_") and getattr(f, "__module__", None) == module.__name__}


def test_every_backend_has_the_numpy_primitives_under_the_same_names():
    import wrapped_backend

    spec = _primitives(npo)
    assert {"linear", "conv2d", "max_pool", "relu_", "sign", "clip_", "sub_"} <= set(spec)
    for module in (backend_module("torch"), wrapped_backend):
        names = {n for n in vars(module) if callable(getattr(module, n)) and not n.startswith("_")}
        assert set(spec) <= names, f"{module.__name__} lacks {sorted(set(spec) - names)}"
    for name, f in _primitives(backend_module("torch")).items():  # the same parameters, so callers are portable
        assert list(inspect.signature(f).parameters) == list(inspect.signature(spec[name]).parameters), name


def test_the_registry_is_the_one_list_and_takes_new_backends():
    assert available_backends() == ["numpy", "torch"]
    register_backend("wrapped", "wrapped_backend")
    try:
        assert available_backends() == ["numpy", "torch", "wrapped"]
        net = load_backend("wrapped")(small_model(), dtype="float64")
        assert isinstance(net, Backend) and net.name == "wrapped"
        with pytest.raises(ValueError, match="already registered"):
            register_backend("wrapped", "somewhere.else")
    finally:
        unregister_backend("wrapped")
    assert "wrapped" not in available_backends()
    with pytest.raises(KeyError):
        load_backend("wrapped")


@pytest.mark.parametrize("method", ["backprop", "adversarial"])
def test_plain_sgd_fast_path_computes_the_general_update(mnist, method):
    """sgd_update folds lr/n into the output gradient and updates w <- w - x^T g in one primitive; the general
    path (forced here by a max-norm of infinity, which rescales nothing) computes the weight gradient, then
    w <- w - lr g. The same arithmetic in another order: each step rounds each weight a few times differently (lr
    folded before or after the matmul, one subtraction or a scaled one), so after 30 steps the two may differ by
    about 30 * 4 roundings of the weights' size, 120 eps |w|, no more."""
    model = small_model(hidden=(64, 32))
    net = step.make_net(npo, model)
    plan = step.make_plan(TrainConfig(method=method, eps=0.08, lr=0.05))
    general = dataclasses.replace(plan, max_norm=float("inf"))
    assert plan.plain_sgd and not general.plain_sgd
    raw = fresh(model)
    fast_p = [(raw[w].copy(), raw[b].copy()) for w, b in net.arch.layer_names()]
    gen_p = [(w.copy(), b.copy()) for w, b in fast_p]
    x, y = mnist["x_train"][:300].astype(np.float64) / 255, mnist["y_train"][:300].astype(np.int64)
    for k in range(30):
        rows = slice(10 * k, 10 * k + 10)
        loss_f, _ = step.train_step(net, plan, fast_p, x[rows], y[rows], velocity=[None] * 3)
        loss_g, _ = step.train_step(net, general, gen_p, x[rows], y[rows], velocity=[None] * 3)
        assert loss_f == pytest.approx(loss_g, rel=1e-12)
    eps = np.finfo(np.float64).eps
    for (wf, bf), (wg, bg), (wn, _) in zip(fast_p, gen_p, net.arch.layer_names()):
        assert np.abs(wf - wg).max() <= 120 * eps * np.abs(wf).max()
        assert np.abs(bf - bg).max() <= 120 * eps * np.abs(bf).max()
        assert np.abs(wf - raw[wn]).max() > 1e-4  # the steps did something


def _counting_backend(model, dtype="float64"):
    ops = CountingOps(npo)
    return Backend("numpy", ops, model, dtype=dtype), ops


@pytest.mark.parametrize("conv", [False, True])
def test_evaluation_is_one_forward_pass_per_batch(conv):
    """Error, loss and hidden-unit sparsity of a set come from one forward pass per evaluated chunk: the output
    layer runs once per chunk (counted in the primitives), and the numbers equal those of separate passes."""
    from advbp_cli import evaluate

    if conv:
        model = ModelConfig(arch="conv", input_shape=(3, 8, 8), conv_channels=[4, 5], hidden=[12, 7],
                            output="softmax_ce", init_std=0.1)
    else:
        model = small_model(hidden=(20, 10), input_size=192)
    net, ops = _counting_backend(model)
    net.set_params({k: v * 30 for k, v in fresh(model).items()} if not conv else
                   {k: np.asarray(v) for k, v in _conv_params(model).items()})
    rng = np.random.default_rng(0)
    n = 2 * evaluate.CHUNK + 7  # three evaluation chunks
    x, y = rng.normal(size=(n, 192)), rng.integers(0, 10, n)
    ev = evaluate.evaluate_arrays(net, x, y, sparsity=True)
    chunks = 3 if not conv else sum(len(net._chunks(len(x[s:s + evaluate.CHUNK])))
                                    for s in range(0, n, evaluate.CHUNK))
    assert ops.calls["linear"] == chunks * (len(model.hidden) + 1)  # each layer once per chunk: one pass
    assert ops.calls["conv2d"] == (chunks * 2 if conv else 0)
    # the same numbers as separate passes: logits for the error, the loss, the activations for the zeros
    logits = net.logits(x)
    assert ev.error == pytest.approx(100 * (logits.argmax(axis=1) != y).mean())
    losses, _ = net.net.loss(npo, logits, y, want_grad=False)
    assert ev.loss == pytest.approx(losses.mean(), rel=1e-12)
    acts = net.hidden_activations(x)
    assert ev.hidden_zero_fraction == pytest.approx([float((a == 0).mean()) for a in acts])
    assert min(ev.hidden_zero_fraction) > 0.05  # relu zeros really were counted
    assert evaluate.hidden_sparsity(net, x) == pytest.approx(ev.hidden_zero_fraction)


def _conv_params(model):
    from advbp_cli.checkpoint import expected_shapes
    from advbp_cli.rng import init_from_shapes

    return init_from_shapes(expected_shapes(model), 0.3, 0)
