"""Whether a run follows the paper's protocol for its preset, so that its headline may be set beside the paper's
number. A 3-epoch smoke run on 10 000 images is not a worse reproduction of a 150-epoch row, it is another
experiment: its headline says which protocol ran and no difference to the paper is computed.

The paper's protocol is the preset's resolved config in everything that decides what is computed: the model,
the training settings (epochs, eps, lr, ...) and the data (data set, evaluation split, no training or evaluation
limit, preprocessing). The runtime section (backend, device, dtype, seed, threads, ...) and whether the clean
training error is measured only say where and how the same experiment runs.
"""

from __future__ import annotations

from . import presets
from .config import RunConfig, build_config
from .data.registry import get_dataset

# Fields outside the runtime section that do not change what a run computes.
NOT_PROTOCOL = {("data", "eval_train_error")}


def _differences(cfg: RunConfig, paper: RunConfig) -> list[str]:
    have, want = cfg.model_dump(mode="json"), paper.model_dump(mode="json")
    out = []
    for section in ("model", "train", "data"):
        for key, value in want[section].items():
            if (section, key) not in NOT_PROTOCOL and have[section][key] != value:
                out.append(f"{section}.{key} {_text(have[section][key])} (paper: {_text(value)})")
    return out


def _text(v) -> str:
    if v is None:
        return "none"
    if isinstance(v, list):
        return ",".join(map(str, v))
    return str(v)


def describe(cfg: RunConfig) -> str:
    """The protocol in words: "150 epochs on all 60000 training images, test error on all 10000 images"."""
    d = cfg.data
    spec = get_dataset(d.dataset)
    n_train, n_eval = spec.training_images(d.eval_split), spec.eval_images(d.eval_split)
    train = f"the first {d.train_limit} of {n_train}" if d.train_limit and d.train_limit < n_train else f"all {n_train}"
    ev = f"the first {d.eval_limit} of {n_eval}" if d.eval_limit and d.eval_limit < n_eval else f"all {n_eval}"
    epochs = f"{cfg.train.epochs} epoch{'s' if cfg.train.epochs != 1 else ''}"
    return f"{epochs} on {train} training images, {d.eval_split} error on {ev} images"


def paper_protocol(cfg: RunConfig) -> dict:
    """{"paper": bool, "protocol": words, "paper_protocol": words or None, "differences": [...]}. Only a run of a
    preset with a paper number can follow the paper's protocol; `differences` lists each field that departs
    from it ("train.epochs 3 (paper: 150)")."""
    out = {"paper": False, "protocol": describe(cfg), "paper_protocol": None, "differences": []}
    if not cfg.preset or cfg.preset not in presets.preset_names():
        out["differences"] = ["no preset: a custom config has no row in the paper"]
        return out
    preset = presets.load_preset(cfg.preset)
    if not (preset.get("paper") or {}).get("error"):
        out["differences"] = [f"the paper reports no number for {cfg.preset}"]
        return out
    reference = build_config({"preset": cfg.preset, **presets.config_values(preset)}, {}, source=f"preset {cfg.preset}")
    out["paper_protocol"] = describe(reference)
    out["differences"] = _differences(cfg, reference)
    out["paper"] = not out["differences"]
    return out


def not_comparable_note(p: dict) -> str:
    """One phrase for a headline whose run does not follow the paper's protocol."""
    if p["paper_protocol"] is None:
        why = f" ({p['differences'][0]})" if p["differences"] else ""
        return f"protocol: {p['protocol']}{why}, so no paper comparison"
    if p["protocol"] != p["paper_protocol"]:
        return f"protocol: {p['protocol']}, not the paper's ({p['paper_protocol']}), so no paper comparison"
    more = " ..." if len(p["differences"]) > 3 else ""
    return (f"protocol: {p['protocol']} as in the paper, but not the paper's network or training "
            f"({', '.join(p['differences'][:3])}{more}), so no paper comparison")
