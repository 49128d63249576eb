"""The epoch loop, the same for every backend: batch order from advbp_cli.rng, blocks of steps handed to the
backend, metrics after every epoch, the checkpoint of the last completed epoch, and the summary."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from .checkpoint import check_params, read_checkpoint, save_checkpoint
from .config import RunConfig
from .data import load_splits
from .errors import TrainingDiverged, UsageProblem
from .evaluate import evaluate_arrays, mean_last_epochs
from .networks import build_backend, fresh_params
from .provenance import provenance
from .rng import epoch_permutation
from .rundir import RunDir

STEPS_PER_BLOCK = 500  # progress and NaN checks happen between blocks


class Interrupted(Exception):
    """Ctrl-C during training; the last completed epoch is on disk."""

    exit_code = 130


@dataclass
class Reporter:
    """Callbacks for the CLI's display; the defaults do nothing, so the trainer has no UI of its own."""

    start: Callable[[int, int, int], None] = lambda first_epoch, epochs, steps_per_epoch: None
    steps: Callable[[int, float], None] = lambda n_steps, mean_loss: None
    epoch_end: Callable[[dict], None] = lambda row: None
    log: Callable[[str], None] = lambda msg: None
    extra: dict = field(default_factory=dict)


def epoch_blocks(seed: int, epoch: int, n: int, batch_size: int, steps_per_block: int = STEPS_PER_BLOCK):
    """The mini-batches of an epoch as 2-D index arrays of at most steps_per_block rows. Full batches come first;
    a final partial batch (when batch_size does not divide n) is its own block."""
    perm = epoch_permutation(seed, epoch, n)
    n_full = n // batch_size
    full = perm[: n_full * batch_size].reshape(n_full, batch_size)
    for start in range(0, n_full, steps_per_block):
        yield full[start : start + steps_per_block]
    if n_full * batch_size < n:
        yield perm[n_full * batch_size :][None, :]


def run_record(cfg: RunConfig, backend) -> dict:
    return {
        "config": cfg.model_dump(mode="json"),
        "resolved": {"backend": backend.name, "device": backend.device, "dtype": backend.dtype},
        "provenance": provenance(("torch",)),
    }


def _finite_params(params: dict) -> bool:
    return all(np.isfinite(v).all() for v in params.values())


def train(cfg: RunConfig, run: RunDir, data_dir: Path, reporter: Reporter | None = None, resume: bool = False,
          download: bool = True) -> dict:
    """Trains cfg in `run` (already locked by the caller) and returns the summary."""
    rep = reporter or Reporter()
    train_split, eval_split = load_splits(cfg.data, cfg.runtime.dtype, data_dir, download=download, log=rep.log)
    backend = build_backend(cfg)
    metrics: list[dict] = []
    start_epoch = 0
    if resume and run.checkpoint_path.is_file():
        params, meta = read_checkpoint(run.checkpoint_path)
        check_params(run.checkpoint_path, params, cfg.model)
        start_epoch = int(meta.get("epoch", 0))
        metrics = run.read_metrics()[:start_epoch]
        if len(metrics) != start_epoch:
            raise UsageProblem(f"{run.metrics_path} has {len(metrics)} epochs but the checkpoint is at epoch {start_epoch}")
    else:
        params = fresh_params(cfg)
        run.write_config(run_record(cfg, backend))
    backend.set_params(params)

    tc = cfg.train
    n = len(train_split.x)
    xd, yd = backend.asarray(train_split.x), backend.asarray(train_split.y, labels=True)
    steps_per_epoch = math.ceil(n / tc.batch_size)
    rep.start(start_epoch, tc.epochs, steps_per_epoch)
    t_run = time.perf_counter()
    for epoch in range(start_epoch, tc.epochs):
        t0 = time.perf_counter()
        loss_sum, steps = 0.0, 0
        try:
            for block in epoch_blocks(cfg.runtime.seed, epoch, n, tc.batch_size):
                losses = backend.train_steps(xd, yd, block, tc)
                if not np.isfinite(losses).all():
                    bad = steps + int(np.argmin(np.isfinite(losses)))
                    raise TrainingDiverged(
                        f"the training loss became NaN or Inf in epoch {epoch + 1}, step {bad + 1}; "
                        f"the last good checkpoint (epoch {epoch}) is kept in {run.path}; "
                        f"the learning rate ({tc.lr}) is the likely cause, try a smaller --lr"
                    )
                loss_sum += float(losses.sum())
                steps += len(losses)
                rep.steps(len(losses), float(losses.mean()))
        except KeyboardInterrupt:
            raise Interrupted(
                f"interrupted in epoch {epoch + 1}; epochs 1-{epoch} are saved in {run.path}. "
                f"Resume with: advbp train --resume {run.path}"
            ) from None
        params_now = backend.get_params()
        if not _finite_params(params_now):
            raise TrainingDiverged(f"weights became NaN or Inf in epoch {epoch + 1}; the last good checkpoint (epoch {epoch}) is kept in {run.path}")
        train_seconds = time.perf_counter() - t0
        row = {"epoch": epoch + 1, "train_loss": loss_sum / max(steps, 1)}
        if cfg.data.eval_train_error:
            ev = evaluate_arrays(backend, train_split.x, train_split.y)
            row["train_error"] = ev.error
            row["train_clean_loss"] = ev.loss
        ev = evaluate_arrays(backend, eval_split.x, eval_split.y)
        row.update(eval_error=ev.error, eval_loss=ev.loss, train_seconds=train_seconds,
                   seconds=time.perf_counter() - t0)
        metrics.append(row)
        # metrics first, then the checkpoint: on resume the checkpoint's epoch decides, and extra lines are dropped
        run.write_metrics(metrics)
        save_checkpoint(run.checkpoint_path, params_now, cfg.model_dump(mode="json"), epoch + 1)
        rep.epoch_end(row)

    summary = summarize(cfg, metrics, eval_split.name, time.perf_counter() - t_run)
    run.write_summary(summary)
    return summary


def summarize(cfg: RunConfig, metrics: list[dict], eval_split: str, wall_s: float) -> dict:
    from . import presets

    n = cfg.train.mean_last
    paper = None
    if cfg.preset and cfg.preset in presets.preset_names():
        paper = presets.load_preset(cfg.preset).get("paper")
    return {
        "headline": {
            "statistic": f"mean {eval_split} error (%) of the last {min(n, len(metrics))} epochs",
            "value": mean_last_epochs(metrics, n),
            "eval_split": eval_split,
        },
        "final_epoch": metrics[-1] if metrics else None,
        "epochs_completed": len(metrics),
        "paper": paper,
        "preset": cfg.preset,
        "seed": cfg.runtime.seed,
        "wall_seconds_this_session": wall_s,
    }
