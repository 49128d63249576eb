"""The epoch loop, the same for every backend: batch order from advbp_cli.rng, blocks of steps handed to the
backend, metrics after every epoch, the checkpoint of the last completed epoch, and the summary."""

from __future__ import annotations

import math
import os
import signal
import sys
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

import numpy as np

from . import presets
from .backends import architecture, uses_dropout
from .checkpoint import (
    check_params,
    check_same_record,
    differing_fields,
    flat_fields,
    read_checkpoint,
    save_checkpoint,
    split_optimizer_state,
)
from .config import RunConfig
from .data import load_splits
from .errors import Interrupted, TrainingDiverged, UsageProblem, is_out_of_memory, os_problem
from .evaluate import evaluate_arrays, mean_last_epochs
from .networks import build_backend, fresh_params
from .protocol import paper_protocol
from .provenance import provenance
from .rng import DropoutMasks, epoch_permutation
from .rundir import METRICS_DIGEST, RunDir
from .schedule import ScheduleState, after_epoch
from .threads import ThreadChoice, apply_threads, threads_in_effect

STEPS_PER_BLOCK = 500  # the largest block of steps handed to a backend; progress and NaN checks happen between blocks
BLOCK_SECONDS = 0.5  # blocks grow from one step towards this duration, so progress shows from an epoch's first batch


@dataclass
class Reporter:
    """Callbacks for the CLI's display; the defaults do nothing, so the trainer has no UI of its own."""

    start: Callable[[int, int, int], None] = lambda first_epoch, epochs, steps_per_epoch: None
    steps: Callable[[int, float], None] = lambda n_steps, mean_loss: None
    epoch_end: Callable[[dict], None] = lambda row: None
    log: Callable[[str], None] = lambda msg: None


class BlockSizer:
    """How many steps the next block holds: one step first, then at most twice the last block and about
    `seconds` of work at the rate measured so far, never more than `cap`. The arithmetic does not depend on it
    (each step is the same whatever block it is in); only how often the display and the NaN check run does."""

    def __init__(self, cap: int = STEPS_PER_BLOCK, seconds: float = BLOCK_SECONDS, clock=time.perf_counter):
        self.cap, self.seconds, self.clock = cap, seconds, clock
        self.last: tuple[float, int] | None = None  # (time the last block was handed out, its size)

    def next_size(self) -> int:
        now = self.clock()
        size = 1
        if self.last is not None:
            t, n = self.last
            rate = n / max(now - t, 1e-9)
            size = max(1, min(2 * n, round(rate * self.seconds)))
        size = min(size, self.cap)
        self.last = (now, size)
        return size


def epoch_blocks(seed: int, epoch: int, n: int, batch_size: int, steps_per_block: int = STEPS_PER_BLOCK,
                 sizer: BlockSizer | None = None):
    """The mini-batches of an epoch as 2-D index arrays of at most steps_per_block rows (or as many as `sizer`
    says, asked when the previous block is done). Full batches come first; a final partial batch (when batch_size
    does not divide n) is its own block."""
    perm = epoch_permutation(seed, epoch, n)
    n_full = n // batch_size
    full = perm[: n_full * batch_size].reshape(n_full, batch_size)
    start = 0
    while start < n_full:
        size = min(sizer.next_size(), steps_per_block) if sizer is not None else steps_per_block
        yield full[start : start + size]
        start += size
    if n_full * batch_size < n:
        yield perm[n_full * batch_size :][None, :]


def run_record(cfg: RunConfig, backend, threads: ThreadChoice | None = None, data_dir: Path | None = None) -> dict:
    """config.json: the resolved config, where it ran (backend, device, dtype, threads), the data folder it read
    (absolute; `advbp eval` and the other commands that read the run look there when no --data-dir or
    $ADVBP_DATA_DIR is given), provenance."""
    return {
        "config": cfg.model_dump(mode="json"),
        "data_dir": os.path.abspath(data_dir) if data_dir is not None else None,
        "resolved": {"backend": backend.name, "device": backend.device, "dtype": backend.dtype,
                     **thread_record(threads, backend.name)},
        "provenance": provenance(("torch",)),
    }


