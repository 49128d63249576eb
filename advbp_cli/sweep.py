"""Sweeps: every (preset, seed) of one or more presets or preset groups, each in its own run directory under a
sweep directory, and the aggregate the paper reports (mean +- std over seeds of the mean test error of the last
10 epochs) beside the paper's number.

Layout of a sweep directory::

    DIR/sweep.json                  the resolved request (presets, seeds, overrides) and its provenance
    DIR/PRESET/seed-K/              an ordinary run directory (config.json, metrics.jsonl, checkpoint, summary.json)
    DIR/summary.json|csv|md         the aggregate, written when every run is complete

A run is complete iff its summary.json exists (see RunDir). `run_one` trains one (preset, seed) given only
plain values, so another executor can call it for each run in parallel: `run_sweep` takes an executor, by
default `serial_executor` (one run after another, in this process); advbp_cli.parallel holds the CLI's default
(worker processes on this machine) and advbp_cli.executors the Ray one. The aggregate is always computed from the run directories' summary.json
files, never from values held in memory, so it equals what the runs recorded.
"""

from __future__ import annotations

import csv
import io
import json
import math
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from . import outdir
from . import presets as preset_files
from .checkpoint import read_checkpoint
from .config import RunConfig, build_config, deep_merge, option_name
from .data.paths import explained, resolve_data_dir
from .data.splits import ensure_dataset
from .errors import Interrupted, TrainingDiverged, UsageProblem, os_problem
from .files import write_json_atomic, write_text_atomic
from .networks import require_device
from .protocol import paper_protocol
from .provenance import provenance
from .rundir import CHECKPOINT, METRICS, SUMMARY, RunDir
from .threads import resolve_threads
from .trainer import train

SWEEP_FILE = "sweep.json"
SUMMARY_JSON = "summary.json"
SUMMARY_CSV = "summary.csv"
SUMMARY_MD = "summary.md"
SUMMARY_FILES = (SUMMARY_JSON, SUMMARY_CSV, SUMMARY_MD)
FORMAT = "advbp-sweep/1"
DEFAULT_SEEDS = 5  # the paper averages 5 runs
# Config fields that may differ between the sweep's request and a half-written run it resumes: where the
# arithmetic runs, not what it computes.
RUNTIME_ONLY = (("runtime", "backend"), ("runtime", "device"), ("runtime", "threads"))


# --------------------------------------------------------------------------------------------- the request
def resolve_targets(targets: list[str]) -> list[str]:
    """Group and preset names -> preset names, in the order given, without duplicates."""
    if not targets:
        raise UsageProblem(f"give at least one preset group or preset name (groups: {_group_list()}; see 'advbp presets')")
    groups = preset_files.groups()
    names = preset_files.preset_names()
    out: list[str] = []
    for t in targets:
        if t in groups:
            members = groups[t]["presets"]
        elif t in names:
            members = [t]
        else:
            hint = preset_files.did_you_mean(t, [*groups, *names])
            raise UsageProblem(f"invalid value for GROUP_OR_PRESETS: unknown group or preset {t!r}{hint} "
                               f"(groups: {_group_list()}; presets: see 'advbp presets')")
        out.extend(m for m in members if m not in out)
    return out


def _group_list() -> str:
    return ", ".join(preset_files.groups())


def run_config(preset: str, seed: int, overrides: dict, origin: dict | None = None) -> RunConfig:
    """The resolved config of one run: defaults <- preset <- the sweep's overrides <- this seed. `origin` names
    the option behind each override, for error messages."""
    values = {"preset": preset, **preset_files.config_values(preset_files.load_preset(preset))}
    return build_config(values, deep_merge(overrides, {"runtime": {"seed": seed}}), source=f"sweep of {preset}",
                        origin=origin)


def run_relpath(preset: str, seed: int) -> str:
    return f"{preset}/seed-{seed}"


@dataclass
class SweepRequest:
    targets: list[str]  # as the user typed them (groups and/or presets)
    presets: list[str]  # resolved
    seeds: list[int]
    overrides: dict  # config sections, e.g. {"train": {"epochs": 5}, "runtime": {"backend": "numpy"}}

    def runs(self) -> list[tuple[str, int]]:
        return [(p, s) for p in self.presets for s in self.seeds]

    def to_json(self) -> dict:
        return {"targets": self.targets, "presets": self.presets, "seeds": self.seeds, "overrides": self.overrides}


