"""Reading a batch's items from a CSV file: a ``key`` column, the others the payload."""

from __future__ import annotations

import csv
import io
import math
import re
from typing import TYPE_CHECKING, Any

from batchkit import ItemSpec

if TYPE_CHECKING:
    from pathlib import Path

__all__ = ["BadItems", "read_items"]


class BadItems(ValueError):
    """The CSV file cannot be read as items; the message says where and why."""


#: Numbers as a person writes them: "7", "-2", "19.99", "1.5e3"; never "007", "1_000",
#: "+3" or " 4", which stay text (a product code keeps its leading zeros).
_INT = re.compile(r"-?(0|[1-9][0-9]*)")
_FLOAT = re.compile(r"-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][-+]?[0-9]+)?")


def _value(text: str) -> Any:
    """A cell as JSON would have it: empty is null, numbers are numbers, the rest is text."""
    if text == "":
        return None
    if _INT.fullmatch(text):
        return int(text)
    if _FLOAT.fullmatch(text):
        number = float(text)
        if math.isfinite(number):
            return number
    return text


def read_items(path: Path) -> list[ItemSpec]:
    """One item per row: its ``key`` column is the item's key, the other columns its payload.

    A quoted cell may hold commas and line breaks. An empty cell is ``None`` in the
    payload, a number written plainly is a number, anything else is text as written.

    Raises:
        BadItems: the file is missing, is not CSV, has no ``key`` column or a column
            without a name or named twice, or a row has an empty or repeated key (the
            message names the line).
    """
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise BadItems(f"{path}: no such file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise BadItems(f"{path}: cannot be read as UTF-8 text ({exc})") from None
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)  # bad quoting is refused
    line = 1
    try:
        header = next(reader, None)
        if header is None or "key" not in header:
            raise BadItems(f"{path}: the first line must name the columns, one of them 'key'")
        for column, name in enumerate(header, start=1):
            if not name.strip():
                raise BadItems(f"{path}: column {column} of the first line has no name")
            if header.index(name) != column - 1:
                raise BadItems(f"{path}: the column {name!r} is named twice")
        items: list[ItemSpec] = []
        seen: dict[str, int] = {}
        while True:
            line = reader.line_num + 1  # where the row starts: a quoted cell may span lines
            cells = next(reader, None)
            if cells is None:
                break
            if not cells:
                continue  # a blank line
            if len(cells) > len(header):
                raise BadItems(f"{path}, line {line}: more cells than columns")
            row = dict(zip(header, [*cells, *[""] * (len(header) - len(cells))], strict=True))
            key = row.pop("key").strip()
            if not key:
                raise BadItems(f"{path}, line {line}: the key is empty")
            if key in seen:
                raise BadItems(
                    f"{path}, line {line}: the key {key!r} is on line {seen[key]} already"
                )
            seen[key] = line
            items.append(ItemSpec(key=key, payload={k: _value(v) for k, v in row.items()}))
    except csv.Error as exc:
        raise BadItems(f"{path}, line {line}: not CSV ({exc})") from None
    if not items:
        raise BadItems(f"{path}: no rows under the header")
    return items
