"""`advbp attack`: FGSM attack sets from a trained network, one file per eps, with their provenance."""

from __future__ import annotations

import time
from pathlib import Path

import click

from .. import __version__, outdir
from ..attack import (
    LOSSES,
    clip_rule,
    error_of,
    fgsm_signs,
    finite_inputs,
    gradient_network,
    parse_eps,
    perturb,
    preprocess_identity,
    split_checksum,
    TRAIN_FILE_SIZES,
    zero_gradient_warning,
)
from ..attack_sets import (
    DIR_MANIFEST,
    IMAGE_SHAPES,
    dequantise,
    quantise,
    set_name,
    write_dir_manifest,
    write_set,
)
from ..data.download import sha256_of
from ..data.paths import explained, resolve_data_dir
from ..data.splits import load_raw, preprocessor_for, split_of
from ..errors import UsageProblem, os_problem
from ..networks import load_network
from ..provenance import provenance
from .config_options import runtime_options
from .common import apply_command_threads, backend_options, data_dir_option, emit_json, explain_stray_values, json_option, no_download_option, threads_option

@click.command("attack")
@click.argument("sources", metavar="SOURCE", nargs=-1, required=True, type=click.Path())
@click.option("--eps", "eps_values", multiple=True, required=True,
              help="FGSM step; repeat it, or give a list (0.1,0.25) or an inclusive range START:STOP:STEP (0.05:0.5:0.05).")
@click.option("--split", type=click.Choice(["validation", "test", "train"]), default="validation", show_default=True,
              help="Images to perturb (validation: the last 10k training images, the paper's choice).")
@click.option("--clip/--no-clip", default=None,
              help="Clip the attack inputs to the pixel range [0, 1] as the source's preprocessing maps it: [0, 1] "
                   "(scale01), [-m/s, (255-m)/s] (simple). Default: clip, except ZCA inputs, which have no such "
                   "box and are left unclipped (--clip is refused for them). --no-clip keeps x + eps*sign(e) as is.")
@click.option("--format", "fmt", type=click.Choice(["npz", "idx"]), default="npz", show_default=True,
              help="npz: float inputs exactly as computed; idx: uint8 MNIST files (pixels quantised to round(255 z)); "
                   "MNIST scale01 runs only.")
@click.option("--loss", type=click.Choice(LOSSES), default="model", show_default=True,
              help="Objective whose input gradient is used: the source network's own training objective (model), "
                   "or another one on the same logits.")
@click.option("--batch-size", type=click.IntRange(min=1), default=1000, show_default=True,
              help="Samples per input-gradient computation: memory only. Each sample's gradient is its own (no "
                   "batch mean), so the signs do not depend on it, except a component within float rounding of "
                   "zero, whose sign can follow the matmul's summation order.")
@click.option("--limit", type=click.IntRange(min=1), default=None, help="Only the first N images of the split.")
@click.option("--model-mode", type=click.Choice(["eval", "train"]), default="eval", show_default=True,
              help="eval: dropout off, as for evaluation; train: dropout active as in training (masks from the "
                   "run's seed, one draw per batch, so they depend on --batch-size).")
@runtime_options("dtype", default_note="the checkpoint's (also the stored npz inputs' type)")
@backend_options
@threads_option
@data_dir_option(reads_runs=True)
@no_download_option
@click.option("--out", "out_dir", type=click.Path(file_okay=False), required=True, help="Folder for the sets.")
@click.option("--overwrite", is_flag=True, help="Replace the sets in --out (advbp's own files only; the folder is "
              "written as a whole, so a failure or a kill leaves the old sets).")
