"""The report's four figures, drawn with matplotlib's object API (no pyplot, so no global state and no GUI).

Every figure has a `draw_*` function that takes plain numbers and arrays and returns the matplotlib Figure (tests
measure its text and legend with matplotlib's renderer), and a function that writes it atomically and returns its
size. Sizes are set here, never by a tight bounding box, so a PNG is exactly the returned size: Figures 1, 3 and 4
have fixed sizes per panel (Figure 1 grows with its legend), Figure 2 follows its mosaics (see draw_weight_tiles).
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
CURVES_SIZE = (8.0, 4.8)  # inches: Figure 1 (taller when its legend needs more than two rows)
HIST_PANEL = (4.4, 3.4)  # inches per panel: Figure 3
MAX_COLUMNS = 3  # panels per row in Figures 2 and 3
PAD = 1  # pixels between weight tiles
MARKERS_UP_TO = 20  # Figure 1 marks every epoch of a curve with at most this many points (one point is visible)
SYMLOG_SPAN = 10  # Figure 1 uses a symlog axis when the data span more than this factor (or reach 0)
TILE_AREA_PX = 300  # Figure 2: a mosaic is zoomed by a whole number to at most this size (see tile_zoom)
TILE_PANEL_MIN_PX = 360  # Figure 2: the narrowest panel (room for its title)
TILE_MARGIN_PX = 8  # Figure 2: around panels, titles and the figure's edge


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


def _figure(figsize, layout="constrained"):
    from matplotlib.figure import Figure

    return Figure(figsize=figsize, dpi=DPI, layout=layout)


def _renderer(fig):
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = fig.canvas if isinstance(fig.canvas, FigureCanvasAgg) else FigureCanvasAgg(fig)
    return canvas.get_renderer()


def text_width_px(fig, text: str, **props) -> float:
    """The rendered width of `text` (widest line) in pixels, measured by matplotlib's renderer."""
    t = fig.text(0, 0, text, **props)
    try:
        return t.get_window_extent(_renderer(fig)).width
    finally:
        t.remove()


def _pieces(word: str) -> list[str]:
    """A word too long for a line, cut after '-', '_', '/' or ',' (run names: mnist-relu-2x400-adv-seed0)."""
    out, cur = [], ""
    for ch in word:
        cur += ch
        if ch in "-_/,":
            out.append(cur)
            cur = ""
    return out + ([cur] if cur else [])


def fit_text(fig, text: str, max_px: float, **props) -> str:
    """`text` with line breaks added so that no line is wider than max_px when drawn with `props`: greedy, at
    spaces first, then after '-', '_', '/' inside a long word, then between characters. Existing line breaks
    are kept. Titles are wrapped, never clipped or shrunk."""

    def fits(s: str) -> bool:
        return text_width_px(fig, s, **props) <= max_px

    def wrap(line: str) -> list[str]:
        tokens: list[tuple[str, str]] = []  # (piece, separator before the next piece)
        for word in line.split(" "):
            parts = [word] if fits(word) else _pieces(word)
            parts = [q for part in parts for q in ([part] if fits(part) else list(part))]
            tokens += [(q, "") for q in parts[:-1]] + [(parts[-1], " ")]
        lines, cur = [], ""
        for piece, sep in tokens:
            if cur and not fits(cur + piece):
                lines.append(cur.rstrip())
                cur = ""
            cur += piece + sep
        return lines + [cur.rstrip()]

    return "\n".join(out for line in text.split("\n") for out in wrap(line))


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


def curve_values(curves: list[Curve]) -> np.ndarray:
    """Every value Figure 1 draws (means and the ends of the std bands), for its axis limits."""
    vals = []
    for c in curves:
        for mean, std in ((c.eval_mean, c.eval_std), (c.train_mean, c.train_std)):
            if mean is None:
                continue
            vals.append(mean)
            if std is not None:
                vals += [np.maximum(mean - std, 0), mean + std]
    v = np.concatenate([np.ravel(a) for a in vals]).astype(float)
    return v[np.isfinite(v)]


