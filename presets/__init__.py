"""Presets are data: one TOML file per row of the paper's tables, naming only what differs from the defaults in
advbp_cli.config (the paper's MNIST settings). Installed as `advbp_cli.presets`; these are the few lines that
find and load them."""

from __future__ import annotations

import difflib
import tomllib
from importlib import resources

from advbp_cli.errors import UsageProblem

_SPECIAL = {"groups", "paper-gaps"}


def _folder():
    return resources.files(__name__)


def _read(name: str) -> dict:
    return tomllib.loads((_folder() / f"{name}.toml").read_text(encoding="utf-8"))


def preset_names() -> list[str]:
    names = (p.name[: -len(".toml")] for p in _folder().iterdir() if p.name.endswith(".toml"))
    return sorted(n for n in names if n not in _SPECIAL)


def groups() -> dict[str, dict]:
    return _read("groups")


def paper_gaps() -> dict[str, str]:
    return _read("paper-gaps")["gaps"]


def paper_gap_scopes() -> dict[str, dict]:
    """note key -> {"section.field": value or [values]}: the configs a note of paper_gaps() is about."""
    return _read("paper-gaps").get("scope", {})


# The keys of a preset file that describe it rather than configure the run.
DESCRIPTIVE = ("description", "note", "paper")


def load_preset(name: str) -> dict:
    """The whole preset file: `description`, an optional `note` (what a preset that is not a row of the paper is
    for), `paper` (the reported number; absent for such presets) and config sections."""
    if name not in preset_names():
        raise KeyError(name)
    return _read(name)


def config_values(preset: dict) -> dict:
    """The sections of a preset that are config (everything but the DESCRIPTIVE keys)."""
    return {k: v for k, v in preset.items() if k not in DESCRIPTIVE}


def did_you_mean(name: str, candidates) -> str:
    """" (did you mean 'x'?)" for the closest candidate, or "" when nothing is close."""
    close = difflib.get_close_matches(name, list(candidates), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def load_preset_or_explain(name: str, where: str) -> dict:
    """load_preset, or a one-line usage error naming the option, the closest preset name and where to look."""
    try:
        return load_preset(name)
    except KeyError:
        raise UsageProblem(f"invalid value for {where}: unknown preset {name!r}{did_you_mean(name, preset_names())}; "
                           "'advbp presets' lists them") from None
