"""Text tables for a terminal: columns fitted to its width, nothing in them that it would run.

What the operator commands print comes from the store, and a store holds what generators
and submitters wrote: an error message may carry terminal escape sequences. `clean`
makes any text one printable line; `Table` fits its columns to the width, cutting the
columns marked as flexible (a message, metadata) with an ellipsis, never an id.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Iterable, Sequence

__all__ = ["Column", "Table", "age", "clean", "cut"]

# Control characters (C0, DEL, C1) and the line and paragraph separators: a terminal acts
# on them, a table row must not.
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")
_SPACES = re.compile(r"\s+")


def clean(text: object) -> str:
    """``text`` as one printable line: control characters (escape sequences included)
    become spaces, runs of white space one space."""
    return _SPACES.sub(" ", _CONTROL.sub(" ", str(text))).strip()


def age(moment: datetime) -> str:
    """How long ago ``moment`` was, in its largest unit: ``45s``, ``3m``, ``2h``, ``5d``."""
    seconds = max(0.0, (datetime.now(UTC) - moment).total_seconds())
    for size, unit in ((86_400, "d"), (3_600, "h"), (60, "m")):
        if seconds >= size:
            return f"{int(seconds // size)}{unit}"
    return f"{int(seconds)}s"


def _width(text: str) -> int:
    """Columns ``text`` takes in a terminal (East Asian wide characters take two)."""
    return sum(2 if unicodedata.east_asian_width(ch) in "WF" else 1 for ch in text)


def cut(text: str, width: int) -> str:
    """``text`` cut to ``width`` columns, its end an ellipsis when something was cut."""
    if _width(text) <= width:
        return text
    if width <= 0:
        return ""
    out, used = [], 0
    for ch in text:
        w = _width(ch)
        if used + w > width - 1:
            break
        out.append(ch)
        used += w
    return "".join(out) + "…"


@dataclass(frozen=True, slots=True)
class Column:
    """A column: its heading, whether it may be cut (else it keeps its widest value),
    the least it is cut to, and whether its values are right-aligned (numbers)."""

    heading: str
    flexible: bool = False
    least: int = 8
    right: bool = False


@dataclass(slots=True)
class Table:
    """Rows of cells under `Column` headings, laid out to fit ``width`` columns.

    Fixed columns keep their widest value; the flexible ones share what is left, the
    widest first cut; when the fixed ones alone do not fit, the flexible ones keep their
    least width and the line is as wide as it must be (an id is never cut).
    """

    columns: Sequence[Column]
    rows: list[list[str]] = field(default_factory=list)

    def add(self, *cells: object) -> None:
        self.rows.append([clean(cell) for cell in cells])

    def lines(self, width: int) -> Iterable[str]:
        """The heading line and one line per row, each at most ``width`` columns where
        that is possible."""
        columns = self.columns
        natural = [
            max([_width(c.heading)] + [_width(row[i]) for row in self.rows])
            for i, c in enumerate(columns)
        ]
        widths = list(natural)
        gaps = 2 * (len(columns) - 1)
        flexible = [i for i, c in enumerate(columns) if c.flexible]
        # The widest flexible column gives up a column at a time, so that they end even.
        while sum(widths) + gaps > width and flexible:
            widest = max(flexible, key=lambda i: widths[i])
            floor = min(
                natural[widest], max(columns[widest].least, _width(columns[widest].heading))
            )
            if widths[widest] <= floor:
                flexible.remove(widest)
                continue
            widths[widest] -= 1
        yield self._line([c.heading for c in columns], widths)
        for row in self.rows:
            yield self._line(row, widths)

    def _line(self, cells: Sequence[str], widths: Sequence[int]) -> str:
        parts = []
        for column, cell, width in zip(self.columns, cells, widths, strict=True):
            text = cut(cell, width)
            pad = " " * (width - _width(text))
            parts.append(pad + text if column.right else text + pad)
        return "  ".join(parts).rstrip()
