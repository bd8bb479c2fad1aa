"""JSON: the only format batchkit writes, on the wire and at rest.

Payloads, results and metadata are checked here once, at the edge, so that every
storage adapter receives text it can store as it is and a reader gets back exactly
what was written. Never pickle: a store that someone else can write to must not be
able to run code in a worker.
"""

from __future__ import annotations

import json
import math
from typing import TypeAlias

__all__ = [
    "JSONError",
    "JSONValue",
    "check_json",
    "clean_text",
    "dumps",
    "encode",
    "loads",
    "same_json",
]

#: A value that JSON can carry: `None`, `bool`, `int`, finite `float`, `str`, a `list` of
#: JSON values, or a `dict` with `str` keys and JSON values.
JSONValue: TypeAlias = "bool | int | float | str | list[JSONValue] | dict[str, JSONValue] | None"

_ENCODER = json.JSONEncoder(ensure_ascii=False, allow_nan=False, separators=(",", ":"))
_DECODER = json.JSONDecoder()
_SCALARS = (str, int, bool, type(None))


class JSONError(ValueError):
    """A value is not JSON, or not JSON batchkit accepts (say, over the size limit)."""

    def __init__(self, reason: str, path: str = "$") -> None:
        self.reason = reason
        self.path = path
        super().__init__(f"{reason} at {path}" if path != "$" else reason)


def check_json(value: object, *, max_depth: int = 64) -> None:
    """Raise `JSONError` unless `value` is a JSON value that round-trips unchanged.

    Rejected: NaN and infinities, dict keys that are not strings (``json`` would turn
    them into strings silently), tuples and sets and other containers, strings that are
    not valid Unicode, and nesting deeper than ``max_depth``.
    """
    _check(value, "$", max_depth)


def _check(value: object, path: str, depth: int) -> None:
    kind = type(value)
    if kind is str:
        _check_text(value, path)  # type: ignore[arg-type]
    elif kind in _SCALARS:
        return
    elif kind is float:
        if not math.isfinite(value):  # type: ignore[arg-type]
            raise JSONError(f"{value!r} is not a JSON number", path)
    elif kind is dict:
        if depth <= 0:
            raise JSONError("nested too deeply", path)
        for key, item in value.items():  # type: ignore[attr-defined]
            if type(key) is not str:
                raise JSONError(f"object key {key!r} is not a string", path)
            _check_text(key, path)
            _check(item, f"{path}.{key}", depth - 1)
    elif kind is list:
        if depth <= 0:
            raise JSONError("nested too deeply", path)
        for index, item in enumerate(value):  # type: ignore[arg-type]
            _check(item, f"{path}[{index}]", depth - 1)
    else:
        hint = "; use a list" if isinstance(value, tuple | set | frozenset) else ""
        raise JSONError(f"{kind.__name__} is not a JSON type{hint}", path)


def _check_text(text: str, path: str) -> None:
    if not text.isascii():
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            raise JSONError("string is not valid Unicode (lone surrogate)", path) from None


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
    """Decode JSON text written by `dumps`."""
    value: JSONValue = _DECODER.decode(text)
    return value


def encode(value: object, *, max_bytes: int, max_depth: int = 64, what: str = "value") -> str:
    """Check `value`, encode it, and enforce a size limit in UTF-8 bytes.

    Args:
        value: the candidate JSON value.
        max_bytes: the largest encoded size accepted.
        max_depth: the deepest nesting accepted.
        what: how the value is named in error messages ("payload", "result").

    Returns:
        The compact JSON text.

    Raises:
        JSONError: the value is not JSON or is too large.
    """
    try:
        check_json(value, max_depth=max_depth)
    except JSONError as exc:
        raise JSONError(f"{what} is not JSON: {exc.reason}", exc.path) from None
    text = dumps(value)  # type: ignore[arg-type]
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
