"""`advbp sweep`: every (preset, seed) of preset groups or presets, with the paper comparison table.
The logic lives in advbp_cli.sweep; this module parses options and draws the live progress table."""

from __future__ import annotations

import time
from pathlib import Path

import click

from .. import executors
from .. import sweep as sw
from ..cliparams import NON_NEGATIVE, POSITIVE
from ..data.paths import resolve_data_dir
from ..data.splits import ensure_dataset
from ..errors import TrainingDiverged, UsageProblem
from ..networks import require_device
from .common import THREADS_HELP, ThreadsParam, WorkersParam, data_dir_option, emit_json, json_option, parse_int_list

# CLI option -> config (section, field), applied to every run of the sweep.
OVERRIDES = {
    "hidden": ("model", "hidden"),
    "conv_channels": ("model", "conv_channels"),
    "epochs": ("train", "epochs"),
    "mean_last": ("train", "mean_last"),
    "train_limit": ("data", "train_limit"),
    "eval_limit": ("data", "eval_limit"),
    "eval_train_error": ("data", "eval_train_error"),
    "backend": ("runtime", "backend"),
    "device": ("runtime", "device"),
    "threads": ("runtime", "threads"),
}


@click.command("sweep")
@click.argument("targets", nargs=-1, metavar="GROUP_OR_PRESETS...")
@click.option("--seeds", type=click.IntRange(min=1), default=None,
              help="Seeds 0..N-1 for every preset (default 5, as the paper; on --resume: the sweep's).")
@click.option("--epochs", type=int, default=None, help="Epochs per run (default: the preset's, 150).")
@click.option("--hidden", default=None,
              help="Hidden (fully connected) layer sizes for every preset, e.g. 16,16 (small test sweeps).")
@click.option("--conv-channels", default=None,
              help="Filters of each conv layer for every conv preset, e.g. 8,8,8 (MLP presets ignore it).")
@click.option("--mean-last", type=int, default=None, help="Per-run statistic: mean eval error of the last N epochs (10).")
@click.option("--train-limit", type=int, default=None, help="Only the first N training images (small test sweeps).")
@click.option("--eval-limit", type=int, default=None, help="Only the first N evaluation images.")
@click.option("--eval-train-error/--no-eval-train-error", default=None,
              help="Measure the clean training error after every epoch (default on; off saves time).")
@click.option("--backend", type=click.Choice(["numpy", "torch"]), default=None, help="Default: torch.")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default=None)
@click.option("--threads", type=ThreadsParam(), default=None, metavar="N|auto", help=THREADS_HELP)
@click.option("--workers", type=WorkersParam(), default=None, metavar="N|auto",
              help="Local executor: runs trained at once, each in its own process (default auto: one per CPU a "
                   "run's threads use, at most the runs left; 1 trains them one after another in this process).")
@click.option("--out", type=click.Path(file_okay=False), default=None,
              help="Sweep directory (default runs/sweep-GROUP...); runs go to OUT/PRESET/seed-K.")
@click.option("--resume", is_flag=True,
              help="Continue the sweep in --out: complete runs are kept, half-written ones continue from their last epoch.")
@click.option("--report", "report_dir", type=click.Path(file_okay=False), default=None,
              help="Print the summary of the sweep in this directory and exit (no training).")
@click.option("--executor", "executor_name", type=click.Choice(executors.EXECUTORS), default="local", show_default=True,
              help="local: parallel worker processes on this machine (--workers). ray: every run a Ray task "
                   "(pip install 'advbp[ray]'; the sweep directory must be on a filesystem all nodes share).")
@click.option("--address", default=None, metavar="auto|HOST:PORT",
              help="--executor ray: the Ray cluster to use (auto: the one this node belongs to). "
                   "Default: start a local Ray instance on this machine (loopback only).")
@click.option("--cpus-per-run", type=POSITIVE, default=None,
              help="--executor ray: CPUs each run reserves, and its BLAS/OpenMP threads (default 1).")
