"""Every table advbp prints goes through `print_table`: a rich table with box drawing on a terminal, and plain
aligned text (columns padded with spaces, two between them, no box characters, never wrapped) when stdout is
not a terminal or with --plain, so `advbp presets | awk '{print $1}'` prints the preset names."""

from __future__ import annotations

import sys

import click


def plain_option(f):
    return click.option("--plain", is_flag=True,
                        help="Plain aligned text tables, no box drawing or wrapping (the default when stdout is "
                             "not a terminal).")(f)


def is_plain(plain: bool, stream=None) -> bool:
    stream = stream or sys.stdout
    return bool(plain) or not (hasattr(stream, "isatty") and stream.isatty())


def aligned(header: list[str], rows: list[list[str]]) -> list[str]:
    """Columns padded to their widest cell, two spaces apart; no trailing spaces."""
    cells = [list(map(str, header))] + [list(map(str, r)) for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    return ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in cells]


def print_table(header: list[str], rows: list[list[str]], *, title: str | None = None, plain: bool = False,
                no_wrap: tuple[str, ...] = ()) -> None:
    """One table on stdout. `plain` (see is_plain) gives aligned text: the title, if any, on its own line first."""
    if plain:
        if title:
            click.echo(title)
        for line in aligned(header, rows):
            click.echo(line)
        return
    from rich.console import Console  # lazy: only a terminal's table needs rich; plain output and `advbp --help` do not
    from rich.table import Table
    from rich.text import Text

    table = Table(title=Text(title) if title else None, title_justify="left")
    for h in header:
        table.add_column(Text(h), no_wrap=h in no_wrap)
    for r in rows:
        table.add_row(*(Text(str(c)) for c in r))  # Text: no markup, no highlighting of cell contents
    Console(highlight=False).print(table)
