"""`advbp report`: the paper's figures from the user's own runs or sweeps, with an index.md and a report.json
holding the numbers behind them.

Sources are run directories (config.json) or sweep directories (run directories at SWEEP/PRESET/RUN, e.g.
SWEEP/mnist-relu-2x400-adv/seed-0). Runs are grouped: a run directory is a group of one, a sweep gives one group
per preset. Figure 1 draws one line per group (mean with a +-std band over a sweep's seeds), Figures 2 and 3
one panel per group (its first run), Figure 4 (sweeps only) one pair of bars per preset.

Everything is read and computed before the output directory is touched, so bad input leaves nothing behind.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import __version__, figures, outdir, presets
from .config import RunConfig
from .data.registry import get_dataset
from .errors import UsageProblem
from .evaluate import CHUNK, hidden_sparsity, mean_last_epochs
from .files import write_json_atomic, write_text_atomic
from .rundir import CHECKPOINT, CONFIG, RunDir

FORMATS = ("png", "svg")
NAMES = {
    "curves": "fig1-error-curves",
    "features": "fig2-first-layer-features",
    "activations": "fig3-hidden-activations",
    "sweep": "fig4-sweep-vs-paper",
}
INDEX = "index.md"
REPORT_JSON = "report.json"


@dataclass
class RunInfo:
    path: Path
    cfg: RunConfig
    metrics: list[dict]
    complete: bool
    paper: dict | None

    @property
    def epochs(self) -> int:
        return len(self.metrics)

    @property
    def headline(self) -> float:
        """The paper's statistic: mean eval error of the last `mean_last` epochs (of those completed so far)."""
        return mean_last_epochs(self.metrics, self.cfg.train.mean_last)

    def describe(self) -> dict:
        m, t = self.cfg.model, self.cfg.train
        last = self.metrics[-1]
        return {
            "path": str(self.path),
            "preset": self.cfg.preset,
            "method": t.method,
            "network": network_text(m),
            "dataset": self.cfg.data.dataset,
            "preprocess": self.cfg.data.preprocess,
            "eps": t.eps if t.method == "adversarial" else None,
            "seed": self.cfg.runtime.seed,
            "eval_split": self.cfg.data.eval_split,
            "epochs_completed": self.epochs,
            "epochs_planned": t.epochs,
            "complete": self.complete,
            "mean_last": min(t.mean_last, self.epochs),
            "headline_error": self.headline,
            "final_train_error": last.get("train_error"),
            "final_eval_error": last["eval_error"],
            "paper": self.paper,
        }


@dataclass
class Group:
    label: str
    runs: list[RunInfo]
    sweep: Path | None = None
    preset: str | None = None

    @property
    def title(self) -> str:
        """The panel title in Figures 2 and 3: a run's label says what was trained (a sweep's preset name does)."""
        if self.sweep is not None:
            return f"{self.label} ({len(self.runs)} runs, first shown)" if len(self.runs) > 1 else self.label
        c = self.runs[0].cfg
        how = f"adversarial, eps {c.train.eps:g}" if c.train.method == "adversarial" else "back-prop"
        return f"{self.label} ({how}, {network_text(c.model)})"


def network_text(m) -> str:
    """'400x400 relu', or for a conv net 'conv 96-128-256 + 2048x2048 relu'."""
    fc = f"{'x'.join(map(str, m.hidden))} {m.activation}"
    return f"conv {'-'.join(map(str, m.conv_channels))} + {fc}" if m.arch == "conv" else fc


@dataclass
class Panel:
    """What Figures 2 and 3 need from a group's first run."""

    label: str
    title: str
    run: RunInfo
    checkpoint_epoch: int
    weights: np.ndarray  # (C*H*W, units): one column per first-layer unit or conv filter, in (C, H, W) order
    tile_shape: tuple[int, int, int]  # (C, H, W) of one tile
    tile_kind: str  # "units" (a fully connected first layer) or "conv filters"
    layer: str  # the parameter drawn
    hist: figures.Histogram
    zero_fractions: list[float]
    split: str
    n: int


@dataclass
class Report:
    groups: list[Group]
    panels: list[Panel]
    sources: list[str]
    limit: int | None
    tiles: int
    figures: dict = field(default_factory=dict)


