"""The run configuration: pydantic models with the paper's MNIST settings as defaults.

A preset (presets/*.toml) names only what differs from these defaults. Every CLI override is validated here,
and a validation error is turned into one line naming the CLI option (see `OPTION_FOR_FIELD`).
"""

from __future__ import annotations

from typing import Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .errors import UsageProblem


class _Strict(BaseModel):
    # NaN and Inf are refused for every float (an infinite --lr or --eps can only diverge)
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


class ModelConfig(_Strict):
    input_size: int = Field(784, gt=0, description="flattened input size (MNIST: 28x28)")
    hidden: list[int] = Field([400, 400], min_length=1, description="sizes of the hidden layers")
    activation: Literal["logistic", "tanh", "relu"] = "relu"
    output: Literal["sigmoid_bce", "softmax_ce"] = Field(
        "sigmoid_bce", description="sigmoid units + binary cross-entropy (paper, MNIST) or softmax + cross-entropy"
    )
    num_classes: int = Field(10, gt=1)
    init_std: float = Field(0.01, gt=0, description="weights ~ N(0, init_std^2), biases 0")

    @field_validator("hidden")
    @classmethod
    def _positive_sizes(cls, v):
        if any(h <= 0 for h in v):
            raise ValueError("every hidden size must be a positive integer")
        return v


class TrainConfig(_Strict):
    method: Literal["backprop", "adversarial"] = "adversarial"
    eps: float = Field(0.08, ge=0, description="FGSM step size of the adversarial perturbation")
    adv_weight: float = Field(
        0.0, ge=0, le=1, description="a in a*J(x) + (1-a)*J(z): 0 is the paper, 0.5 is Goodfellow et al. 2014"
    )
    clip: Optional[tuple[float, float]] = Field(None, description="clip z to [lo, hi]; the paper does not clip")
    lr: float = Field(0.05, gt=0, description="step = lr x mean gradient over the mini-batch")
    batch_size: int = Field(10, gt=0)
    epochs: int = Field(150, gt=0)
    mean_last: int = Field(10, gt=0, description="the headline is the mean eval error of the last N epochs")

    @field_validator("clip")
    @classmethod
    def _ordered(cls, v):
        if v is not None and not v[0] < v[1]:
            raise ValueError("clip needs lo < hi")
        return v


class DataConfig(_Strict):
    dataset: Literal["mnist"] = "mnist"
    eval_split: Literal["test", "validation"] = Field(
        "test",
        description="test: train on all 60k, evaluate on the 10k test set; "
        "validation: train on the first 50k, evaluate on the last 10k training images",
    )
    train_limit: Optional[int] = Field(None, gt=0, description="use only the first N training images")
    eval_limit: Optional[int] = Field(None, gt=0, description="use only the first N evaluation images")
    eval_train_error: bool = Field(True, description="measure the clean training error after every epoch")


class RuntimeConfig(_Strict):
    backend: Literal["numpy", "torch"] = "torch"
    device: Literal["auto", "cpu", "cuda"] = "auto"
    dtype: Literal["float32", "float64"] = "float32"
    seed: int = Field(0, ge=0)
    tf32: bool = Field(False, description="allow TF32 matmuls on CUDA (changes results; off by default)")

    @model_validator(mode="after")
    def _numpy_is_cpu(self):
        if self.backend == "numpy" and self.device == "cuda":
            raise ValueError("the numpy backend runs on the CPU only; use --backend torch for --device cuda")
        return self


class RunConfig(_Strict):
    preset: Optional[str] = None
    model: ModelConfig = ModelConfig()
    train: TrainConfig = TrainConfig()
    data: DataConfig = DataConfig()
    runtime: RuntimeConfig = RuntimeConfig()


# Where each config field comes from on the command line, so errors name the option the user typed.
OPTION_FOR_FIELD = {
    ("model", "hidden"): "--hidden",
    ("model", "activation"): "--activation",
    ("model", "output"): "--output",
    ("model", "init_std"): "--init-std",
    ("train", "method"): "--method",
    ("train", "eps"): "--eps",
    ("train", "adv_weight"): "--adv-weight",
    ("train", "clip"): "--clip",
    ("train", "lr"): "--lr",
    ("train", "batch_size"): "--batch-size",
    ("train", "epochs"): "--epochs",
    ("train", "mean_last"): "--mean-last",
    ("data", "eval_split"): "--eval-split",
    ("data", "train_limit"): "--train-limit",
    ("data", "eval_limit"): "--eval-limit",
    ("data", "eval_train_error"): "--eval-train-error",
    ("runtime", "backend"): "--backend",
    ("runtime", "device"): "--device",
    ("runtime", "dtype"): "--dtype",
    ("runtime", "seed"): "--seed",
    ("runtime", "tf32"): "--tf32",
}


def one_line(err: ValidationError, source: str) -> str:
    """The first validation error as one line that names the CLI option (or the preset field)."""
    e = err.errors()[0]
    loc = tuple(str(p) for p in e["loc"] if not isinstance(p, int))
    option = OPTION_FOR_FIELD.get(loc[:2]) if len(loc) >= 2 else None
    where = option or ".".join(loc) or "config"
    msg = e["msg"].removeprefix("Value error, ")
    got = e.get("input")
    got_txt = "" if isinstance(got, dict) else f" (got {got!r})"
    return f"invalid value for {where} in {source}: {msg}{got_txt}"


def deep_merge(base: dict, override: dict) -> dict:
    out = dict(base)
    for k, v in override.items():
        out[k] = deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def build_config(preset_values: dict, overrides: dict, source: str = "options") -> RunConfig:
    """Defaults <- preset <- command-line overrides, validated as one RunConfig."""
    try:
        return RunConfig.model_validate(deep_merge(preset_values, overrides))
    except ValidationError as err:
        raise UsageProblem(one_line(err, source)) from None