def thread_record(threads: ThreadChoice | None, backend_name: str) -> dict:
    """The run's thread count for config.json: the one advbp applied, or (a caller that set none, e.g. a library
    user) the count in effect in the backend's library."""
    if threads is not None:
        return threads.to_json()
    return {"threads": threads_in_effect(backend_name), "threads_setting": None,
            "threads_reason": "not set by advbp: the libraries' defaults or the environment"}


def _finite_params(params: dict) -> bool:
    return all(np.isfinite(v).all() for v in params.values())


@contextmanager
def _sigint_deferred():
    """Holds back Ctrl-C while an epoch's metrics and checkpoint are written, so they are saved as a pair; the
    interrupt is raised as soon as both are on disk. (SIGKILL cannot be held back: then the metrics may hold one
    epoch more than the checkpoint, and resuming drops it.)"""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    pending: list[int] = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: pending.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if pending:
        if previous is signal.default_int_handler:
            raise KeyboardInterrupt
        if callable(previous):
            previous(signal.SIGINT, None)


def _interrupted_message(run: RunDir, saved: int, epochs: int) -> str:
    hint = f"Resume with: advbp train --resume {run.path}"
    if saved == 0:
        return f"interrupted in epoch 1, before any epoch was saved in {run.path}. {hint} (it starts from epoch 1)"
    if saved >= epochs:
        return f"interrupted after all {epochs} epochs were saved in {run.path}, before the summary. {hint}"
    return (f"interrupted in epoch {saved + 1}; epochs 1-{saved} of {epochs} are saved in {run.path} "
            f"(checkpoint and metrics; epoch {saved + 1} starts again). {hint}")


def _diverged_message(what: str, epoch: int, cfg: RunConfig, run: RunDir, lr: float | None = None,
                      input_scale: float = 1.0) -> str:
    kept = (f"the last good checkpoint (epoch {epoch}) is kept in {run.path}" if epoch > 0 else
            f"no checkpoint was written (epoch 1 diverged; {run.path} holds only the config)")
    lr_now = cfg.train.lr if lr is None else lr
    return (f"training diverged: {what} in epoch {epoch + 1} with learning rate {lr_now} (--lr); {kept}. "
            + _likely_cause(cfg, input_scale))


def _likely_cause(cfg: RunConfig, input_scale: float) -> str:
    """The option that most likely made a run diverge: an eps far beyond the inputs' own range (x + eps sign(e)
    then swamps or overflows every input), a huge --init-std, else the learning rate."""
    t, m = cfg.train, cfg.model
    if t.method == "adversarial" and t.eps > 10 * max(input_scale, 1e-12):
        return (f"Likely cause: --eps {t.eps:g}, far larger than the inputs (largest |x| {input_scale:.3g}), so the "
                "perturbed inputs swamp or overflow: try a smaller --eps (the paper's MNIST eps is 0.08)")
    if m.init_std > 1:
        return (f"Likely cause: --init-std {m.init_std:g} (the paper uses 0.01): initial weights this large overflow "
                "the activations; try a smaller --init-std")
    return (f"The learning rate is the likely cause (or a large --init-std, now {m.init_std}): "
            "try a smaller --lr")


def _saved_text(run: RunDir, saved: int) -> str:
    if saved == 0:
        return "no epoch was saved"
    return f"epochs 1-{saved} are saved in {run.path} and stay resumable: advbp train --resume {run.path}"


def _memory_message(cfg: RunConfig, run: RunDir, saved: int) -> str:
    n = sum(int(np.prod(s)) for s in architecture(cfg.model).param_shapes().values())
    gib = n * np.dtype(cfg.runtime.dtype).itemsize / 2**30
    layers = "--hidden" + (" or --conv-channels" if cfg.model.arch == "conv" else "")
    return (f"out of memory: the network ({'-'.join(map(str, [cfg.model.input_size, *cfg.model.hidden]))}-"
            f"{cfg.model.num_classes}, {n:,} parameters, {gib:.3g} GiB per copy in {cfg.runtime.dtype}) with batches "
            f"of {cfg.train.batch_size} does not fit in this machine's memory; use a smaller {layers} or "
            f"--batch-size; {_saved_text(run, saved)}")