# --- reading sources ---------------------------------------------------------------------------------------
def _paper_value(cfg: RunConfig, summary: dict | None) -> dict | None:
    if summary and summary.get("paper"):
        return summary["paper"]
    if cfg.preset:
        if cfg.preset in presets.preset_names():
            return presets.load_preset(cfg.preset).get("paper")
    return None


def read_run(path: Path) -> RunInfo:
    run = RunDir(path)
    record = run.read_config()
    try:
        cfg = RunConfig.model_validate(record.get("config", record))
    except Exception as exc:
        raise UsageProblem(f"the config in {run.config_path} is not valid: {str(exc).splitlines()[0]}") from None
    metrics = run.read_metrics()
    if not metrics:
        raise UsageProblem(f"run directory {path} has no completed epoch yet (its metrics.jsonl is empty)")
    if run.checkpoint_path.is_file():  # config, checkpoint and metrics must be one run (an edited file is refused)
        cfg, _, metrics = run.read_record()
    if any("eval_error" not in m for m in metrics):
        raise UsageProblem(f"{run.metrics_path} has lines without eval_error; is it an advbp run?")
    summary = None
    if run.is_complete():
        try:
            summary = run.read_summary()
        except ValueError:
            summary = None
    return RunInfo(path, cfg, metrics, summary is not None, _paper_value(cfg, summary))


def _sweep_runs(path: Path) -> dict[str, list[Path]]:
    """PRESET -> run directories for a sweep directory (SWEEP/PRESET/RUN/config.json)."""
    found: dict[str, list[Path]] = {}
    for cfg in sorted(path.glob(f"*/*/{CONFIG}")):
        found.setdefault(cfg.parent.parent.name, []).append(cfg.parent)
    return found


def discover(sources: list[str], log=print) -> list[Group]:
    groups: list[Group] = []
    for src in sources:
        path = Path(src)
        if not path.exists():
            raise UsageProblem(f"{src} does not exist (expected a run directory or a sweep directory)")
        if not path.is_dir():
            raise UsageProblem(f"{src} is not a directory (expected a run directory or a sweep directory)")
        if (path / CONFIG).is_file():
            groups.append(Group(path.name, [read_run(path)]))
            continue
        sweep = _sweep_runs(path)
        if not sweep:
            raise UsageProblem(f"{src} is neither an advbp run directory (no {CONFIG}) nor a sweep directory "
                               f"(no run directories at {src}/PRESET/RUN/{CONFIG})")
        n_groups = len(groups)
        for preset_dir, run_paths in sweep.items():
            # a sweep in progress has runs that have not finished an epoch yet: they are left out, not an error
            started = [p for p in run_paths if (p / CHECKPOINT).is_file() and RunDir(p).read_metrics()]
            for p in sorted(set(run_paths) - set(started)):
                log(f"{p}: no completed epoch yet, left out")
            if not started:
                continue
            runs = sorted((read_run(p) for p in started), key=lambda r: (r.cfg.runtime.seed, r.path.name))
            groups.append(Group(preset_dir, runs, sweep=path, preset=runs[0].cfg.preset or preset_dir))
        if len(groups) == n_groups:
            raise UsageProblem(f"sweep directory {src} has no run with a completed epoch yet")
    _unique_labels(groups)
    return groups


def _unique_labels(groups: list[Group]) -> None:
    """Two groups named alike (runs a/seed-0 and b/seed-0, or two sweeps) get their parent folder prefixed."""
    seen: dict[str, int] = {}
    for g in groups:
        seen[g.label] = seen.get(g.label, 0) + 1
    for g in groups:
        if seen[g.label] > 1:
            parent = g.sweep if g.sweep is not None else g.runs[0].path.parent
            g.label = f"{parent.name or parent.resolve().name}/{g.label}"


# --- numbers -----------------------------------------------------------------------------------------------
def hidden_activations(net, x: np.ndarray) -> list[np.ndarray]:
    """Every hidden layer's activations on x, computed in chunks like evaluate.hidden_sparsity."""
    parts = [net.hidden_activations(net.asarray(x[s : s + CHUNK])) for s in range(0, len(x), CHUNK)]
    return [np.concatenate([np.asarray(p[j]) for p in parts]) for j in range(len(parts[0]))]