def make_request(targets: list[str], n_seeds: int, overrides: dict, origin: dict | None = None) -> SweepRequest:
    if n_seeds < 1:
        raise UsageProblem(f"invalid value for --seeds: {n_seeds} (expected a positive number of seeds)")
    req = SweepRequest(list(targets), resolve_targets(list(targets)), list(range(n_seeds)), overrides)
    for p in req.presets:  # validate every config before anything is written
        run_config(p, 0, overrides, origin)
    return req


def datasets_of(request: SweepRequest) -> list[str]:
    """The data sets the request's runs train on, in order of first use (checked/downloaded before a sweep)."""
    return list(dict.fromkeys(run_config(p, 0, request.overrides).data.dataset for p in request.presets))


def _without_runtime_only(overrides: dict) -> dict:
    out = json.loads(json.dumps(overrides))
    for section, key in RUNTIME_ONLY:
        out.get(section, {}).pop(key, None)
    return {k: v for k, v in out.items() if v}


def is_advbp_sweep(sweep_dir: Path) -> bool:
    """A sweep directory of an advbp from before folder markers: its sweep.json is an advbp sweep record."""
    try:
        record = json.loads((Path(sweep_dir) / SWEEP_FILE).read_text())
    except (OSError, ValueError):
        return False
    return isinstance(record, dict) and record.get("format") == FORMAT


def read_sweep(sweep_dir: Path) -> dict:
    path = Path(sweep_dir) / SWEEP_FILE
    try:
        record = json.loads(path.read_text())
    except FileNotFoundError:
        raise UsageProblem(f"{sweep_dir} is not an advbp sweep directory (no {SWEEP_FILE})") from None
    except json.JSONDecodeError as exc:
        raise UsageProblem(f"{path} is not valid JSON ({exc})") from None
    fmt = record.get("format") if isinstance(record, dict) else None
    if fmt != FORMAT:
        raise UsageProblem(f"{path} is not an advbp sweep record (format {fmt!r}, expected {FORMAT!r})")
    return record


def request_from_record(record: dict) -> SweepRequest:
    try:
        r = record["request"]
        return SweepRequest(list(r["targets"]), list(r["presets"]), list(r["seeds"]), dict(r["overrides"]))
    except (KeyError, TypeError):
        raise UsageProblem(f"{SWEEP_FILE} has no complete 'request' (targets, presets, seeds, overrides)") from None


def resume_request(recorded: SweepRequest, targets: list[str], n_seeds: int | None, overrides: dict) -> SweepRequest:
    """The request a --resume continues: what is not given comes from sweep.json. Presets (GROUP_OR_PRESETS) and
    --seeds may be given to extend or narrow the sweep; the settings that decide what a run computes (epochs,
    limits, ...) must stay the recorded ones; --backend and --device may change (they say where it runs)."""
    given = _without_runtime_only(overrides)
    kept = _without_runtime_only(recorded.overrides)
    changed = {f"{sec}.{k}" for sec, kv in given.items() for k, v in kv.items() if kept.get(sec, {}).get(k) != v}
    if changed:
        raise UsageProblem(
            f"--resume must keep the sweep's settings ({_describe(kept)}); "
            f"got {_describe(given)} (only --backend, --device and --threads may change; start a new sweep with another --out)"
        )
    runtime = {"runtime": overrides["runtime"]} if "runtime" in overrides else {}
    presets = resolve_targets(targets) if targets else recorded.presets
    seeds = list(range(n_seeds)) if n_seeds is not None else recorded.seeds
    for p in presets:
        run_config(p, 0, recorded.overrides)
    return SweepRequest(targets or recorded.targets, presets, seeds, deep_merge(recorded.overrides, runtime))


def _flag(section: str, key: str, value) -> str:
    name = option_name(section, key)
    if isinstance(value, bool):
        return name if value else f"--no-{name[2:]}"
    if isinstance(value, (list, tuple)):
        return f"{name} {','.join(map(str, value))}"
    return f"{name} {value}"


