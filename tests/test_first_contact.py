"""Issue 12, first contact: what a newcomer meets. Progress (with a fake clock), tables through a pipe, the data
lookup order and its messages, did-you-mean, headlines that compare with the paper only under its protocol,
every config field reachable from the command line, and the small things (SOURCE mistakes, eval --json units,
presets show)."""

from __future__ import annotations

import io
import json
import os
import shutil
import stat
from pathlib import Path

import pytest

from advbp_cli.config import RunConfig

from conftest import folder_state

TINY = ["--train-limit", "600", "--eval-limit", "200", "--epochs", "2", "--hidden", "16,16", "--backend", "numpy"]
BOX = set("│┃━─┏┓┗┛┡┩└┘┌┐├┤╇╈┼")


class FakeClock:
    def __init__(self, t: float = 100.0):
        self.t = t

    def __call__(self) -> float:
        return self.t

    def advance(self, s: float) -> None:
        self.t += s


def one_line_error(r, *needles):
    assert r.exit_code == 2, (r.stdout, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ") and "Traceback" not in r.stderr, r.stderr
    for n in needles:
        assert n in lines[0], lines[0]
    return lines[0]


@pytest.fixture(scope="module")
def tiny_run(data_dir, tmp_path_factory):
    from conftest import run_cli

    out = tmp_path_factory.mktemp("fc") / "run"
    r = run_cli(["train", "--preset", "mnist-relu-2x400-adv", *TINY, "--data-dir", str(data_dir), "--out", str(out)])
    assert r.exit_code == 0, r.stderr
    return out, r


# ------------------------------------------------------------------------------------------------ 3. progress
def test_progress_is_right_from_the_first_block_of_every_epoch():
    from advbp_cli.commands.progress import RunProgress

    clock = FakeClock()
    p = RunProgress(clock)
    p.start(0, 2, 100)
    assert p.fields()["loss"] == "loss -" and p.fields()["eta"] == "-:--:--"  # nothing measured yet, nothing made up
    clock.advance(0.5)
    p.steps(1, 2.0)  # the trainer's first block is one step
    f = p.fields()
    assert f["epoch"] == "epoch 1/2" and f["steps"] == "1/100" and f["loss"] == "loss 2.0000"
    assert f["rate"] == "2.0 steps/s" and f["elapsed"] == "0:00:00" and f["eta"] == "0:00:50"  # 99 steps at 2/s
    clock.advance(1.5)
    p.steps(3, 1.0)  # running mean of the epoch: (2 + 3) / 4
    f = p.fields()
    assert f["loss"] == "loss 1.2500" and f["rate"] == "2.0 steps/s" and f["elapsed"] == "0:00:02"
    assert f["eta"] == "0:00:48" and f["eta_run"] == "0:01:38"  # this epoch, then one more of 100 steps at 2/s
    clock.advance(48.0)
    p.steps(96, 1.0)
    clock.advance(10.0)  # evaluation
    p.epoch_end({"epoch": 1, "train_seconds": 50.0, "seconds": 60.0})
    f = p.fields()  # epoch 2 starts: its own clock, the last epoch's rate until it measures its own
    assert f["epoch"] == "epoch 2/2" and f["steps"] == "0/100" and f["loss"] == "loss -"
    assert f["elapsed"] == "0:00:00" and f["rate"] == "2.0 steps/s" and f["eta"] == "0:00:50"
    assert f["eta_run"] == "0:00:50"
    clock.advance(10.0)
    p.steps(40, 0.5)  # faster now: 4 steps/s
    f = p.fields()
    assert f["elapsed"] == "0:00:10" and f["rate"] == "4.0 steps/s" and f["eta"] == "0:00:15"
    p.epoch_end({"epoch": 2, "train_seconds": 25.0, "seconds": 30.0})
    assert p.finished and p.fields()["epoch"] == "epoch 2/2"  # never "epoch 3/2"
    assert "epoch 2/2 [" in p.line() and "loss" in p.short()


def test_blocks_start_at_one_step_and_grow_towards_the_target_duration():
    from advbp_cli.trainer import BlockSizer, epoch_blocks

    clock = FakeClock()
    sizer = BlockSizer(cap=500, seconds=0.5, clock=clock)
    sizes = []
    for _ in range(6):
        sizes.append(sizer.next_size())
        clock.advance(0.01 * sizes[-1])  # 100 steps/s: the target is 50 steps per block
    assert sizes == [1, 2, 4, 8, 16, 32]
    for _ in range(3):
        sizes.append(sizer.next_size())
        clock.advance(0.01 * sizes[-1])
    assert sizes[-3:] == [50, 50, 50]
    slow = BlockSizer(cap=500, seconds=0.5, clock=clock)
    assert slow.next_size() == 1
    clock.advance(2.0)  # 2 s for one step: never below one
    assert slow.next_size() == 1
    # the blocks cover the epoch's batches exactly once, in the same order as fixed-size blocks
    import numpy as np

    grown = np.concatenate([b.ravel() for b in epoch_blocks(3, 1, 1005, 10, sizer=BlockSizer(clock=FakeClock()))])
    fixed = np.concatenate([b.ravel() for b in epoch_blocks(3, 1, 1005, 10)])
    np.testing.assert_array_equal(grown, fixed)


def test_growing_blocks_train_the_same_weights_as_fixed_blocks(cli, data_dir, tmp_path, monkeypatch):
    """The block size decides only how often progress and the NaN check run: the weights are bit-identical."""
    from safetensors.numpy import load_file

    import advbp_cli.trainer as trainer

    args = ["train", *TINY, "--data-dir", str(data_dir)]
    assert cli([*args, "--out", str(tmp_path / "grown")]).exit_code == 0
    monkeypatch.setattr(trainer, "BlockSizer", lambda: None)  # fixed 500-step blocks, as before
    assert cli([*args, "--out", str(tmp_path / "fixed")]).exit_code == 0
    a, b = (load_file(str(tmp_path / n / "checkpoint.safetensors")) for n in ("grown", "fixed"))
    assert all((a[k] == b[k]).all() for k in a)


def test_without_a_terminal_train_prints_one_line_per_epoch_and_text_as_is(tiny_run):
    _, r = tiny_run
    lines = r.stderr.strip().splitlines()
    assert lines[0].startswith("advbp: training mnist-relu-2x400-adv (adversarial, 16x16 relu)")
    assert [ln.split()[1] for ln in lines[1:]] == ["1/2", "2/2"] and all(ln.startswith("epoch") for ln in lines[1:])
    assert "\x1b" not in r.stderr and "\r" not in r.stderr


def test_on_a_terminal_text_is_printed_without_markup_or_highlighting():
    from rich.console import Console

    from advbp_cli.commands.progress import LiveLine

    buf = io.StringIO()
    console = Console(file=buf, force_terminal=True, color_system="standard", width=200)
    line = LiveLine(lambda: "epoch 1/2", console)
    line.print("advbp: training x (adversarial, 400x400 relu) [numpy, seed 0] [bold]")
    out = buf.getvalue()
    assert "400x400 relu) [numpy, seed 0] [bold]" in out  # no highlighted "0x400", no markup eaten


# ------------------------------------------------------------------------------------------------ 4. tables
def test_presets_through_a_pipe_are_plain_aligned_columns(cli):
    from advbp_cli import presets

    r = cli(["presets"])  # stdout is not a terminal here, as in `advbp presets | awk '{print $1}'`
    assert r.exit_code == 0 and not BOX & set(r.stdout)
    lines = r.stdout.splitlines()
    assert [ln.split()[0] for ln in lines[1:]] == presets.preset_names() and lines[0].startswith("preset ")
    assert cli(["presets", "--plain"]).stdout == r.stdout
    row = next(ln for ln in lines if ln.startswith("mnist-relu-2x400-adv "))
    assert "0.83 ± 0.04" in row and "table2" in row


def test_print_table_draws_boxes_only_when_not_plain(capsys):
    from advbp_cli.commands.tables import print_table

    header, rows = ["a", "long header"], [["x" * 70, "0x400 [b]"], ["y", "2"]]
    print_table(header, rows, title="t", plain=True)
    plain = capsys.readouterr().out
    assert plain.splitlines() == ["t", "a".ljust(70) + "  long header", "x" * 70 + "  0x400 [b]", "y".ljust(70) + "  2"]
    print_table(header, rows, title="t", plain=False)
    boxed = capsys.readouterr().out
    assert BOX & set(boxed) and "0x400 [b]" in boxed


def test_eval_curve_and_sweep_report_pipe_plainly(cli, data_dir, tiny_run, tmp_path):
    run, _ = tiny_run
    r = cli(["eval", str(run), str(run), "--fgsm-eps", "0.1,0.2", "--limit", "50", "--data-dir", str(data_dir)])
    assert r.exit_code == 0, r.stderr
    assert not BOX & set(r.stdout)
    table = r.stdout[r.stdout.index("error (%) against eps"):].splitlines()
    assert table[1].split()[0] == "eps" and [ln.split()[0] for ln in table[2:]] == ["0", "0.1", "0.2"]


# ------------------------------------------------------------------------------------------------ 2. data lookup
def test_data_lookup_order(tmp_path, monkeypatch):
    from advbp_cli.data.paths import ENV_DATA_DIR, resolve_data_dir
    from advbp_cli.errors import UsageProblem

    opt, env, recorded, cache = (tmp_path / n for n in ("opt", "env", "recorded", "xdg"))
    for d in (opt, env, recorded):
        d.mkdir()
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text(json.dumps({"data_dir": str(recorded)}))
    monkeypatch.setenv("XDG_CACHE_HOME", str(cache))
    monkeypatch.setenv(ENV_DATA_DIR, str(env))
    assert resolve_data_dir(str(opt), runs=[run]) == (opt, "--data-dir")
    assert resolve_data_dir(None, runs=[run]) == (env, "$ADVBP_DATA_DIR")
    monkeypatch.delenv(ENV_DATA_DIR)
    path, origin = resolve_data_dir(None, runs=[run / "checkpoint.safetensors"])  # a checkpoint in a run dir too
    assert path == recorded and "was trained with" in origin
    assert resolve_data_dir(None, runs=[tmp_path / "elsewhere"])[0] == cache / "advbp"
    shutil.rmtree(recorded)  # a recorded folder that is gone is skipped
    assert resolve_data_dir(None, runs=[run])[0] == cache / "advbp"
    # relative paths are resolved once, against the folder the command started in, and normalised
    monkeypatch.chdir(run)
    assert resolve_data_dir("../opt") == (opt, "--data-dir")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv(ENV_DATA_DIR, "env")
    assert resolve_data_dir(None)[0] == env
    # an explicit folder that does not exist is reported and not created
    for option, env_value in (("typo", None), (None, "typo")):
        if env_value:
            monkeypatch.setenv(ENV_DATA_DIR, env_value)
        with pytest.raises(UsageProblem, match=r"typo \((--data-dir|\$ADVBP_DATA_DIR)\) does not exist"):
            resolve_data_dir(option)
    assert not (tmp_path / "typo").exists() and not cache.exists()


def test_eval_uses_the_folder_the_run_was_trained_with(cli, tiny_run, data_dir, tmp_path, monkeypatch):
    run, _ = tiny_run
    record = json.loads((run / "config.json").read_text())
    assert record["data_dir"] == str(data_dir.absolute())
    monkeypatch.delenv("ADVBP_DATA_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "empty-cache"))
    monkeypatch.chdir(tmp_path)
    r = cli(["eval", str(run), "--limit", "50", "--no-download", "--json"])
    assert r.exit_code == 0, r.stderr
    assert not (tmp_path / "empty-cache").exists()


def test_missing_data_is_one_short_line_that_says_where_and_what_to_do(cli, tmp_path, monkeypatch):
    monkeypatch.delenv("ADVBP_DATA_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    line = one_line_error(cli(["train", "--no-download", "--out", str(tmp_path / "run")]),
                          f"MNIST not found in {tmp_path / 'xdg' / 'advbp' / 'mnist'}",
                          "the per-user cache; neither --data-dir nor $ADVBP_DATA_DIR is set",
                          "Point --data-dir or $ADVBP_DATA_DIR at the folder that holds mnist/")
    assert len(line) < 450
    assert not (tmp_path / "xdg").exists() and not (tmp_path / "run").exists()


@pytest.mark.parametrize("writable", [False, True])
def test_commands_never_write_into_the_data_folder(cli, data_dir, tmp_path, writable):
    """Train (with ZCA preprocessing, whose fit is cached), eval, attack and report against a copy of the data
    folder, read-only and writable: nothing in it changes; the ZCA cache lands in the per-user cache."""
    data = tmp_path / "data"
    shutil.copytree(data_dir / "mnist", data / "mnist")
    if not writable:
        for p in [data / "mnist", *(data / "mnist").iterdir(), data]:
            p.chmod(p.stat().st_mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))
    before = folder_state(data)
    cache = Path(os.environ["XDG_CACHE_HOME"])
    run = tmp_path / "run"
    try:
        r = cli(["train", *TINY, "--preprocess", "zca", "--epochs", "1", "--data-dir", str(data), "--out", str(run)])
        assert r.exit_code == 0, r.stderr
        for args in (["eval", str(run), "--limit", "50"], ["attack", str(run), "--eps", "0.1", "--limit", "20",
                                                            "--out", str(tmp_path / "sets")]):
            r = cli([*args, "--data-dir", str(data)])
            assert r.exit_code == 0, r.stderr
    finally:
        for p in [data, data / "mnist", *(data / "mnist").iterdir()]:
            p.chmod(p.stat().st_mode | stat.S_IWUSR)
    assert folder_state(data) == before
    assert list((cache / "advbp" / "preprocess" / "mnist").glob("zca-*.npz"))


# ------------------------------------------------------------------------------------------------ 5. headlines
def test_a_smoke_run_says_its_protocol_and_makes_no_paper_comparison(tiny_run):
    run, r = tiny_run
    final = r.stdout.strip().splitlines()[-1]
    assert "mean test error (%) of the last 2 epochs (epochs 1-2)" in final and "final epoch:" in final
    assert "protocol: 2 epochs on the first 600 of 60000 training images, test error on the first 200 of 10000 " \
           "images, not the paper's (150 epochs on all 60000 training images, test error on all 10000 images)" in final
    assert "so no paper comparison" in final and "0.83" not in final
    h = json.loads((run / "summary.json").read_text())["headline"]
    assert h["paper_protocol"] is False and "train.epochs 2 (paper: 150)" in h["differences_from_paper"]


def test_which_changes_leave_the_papers_protocol():
    from advbp_cli.commands.train import headline_text
    from advbp_cli.launch import preset_config_values
    from advbp_cli.config import build_config
    from advbp_cli.protocol import paper_protocol

    base = preset_config_values("mnist-relu-2x400-adv")
    same = {"runtime": {"backend": "numpy", "seed": 4, "dtype": "float64"}, "data": {"eval_train_error": False}}
    assert paper_protocol(build_config(base, same))["paper"] is True
    for change, field in (({"train": {"epochs": 3}}, "train.epochs"), ({"data": {"train_limit": 100}}, "data.train_limit"),
                          ({"data": {"eval_split": "validation"}}, "data.eval_split"),
                          ({"model": {"hidden": [32, 32]}}, "model.hidden"), ({"train": {"eps": 0.1}}, "train.eps")):
        p = paper_protocol(build_config(base, change))
        assert p["paper"] is False and p["differences"][0].startswith(field), (change, p)
    custom = paper_protocol(build_config({}, {}))
    assert custom["paper"] is False and "no preset" in custom["differences"][0]
    # the paper's protocol: the number is shown beside the headline, as "same protocol"
    from advbp_cli.trainer import summarize

    cfg = build_config(base, {"runtime": {"seed": 2}})
    metrics = [{"epoch": i + 1, "eval_error": 0.9} for i in range(150)]
    text = headline_text("runs/x", summarize(cfg, metrics, "test", 1.0))
    assert text.endswith("; paper (Table 2, same protocol): 0.83 ± 0.04%"), text
    hidden = build_config(base, {"model": {"hidden": [32, 32]}})
    text = headline_text("runs/y", summarize(hidden, metrics, "test", 1.0))
    assert "as in the paper, but not the paper's network or training (model.hidden 32,32 (paper: 400,400))" in text


def test_sweep_compares_with_the_paper_only_under_its_protocol(tmp_path, monkeypatch):
    """Runs that follow the paper's protocol (fabricated complete run dirs: training 150 epochs is not a test)
    get a difference in paper stds; the same values under a 1-epoch protocol get none, and a line saying why.
    The fabricated runs hold only a summary, so the check that a summary matches its run's checkpoint and
    metrics (tested in test_safe_files.py) is bypassed here."""
    from advbp_cli import sweep as sw
    from advbp_cli.rundir import RunDir
    from advbp_cli.trainer import summarize

    monkeypatch.setattr(RunDir, "read_verified_summary", lambda self: json.loads(self.summary_path.read_text()))

    for overrides in ({}, {"train": {"epochs": 1}}):
        out = tmp_path / f"sweep{len(overrides)}"
        req = sw.make_request(["mnist-relu-2x400-adv"], 2, overrides)
        for seed in req.seeds:
            cfg = sw.run_config("mnist-relu-2x400-adv", seed, overrides)
            run = out / sw.run_relpath("mnist-relu-2x400-adv", seed)
            run.mkdir(parents=True)
            n = cfg.train.epochs
            summary = summarize(cfg, [{"epoch": i + 1, "eval_error": 0.85 + seed / 100} for i in range(n)], "test", 1.0)
            (run / "summary.json").write_text(json.dumps(summary))
        (row,) = sw.aggregate(out, req)["presets"]
        lines = sw.header_lines(sw.aggregate(out, req))
        if not overrides:
            assert row["paper_protocol"] and row["diff_in_paper_std"] == pytest.approx((0.855 - 0.83) / 0.04)
            assert not any(ln.startswith("protocol:") for ln in lines)
        else:
            assert not row["paper_protocol"] and row["diff"] is None and row["diff_in_paper_std"] is None
            assert lines[-1].startswith("protocol: 1 epoch on all 60000 training images, test error on all 10000 "
                                        "images, not the paper's (150 epochs")


# ------------------------------------------------------------------------------------------------ 6. every field
def _sections():
    return {name: info.annotation for name, info in RunConfig.model_fields.items() if name != "preset"}


def test_every_config_field_is_a_flag_of_train_and_sweep_generated_from_the_models():
    from advbp_cli.commands.config_options import ConfigOption
    from advbp_cli.commands.sweep import sweep_cmd
    from advbp_cli.commands.train import train_cmd

    fields = {(s, f) for s, model in _sections().items() for f in model.model_fields}
    for cmd, excluded in ((train_cmd, set()), (sweep_cmd, {("runtime", "seed")})):
        got = {p.config_field.key: p for p in cmd.params if isinstance(p, ConfigOption)}
        assert set(got) == fields - excluded, cmd.name
        for (s, f), p in got.items():
            assert p.opts[0] == "--" + f.replace("_", "-")
        assert any(p.name == "config_set" for p in cmd.params)
    # choices come from the Literals and from the backend registry
    from advbp_cli.backends import available_backends

    by_flag = {p.opts[0]: p for p in train_cmd.params}
    assert list(by_flag["--backend"].type.choices) == available_backends()
    assert list(by_flag["--activation"].type.choices) == ["logistic", "tanh", "relu"]
    assert "Default: 0.08; paper: MNIST 0.08" in by_flag["--eps"].help


@pytest.mark.parametrize("section,field", [(s, f) for s, m in _sections().items() for f in m.model_fields])
def test_every_field_round_trips_through_set_and_its_flag(section, field):
    """The default of each field, written as text, set with --set and with its flag, gives the default back."""
    from advbp_cli.commands.config_options import collect, find_field

    f = find_field(section, field)
    default = f.info.default
    if default is None:
        text = "none"
    elif isinstance(default, bool):
        text = "true" if default else "false"
    elif isinstance(default, (list, tuple)):
        text = ",".join(map(str, default))
    else:
        text = str(default)
    via_set = collect({}, [f"{section}.{field}={text}"], {})
    assert via_set.values == {section: {field: default}} and via_set.origin[(section, field)] == f"--set {section}.{field}"
    via_flag = collect({f.dest: default if isinstance(default, bool) else text}, [], {})
    assert via_flag.values == via_set.values and via_flag.origin[(section, field)] == f.flag


def test_a_config_field_that_shadows_a_command_option_is_refused():
    import click

    from advbp_cli.commands.config_options import SectionedCommand

    with pytest.raises(RuntimeError, match="--out is defined twice"):
        SectionedCommand("x", params=[click.Option(["--out"]), click.Option(["--out", "cfg__data__out"])])


def test_field_types_to_come_get_a_flag_too():
    """A field added later (say runtime.threads: "auto" or an integer) needs no change in the generator."""
    from typing import Literal, Optional, Union

    from pydantic import Field
    from pydantic.fields import FieldInfo

    from advbp_cli.commands.config_options import ConfigField, field_option, parse_text, value_shape

    info = FieldInfo.merge_field_infos(Field("auto", description="threads"), annotation=Union[Literal["auto"], int])
    f = ConfigField("runtime", "threads", info)
    assert f.shape.kind == "scalar" and f.shape.metavar() == "auto|INT" and f.choices() is None
    assert f.convert(parse_text("3", f.shape, "--threads"), "--threads") == 3
    assert f.convert(parse_text("auto", f.shape, "--threads"), "--threads") == "auto"
    assert field_option(f).opts == ["--threads"]
    assert value_shape(Optional[list[int]]).metavar() == "INT,INT,...|none"
    assert value_shape(Optional[tuple[float, float]]).metavar() == "FLOAT,FLOAT|none"


def test_set_reaches_fields_without_a_common_flag_and_errors_name_it(cli, tmp_path):
    from advbp_cli.commands.config_options import collect
    from advbp_cli.launch import preset_config_values
    from advbp_cli.config import build_config

    o = collect({}, ["train.momentum=0.9", "model.hidden=800,800", "train.clip=0,1", "train.dropout_fc=[0.5, 0.25]"], {})
    cfg = build_config(preset_config_values("mnist-relu-2x400-adv"), o.values, origin=o.origin)
    assert cfg.train.momentum == 0.9 and cfg.model.hidden == [800, 800] and cfg.train.clip == (0.0, 1.0)
    assert o.values["train"]["clip"] == [0.0, 1.0]  # JSON form: what sweep.json records and --resume compares
    assert cfg.train.dropout_fc == [0.5, 0.25]
    out = tmp_path / "never"
    one_line_error(cli(["train", "--set", "train.momentum=1.5", "--out", str(out)]),
                   "invalid value for --set train.momentum", "less than 1")
    one_line_error(cli(["train", "--momentum", "1.5", "--out", str(out)]), "invalid value for --momentum")
    one_line_error(cli(["train", "--set", "train.dropout_fc=0.5,0.5,0.5", "--out", str(out)]),
                   "train.dropout_fc has 3 rates but the model has 2 hidden layers")
    one_line_error(cli(["train", "--eps", "0.1", "--set", "train.eps=0.2", "--out", str(out)]),
                   "--eps and --set train.eps both set train.eps")
    assert not out.exists()


@pytest.mark.parametrize("args,needles", [
    (["train", "--preset", "mnist-relu-2x400-ad"], ["--preset", "did you mean 'mnist-relu-2x400-adv'"]),
    (["presets", "show", "mnist-tanh-2x80-adv"], ["did you mean 'mnist-tanh-2x800-adv'"]),
    (["sweep", "tabel2"], ["did you mean 'table2'"]),
    (["train", "--set", "trian.lr=0.1"], ["no config section 'trian'", "did you mean 'train'"]),
    (["train", "--set", "train.momentun=0.9"], ["has no field 'momentun'", "did you mean 'momentum'"]),
    (["train", "--set", "train.train_limit=10"], ["did you mean 'data.train_limit'"]),
    (["train", "--set", "momentum=0.9"], ["did you mean 'train.momentum'"]),
    (["train", "--dropout-inptu", "0.1"], ["Did you mean", "'--dropout-input'"]),
    (["sweep", "table2", "--set", "runtime.seed=1"], ["--seeds"]),
])
def test_did_you_mean(cli, tmp_path, args, needles):
    one_line_error(cli([*args, "--out", str(tmp_path / "never")] if args[0] != "presets" else args), *needles)
    assert not (tmp_path / "never").exists()


# ------------------------------------------------------------------------------------------------ 7. small things
def test_source_mistakes_are_explained(cli, tiny_run, tmp_path):
    run, _ = tiny_run
    one_line_error(cli(["eval", str(tmp_path / "nope")]), "nope does not exist")
    one_line_error(cli(["eval", str(run), "--fgsm-eps", "0.25", "0.5"]),
                   "'0.5' was read as a SOURCE", "--fgsm-eps 0.25,0.5", "--fgsm-eps 0.25 --fgsm-eps 0.5")
    one_line_error(cli(["attack", str(run), "--eps", "0.25", "0.5", "--out", str(tmp_path / "s")]),
                   "'0.5' was read as a SOURCE", "--eps 0.25,0.5")
    assert not (tmp_path / "s").exists()
    sets = tmp_path / "sets"
    assert cli(["attack", str(run), "--eps", "0.1,0.2", "--limit", "10", "--out", str(sets)]).exit_code == 0
    one_line_error(cli(["eval", str(run), "--attack-set", str(sets / "fgsm-eps0.1.npz"), str(sets / "fgsm-eps0.2.npz")]),
                   "fgsm-eps0.2.npz was read as a SOURCE", "--attack-set takes one value each time")


def test_eval_json_gives_every_rate_in_percent_and_says_so(cli, tiny_run, data_dir):
    run, _ = tiny_run
    r = cli(["eval", str(run), "--limit", "100", "--data-dir", str(data_dir), "--json"])
    res = json.loads(r.stdout)
    assert set(res["units"]) >= {"error", "hidden_zero_percent"} and "percent" in res["units"]["hidden_zero_percent"]
    assert all(0 <= z <= 100 for z in res["hidden_zero_percent"]) and max(res["hidden_zero_percent"]) > 1
    assert "hidden_zero_fraction" not in res


def test_presets_show_lists_what_applies_to_the_preset(cli):
    mnist = cli(["presets", "show", "mnist-relu-2x400-adv"]).stdout
    for absent in ("conv_channels", "pool_mode", "dropout_input", "dampening", "zca_epsilon", "max_halvings",
                   "model.pool_mode:", "train.max_norm:", "train.schedule:", "CIFAR-10"):
        assert f"  {absent}" not in mnist and f"{absent} =" not in mnist, absent
    assert "  eps = 0.08" in mnist and "train.clip:" in mnist and "--all shows them" in mnist
    cifar = cli(["presets", "show", "cifar10-conv-adv-dropout-zca"]).stdout
    for present in ("conv_channels = ", "dropout_input = 0.1", "dampening = 0.9", "zca_epsilon = ", "model.pool_mode:",
                    "train.max_norm:"):
        assert present in cifar, present
    # the output-layer note speaks of both tables (sigmoid_bce for MNIST, softmax_ce for CIFAR-10): shown for both
    assert "model.output:" in cifar and "model.output:" in mnist
    assert "conv_channels = " in cli(["presets", "show", "mnist-relu-2x400-adv", "--all"]).stdout


def test_help_says_what_the_data_folder_holds_and_the_lookup_order(cli):
    for cmd in ("train", "eval", "attack", "sweep", "report"):
        text = " ".join(cli([cmd, "--help"]).stdout.split())
        assert "mnist/" in text and "cifar10/" in text, cmd
        assert "--data-dir, $ADVBP_DATA_DIR," in text and "~/.cache/advbp" in text, cmd
        assert ("trained with" in text) == (cmd in ("eval", "attack", "report", "train")), cmd


def test_sweep_resume_accepts_the_same_settings_given_again():
    """Values recorded in sweep.json (JSON) and the same values typed again compare equal, tuples included."""
    from advbp_cli import sweep as sw
    from advbp_cli.commands.config_options import collect
    from advbp_cli.commands.sweep import EXCLUDED

    given = collect({}, ["train.clip=0,1", "model.hidden=16,16", "train.epochs=2"], EXCLUDED)
    recorded = sw.request_from_record(json.loads(json.dumps(
        {"request": sw.make_request(["mnist-relu-2x400-adv"], 2, given.values).to_json()})))
    again = collect({}, ["train.clip=0,1", "model.hidden=16x16", "train.epochs=2"], EXCLUDED)
    assert sw.resume_request(recorded, [], None, again.values).overrides == recorded.overrides
