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
