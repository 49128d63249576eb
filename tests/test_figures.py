"""The report's figures read well for any run: checked on the drawn matplotlib figures and on the written PNGs,
with synthetic numbers (no training), against criteria that do not come from the drawing code: where the data
land on the axes, whether every text lies inside the figure, whether the legend overlaps what it explains, and
how many separator lines a decoded PNG shows between weight tiles."""

from __future__ import annotations

import io

import numpy as np
import pytest

from advbp_cli import figures
from advbp_cli.figures import Bar, Curve

LONG_LABEL = "mnist-relu-2x400-adv-seed0 (adversarial, eps 0.08, 400x400 relu)"  # clipped at both edges before


def curve(label, eval_err, train_err=None, eval_split="test", epochs=None, n_runs=1, std=None):
    ev = np.asarray(eval_err, dtype=float)
    ep = np.arange(1, len(ev) + 1) if epochs is None else np.asarray(epochs)
    tr = None if train_err is None else np.asarray(train_err, dtype=float)
    return Curve(label, eval_split, ep, ev, None if std is None else np.full(len(ev), std), tr,
                 None if std is None or tr is None else np.full(len(ev), std), n_runs)


def rendered(fig):
    fig.canvas.draw()  # lays the figure out (constrained layout runs at draw time)
    return fig.canvas.get_renderer()


def texts_outside_figure(fig) -> list[str]:
    """Every visible, non-empty text (titles, labels, tick labels, legend entries) that crosses the figure's edge."""
    from matplotlib.text import Text

    r = rendered(fig)
    fb = fig.bbox
    # matplotlib keeps label objects for ticks beyond the view limits but does not draw them
    undrawn = set()
    for ax in fig.axes:
        for axis in (ax.xaxis, ax.yaxis):
            lo, hi = sorted(axis.get_view_interval())
            for tick, loc in zip(axis.get_major_ticks(), axis.get_majorticklocs()):
                if not lo - 1e-9 * max(1, abs(hi)) <= loc <= hi + 1e-9 * max(1, abs(hi)):
                    undrawn |= {id(tick.label1), id(tick.label2)}
    bad = []
    for t in fig.findobj(Text):
        if id(t) in undrawn or not t.get_visible() or not t.get_text().strip():
            continue
        b = t.get_window_extent(r)
        if b.x0 < fb.x0 - 0.5 or b.x1 > fb.x1 + 0.5 or b.y0 < fb.y0 - 0.5 or b.y1 > fb.y1 + 0.5:
            bad.append(t.get_text())
    return bad


def y_pixels(ax, values) -> np.ndarray:
    return ax.transData.transform(np.column_stack([np.ones(len(values)), values]))[:, 1]


# --- Figure 1 ------------------------------------------------------------------------------------------------------
def test_cifar_curves_between_60_and_90_percent_fill_the_axis():
    # a CIFAR-10 smoke run: 89 -> 63 % test error, 88 -> 59 % clean training error
    c = curve("cifar10-smoke-mlp-adv-seed0", [71.7, 63.1, 64.05], [70.47, 63.36, 61.68])
    fig = figures.draw_error_curves([c])
    ax = fig.axes[0]
    rendered(fig)
    lo, hi = y_pixels(ax, [59.27, 71.7])
    # on the old 0-144 % symlog axis these 12 points of error took ~5 % of the height; now at least half
    assert (hi - lo) / ax.bbox.height > 0.5
    bottom, top = ax.get_ylim()
    assert bottom <= 61.68 and top >= 71.7 and 0 <= bottom and top <= 100


def test_curves_that_reach_zero_keep_zero_on_the_axis():
    # 150 epochs: clean training error falls to exactly 0 while the test error stays near 1 %: 0 must be drawn
    ev = np.r_[np.linspace(5, 1.0, 20), np.full(130, 1.0)]
    tr = np.r_[np.linspace(4, 0.0, 40), np.zeros(110)]
    fig = figures.draw_error_curves([curve("tgt-adv", ev, tr, eval_split="validation")])
    ax = fig.axes[0]
    rendered(fig)
    assert ax.get_ylim()[0] == 0 and ax.get_ylim()[1] >= 5
    zero, one, five = y_pixels(ax, [0.0, 1.0, 5.0])
    assert ax.bbox.y0 - 0.5 <= zero < one < five <= ax.bbox.y1 + 0.5
    assert one - zero > 0.25 * ax.bbox.height  # 0-1 % is not squashed into the bottom either


