"""The report's four figures, drawn with matplotlib's object API (no pyplot, so no global state and no GUI).

Every function takes plain numbers and arrays, writes one file atomically and returns its size. Figure sizes
are fixed (no tight bounding box), so a PNG is always `figsize x DPI` pixels and tests can check the header.
matplotlib is imported inside the functions: importing advbp_cli never imports it.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .files import atomic_path

DPI = 100
CURVES_SIZE = (8.0, 4.8)  # inches: Figure 1
TILE_PANEL = (3.6, 3.9)  # inches per panel: Figure 2
HIST_PANEL = (4.4, 3.4)  # inches per panel: Figure 3
MAX_COLUMNS = 3  # panels per row in Figures 2 and 3
PAD = 1  # pixels between weight tiles


@dataclass
class Curve:
    """One line of Figure 1: a run, or the mean over a sweep's seeds with the standard deviation as a band."""

    label: str
    eval_split: str
    epochs: np.ndarray
    eval_mean: np.ndarray
    eval_std: np.ndarray | None  # None for a single run
    train_mean: np.ndarray | None  # None when the run did not measure the clean training error
    train_std: np.ndarray | None
    n_runs: int


@dataclass
class Bar:
    """One preset of Figure 4."""

    label: str
    mean: float
    std: float | None  # None for a single seed
    n_runs: int
    paper: float | None
    paper_std: float | None


def pixel_size(figsize: tuple[float, float], dpi: int = DPI) -> tuple[int, int]:
    return int(round(figsize[0] * dpi)), int(round(figsize[1] * dpi))


def panel_grid(n: int) -> tuple[int, int]:
    """(rows, columns) for n side-by-side panels."""
    cols = min(max(n, 1), MAX_COLUMNS)
    return math.ceil(max(n, 1) / cols), cols


def panels_figsize(panel: tuple[float, float], n: int) -> tuple[float, float]:
    rows, cols = panel_grid(n)
    return panel[0] * cols, panel[1] * rows


def bars_figsize(n: int) -> tuple[float, float]:
    return max(6.0, 1.0 + 0.9 * n), 4.8


def _figure(figsize):
    from matplotlib.figure import Figure

    return Figure(figsize=figsize, dpi=DPI, layout="constrained")


def _save(fig, path: Path, fmt: str) -> tuple[int, int]:
    # No date in the metadata, so re-rendering the same runs gives the same bytes (friendly to git).
    import matplotlib

    metadata = {"Date": None} if fmt == "svg" else {"Software": None}
    # SVG text stays text (searchable, smaller, and the printed numbers can be checked); fixed hash salt so the
    # SVG's generated ids do not change between renders
    with matplotlib.rc_context({"svg.fonttype": "none", "svg.hashsalt": "advbp"}), atomic_path(path) as tmp:
        if fmt == "png":
            tmp.write_bytes(_small_png(fig, metadata))
        else:
            fig.savefig(tmp, format=fmt, dpi=DPI, metadata=metadata)
    w, h = fig.get_size_inches()
    return pixel_size((w, h))


def _small_png(fig, metadata) -> bytes:
    """The figure as an 8-bit palette PNG: a quarter of the bytes of matplotlib's RGBA PNG, and no visible
    difference for plots of a few colours and grey weight tiles (the README commits these files)."""
    from PIL import Image

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, metadata=metadata)
    buf.seek(0)
    with Image.open(buf) as img:
        rgb = img.convert("RGB")
    out = io.BytesIO()
    rgb.quantize(colors=256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE).save(out, format="PNG", optimize=True)
    return out.getvalue()


def _colors(n: int):
    from matplotlib import colormaps

    cmap = colormaps["tab10"]
    return [cmap(i % 10) for i in range(n)]