def first_layer(net, cfg) -> tuple[np.ndarray, tuple[int, int, int], str, str]:
    """(weights (C*H*W, units), tile shape (C, H, W), "units" | "conv filters", parameter name) of Figure 2: an
    MLP's first fully connected layer, one image-shaped tile per hidden unit; a conv net's first conv layer, one
    C x k x k tile per filter. Channels other than 1 (grey) or 3 (RGB) are stacked vertically in grey."""
    params = net.get_params()
    if cfg.model.arch == "conv":
        w = np.asarray(params["conv.0.weight"])  # (out, in, k, k)
        out, c, kh, kw = w.shape
        weights, shape, kind, name = w.reshape(out, c * kh * kw).T, (c, kh, kw), "conv filters", "conv.0.weight"
    else:
        weights = np.asarray(params["layers.0.weight"])  # (fan_in, hidden)
        shape = cfg.model.input_shape or get_dataset(cfg.data.dataset).image_shape
        kind, name = "units", "layers.0.weight"
        if shape is None or int(np.prod(shape)) != weights.shape[0]:
            side = int(round(weights.shape[0] ** 0.5))
            if side * side != weights.shape[0]:
                raise UsageProblem(f"input size {weights.shape[0]} is not a square image")
            shape = (1, side, side)
    shape = tuple(int(d) for d in shape)
    if shape[0] not in (1, 3):
        shape = (1, shape[0] * shape[1], shape[2])
    return weights, shape, kind, name


def build_panels(groups: list[Group], models: list, limit: int | None) -> list[Panel]:
    """One panel per group from its first run, `models[i]` (model_data.ModelWithData) being group i's."""
    panels = []
    for g, m in zip(groups, models):
        run, net, cfg = g.runs[0], m.net, m.cfg
        # exactly what `advbp eval RUN [--limit N]` evaluates: the run's eval split, whole unless --limit
        split = cfg.data.eval_split
        data = m.split(split, limit)
        weights, tile_shape, tile_kind, layer = first_layer(net, cfg)
        # the fully connected hidden layers (a conv net's conv blocks are not counted), as `advbp eval` reports
        zeros = hidden_sparsity(net, data.x)
        # the histogram is kept, not the activations: memory stays one network's worth for any number of panels
        hist = figures.histogram(hidden_activations(net, data.x), zeros)
        panels.append(Panel(g.label, g.title, run, int(m.meta.get("epoch", 0)), weights, tile_shape, tile_kind, layer,
                            hist, zeros, split, len(data.y)))
    return panels


def curve_of(group: Group):
    n = min(r.epochs for r in group.runs)  # seeds are averaged over the epochs all of them have completed
    epochs = np.array([m["epoch"] for m in group.runs[0].metrics[:n]])
    ev = np.array([[m["eval_error"] for m in r.metrics[:n]] for r in group.runs], dtype=float)
    has_train = all("train_error" in m for r in group.runs for m in r.metrics[:n])
    tr = np.array([[m["train_error"] for m in r.metrics[:n]] for r in group.runs], dtype=float) if has_train else None
    many = len(group.runs) > 1
    return figures.Curve(
        label=group.label,
        eval_split=group.runs[0].cfg.data.eval_split,
        epochs=epochs,
        eval_mean=ev.mean(axis=0),
        eval_std=ev.std(axis=0, ddof=1) if many else None,
        train_mean=tr.mean(axis=0) if tr is not None else None,
        train_std=tr.std(axis=0, ddof=1) if tr is not None and many else None,
        n_runs=len(group.runs),
    )


def bar_runs(group: Group) -> tuple[list[RunInfo], bool]:
    """The runs a sweep's bar averages: the complete ones, as the sweep's own summary does; (all runs, True) when
    none is complete yet, so an unfinished sweep still gets a (flagged) bar."""
    done = [r for r in group.runs if r.complete]
    return (done, False) if done else (group.runs, True)