def error_axis(values: np.ndarray) -> tuple[str, tuple[float, float]]:
    """("symlog" | "linear", (bottom, top)) for Figure 1's error axis, following the data: symlog when the curves
    reach 0 or span more than a factor SYMLOG_SPAN (a clean training error falling to 0, the paper's point, next to
    a test error of 1-2 %); otherwise a linear axis over the data's range with a margin (60-90 % CIFAR-10 curves,
    a few epochs of MNIST). Never below 0 or above 100 %."""
    lo, hi = (float(values.min()), float(values.max())) if values.size else (0.0, 1.0)
    if hi <= 0 or lo < hi / SYMLOG_SPAN:
        return "symlog", (0.0, min(max(hi, 1.0) * 1.6, 100.0 if hi <= 100 else hi * 1.05))
    margin = max((hi - lo) * 0.1, hi * 0.02, 0.05)
    bottom = max(lo - margin, 0.0)
    top = hi + margin if hi > 100 else min(hi + margin, 100.0)
    return "linear", (bottom, top)


def epoch_axis(epochs: list[np.ndarray]) -> tuple[float, float]:
    """x limits: half an epoch beyond the first and last epoch for short runs (one epoch is a point in the middle),
    2 % of the span for long ones."""
    first = min(float(e.min()) for e in epochs)
    last = max(float(e.max()) for e in epochs)
    pad = max(0.5, 0.02 * (last - first))
    return first - pad, last + pad


def draw_error_curves(curves: list[Curve]):
    """Figure 1 as a matplotlib Figure: clean training error (dashed) and evaluation error (solid) per epoch, one
    colour per run (or sweep preset, with a +-std band); the legend sits below the axes, so it never covers a
    curve, and names each colour once plus what solid and dashed mean."""
    from matplotlib.lines import Line2D
    from matplotlib.ticker import FixedLocator, FuncFormatter, MaxNLocator, NullLocator

    labels = []
    for c in curves:
        tag = f", mean ± std of {c.n_runs}" if c.n_runs > 1 else ""
        labels.append(f"{c.label}: {c.eval_split}{tag}")
    marked = any(len(c.epochs) <= MARKERS_UP_TO for c in curves)
    dot, ring = ({"marker": "o", "ms": 4}, {"marker": "o", "ms": 4, "mfc": "white"}) if marked else ({}, {})
    style = [Line2D([], [], color="0.3", lw=1.6, label="solid" + (", filled" if marked else "") + ": evaluation error", **dot),
             Line2D([], [], color="0.3", lw=1.2, ls="--", label="dashed" + (", open" if marked else "")
                    + ": clean training error", **ring)]
    has_train = any(c.train_mean is not None for c in curves)
    n_entries = len(curves) + (2 if has_train else 1)
    ncols = 1 if n_entries == 1 else (2 if n_entries <= 6 else 3)
    rows = math.ceil(n_entries / ncols)
    fig = _figure((CURVES_SIZE[0], CURVES_SIZE[1] + 0.2 * max(0, rows - 2)))
    ax = fig.add_subplot()
    # a legend column is the figure's width / ncols, less the line sample drawn before each label
    label_px = fig.bbox.width / ncols - 70
    lines = []
    for c, color, label in zip(curves, _colors(len(curves)), labels):
        label = fit_text(fig, label, label_px, fontsize="small")
        mark = {"marker": "o", "ms": 4} if len(c.epochs) <= MARKERS_UP_TO else {}
        lines.append(ax.plot(c.epochs, c.eval_mean, color=color, lw=1.6, label=label, **mark)[0])
        if c.eval_std is not None:
            ax.fill_between(c.epochs, c.eval_mean - c.eval_std, c.eval_mean + c.eval_std, color=color, alpha=0.2, lw=0)
        if c.train_mean is not None:
            train_mark = {**mark, "mfc": "white"} if mark else {}
            ax.plot(c.epochs, c.train_mean, color=color, lw=1.2, ls="--", **train_mark)
            if c.train_std is not None:
                ax.fill_between(c.epochs, np.maximum(c.train_mean - c.train_std, 0), c.train_mean + c.train_std,
                                color=color, alpha=0.12, lw=0)
    scale, (bottom, top) = error_axis(curve_values(curves))
    if scale == "symlog":
        # symlog: the clean training error reaches exactly 0 (the paper's point), which a log axis cannot show
        ax.set_yscale("symlog", linthresh=0.1, linscale=0.5)
        ax.yaxis.set_major_locator(FixedLocator([0, 0.1, 0.2, 0.5, 1, 2, 5, 10, 20, 50, 100]))
        ax.yaxis.set_minor_locator(NullLocator())
    else:
        ax.yaxis.set_major_locator(MaxNLocator(nbins=8, steps=[1, 2, 5, 10]))
    ax.set_ylim(bottom, top)
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _pos: f"{v:g}"))
    ax.set_xlim(*epoch_axis([c.epochs for c in curves]))
    ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))
    ax.set_xlabel("epoch")
    ax.set_ylabel("error (%)" + (" (symlog axis)" if scale == "symlog" else ""))
    ax.set_title(fit_text(fig, "Error curves (cf. paper Figure 1)", fig.bbox.width * 0.95))
    ax.grid(True, which="major", alpha=0.3)
    fig.legend(handles=lines + (style if has_train else style[:1]), loc="outside lower center", ncols=ncols,
               fontsize="small", frameon=False)
    return fig