def error_curves(curves: list[Curve], path: Path, fmt: str) -> tuple[int, int]:
    """Figure 1: clean training error (dashed) and evaluation error (solid) per epoch."""
    fig = _figure(CURVES_SIZE)
    ax = fig.add_subplot()
    for c, color in zip(curves, _colors(len(curves))):
        tag = f" (mean of {c.n_runs})" if c.n_runs > 1 else ""
        ax.plot(c.epochs, c.eval_mean, color=color, lw=1.6, label=f"{c.label}: {c.eval_split}{tag}")
        if c.eval_std is not None:
            ax.fill_between(c.epochs, c.eval_mean - c.eval_std, c.eval_mean + c.eval_std, color=color, alpha=0.2, lw=0)
        if c.train_mean is not None:
            ax.plot(c.epochs, c.train_mean, color=color, lw=1.2, ls="--", label=f"{c.label}: clean train{tag}")
            if c.train_std is not None:
                ax.fill_between(c.epochs, np.maximum(c.train_mean - c.train_std, 0), c.train_mean + c.train_std,
                                color=color, alpha=0.12, lw=0)
    # symlog: the clean training error reaches exactly 0 (the paper's point), which a log axis cannot show
    ax.set_yscale("symlog", linthresh=0.1, linscale=0.5)
    top = max(float(np.nanmax(c.eval_mean)) for c in curves)
    if any(c.train_mean is not None for c in curves):
        top = max(top, max(float(np.nanmax(c.train_mean)) for c in curves if c.train_mean is not None))
    ax.set_ylim(0, max(top, 1.0) * 1.6)  # headroom above the highest point (and room for the legend)
    from matplotlib.ticker import FixedLocator, FuncFormatter, MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.yaxis.set_major_locator(FixedLocator([0, 0.1, 0.2, 0.5, 1, 2, 5, 10, 20, 50, 100]))
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _pos: f"{v:g}"))
    ax.yaxis.set_minor_locator(FixedLocator([]))
    ax.set_xlabel("epoch")
    ax.set_ylabel("error (%)")
    ax.set_title("Error curves (cf. paper Figure 1)")
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(fontsize="small", ncols=2 if len(curves) > 3 else 1)
    return _save(fig, path, fmt)


def weight_mosaic(weights: np.ndarray, n_tiles: int, tile_shape: tuple[int, int, int] | None = None) -> np.ndarray:
    """The first n_tiles columns of a (C*H*W, units) weight matrix (each column in (C, H, W) order) as one image
    of H x W tiles, each scaled to [-1, 1] by its own largest |w| over all its channels (so 0 stays 0 and the
    channels keep their relative sizes); NaN between tiles (drawn as background). Without `tile_shape` the tiles
    are square, one channel. C = 1 gives a 2-D (grey) image, C = 3 an (h, w, 3) image whose planes are R, G, B."""
    fan_in, hidden = weights.shape
    if tile_shape is None:
        side = math.isqrt(fan_in)
        tile_shape = (1, side, side)
    ch, th, tw = tile_shape
    if ch * th * tw != fan_in:
        raise ValueError(f"tiles of shape {tile_shape} need {ch * th * tw} weights per unit, not {fan_in}")
    k = min(n_tiles, hidden)
    cols = math.ceil(math.sqrt(k))
    rows = math.ceil(k / cols)
    img = np.full((rows * (th + PAD) - PAD, cols * (tw + PAD) - PAD, ch), np.nan)
    for i in range(k):
        w = weights[:, i].astype(np.float64)
        scale = np.abs(w).max()
        tile = (w / scale if scale > 0 else w).reshape(ch, th, tw).transpose(1, 2, 0)
        r, c = divmod(i, cols)
        img[r * (th + PAD) : r * (th + PAD) + th, c * (tw + PAD) : c * (tw + PAD) + tw] = tile
    return img[:, :, 0] if ch == 1 else img


def rgb_image(mosaic: np.ndarray, background: float = 1.0) -> np.ndarray:
    """A symmetric [-1, 1] RGB mosaic as an RGB image in [0, 1]: 0 is mid grey, -1 black and +1 full intensity in
    each channel; NaN (between tiles) becomes `background`."""
    return np.where(np.isnan(mosaic), background, (np.nan_to_num(mosaic) + 1.0) / 2.0).clip(0.0, 1.0)


def weight_tiles(panels: list[tuple], n_tiles: int, path: Path, fmt: str) -> tuple[int, int]:
    """Figure 2: each panel is one network's first layer, one tile per unit (or conv filter). A panel is
    (label, weights (C*H*W, units)) or (label, weights, (C, H, W), what) with what e.g. "units"/"conv filters";
    C = 3 tiles are drawn in colour (R, G, B), C = 1 in grey."""
    fig = _figure(panels_figsize(TILE_PANEL, len(panels)))
    rows, cols = panel_grid(len(panels))
    for i, panel in enumerate(panels):
        label, w = panel[0], panel[1]
        shape = panel[2] if len(panel) > 2 else None
        what = panel[3] if len(panel) > 3 else "units"
        ax = fig.add_subplot(rows, cols, i + 1)
        k = min(n_tiles, w.shape[1])
        mosaic = weight_mosaic(w, n_tiles, shape)
        if mosaic.ndim == 3:
            ax.imshow(rgb_image(mosaic), interpolation="nearest")
        else:
            ax.imshow(mosaic, cmap="gray", vmin=-1, vmax=1, interpolation="nearest")
        size = "" if shape is None else f" ({'x'.join(map(str, shape))})"
        ax.set_title(f"{label}\nfirst {k} of {w.shape[1]} {what}{size}", fontsize="small")
        ax.set_axis_off()
    fig.suptitle("First hidden layer features (cf. paper Figure 2)")
    return _save(fig, path, fmt)


