"""`advbp presets`: the presets named after the paper's table rows, and the groups for `advbp sweep`. Prints what
advbp_cli.catalog gathers."""

from __future__ import annotations

import click

from ..catalog import listing, resolved
from .common import emit_json, json_option
from .tables import is_plain, plain_option, print_table


@click.group("presets", invoke_without_command=True)
@plain_option
@json_option
@click.pass_context
def presets_cmd(ctx, plain, as_json):
    """List presets with the paper's reported error beside each, and the groups `advbp sweep` takes."""
    if ctx.invoked_subcommand is not None:
        return
    found = listing()
    if as_json:
        emit_json(found)
        return
    table = []
    for r in found["presets"]:
        err = "-" if r["paper_error"] is None else f"{r['paper_error']:.2f}" + (f" ± {r['paper_std']:.2f}" if r["paper_std"] else "")
        table.append([r["name"], err, (r["paper_source"] or "-").split(" (")[0], ",".join(r["groups"]) or "-"])
    print_table(["preset", "paper error % (5 runs)", "source", "groups (advbp sweep GROUP)"], table,
                plain=is_plain(plain), no_wrap=("preset",))


@presets_cmd.command("show")
@click.argument("name")
@click.option("--all", "show_all", is_flag=True, help="Also the fields and notes that do not apply to this preset.")
@json_option
def show_cmd(name, show_all, as_json):
    """The resolved config of a preset (the fields that apply to it), its paper number, and where the paper is silent."""
    r = resolved(name, show_all)
    if as_json:
        emit_json({k: r[k] for k in ("name", "description", "note", "paper", "config", "not_applicable",
                                     "paper_silent")})
        return
    click.echo(f"{name}: {r['description'] or ''}")
    paper = r["paper"]
    if paper:
        std = f" ± {paper['std']}" if paper.get("std") is not None else ""
        click.echo(f"paper: {paper['error']}{std} % ({paper.get('source', '')})")
    if r["note"]:
        click.echo(f"note: {' '.join(r['note'].split())}")
    for section, values in r["shown"].items():
        click.echo(f"[{section}]")
        for k, v in values.items():
            click.echo(f"  {k} = {v!r}")
    if r["not_applicable"]:
        click.echo(f"(not shown, off for this preset: {', '.join(r['not_applicable'])}; --all shows them)")
    click.echo("where the paper is silent (advbp's choice):")
    for key, note in r["paper_silent"].items():
        click.echo(f"  {key}: {note}")