def _describe(overrides: dict) -> str:
    flat = [_flag(sec, k, v) for sec, kv in overrides.items() for k, v in kv.items()]
    return " ".join(flat) if flat else "no overrides"


# --------------------------------------------------------------------------------------------- one run
@dataclass
class RunOutcome:
    preset: str
    seed: int
    run_dir: str  # relative to the sweep directory
    status: str  # "done" (trained now), "skipped" (already complete), "diverged", "failed" (a parallel executor's
    # run that raised UsageProblem or whose worker was lost past its retries; the serial executor raises instead)
    summary: dict | None = None
    resumed_from_epoch: int = 0
    message: str = ""


def run_one(sweep_dir: str | Path, preset: str, seed: int, overrides: dict, data_dir: str | Path,
            reporter=None, download: bool = False, workers: int = 1, cpus: int | None = None) -> RunOutcome:
    """Trains (preset, seed) in SWEEP_DIR/PRESET/seed-K; the unit of work an executor schedules.

    Complete runs (summary.json present) are skipped. A half-written run with a checkpoint is resumed from its
    last completed epoch (the trainer drops any metrics past the checkpoint), one without a checkpoint starts
    again. Takes only plain values and locks its own run directory, so runs can be executed in any order and
    in separate processes. TrainingDiverged is returned as status "diverged", not raised. `workers` runs share
    `cpus` CPUs (default: all usable ones): the run's thread count is its share (advbp_cli.threads)."""
    cfg = run_config(preset, seed, overrides)
    rel = run_relpath(preset, seed)
    run = RunDir(Path(sweep_dir) / rel)
    if run.is_complete():
        return RunOutcome(preset, seed, rel, "skipped", run.read_summary())
    run.lock(adopt=True)  # a folder advbp did not write is refused; a run of an older advbp is continued
    try:
        if run.is_complete():  # finished by another process while we waited for nothing (lock is non-blocking)
            return RunOutcome(preset, seed, rel, "skipped", run.read_summary())
        resume = run.is_run() and run.checkpoint_path.is_file()
        if resume:
            _check_same_config(run, cfg)
        else:
            for name in (METRICS, CHECKPOINT, SUMMARY):  # leftovers of a run killed before its first checkpoint
                (run.path / name).unlink(missing_ok=True)
        first_epoch = _checkpoint_epoch(run) if resume else 0
        try:
            summary = train(cfg, run, Path(data_dir), reporter=reporter, resume=resume, download=download,
                            threads=resolve_threads(cfg.runtime.threads, cfg, cpus=cpus, workers=workers))
        except TrainingDiverged as exc:
            return RunOutcome(preset, seed, rel, "diverged", None, first_epoch, str(exc))
        except UsageProblem:  # e.g. a full disk or out of memory before the first checkpoint: nothing half-made stays
            if not run.checkpoint_path.exists():
                run.undo()
            raise
        except Interrupted:
            raise Interrupted(f"interrupted in {run.path}; completed epochs are saved. "
                              f"Resume the sweep with: advbp sweep --resume --out {sweep_dir}") from None
        return RunOutcome(preset, seed, rel, "done", summary, first_epoch)
    finally:
        run.unlock()


def _checkpoint_epoch(run: RunDir) -> int:
    _, meta = read_checkpoint(run.checkpoint_path)
    return int(meta.get("epoch", 0))


def _check_same_config(run: RunDir, cfg: RunConfig) -> None:
    have = run.read_config().get("config", {})
    want = cfg.model_dump(mode="json")
    for section, key in RUNTIME_ONLY:
        have.get(section, {}).pop(key, None)
        want.get(section, {}).pop(key, None)
    if have != want:
        raise UsageProblem(f"{run.path} holds a run with another config than this sweep asks for; "
                           "move it away or use another --out")


# --------------------------------------------------------------------------------------------- the aggregate
def _sample_std(values: list[float]) -> float | None:
    return statistics.stdev(values) if len(values) >= 2 else None


