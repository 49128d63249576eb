"""`advbp train`: one network, from a preset plus overrides, into a run directory. Parses the options, draws the
progress, prints the headline; advbp_cli.launch decides and trains."""

from __future__ import annotations

import click

from ..config import RunConfig
from ..launch import plan_run, start_run
from ..protocol import not_comparable_note
from ..rundir import RunDir
from ..threads import resolve_threads
from ..trainer import Reporter
from .common import data_dir_option, emit_json, json_option, no_download_option
from .config_options import ConfigOverrides, SectionedCommand, config_options
from .progress import LiveLine, RunProgress


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
    cfg, run = plan_run(preset, resume_dir, out, config.values, config.origin)
    threads = resolve_threads(cfg.runtime.threads, cfg)
    with ProgressDisplay(cfg, run, threads.threads) as reporter:
        summary = start_run(cfg, run, data_dir, resume=bool(resume_dir), overwrite=overwrite,
                            download=not no_download, reporter=reporter, threads=threads, log=_log)
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


def _log(msg: str) -> None:
    click.echo(msg, err=True)


class ProgressDisplay:
    """The trainer's Reporter for a terminal or a log: a banner once data, network and checkpoint are loaded (so a
    failed start prints one line, its error, and nothing else), a live progress line, one line per epoch."""

    def __init__(self, cfg: RunConfig, run: RunDir, threads: int):
        self.cfg, self.run, self.threads = cfg, run, threads
        self.progress = RunProgress()
        self.display = LiveLine(self.progress.line)

    def __enter__(self) -> Reporter:
        return Reporter(start=self._start, steps=self.progress.steps, epoch_end=self._epoch_end, log=self.display.print)

    def __exit__(self, *exc) -> None:
        self.display.__exit__(None, None, None)

    def _start(self, first_epoch, epochs, steps_per_epoch):
        cfg, run = self.cfg, self.run
        self.progress.start(first_epoch, epochs, steps_per_epoch)
        self.display.print(f"advbp: training {cfg.preset or 'custom config'} ({cfg.train.method}, "
                           f"{'x'.join(map(str, cfg.model.hidden))} {cfg.model.activation}) -> {run.path} "
                           f"[{cfg.runtime.backend}, seed {cfg.runtime.seed}, {self.threads} thread(s)]")
        if first_epoch:
            self.display.print(f"resuming {run.path} after epoch {first_epoch}")
        self.display.__enter__()

    def _epoch_end(self, row):
        self.progress.epoch_end(row)
        if self.progress.finished:  # no stale progress frame after the last epoch's line
            self.display.__exit__(None, None, None)
        tr = f"train {row['train_error']:.2f}%  " if "train_error" in row else ""
        self.display.print(f"epoch {row['epoch']:>3}/{self.cfg.train.epochs}  loss {row['train_loss']:.4f}  {tr}"
                           f"{self.cfg.data.eval_split} {row['eval_error']:.2f}%  {row['seconds']:.1f}s")