@dataclass
class Histogram:
    """Figure 3's data for one network: per hidden layer, the counts of its non-zero activations in `bins`, as
    fractions of all that layer's activations, and its fraction of exact zeros."""

    bins: np.ndarray
    fractions: list[np.ndarray]
    zero_fractions: list[float]
    sizes: list[int]  # layer widths


def histogram(layers: list[np.ndarray], zero_fractions: list[float], n_bins: int = 60) -> Histogram:
    lo = min(float(a.min()) for a in layers)
    hi = max(float(a.max()) for a in layers)
    bins = np.linspace(lo, hi if hi > lo else lo + 1, n_bins + 1)
    fractions = []
    for acts in layers:
        flat = acts.ravel()
        counts, _ = np.histogram(flat[flat != 0], bins=bins)
        fractions.append(counts / max(flat.size, 1))
    return Histogram(bins, fractions, list(zero_fractions), [a.shape[1] for a in layers])


def activation_histograms(panels: list[tuple[str, Histogram]], split_desc: str, path: Path, fmt: str) -> tuple[int, int]:
    """Figure 3: per network, a histogram of the non-zero hidden activations of each layer (as a fraction of all
    that layer's activations) with the fractions of exact zeros printed on the panel."""
    fig = _figure(panels_figsize(HIST_PANEL, len(panels)))
    rows, cols = panel_grid(len(panels))
    for i, (label, hist) in enumerate(panels):
        ax = fig.add_subplot(rows, cols, i + 1)
        for j, (frac, color) in enumerate(zip(hist.fractions, _colors(len(hist.fractions)))):
            ax.stairs(frac, hist.bins, color=color, lw=1.2, label=f"layer {j + 1}")
        ax.set_yscale("log")
        ax.set_xlabel("activation (exact zeros not drawn)")
        ax.set_ylabel("fraction of activations")
        ax.set_title(label, fontsize="small")
        ax.text(0.97, 0.95, zeros_text(hist.zero_fractions, hist.sizes), transform=ax.transAxes,
                ha="right", va="top", fontsize="small", family="monospace",
                bbox={"boxstyle": "round", "facecolor": "white", "alpha": 0.85})
        ax.legend(fontsize="x-small", loc="center right")
    fig.suptitle(f"Hidden unit activations on {split_desc} (cf. paper Figure 3)")
    return _save(fig, path, fmt)


def overall_zero_fraction(fractions: list[float], sizes: list[int]) -> float:
    """All hidden units together (each layer weighted by its width)."""
    return float(sum(f * s for f, s in zip(fractions, sizes)) / sum(sizes))


def zeros_text(fractions: list[float], sizes: list[int]) -> str:
    lines = ["exact zeros"]
    lines += [f"layer {j + 1}: {f * 100:5.1f}%" for j, f in enumerate(fractions)]
    if len(fractions) > 1:
        lines.append(f"all:     {overall_zero_fraction(fractions, sizes) * 100:5.1f}%")
    return "\n".join(lines)


def sweep_bars(bars: list[Bar], eval_split: str, path: Path, fmt: str) -> tuple[int, int]:
    """Figure 4: our mean +- std over seeds per preset beside the paper's reported value."""
    fig = _figure(bars_figsize(len(bars)))
    ax = fig.add_subplot()
    x = np.arange(len(bars))
    width = 0.38
    ours, paper = _colors(2)
    ax.bar(x - width / 2, [b.mean for b in bars], width, yerr=[b.std or 0 for b in bars], capsize=3, color=ours,
           label=f"advbp ({eval_split}, mean ± std over seeds)")
    have = [i for i, b in enumerate(bars) if b.paper is not None]
    if have:
        ax.bar(x[have] + width / 2, [bars[i].paper for i in have], width,
               yerr=[bars[i].paper_std or 0 for i in have], capsize=3, color=paper, label="paper (test)")
    for i, b in enumerate(bars):
        ax.annotate(f"n={b.n_runs}", (x[i] - width / 2, b.mean + (b.std or 0)), textcoords="offset points",
                    xytext=(0, 3), ha="center", fontsize="x-small")
        if b.paper is None:
            ax.annotate("no paper\nvalue", (x[i] + width / 2, 0), textcoords="offset points", xytext=(0, 3),
                        ha="center", fontsize="x-small", color="gray")
    ax.set_xticks(x, [b.label for b in bars], rotation=30, ha="right", fontsize="small")
    ax.set_ylabel("error (%)")
    ax.set_title("Mean error of the last epochs per preset")
    ax.grid(True, axis="y", alpha=0.3)
    ax.legend(fontsize="small")
    return _save(fig, path, fmt)