def train(cfg: RunConfig, run: RunDir, data_dir: Path, reporter: Reporter | None = None, resume: bool = False,
          download: bool = True, threads: ThreadChoice | None = None) -> dict:
    """Trains cfg in `run` (already locked by the caller) and returns the summary. `threads` (see
    advbp_cli.threads.resolve_threads) is applied before any arithmetic, data preprocessing included; None leaves
    the process's thread settings as they are. An OS error (a full disk, a file-size limit, ...) or running out of
    memory ends in one UsageProblem line naming the file or the options and the epochs that are saved and stay
    resumable."""
    progress = {"saved": 0}
    try:
        return _train(cfg, run, data_dir, reporter, resume, download, progress, threads)
    except OSError as exc:
        name = exc.filename if exc.filename is not None else run.path
        doing = f"write {name}" if Path(name).parent == run.path else f"use {name}"
        raise UsageProblem(f"{os_problem(exc, doing)}; {_saved_text(run, progress['saved'])}") from None
    except Exception as exc:
        if is_out_of_memory(exc):
            raise UsageProblem(_memory_message(cfg, run, progress["saved"])) from None
        raise


def _train(cfg: RunConfig, run: RunDir, data_dir: Path, reporter, resume: bool, download: bool, progress: dict,
           threads: ThreadChoice | None) -> dict:
    rep = reporter or Reporter()
    if threads is not None:
        apply_threads(threads.threads)
    train_split, eval_split = load_splits(cfg.data, cfg.runtime.dtype, data_dir, download=download, log=rep.log)
    backend = build_backend(cfg)
    metrics: list[dict] = []
    start_epoch = 0
    opt_state: dict = {}
    sched = ScheduleState.start(cfg.train)
    if resume and run.checkpoint_path.is_file():
        params, meta = read_checkpoint(run.checkpoint_path)
        check_params(run.checkpoint_path, params, cfg.model)
        check_same_record(run.checkpoint_path, meta, cfg, str(run.config_path))
        params, opt_state = split_optimizer_state(params)
        if "schedule" in meta:
            sched = ScheduleState.from_json(meta["schedule"], str(run.checkpoint_path))
        start_epoch = int(meta.get("epoch", 0))
        metrics = run.read_metrics()[:start_epoch]
        if len(metrics) != start_epoch:
            raise UsageProblem(f"{run.metrics_path} has {len(metrics)} epochs but the checkpoint is at epoch {start_epoch}")
        run.check_metrics(meta, start_epoch)
        progress["saved"] = start_epoch
        if start_epoch > cfg.train.epochs:
            raise UsageProblem(f"{run.path} already has {start_epoch} epochs; --epochs must be at least that (got {cfg.train.epochs})")
    else:
        params = fresh_params(cfg)
    # The config on disk always describes the run as it is being continued (e.g. after --epochs N on resume), so
    # a later --resume after another interruption continues the same run.
    record = run_record(cfg, backend, threads, data_dir)
    if resume and run.is_run():
        old = run.read_config()
        record["provenance"] = old.get("provenance", record["provenance"])
        earlier = old.get("resumed") if isinstance(old.get("resumed"), list) else []
        before = (old.get("resolved") or {}).get("threads") if isinstance(old.get("resolved"), dict) else None
        record["resumed"] = [*earlier, {"after_epoch": start_epoch, "threads": record["resolved"]["threads"],
                                        "threads_before": before, **_resume_note(old, record)}]
    run.write_config(record)
    if resume:  # extending a complete run: it is not complete again until the new summary is written
        run.summary_path.unlink(missing_ok=True)
    backend.set_params(params)
    backend.set_optimizer_state(opt_state)

    tc = cfg.train
    n = len(train_split.x)
    xd, yd = backend.asarray(train_split.x), backend.asarray(train_split.y, labels=True)
    steps_per_epoch = math.ceil(n / tc.batch_size)
    rep.start(start_epoch, tc.epochs, steps_per_epoch)
    # Overflow is checked for explicitly (TrainingDiverged below), so numpy's overflow warnings would only be noise.
    scale = float(np.abs(train_split.x).max()) if n else 1.0  # names --eps when a far larger eps diverges
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        summary = _epochs(cfg, run, backend, train_split, eval_split, xd, yd, metrics, start_epoch, rep, sched,
                          progress, scale)
    return summary


