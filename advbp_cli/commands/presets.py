"""`advbp presets`: the presets named after the paper's table rows, and the groups for `advbp sweep`."""

from __future__ import annotations

import click

from .. import presets as preset_files
from ..config import build_config
from ..errors import UsageProblem
from .common import emit_json, json_option


@click.group("presets", invoke_without_command=True)
@json_option
@click.pass_context
def presets_cmd(ctx, as_json):
    """List presets with the paper's reported error beside each."""
    if ctx.invoked_subcommand is not None:
        return
    rows = []
    for name in preset_files.preset_names():
        p = preset_files.load_preset(name)
        paper = p.get("paper") or {}
        rows.append({"name": name, "description": p.get("description", ""), "paper_error": paper.get("error"),
                     "paper_std": paper.get("std"), "paper_source": paper.get("source")})
    groups = {k: v["presets"] for k, v in preset_files.groups().items()}
    if as_json:
        emit_json({"presets": rows, "groups": groups})
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title="advbp presets (paper error: test error, mean ± std over 5 runs)")
    table.add_column("preset", no_wrap=True)
    table.add_column("paper error", no_wrap=True)
    table.add_column("source")
    for r in rows:
        err = "-" if r["paper_error"] is None else f"{r['paper_error']:.2f}" + (f" ± {r['paper_std']:.2f}" if r["paper_std"] else "") + " %"
        table.add_row(r["name"], err, (r["paper_source"] or "").split(" (")[0])
    console = Console()
    console.print(table)
    for g, members in groups.items():
        console.print(f"group [bold]{g}[/bold]: {len(members)} presets")


@presets_cmd.command("show")
@click.argument("name")
@json_option
def show_cmd(name, as_json):
    """The full resolved config of a preset, its paper number, and where the paper was silent."""
    try:
        p = preset_files.load_preset(name)
    except KeyError:
        raise UsageProblem(f"invalid value for NAME: unknown preset {name!r} (see 'advbp presets' for the names)") from None
    cfg = build_config({"preset": name, **preset_files.config_values(p)}, {}, source=f"preset {name}")
    gaps = preset_files.paper_gaps()
    resolved = cfg.model_dump(mode="json")
    if as_json:
        emit_json({"name": name, "description": p.get("description"), "note": p.get("note"), "paper": p.get("paper"),
                   "config": resolved, "paper_silent": gaps})
        return
    click.echo(f"{name}: {p.get('description', '')}")
    paper = p.get("paper")
    if paper:
        std = f" ± {paper['std']}" if paper.get("std") is not None else ""
        click.echo(f"paper: {paper['error']}%{std} ({paper.get('source', '')})")
    if p.get("note"):
        click.echo(f"note: {' '.join(p['note'].split())}")
    for section, values in resolved.items():
        if isinstance(values, dict):
            click.echo(f"[{section}]")
            for k, v in values.items():
                click.echo(f"  {k} = {v!r}")
    click.echo("where the paper is silent (advbp's choice):")
    for key, note in gaps.items():
        click.echo(f"  {key}: {note}")