@click.option("--compress/--no-compress", default=True, show_default=True, help="Deflate npz files (still no pickle).")
@json_option
def attack_cmd(sources, eps_values, split, clip, fmt, loss, batch_size, limit, model_mode, dtype, backend, device,
               threads, data_dir, no_download, out_dir, overwrite, compress, as_json):
    """Write FGSM attack sets z = x + eps * sign(dJ/dx) computed with SOURCE (a run directory or checkpoint).

    One set per eps, each with its perturbed inputs, true labels, the indices of the source images and a JSON
    manifest (eps, split, clipping, data checksum, the source checkpoint's sha256 and config, advbp version,
    the source's error on the set). Evaluate other models on them with `advbp eval MODEL --attack-set FILE`.
    """
    threads = apply_command_threads(threads)
    explain_stray_values(sources[1:], "--eps", "SOURCE")
    if len(sources) > 1:
        raise UsageProblem(f"advbp attack takes one SOURCE (got {len(sources)}: {' '.join(sources)})")
    source = sources[0]
    eps_list = parse_eps(eps_values)
    if fmt == "idx" and clip is False:
        raise UsageProblem("--format idx stores uint8 pixels in [0, 1] and cannot hold unclipped sets; "
                           "use --format npz with --no-clip")
    if not str(out_dir).strip():
        raise UsageProblem("--out needs a folder name (got an empty string)")
    out = Path(out_dir)
    # a folder advbp did not write, a file in the way, or sets already there without --overwrite: refused now
    outdir.check_writable(out, "attack", "--out", overwrite, what="attack sets")
    names = [set_name(e) for e in eps_list]

    net, cfg, ckpt, meta = load_network(source, backend=backend, device=device, dtype=dtype)
    dataset, kind = cfg.data.dataset, cfg.data.preprocess
    if fmt == "idx" and (dataset != "mnist" or kind != "scale01" or cfg.model.input_size not in IMAGE_SHAPES):
        raise UsageProblem(f"--format idx writes uint8 MNIST images of pixels in [0, 1]; {source} is a {dataset} model "
                           f"with {kind} inputs, so use --format npz")
    rule = clip_rule({"kind": kind}, clip) if kind == "zca" else None  # refuse --clip for zca before loading data
    data_path, origin = resolve_data_dir(data_dir, runs=[source])
    log = lambda m: click.echo(m, err=True)  # noqa: E731
    with explained(data_path, origin):
        raw = load_raw(dataset, data_path, download=not no_download, log=log)
    if cfg.model.input_size != raw["x_train"].shape[1]:
        raise UsageProblem(f"{source} takes inputs of size {cfg.model.input_size}, but {dataset} images have "
                           f"{raw['x_train'].shape[1]} pixels")
    # the source run's own preprocessing, fitted on its training split (ZCA: read back from the cache), as `eval`
    prep = preprocessor_for(cfg.data, raw, log)
    data = split_of(raw, split, cfg.data.eval_split, net.dtype, limit, prep)
    rule = rule or clip_rule(data.preprocess, clip)
    clip_range = rule.range
    if kind != "scale01":
        log(f"advbp: {kind} inputs: {rule.rule}")

    t0 = time.perf_counter()
    gnet, loss_name = gradient_network(net, cfg, loss)
    grads = fgsm_signs(gnet, data.x, data.y, batch_size, train_mode_cfg=cfg if model_mode == "train" else None)
    grad_s = time.perf_counter() - t0
    if grads.zero_samples:
        click.echo(zero_gradient_warning(grads.zero_samples, len(data.y), f"{loss_name} of {source}"), err=True)

    common = {
        "advbp_version": __version__,
        "attack": {
            "method": "fgsm",
            "formula": "z = x + eps * sign(dJ/dx)",
            "norm": "linf",
            "labels": "true labels (not the model's predictions)",
            "gradient_loss": loss_name,
            "gradient_of": "the source network's training objective" if loss == "model" else f"{loss_name} on the source's logits",
            "model_mode": model_mode,
            "model_mode_note": _mode_note(cfg, model_mode),
            "batch_size": batch_size,
            "batching": "batch-mean input gradient; its sign per row equals the per-sample gradient's sign",
            "clip": list(clip_range) if clip_range else None,
            "clip_rule": rule.rule,
            "clip_units": f"the network's input units ({kind} preprocessing)",
        },
        "dataset": {
            "name": dataset,
            "split": split,
            "split_definition": _split_definition(split, cfg),
            "source_file": data.source,
            "n": int(len(data.y)),
            "limit": limit,
            "checksum": split_checksum(raw, data),
            "checksum_of": "sha256 of the split's original uint8 pixels then uint8 labels, in index order",
            "files_sha256": _files_sha256(dataset),
        },
        "preprocess": data.preprocess,
        "preprocess_identity": preprocess_identity(data.preprocess),
        "input_units": ("pixels / 255" if kind == "scale01" else
                        f"{kind}-preprocessed pixels; the clean inputs are the split's images under the source "
                        "run's preprocessing, fitted on its training split"),
        "input_shape": [cfg.model.input_size],
        "image_shape": _image_shape(cfg),
        "source": {
            "argument": str(source),
            "checkpoint": str(ckpt),
            "checkpoint_sha256": sha256_of(ckpt),
            "epoch": int(meta.get("epoch", 0)),
            "config": cfg.model_dump(mode="json"),
            "backend": net.name,
            "device": net.device,
            "dtype": net.dtype,
            "threads": threads,
        },
        "zero_gradient_samples": grads.zero_samples,
        "zero_gradient_fraction": grads.zero_fraction,
        "provenance": provenance(("torch",)),
    }
    sets = []
    # the folder is written as a whole: a failure or a kill leaves the old sets (or none), never a mix
    with outdir.StagedWrite(out, "attack", "--out", overwrite, what="attack sets") as stage:
        _write_sets(stage.path, out, fmt, eps_list, names, data, grads, clip_range, net, common, compress, as_json, sets)
        summary = {k: v for k, v in common.items() if k != "provenance"}
        summary.update(file_format=fmt, provenance=common["provenance"])
        try:
            write_dir_manifest(stage.path, summary, sets)
        except OSError as exc:
            raise os_problem(exc, f"write {out / DIR_MANIFEST}") from None
    path = out / DIR_MANIFEST
    elapsed = time.perf_counter() - t0
    if as_json:
        emit_json({"out": str(out), "manifest": str(path), "gradient_seconds": grad_s, "seconds": elapsed,
                   **summary, "sets": sets})
    else:
        click.echo(f"{len(sets)} set(s) of {len(data.y)} {split} images from {source} in {elapsed:.1f}s; "
                   f"manifest {out / DIR_MANIFEST}")