def bar_of(group: Group):
    runs, partial = bar_runs(group)
    values = np.array([r.headline for r in runs])
    paper = group.runs[0].paper or {}
    # sample std (ddof=1) over seeds, as `advbp sweep`'s summary; none for a single seed
    std = float(values.std(ddof=1)) if len(values) > 1 else None
    return figures.Bar(group.label + (" (unfinished)" if partial else ""), float(values.mean()), std, len(values),
               paper.get("error"), paper.get("std"))


# --- the command -------------------------------------------------------------------------------------------
def make_report(sources: list[str], out: str | None, fmt: str, data_dir: str | None, limit: int | None,
                tiles: int = 100, backend: str | None = None, device: str | None = None, download: bool = True,
                command: str = "", log=print, overwrite: bool = False) -> dict:
    if fmt not in FORMATS:
        raise UsageProblem(f"invalid value for --format: {fmt!r} (accepted: {', '.join(FORMATS)})")
    if not sources:
        raise UsageProblem("give at least one run directory or sweep directory")
    if out is None:
        if len(sources) > 1:
            raise UsageProblem("give --out DIR when reporting on several directories")
        out = str(Path(sources[0]) / "report")
    out_path = Path(out)
    outdir.check_writable(out_path, "report", "--out", overwrite)  # before any work; writes nothing

    # Read and compute everything first: a mistake in the input must leave no output directory behind.
    groups = discover(sources, log)
    from .model_data import load_models

    # each group's first run with its data and preprocessing (the loader `advbp eval` and `advbp attack` use)
    models = load_models([g.runs[0].path for g in groups], backend=backend, device=device, data_dir=data_dir,
                         download=download, log=log, data_runs=[r.path for g in groups for r in g.runs])
    panels = build_panels(groups, models, limit)
    report = Report(groups, panels, list(sources), limit, tiles)

    # written as a whole: a failure or a kill leaves the previous report (or no folder), never half of one
    with outdir.StagedWrite(out_path, "report", "--out", overwrite) as stage:
        result = _render(report, stage.path, fmt, command)
    return result


def _split_desc(panels: list[Panel], limit: int | None) -> str:
    splits = sorted({p.split for p in panels})
    ns = sorted({p.n for p in panels})
    what = "/".join(splits) + " split"
    if limit is not None:
        return f"the first {ns[0]} images of the {what}"
    return f"the whole {what} ({'/'.join(map(str, ns))} images)"


def _render(report: Report, out: Path, fmt: str, command: str) -> dict:
    """Draws the figures into `out`, then writes report.json and index.md beside them; returns report.json."""
    out.mkdir(parents=True, exist_ok=True)
    curves = [curve_of(g) for g in report.groups]
    sweep_groups = [g for g in report.groups if g.sweep is not None]
    bars = [bar_of(g) for g in sweep_groups]
    split_desc = _split_desc(report.panels, report.limit)
    figs = _draw(report, curves, bars, sweep_groups, split_desc, out, fmt)
    result = _summary(report, command, fmt, figs, curves, bars, sweep_groups)
    write_json_atomic(out / REPORT_JSON, result)
    write_text_atomic(out / INDEX, index_markdown(result, split_desc))
    return result


def _draw(report: Report, curves, bars, sweep_groups, split_desc: str, out: Path, fmt: str) -> dict[str, dict]:
    """The four figures (Figure 4 only with a sweep), each {file, width_px, height_px, dpi}."""
    panels = report.panels
    figs: dict[str, dict] = {}

    def file(key):
        return f"{NAMES[key]}.{fmt}"

    w, h = figures.error_curves(curves, out / file("curves"), fmt)
    figs["curves"] = {"file": file("curves"), "width_px": w, "height_px": h}

    w, h = figures.weight_tiles([(p.title, p.weights, p.tile_shape, p.tile_kind) for p in panels], report.tiles,
                                out / file("features"), fmt)
    figs["features"] = {"file": file("features"), "width_px": w, "height_px": h}

    w, h = figures.activation_histograms([(p.title, p.hist) for p in panels], split_desc,
                                         out / file("activations"), fmt)
    figs["activations"] = {"file": file("activations"), "width_px": w, "height_px": h}

    if bars:
        splits = "/".join(sorted({g.runs[0].cfg.data.eval_split for g in sweep_groups}))
        w, h = figures.sweep_bars(bars, splits, out / file("sweep"), fmt)
        figs["sweep"] = {"file": file("sweep"), "width_px": w, "height_px": h}
    for f in figs.values():
        f["dpi"] = figures.DPI
    return figs


