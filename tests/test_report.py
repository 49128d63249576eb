"""`advbp report`: every figure rendered from tiny real runs, valid PNG/SVG of the expected size, the Figure 3
sparsity equal to `advbp eval`'s, sweeps, and bad input that leaves nothing behind."""

from __future__ import annotations

import json
import shutil
import struct
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest

from conftest import run_cli

TINY = ["--train-limit", "300", "--eval-limit", "100", "--epochs", "2", "--hidden", "16,16", "--backend", "numpy"]
LIMIT = "100"  # Figure 3 and `advbp eval` on the same first 100 evaluation images
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
FIGS = ["fig1-error-curves", "fig2-first-layer-features", "fig3-hidden-activations"]


@pytest.fixture(scope="module")
def runs(data_dir, tmp_path_factory):
    """Three tiny runs: adversarial seeds 0 and 1, back-prop seed 0."""
    root = tmp_path_factory.mktemp("runs")
    out = {}
    for name, preset, seed in (("adv0", "mnist-relu-2x400-adv", 0), ("adv1", "mnist-relu-2x400-adv", 1),
                               ("bp0", "mnist-relu-2x400-backprop", 0)):
        r = run_cli(["train", "--preset", preset, *TINY, "--seed", str(seed), "--data-dir", str(data_dir),
                     "--out", str(root / name)])
        assert r.exit_code == 0, r.stderr
        out[name] = root / name
    return out


def report(data_dir, *args):
    r = run_cli(["report", *map(str, args), "--data-dir", str(data_dir), "--limit", LIMIT])
    assert r.exit_code == 0, r.stderr
    return r


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC, f"{path} is not a PNG"
    assert data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


# The figures' sizes in pixels, written out here (not read from advbp_cli.figures): 100 dpi, fixed layout.
# One panel per run: Figure 2 is 3.6 x 3.9 in, Figure 3 4.4 x 3.4 in; two runs put two panels side by side.
FIG1_PX = (800, 480)
# Figure 2's size follows its mosaic (whole-pixel tiles; tests/test_figures.py checks that layout): only its width
# per panel is fixed
FIG2_PANEL_W = 360
FIG3_PX = {1: (440, 340), 2: (880, 340)}


def test_one_run_renders_figures_1_to_3_as_png_of_the_expected_size(runs, data_dir, tmp_path):
    import matplotlib.image

    out = tmp_path / "rep"
    report(data_dir, runs["adv0"], "--out", out)
    meta = json.loads((out / "report.json").read_text())
    want = {
        "fig1-error-curves": FIG1_PX,  # 8 x 4.8 in at 100 dpi
        # Figure 2 is laid out in whole pixels around its mosaic, so its size follows the tiles (the layout itself
        # is checked against the decoded PNG in tests/test_figures.py): the file is what the report says it is
        "fig2-first-layer-features": (meta["figures"]["features"]["width_px"], meta["figures"]["features"]["height_px"]),
        "fig3-hidden-activations": FIG3_PX[1],
    }
    for name, (w, h) in want.items():
        path = out / f"{name}.png"
        assert png_size(path) == (w, h)
        img = matplotlib.image.imread(path)  # decodes the whole image, not just the header
        assert img.shape[:2] == (h, w) and img.std() > 0  # not blank
        assert path.stat().st_size < 200_000
    assert {f["file"] for f in meta["figures"].values()} == {f"{n}.png" for n in FIGS}  # no Figure 4 for a run
    # atomic writes leave no temporaries, and the folder holds nothing of advbp's besides its marker
    assert not list(out.glob("*.tmp")) and [p.name for p in out.glob(".*")] == [".advbp-folder.json"]
    index = (out / "index.md").read_text()
    for name in FIGS:
        assert f"]({name}.png)" in index
    assert meta["curves"][0]["epochs"] == 2 and meta["features"][0]["units_shown"] == 16


def test_figure_3_sparsity_equals_advbp_eval(runs, data_dir, tmp_path):
    out = tmp_path / "rep"
    report(data_dir, runs["adv0"], "--out", out, "--format", "svg")
    ev = run_cli(["eval", str(runs["adv0"]), "--data-dir", str(data_dir), "--limit", LIMIT, "--json"])
    assert ev.exit_code == 0, ev.stderr
    want = json.loads(ev.stdout)["hidden_zero_percent"]  # eval --json: percent, as every error it prints
    s = json.loads((out / "report.json").read_text())["sparsity"][0]
    assert s["n"] == 100 and s["split"] == "test"
    assert [100 * z for z in s["hidden_zero_fraction"]] == want  # the same function on the same images: exactly equal
    assert 0 < want[0] < 100
    # ...and the numbers printed on the figure itself (SVG keeps its text) and in index.md are these
    svg_text = " ".join(t for t in ET.parse(out / "fig3-hidden-activations.svg").getroot().itertext())
    index = (out / "index.md").read_text()
    for j, z in enumerate(want):  # percent
        assert f"layer {j + 1}: {z:5.1f}%" in svg_text
        assert f"| {z:.1f} |" in index