@click.option("--gpus-per-run", type=NON_NEGATIVE, default=None,
              help="--executor ray: GPUs each run reserves (default 0; fractions share a GPU).")
@data_dir_option
@click.option("--no-download", is_flag=True, help="Fail instead of downloading missing data.")
@json_option
def sweep_cmd(targets, seeds, out, resume, report_dir, data_dir, no_download, as_json, executor_name, address,
              cpus_per_run, gpus_per_run, workers, **options):
    """Train every (preset, seed) of preset groups (see `advbp presets`) or presets, and compare with the paper.

    Prints, and writes to the sweep directory as summary.json/.csv/.md, the mean ± std over seeds of each
    run's mean test error of the last 10 epochs, the paper's value, and the difference in units of its std.
    """
    if report_dir is not None:
        if targets or out or resume:
            raise UsageProblem("--report prints an existing sweep; it takes no GROUP_OR_PRESETS, --out or --resume")
        summary = sw.load_report(Path(report_dir))
        _show(summary, as_json)
        return

    executor = executors.make_executor(executor_name, address, cpus_per_run, gpus_per_run, workers)
    if executor_name == "local":  # a Ray cluster's GPUs live on other nodes; only a local run can be checked here
        require_device(options.get("device"))
    sweep_dir, request = sw.plan(list(targets), seeds, _overrides(options), out, resume)
    data_path, _ = resolve_data_dir(data_dir)
    # Data problems are found before anything is written, so a failed start leaves no sweep directory behind:
    # the files of every data set the requested presets use (e.g. table3: CIFAR-10; mnist groups: MNIST).
    for dataset in sw.datasets_of(request):
        ensure_dataset(dataset, data_path, download=not no_download, log=lambda m: click.echo(m, err=True))

    with executor as execute:  # --executor ray: connects to (or starts) Ray here, before anything is written
        display = LiveTable(request, sweep_dir)
        with display:
            summary = sw.run_sweep(sweep_dir, request, data_path, events=display.events(), executor=execute)
    _show(summary, as_json, sweep_dir)
    failures = summary.get("failures")
    if failures:  # the others are summarised; --resume retries these from their last good epoch
        listed = "; ".join(f"{f['run_dir']}: {f['message']}" for f in failures)
        if all(f.get("status", "diverged") == "diverged" for f in failures):
            raise TrainingDiverged(f"{len(failures)} of {summary['runs_total']} runs diverged ({listed})")
        raise UsageProblem(f"{len(failures)} of {summary['runs_total']} runs did not complete ({listed}); "
                           f"the others are summarised. Continue with: advbp sweep --resume --out {sweep_dir}")


def _overrides(options: dict) -> dict:
    out: dict = {}
    for opt, (section, key) in OVERRIDES.items():
        value = options.get(opt)
        if value is None:
            continue
        if opt in ("hidden", "conv_channels"):
            value = parse_int_list(value, "--" + opt.replace("_", "-"))
        out.setdefault(section, {})[key] = value
    return out


def _show(summary: dict, as_json: bool, sweep_dir: Path | None = None) -> None:
    if as_json:
        emit_json({"sweep_dir": str(sweep_dir), **summary} if sweep_dir else summary)
        return
    from rich.console import Console

    console = Console()
    if not console.is_terminal:  # logs and pipes: wide enough that the table's rows stay on one line each
        console = Console(width=max(console.width, 140))
    sw.print_summary(summary, console)
    if sweep_dir is not None:
        console.print(f"written: {', '.join(str(sweep_dir / n) for n in sw.SUMMARY_FILES)}", highlight=False, markup=False, soft_wrap=True)