def _summary(report: Report, command: str, fmt: str, figs: dict, curves, bars, sweep_groups) -> dict:
    """report.json: the sources, groups and runs, the figures' files, and every number the figures draw."""
    groups, panels = report.groups, report.panels
    return {
        "advbp_version": __version__,
        "command": command,
        "format": fmt,
        "sources": report.sources,
        "groups": [
            {"label": g.label, "sweep": str(g.sweep) if g.sweep else None, "preset": g.preset,
             "runs": [r.describe() for r in g.runs]}
            for g in groups
        ],
        "figures": figs,
        "curves": [
            {"label": c.label, "n_runs": c.n_runs, "epochs": int(c.epochs[-1]),
             "final_train_error": None if c.train_mean is None else float(c.train_mean[-1]),
             "final_eval_error": float(c.eval_mean[-1]),
             "min_eval_error": float(c.eval_mean.min()), "min_eval_epoch": int(c.epochs[int(c.eval_mean.argmin())])}
            for c in curves
        ],
        "features": [
            {"label": p.label, "run": str(p.run.path), "checkpoint_epoch": p.checkpoint_epoch,
             "units_shown": min(report.tiles, p.weights.shape[1]), "units": int(p.weights.shape[1]),
             "layer": p.layer, "tiles_are": p.tile_kind, "tile_shape": list(p.tile_shape),
             "colour": "rgb" if p.tile_shape[0] == 3 else "grey"}
            for p in panels
        ],
        "sparsity": [
            {"label": p.label, "run": str(p.run.path), "checkpoint_epoch": p.checkpoint_epoch, "split": p.split,
             "n": p.n, "limit": report.limit, "hidden_zero_fraction": p.zero_fractions,
             "overall_zero_fraction": figures.overall_zero_fraction(p.zero_fractions, p.hist.sizes)}
            for p in panels
        ],
        "sweep": [
            {"label": b.label, "preset": g.preset, "n_runs": b.n_runs, "mean": b.mean, "std": b.std,
             "values": [r.headline for r in bar_runs(g)[0]], "runs": [str(r.path) for r in bar_runs(g)[0]],
             "complete_runs_only": not bar_runs(g)[1], "paper": b.paper, "paper_std": b.paper_std}
            for b, g in zip(bars, sweep_groups)
        ],
    }


# --- index.md ----------------------------------------------------------------------------------------------
def _pct(v, digits=2) -> str:
    return "–" if v is None else f"{v:.{digits}f}"


def _paper(p: dict | None) -> str:
    if not p or p.get("error") is None:
        return "–"
    return f"{p['error']:.2f} ± {p['std']:.2f}" if p.get("std") is not None else f"{p['error']:.2f}"