def test_a_one_epoch_run_is_a_visible_marked_point_with_an_integer_tick():
    fig = figures.draw_error_curves([curve("e1-backprop", [17.45], [12.5]), curve("e1-adv", [26.45], [22.1])])
    ax = fig.axes[0]
    rendered(fig)
    for line in ax.get_lines():
        assert line.get_marker() not in (None, "", "None", " ") and line.get_markersize() > 0
        (x, y), = ax.transData.transform(line.get_xydata())
        assert ax.bbox.x0 < x < ax.bbox.x1 and ax.bbox.y0 < y < ax.bbox.y1  # inside the axes, not on an edge
    ticks = [t for t in ax.get_xticks() if ax.get_xlim()[0] <= t <= ax.get_xlim()[1]]
    assert ticks == [1.0]


@pytest.mark.parametrize("n_epochs", [3, 150])
def test_x_ticks_are_whole_epochs_within_the_run(n_epochs):
    ev = np.linspace(20, 2, n_epochs)
    fig = figures.draw_error_curves([curve("run", ev, ev / 2)])
    ax = fig.axes[0]
    rendered(fig)
    lo, hi = ax.get_xlim()
    ticks = [t for t in ax.get_xticks() if lo <= t <= hi]
    assert all(float(t).is_integer() for t in ticks) and len(ticks) >= min(n_epochs, 3)
    assert lo < 1 and hi > n_epochs and (hi - lo) < 1.2 * n_epochs + 1


@pytest.mark.parametrize("n_curves", [1, 2, 9])
def test_figure_1_legend_covers_no_data_and_every_text_fits(n_curves):
    curves = [curve(f"mnist-relu-2x{400 * (i + 1)}-adv-seed{i}", np.linspace(30, 5 + i, 5), np.linspace(25, 1 + i, 5))
              for i in range(n_curves)]
    fig = figures.draw_error_curves(curves)
    r = rendered(fig)
    ax = fig.axes[0]
    legend = fig.legends[0].get_window_extent(r)
    assert not legend.overlaps(ax.bbox)
    assert texts_outside_figure(fig) == []


# --- Figures 2 and 3: titles ---------------------------------------------------------------------------------------
def hist(n_layers=2):
    acts = [np.abs(np.random.default_rng(j).standard_normal((50, 8))) for j in range(n_layers)]
    return figures.histogram(acts, [0.4] * n_layers)


@pytest.mark.parametrize("n_panels", [1, 2, 4])
def test_long_titles_of_figures_2_and_3_are_wrapped_inside_the_figure(n_panels):
    labels = [LONG_LABEL.replace("seed0", f"seed{i}") for i in range(n_panels)]
    w = np.random.default_rng(0).standard_normal((784, 20))
    f2 = figures.draw_weight_tiles([(lab, w, (1, 28, 28), "units") for lab in labels], 100)
    assert texts_outside_figure(f2) == []
    split = "the first 1000 images of the validation split (a long description of the images)"
    f3 = figures.draw_activation_histograms([(lab, hist()) for lab in labels], split)
    assert texts_outside_figure(f3) == []
    # nothing was dropped by the wrapping: every word of the label is still there, in order
    shown = " ".join(t.get_text() for t in f2.texts)
    assert "".join(LONG_LABEL.split()) in "".join(shown.split())


def test_fit_text_breaks_a_long_run_name_after_its_hyphens():
    from matplotlib.figure import Figure

    fig = Figure(dpi=figures.DPI)
    text = figures.fit_text(fig, "mnist-relu-2x400-adv-seed0-with-a-much-longer-name", 120, fontsize="small")
    lines = text.split("\n")
    assert len(lines) > 1 and "".join(lines) == "mnist-relu-2x400-adv-seed0-with-a-much-longer-name"
    assert all(figures.text_width_px(fig, line, fontsize="small") <= 120 for line in lines)
    assert all(line.endswith("-") for line in lines[:-1])


# --- Figure 2: tile separators in the written PNG ------------------------------------------------------------------
def separator_runs(mask: np.ndarray) -> int:
    """Number of separate runs of True in a 1-D mask."""
    m = np.r_[False, mask, False].astype(int)
    return int((np.diff(m) == 1).sum())


