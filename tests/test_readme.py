"""The README is the user's contract: every `advbp ...` command in its code blocks parses (no unknown option, no bad
value, a valid resolved config for train and sweep), and .ci/run runs the README's install and test commands as
written. Nothing is trained here: each command goes through click's parser and advbp's own config resolution."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import click
import pytest

from advbp_cli import presets
from advbp_cli.cli import cli

REPO = Path(__file__).resolve().parent.parent
README = (REPO / "README.md").read_text()


def code_blocks(text: str) -> list[tuple[str, str]]:
    """(language, body) of every fenced code block."""
    return re.findall(r"^```(\w*)\n(.*?)^```", text, flags=re.M | re.S)


def shell_commands(body: str) -> list[str]:
    """The commands of a shell block: continuation lines joined, comments dropped, `&&`/`;`/`|` chains split."""
    joined = re.sub(r"\\\n\s*", " ", body)
    out = []
    for line in joined.splitlines():
        words = shlex.split(line, comments=True)
        cmd: list[str] = []
        for w in words + [";"]:
            if w in ("&&", ";", "|", "||"):
                if cmd:
                    out.append(shlex.join(cmd))
                cmd = []
            else:
                cmd.append(w)
    return out


def readme_advbp_commands() -> list[list[str]]:
    cmds = []
    for lang, body in code_blocks(README):
        if lang in ("bash", "sh", "shell", "console", ""):
            cmds += [shlex.split(c)[1:] for c in shell_commands(body) if c.startswith("advbp ")]
    return cmds


def _subcommand(group: click.Group, ctx: click.Context):
    rest = [*getattr(ctx, "_protected_args", []), *ctx.args]
    name, cmd, args = group.resolve_command(ctx, rest)
    return name, cmd, cmd.make_context(name, args, parent=ctx)


def resolve(argv: list[str]) -> None:
    """Parses `advbp ARGV` with click and resolves what the command would resolve before any work: the config of
    train and sweep (preset + options, validated), preset names, eps lists. Raises on any problem."""
    from advbp_cli.attack import parse_eps
    from advbp_cli.commands import sweep as sweep_cmd
    from advbp_cli.commands.config_options import collect
    from advbp_cli.launch import preset_config_values
    from advbp_cli.config import build_config
    from advbp_cli.sweep import make_request, resolve_targets

    ctx = cli.make_context("advbp", list(argv))
    name, cmd, sub = _subcommand(cli, ctx)
    p = sub.params
    if name == "train":
        config = collect(p, p.get("config_set"), {})
        if not p.get("resume_dir"):
            build_config(preset_config_values(p.get("preset")), config.values, origin=config.origin)
    elif name == "sweep":
        config = collect(p, p.get("config_set"), sweep_cmd.EXCLUDED)
        if p.get("targets"):
            make_request(list(p["targets"]), p.get("seeds") or 1, config.values, config.origin)
            resolve_targets(list(p["targets"]))
    elif name == "presets" and (sub.args or getattr(sub, "_protected_args", [])):
        _, _, show = _subcommand(cmd, sub)
        presets.load_preset_or_explain(show.params["name"], "NAME")
    elif name == "attack":
        parse_eps(p["eps_values"])
    elif name == "eval" and p.get("fgsm_eps"):
        parse_eps(p["fgsm_eps"], "--fgsm-eps")


COMMANDS = readme_advbp_commands()


def test_the_readme_has_the_commands_this_test_expects():
    assert len(COMMANDS) >= 25, COMMANDS  # every section's block: presets, train, eval, attack, sweep, report, resume
    assert {c[0] for c in COMMANDS} >= {"presets", "train", "eval", "attack", "sweep"}


@pytest.mark.parametrize("argv", COMMANDS, ids=[" ".join(c)[:70] for c in COMMANDS])
def test_every_readme_command_parses_and_resolves(argv):
    resolve(argv)


@pytest.mark.parametrize("argv,needle", [
    (["train", "--preset", "mnist-relu-2x400-adv", "--momentun", "0.9"], "--momentum"),
    (["train", "--eps", "-1"], "--eps"),
    (["train", "--set", "train.momentum=2"], "--set train.momentum"),
    (["sweep", "table2", "--epochs", "0"], "--epochs"),
    (["presets", "show", "mnist-relu-2x400-ad"], "mnist-relu-2x400-adv"),
    (["attack", "RUN", "--eps", "1:0:0.1", "--out", "x"], "--eps"),
])
def test_the_resolver_catches_what_the_commands_would(argv, needle):
    """The check above is not vacuous: a typo or a bad value in a README line would fail it."""
    with pytest.raises((click.ClickException, Exception)) as err:
        resolve(argv)
    text = err.value.format_message() if isinstance(err.value, click.ClickException) else str(err.value)
    assert needle in text, text


def test_ci_runs_the_readmes_install_and_test_commands_literally():
    ci = (REPO / ".ci" / "run").read_text().splitlines()
    sections = {"Install": None, "Run the tests": None}
    for title in sections:
        body = README.split(f"## {title}", 1)[1]
        sections[title] = shell_commands(code_blocks(body)[0][1])
    wanted = sections["Install"] + sections["Run the tests"]
    assert wanted == ["pip install torch==2.13.0", "pip install -e '.[test,ray]'",
                      "ADVBP_DATA_DIR=../shared/data python -m pytest -q"]
    for line in wanted:
        assert line in ci, f".ci/run does not run the README's {line!r} as written"
