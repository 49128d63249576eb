"""The backend interface: arithmetic only. Installed as `advbp_cli.backends` (see pyproject.toml).

A backend holds one network's parameters and offers a handful of verbs. Backends register by name with the
module that implements them, so nothing imports a framework it does not need: `load_backend("numpy")` never
imports torch.

Where Algorithm 1 lives (the same names in `numpy/step.py` and `torch/step.py`):
  1. forward x ......................... step.forward
  2. back-propagate to the input ....... step.backward(..., want_param_grads=False, want_input_grad=True)
  3. z = x + eps * sign(e) ............. step.fgsm_perturb
  4. forward and backward on z ......... step.forward, step.backward
  5. update weights from step 4 ........ step.sgd_update
  all five, one mini-batch ............. step.train_step
"""

from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from typing import Any, ClassVar, Protocol

import numpy as np

# name -> module that defines `BACKEND`, a Backend subclass. Imported on first use only.
_REGISTRY: dict[str, str] = {
    "numpy": "advbp_cli.backends.numpy",
    "torch": "advbp_cli.backends.torch",
}


class ModelSpec(Protocol):
    """What a backend needs to know about the network (advbp_cli.config.ModelConfig satisfies it)."""

    hidden: list[int]
    activation: str  # logistic | tanh | relu
    output: str  # sigmoid_bce | softmax_ce


class StepSpec(Protocol):
    """The hyper-parameters of one SGD step (advbp_cli.config.TrainConfig satisfies it)."""

    method: str  # backprop | adversarial
    eps: float
    adv_weight: float  # a in a*J(x) + (1-a)*J(z); 0 is the paper
    clip: tuple[float, float] | None
    lr: float


class Backend(ABC):
    """Parameters of one network plus the verbs the trainer, evaluator and attacker need.

    Arrays cross the interface as numpy arrays; `asarray` moves data into the backend once (e.g. onto the GPU)
    and the returned handle is passed back to the other verbs.
    """

    name: ClassVar[str]

    def __init__(self, model: ModelSpec, dtype: str = "float32", device: str = "cpu"):
        self.model = model
        self.dtype = dtype
        self.device = device

    @abstractmethod
    def set_params(self, params: dict[str, np.ndarray]) -> None: ...

    @abstractmethod
    def get_params(self) -> dict[str, np.ndarray]: ...

    @abstractmethod
    def asarray(self, x: np.ndarray, *, labels: bool = False) -> Any:
        """Data (float inputs, or int64 labels) in the backend's own array type, on its device."""

    @abstractmethod
    def train_steps(self, x: Any, y: Any, batches: np.ndarray, step: StepSpec) -> np.ndarray:
        """Run len(batches) SGD steps; batches[k] holds the sample indices of step k. Returns each step's loss."""

    @abstractmethod
    def logits(self, x: Any) -> np.ndarray:
        """Output-layer pre-activations for every row of x."""

    @abstractmethod
    def loss_per_sample(self, x: Any, y: Any) -> np.ndarray:
        """The training objective J of each sample (no batch mean)."""

    @abstractmethod
    def input_gradient(self, x: Any, y: Any) -> np.ndarray:
        """dJ/dx for the batch-mean objective, computing no weight gradients (Algorithm 1, step 2)."""

    @abstractmethod
    def hidden_activations(self, x: Any) -> list[np.ndarray]:
        """The output of every hidden layer, for sparsity measurements."""


def available_backends() -> list[str]:
    return list(_REGISTRY)


def load_backend(name: str) -> type[Backend]:
    if name not in _REGISTRY:
        raise KeyError(name)
    module = importlib.import_module(_REGISTRY[name])
    return module.BACKEND
