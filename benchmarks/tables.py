"""Titled tables of text cells, printed with ``rich`` on a terminal and as plain text elsewhere."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import TextIO

from pydantic import BaseModel

__all__ = ["Table", "pct", "pct_sd", "print_tables", "usd", "usd_sd"]


class Table(BaseModel):
    """A titled table of text cells; the first ``left`` columns are left-aligned."""

    title: str
    columns: list[str]
    rows: list[list[str]]
    note: str | None = None
    left: int = 3


def pct(score: float) -> str:
    """A 0–1 score as a percentage with one decimal."""
    return f"{score * 100:.1f}"


def pct_sd(mean: float, sd: float) -> str:
    return f"{mean * 100:.1f} ± {sd * 100:.1f}"


def usd(value: float) -> str:
    return f"{value:.4f}"


def usd_sd(mean: float, sd: float) -> str:
    return f"{mean:.4f} ± {sd:.4f}"


def _render_plain(table: Table, out: TextIO) -> None:
    widths = [max(len(c), *(len(row[i]) for row in table.rows)) if table.rows else len(c)
              for i, c in enumerate(table.columns)]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(cell.ljust(width) if i < table.left else cell.rjust(width)
                         for i, (cell, width) in enumerate(zip(cells, widths, strict=True))).rstrip()

    out.write(f"{table.title}\n{line(table.columns)}\n{line(['-' * w for w in widths])}\n")
    for row in table.rows:
        out.write(line(row) + "\n")
    if not table.rows:
        out.write("(no rows)\n")
    if table.note:
        out.write(f"({table.note})\n")
    out.write("\n")


def _render_rich(tables: Sequence[Table], out: TextIO) -> None:
    from rich.console import Console
    from rich.table import Table as RichTable

    console = Console(file=out)
    for table in tables:
        rich_table = RichTable(title=table.title, caption=table.note)
        for i, column in enumerate(table.columns):
            rich_table.add_column(column, justify="left" if i < table.left else "right")
        for row in table.rows:
            rich_table.add_row(*row)
        console.print(rich_table)


def print_tables(tables: Sequence[Table], out: TextIO | None = None, *, rich: bool | None = None) -> None:
    """Print ``tables``: with ``rich`` on a terminal (or when ``rich=True``), else as plain text."""
    out = out if out is not None else sys.stdout
    use_rich = out.isatty() if rich is None else rich
    if use_rich:
        _render_rich(tables, out)
    else:
        for table in tables:
            _render_plain(table, out)
