"""A griffe extension: ``#:`` comments above an attribute become its docstring.

batchkit documents enum members and model fields with ``#:`` comments (the convention
Sphinx reads); griffe reads only string literals below an attribute, so this bridges the
two for the API reference.
"""

from __future__ import annotations

from typing import Any

import griffe

__all__ = ["MemberComments"]


class MemberComments(griffe.Extension):
    """Give an undocumented attribute the ``#:`` comment lines right above it."""

    def on_attribute_instance(self, *, attr: griffe.Attribute, **kwargs: Any) -> None:
        if attr.docstring is not None or attr.lineno is None or attr.filepath is None:
            return
        try:
            lines = attr.lines_collection[attr.filepath]  # type: ignore[index]
        except KeyError:
            return
        comment: list[str] = []
        index = attr.lineno - 2  # the line above the attribute, 0-based
        while index >= 0 and lines[index].lstrip().startswith("#:"):
            comment.insert(0, lines[index].lstrip()[2:].strip())
            index -= 1
        if comment:
            attr.docstring = griffe.Docstring(
                "\n".join(comment), lineno=index + 2, endlineno=attr.lineno - 1, parent=attr
            )
