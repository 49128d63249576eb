"""What `advbp presets` shows: every preset with the paper's number and its groups, and one preset resolved into
its full config with the notes on where the paper is silent. The command only prints these."""

from __future__ import annotations

from . import presets
from .config import RunConfig, build_config


def listing() -> dict:
    """{"presets": [{name, description, paper_error, paper_std, paper_source, groups}], "groups": {group: [names]}}"""
    groups = {k: v["presets"] for k, v in presets.groups().items()}
    rows = []
    for name in presets.preset_names():
        p = presets.load_preset(name)
        paper = p.get("paper") or {}
        rows.append({"name": name, "description": p.get("description", ""), "paper_error": paper.get("error"),
                     "paper_std": paper.get("std"), "paper_source": paper.get("source"),
                     "groups": [g for g, members in groups.items() if name in members]})
    return {"presets": rows, "groups": groups}


def resolved(name: str, show_all: bool = False) -> dict:
    """A preset's resolved config: `description`, `note` and `paper` from its file, `config` (every field), `shown`
    (by section, the fields that apply to it, or all with show_all), `not_applicable` (the others, as
    section.field), `paper_silent` (the notes that apply)."""
    p = presets.load_preset_or_explain(name, "NAME")
    cfg = build_config({"preset": name, **presets.config_values(p)}, {}, source=f"preset {name}")
    applies = _applies(cfg)
    scopes = presets.paper_gap_scopes()
    gaps = {k: v for k, v in presets.paper_gaps().items() if show_all or _note_applies(k, cfg, applies, scopes)}
    config = cfg.model_dump(mode="json")
    shown = {sec: {k: v for k, v in values.items() if show_all or applies.get((sec, k), True)}
             for sec, values in config.items() if isinstance(values, dict)}
    hidden = [f"{sec}.{k}" for sec, values in config.items() if isinstance(values, dict)
              for k in values if k not in shown[sec]]
    return {"name": name, "description": p.get("description"), "note": p.get("note"), "paper": p.get("paper"),
            "config": config, "shown": shown, "not_applicable": hidden, "paper_silent": gaps}


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
