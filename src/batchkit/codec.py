"""JSON: the only format batchkit writes, on the wire and at rest.

Payloads, results and metadata are checked here once, at the edge, so that every
storage adapter receives text it can store as it is and a reader gets back exactly
what was written. Never pickle: a store that someone else can write to must not be
able to run code in a worker.
"""

from __future__ import annotations

import json
import math
from typing import TYPE_CHECKING, Any, TypeAlias, cast

if TYPE_CHECKING:
    from collections.abc import Iterator, Sequence

__all__ = [
    "MAX_INT_DIGITS",
    "MAX_JSON_DEPTH",
    "JSONError",
    "JSONValue",
    "check_json",
    "clean_text",
    "dumps",
    "encode",
    "is_unicode",
    "loads",
    "same_json",
]

#: A value that JSON can carry: `None`, `bool`, `int`, finite `float`, `str`, a `list` of
#: JSON values, or a `dict` with `str` keys and JSON values.
JSONValue: TypeAlias = "bool | int | float | str | list[JSONValue] | dict[str, JSONValue] | None"

#: The deepest nesting of lists and objects batchkit writes, whatever `Limits` says.
#: Python's ``json`` encodes and decodes by recursion: on Python 3.11 each level counts
#: against the interpreter's recursion limit (1,000 frames, shared with the caller's
#: stack), and pydantic stops serialising a model at about 250 levels (an `Item` holding
#: its payload adds one, a host's response model a few more). 128 levels round-trip in
#: every store and every reader with room to spare.
MAX_JSON_DEPTH = 128
#: The most decimal digits of an integer batchkit writes: Python's default limit on
#: converting integers to and from text (``sys.get_int_max_str_digits``), past which
#: ``json`` raises `ValueError` on writing or reading it back.
MAX_INT_DIGITS = 4_300

_ENCODER = json.JSONEncoder(ensure_ascii=False, allow_nan=False, separators=(",", ":"))
_DECODER = json.JSONDecoder()
_SCAN: Any = _DECODER.scan_once  # type: ignore[attr-defined]
_SCALARS = (bool, type(None))
_INT_BOUND = 10**MAX_INT_DIGITS


class JSONError(ValueError):
    """A value is not JSON, or not JSON batchkit accepts (say, over the size limit)."""

    def __init__(self, reason: str, path: str = "$") -> None:
        self.reason = reason
        self.path = path
        super().__init__(f"{reason} at {path}" if path != "$" else reason)


def check_json(value: object, *, max_depth: int = 64) -> None:
    """Raise `JSONError` unless `value` is a JSON value that round-trips unchanged.

    Rejected: NaN and infinities, integers of more than `MAX_INT_DIGITS` digits, dict
    keys that are not strings (``json`` would turn them into strings silently), tuples
    and sets and other containers, strings that are not valid Unicode, and nesting
    deeper than ``max_depth`` or `MAX_JSON_DEPTH`, whichever is less.

    It walks the value with a stack of its own, not by recursion: no value, however
    deep, makes it raise `RecursionError`.
    """
    limit = max_depth if max_depth < MAX_JSON_DEPTH else MAX_JSON_DEPTH
    if not _is_json(value, limit):
        _explain(value, limit)
        raise JSONError("not JSON")  # _explain names the culprit; this is a safety net


def _is_json(value: object, limit: int) -> bool:
    # The fast pass, run on every payload and result: no path kept, containers visited in
    # any order. `_explain` walks again in document order to say what is wrong, and where.
    kind = type(value)
    if kind is not dict and kind is not list:
        try:
            _check_scalar(value, kind, ())
        except JSONError:
            return False
        return True
    if limit < 1:
        return False
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if type(node) is dict:
            for key in node:
                if type(key) is not str or (not key.isascii() and not is_unicode(key)):
                    return False
            children = node.values()
        else:
            children = node
        for child in children:
            kind = type(child)
            if kind is str:
                if not child.isascii() and not is_unicode(child):
                    return False
            elif kind is int:
                if not -_INT_BOUND < child < _INT_BOUND:
                    return False
            elif kind is dict or kind is list:
                if depth >= limit:
                    return False
                stack.append((child, depth + 1))
            elif kind is float:
                if not math.isfinite(child):
                    return False
            elif child is not None and kind is not bool:
                return False
    return True


