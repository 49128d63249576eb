"""`advbp train`: one network, from a preset plus overrides, into a run directory."""

from __future__ import annotations

from pathlib import Path

import click

from .. import presets
from ..config import RunConfig, build_config, option_name
from ..data.paths import explained, resolve_data_dir
from ..data.splits import ensure_dataset
from ..errors import UsageProblem
from ..protocol import not_comparable_note
from ..rundir import CONFIG, RunDir
from ..threads import resolve_threads
from ..trainer import Reporter, train
from .common import data_dir_option, emit_json, json_option, no_download_option
from .config_options import ConfigOverrides, SectionedCommand, config_options
from .progress import LiveLine, RunProgress

# What may change when resuming: how many epochs, and where and on how many threads the arithmetic runs.
RESUMABLE = {("train", "epochs"), ("runtime", "backend"), ("runtime", "device"), ("runtime", "threads")}


def preset_config_values(name: str | None) -> dict:
    if name is None:
        return {}
    return {"preset": name, **presets.config_values(presets.load_preset_or_explain(name, "--preset"))}


@click.command("train", cls=SectionedCommand)
@click.option("--preset", default=None, help="A row of the paper's tables (see `advbp presets`); its values replace "
              "the defaults below, and the options below replace its values.")
@click.option("--resume", "resume_dir", type=click.Path(file_okay=False), default=None,
              help="Continue the run in this directory from its last completed epoch.")
@data_dir_option(resumes=True)
@no_download_option
@click.option("--out", type=click.Path(file_okay=False), default=None, help="Run directory (default runs/PRESET-seedN).")
@click.option("--overwrite", is_flag=True, help="Replace the advbp files of an existing run in --out.")
@json_option
@config_options()
def train_cmd(preset, resume_dir, data_dir, no_download, out, overwrite, as_json, config: ConfigOverrides):
    """Train one network with back-propagation or adversarial back-propagation.

    Every config field is an option (grouped by section below) and can also be given as --set SECTION.FIELD=VALUE.
    Defaults are the paper's MNIST settings; a --preset replaces them with its own.
    """
    if resume_dir:
        cfg, run = _resume_config(resume_dir, preset, out, config)
    else:
        cfg = build_config(preset_config_values(preset), config.values, origin=config.origin)
        out_path = Path(out) if out else Path("runs") / f"{preset or 'custom'}-seed{cfg.runtime.seed}"
        run = RunDir(out_path)
    data_path, origin = resolve_data_dir(data_dir, runs=[run.path] if resume_dir else [])
    # Data problems are found before anything is written, so a failed start leaves no run directory behind.
    with explained(data_path, origin):
        ensure_dataset(cfg.data.dataset, data_path, download=not no_download, log=_log)

    # refuses a folder advbp did not write; locks first, so a run in progress is reported as such
    run.lock(adopt=bool(resume_dir), option="--resume" if resume_dir else "--out")
    try:
        if not resume_dir and run.is_run() and not overwrite:
            raise UsageProblem(f"--out {run.path} already holds a run; use --resume {run.path}, --overwrite, or another --out")
        if overwrite and not resume_dir:
            run.remove_own_files()  # advbp's files of the run, never a user's
        summary = _train_with_display(cfg, run, data_path, resume=bool(resume_dir), as_json=as_json)
    except UsageProblem:  # also a full disk or out of memory (the trainer says so in one line)
        if not run.checkpoint_path.exists():
            run.undo()  # a folder this created is removed, one that was empty is emptied again
        raise
    finally:
        run.unlock()
    if as_json:
        emit_json({"run_dir": str(run.path), **summary})
    else:
        click.echo(headline_text(run.path, summary))


def headline_text(path, summary: dict) -> str:
    """The final line: the headline, and the paper's number only when the run followed the paper's protocol."""
    h = summary["headline"]
    text = f"{path}: {h['statistic']} = {h['value']:.3f}%"
    if h.get("final_epoch_error") is not None and summary.get("epochs_completed", 0) > 1:
        text += f" (final epoch: {h['final_epoch_error']:.2f}%)"
    paper = summary.get("paper") or {}
    if h.get("paper_protocol") and paper.get("error") is not None:
        std = f" ± {paper['std']}" if paper.get("std") is not None else ""
        return text + f"; paper ({paper.get('source', 'paper')}, same protocol): {paper['error']}{std}%"
    return f"{text}; " + not_comparable_note({"protocol": h.get("protocol"), "paper_protocol": h.get("the_papers_protocol"),
                                              "differences": h.get("differences_from_paper") or []})


def _resume_config(resume_dir: str, preset, out, config: ConfigOverrides) -> tuple[RunConfig, RunDir]:
    run = RunDir(resume_dir)
    if not run.is_run():
        raise UsageProblem(f"invalid value for --resume: {resume_dir} is not an advbp run directory (no {CONFIG})")
    if preset or out:
        raise UsageProblem("--resume continues a run as it was configured; --preset and --out cannot be given with it")
    changed = sorted(where for key, where in config.origin.items() if key not in RESUMABLE)
    if changed:
        raise UsageProblem(f"--resume cannot change {', '.join(changed)} "
                           f"(only {', '.join(option_name(*k) for k in sorted(RESUMABLE))})")
    record = run.read_config()
    if not isinstance(record.get("config"), dict):
        raise UsageProblem(f"{run.config_path} is not an advbp run config (it has no 'config' object)")
    cfg = build_config(record["config"], config.values, source=str(run.config_path), origin=config.origin)
    if run.is_complete() and ("train", "epochs") not in config.origin:
        raise UsageProblem(f"{resume_dir} is already complete ({cfg.train.epochs} epochs); give --epochs N to extend it")
    return cfg, run


def _log(msg: str) -> None:
    click.echo(msg, err=True)


def _train_with_display(cfg: RunConfig, run: RunDir, data_path: Path, resume: bool, as_json: bool) -> dict:
    progress = RunProgress()
    display = LiveLine(progress.line)
    threads = resolve_threads(cfg.runtime.threads, cfg)

    def start(first_epoch, epochs, steps_per_epoch):
        # The banner and the progress line appear only once data, network and checkpoint are loaded, so a failed
        # start prints one line (its error) and nothing else.
        progress.start(first_epoch, epochs, steps_per_epoch)
        display.print(f"advbp: training {cfg.preset or 'custom config'} ({cfg.train.method}, "
                      f"{'x'.join(map(str, cfg.model.hidden))} {cfg.model.activation}) -> {run.path} "
                      f"[{cfg.runtime.backend}, seed {cfg.runtime.seed}, {threads.threads} thread(s)]")
        if first_epoch:
            display.print(f"resuming {run.path} after epoch {first_epoch}")
        display.__enter__()

    def epoch_end(row):
        progress.epoch_end(row)
        if progress.finished:  # no stale progress frame after the last epoch's line
            display.__exit__(None, None, None)
        tr = f"train {row['train_error']:.2f}%  " if "train_error" in row else ""
        display.print(f"epoch {row['epoch']:>3}/{cfg.train.epochs}  loss {row['train_loss']:.4f}  {tr}"
                      f"{cfg.data.eval_split} {row['eval_error']:.2f}%  {row['seconds']:.1f}s")

    rep = Reporter(start=start, steps=progress.steps, epoch_end=epoch_end, log=display.print)
    try:
        return train(cfg, run, data_path, reporter=rep, resume=resume, threads=threads)
    finally:
        display.__exit__(None, None, None)