def test_two_runs_go_side_by_side(runs, data_dir, tmp_path):
    out = tmp_path / "rep"
    r = report(data_dir, runs["bp0"], runs["adv0"], "--out", out)
    assert "fig2-first-layer-features.png" in r.stdout
    report(data_dir, runs["adv0"], "--out", tmp_path / "one")
    one_w, one_h = png_size(tmp_path / "one" / "fig2-first-layer-features.png")
    two_w, two_h = png_size(out / "fig2-first-layer-features.png")
    # two equal panels in a row; the figure title may need one line less above two panels than above one
    assert two_w == 2 * one_w and two_h <= one_h
    assert png_size(out / "fig3-hidden-activations.png") == FIG3_PX[2]
    meta = json.loads((out / "report.json").read_text())
    assert [s["label"] for s in meta["sparsity"]] == ["bp0", "adv0"]
    assert meta["sparsity"][0]["hidden_zero_fraction"] != meta["sparsity"][1]["hidden_zero_fraction"]


def test_sweep_directory_gives_mean_curves_and_the_bar_chart_as_svg(runs, data_dir, tmp_path):
    sweep = tmp_path / "sweep"
    for name, rel in (("adv0", "mnist-relu-2x400-adv/seed-0"), ("adv1", "mnist-relu-2x400-adv/seed-1"),
                      ("bp0", "mnist-relu-2x400-backprop/seed-0")):
        shutil.copytree(runs[name], sweep / rel)
    (sweep / "mnist-relu-2x400-adv/seed-2").mkdir()  # a run of a sweep in progress: no epoch yet, left out
    shutil.copy(runs["adv0"] / "config.json", sweep / "mnist-relu-2x400-adv/seed-2/config.json")
    r = report(data_dir, sweep, "--format", "svg")
    assert "seed-2: no completed epoch yet, left out" in r.stderr
    out = sweep / "report"  # the default --out for one source
    meta = json.loads((out / "report.json").read_text())
    assert sorted(f["file"] for f in meta["figures"].values()) == [f"{n}.svg" for n in [*FIGS, "fig4-sweep-vs-paper"]]
    sizes = {name: (f["width_px"], f["height_px"]) for name, f in meta["figures"].items()}
    # two presets: two panels side by side; Figure 4 is 6 x 4.8 in for up to 5 bars
    features = sizes.pop("features")
    assert sizes == {"curves": FIG1_PX, "activations": FIG3_PX[2], "sweep": (600, 480)}
    assert features[0] == 2 * FIG2_PANEL_W and 0 < features[1] < features[0]
    for f in meta["figures"].values():
        root = ET.parse(out / f["file"]).getroot()  # well-formed XML
        assert root.tag == "{http://www.w3.org/2000/svg}svg"
        # SVG sizes are in points (72 per inch): the declared pixel size at 100 dpi
        assert float(root.get("width").removesuffix("pt")) == pytest.approx(f["width_px"] / 100 * 72)
        assert float(root.get("height").removesuffix("pt")) == pytest.approx(f["height_px"] / 100 * 72)
    bars = {b["preset"]: b for b in meta["sweep"]}
    adv = [json.loads((runs[n] / "summary.json").read_text())["headline"]["value"] for n in ("adv0", "adv1")]
    assert bars["mnist-relu-2x400-adv"]["n_runs"] == 2
    assert bars["mnist-relu-2x400-adv"]["mean"] == pytest.approx(np.mean(adv))
    assert bars["mnist-relu-2x400-adv"]["std"] == pytest.approx(np.std(adv, ddof=1))
    assert bars["mnist-relu-2x400-adv"]["paper"] == 0.83
    assert bars["mnist-relu-2x400-backprop"]["std"] is None and bars["mnist-relu-2x400-backprop"]["paper"] is None
    assert [c["n_runs"] for c in meta["curves"]] == [2, 1]
    assert "## Figure 4" in (out / "index.md").read_text()


@pytest.mark.parametrize("case", ["not-a-run", "missing", "format", "no-checkpoint", "unstarted-sweep",
                                  "several-without-out"])
def test_bad_input_is_one_line_exit_2_and_leaves_no_output(case, runs, data_dir, tmp_path):
    out = tmp_path / "out"
    src = tmp_path / "src"
    extra = []
    if case == "not-a-run":
        src.mkdir()
        (src / "notes.txt").write_text("hello")
    elif case == "format":
        src = runs["adv0"]
        extra = ["--format", "jpg"]
    elif case == "no-checkpoint":
        src.mkdir()
        for f in ("config.json", "metrics.jsonl"):
            shutil.copy(runs["adv0"] / f, src / f)
    elif case == "unstarted-sweep":
        (src / "mnist-relu-2x400-adv" / "seed-0").mkdir(parents=True)
        shutil.copy(runs["adv0"] / "config.json", src / "mnist-relu-2x400-adv" / "seed-0" / "config.json")
    elif case == "several-without-out":
        r = run_cli(["report", str(runs["adv0"]), str(runs["bp0"]), "--data-dir", str(data_dir)])
        assert r.exit_code == 2 and r.stderr.startswith("Error: ") and "--out" in r.stderr
        assert not (runs["adv0"] / "report").exists()
        return
    r = run_cli(["report", str(src), "--out", str(out), "--data-dir", str(data_dir), *extra])
    assert r.exit_code == 2, (r.stdout, r.stderr)
    last = r.stderr.strip().splitlines()[-1]  # (a sweep's left-out runs are logged before it)
    assert last.startswith("Error: ") and "Traceback" not in r.stderr
    assert not out.exists()


