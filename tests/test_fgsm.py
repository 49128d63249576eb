"""FGSM (Algorithm 1, step 3) against an independent computation with torch autograd."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from advbp_cli.backends import load_backend
from conftest import fresh, small_model


def _autograd_fgsm(params, x, y, eps, clip=None):
    tp = [(torch.tensor(params[f"layers.{i}.weight"]), torch.tensor(params[f"layers.{i}.bias"])) for i in range(3)]
    tx = torch.tensor(x, requires_grad=True)
    h = tx
    for i, (w, b) in enumerate(tp):
        h = h @ w + b
        if i < 2:
            h = torch.relu(h)
    t = torch.nn.functional.one_hot(torch.tensor(y), 10).double()
    torch.nn.functional.binary_cross_entropy_with_logits(h, t, reduction="sum").backward()
    z = tx.detach() + eps * tx.grad.sign()
    return (z.clamp(*clip) if clip else z).numpy(), tx.grad.numpy()


@pytest.mark.parametrize("backend", ["numpy", "torch"])
@pytest.mark.parametrize("clip", [None, (0.0, 1.0)])
def test_fgsm_matches_torch_autograd(mnist, backend, clip):
    model = small_model(hidden=(64, 64))
    rng = np.random.default_rng(1)
    params = {k: v * 20 + (rng.normal(0, 0.05, v.shape) if v.ndim == 2 else 0) for k, v in fresh(model, 1).items()}
    x = mnist["x_test"][:200].astype(np.float64) / 255
    y = mnist["y_test"][:200].astype(np.int64)
    net = load_backend(backend)(model, dtype="float64", device="cpu")
    net.set_params(params)
    e = net.sample_input_gradients(net.asarray(x), net.asarray(y, labels=True))
    z_ref, e_ref = _autograd_fgsm(params, x, y, 0.25, clip)
    # our e_i is sample i's own gradient dJ_i/dx_i: the gradient of the summed loss, as autograd's here
    np.testing.assert_allclose(e, e_ref, rtol=1e-9, atol=1e-15)
    from advbp_cli.backends import numpy as npo
    from advbp_cli.backends.step import fgsm_perturb

    np.testing.assert_array_equal(fgsm_perturb(npo, x, e, 0.25, clip), z_ref)
    assert (e != 0).mean() > 0.5  # a real gradient, not a vacuous comparison of zeros
