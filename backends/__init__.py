"""advbp's arithmetic. Installed as `advbp_cli.backends` (see pyproject.toml).

A backend is ONE module of primitives (matmul, conv and pooling with their gradients, activations, sign, clip, the
in-place update, a few reductions): `numpy.py` is the readable specification, `torch.py` has the same functions
under the same names. Everything else is written once on top of them:

  step.py ...... Algorithm 1 (Nøkland 2015), one SGD step:
                   1. forward x ................................ step.forward
                   2. back-propagate to the input, no weights .. step.input_gradient (step.backward)
                   3. z = x + eps * sign(e) .................... step.fgsm_perturb
                   4. forward and backward on z ................ step.learn_from
                   5. update (weight decay, momentum, max-norm)  step.optimizer_update
                   one mini-batch .............................. step.train_step
  losses.py .... the two objectives and their per-sample output gradients (in numerically stable form)
  network.py ... Backend: parameters, optimizer state, chunked evaluation, dropout masks, the verbs other code calls
  layout.py .... the network's shape: Architecture, pooling geometry, dropout sites

The registry below is the only list of backends. A module is imported on first use, so `import advbp_cli` never
imports torch. `register_backend(name, module)` adds one (the tests add a float64 numpy backend behind another
array type, proving that a new backend is one module of primitives plus one registry line).
"""

from __future__ import annotations

import functools
import importlib
from types import ModuleType
from typing import Callable

from .layout import (  # noqa: F401  (re-exported: the names other code imports from here)
    Architecture,
    ModelSpec,
    StepSpec,
    architecture,
    dropout_rates,
    dropout_sites,
    pool_geometry,
    uses_dropout,
)
from .network import Backend, Evaluated, MaskSource  # noqa: F401

# name -> module of primitives
_REGISTRY: dict[str, str] = {
    "numpy": "advbp_cli.backends.numpy",
    "torch": "advbp_cli.backends.torch",
}


def available_backends() -> list[str]:
    return list(_REGISTRY)


def register_backend(name: str, module: str) -> None:
    """Registers the primitives module `module` (a dotted import path) as backend `name`."""
    if name in _REGISTRY and _REGISTRY[name] != module:
        raise ValueError(f"backend {name!r} is already registered as {_REGISTRY[name]}")
    _REGISTRY[name] = module


def unregister_backend(name: str) -> None:
    _REGISTRY.pop(name, None)


def backend_module(name: str) -> ModuleType:
    """The primitives module of backend `name`, imported now if it was not yet."""
    if name not in _REGISTRY:
        raise KeyError(name)
    return importlib.import_module(_REGISTRY[name])


def load_backend(name: str) -> Callable[..., Backend]:
    """A constructor of backend `name`: load_backend("torch")(model, dtype="float32", device="auto", tf32=False)."""
    return functools.partial(Backend, name, backend_module(name))
