"""Starting or resuming one training run, as `advbp train` asks: the config (defaults <- preset <- options, or the
run's own record on --resume), the data checked before anything is written, the run folder taken, then
trainer.train. The command parses options and draws progress; everything it decides lives here."""

from __future__ import annotations

from pathlib import Path

from . import presets
from .checkpoint import MAY_CHANGE
from .config import RunConfig, build_config, option_name
from .data.paths import explained, resolve_data_dir
from .data.splits import ensure_dataset
from .errors import UsageProblem
from .rundir import CONFIG, RunDir
from .threads import ThreadChoice
from .trainer import Reporter, train

# What --resume may change: the fields a checkpoint allows to differ from the run that wrote it.
RESUMABLE = frozenset(tuple(key.split(".", 1)) for key in MAY_CHANGE)


def preset_config_values(name: str | None) -> dict:
    """The preset's config sections (plus its name), or nothing without a preset."""
    if name is None:
        return {}
    return {"preset": name, **presets.config_values(presets.load_preset_or_explain(name, "--preset"))}


def plan_run(preset: str | None, resume_dir: str | None, out: str | None, values: dict,
             origin: dict) -> tuple[RunConfig, RunDir]:
    """The run's config and folder. `values`/`origin` are the command line's overrides and the option that set
    each (config_options.ConfigOverrides). Writes nothing."""
    if resume_dir:
        return _resume_config(resume_dir, preset, out, values, origin)
    cfg = build_config(preset_config_values(preset), values, origin=origin)
    out_path = Path(out) if out else Path("runs") / f"{preset or 'custom'}-seed{cfg.runtime.seed}"
    return cfg, RunDir(out_path)


def _resume_config(resume_dir: str, preset, out, values: dict, origin: dict) -> tuple[RunConfig, RunDir]:
    run = RunDir(resume_dir)
    if not run.is_run():
        raise UsageProblem(f"invalid value for --resume: {resume_dir} is not an advbp run directory (no {CONFIG})")
    if preset or out:
        raise UsageProblem("--resume continues a run as it was configured; --preset and --out cannot be given with it")
    changed = sorted(where for key, where in origin.items() if key not in RESUMABLE)
    if changed:
        raise UsageProblem(f"--resume cannot change {', '.join(changed)} "
                           f"(only {', '.join(option_name(*k) for k in sorted(RESUMABLE))})")
    record = run.read_config()
    if not isinstance(record.get("config"), dict):
        raise UsageProblem(f"{run.config_path} is not an advbp run config (it has no 'config' object)")
    cfg = build_config(record["config"], values, source=str(run.config_path), origin=origin)
    if run.is_complete() and ("train", "epochs") not in origin:
        raise UsageProblem(f"{resume_dir} is already complete ({cfg.train.epochs} epochs); give --epochs N to extend it")
    return cfg, run


def start_run(cfg: RunConfig, run: RunDir, data_dir: str | None, *, resume: bool, overwrite: bool, download: bool,
              reporter: Reporter, threads: ThreadChoice, log=print) -> dict:
    """Trains `cfg` in `run` and returns the summary. The data folder is found (data.paths) and its files checked
    before the folder is taken, so a failed start leaves no run directory behind; a folder advbp did not write is
    refused; a run that fails before its first checkpoint leaves the folder as it found it."""
    data_path, origin = resolve_data_dir(data_dir, runs=[run.path] if resume else [])
    with explained(data_path, origin):
        ensure_dataset(cfg.data.dataset, data_path, download=download, log=log)
    # locks first, so a run in progress is reported as such
    run.lock(adopt=resume, option="--resume" if resume else "--out")
    try:
        if not resume and run.is_run() and not overwrite:
            raise UsageProblem(f"--out {run.path} already holds a run; use --resume {run.path}, --overwrite, or another --out")
        if overwrite and not resume:
            run.remove_own_files()  # advbp's files of the run, never a user's
        return train(cfg, run, data_path, reporter=reporter, resume=resume, threads=threads)
    except UsageProblem:  # also a full disk or out of memory (the trainer says so in one line)
        if not run.checkpoint_path.exists():
            run.undo()  # a folder this created is removed, one that was empty is emptied again
        raise
    finally:
        run.unlock()