def aggregate(sweep_dir: str | Path, request: SweepRequest) -> dict:
    """Per preset, from the complete run directories: mean +- sample std (ddof=1) over seeds of each run's
    headline, the paper's value, the difference and the difference in units of the paper's std."""
    sweep_dir = Path(sweep_dir)
    rows, runs = [], []
    for preset in request.presets:
        done = [_run_entry(sweep_dir, preset, seed) for seed in request.seeds]
        runs += done
        rows.append(_preset_row(preset, request, [r for r in done if r["complete"]]))
    n_done = sum(r["complete"] for r in runs)
    return {
        "format": FORMAT,
        "statistic": next((r["statistic"] for r in runs if r["complete"]), None),
        "aggregate": "mean and sample standard deviation (ddof=1) over seeds of each run's statistic",
        "request": request.to_json(),
        "complete": n_done == len(runs),
        "runs_complete": n_done,
        "runs_total": len(runs),
        "presets": rows,
        "comparisons": compare_methods(rows, request.overrides),
        "runs": runs,
    }


def _run_entry(sweep_dir: Path, preset: str, seed: int) -> dict:
    """One run of the sweep as summary.json lists it; a complete run with its headline."""
    rel = run_relpath(preset, seed)
    run = RunDir(sweep_dir / rel)
    if not run.is_complete():
        return {"preset": preset, "seed": seed, "run_dir": rel, "complete": False}
    s = run.read_verified_summary()  # summary, metrics, config and checkpoint must be one record
    h = s["headline"]
    return {"preset": preset, "seed": seed, "run_dir": rel, "complete": True, "value": h["value"],
            "statistic": h["statistic"], "epochs_completed": s.get("epochs_completed")}


def _preset_row(preset: str, request: SweepRequest, complete: list[dict]) -> dict:
    """A preset's line of the summary from its complete runs, beside the paper's number."""
    values = [r["value"] for r in complete]
    cfg = run_config(preset, 0, request.overrides)
    paper = preset_files.load_preset(preset).get("paper") or {}
    proto = paper_protocol(cfg)
    mean = statistics.fmean(values) if values else None
    p_err, p_std = paper.get("error"), paper.get("std")
    # a difference to the paper only for runs of the paper's protocol (not for a 1-epoch check, say)
    diff = None if mean is None or p_err is None or not proto["paper"] else mean - p_err
    return {
        "preset": preset,
        "method": cfg.train.method,
        "activation": cfg.model.activation,
        "hidden": cfg.model.hidden,
        "n_seeds": len(values),
        "seeds": [r["seed"] for r in complete],
        "values": values,
        "mean": mean,
        "std": _sample_std(values),
        "paper_error": p_err,
        "paper_std": p_std,
        "paper_source": paper.get("source"),
        "diff": diff,
        "diff_in_paper_std": None if diff is None or not p_std else diff / p_std,
        "paper_protocol": proto["paper"],
        "protocol": proto["protocol"],
        "the_papers_protocol": proto["paper_protocol"],
        "differences_from_paper": proto["differences"],
    }


def _layers(hidden: list[int]) -> str:
    """[800, 800] -> "2x800" (the paper's naming); unequal sizes -> "400-200"."""
    return f"{len(hidden)}x{hidden[0]}" if len(set(hidden)) == 1 else "-".join(map(str, hidden))


def compare_methods(rows: list[dict], overrides: dict) -> list[dict]:
    """Adversarial vs back-propagation pairs: presets whose configs differ only in the training method."""

    def key(preset: str):
        d = run_config(preset, 0, overrides).model_dump(mode="json")
        d.pop("preset")
        for k in ("method", "eps", "adv_weight", "clip"):
            d["train"].pop(k)
        return json.dumps(d, sort_keys=True)

    by_key: dict[str, dict[str, dict]] = {}
    for r in rows:
        by_key.setdefault(key(r["preset"]), {}).setdefault(r["method"], r)
    out = []
    for pair in by_key.values():
        adv, bp = pair.get("adversarial"), pair.get("backprop")
        if adv is None or bp is None:
            continue
        both = adv["mean"] is not None and bp["mean"] is not None
        out.append({
            "architecture": f"{_layers(adv['hidden'])} {adv['activation']}",
            "adversarial": adv["preset"],
            "backprop": bp["preset"],
            "adversarial_mean": adv["mean"],
            "backprop_mean": bp["mean"],
            "difference": adv["mean"] - bp["mean"] if both else None,
            "adversarial_lower": (adv["mean"] < bp["mean"]) if both else None,
        })
    return out