def test_importing_the_cli_does_not_import_matplotlib():
    code = "import sys, advbp_cli.cli; sys.exit(1 if 'matplotlib' in sys.modules else 0)"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


# ------------------------------------------------------------------------------------------------ CIFAR-10
def test_cifar_report_draws_rgb_tiles_and_conv_filters_and_figure_3_matches_eval(cifar_runs, cifar_data_dir, tmp_path):
    import matplotlib.image

    out = tmp_path / "rep"
    r = run_cli(["report", str(cifar_runs["conv"]), str(cifar_runs["mlp"]), "--out", str(out), "--limit", "64",
                 "--data-dir", str(cifar_data_dir)])
    assert r.exit_code == 0, r.stderr
    meta = json.loads((out / "report.json").read_text())
    conv, mlp = meta["features"]
    assert conv["layer"] == "conv.0.weight" and conv["tiles_are"] == "conv filters"
    assert conv["tile_shape"] == [3, 5, 5] and conv["colour"] == "rgb" and conv["units"] == 8
    assert mlp["layer"] == "layers.0.weight" and mlp["tile_shape"] == [3, 32, 32] and mlp["units"] == 16
    w, h = png_size(out / "fig2-first-layer-features.png")
    assert (w, h) == (meta["figures"]["features"]["width_px"], meta["figures"]["features"]["height_px"]) and w > h
    img = matplotlib.image.imread(out / "fig2-first-layer-features.png")
    rgb = img[..., :3]
    assert (np.abs(rgb[..., 0] - rgb[..., 1]) > 0.05).mean() > 0.01  # colour tiles, not grey
    assert png_size(out / "fig3-hidden-activations.png") == FIG3_PX[2]
    index = (out / "index.md").read_text()
    assert "| `conv.0.weight` | conv filters, 3x5x5 rgb |" in index and "fully connected hidden layers" in index
    # Figure 3 of a conv net: its fully connected hidden layers, exactly what `advbp eval` reports
    for s, name in zip(meta["sparsity"], ("conv", "mlp")):
        ev = run_cli(["eval", str(cifar_runs[name]), "--limit", "64", "--data-dir", str(cifar_data_dir), "--json"])
        assert ev.exit_code == 0, ev.stderr
        got = json.loads(ev.stdout)
        assert [100 * z for z in s["hidden_zero_fraction"]] == got["hidden_zero_percent"]
        assert len(s["hidden_zero_fraction"]) == 2
        assert s["n"] == got["n"] == 64


def test_rgb_tiles_keep_plane_order_and_symmetric_scale():
    from advbp_cli import figures

    w = np.zeros((3 * 4 * 4, 2))
    w[0:16, 0] = -2.0  # unit 0: R plane -2 everywhere, G and B 0
    w[16 + 5, 1] = 0.5  # unit 1: one G pixel (row 1, col 1) 0.5, the rest 0
    m = figures.weight_mosaic(w, 2, (3, 4, 4))
    assert m.shape == (4, 4 + 1 + 4, 3)
    np.testing.assert_array_equal(m[:, :4, 0], -1.0)  # scaled by its own largest |w| (2), sign kept
    np.testing.assert_array_equal(m[:, :4, 1:], 0.0)
    assert m[1, 5 + 1, 1] == 1.0 and np.count_nonzero(m[:, 5:, :]) == 1
    assert np.isnan(m[:, 4]).all()  # the gap between tiles
    img = figures.rgb_image(m)
    assert img[0, 0].tolist() == [0.0, 0.5, 0.5] and img[0, 4].tolist() == [1.0, 1.0, 1.0]


def test_conv_first_layer_tiles_are_the_filters(cifar_runs):
    from advbp_cli.networks import load_network
    from advbp_cli.report import first_layer

    net, cfg, _, _ = load_network(cifar_runs["conv"], backend="numpy")
    weights, shape, kind, name = first_layer(net, cfg)
    filters = net.get_params()["conv.0.weight"]  # (8, 3, 5, 5)
    assert shape == (3, 5, 5) and kind == "conv filters" and weights.shape == (75, 8)
    for f in range(8):
        np.testing.assert_array_equal(weights[:, f].reshape(3, 5, 5), filters[f])
