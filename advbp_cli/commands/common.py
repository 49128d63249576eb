"""Options and helpers shared by several commands."""

from __future__ import annotations

import json
from pathlib import Path

import click

from ..errors import UsageProblem
from ..parallel import parse_workers
from ..threads import EXPECTED, apply_threads, parse_threads, resolve_for_evaluation
from .config_options import runtime_options

DATA_DIR_HELP = ("Folder holding the data sets: mnist/ (the four IDX files, .gz or raw) and cifar10/ (the official "
                 "batches, binary or python, or their archive). Looked up in this order: --data-dir, "
                 "$ADVBP_DATA_DIR, {run}the per-user cache ~/.cache/advbp (downloads go there).")


def data_dir_option(f=None, *, reads_runs: bool = False, resumes: bool = False):
    run = "the folder the run was trained with, " if reads_runs else ""
    run = "with --resume the folder the run was trained with, " if resumes else run
    option = click.option("--data-dir", type=click.Path(file_okay=False), default=None,
                          help=DATA_DIR_HELP.format(run=run))
    return option(f) if f is not None else option


def no_download_option(f):
    return click.option("--no-download", is_flag=True, help="Fail instead of downloading missing data.")(f)


class ThreadsParam(click.ParamType):
    """`--threads N|auto`: "auto" or a positive integer (advbp_cli.threads.parse_threads)."""

    name = "N|auto"

    def convert(self, value, param, ctx):
        try:
            return parse_threads(value)
        except ValueError:
            self.fail(f"{value!r} ({EXPECTED})", param, ctx)


class WorkersParam(click.ParamType):
    """`advbp sweep --workers N|auto`."""

    name = "N|auto"

    def convert(self, value, param, ctx):
        try:
            return parse_workers(value)
        except ValueError as exc:
            self.fail(f"{value!r} ({exc})", param, ctx)


def threads_option(f):
    """--threads for commands that compute without a run config of their own (eval, attack, report)."""
    return click.option("--threads", type=ThreadsParam(), default="auto", show_default=True, metavar="N|auto",
                        help="CPU threads for the arithmetic (torch and BLAS): N, or auto: all usable CPUs "
                             "(capped by OMP_NUM_THREADS when it is set).")(f)


def apply_command_threads(setting) -> int:
    """Applies --threads of eval/attack/report before any arithmetic; returns the count."""
    n = resolve_for_evaluation(setting)
    apply_threads(n)
    return n


def json_option(f):
    return click.option("--json", "as_json", is_flag=True, help="Print one JSON object on stdout (for scripts).")(f)


def backend_options(f):
    """--backend and --device for commands that read a run: generated from the config fields (choices from the
    backend registry), defaulting to the run's own."""
    return runtime_options("backend", "device")(f)


def explain_stray_values(args, value_option: str | None, metavar: str) -> None:
    """`advbp eval RUN --fgsm-eps 0.25 0.5` makes 0.5 a second RUN. A positional argument that does not exist
    but reads as a number, after an option that takes values, gets the value-list syntax instead of "not found"."""
    for a in args:
        if Path(a).exists():
            continue
        try:
            float(str(a).split(":")[0])
        except ValueError:
            continue
        if value_option:
            raise UsageProblem(f"{a!r} was read as a {metavar} (it does not exist): {value_option} takes one value "
                               f"each time; give several as {value_option} 0.25,0.5 or {value_option} 0.25 "
                               f"{value_option} 0.5, or a range START:STOP:STEP")
        raise UsageProblem(f"{metavar} {a} does not exist (it looks like a number: an option value without its option?)")


def emit_json(obj) -> None:
    click.echo(json.dumps(obj, indent=2, default=float))