def _write_sets(stage: Path, out: Path, fmt, eps_list, names, data, grads, clip_range, net, common, compress, as_json,
                sets: list) -> None:
    """One set per eps into the staging folder; `sets` gets the folder manifest's entries (with the sha256 of each
    set's manifest, which readers check)."""
    for eps, name in zip(eps_list, names):
        z = finite_inputs(perturb(data.x, grads.signs, eps, clip_range), eps, "--eps")
        if fmt == "idx":
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
            **extra,
            "source_error": error,
            "source_error_note": f"percent of this set (as stored) the source network misclassifies ({net.name}, {net.dtype})",
        }
        try:
            files = write_set(stage, name, fmt, stored, data.y, data.indices, manifest, compress=compress)
        except OSError as exc:
            raise os_problem(exc, f"write the eps {eps:g} set into {out}") from None
        sets.append({"eps": eps, "name": name, "manifest": files["manifest"].name,
                     "manifest_sha256": sha256_of(files["manifest"]),
                     "files": {k: p.name for k, p in files.items() if k != "manifest"},
                     "source_error": error})
        if not as_json:
            where = "unclipped" if not clip_range else f"clipped to [{clip_range[0]:.4g}, {clip_range[1]:.4g}]"
            shown = out / files.get("data", files["manifest"]).name
            click.echo(f"eps {eps:<6g} {where:17s} source error {error:6.2f}%  -> {shown}")


def _split_definition(split: str, cfg) -> str:
    n_file = TRAIN_FILE_SIZES[cfg.data.dataset]
    if split == "validation":
        return f"training images {n_file - 10_000}..{n_file - 1} (the last 10 000)"
    if split == "test":
        return "the 10 000 test images"
    if cfg.data.eval_split == "validation":
        return f"training images 0..{n_file - 10_001} (the source's training data)"
    return f"all {n_file} training images"


def _files_sha256(dataset: str) -> dict:
    if dataset == "cifar10":
        from ..data.cifar10 import SHA256_BIN

        return {f"{name}.bin": sha for name, sha in SHA256_BIN.items()}
    from ..data.mnist import FILES, SHA256_GZ

    return {f"{name}.gz": SHA256_GZ[name] for name in FILES}


def _image_shape(cfg) -> list[int]:
    if cfg.data.dataset == "mnist" and cfg.model.input_size in IMAGE_SHAPES:  # what idx files are shaped as
        return list(IMAGE_SHAPES[cfg.model.input_size])
    if cfg.model.input_shape is not None:
        return list(cfg.model.input_shape)
    if cfg.data.dataset == "cifar10":
        return [3, 32, 32]  # (C, H, W): R, G, B planes
    return [cfg.model.input_size]


def _mode_note(cfg, model_mode: str = "eval") -> str:
    from ..attack import ATTACK_MASK_EPOCH
    from ..backends import architecture, uses_dropout

    if uses_dropout(architecture(cfg.model), cfg.train):
        if model_mode == "train":
            return (f"dropout active with the training rates; masks from seed {cfg.runtime.seed}'s dropout stream "
                    f"under epoch key {ATTACK_MASK_EPOCH}, batch b using step b's masks")
        return ("the network was trained with (inverted) dropout; in eval mode dropout is off and the network is "
                "used as it is, as for evaluation")
    return "the network has no dropout or other mode-dependent layer: eval and train mode compute the same"
