"""`advbp attack`: FGSM attack sets from a trained network, one file per eps, with their provenance."""

from __future__ import annotations

import time
from pathlib import Path

import click

from .. import __version__
from ..attack import (
    LOSSES,
    error_of,
    fgsm_signs,
    gradient_network,
    parse_eps,
    perturb,
    split_checksum,
    zero_gradient_warning,
)
from ..attack_sets import (
    DIR_MANIFEST,
    IMAGE_SHAPES,
    dequantise,
    files_for,
    quantise,
    set_name,
    write_dir_manifest,
    write_set,
)
from ..data.download import sha256_of
from ..data.mnist import FILES, SHA256_GZ, load_mnist
from ..data.paths import resolve_data_dir
from ..data.splits import split_of
from ..errors import UsageProblem
from ..networks import load_network
from ..provenance import provenance
from .common import backend_options, data_dir_option, emit_json, json_option

CLIP = (0.0, 1.0)


@click.command("attack")
@click.argument("source", type=click.Path())
@click.option("--eps", "eps_values", multiple=True, required=True,
              help="FGSM step; repeat it, or give a list (0.1,0.25) or an inclusive range START:STOP:STEP (0.05:0.5:0.05).")
@click.option("--split", type=click.Choice(["validation", "test", "train"]), default="validation", show_default=True,
              help="Images to perturb (validation: the last 10k training images, the paper's choice).")
@click.option("--clip/--no-clip", default=True, show_default=True,
              help="Clip the attack images to [0, 1] (the paper does not say; --no-clip keeps x + eps*sign(e) as is).")
@click.option("--format", "fmt", type=click.Choice(["npz", "idx"]), default="npz", show_default=True,
              help="npz: float inputs exactly as computed; idx: uint8 MNIST files (pixels quantised to round(255 z)).")
@click.option("--loss", type=click.Choice(LOSSES), default="model", show_default=True,
              help="Objective whose input gradient is used: the source network's own training objective (model), "
                   "or another one on the same logits.")
@click.option("--batch-size", type=click.IntRange(min=1), default=1000, show_default=True,
              help="Samples per input-gradient computation (the signs do not depend on it, up to float rounding "
                   "of gradient components that are zero but for rounding).")
@click.option("--limit", type=click.IntRange(min=1), default=None, help="Only the first N images of the split.")
@click.option("--dtype", type=click.Choice(["float32", "float64"]), default=None,
              help="Arithmetic of the gradient and of the stored npz inputs (default: the checkpoint's).")