class LiveTable:
    """A rich live table on stderr, one row per preset; one plain line per finished run (useful in logs)."""

    def __init__(self, request: sw.SweepRequest, sweep_dir: Path):
        from rich.console import Console

        self.request = request
        self.sweep_dir = sweep_dir
        self.console = Console(stderr=True)
        self.rows = {p: {"done": 0, "values": [], "now": "waiting", "last": None} for p in request.presets}
        self.active = {p: {} for p in request.presets}  # seed -> progress text, for executors running seeds in parallel
        self.t0 = time.perf_counter()
        self.n_runs = len(request.runs())
        self.n_finished = 0
        self.live = None

    def __enter__(self):
        from rich.live import Live

        self.console.print(f"advbp: sweep of {len(self.request.presets)} preset(s) x {len(self.request.seeds)} seed(s) "
                           f"-> {self.sweep_dir}", highlight=False, markup=False)
        self.live = Live(self._render(), console=self.console, refresh_per_second=2, transient=True,
                         get_renderable=self._render)
        self.live.__enter__()
        return self

    def __exit__(self, *exc):
        return self.live.__exit__(*exc)

    def _render(self):
        from rich.table import Table

        t = Table(title=f"sweep {self.sweep_dir}: {self.n_finished}/{self.n_runs} runs, "
                        f"{time.perf_counter() - self.t0:.0f}s", title_justify="left")
        for h in ("preset", "seeds", "now", "last eval %", "error % so far", "paper %"):
            t.add_column(h, no_wrap=True)
        for p, r in self.rows.items():
            vals = r["values"]
            so_far = "-" if not vals else f"{sum(vals) / len(vals):.3f}" + (f" (n={len(vals)})" if len(vals) > 1 else "")
            paper = (sw.preset_files.load_preset(p).get("paper") or {}).get("error")
            t.add_row(p, f"{r['done']}/{len(self.request.seeds)}", r["now"], "-" if r["last"] is None else f"{r['last']:.2f}",
                      so_far, "-" if paper is None else f"{paper:.2f}")
        return t

    def events(self) -> sw.SweepEvents:
        def reporter_for(preset, seed):
            from ..trainer import Reporter

            row = self.rows[preset]
            st = {"epoch": 0, "epochs": 0, "steps": 0, "per_epoch": 1}

            def start(first_epoch, epochs, steps_per_epoch):
                st.update(epoch=first_epoch + 1, epochs=epochs, steps=0, per_epoch=steps_per_epoch)
                row["now"] = f"seed {seed}: epoch {st['epoch']}/{epochs}" + (f" (resumed)" if first_epoch else "")

            def steps(n, loss):
                st["steps"] += n
                row["now"] = f"seed {seed}: epoch {st['epoch']}/{st['epochs']} {100 * st['steps'] / st['per_epoch']:.0f}%"

            def epoch_end(m):
                row["last"] = m["eval_error"]
                st.update(epoch=m["epoch"] + 1, steps=0)

            return Reporter(start=start, steps=steps, epoch_end=epoch_end, log=lambda msg: None)

        def run_start(preset, seed, first_epoch):
            self.rows[preset]["now"] = f"seed {seed}: starting"

        def progress(preset, seed, done, total, last):
            self.active[preset][seed] = f"s{seed} queued" if done is None else f"s{seed} {done}/{total}"
            self.rows[preset]["now"] = " ".join(self.active[preset].values())
            if last is not None:
                self.rows[preset]["last"] = last

        def run_end(o: sw.RunOutcome):
            row = self.rows[o.preset]
            self.n_finished += 1
            if o.summary is not None:
                row["done"] += 1
                row["values"].append(o.summary["headline"]["value"])
            self.active[o.preset].pop(o.seed, None)
            row["now"] = (" ".join(self.active[o.preset].values()) or
                          ("done" if row["done"] == len(self.request.seeds) else "-"))
            what = {"done": "trained" + (f" (resumed after epoch {o.resumed_from_epoch})" if o.resumed_from_epoch else ""),
                    "skipped": "already complete, kept", "diverged": "DIVERGED", "failed": "FAILED"}[o.status]
            value = f": {o.summary['headline']['value']:.3f}%" if o.summary else f": {o.message}"
            self.console.print(f"[{self.n_finished}/{self.n_runs}] {o.run_dir} {what}{value}", highlight=False, markup=False)

        return sw.SweepEvents(run_start=run_start, run_end=run_end, reporter_for=reporter_for, progress=progress)
