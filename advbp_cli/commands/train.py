"""`advbp train`: one network, from a preset plus overrides, into a run directory."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import click

from .. import presets
from ..config import RunConfig, build_config
from ..data.splits import ensure_dataset
from ..data.paths import resolve_data_dir
from ..errors import UsageProblem
from ..rundir import CONFIG, RunDir
from .common import THREADS_HELP, ThreadsParam, data_dir_option, emit_json, json_option, parse_clip, parse_int_list

# CLI option -> (config section, field); None values mean "not given", so the preset or default stands.
OVERRIDES = {
    "hidden": ("model", "hidden"),
    "conv_channels": ("model", "conv_channels"),
    "activation": ("model", "activation"),
    "output": ("model", "output"),
    "init_std": ("model", "init_std"),
    "method": ("train", "method"),
    "eps": ("train", "eps"),
    "adv_weight": ("train", "adv_weight"),
    "clip": ("train", "clip"),
    "lr": ("train", "lr"),
    "batch_size": ("train", "batch_size"),
    "epochs": ("train", "epochs"),
    "mean_last": ("train", "mean_last"),
    "dataset": ("data", "dataset"),
    "eval_split": ("data", "eval_split"),
    "preprocess": ("data", "preprocess"),
    "zca_epsilon": ("data", "zca_epsilon"),
    "train_limit": ("data", "train_limit"),
    "eval_limit": ("data", "eval_limit"),
    "eval_train_error": ("data", "eval_train_error"),
    "backend": ("runtime", "backend"),
    "device": ("runtime", "device"),
    "dtype": ("runtime", "dtype"),
    "seed": ("runtime", "seed"),
    "tf32": ("runtime", "tf32"),
    "threads": ("runtime", "threads"),
}
# What may change when resuming: how many epochs, and where the arithmetic runs.
RESUMABLE = {"epochs", "backend", "device", "threads"}


def preset_config_values(name: str | None) -> dict:
    if name is None:
        return {}
    try:
        return {"preset": name, **presets.config_values(presets.load_preset(name))}
    except KeyError:
        raise UsageProblem(f"invalid value for --preset: unknown preset {name!r} (see 'advbp presets' for the names)") from None


def overrides_from(options: dict) -> dict:
    out: dict = {}
    for opt, (section, field) in OVERRIDES.items():
        value = options.get(opt)
        if value is None:
            continue
        if opt in ("hidden", "conv_channels"):
            value = parse_int_list(value, "--" + opt.replace("_", "-"))
        elif opt == "clip":
            value = parse_clip(value)
        out.setdefault(section, {})[field] = value
    return out


@click.command("train")
@click.option("--preset", default=None, help="A row of the paper's tables (see `advbp presets`).")
@click.option("--resume", "resume_dir", type=click.Path(file_okay=False), default=None,
              help="Continue the run in this directory from its last completed epoch.")
@click.option("--method", type=click.Choice(["backprop", "adversarial"]), default=None)
@click.option("--eps", type=float, default=None, help="FGSM perturbation size (paper: 0.08).")
@click.option("--adv-weight", type=float, default=None, help="a in a*J(x)+(1-a)*J(z); 0 is the paper.")
@click.option("--clip", default=None, help="Clip the perturbed input to LO,HI (e.g. 0,1), or none (paper).")
@click.option("--lr", type=float, default=None, help="Learning rate (step = lr x mean batch gradient).")
@click.option("--batch-size", type=int, default=None)
@click.option("--epochs", type=int, default=None)
@click.option("--mean-last", type=int, default=None, help="Headline: mean eval error of the last N epochs (10).")
@click.option("--hidden", default=None, help="Hidden layer sizes, e.g. 400,400.")
@click.option("--conv-channels", default=None,
              help="Filters of each conv layer of a conv preset, e.g. 96,128,256 (its number of conv layers).")
@click.option("--activation", type=click.Choice(["logistic", "tanh", "relu"]), default=None)
@click.option("--output", type=click.Choice(["sigmoid_bce", "softmax_ce"]), default=None)
@click.option("--init-std", type=float, default=None)
@click.option("--dataset", type=click.Choice(["mnist", "cifar10"]), default=None, help="Default: mnist.")
@click.option("--eval-split", type=click.Choice(["test", "validation"]), default=None,
              help="test: train on all training images, eval on test; validation: hold out the last 10k training "
                   "images and eval on them.")
@click.option("--preprocess", type=click.Choice(["scale01", "simple", "zca"]), default=None,
              help="Fitted on the training split: x/255 (default), one scalar mean/std, or ZCA whitening (cached).")
@click.option("--zca-epsilon", type=float, default=None, help="ZCA regulariser added to the eigenvalues (0.01).")
@click.option("--train-limit", type=int, default=None, help="Use only the first N training images (smoke runs).")
@click.option("--eval-limit", type=int, default=None, help="Use only the first N evaluation images.")
@click.option("--eval-train-error/--no-eval-train-error", default=None,
              help="Measure clean training error after every epoch (default on).")
@click.option("--backend", type=click.Choice(["numpy", "torch"]), default=None, help="Default: torch.")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default=None)
@click.option("--dtype", type=click.Choice(["float32", "float64"]), default=None)
@click.option("--seed", type=int, default=None, help="Seeds the initial weights and the batch order.")
@click.option("--tf32/--no-tf32", default=None, help="Allow TF32 matmuls on CUDA (off by default).")
@click.option("--threads", type=ThreadsParam(), default=None, metavar="N|auto", help=THREADS_HELP)
@data_dir_option
@click.option("--no-download", is_flag=True, help="Fail instead of downloading missing data.")
@click.option("--out", type=click.Path(file_okay=False), default=None, help="Run directory (default runs/PRESET-seedN).")
@click.option("--overwrite", is_flag=True, help="Replace the advbp files of an existing run in --out.")
@json_option
def train_cmd(preset, resume_dir, data_dir, no_download, out, overwrite, as_json, **options):
    """Train one network with back-propagation or adversarial back-propagation."""
    if resume_dir:
        cfg, run = _resume_config(resume_dir, preset, out, options)
    else:
        cfg = build_config(preset_config_values(preset), overrides_from(options))
        out_path = Path(out) if out else Path("runs") / f"{preset or 'custom'}-seed{cfg.runtime.seed}"
        run = RunDir(out_path)
    data_path, _ = resolve_data_dir(data_dir)
    # Data problems are found before anything is written, so a failed start leaves no run directory behind.
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
        h = summary["headline"]
        paper = summary.get("paper") or {}
        ref = f" (paper: {paper['error']}%)" if paper.get("error") is not None else ""
        click.echo(f"{run.path}: {h['statistic']} = {h['value']:.3f}%{ref}")


def _resume_config(resume_dir: str, preset, out, options) -> tuple[RunConfig, RunDir]:
    run = RunDir(resume_dir)
    if not run.is_run():
        raise UsageProblem(f"invalid value for --resume: {resume_dir} is not an advbp run directory (no {CONFIG})")
    if preset or out:
        raise UsageProblem("--resume continues a run as it was configured; --preset and --out cannot be given with it")
    changed = sorted(k for k, v in options.items() if v is not None and k not in RESUMABLE)
    if changed:
        raise UsageProblem(f"--resume cannot change {', '.join('--' + c.replace('_', '-') for c in changed)} "
                           f"(only {', '.join('--' + r for r in sorted(RESUMABLE))})")
    record = run.read_config()
    if not isinstance(record.get("config"), dict):
        raise UsageProblem(f"{run.config_path} is not an advbp run config (it has no 'config' object)")
    overrides = overrides_from({k: v for k, v in options.items() if k in RESUMABLE})
    cfg = build_config(record["config"], overrides, source=str(run.config_path))
    if run.is_complete() and not options.get("epochs"):
        raise UsageProblem(f"{resume_dir} is already complete ({cfg.train.epochs} epochs); give --epochs N to extend it")
    return cfg, run


def _log(msg: str) -> None:
    click.echo(msg, err=True)


def _train_with_display(cfg: RunConfig, run: RunDir, data_path: Path, resume: bool, as_json: bool) -> dict:
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    from ..threads import resolve_threads
    from ..trainer import Reporter, train

    console = Console(stderr=True)
    threads = resolve_threads(cfg.runtime.threads, cfg)
    progress = Progress(
        TextColumn("epoch {task.fields[epoch]}/{task.fields[epochs]}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("loss {task.fields[loss]:.4f}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=True,
    )
    state = {"task": None, "epoch": 0, "t": time.perf_counter()}

    def start(first_epoch, epochs, steps_per_epoch):
        # The banner and the progress bar appear only once data, network and checkpoint are loaded, so a failed
        # start prints one line (its error) and nothing else.
        progress.start()
        console.print(f"advbp: training {cfg.preset or 'custom config'} ({cfg.train.method}, "
                      f"{'x'.join(map(str, cfg.model.hidden))} {cfg.model.activation}) -> {run.path} "
                      f"[{cfg.runtime.backend}, seed {cfg.runtime.seed}, {threads.threads} thread(s)]")
        state["epoch"] = first_epoch + 1
        state["task"] = progress.add_task("train", total=steps_per_epoch, epoch=first_epoch + 1, epochs=epochs, loss=float("nan"))
        if first_epoch:
            console.print(f"resuming {run.path} after epoch {first_epoch}")

    def steps(n, loss):
        progress.update(state["task"], advance=n, loss=loss)

    def epoch_end(row):
        tr = f"train {row['train_error']:.2f}%  " if "train_error" in row else ""
        console.print(f"epoch {row['epoch']:>3}/{cfg.train.epochs}  loss {row['train_loss']:.4f}  {tr}"
                      f"{cfg.data.eval_split} {row['eval_error']:.2f}%  {row['seconds']:.1f}s")
        progress.update(state["task"], completed=0, epoch=row["epoch"] + 1)

    rep = Reporter(start=start, steps=steps, epoch_end=epoch_end, log=lambda m: console.print(m))
    try:
        return train(cfg, run, data_path, reporter=rep, resume=resume, threads=threads)
    finally:
        if progress.live.is_started:
            progress.stop()