# --------------------------------------------------------------------------------------------- rendering
def _f(v, digits=3, signed=False) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    return f"{v:+.{digits}f}" if signed else f"{v:.{digits}f}"


def _mean_std(r: dict) -> str:
    if r["mean"] is None:
        return "-"
    return _f(r["mean"]) + (f" ± {_f(r['std'])}" if r["std"] is not None else "")


def _paper(r: dict) -> str:
    if r["paper_error"] is None:
        return "-"
    return f"{r['paper_error']:.2f}" + (f" ± {r['paper_std']:.2f}" if r["paper_std"] is not None else "")


def table_rows(summary: dict) -> list[list[str]]:
    return [[r["preset"], f"{r['n_seeds']}/{len(summary['request']['seeds'])}", _mean_std(r), _paper(r),
             _f(r["diff"], signed=True), _f(r["diff_in_paper_std"], 1, signed=True)] for r in summary["presets"]]


TABLE_HEADER = ["preset", "seeds", "error % (mean ± std)", "paper %", "diff (pp)", "diff / paper std"]
PAIR_HEADER = ["architecture", "backprop %", "adversarial %", "adv - backprop (pp)", "adversarial lower"]


def pair_rows(summary: dict) -> list[list[str]]:
    yes = {True: "yes", False: "NO", None: "-"}
    return [[c["architecture"], _f(c["backprop_mean"]), _f(c["adversarial_mean"]), _f(c["difference"], signed=True),
             yes[c["adversarial_lower"]]] for c in summary["comparisons"]]


def header_lines(summary: dict) -> list[str]:
    req = summary["request"]
    seeds = req["seeds"]
    seed_txt = f"{seeds[0]}-{seeds[-1]}" if len(seeds) > 1 and seeds == list(range(seeds[0], seeds[-1] + 1)) else ", ".join(map(str, seeds))
    return [
        f"request: {' '.join(req['targets'])}; {len(seeds)} seed(s) ({seed_txt}); settings: {_describe(req['overrides'])}",
        f"per run: {summary['statistic'] or 'no run complete yet'}; per preset: {summary['aggregate']}",
        f"runs complete: {summary['runs_complete']} of {summary['runs_total']}"
        + ("" if summary["complete"] else " (INCOMPLETE: the rows cover the complete runs only)"),
        *protocol_lines(summary),
    ]


def protocol_lines(summary: dict) -> list[str]:
    """Which rows follow the paper's protocol: only those get a difference to the paper (sweeps before this field
    existed count as the paper's)."""
    rows = summary["presets"]
    off = [r for r in rows if r.get("paper_protocol") is False and r["paper_error"] is not None]
    if not off:
        return []
    r = off[0]
    which = "every preset" if len(off) == len(rows) else f"{len(off)} of {len(rows)} presets"
    return [f"protocol: {r['protocol']}, not the paper's ({r['the_papers_protocol']}) for {which}: no difference "
            f"to the paper is computed for them (differs in {', '.join(r['differences_from_paper'][:3])})"]


def to_markdown(summary: dict, title: str) -> str:
    def table(header, rows):
        lines = ["| " + " | ".join(header) + " |", "| " + " | ".join("---" for _ in header) + " |"]
        return lines + ["| " + " | ".join(r) + " |" for r in rows]

    out = [f"# advbp sweep: {title}", ""] + [f"- {ln}" for ln in header_lines(summary)] + ["", *table(TABLE_HEADER, table_rows(summary))]
    if summary["comparisons"]:
        out += ["", "## Adversarial vs back-propagation (same settings otherwise)", "", *table(PAIR_HEADER, pair_rows(summary))]
    return "\n".join(out) + "\n"


def to_csv(summary: dict) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    cols = ["preset", "method", "activation", "hidden", "n_seeds", "seeds", "mean", "std", "paper_error", "paper_std",
            "diff", "diff_in_paper_std"]
    w.writerow(cols)
    for r in summary["presets"]:
        vals = []
        for c in cols:
            v = r[c]
            if c in ("hidden", "seeds"):
                v = " ".join(map(str, v))
            elif isinstance(v, float):
                v = repr(v)
            vals.append("" if v is None else v)
        w.writerow(vals)
    return buf.getvalue()