def is_unicode(text: str) -> bool:
    """Whether ``text`` is valid Unicode: no lone surrogate, which no store can hold."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _explain(value: object, limit: int) -> None:
    """Raise the `JSONError` that names the first culprit in ``value``, with its path."""
    kind = type(value)
    if kind is not dict and kind is not list:
        _check_scalar(value, kind, ())
        return
    # One iterator per open container, and the key or index of the value taken from it.
    stack: list[tuple[Iterator[tuple[Any, Any]], bool]] = []
    trail: list[Any] = []
    node: Any = value
    while True:
        if kind is dict or kind is list:
            if len(stack) >= limit:
                raise JSONError("nested too deeply", _path(trail))
            if kind is dict:
                stack.append((iter(node.items()), True))
            else:
                stack.append((enumerate(node), False))
            trail.append(None)
        else:
            _check_scalar(node, kind, trail)
        while stack:
            entries, is_dict = stack[-1]
            entry = next(entries, None)
            if entry is None:
                stack.pop()
                trail.pop()
                continue
            key, node = entry
            if is_dict:
                if type(key) is not str:
                    raise JSONError(f"object key {key!r} is not a string", _path(trail[:-1]))
                _check_text(key, trail[:-1])
            trail[-1] = (key,) if is_dict else key
            kind = type(node)
            break
        else:
            return


def _check_scalar(value: object, kind: type, trail: Sequence[Any]) -> None:
    if kind is str:
        _check_text(value, trail)  # type: ignore[arg-type]
    elif kind is int:
        if not -_INT_BOUND < value < _INT_BOUND:
            raise JSONError(f"integer of more than {MAX_INT_DIGITS} digits", _path(trail))
    elif kind in _SCALARS:
        return
    elif kind is float:
        if not math.isfinite(value):  # type: ignore[arg-type]
            raise JSONError(f"{value!r} is not a JSON number", _path(trail))
    else:
        hint = "; use a list" if isinstance(value, tuple | set | frozenset) else ""
        raise JSONError(f"{kind.__name__} is not a JSON type{hint}", _path(trail))


def _path(trail: Sequence[Any]) -> str:
    # A dict's key is kept in a 1-tuple, a list's index as an int.
    return "$" + "".join(f".{step[0]}" if type(step) is tuple else f"[{step}]" for step in trail)


def _check_text(text: str, trail: Sequence[Any]) -> None:
    if not text.isascii() and not is_unicode(text):
        raise JSONError("string is not valid Unicode (lone surrogate)", _path(trail))


def _not_json(value: object) -> object:
    raise TypeError(f"{type(value).__name__} is not a JSON type")


# The C encoder, made once: JSONEncoder.encode builds it anew on every call, which is
# most of the cost of encoding a small payload (submit encodes one per item).
_C_MAKE_ENCODER = getattr(json.encoder, "c_make_encoder", None)
_FAST_ENCODE = (
    None
    if _C_MAKE_ENCODER is None
    else _C_MAKE_ENCODER(
        None, _not_json, json.encoder.encode_basestring, None, ":", ",", False, False, False
    )
)


def dumps(value: JSONValue) -> str:
    """Encode a checked JSON value as compact text (UTF-8 as is, no NaN)."""
    if _FAST_ENCODE is not None:
        return "".join(_FAST_ENCODE(value, 0))
    return _ENCODER.encode(value)


def loads(text: str) -> JSONValue:
    """Decode JSON text written by `dumps`.

    Raises:
        ValueError: the text is not one JSON value (`json.JSONDecodeError`).
    """
    # The scanner alone, first: `dumps` writes no whitespace around the value, and
    # `JSONDecoder.decode` looks for some with two regular-expression matches, which cost
    # several times the scan of a short value (a listing decodes two values per item).
    # Text that does not end where the value does goes through `decode`, which reads it
    # as the standard says or tells what is wrong with it.
    try:
        value, end = _SCAN(text, 0)
    except StopIteration:
        end = -1
    if end != len(text):
        value = _DECODER.decode(text)
    return cast("JSONValue", value)


def encode(value: object, *, max_bytes: int, max_depth: int = 64, what: str = "value") -> str:
    """Check `value`, encode it, and enforce a size limit in UTF-8 bytes.

    Args:
        value: the candidate JSON value.
        max_bytes: the largest encoded size accepted.
        max_depth: the deepest nesting accepted (`MAX_JSON_DEPTH` at most).
        what: how the value is named in error messages ("payload", "result").

    Returns:
        The compact JSON text.

    Raises:
        JSONError: the value is not JSON or is too large.
    """
    try:
        check_json(value, max_depth=max_depth)
        text = dumps(value)  # type: ignore[arg-type]
    except JSONError as exc:
        raise JSONError(f"{what} is not JSON: {exc.reason}", exc.path) from None
    except ValueError as exc:
        # An integer this process cannot spell (``sys.set_int_max_str_digits`` lowered).
        raise JSONError(f"{what} is not JSON: {exc}") from None
    # Four bytes per character at most: most values skip the encode.
    if len(text) * 4 > max_bytes:
        size = len(text.encode("utf-8"))
        if size > max_bytes:
            raise JSONError(f"{what} is {size} bytes, over the limit of {max_bytes} bytes")
    return text


def clean_text(text: str) -> str:
    """Make free text (progress and error messages) storable in every store.

    NUL becomes U+FFFD (PostgreSQL text cannot hold it) and lone surrogates become "?"
    (no UTF-8 store can hold them).
    """
    if "\x00" in text:
        text = text.replace("\x00", "\ufffd")
    if not text.isascii():
        text = text.encode("utf-8", "replace").decode("utf-8")
    return text


def same_json(a: object, b: object) -> bool:
    """Whether two JSON values are the same JSON: ``True`` is not ``1``, ``1`` is not ``1.0``.

    This is how metadata filters compare, in every store: by canonical JSON text.
    """
    try:
        return dumps(a) == dumps(b)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return False
