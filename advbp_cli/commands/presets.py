"""`advbp presets`: the presets named after the paper's table rows, and the groups for `advbp sweep`."""

from __future__ import annotations

import click

from .. import presets as preset_files
from ..config import RunConfig, build_config
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
    groups = {k: v["presets"] for k, v in preset_files.groups().items()}
    rows = []
    for name in preset_files.preset_names():
        p = preset_files.load_preset(name)
        paper = p.get("paper") or {}
        rows.append({"name": name, "description": p.get("description", ""), "paper_error": paper.get("error"),
                     "paper_std": paper.get("std"), "paper_source": paper.get("source"),
                     "groups": [g for g, members in groups.items() if name in members]})
    if as_json:
        emit_json({"presets": rows, "groups": groups})
        return
    table = []
    for r in rows:
        err = "-" if r["paper_error"] is None else f"{r['paper_error']:.2f}" + (f" ± {r['paper_std']:.2f}" if r["paper_std"] else "")
        table.append([r["name"], err, (r["paper_source"] or "-").split(" (")[0], ",".join(r["groups"]) or "-"])
    print_table(["preset", "paper error % (5 runs)", "source", "groups (advbp sweep GROUP)"], table,
                plain=is_plain(plain), no_wrap=("preset",))


# Fields that only mean something when another setting turns them on; `presets show` leaves them out otherwise.
def _applies(cfg: RunConfig) -> dict[tuple[str, str], bool]:
    m, t, d = cfg.model, cfg.train, cfg.data
    conv = m.arch == "conv"
    dropout = any(r for r in [t.dropout_input, *(t.dropout_fc if isinstance(t.dropout_fc, list) else [t.dropout_fc]),
                              *((t.dropout_conv if isinstance(t.dropout_conv, list) else [t.dropout_conv]) if conv else [])])
    halving = t.schedule == "halve_on_plateau"
    return {
        **{("model", k): conv for k in ("input_shape", "conv_channels", "conv_kernel", "pool_size", "pool_stride",
                                         "pool_mode")},
        **{("train", k): dropout for k in ("dropout_input", "dropout_fc", "adv_dropout")},
        ("train", "dropout_conv"): conv and dropout,
        ("train", "dampening"): t.momentum > 0,
        **{("train", k): halving for k in ("schedule_error", "max_halvings", "stop_train_error")},
        ("data", "zca_epsilon"): d.preprocess == "zca",
    }


def _note_applies(key: str, cfg: RunConfig, applies: dict, scopes: dict) -> bool:
    section, _, name = key.partition(".")
    if not applies.get((section, name), True):
        return False
    scope = scopes.get(key, {})
    return all(getattr(getattr(cfg, sec), k) in (v if isinstance(v, list) else [v])
               for sec_key, v in scope.items() for sec, _, k in [sec_key.partition(".")])


@presets_cmd.command("show")
@click.argument("name")
@click.option("--all", "show_all", is_flag=True, help="Also the fields and notes that do not apply to this preset.")
@json_option
def show_cmd(name, show_all, as_json):
    """The resolved config of a preset (the fields that apply to it), its paper number, and where the paper is silent."""
    p = preset_files.load_preset_or_explain(name, "NAME")
    cfg = build_config({"preset": name, **preset_files.config_values(p)}, {}, source=f"preset {name}")
    applies = _applies(cfg)
    scopes = preset_files.paper_gap_scopes()
    gaps = {k: v for k, v in preset_files.paper_gaps().items() if show_all or _note_applies(k, cfg, applies, scopes)}
    resolved = cfg.model_dump(mode="json")
    shown = {sec: {k: v for k, v in values.items() if show_all or applies.get((sec, k), True)}
             for sec, values in resolved.items() if isinstance(values, dict)}
    hidden = [f"{sec}.{k}" for sec, values in resolved.items() if isinstance(values, dict)
              for k in values if k not in shown[sec]]
    if as_json:
        emit_json({"name": name, "description": p.get("description"), "note": p.get("note"), "paper": p.get("paper"),
                   "config": resolved, "not_applicable": hidden, "paper_silent": gaps})
        return
    click.echo(f"{name}: {p.get('description', '')}")
    paper = p.get("paper")
    if paper:
        std = f" ± {paper['std']}" if paper.get("std") is not None else ""
        click.echo(f"paper: {paper['error']}{std} % ({paper.get('source', '')})")
    if p.get("note"):
        click.echo(f"note: {' '.join(p['note'].split())}")
    for section, values in shown.items():
        click.echo(f"[{section}]")
        for k, v in values.items():
            click.echo(f"  {k} = {v!r}")
    if hidden:
        click.echo(f"(not shown, off for this preset: {', '.join(hidden)}; --all shows them)")
    click.echo("where the paper is silent (advbp's choice):")
    for key, note in gaps.items():
        click.echo(f"  {key}: {note}")