def write_summary(sweep_dir: Path, summary: dict) -> None:
    """summary.json, summary.csv and summary.md, each written atomically."""
    title = " ".join(summary["request"]["targets"])
    write_json_atomic(sweep_dir / SUMMARY_JSON, summary)
    write_text_atomic(sweep_dir / SUMMARY_CSV, to_csv(summary))
    write_text_atomic(sweep_dir / SUMMARY_MD, to_markdown(summary, title))


def load_report(sweep_dir: str | Path) -> dict:
    """The sweep's summary.json; for a sweep that has not finished, the aggregate of its complete runs so far."""
    sweep_dir = Path(sweep_dir)
    record = read_sweep(sweep_dir)
    path = sweep_dir / SUMMARY_JSON
    if path.is_file():
        try:
            return json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise UsageProblem(f"{path} is not valid JSON ({exc})") from None
    return aggregate(sweep_dir, request_from_record(record))


# --------------------------------------------------------------------------------------------- the serial executor
@dataclass
class SweepEvents:
    """Callbacks for a display; the defaults do nothing."""

    run_start: Callable[[str, int, int], None] = lambda preset, seed, first_epoch: None
    run_end: Callable[[RunOutcome], None] = lambda outcome: None
    reporter_for: Callable[[str, int], object] = lambda preset, seed: None
    # Executors whose runs train in other processes report progress by polling the run directories instead:
    # (preset, seed, epochs completed or None while queued, epochs in total, eval error % of the last epoch or None)
    progress: Callable[[str, int, int | None, int, float | None], None] = lambda preset, seed, done, total, last: None


def default_sweep_dir(targets: list[str]) -> Path:
    name = "+".join(targets)
    if len(name) > 80:
        name = f"{targets[0]}+{len(targets) - 1}-more"
    return Path("runs") / f"sweep-{name}"


def plan(targets: list[str], n_seeds: int | None, overrides: dict, out: str | None, resume: bool,
         origin: dict | None = None) -> tuple[Path, SweepRequest]:
    """The sweep directory and the request to run, checked against what the directory holds; writes nothing."""
    if not targets and not (resume and out):
        resolve_targets([])  # raises the usage message naming the groups
    sweep_dir = Path(out) if out else default_sweep_dir(targets)
    # a file in the way, another kind of advbp folder, a folder advbp did not write: refused, with or without --resume
    outdir.inspect(sweep_dir, "sweep", "--out", adopt=is_advbp_sweep)
    exists = (sweep_dir / SWEEP_FILE).is_file()
    if resume and exists:
        return sweep_dir, resume_request(request_from_record(read_sweep(sweep_dir)), targets, n_seeds, overrides)
    if resume and not targets:
        raise UsageProblem(f"--resume: {sweep_dir} holds no sweep ({SWEEP_FILE} missing); give GROUP_OR_PRESETS to start one")
    if not resume and exists:
        raise UsageProblem(f"--out {sweep_dir} already holds a sweep; add --resume to continue it, or use another --out")
    # --resume of a directory without a sweep simply starts it (so one command line serves both cases)
    return sweep_dir, make_request(targets, DEFAULT_SEEDS if n_seeds is None else n_seeds, overrides, origin)


def prepare(targets: list[str], n_seeds: int | None, overrides: dict, origin: dict, out: str | None, resume: bool,
            data_dir: str | None, *, download: bool, check_device: bool, log=print) -> tuple[Path, SweepRequest, Path]:
    """(sweep directory, request, data folder): everything a sweep can refuse is refused here, before anything is
    written, so a failed start leaves no sweep directory behind. `check_device`: a --device cuda the local machine
    lacks (a Ray cluster's GPUs live on other nodes, so only a local sweep can be checked here)."""
    if check_device:
        require_device(overrides.get("runtime", {}).get("device"))
    sweep_dir, request = plan(targets, n_seeds, overrides, out, resume, origin=origin)
    data_path, data_origin = resolve_data_dir(data_dir)
    # the files of every data set the requested presets use (e.g. table3: CIFAR-10; the MNIST groups: MNIST)
    with explained(data_path, data_origin):
        for dataset in datasets_of(request):
            ensure_dataset(dataset, data_path, download=download, log=log)
    return sweep_dir, request, data_path