@backend_options
@data_dir_option
@click.option("--no-download", is_flag=True, help="Fail instead of downloading missing data.")
@click.option("--out", "out_dir", type=click.Path(file_okay=False), required=True, help="Folder for the sets.")
@click.option("--overwrite", is_flag=True, help="Write into an --out that already holds sets (same-named ones are replaced, manifest.json is rewritten).")
@click.option("--compress/--no-compress", default=True, show_default=True, help="Deflate npz files (still no pickle).")
@json_option
def attack_cmd(source, eps_values, split, clip, fmt, loss, batch_size, limit, dtype, backend, device, data_dir,
               no_download, out_dir, overwrite, compress, as_json):
    """Write FGSM attack sets z = x + eps * sign(dJ/dx) computed with SOURCE (a run directory or checkpoint).

    One set per eps, each with its perturbed inputs, true labels, the indices of the source images and a JSON
    manifest (eps, split, clipping, data checksum, the source checkpoint's sha256 and config, advbp version,
    the source's error on the set). Evaluate other models on them with `advbp eval MODEL --attack-set FILE`.
    """
    eps_list = parse_eps(eps_values)
    clip_range = CLIP if clip else None
    if fmt == "idx" and not clip:
        raise UsageProblem("--format idx stores uint8 pixels in [0, 1] and cannot hold unclipped sets; "
                           "use --format npz with --no-clip")
    if not str(out_dir).strip():
        raise UsageProblem("--out needs a folder name (got an empty string)")
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise UsageProblem(f"--out {out} exists and is not a folder")
    names = [set_name(e) for e in eps_list]
    if not overwrite:
        clash = [p for n in names for p in files_for(out, n, fmt).values() if p.exists()]
        clash += [out / DIR_MANIFEST] if (out / DIR_MANIFEST).exists() else []
        if clash:
            raise UsageProblem(f"--out {out} already holds {clash[0].name}; use --overwrite or another --out")

    net, cfg, ckpt, meta = load_network(source, backend=backend, device=device, dtype=dtype)
    if fmt == "idx" and cfg.model.input_size not in IMAGE_SHAPES:
        raise UsageProblem(f"--format idx needs 28x28 images; this model takes inputs of size {cfg.model.input_size}")
    data_path, _ = resolve_data_dir(data_dir)
    raw = load_mnist(data_path, download=not no_download, log=lambda m: click.echo(m, err=True))
    if cfg.model.input_size != raw["x_train"].shape[1]:
        raise UsageProblem(f"{source} takes inputs of size {cfg.model.input_size}, but {cfg.data.dataset} images have "
                           f"{raw['x_train'].shape[1]} pixels")
    data = split_of(raw, split, cfg.data.eval_split, net.dtype, limit)

    t0 = time.perf_counter()
    gnet, loss_name = gradient_network(net, cfg, loss)
    grads = fgsm_signs(gnet, data.x, data.y, batch_size)
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
            "model_mode": "eval",
            "model_mode_note": "the network has no dropout or other mode-dependent layer: eval and train mode compute the same",
            "batch_size": batch_size,
            "batching": "batch-mean input gradient; its sign per row equals the per-sample gradient's sign",
            "clip": list(clip_range) if clip_range else None,
        },
        "dataset": {
            "name": cfg.data.dataset,
            "split": split,
            "split_definition": _split_definition(split, cfg.data.eval_split),
            "source_file": data.source,
            "n": int(len(data.y)),
            "limit": limit,
            "checksum": split_checksum(raw, data),
            "checksum_of": "sha256 of the split's original uint8 pixels then uint8 labels, in index order",
            "files_sha256": {f"{name}.gz": SHA256_GZ[name] for name in FILES},
        },
        "input_shape": [cfg.model.input_size],
        "image_shape": list(IMAGE_SHAPES.get(cfg.model.input_size, (cfg.model.input_size,))),
        "source": {
            "argument": str(source),
            "checkpoint": str(ckpt),
            "checkpoint_sha256": sha256_of(ckpt),
            "epoch": int(meta.get("epoch", 0)),
            "config": cfg.model_dump(mode="json"),
            "backend": net.name,
            "device": net.device,
            "dtype": net.dtype,
        },
        "zero_gradient_samples": grads.zero_samples,
        "zero_gradient_fraction": grads.zero_fraction,
        "provenance": provenance(("torch",)),
    }
    sets = []
    for eps, name in zip(eps_list, names):
        z = perturb(data.x, grads.signs, eps, clip_range)
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
            files = write_set(out, name, fmt, stored, data.y, data.indices, manifest, compress=compress)
        except OSError as exc:
            raise UsageProblem(f"cannot write the eps {eps:g} set into {out}: {exc.strerror or exc}") from None
        sets.append({"eps": eps, "name": name, "manifest": files["manifest"].name,
                     "files": {k: p.name for k, p in files.items() if k != "manifest"},
                     "source_error": error})
        if not as_json:
            click.echo(f"eps {eps:<6g} {'clipped to [0, 1]' if clip_range else 'unclipped':17s} source error "
                       f"{error:6.2f}%  -> {files.get('data', files['manifest'])}")
    summary = {k: v for k, v in common.items() if k != "provenance"}
    summary.update(file_format=fmt, provenance=common["provenance"])
    try:
        path = write_dir_manifest(out, summary, sets)
    except OSError as exc:
        raise UsageProblem(f"cannot write {out / DIR_MANIFEST}: {exc.strerror or exc}") from None
    elapsed = time.perf_counter() - t0
    if as_json:
        emit_json({"out": str(out), "manifest": str(path), "gradient_seconds": grad_s, "seconds": elapsed,
                   **summary, "sets": sets})
    else:
        click.echo(f"{len(sets)} set(s) of {len(data.y)} {split} images from {source} in {elapsed:.1f}s; "
                   f"manifest {out / DIR_MANIFEST}")


def _split_definition(split: str, eval_split: str) -> str:
    if split == "validation":
        return "training images 50000..59999 (the last 10 000)"
    if split == "test":
        return "the 10 000 test images"
    return "training images 0..49999 (the source's training data)" if eval_split == "validation" else "all 60 000 training images"
