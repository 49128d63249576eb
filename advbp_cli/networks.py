"""Builds a backend holding a network: fresh from a config and seed, or from a checkpoint or run directory."""

from __future__ import annotations

import json
from pathlib import Path

from .backends import backend_module, load_backend
from .checkpoint import check_params, check_same_record, expected_shapes, read_checkpoint, split_optimizer_state
from .config import RunConfig
from .errors import UsageProblem
from .rng import init_from_shapes
from .rundir import CHECKPOINT, RunDir


def build_backend(cfg: RunConfig, backend: str | None = None, device: str | None = None, dtype: str | None = None):
    """An empty backend for cfg.model; `backend`/`device`/`dtype` override the config's runtime section."""
    rt = cfg.runtime
    name = backend or rt.backend
    device = device or rt.device
    dtype = dtype or rt.dtype
    try:
        return load_backend(name)(cfg.model, dtype=dtype, device=device, tf32=rt.tf32)
    except ValueError as exc:  # e.g. --device cuda without CUDA, numpy on cuda
        raise UsageProblem(str(exc)) from None


def fresh_params(cfg: RunConfig) -> dict:
    """The paper's init, N(0, init_std^2) weights and zero biases, for any architecture (conv layers first)."""
    return init_from_shapes(expected_shapes(cfg.model), cfg.model.init_std, cfg.runtime.seed)


def load_network(source: str | Path, backend: str | None = None, device: str | None = None, dtype: str | None = None):
    """(backend with the trained weights, RunConfig, checkpoint path, checkpoint metadata) for a run directory
    or a checkpoint file. A run directory's config.json is authoritative and must fit the checkpoint."""
    source = Path(source)
    if source.is_dir():
        run = RunDir(source)
        record = run.read_config()
        ckpt = source / CHECKPOINT
        if not ckpt.is_file():
            raise UsageProblem(f"run directory {source} has no {CHECKPOINT} yet (no epoch completed)")
        cfg_dict = record.get("config", record)
        origin = str(run.config_path)
    elif source.is_file():
        ckpt = source
        cfg_dict = None
        origin = None
    else:
        if not source.exists():
            raise UsageProblem(f"{source} does not exist (expected a run directory or a checkpoint file)")
        raise UsageProblem(f"{source} is neither a run directory nor a checkpoint file")
    params, meta = read_checkpoint(ckpt)
    if cfg_dict is None:
        try:
            cfg_dict = json.loads(meta.get("config", ""))
        except json.JSONDecodeError:
            raise UsageProblem(f"checkpoint {ckpt} carries no readable config in its metadata") from None
        origin = f"{ckpt}'s metadata"
    try:
        cfg = RunConfig.model_validate(cfg_dict)
    except Exception as exc:
        raise UsageProblem(f"the config in {origin} is not valid: {str(exc).splitlines()[0]}") from None
    check_params(ckpt, params, cfg.model)
    if source.is_dir():
        check_same_record(ckpt, meta, cfg, origin)
    params, _ = split_optimizer_state(params)
    net = build_backend(cfg, backend, device, dtype or str(params["layers.0.weight"].dtype))
    net.set_params(params)
    return net, cfg, ckpt, meta


def require_device(device: str | None) -> None:
    """Fails early, before anything is printed or written, when --device cuda is asked for on a machine where
    torch sees no CUDA device (torch is imported only in that case)."""
    if device != "cuda":
        return
    try:
        backend_module("torch").device(device)
    except ValueError as exc:
        raise UsageProblem(str(exc)) from None