def tiles_png(tmp_path, fan_in, units, shape, n_tiles=100):
    """A Figure 2 PNG of zero weights (every tile mid grey), decoded to RGB floats in [0, 1]."""
    from PIL import Image

    path = tmp_path / "tiles.png"
    figures.weight_tiles([("run", np.zeros((fan_in, units)), shape, "units")], n_tiles, path, "png")
    with Image.open(path) as img:
        return np.asarray(img.convert("RGB"), dtype=float) / 255


@pytest.mark.parametrize("what,fan_in,units,shape,n_tiles,grid", [
    ("CIFAR-10 MLP, 32x32 RGB", 3072, 200, (3, 32, 32), 100, 10),
    ("MNIST, 28x28 grey", 784, 400, (1, 28, 28), 100, 10),
    ("conv filters, 5x5 RGB", 75, 96, (3, 5, 5), 100, 10),
    ("many CIFAR-10 tiles", 3072, 400, (3, 32, 32), 400, 20),
])
def test_every_separator_between_tiles_is_visible_in_the_png(tmp_path, what, fan_in, units, shape, n_tiles, grid):
    img = tiles_png(tmp_path, fan_in, units, shape, n_tiles)
    grey = (np.abs(img - 0.5) < 0.05).all(axis=2)  # tile pixels (0 weight is mid grey)
    # the mosaic: rows and columns that are largely tile pixels (anti-aliased title text has a few grey pixels)
    rows = np.flatnonzero(grey.sum(axis=1) > 0.5 * grey.sum(axis=1).max())
    cols = np.flatnonzero(grey.sum(axis=0) > 0.5 * grey.sum(axis=0).max())
    block = img[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1]
    white = (block > 0.95).all(axis=2)
    # a separator is a whole column (row) of the mosaic that is background; a grid of g tiles has g - 1 of them
    assert separator_runs(white.all(axis=0)) == grid - 1, what
    assert separator_runs(white.all(axis=1)) == grid - 1, what
    # and every tile column is as wide as every other (a whole-number zoom): the runs of grey have one width
    widths = np.diff(np.flatnonzero(np.diff(np.r_[0, (~white.all(axis=0)).astype(int), 0])))[::2]
    assert len(set(widths.tolist())) == 1, (what, widths)


# --- Figure 4 ------------------------------------------------------------------------------------------------------
def test_sweep_legend_covers_no_bar_and_every_text_fits():
    bars = [Bar(f"cifar10-conv-adv-dropout-{k}", 80.0 + k, 2.0, 5, 16.0, 0.46) for k in range(6)]
    bars.append(Bar("cifar10-smoke-mlp-adv", 95.0, None, 1, None, None))  # tall bar at the right, no paper value
    fig = figures.draw_sweep_bars(bars, "test")
    r = rendered(fig)
    legend = fig.legends[0].get_window_extent(r)
    ax = fig.axes[0]
    for patch in ax.patches:
        assert not legend.overlaps(patch.get_window_extent(r))
    assert texts_outside_figure(fig) == []
    # the "no paper value" note of the last preset lies inside the axes, where it is drawn (not clipped away)
    (note,) = [t for t in ax.texts if t.get_text().startswith("no paper")]
    box = note.get_window_extent(r)
    assert ax.bbox.x0 <= box.x0 and box.x1 <= ax.bbox.x1


def test_figures_write_pngs_of_the_size_they_report(tmp_path):
    from PIL import Image

    c = curve("run", [30, 20, 10], [25, 15, 5])
    cases = {
        "f1": lambda p: figures.error_curves([c], p, "png"),
        "f2": lambda p: figures.weight_tiles([("run", np.ones((3072, 10)), (3, 32, 32), "units")], 100, p, "png"),
        "f3": lambda p: figures.activation_histograms([("run", hist())], "the test split", p, "png"),
        "f4": lambda p: figures.sweep_bars([Bar("p", 1.0, 0.1, 2, 0.8, 0.04)], "test", p, "png"),
    }
    for name, draw in cases.items():
        path = tmp_path / f"{name}.png"
        size = draw(path)
        with Image.open(io.BytesIO(path.read_bytes())) as img:
            assert img.size == size, name
