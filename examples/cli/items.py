"""Reading a batch's items from a CSV file: a ``key`` column, the others the payload."""

from __future__ import annotations

import csv
import math
from typing import TYPE_CHECKING, Any

from batchkit import ItemSpec

if TYPE_CHECKING:
    from pathlib import Path

__all__ = ["BadItems", "read_items"]


class BadItems(ValueError):
    """The CSV file cannot be read as items; the message says where and why."""


def _value(text: str) -> Any:
    """A cell as JSON would have it: empty is null, numbers are numbers, the rest is text."""
    if text == "":
        return None
    for kind in (int, float):
        try:
            number = kind(text)
        except ValueError:
            continue
        if isinstance(number, float) and not math.isfinite(number):
            break
        return number
    return text


def read_items(path: Path) -> list[ItemSpec]:
    """One item per row: its ``key`` column is the item's key, the other columns its payload.

    Raises:
        BadItems: the file is missing, is not CSV, has no ``key`` column, or a row has
            an empty or repeated key (the message names the line).
    """
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise BadItems(f"{path}: no such file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise BadItems(f"{path}: cannot be read as UTF-8 text ({exc})") from None
    reader = csv.DictReader(text.splitlines())
    if reader.fieldnames is None or "key" not in reader.fieldnames:
        raise BadItems(f"{path}: the first line must name the columns, one of them 'key'")
    items: list[ItemSpec] = []
    seen: dict[str, int] = {}
    for line, row in enumerate(reader, start=2):
        if None in row:
            raise BadItems(f"{path}, line {line}: more cells than columns")
        key = (row.pop("key") or "").strip()
        if not key:
            raise BadItems(f"{path}, line {line}: the key is empty")
        if key in seen:
            raise BadItems(f"{path}, line {line}: the key {key!r} is on line {seen[key]} already")
        seen[key] = line
        items.append(ItemSpec(key=key, payload={k: _value(v or "") for k, v in row.items()}))
    if not items:
        raise BadItems(f"{path}: no rows under the header")
    return items
