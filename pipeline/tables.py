"""The verbs' tables on stdout: rich tables on a terminal, tab-separated values in a pipe or a file.

A terminal gets rich tables in which no value is cut: numbers and ids keep their full width on one line, text
and paths wrap (a long word folded onto the next line), and a table that cannot fit even so is printed wider
than the terminal. Anything else gets one header line and one line per row, tab-separated, with every value
whole; several tables are separated by a blank line, each after a `# title` line."""
from __future__ import annotations

import sys
from dataclasses import dataclass, field
from typing import TextIO

from rich.console import Console
from rich.table import Table as RichTable
from rich.text import Text


@dataclass
class Column:
    name: str
    numeric: bool = False  # right-aligned, never wrapped
    wrap: bool = True  # False: an id, never wrapped
    styles: dict[str, str] = field(default_factory=dict)  # a cell's value -> its style on a terminal


@dataclass
class Table:
    title: str
    columns: list[Column]
    rows: list[list[str]] = field(default_factory=list)


def is_terminal(stream: TextIO) -> bool:
    return hasattr(stream, "isatty") and stream.isatty()


def show(tables: list[Table], stream: TextIO | None = None) -> None:
    """Print `tables` on `stream` (stdout): rich on a terminal, TSV otherwise."""
    stream = stream or sys.stdout
    if is_terminal(stream):
        for table in tables:
            _rich(table, stream)
    else:
        stream.write(tsv(tables))
        stream.flush()


def tsv(tables: list[Table]) -> str:
    blocks = []
    for table in tables:
        lines = [f"# {table.title}"] if len(tables) > 1 else []
        lines += ["\t".join(_flat(cell) for cell in row) for row in [[c.name for c in table.columns], *table.rows]]
        blocks.append("\n".join(lines) + "\n")
    return "\n".join(blocks)


def _flat(cell: str) -> str:
    return " ".join(str(cell).replace("\t", " ").splitlines())


def _rich(table: Table, stream: TextIO) -> None:
    rich = RichTable(title=table.title)
    for c in table.columns:
        rich.add_column(c.name, justify="right" if c.numeric else "left", overflow="fold",
                        no_wrap=c.numeric or not c.wrap)
    for row in table.rows:
        rich.add_row(*(Text(cell, style=c.styles.get(cell, "")) for c, cell in zip(table.columns, row)))
    console = Console(file=stream, highlight=False)
    # the columns that never wrap at their widest, the others at least 8 wide, and the padding and borders
    floor = sum(max([len(c.name), *(len(row[i]) for row in table.rows)]) if c.numeric or not c.wrap else 8
                for i, c in enumerate(table.columns)) + 3 * len(table.columns) + 1
    if floor > console.width:  # wider than the terminal rather than a number cut
        console = Console(file=stream, highlight=False, width=floor)
    console.print(rich)
