"""`advbp eval`: error, loss and hidden-unit sparsity of a trained network on a split."""

from __future__ import annotations

import sys

import click

from ..data.mnist import load_mnist
from ..data.paths import resolve_data_dir
from ..data.splits import split_of
from ..evaluate import evaluate_arrays, hidden_sparsity
from ..networks import load_network
from .common import backend_options, data_dir_option, emit_json, json_option


@click.command("eval")
@click.argument("source", type=click.Path())
@click.option("--split", type=click.Choice(["test", "validation", "train"]), default=None,
              help="Default: the split the run evaluated on.")
@click.option("--limit", type=click.IntRange(min=1), default=None, help="Only the first N images of the split.")
@backend_options
@data_dir_option
@click.option("--no-download", is_flag=True, help="Fail instead of downloading missing data.")
@click.option("--max-error", type=click.FloatRange(min=0), default=None,
              help="Exit 1 when the error (%) is above this: a gate for CI.")
@json_option
def eval_cmd(source, split, limit, backend, device, data_dir, no_download, max_error, as_json):
    """Evaluate a run directory or checkpoint file (any backend can load any checkpoint)."""
    net, cfg, ckpt, meta = load_network(source, backend=backend, device=device)
    split = split or cfg.data.eval_split
    data_path, _ = resolve_data_dir(data_dir)
    raw = load_mnist(data_path, download=not no_download, log=lambda m: click.echo(m, err=True))
    # In a validation-mode run, `train` means the 50k the network was trained on.
    data = split_of(raw, split, cfg.data.eval_split, net.dtype, limit)
    ev = evaluate_arrays(net, data.x, data.y)
    result = {
        "source": str(source),
        "checkpoint": str(ckpt),
        "epoch": int(meta.get("epoch", 0)),
        "split": split,
        "n": ev.n,
        "error": ev.error,
        "loss": ev.loss,
        "hidden_zero_fraction": hidden_sparsity(net, data.x),
        "backend": net.name,
        "device": net.device,
    }
    if max_error is not None:
        result["max_error"] = max_error
        result["passed"] = ev.error <= max_error
    if as_json:
        emit_json(result)
    else:
        sparsity = ", ".join(f"{z * 100:.1f}%" for z in result["hidden_zero_fraction"])
        click.echo(f"{source}: {split} error {ev.error:.2f}% ({int(round(ev.error * ev.n / 100))}/{ev.n}), "
                   f"loss {ev.loss:.4f}, hidden zeros per layer [{sparsity}] [{net.name}]")
    if max_error is not None and ev.error > max_error:
        click.echo(f"FAIL: {split} error {ev.error:.2f}% is above --max-error {max_error}%", err=True)
        sys.exit(1)
