"""`advbp attack` as a library call: a folder of attack sets made with one source network, one set per eps, each
with a manifest that records everything needed to make it again (advbp_cli.attack_sets has the file formats,
advbp_cli.attack_methods the attacks)."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from . import __version__, outdir
from .attack import (
    ATTACK_MASK_EPOCH,
    clip_rule,
    error_of,
    finite_inputs,
    gradient_network,
    preprocess_identity,
    split_checksum,
    zero_gradient_warning,
)
from .attack_methods import AttackParams, get_method, run_attack
from .attack_sets import DIR_MANIFEST, dequantise, quantise, write_dir_manifest, write_set
from .backends import architecture, uses_dropout
from .data.download import sha256_of
from .data.registry import get_dataset
from .data.splits import idx_writable, recorded_image_shape, split_definition
from .errors import UsageProblem, os_problem
from .model_data import load_models
from .provenance import provenance


@dataclass
class AttackRequest:
    source: str
    eps_list: list[float]
    params: AttackParams
    out: str | Path  # a str is checked for emptiness before it becomes a Path (Path("") is ".")
    split: str = "validation"
    clip: bool | None = None  # None: the pixel box where there is one (attack.clip_rule)
    fmt: str = "npz"
    limit: int | None = None
    dtype: str | None = None
    backend: str | None = None
    device: str | None = None
    threads: int | None = None
    data_dir: str | None = None
    download: bool = True
    overwrite: bool = False
    compress: bool = True


def make_attack_sets(req: AttackRequest, log: Callable = print, echo: Callable | None = None) -> dict:
    """Writes req.out as a whole (a failure or a kill leaves the old sets, or none); returns what the folder's
    manifest says plus the sets and timings. `log` gets warnings and progress, `echo` one line per set."""
    method = get_method(req.params.method)
    if req.fmt == "idx" and req.clip is False:
        raise UsageProblem("--format idx stores uint8 pixels in [0, 1] and cannot hold unclipped sets; "
                           "use --format npz with --no-clip")
    if not str(req.out).strip():
        raise UsageProblem("--out needs a folder name (got an empty string)")
    out = Path(req.out)
    # a folder advbp did not write, a file in the way, or sets already there without --overwrite: refused now
    outdir.check_writable(out, "attack", "--out", req.overwrite, what="attack sets")
    (model,) = load_models([req.source], backend=req.backend, device=req.device, dtype=req.dtype,
                           data_dir=req.data_dir, download=req.download, log=log,
                           check=lambda models: _check_source(req, models[0]))
    net, cfg = model.net, model.cfg
    data = model.split(req.split, req.limit)
    rule = clip_rule(data.preprocess, req.clip)
    if cfg.data.preprocess != "scale01":
        log(f"advbp: {cfg.data.preprocess} inputs: {rule.rule}")

    t0 = time.perf_counter()
    gnet, loss_name = gradient_network(net, cfg, req.params.loss)
    started = run_attack(req.params, gnet, data.x, data.y, req.eps_list, rule.range,
                         train_cfg=cfg if req.params.model_mode == "train" else None,
                         progress=log if method.iterative else None)
    grad_s = time.perf_counter() - t0
    if started.info.get("zero_gradient_samples"):
        log(zero_gradient_warning(started.info["zero_gradient_samples"], len(data.y), f"{loss_name} of {req.source}"))
    common = _common_manifest(req, model, data, loss_name, rule, started.info)
    sets: list[dict] = []
    with outdir.StagedWrite(out, "attack", "--out", req.overwrite, what="attack sets") as stage:
        for adv in started.sets:
            sets.append(_write_one(stage.path, out, req, method, adv, data, net, rule.range, common, echo))
        summary = {k: v for k, v in common.items() if k != "provenance"}
        summary.update(file_format=req.fmt, provenance=common["provenance"])
        try:
            write_dir_manifest(stage.path, summary, sets)
        except OSError as exc:
            raise os_problem(exc, f"write {out / DIR_MANIFEST}") from None
    return {"out": str(out), "manifest": str(out / DIR_MANIFEST), "gradient_seconds": grad_s,
            "seconds": time.perf_counter() - t0, "n": len(data.y), "split": req.split, **summary, "sets": sets}


def _check_source(req: AttackRequest, model) -> None:
    """What can be refused from the network alone, before any data is read."""
    cfg = model.cfg
    dataset, kind = cfg.data.dataset, cfg.data.preprocess
    if req.fmt == "idx" and not idx_writable(cfg):
        raise UsageProblem(f"--format idx writes uint8 MNIST images of pixels in [0, 1]; {req.source} is a {dataset} "
                           f"model with {kind} inputs, so use --format npz")
    if kind == "zca":
        clip_rule({"kind": kind}, req.clip)  # --clip is refused for ZCA inputs


def _common_manifest(req: AttackRequest, model, data, loss_name: str, rule, info: dict) -> dict:
    """The fields every set of the folder shares (the folder's manifest.json has them too)."""
    net, cfg, p = model.net, model.cfg, req.params
    kind = cfg.data.preprocess
    attack = {
        **get_method(p.method).describe(p),
        "labels": "true labels (not the model's predictions)",
        "gradient_loss": loss_name,
        "gradient_of": ("the source network's training objective" if p.loss == "model" else
                        f"{loss_name} on the source's logits"),
        "model_mode": p.model_mode,
        "model_mode_note": mode_note(cfg, p.model_mode),
        "batch_size": p.batch_size,
        "batching": "each sample's own input gradient dJ_i/dx_i (no batch mean): the batch size bounds memory only",
        "clip": list(rule.range) if rule.range else None,
        "clip_rule": rule.rule,
        "clip_units": f"the network's input units ({kind} preprocessing)",
    }
    return {
        "advbp_version": __version__,
        "attack": attack,
        "dataset": {
            "name": cfg.data.dataset,
            "split": req.split,
            "split_definition": split_definition(req.split, cfg.data),
            "source_file": data.source,
            "n": int(len(data.y)),
            "limit": req.limit,
            "checksum": split_checksum(model.raw, data),
            "checksum_of": "sha256 of the split's original uint8 pixels then uint8 labels, in index order",
            "files_sha256": dict(get_dataset(cfg.data.dataset).files_sha256),
        },
        "preprocess": data.preprocess,
        "preprocess_identity": preprocess_identity(data.preprocess),
        "input_units": ("pixels / 255" if kind == "scale01" else
                        f"{kind}-preprocessed pixels; the clean inputs are the split's images under the source "
                        "run's preprocessing, fitted on its training split"),
        "input_shape": [cfg.model.input_size],
        "image_shape": recorded_image_shape(cfg),
        "source": {
            "argument": str(req.source),
            "checkpoint": str(model.checkpoint),
            "checkpoint_sha256": sha256_of(model.checkpoint),
            "epoch": int(model.meta.get("epoch", 0)),
            "config": cfg.model_dump(mode="json"),
            "backend": net.name,
            "device": net.device,
            "dtype": net.dtype,
            "threads": req.threads,
        },
        **info,
        "provenance": provenance(("torch",)),
    }


def _write_one(stage: Path, out: Path, req: AttackRequest, method, adv, data, net, clip_range, common: dict,
               echo) -> dict:
    """One set into the staging folder; returns the folder manifest's entry (with the sha256 of the set's manifest,
    which readers check)."""
    eps, name = adv.eps, method.set_name(adv.eps)
    z = finite_inputs(adv.z, eps, "--eps")
    if req.fmt == "idx":
        q = quantise(z)
        error = error_of(net, dequantise(q, net.dtype), data.y)
        stored, extra = q, {"quantised": True,
                            "quantisation": "uint8 = round(255 z) (half to even); read back as uint8 / 255",
                            "source_error_before_quantisation": error_of(net, z, data.y)}
    else:
        error = error_of(net, z, data.y)
        stored, extra = z, {"quantised": False, "dtype": str(z.dtype)}
    manifest = {
        **{k: v for k, v in common.items() if k != "attack"},
        "attack": common["attack"],
        "eps": eps,
        "clip": list(clip_range) if clip_range else None,
        "n": int(len(data.y)),
        **adv.per_set,
        **extra,
        "source_error": error,
        "source_error_note": f"percent of this set (as stored) the source network misclassifies ({net.name}, {net.dtype})",
    }
    try:
        files = write_set(stage, name, req.fmt, stored, data.y, data.indices, manifest, compress=req.compress)
    except OSError as exc:
        raise os_problem(exc, f"write the eps {eps:g} set into {out}") from None
    if echo is not None:
        where = "unclipped" if not clip_range else f"clipped to [{clip_range[0]:.4g}, {clip_range[1]:.4g}]"
        shown = out / files.get("data", files["manifest"]).name
        echo(f"{method.name} eps {eps:<6g} {where:17s} source error {error:6.2f}%  -> {shown}")
    return {"eps": eps, "name": name, "manifest": files["manifest"].name,
            "manifest_sha256": sha256_of(files["manifest"]),
            "files": {k: p.name for k, p in files.items() if k != "manifest"}, "source_error": error}


# ------------------------------------------------------------------------------------------ what a manifest says
def mode_note(cfg, model_mode: str = "eval") -> str:
    if uses_dropout(architecture(cfg.model), cfg.train):
        if model_mode == "train":
            return (f"dropout active with the training rates; masks from seed {cfg.runtime.seed}'s dropout stream "
                    f"under epoch key {ATTACK_MASK_EPOCH} (iterative attacks: {ATTACK_MASK_EPOCH} + restart * steps "
                    "+ iteration), batch b using step b's masks")
        return ("the network was trained with (inverted) dropout; in eval mode dropout is off and the network is "
                "used as it is, as for evaluation")
    return "the network has no dropout or other mode-dependent layer: eval and train mode compute the same"
