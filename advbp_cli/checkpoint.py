"""Checkpoints: safetensors files (named arrays, no pickle) with the run's config in the metadata, so a
checkpoint alone is enough to rebuild and evaluate its network with any backend."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from .errors import UsageProblem
from .files import atomic_path

FORMAT = "advbp-checkpoint/1"


def expected_shapes(model_cfg) -> dict[str, tuple[int, ...]]:
    sizes = [model_cfg.input_size, *model_cfg.hidden, model_cfg.num_classes]
    shapes = {}
    for i, (fan_in, fan_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        shapes[f"layers.{i}.weight"] = (fan_in, fan_out)
        shapes[f"layers.{i}.bias"] = (fan_out,)
    return shapes


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
    diff = sorted(k for k in set(want) | set(saved) if saved.get(k) != want.get(k))
    if diff:
        k = diff[0]
        raise UsageProblem(
            f"checkpoint {path} was trained with {k}={saved.get(k)!r} but {config_origin} says {k}={want.get(k)!r}: "
            "the checkpoint belongs to another run"
        )


def check_params(path: Path, params: dict[str, np.ndarray], model_cfg) -> None:
    """The tensors must be exactly the ones the config's architecture needs, with float dtypes."""
    want = expected_shapes(model_cfg)
    missing = sorted(set(want) - set(params))
    extra = sorted(set(params) - set(want))
    if missing or extra:
        raise UsageProblem(
            f"checkpoint {path} does not fit a {model_cfg.input_size}-{'-'.join(map(str, model_cfg.hidden))}-"
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
