"""`advbp report`: the paper's figures (error curves, first-layer features, hidden sparsity, sweep vs paper)
from run or sweep directories, with an index.md to open and a report.json with the numbers."""

from __future__ import annotations

import shlex

import click

from ..report import INDEX, make_report
from .common import (
    apply_command_threads,
    backend_options,
    data_dir_option,
    emit_json,
    json_option,
    no_download_option,
    threads_option,
)


@click.command("report")
@click.argument("sources", nargs=-1, required=True, type=click.Path())
@click.option("--out", type=click.Path(file_okay=False), default=None,
              help="Output directory (default: SOURCE/report; required for several sources).")
@click.option("--format", "fmt", type=click.Choice(["png", "svg"]), default="png", show_default=True)
@click.option("--limit", type=click.IntRange(min=1), default=None,
              help="Figure 3 uses only the first N images of each run's eval split (as `advbp eval --limit N`).")
@click.option("--tiles", type=click.IntRange(min=1), default=100, show_default=True,
              help="First-layer units drawn per network in Figure 2.")
@click.option("--overwrite", is_flag=True, help="Replace the report in --out (advbp's own files there only).")
@backend_options
@threads_option
@data_dir_option(reads_runs=True)
@no_download_option
@json_option
def report_cmd(sources, out, fmt, limit, tiles, overwrite, backend, device, threads, data_dir, no_download, as_json):
    """Draw the paper's figures from one or more run directories or a sweep directory.

    Several runs go side by side, e.g. `advbp report runs/backprop runs/adv --out figures`.
    """
    apply_command_threads(threads)
    command = _command_line(sources, out, fmt, limit, tiles, backend, device, data_dir)
    result = make_report(list(sources), out, fmt, data_dir, limit, tiles=tiles, backend=backend, device=device,
                         download=not no_download, command=command, log=lambda m: click.echo(m, err=True),
                         overwrite=overwrite)
    out_dir = out or f"{sources[0]}/report"
    if as_json:
        emit_json({"out": out_dir, **result})
    else:
        for f in result["figures"].values():
            click.echo(f"{out_dir}/{f['file']}  ({f['width_px']}x{f['height_px']} px)")
        for s in result["sparsity"]:
            z = ", ".join(f"{v * 100:.1f}%" for v in s["hidden_zero_fraction"])
            click.echo(f"{s['label']}: hidden zeros per layer [{z}] on {s['split']} ({s['n']} images)")
        click.echo(f"open {out_dir}/{INDEX}")


def _command_line(sources, out, fmt, limit, tiles, backend, device, data_dir) -> str:
    """The command as it could be re-run (recorded in index.md and report.json)."""
    args = ["advbp", "report", *sources]
    if out:
        args += ["--out", out]
    args += ["--format", fmt]
    for opt, value, default in (("--limit", limit, None), ("--tiles", tiles, 100), ("--backend", backend, None),
                                ("--device", device, None), ("--data-dir", data_dir, None)):
        if value != default:
            args += [opt, str(value)]
    return shlex.join(args)
