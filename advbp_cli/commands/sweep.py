"""`advbp sweep`: every (preset, seed) of preset groups or presets, with the paper comparison table.
The logic lives in advbp_cli.sweep; this module parses options and draws the live progress table."""

from __future__ import annotations

import time
from pathlib import Path

import click

from .. import executors
from .. import sweep as sw
from ..cliparams import NON_NEGATIVE, POSITIVE
from ..errors import UsageProblem
from ..trainer import Reporter
from .common import WorkersParam, data_dir_option, emit_json, json_option, no_download_option
from .config_options import ConfigOverrides, SectionedCommand, config_options
from .progress import RunProgress, clock_text
from .tables import is_plain, plain_option, print_table

# Config fields a sweep sets itself, so they are not options of `advbp sweep`.
EXCLUDED = {("runtime", "seed"): "a sweep's seeds are 0..N-1 (--seeds N)"}


@click.command("sweep", cls=SectionedCommand)
@click.argument("targets", nargs=-1, metavar="GROUP_OR_PRESETS...")
@click.option("--seeds", type=click.IntRange(min=1), default=None,
              help="Seeds 0..N-1 for every preset (default 5, as the paper; on --resume: the sweep's).")
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
@no_download_option
@plain_option
@json_option
@config_options(excluded=EXCLUDED)
def sweep_cmd(targets, seeds, out, resume, report_dir, data_dir, no_download, plain, as_json, executor_name, address,
              cpus_per_run, gpus_per_run, workers, config: ConfigOverrides):
    """Train every (preset, seed) of preset groups (see `advbp presets`) or presets, and compare with the paper.

    Prints, and writes to the sweep directory as summary.json/.csv/.md, the mean ± std over seeds of each
    run's mean test error of the last 10 epochs, the paper's value, and the difference in units of its std
    (only when the runs follow the paper's protocol). Every config field below (or --set SECTION.FIELD=VALUE)
    applies to every preset of the sweep, e.g. --epochs 3 --hidden 16,16 for a quick check.
    """
    if report_dir is not None:
        if targets or out or resume:
            raise UsageProblem("--report prints an existing sweep; it takes no GROUP_OR_PRESETS, --out or --resume")
        summary = sw.load_report(Path(report_dir))
        _show(summary, as_json, plain)
        return

    executor = executors.make_executor(executor_name, address, cpus_per_run, gpus_per_run, workers)
    sweep_dir, request, data_path = sw.prepare(list(targets), seeds, config.values, config.origin, out, resume, data_dir,
                                               download=not no_download, check_device=executor_name == "local",
                                               log=lambda m: click.echo(m, err=True))
    with executor as execute:  # --executor ray: connects to (or starts) Ray here, before anything is written
        with LiveTable(request, sweep_dir, plain) as display:
            summary = sw.run_sweep(sweep_dir, request, data_path, events=display.events(), executor=execute)
    _show(summary, as_json, plain, sweep_dir)
    sw.raise_failures(summary, sweep_dir)


def _show(summary: dict, as_json: bool, plain: bool, sweep_dir: Path | None = None) -> None:
    if as_json:
        emit_json({"sweep_dir": str(sweep_dir), **summary} if sweep_dir else summary)
        return
    plain = is_plain(plain)
    for ln in sw.header_lines(summary):
        click.echo(ln)
    print_table(sw.TABLE_HEADER, sw.table_rows(summary), title="per preset", plain=plain, no_wrap=("preset",))
    if summary["comparisons"]:
        print_table(sw.PAIR_HEADER, sw.pair_rows(summary), title="adversarial vs back-propagation", plain=plain)
    if sweep_dir is not None:
        click.echo(f"written: {', '.join(str(sweep_dir / n) for n in sw.SUMMARY_FILES)}")


class LiveTable:
    """One row per preset, redrawn on stderr while the sweep runs when stderr is a terminal (and --plain is not
    given); always one plain line per finished run (useful in logs). Each running seed shows its RunProgress."""

    def __init__(self, request: sw.SweepRequest, sweep_dir: Path, plain: bool = False, clock=time.monotonic):
        from rich.console import Console  # lazy: rich stays off the import path of `advbp --help` and `advbp presets`

        self.request = request
        self.sweep_dir = sweep_dir
        self.console = Console(stderr=True)
        self.interactive = self.console.is_terminal and not plain
        self.clock = clock
        self.rows = {p: {"done": 0, "values": [], "now": "waiting", "last": None} for p in request.presets}
        self.active = {p: {} for p in request.presets}  # seed -> progress text, for executors running seeds in parallel
        self.t0 = clock()
        self.n_runs = len(request.runs())
        self.n_finished = 0
        self.live = None

    def __enter__(self):
        self._print(f"advbp: sweep of {len(self.request.presets)} preset(s) x {len(self.request.seeds)} seed(s) "
                    f"-> {self.sweep_dir}")
        if self.interactive:
            from rich.live import Live

            self.live = Live(console=self.console, refresh_per_second=4, transient=True, get_renderable=self._render)
            self.live.start()
        return self

    def __exit__(self, *exc):
        if self.live is not None:
            self.live.stop()

    def _print(self, text: str) -> None:
        self.console.print(text, highlight=False, markup=False, soft_wrap=True)

    def table_rows(self) -> list[list[str]]:
        out = []
        for p, r in self.rows.items():
            vals = r["values"]
            so_far = "-" if not vals else f"{sum(vals) / len(vals):.3f}" + (f" (n={len(vals)})" if len(vals) > 1 else "")
            paper = (sw.preset_files.load_preset(p).get("paper") or {}).get("error")
            now = r["now"]() if callable(r["now"]) else r["now"]
            out.append([p, f"{r['done']}/{len(self.request.seeds)}", now, "-" if r["last"] is None else f"{r['last']:.2f}",
                        so_far, "-" if paper is None else f"{paper:.2f}"])
        return out

    def _render(self):
        from rich.table import Table
        from rich.text import Text

        t = Table(title=Text(f"sweep {self.sweep_dir}: {self.n_finished}/{self.n_runs} runs, "
                             f"{clock_text(self.clock() - self.t0)} elapsed"), title_justify="left")
        for h in ("preset", "seeds", "now", "last eval %", "error % so far", "paper %"):
            t.add_column(h, no_wrap=True)
        for row in self.table_rows():
            t.add_row(*(Text(c) for c in row))
        return t

    def events(self) -> sw.SweepEvents:
        def reporter_for(preset, seed):
            row = self.rows[preset]
            progress = RunProgress(self.clock)

            def start(first_epoch, epochs, steps_per_epoch):
                progress.start(first_epoch, epochs, steps_per_epoch)
                row["now"] = lambda: f"seed {seed}: {progress.short()}" + (" (resumed)" if first_epoch else "")

            def epoch_end(m):
                progress.epoch_end(m)
                row["last"] = m["eval_error"]

            return Reporter(start=start, steps=progress.steps, epoch_end=epoch_end, log=lambda msg: None)

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
            self._print(f"[{self.n_finished}/{self.n_runs}] {o.run_dir} {what}{value}")

        return sw.SweepEvents(run_start=run_start, run_end=run_end, reporter_for=reporter_for, progress=progress)
