"""Tables that keep every figure whole at any terminal width (80 columns, a CI log, a pipe into ``cat``).

The rule, for every table the app prints: a column of figures (GiB, tokens/s, MFU, counts) or of names is
``no_wrap`` and is never shrunk; a descriptive column (a plan's label, a reason) wraps, folding a word that
is longer than the column rather than cutting it; a list of names (aliases) wraps between names only. When even the figure columns do not fit side by
side, :func:`fit_table` splits the table into several, each repeating the row labels (the first ``keep``
columns), so nothing is ever replaced by ``…``.

Built on rich's own column-width calculation (``Table._calculate_column_widths``, rich >= 10; the tests in
``tests/planner/app/test_render_width.py`` pin the behaviour at 80 and 60 columns).
"""

from __future__ import annotations

import copy
import dataclasses

from rich.console import Console
from rich.measure import Measurement
from rich.table import Column, Table

MIN_TEXT_WIDTH = 8
"""A wrapping column narrower than this (or than its own widest line, if smaller) reads as noise: split the
table instead."""


def text_column(header: str = "", **kw) -> Column:  # noqa: ANN003
    """A descriptive column: wraps, and folds a word longer than the column (never ``…``)."""
    return Column(header, no_wrap=False, overflow="fold", **kw)


def figure_column(header: str = "", justify: str = "right", **kw) -> Column:  # noqa: ANN003
    """A column of figures or names: one line per cell, never shrunk."""
    return Column(header, no_wrap=True, justify=justify, **kw)  # type: ignore[arg-type]


def _widths(console: Console, table: Table, width: int) -> tuple[list[int], list[Measurement]]:
    """(widths rich gives each column at ``width``, each column's own minimum and maximum width)."""
    options = console.options.update_width(max(1, width))
    own = [table._measure_column(console, options, c) for c in table.columns]
    given = table._calculate_column_widths(console, options.update_width(max(1, width - table._extra_width)))
    return given, own


def fits(console: Console, table: Table, width: int | None = None) -> bool:
    """Whether ``table`` prints at ``width`` (default: the console's) with nothing cut: a ``no_wrap`` column
    at its full width, a folding column (``overflow="fold"``) at least :data:`MIN_TEXT_WIDTH` wide (or its
    natural width when smaller), any other wrapping column at least as wide as its longest word (rich's default
    overflow would put ``…`` in a word that does not fit)."""
    width = console.width if width is None else width
    if table.width is not None:
        return table.width <= width
    given, own = _widths(console, table, width)
    for col, g, m in zip(table.columns, given, own):
        if col.no_wrap:
            need = m.maximum
        elif col.overflow == "fold":
            need = min(m.maximum, MIN_TEXT_WIDTH + table._get_padding_width(col._index))
        else:
            need = m.minimum
        if g < need:
            return False
    return sum(given) + table._extra_width <= width


def _part(table: Table, indices: list[int], first: bool) -> Table:
    part = copy.copy(table)
    part.columns = [dataclasses.replace(table.columns[i], _index=n) for n, i in enumerate(indices)]
    if not first:
        part.title = None
    return part


def fit_table(console: Console, table: Table, keep: int = 1) -> list[Table]:
    """``table`` itself when it fits the console; else parts that each fit, every part holding the first
    ``keep`` columns and as many of the others, in order, as fit. A single column that cannot fit even next to
    the row labels gets a part of its own (the terminal then wraps the line; nothing is cut)."""
    if fits(console, table):
        return [table]
    head = list(range(min(keep, len(table.columns))))
    rest = list(range(len(head), len(table.columns)))
    parts: list[list[int]] = []
    current: list[int] = []
    for i in rest:
        trial = _part(table, head + current + [i], not parts)
        if current and not fits(console, trial):
            parts.append(current)
            current = [i]
        else:
            current.append(i)
    if current:
        parts.append(current)
    return [_part(table, head + p, n == 0) for n, p in enumerate(parts)]


def print_table(console: Console, table: Table, keep: int = 1) -> None:
    """Print ``table`` so that every figure stays whole (see :func:`fit_table`); parts are separated by a blank
    line."""
    for n, part in enumerate(fit_table(console, table, keep)):
        if n:
            console.print()
        if part is table or fits(console, part):  # fit_table returns the table itself only when it fits
            console.print(part)
        else:  # a column too wide even beside the row labels: print it whole, the terminal wraps the line
            # (rich caps print(width=) at the console's width, and would cut a word with "…")
            _, own = _widths(console, part, 10_000)
            need = sum(m.maximum if c.no_wrap else m.minimum for c, m in zip(part.columns, own)) + part._extra_width
            width = console.width
            console.width = max(width, need)
            try:
                console.print(part)
            finally:
                console.width = width
