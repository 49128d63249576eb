"""Checkpoints: safetensors files (named arrays, no pickle) with the run's config in the metadata, so a
checkpoint alone is enough to rebuild and evaluate its network with any backend."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from .errors import UsageProblem
from .files import atomic_path

FORMAT = "advbp-checkpoint/1"


OPTIMIZER_PREFIX = "momentum."  # momentum buffers travel in the checkpoint as `momentum.<parameter name>`


def expected_shapes(model_cfg) -> dict[str, tuple[int, ...]]:
    """Parameter names and shapes: conv.i.weight (out, in, k, k) and conv.i.bias for a conv net's conv layers,
    then layers.i.weight (fan_in, fan_out) and layers.i.bias (see backends.Architecture)."""
    from .backends import architecture

    return architecture(model_cfg).param_shapes()


def split_optimizer_state(tensors: dict[str, np.ndarray]) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """(parameters, optimizer state) of a checkpoint's tensors."""
    params = {k: v for k, v in tensors.items() if not k.startswith(OPTIMIZER_PREFIX)}
    state = {k: v for k, v in tensors.items() if k.startswith(OPTIMIZER_PREFIX)}
    return params, state


def save_checkpoint(path: Path, params: dict[str, np.ndarray], config_dict: dict, epoch: int, extra=None) -> None:
    from safetensors.numpy import save_file

    meta = {"format": FORMAT, "config": json.dumps(config_dict), "epoch": str(epoch)}
    meta.update({k: str(v) for k, v in (extra or {}).items()})
    with atomic_path(path) as tmp:
        save_file({k: np.ascontiguousarray(v) for k, v in params.items()}, str(tmp), metadata=meta)


def read_checkpoint(path: Path) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Tensors and metadata, without pickle; any unreadable file is a UsageProblem, not a traceback."""
    from safetensors import safe_open

    try:
        tensors = {}
        with safe_open(str(path), framework="numpy") as fh:
            meta = fh.metadata() or {}
            for key in fh.keys():
                tensors[key] = fh.get_tensor(key)
    except FileNotFoundError:
        raise UsageProblem(f"checkpoint {path} does not exist") from None
    except Exception as exc:  # safetensors raises its own error types for malformed headers and data
        raise UsageProblem(f"{path} is not a readable safetensors checkpoint ({type(exc).__name__}: {exc})") from None
    if meta.get("format") != FORMAT:
        raise UsageProblem(f"{path} is not an advbp checkpoint (metadata format is {meta.get('format')!r}, expected {FORMAT!r})")
    epoch = meta.get("epoch", "0")
    if not (epoch.isascii() and epoch.isdigit()):
        raise UsageProblem(f"{path} is not a valid advbp checkpoint (metadata epoch is {epoch!r}, expected a whole number)")
    return tensors, meta


def check_same_model(path: Path, meta: dict[str, str], model_cfg, config_origin: str) -> None:
    """The architecture recorded in the checkpoint must be the one in the run's config.json: a checkpoint copied
    in from another run (e.g. same sizes but another activation) is refused instead of silently misused."""
    try:
        saved = json.loads(meta.get("config", "")).get("model")
    except (json.JSONDecodeError, AttributeError):
        raise UsageProblem(f"checkpoint {path} carries no readable config in its metadata") from None
    want = model_cfg.model_dump(mode="json")
    if not isinstance(saved, dict):
        raise UsageProblem(f"checkpoint {path} carries no model config in its metadata")
    # fields added since the checkpoint was written (e.g. arch) count as their defaults
    saved = {**type(model_cfg).model_construct().model_dump(mode="json"), **saved}
    diff = sorted(k for k in set(want) | set(saved) if saved.get(k) != want.get(k))
    if diff:
        k = diff[0]
        raise UsageProblem(
            f"checkpoint {path} was trained with {k}={saved.get(k)!r} but {config_origin} says {k}={want.get(k)!r}: "
            "the checkpoint belongs to another run"
        )


def check_params(path: Path, params: dict[str, np.ndarray], model_cfg) -> None:
    """The tensors must be exactly the ones the config's architecture needs, with float dtypes; momentum buffers
    (`momentum.<name>`) may come along, one per parameter with its shape, for all parameters or none."""
    want = expected_shapes(model_cfg)
    params, state = split_optimizer_state(params)
    if state:
        want_state = {OPTIMIZER_PREFIX + k: v for k, v in want.items()}
        missing = sorted(set(want_state) - set(state))
        extra = sorted(set(state) - set(want_state))
        if missing or extra:
            raise UsageProblem(f"checkpoint {path} has incomplete momentum buffers: missing {missing or 'none'}, "
                               f"unexpected {extra or 'none'}")
        want = {**want, **want_state}
        params = {**params, **state}
    missing = sorted(set(want) - set(params))
    extra = sorted(set(params) - set(want))
    if missing or extra:
        conv = (f"conv {'-'.join(map(str, model_cfg.conv_channels))} + "
                if getattr(model_cfg, "arch", "mlp") == "conv" else "")
        raise UsageProblem(
            f"checkpoint {path} does not fit a {conv}{model_cfg.input_size}-{'-'.join(map(str, model_cfg.hidden))}-"
            f"{model_cfg.num_classes} network: missing {missing or 'none'}, unexpected {extra or 'none'}"
        )
    for name, shape in want.items():
        arr = params[name]
        if tuple(arr.shape) != shape:
            raise UsageProblem(
                f"checkpoint {path}: {name} has shape {tuple(arr.shape)}, but the config's architecture "
                f"(hidden {model_cfg.hidden}) needs {shape}: a checkpoint of another architecture?"
            )
        if arr.dtype not in (np.float32, np.float64):
            raise UsageProblem(f"checkpoint {path}: {name} has dtype {arr.dtype}, expected float32 or float64")
        if not np.isfinite(arr).all():
            raise UsageProblem(f"checkpoint {path}: {name} holds NaN or Inf")
