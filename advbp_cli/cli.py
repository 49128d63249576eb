"""The `advbp` command: a click group whose commands live in advbp_cli/commands/. Every error a user can cause
ends here as one line on stderr and exit code 2 (no traceback); see `main`."""

from __future__ import annotations

import sys

import click

from . import __version__
from .commands.attack import attack_cmd
from .commands.eval import eval_cmd
from .commands.presets import presets_cmd
from .commands.report import report_cmd
from .commands.sweep import sweep_cmd
from .commands.train import train_cmd
from .errors import Interrupted, TrainingDiverged, UsageProblem, is_out_of_memory, os_problem


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.version_option(__version__, prog_name="advbp")
def cli():
    """advbp: adversarial back-propagation (Nøkland 2015).

    Train the paper's networks (`advbp train --preset mnist-relu-2x400-adv`), evaluate them (`advbp eval RUN`),
    and list the presets named after the paper's table rows (`advbp presets`).
    """


cli.add_command(train_cmd)
cli.add_command(eval_cmd)
cli.add_command(presets_cmd)
cli.add_command(attack_cmd)
cli.add_command(report_cmd)
cli.add_command(sweep_cmd)


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def main(argv: list[str] | None = None) -> None:
    try:
        code = cli.main(args=argv, prog_name="advbp", standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("Error: aborted", err=True)
        code = 130
    except click.exceptions.NoArgsIsHelpError as exc:  # `advbp` alone: the help on stdout, one error line
        click.echo(exc.ctx.get_help() if exc.ctx else "")
        click.echo(f"Error: no command given (see 'advbp {_command_of(argv)}--help')", err=True)
        code = exc.exit_code
    except click.ClickException as exc:  # bad option, unknown command, bad value: click's usage errors
        click.echo(f"Error: {_one_line(exc.format_message())} (see 'advbp {_command_of(argv)}--help')", err=True)
        code = exc.exit_code
    except (UsageProblem, TrainingDiverged) as exc:
        click.echo(f"Error: {_one_line(exc)}", err=True)
        code = exc.exit_code
    except Interrupted as exc:
        click.echo(f"Stopped: {_one_line(exc)}", err=True)
        code = exc.exit_code
    except KeyboardInterrupt:
        click.echo("Stopped: interrupted", err=True)
        code = 130
    except OSError as exc:  # a path or a device the commands did not word themselves: still one line, exit 2
        click.echo(f"Error: {_one_line(os_problem(exc, 'use ' + str(exc.filename) if exc.filename else 'continue'))}",
                   err=True)
        code = UsageProblem.exit_code
    except Exception as exc:  # out of memory (MemoryError, or torch's allocation errors): one line naming the options
        if not is_out_of_memory(exc):
            raise
        click.echo(f"Error: out of memory in 'advbp {_command_of(argv).strip() or 'command'}': "
                   f"{MEMORY_HINTS.get(_command_of(argv).strip(), 'use smaller inputs')}", err=True)
        code = UsageProblem.exit_code
    sys.exit(code if isinstance(code, int) else 0)


# What to make smaller when a command runs out of memory (the trainer words its own message, with the network size).
MEMORY_HINTS = {
    "train": "the network or its batches do not fit in this machine's memory; use a smaller --hidden, "
             "--conv-channels or --batch-size",
    "sweep": "a run does not fit in this machine's memory; use a smaller --hidden or --conv-channels",
    "eval": "use a smaller --batch-size or --limit (or a smaller network)",
    "attack": "use a smaller --batch-size or --limit (or a smaller network)",
    "report": "use a smaller --limit (or a smaller network)",
}


def _command_of(argv: list[str] | None) -> str:
    args = sys.argv[1:] if argv is None else argv
    first = next((a for a in args if not a.startswith("-")), None)
    return f"{first} " if first in cli.commands else ""
