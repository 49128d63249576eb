"""Options and helpers shared by several commands."""

from __future__ import annotations

import json

import click

from ..errors import UsageProblem


def data_dir_option(f):
    return click.option(
        "--data-dir",
        type=click.Path(file_okay=False),
        default=None,
        help="Folder holding mnist/ (default: $ADVBP_DATA_DIR, then ~/.cache/advbp).",
    )(f)


class ThreadsParam(click.ParamType):
    """`--threads N|auto`: "auto" or a positive integer (advbp_cli.threads.parse_threads)."""

    name = "N|auto"

    def convert(self, value, param, ctx):
        from ..threads import EXPECTED, parse_threads

        try:
            return parse_threads(value)
        except ValueError:
            self.fail(f"{value!r} ({EXPECTED})", param, ctx)


class WorkersParam(click.ParamType):
    """`advbp sweep --workers N|auto`."""

    name = "N|auto"

    def convert(self, value, param, ctx):
        from ..parallel import parse_workers

        try:
            return parse_workers(value)
        except ValueError as exc:
            self.fail(f"{value!r} ({exc})", param, ctx)


THREADS_HELP = ("CPU threads for the arithmetic (torch and BLAS): N, or auto (default): one thread for small "
                "steps (MNIST at batch 10), else this process's share of the CPUs.")


def threads_option(f):
    """--threads for commands that compute without a run config of their own (eval, attack, report)."""
    return click.option("--threads", type=ThreadsParam(), default="auto", show_default=True, metavar="N|auto",
                        help="CPU threads for the arithmetic (torch and BLAS): N, or auto: all usable CPUs "
                             "(capped by OMP_NUM_THREADS when it is set).")(f)


def apply_command_threads(setting) -> int:
    """Applies --threads of eval/attack/report before any arithmetic; returns the count."""
    from ..threads import apply_threads, resolve_for_evaluation

    n = resolve_for_evaluation(setting)
    apply_threads(n)
    return n


def json_option(f):
    return click.option("--json", "as_json", is_flag=True, help="Print one JSON object on stdout (for scripts).")(f)


def backend_options(f):
    f = click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default=None,
                     help="Torch device (default: the run's, else auto).")(f)
    f = click.option("--backend", type=click.Choice(["numpy", "torch"]), default=None,
                     help="Arithmetic backend (default: the run's).")(f)
    return f


def parse_int_list(value: str, option: str) -> list[int]:
    try:
        out = [int(v) for v in value.replace("x", ",").split(",") if v.strip()] if value.strip() else []
    except ValueError:
        raise UsageProblem(f"invalid value for {option}: {value!r} (expected comma-separated positive integers, e.g. 400,400)") from None
    if not out:
        raise UsageProblem(f"invalid value for {option}: {value!r} (expected comma-separated positive integers, e.g. 400,400)")
    return out


def parse_clip(value: str) -> tuple[float, float] | None:
    if value.strip().lower() in ("none", "off", ""):
        return None
    parts = value.split(",")
    try:
        if len(parts) != 2:
            raise ValueError
        return float(parts[0]), float(parts[1])
    except ValueError:
        raise UsageProblem(f"invalid value for --clip: {value!r} (expected LO,HI such as 0,1, or none)") from None


def emit_json(obj) -> None:
    click.echo(json.dumps(obj, indent=2, default=float))
