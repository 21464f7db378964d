"""Plain-text tables, the one way the package prints them (reports, the demo, explanations)."""

from __future__ import annotations

from collections.abc import Sequence


def text_table(header: Sequence[str], rows: Sequence[Sequence[str] | None]) -> list[str]:
    """Lines of a table: the first column left-aligned, the others right-aligned.

    Columns are as wide as their widest cell and two spaces apart; a row of
    None is a blank line (between the body and a summary, say).
    """
    cells = [list(map(str, header))] + [list(map(str, row)) for row in rows if row is not None]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]

    def line(row):
        first, *rest = row
        right = (f"{cell:>{width}}" for cell, width in zip(rest, widths[1:], strict=True))
        return "  ".join([f"{first:<{widths[0]}}", *right]).rstrip()

    return [line(header)] + ["" if row is None else line(row) for row in rows]