def _epochs(cfg, run, backend, train_split, eval_split, xd, yd, metrics, start_epoch, rep, sched, progress,
            scale) -> dict:
    tc = cfg.train
    t_run = time.perf_counter()
    saved = start_epoch  # the epoch of the checkpoint on disk
    try:
        for epoch in range(start_epoch, tc.epochs):
            if sched.stop_reason:  # the schedule ended this run already (a resume of a finished run)
                break
            t0 = time.perf_counter()
            row = _learn_epoch(cfg, run, backend, xd, yd, len(train_split.x), epoch, sched.lr, rep, scale)
            params_now = backend.get_params()
            if not _finite_params(params_now):
                raise TrainingDiverged(_diverged_message("the weights became NaN or Inf", epoch, cfg, run, sched.lr, scale))
            train_seconds = time.perf_counter() - t0
            ev = _evaluate_epoch(cfg, run, backend, train_split, eval_split, row, epoch, sched.lr, scale)
            row.update(eval_error=ev.error, eval_loss=ev.loss, train_seconds=train_seconds,
                       seconds=time.perf_counter() - t0)
            watched = row.get("train_pass_error" if tc.schedule_error == "train_pass" else "train_error")
            sched = after_epoch(sched, tc, watched)
            metrics.append(row)
            tensors = {**params_now, **backend.get_optimizer_state()}
            # metrics first, then the checkpoint: on resume the checkpoint's epoch decides, and extra lines are dropped
            with _sigint_deferred():
                digest = run.write_metrics(metrics)
                save_checkpoint(run.checkpoint_path, tensors, cfg.model_dump(mode="json"), epoch + 1,
                                extra={"schedule": sched.to_json(), METRICS_DIGEST: digest})
                saved = progress["saved"] = epoch + 1
            rep.epoch_end(row)
            if sched.stop_reason:
                rep.log(f"stopping after epoch {epoch + 1}: {sched.stop_reason}")
                break

        summary = summarize(cfg, metrics, eval_split.name, time.perf_counter() - t_run, sched.stop_reason)
        run.write_summary(summary)
    except KeyboardInterrupt:
        raise Interrupted(_interrupted_message(run, saved, tc.epochs)) from None
    return summary


def _learn_epoch(cfg, run, backend, xd, yd, n: int, epoch: int, lr: float, rep, scale) -> dict:
    """One pass over the training split at learning rate `lr`, in blocks of steps (the arithmetic does not depend
    on the blocks); returns the epoch's metrics row so far (training loss, lr, the pass's own error)."""
    tc = cfg.train
    spec = tc if lr == tc.lr else tc.model_copy(update={"lr": lr})
    dropout = uses_dropout(architecture(cfg.model), tc)
    # the error of the batches as they were learned from: measured only when the schedule watches it
    count_errors = tc.schedule != "constant" and tc.schedule_error == "train_pass"
    loss_sum, steps, wrong = 0.0, 0, 0
    for block in epoch_blocks(cfg.runtime.seed, epoch, n, tc.batch_size, sizer=BlockSizer()):
        extra = {}
        if dropout:
            extra["masks"] = DropoutMasks(cfg.runtime.seed, epoch, steps)
        if count_errors:
            extra["errors"] = np.zeros(len(block), dtype=np.int64)
        losses = backend.train_steps(xd, yd, block, spec, **extra)
        if not np.isfinite(losses).all():
            bad = steps + int(np.argmin(np.isfinite(losses)))
            raise TrainingDiverged(_diverged_message(f"the training loss became NaN or Inf at step {bad + 1}",
                                                     epoch, cfg, run, lr, scale))
        loss_sum += float(losses.sum())
        wrong += int(extra["errors"].sum()) if count_errors else 0
        steps += len(losses)
        rep.steps(len(losses), float(losses.mean()))
    row = {"epoch": epoch + 1, "train_loss": loss_sum / max(steps, 1)}
    if tc.schedule != "constant":
        row["lr"] = lr
    if count_errors:
        row["train_pass_error"] = 100.0 * wrong / max(n, 1)
    return row