def raise_failures(summary: dict, sweep_dir: Path) -> None:
    """A sweep whose runs did not all complete ends in one line listing them (after its summary is written and
    shown); --resume retries them from their last good epoch."""
    failures = summary.get("failures")
    if not failures:
        return
    listed = "; ".join(f"{f['run_dir']}: {f['message']}" for f in failures)
    if all(f.get("status", "diverged") == "diverged" for f in failures):
        raise TrainingDiverged(f"{len(failures)} of {summary['runs_total']} runs diverged ({listed})")
    raise UsageProblem(f"{len(failures)} of {summary['runs_total']} runs did not complete ({listed}); "
                       f"the others are summarised. Continue with: advbp sweep --resume --out {sweep_dir}")


def record_request(sweep_dir: Path, request: SweepRequest) -> None:
    path = sweep_dir / SWEEP_FILE
    previous = json.loads(path.read_text()) if path.is_file() else None
    record = {
        "format": FORMAT,
        "request": request.to_json(),
        "layout": "PRESET/seed-K, one run directory per (preset, seed); a run is complete iff its summary.json exists",
        "runs": [run_relpath(p, s) for p, s in request.runs()],
        "provenance": provenance(("torch",)),
        "history": (previous.get("history", []) if previous else [])
        + ([{"request": previous["request"], "provenance": previous["provenance"]}] if previous else []),
    }
    write_json_atomic(path, record)


Executor = Callable[[Path, SweepRequest, Path, SweepEvents], list[RunOutcome]]


def serial_executor(sweep_dir: Path, request: SweepRequest, data_dir: Path, ev: SweepEvents) -> list[RunOutcome]:
    """Every (preset, seed) of the request, one after another in this process, in the request's order.

    The local executor (advbp_cli.parallel) uses it when one worker is enough (--workers 1, a single run left,
    runs on a GPU); otherwise it trains several runs at once in worker processes, through the same `run_one`."""
    outcomes = []
    for preset, seed in request.runs():
        ev.run_start(preset, seed, 0)
        outcome = run_one(sweep_dir, preset, seed, request.overrides, data_dir, reporter=ev.reporter_for(preset, seed))
        outcomes.append(outcome)
        ev.run_end(outcome)
    return outcomes


def run_sweep(sweep_dir: Path, request: SweepRequest, data_dir: Path, events: SweepEvents | None = None,
              executor: Executor | None = None) -> dict:
    """Runs every (preset, seed) not yet complete with `executor` (default: `serial_executor`), then writes and
    returns the aggregate. The executor returns one RunOutcome per run; runs that ended neither "done" nor
    "skipped" are listed in the summary's "failures" (with their status), the others are summarised."""
    ev = events or SweepEvents()
    execute = executor or serial_executor
    # one driver per sweep directory (the same flock as a run directory), in a folder advbp owns (outdir)
    lock = outdir.take(sweep_dir, "sweep", "--out", adopt=is_advbp_sweep)
    try:
        try:
            for name in SUMMARY_FILES:  # a summary is only ever the aggregate of the request being run
                (sweep_dir / name).unlink(missing_ok=True)
            record_request(sweep_dir, request)
        except BaseException as exc:
            lock.undo()  # a sweep that could not even record its request leaves nothing behind
            if isinstance(exc, OSError):
                raise os_problem(exc, f"write {exc.filename or sweep_dir}") from None
            raise
        outcomes = execute(sweep_dir, request, data_dir, ev)
        failures = [o for o in outcomes if o.status not in ("done", "skipped")]
        summary = aggregate(sweep_dir, request)
        summary["failures"] = [{"run_dir": f.run_dir, "status": f.status, "message": f.message} for f in failures]
        try:
            write_summary(sweep_dir, summary)
        except OSError as exc:
            raise os_problem(exc, f"write {exc.filename or sweep_dir} (the runs are saved; 'advbp sweep --resume "
                                  f"--out {sweep_dir}' writes the summary again)") from None
        return summary
    finally:
        lock.release()
