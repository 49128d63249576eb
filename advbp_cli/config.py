"""The run configuration: pydantic models with the paper's MNIST settings as defaults.

A preset (presets/*.toml) names only what differs from these defaults. Every CLI override is validated here,
and a validation error is turned into one line naming the option the user typed (`one_line`). The command-line
options themselves are generated from these models (advbp_cli/commands/config_options.py): a field's
description is its --help text, `json_schema_extra={"paper": ...}` the paper's value shown beside the default,
and a `Choices` marker (or a Literal) its accepted values.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Callable, Literal, Optional, Union

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic_core import core_schema

from .backends import architecture, available_backends
from .data.registry import DEFAULT_DATASET, dataset_names, get_dataset
from .errors import UsageProblem
from .threads import parse_threads


@dataclass(frozen=True)
class Choices:
    """Field metadata: the accepted values come from a registry function, so click's choices, --help and the
    validation follow the registry (a Literal would be a second list to keep in step). `what` names the kind of
    value in the error: "unknown backend 'x' (accepted: numpy, torch)"."""

    values: Callable[[], list[str]]
    what: str

    def check(self, v: str) -> str:
        if v not in self.values():
            raise ValueError(f"unknown {self.what} {v!r} (accepted: {', '.join(self.values())})")
        return v

    def __get_pydantic_core_schema__(self, source, handler):
        # the marker validates too: the field's type, then membership of the registry at validation time
        return core_schema.no_info_after_validator_function(self.check, handler(source))


def _paper(text: str) -> dict:
    return {"paper": text}


class _Strict(BaseModel):
    # NaN and Inf are refused for every float (an infinite --lr or --eps can only diverge)
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


class ModelConfig(_Strict):
    input_size: int = Field(get_dataset(DEFAULT_DATASET).features, gt=0,
                            description="flattened input size (follows data.dataset when left out)")
    hidden: list[int] = Field([400, 400], min_length=1, description="sizes of the hidden (fully connected) layers",
                              json_schema_extra=_paper("MNIST 400,400 / 800,800 / 1200,1200; CIFAR-10 3000,3000 "
                                                       "or, after the conv layers, 2048,2048"))
    activation: Literal["logistic", "tanh", "relu"] = Field("relu", description="the hidden units' nonlinearity")
    output: Literal["sigmoid_bce", "softmax_ce"] = Field(
        "sigmoid_bce", description="sigmoid units + binary cross-entropy (paper, MNIST) or softmax + cross-entropy"
    )
    num_classes: int = Field(10, gt=1, description="number of output units (classes)")
    init_std: float = Field(0.01, gt=0, description="weights ~ N(0, init_std^2), biases 0",
                            json_schema_extra=_paper("0.01"))
    # The convolutional network (arch = "conv"; see backends/__init__.py for the conventions). `hidden` is then the
    # fully connected layers after the conv stack.
    arch: Literal["mlp", "conv"] = Field("mlp", description="mlp: fully connected; conv: conv blocks, then `hidden`")
    input_shape: Optional[tuple[int, int, int]] = Field(
        None, description="(C, H, W) of an image; flat inputs are in this order. Required for arch conv; "
        "input_size = C*H*W (filled in when left out)")
    conv_channels: list[int] = Field([96, 128, 256], min_length=1, description="filters of each conv layer")
    conv_kernel: int = Field(5, gt=0, description="k x k convolution, stride 1, zero padding k // 2 (odd k)")
    pool_size: int = Field(3, gt=0, description="max pooling window after every conv layer")
    pool_stride: int = Field(2, gt=0, description="stride of the max pooling")
    pool_mode: Literal["ceil", "pad1", "valid"] = Field(
        "ceil", description="ceil: cuda-convnet's pooling (Srivastava et al. 2014), 32->16->8->4; pad1: pad 1 that "
        "never wins, floor, also 32->16->8->4; valid: no padding (dfa-torch), 32->15->7->3")

    @field_validator("hidden", "conv_channels")
    @classmethod
    def _positive_sizes(cls, v):
        if any(h <= 0 for h in v):
            raise ValueError("every layer size must be a positive integer")
        return v

    @model_validator(mode="before")
    @classmethod
    def _input_size_from_shape(cls, values):
        shape = values.get("input_shape") if isinstance(values, dict) else None
        if isinstance(shape, (list, tuple)) and "input_size" not in values and len(shape) == 3 and \
                all(isinstance(d, int) for d in shape):
            values = {**values, "input_size": shape[0] * shape[1] * shape[2]}
        return values

    @model_validator(mode="after")
    def _conv_geometry(self):
        if self.input_shape is not None:
            c, h, w = self.input_shape
            if min(c, h, w) <= 0:
                raise ValueError(f"input_shape must be positive (got {list(self.input_shape)})")
            if c * h * w != self.input_size:
                raise ValueError(f"input_shape {list(self.input_shape)} has {c * h * w} values but input_size is "
                                 f"{self.input_size}")
        if self.arch == "conv":
            if self.input_shape is None:
                raise ValueError("arch conv needs input_shape = [C, H, W]")
            if self.conv_kernel % 2 == 0:
                raise ValueError(f"conv_kernel must be odd for 'same' padding (got {self.conv_kernel})")
            sizes = [(h, w)] + [s[1:] for s in architecture(self).conv_outputs()]
            if min(min(s) for s in sizes) <= 0:
                raise ValueError(f"the images are too small for {len(self.conv_channels)} poolings of "
                                 f"{self.pool_size}x{self.pool_size}/{self.pool_stride} ({self.pool_mode}): "
                                 f"sizes {[list(s) for s in sizes]}")
        return self


class TrainConfig(_Strict):
    method: Literal["backprop", "adversarial"] = Field(
        "adversarial", description="backprop: plain back-propagation; adversarial: Algorithm 1, learn from "
        "z = x + eps sign(dJ/dx)")
    eps: float = Field(0.08, ge=0, description="FGSM step size of the adversarial perturbation",
                       json_schema_extra=_paper("MNIST 0.08; CIFAR-10 2x3000 0.03, CONV 0.01"))
    adv_weight: float = Field(
        0.0, ge=0, le=1, description="a in a*J(x) + (1-a)*J(z) (Goodfellow et al. 2014: 0.5)",
        json_schema_extra=_paper("0"))
    clip: Optional[tuple[float, float]] = Field(None, description="clip z to [lo, hi]; the paper does not clip")
    lr: float = Field(0.05, gt=0, description="learning rate: step = lr x mean gradient over the mini-batch",
                      json_schema_extra=_paper("MNIST logistic 0.5, tanh 0.01, ReLU 0.05; CIFAR-10 2x3000 0.1, "
                                               "CONV 0.5"))
    batch_size: int = Field(10, gt=0, description="mini-batch size", json_schema_extra=_paper("MNIST 10, CIFAR-10 128"))
    epochs: int = Field(150, gt=0, description="number of epochs (the halving schedule may stop earlier)",
                        json_schema_extra=_paper("MNIST 150, CIFAR-10 at most 300"))
    mean_last: int = Field(10, gt=0, description="the headline is the mean eval error of the last N epochs",
                           json_schema_extra=_paper("MNIST 10; CIFAR-10 the final epoch (1)"))
    # CIFAR-10 (Table 3) settings; every one is off by default, which is the MNIST protocol.
    dropout_input: float = Field(0.0, ge=0, lt=1, description="dropout rate on the input",
                                 json_schema_extra=_paper("CIFAR-10 with dropout 0.1"))
    dropout_conv: Union[float, list[float]] = Field(
        0.0, description="dropout rate after each conv block (after pooling); one rate or one per conv layer",
        json_schema_extra=_paper("CIFAR-10 CONV with dropout 0.25"))
    dropout_fc: Union[float, list[float]] = Field(
        0.0, description="dropout rate after each hidden fully connected layer; one rate or one per layer",
        json_schema_extra=_paper("CIFAR-10 with dropout 0.5"))
    adv_dropout: Literal["same", "off"] = Field(
        "same", description="dropout while computing the adversarial perturbation: same = the masks of the "
        "training pass (dfa-torch keeps training mode); off = no dropout in that pass")
    momentum: float = Field(0.0, ge=0, lt=1, description="torch.optim.SGD form: v = m v + (1 - dampening) g; "
                            "w -= lr v (v = g at the first step)", json_schema_extra=_paper("CIFAR-10 CONV 0.9"))
    dampening: float = Field(0.0, ge=0, le=1, description="momentum dampening (PyTorch default 0; Torch7's "
                             "optim.sgd, the author's framework, defaults to dampening = momentum)")
    weight_decay: float = Field(0.0, ge=0, description="L2: weight_decay * w added to the weight gradients "
                                "(not the biases) before momentum", json_schema_extra=_paper("CIFAR-10 CONV 0.001"))
    max_norm: Optional[float] = Field(None, gt=0, description="after every update, scale each unit's incoming "
                                      "weight vector (every layer, output included) back to this L2 norm",
                                      json_schema_extra=_paper("CIFAR-10 4"))
    schedule: Literal["constant", "halve_on_plateau"] = Field(
        "constant", description="halve_on_plateau (paper, CIFAR-10; dfa-torch's rule): m = 0.75 m + 0.25 "
        "train_error after each epoch (m starts at 100 %); halve lr whenever train_error >= m; stop after "
        "max_halvings halvings or when m <= stop_train_error")
    schedule_error: Literal["train_pass", "train_clean"] = Field(
        "train_pass", description="the training error the schedule watches: train_pass = the error of the "
        "mini-batches as they were learned from (on z, with dropout; dfa-torch); train_clean = the clean training "
        "error measured after the epoch (needs eval_train_error)")
    max_halvings: int = Field(8, ge=0, description="halve_on_plateau stops after this many halvings",
                              json_schema_extra=_paper("8"))
    stop_train_error: float = Field(0.01, ge=0, description="halve_on_plateau stops when the smoothed training "
                                    "error m (percent) is at most this", json_schema_extra=_paper("0.01"))

    @field_validator("dropout_conv", "dropout_fc")
    @classmethod
    def _rates(cls, v):
        for r in v if isinstance(v, list) else [v]:
            if not 0 <= r < 1:
                raise ValueError(f"dropout rates must be in [0, 1) (got {r})")
        return v

    @field_validator("clip")
    @classmethod
    def _ordered(cls, v):
        if v is not None and not v[0] < v[1]:
            raise ValueError("clip needs lo < hi")
        return v


def _dataset_help() -> str:
    return "the data set: " + "; ".join(f"{n}, {get_dataset(n).description}" for n in dataset_names())


class DataConfig(_Strict):
    # the accepted names are the data set registry's (advbp_cli/data/registry.py), as the backends' are theirs
    dataset: Annotated[str, Choices(dataset_names, "data set")] = Field(DEFAULT_DATASET, description=_dataset_help())
    eval_split: Literal["test", "validation"] = Field(
        "test",
        description="test: train on the whole training set (MNIST 60k, CIFAR-10 50k), evaluate on the 10k test set; "
        "validation: train on all but the last 10k training images, evaluate on those 10k",
    )
    preprocess: Literal["scale01", "simple", "zca"] = Field(
        "scale01",
        description="fitted on the training split only: scale01 = x/255; simple = (x - mean) / std with one scalar "
        "mean and std over every training pixel; zca = ZCA whitening of x/255 (cached on disk)",
    )
    zca_epsilon: float = Field(
        0.01, gt=0, description="added to the covariance eigenvalues of x/255 before whitening (preprocess zca)"
    )
    train_limit: Optional[int] = Field(None, gt=0, description="use only the first N training images")
    eval_limit: Optional[int] = Field(None, gt=0, description="use only the first N evaluation images")
    eval_train_error: bool = Field(True, description="measure the clean training error after every epoch")


class RuntimeConfig(_Strict):
    backend: Annotated[str, Choices(available_backends, "backend")] = Field(
        "torch", description="arithmetic backend (numpy: the reference; torch: CPU or CUDA)")
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="torch device (auto: cuda when available)")
    dtype: Literal["float32", "float64"] = Field("float32", description="floating-point type of the arithmetic")
    seed: int = Field(0, ge=0, description="seeds the initial weights, the batch order and the dropout masks")
    tf32: bool = Field(False, description="allow TF32 matmuls on CUDA (changes results; off by default)")
    # The check travels with the type (not a model validator), so a flag, --set and a config file all get it.
    threads: Annotated[Union[Literal["auto"], int], BeforeValidator(parse_threads)] = Field(
        "auto", description="CPU threads of the arithmetic (torch intra-op and BLAS): a positive integer, or auto "
        "(one for small steps such as MNIST at batch 10, else this run's share of the CPUs; see advbp_cli/threads.py)")

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

    @model_validator(mode="before")
    @classmethod
    def _input_size_follows_dataset(cls, values):
        # model.input_size left out: it follows the data set (so `--dataset cifar10` alone gives 3072 inputs)
        if isinstance(values, dict) and isinstance(values.get("data"), dict):
            name = values["data"].get("dataset")
            model = values.get("model", {})
            # an unknown name is left to DataConfig's own check, which names the accepted ones
            if name in dataset_names() and isinstance(model, dict) and "input_size" not in model:
                values = {**values, "model": {**model, "input_size": get_dataset(name).features}}
        return values

    @model_validator(mode="after")
    def _training_fits_the_model(self):
        m, t = self.model, self.train
        n_conv = len(m.conv_channels) if m.arch == "conv" else 0
        for name, n, what in (("dropout_conv", n_conv, "conv layers"), ("dropout_fc", len(m.hidden), "hidden layers")):
            v = getattr(t, name)
            if isinstance(v, list) and len(v) != n:
                raise ValueError(f"train.{name} has {len(v)} rates but the model has {n} {what}")
        if t.schedule == "halve_on_plateau" and t.schedule_error == "train_clean" and not self.data.eval_train_error:
            raise ValueError("schedule_error train_clean needs the clean training error (data.eval_train_error)")
        return self

    @model_validator(mode="after")
    def _input_size_matches_dataset(self):
        spec = get_dataset(self.data.dataset)
        n = spec.features
        if self.model.input_size != n:
            raise ValueError(f"model.input_size is {self.model.input_size}, but {self.data.dataset} images have {n} "
                             f"features; set input_size = {n} (or leave it out) in the model section")
        k = spec.classes
        if self.model.num_classes != k:
            raise ValueError(f"model.num_classes is {self.model.num_classes}, but {self.data.dataset} has {k} classes "
                             f"(labels 0-{k - 1}); use --num-classes {k}")
        return self


def option_name(section: str, field: str) -> str:
    """The command-line flag of a config field: train.adv_weight -> --adv-weight (the generator's rule)."""
    return "--" + field.replace("_", "-")


def one_line(err: ValidationError, source: str, origin: dict | None = None) -> str:
    """The first validation error as one line naming where the value came from: the option the user typed
    (`origin`: (section, field) -> "--eps" or "--set train.eps"), else the field (a preset's, a run's)."""
    e = err.errors()[0]
    loc = tuple(str(p) for p in e["loc"] if not isinstance(p, int))
    origin = origin or {}
    where = origin.get(loc[:2]) or ".".join(loc) or "config"
    if loc[:2] not in origin and len(loc) >= 2 and loc[0] in ("model", "train", "data", "runtime"):
        where = f"{option_name(loc[0], loc[1])} ({where})"  # from a preset or a run's config: its flag and its field
    msg = e["msg"].removeprefix("Value error, ")
    if len(loc) == 1:  # a whole section's check (e.g. conv geometry): name the options of that section given
        given = [o for key, o in origin.items() if key[:1] == loc[:1]]
        if given:
            where = f"{'/'.join(given)} ({loc[0]} settings)"
    if not loc:  # a check across sections names its fields in the message: name the options that set them
        given = [o for key, o in origin.items() if f"{key[0]}.{key[1]}" in msg]
        where = "/".join(given) if given else "the config"
    got = e.get("input")
    got_txt = "" if isinstance(got, dict) else f" (got {got!r})"
    return f"invalid value for {where}{f' in {source}' if source else ''}: {msg}{got_txt}"


def deep_merge(base: dict, override: dict) -> dict:
    out = dict(base)
    for k, v in override.items():
        out[k] = deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def build_config(preset_values: dict, overrides: dict, source: str = "options", origin: dict | None = None) -> RunConfig:
    """Defaults <- preset <- command-line overrides, validated as one RunConfig. `origin` maps (section, field) to
    the option that set it, for the error message."""
    try:
        return RunConfig.model_validate(deep_merge(preset_values, overrides))
    except ValidationError as err:
        raise UsageProblem(one_line(err, source, origin)) from None