def _evaluate_epoch(cfg, run, backend, train_split, eval_split, row: dict, epoch: int, lr: float, scale):
    """The clean training error (into `row`, when the run measures it) and the evaluation split's Evaluation.
    Never a metric, a headline or a checkpoint of a network that computes NaN: that is a divergence."""
    if cfg.data.eval_train_error:
        ev = evaluate_arrays(backend, train_split.x, train_split.y)
        row["train_error"] = ev.error
        row["train_clean_loss"] = ev.loss
    ev = evaluate_arrays(backend, eval_split.x, eval_split.y)
    bad = [k for k, v in row.items() if not np.isfinite(v)] + (["eval_loss"] if not np.isfinite(ev.loss) else [])
    if bad or ev.nonfinite:
        raise TrainingDiverged(_diverged_message(f"the {', '.join(bad) or 'network outputs'} became NaN or Inf",
                                                 epoch, cfg, run, lr, scale))
    return ev


def _resume_note(old: dict, new: dict) -> dict:
    """A resume event for config.json: when, the command, and what changed that may change (checkpoint.MAY_CHANGE:
    --epochs, --backend, --device, ...), each as [before, after]; the resolved backend and device likewise."""
    before, after = old.get("config") or {}, new["config"]
    changed = {k: [flat_fields(before).get(k), flat_fields(after).get(k)]
               for k in differing_fields(before, after, identity=False)}
    res_old, res_new = old.get("resolved") or {}, new.get("resolved") or {}
    changed.update({f"resolved.{k}": [res_old.get(k), res_new[k]] for k in res_new if res_old.get(k) != res_new[k]})
    return {"command": sys.argv, "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "changed": changed}


def summarize(cfg: RunConfig, metrics: list[dict], eval_split: str, wall_s: float, stop_reason: str | None = None) -> dict:
    """The run's summary.json. `headline.paper_protocol` says whether the run follows the paper's protocol for its
    preset (advbp_cli.protocol): only then is the headline comparable with `paper`, the preset's reported number."""
    n = cfg.train.mean_last
    paper = None
    if cfg.preset and cfg.preset in presets.preset_names():
        paper = presets.load_preset(cfg.preset).get("paper")
    used = min(n, len(metrics))
    first = len(metrics) - used + 1
    proto = paper_protocol(cfg)
    return {
        "headline": {
            "statistic": (f"mean {eval_split} error (%) of the last {used} epochs (epochs {first}-{len(metrics)})"
                          if used > 1 else f"{eval_split} error (%) of the last epoch (epoch {len(metrics)})"),
            "value": mean_last_epochs(metrics, n),
            "eval_split": eval_split,
            "final_epoch_error": metrics[-1]["eval_error"] if metrics else None,
            "protocol": proto["protocol"],
            "paper_protocol": proto["paper"],
            "the_papers_protocol": proto["paper_protocol"],
            "differences_from_paper": proto["differences"],
        },
        "final_epoch": metrics[-1] if metrics else None,
        "epochs_completed": len(metrics),
        "stopped": stop_reason or f"the epoch cap ({cfg.train.epochs} epochs)",
        "paper": paper,
        "preset": cfg.preset,
        "seed": cfg.runtime.seed,
        "wall_seconds_this_session": wall_s,
    }