def index_markdown(r: dict, split_desc: str) -> str:
    figs = r["figures"]
    runs = [run for g in r["groups"] for run in g["runs"]]
    lines = ["# advbp report", ""]
    if r["command"]:
        lines += [f"Made with `{r['command']}` (advbp {r['advbp_version']}); every number below is also in "
                  f"[{REPORT_JSON}]({REPORT_JSON}).", ""]
    lines += ["| run | preset | method | network | epochs | eval split | mean eval error of the last epochs (%) | paper, test (%) |",
              "|---|---|---|---|---|---|---|---|"]
    for run in runs:
        done = f"{run['epochs_completed']}/{run['epochs_planned']}" + ("" if run["complete"] else " (in progress)")
        lines.append(f"| `{run['path']}` | {run['preset'] or '–'} | {run['method']} | {run['network']} | {done} | "
                     f"{run['eval_split']} | {_pct(run['headline_error'], 3)} (last {run['mean_last']}) | {_paper(run['paper'])} |")

    lines += ["", "## Figure 1: error curves", "", f"![error curves]({figs['curves']['file']})", "",
              "*Clean training error (dashed) and evaluation error (solid) per epoch (paper Figure 1). The error axis"
              " follows the data: symlog when the curves reach 0 % or span more than a factor of 10 (so 0 % is"
              " drawn), linear over their range otherwise; curves of up to 20 epochs mark every epoch. A sweep's"
              " preset is the mean over its seeds with a ±1 std band.*", "",
              "| run | runs | epochs | final clean train error (%) | final eval error (%) | lowest eval error (%) (epoch) |",
              "|---|---|---|---|---|---|"]
    for c in r["curves"]:
        lines.append(f"| {c['label']} | {c['n_runs']} | {c['epochs']} | {_pct(c['final_train_error'])} | "
                     f"{_pct(c['final_eval_error'])} | {_pct(c['min_eval_error'])} ({c['min_eval_epoch']}) |")

    lines += ["", "## Figure 2: first hidden layer features", "", f"![first layer features]({figs['features']['file']})", "",
              "*Each tile is one first-layer unit's incoming weights as an image (MNIST: 28x28 grey; CIFAR-10 MLP:"
              " 32x32 RGB from the R, G, B planes of its 3072 weights; conv net: one first-layer filter, 3x5x5 as a"
              " 5x5 RGB tile), scaled symmetrically by its own largest |w| over all channels: grey tiles black"
              " negative and white positive, RGB tiles mid grey 0, each channel dark where negative and bright where"
              " positive (paper Figure 2).*", "",
              "| run | layer | tiles | checkpoint epoch | shown |", "|---|---|---|---|---|"]
    for f in r["features"]:
        shape = "x".join(map(str, f["tile_shape"]))
        lines.append(f"| {f['label']} | `{f['layer']}` | {f['tiles_are']}, {shape} {f['colour']} | "
                     f"{f['checkpoint_epoch']} | {f['units_shown']} of {f['units']} |")

    n_layers = max(len(s["hidden_zero_fraction"]) for s in r["sparsity"])
    lines += ["", "## Figure 3: hidden unit activations", "", f"![hidden activations]({figs['activations']['file']})", "",
              f"*Histogram of the non-zero hidden activations of the fully connected hidden layers (a conv net's conv"
              f" blocks are not included) on {split_desc}; the fraction of exact zeros per layer"
              " (the number `advbp eval --json` reports as hidden_zero_percent) is printed on each panel (paper Figure 3:"
              " 39 % back-prop, 61 % adversarial).*", "",
              "| run | checkpoint epoch | split (images) | " + " | ".join(f"zeros layer {j + 1} (%)" for j in range(n_layers))
              + " | zeros all layers (%) |",
              "|---|---|---|" + "---|" * (n_layers + 1)]
    for s in r["sparsity"]:
        cells = [_pct(z * 100, 1) for z in s["hidden_zero_fraction"]] + ["–"] * (n_layers - len(s["hidden_zero_fraction"]))
        lines.append(f"| {s['label']} | {s['checkpoint_epoch']} | {s['split']} ({s['n']}) | " + " | ".join(cells)
                     + f" | {_pct(s['overall_zero_fraction'] * 100, 1)} |")

    if "sweep" in figs:
        lines += _sweep_section(r)
    return "\n".join(lines) + "\n"


def _sweep_section(r: dict) -> list[str]:
    lines = ["", "## Figure 4: sweep against the paper", "", f"![sweep against the paper]({r['figures']['sweep']['file']})",
             "", "*Our mean ± sample std over seeds (complete runs, as in the sweep's summary) of each run's mean"
             " eval error of its last epochs, beside the paper's reported test error ± std.*", "",
             "| preset | runs | advbp mean ± std (%) | per seed (%) | paper, test (%) |", "|---|---|---|---|---|"]
    for b in r["sweep"]:
        per_seed = ", ".join(f"{v:.2f}" for v in b["values"])
        paper = _paper({"error": b["paper"], "std": b["paper_std"]})
        ours = f"{b['mean']:.3f}" + (f" ± {b['std']:.3f}" if b["std"] is not None else "")
        lines.append(f"| {b['label']} | {b['n_runs']} | {ours} | {per_seed} | {paper} |")
    return lines