def error_curves(curves: list[Curve], path: Path, fmt: str) -> tuple[int, int]:
    """Figure 1, written to `path`."""
    return _save(draw_error_curves(curves), path, fmt)


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


def tile_zoom(height: int, width: int) -> int:
    """Figure 2 draws a mosaic at the largest whole-number zoom that keeps it within TILE_AREA_PX, and never below
    1:1: shrinking would drop pixel rows, and the 1-pixel separators between tiles with them."""
    return max(1, TILE_AREA_PX // max(height, width))


def _text_size_px(fig, text: str, **props) -> tuple[int, int]:
    t = fig.text(0, 0, text, **props)
    try:
        box = t.get_window_extent(_renderer(fig))
    finally:
        t.remove()
    return math.ceil(box.width), math.ceil(box.height)


def draw_weight_tiles(panels: list[tuple], n_tiles: int):
    """Figure 2 as a matplotlib Figure: each panel is one network's first layer, one tile per unit (or conv
    filter). A panel is (label, weights (C*H*W, units)) or (label, weights, (C, H, W), what) with what e.g.
    "units"/"conv filters"; C = 3 tiles are drawn in colour (R, G, B), C = 1 in grey.

    Laid out by hand in whole pixels (no automatic layout): every mosaic is drawn at a whole-number zoom (see
    tile_zoom), so all tiles and separators keep the same width, and the figure grows to fit it; titles are
    wrapped to their panel's width, so nothing is clipped."""
    items = []
    for panel in panels:
        label, w = panel[0], panel[1]
        shape = panel[2] if len(panel) > 2 else None
        what = panel[3] if len(panel) > 3 else "units"
        mosaic = weight_mosaic(w, n_tiles, shape)
        size = "" if shape is None else f" ({'x'.join(map(str, shape))})"
        title = f"{label}\nfirst {min(n_tiles, w.shape[1])} of {w.shape[1]} {what}{size}"
        items.append((title, mosaic, tile_zoom(*mosaic.shape[:2])))
    rows, cols = panel_grid(len(items))
    grid = [items[r * cols : (r + 1) * cols] for r in range(rows)]
    col_w = [max([TILE_PANEL_MIN_PX] + [row[c][1].shape[1] * row[c][2] + 2 * TILE_MARGIN_PX
                                        for row in grid if c < len(row)]) for c in range(cols)]
    fig = _figure((1, 1), layout=None)  # sized below, once the wrapped titles are measured
    title_props = {"fontsize": "small", "ha": "center", "va": "top"}
    titles = [[fit_text(fig, it[0], col_w[c] - 2 * TILE_MARGIN_PX, fontsize="small") for c, it in enumerate(row)]
              for row in grid]
    title_h = [[_text_size_px(fig, t, fontsize="small")[1] for t in row] for row in titles]
    row_h = [max(th + TILE_MARGIN_PX + it[1].shape[0] * it[2] for th, it in zip(title_h[r], grid[r])) + 2 * TILE_MARGIN_PX
             for r in range(rows)]
    width = sum(col_w)
    sup = fit_text(fig, "First hidden layer features (cf. paper Figure 2)", width - 2 * TILE_MARGIN_PX, fontsize="large")
    sup_h = _text_size_px(fig, sup, fontsize="large")[1]
    height = sup_h + 2 * TILE_MARGIN_PX + sum(row_h)
    fig.set_size_inches(width / DPI, height / DPI)

    fig.text(0.5, 1 - TILE_MARGIN_PX / height, sup, fontsize="large", ha="center", va="top")
    top = height - sup_h - 2 * TILE_MARGIN_PX  # pixels from the bottom edge
    for r, row in enumerate(grid):
        left = 0
        for c, (_title, mosaic, zoom) in enumerate(row):
            fig.text((left + col_w[c] / 2) / width, (top - TILE_MARGIN_PX) / height, titles[r][c], **title_props)
            img_h, img_w = mosaic.shape[0] * zoom, mosaic.shape[1] * zoom
            x0 = left + (col_w[c] - img_w) // 2
            y0 = top - TILE_MARGIN_PX - title_h[r][c] - TILE_MARGIN_PX - img_h
            ax = fig.add_axes((x0 / width, y0 / height, img_w / width, img_h / height))
            if mosaic.ndim == 3:
                ax.imshow(rgb_image(mosaic), interpolation="nearest", aspect="auto")
            else:
                ax.imshow(mosaic, cmap="gray", vmin=-1, vmax=1, interpolation="nearest", aspect="auto")
            ax.set_axis_off()
            left += col_w[c]
        top -= row_h[r]
    return fig


def weight_tiles(panels: list[tuple], n_tiles: int, path: Path, fmt: str) -> tuple[int, int]:
    """Figure 2, written to `path`."""
    return _save(draw_weight_tiles(panels, n_tiles), path, fmt)


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


def draw_activation_histograms(panels: list[tuple[str, Histogram]], split_desc: str):
    """Figure 3 as a matplotlib Figure: per network, a histogram of the non-zero hidden activations of each layer
    (as a fraction of all that layer's activations) with the fractions of exact zeros printed on the panel. Titles
    are wrapped to fit their panel (the axes are the panel less the y label, ~90 px)."""
    fig = _figure(panels_figsize(HIST_PANEL, len(panels)))
    rows, cols = panel_grid(len(panels))
    panel_px = HIST_PANEL[0] * DPI
    for i, (label, hist) in enumerate(panels):
        ax = fig.add_subplot(rows, cols, i + 1)
        for j, (frac, color) in enumerate(zip(hist.fractions, _colors(len(hist.fractions)))):
            ax.stairs(frac, hist.bins, color=color, lw=1.2, label=f"layer {j + 1}")
        ax.set_yscale("log")
        ax.set_xlabel("activation (exact zeros not drawn)")
        ax.set_ylabel("fraction of activations")
        ax.set_title(fit_text(fig, label, panel_px - 90, fontsize="small"), fontsize="small")
        ax.text(0.97, 0.95, zeros_text(hist.zero_fractions, hist.sizes), transform=ax.transAxes,
                ha="right", va="top", fontsize="small", family="monospace",
                bbox={"boxstyle": "round", "facecolor": "white", "alpha": 0.85})
        ax.legend(fontsize="x-small", loc="center right")
    fig.suptitle(fit_text(fig, f"Hidden unit activations on {split_desc} (cf. paper Figure 3)",
                          fig.bbox.width - 20, fontsize="large"))
    return fig


def activation_histograms(panels: list[tuple[str, Histogram]], split_desc: str, path: Path, fmt: str) -> tuple[int, int]:
    """Figure 3, written to `path`."""
    return _save(draw_activation_histograms(panels, split_desc), path, fmt)


def overall_zero_fraction(fractions: list[float], sizes: list[int]) -> float:
    """All hidden units together (each layer weighted by its width)."""
    return float(sum(f * s for f, s in zip(fractions, sizes)) / sum(sizes))


def zeros_text(fractions: list[float], sizes: list[int]) -> str:
    lines = ["exact zeros"]
    lines += [f"layer {j + 1}: {f * 100:5.1f}%" for j, f in enumerate(fractions)]
    if len(fractions) > 1:
        lines.append(f"all:     {overall_zero_fraction(fractions, sizes) * 100:5.1f}%")
    return "\n".join(lines)


def draw_sweep_bars(bars: list[Bar], eval_split: str):
    """Figure 4 as a matplotlib Figure: our mean +- std over seeds per preset beside the paper's reported value.
    The legend sits above the axes, so it never covers a bar."""
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
    ax.set_xlim(x[0] - 0.6, x[-1] + 0.6)  # room for every preset's paper slot, even when its bar is missing
    ax.set_ylabel("error (%)")
    ax.set_title(fit_text(fig, "Mean error of the last epochs per preset", fig.bbox.width - 20))
    ax.grid(True, axis="y", alpha=0.3)
    fig.legend(loc="outside upper center", ncols=2, fontsize="small", frameon=False)
    return fig


def sweep_bars(bars: list[Bar], eval_split: str, path: Path, fmt: str) -> tuple[int, int]:
    """Figure 4, written to `path`."""
    return _save(draw_sweep_bars(bars, eval_split), path, fmt)
