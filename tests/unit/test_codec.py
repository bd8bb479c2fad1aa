"""JSON at the edge: what is accepted, what is refused and why, and exact round trips."""

from __future__ import annotations

import json
import math
import sys
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from batchkit.codec import (
    MAX_INT_DIGITS,
    MAX_JSON_DEPTH,
    JSONError,
    check_json,
    dumps,
    encode,
    loads,
)
from batchkit.models import ItemState

# Text with NUL, controls and any code point JSON can carry (no lone surrogates).
text_st = st.text(st.characters(exclude_categories=["Cs"]), max_size=20) | st.sampled_from(
    ["", "\x00", "a\x00b", '"\\/\b\f\n\r\t', "\u2028\u2029", "é", "日本語", "😀", "\U0010ffff"]
)
json_st = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | text_st,
    lambda children: (
        st.lists(children, max_size=5) | st.dictionaries(text_st, children, max_size=5)
    ),
    max_leaves=30,
)


def same(a: Any, b: Any) -> bool:
    """Equal, and of the same types all the way down (``1`` is not ``1.0``, ``-0.0`` not ``0.0``)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, float):
        return math.copysign(1.0, a) == math.copysign(1.0, b) and a == b
    if isinstance(a, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict):
        return list(a) == list(b) and all(same(a[k], b[k]) for k in a)
    return bool(a == b)


# -- accepted -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    [
        None,
        True,
        False,
        0,
        -7,
        2**80,
        1.5,
        -0.0,
        1e308,
        "",
        "text",
        "a\x00b",
        "é😀",
        [],
        {},
        [1, "a", None, [True, {"x": 1.25}]],
        {"a": {"b": {"c": [1, 2, {"d": None}]}}, "": "empty key", "é": "unicode key"},
    ],
)
def test_json_values_are_accepted(value: Any) -> None:
    check_json(value)
    text = encode(value, max_bytes=10_000)
    assert text == dumps(value)
    assert same(loads(text), value)


def test_dumps_is_compact_and_keeps_unicode() -> None:
    assert dumps({"a": [1, 2], "b": "é"}) == '{"a":[1,2],"b":"é"}'


@given(
    json_st,
    st.sampled_from([None, 0, 2]),
    st.sampled_from(["", " ", "\n\t", "x", " 1", ",", "]", "}"]),
    st.sampled_from(["", " ", "\r\n"]),
)
def test_loads_reads_any_text_as_the_json_module_does(
    value: Any, indent: int | None, tail: str, head: str
) -> None:
    # Stored text is not always `dumps`'s: a store someone else wrote to may hold indented
    # JSON, whitespace around it, or something after it. Either both read the same value
    # or both refuse it.
    text = head + json.dumps(value, indent=indent, ensure_ascii=False) + tail
    try:
        expected = json.loads(text)
    except json.JSONDecodeError as exc:
        refusal = (exc.msg, exc.pos)
    else:
        assert same(loads(text), expected)
        return
    with pytest.raises(json.JSONDecodeError) as refused:
        loads(text)
    assert (refused.value.msg, refused.value.pos) == refusal


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("", "Expecting value"),
        (" ", "Expecting value"),
        ("x", "Expecting value"),
        ("{", "Expecting property name"),
        ('"open', "Unterminated string"),
        ("1 2", "Extra data"),
        ('"a"x', "Extra data"),
        ("[1,]", "Expecting value|Illegal trailing comma"),
    ],
)
def test_loads_refuses_what_is_not_one_json_value(text: str, says: str) -> None:
    with pytest.raises(json.JSONDecodeError, match=says):
        loads(text)


# -- refused, with the path of the culprit --------------------------------------------------


@pytest.mark.parametrize(
    ("value", "reason", "path"),
    [
        pytest.param(math.nan, "nan", "$", id="nan"),
        pytest.param(math.inf, "inf", "$", id="inf"),
        pytest.param(-math.inf, "-inf", "$", id="-inf"),
        pytest.param({"a": [1, 2, math.nan]}, "nan", "$.a[2]", id="nested-nan"),
        pytest.param({"a": [1, 2, (3,)]}, "tuple", "$.a[2]", id="tuple"),
        pytest.param([{1, 2}], "set", "$[0]", id="set"),
        pytest.param({"k": frozenset()}, "frozenset", "$.k", id="frozenset"),
        pytest.param({"blob": b"x"}, "bytes", "$.blob", id="bytes"),
        pytest.param({"b": bytearray(b"x")}, "bytearray", "$.b", id="bytearray"),
        pytest.param(
            {"when": datetime(2024, 1, 1, tzinfo=UTC)}, "datetime", "$.when", id="datetime"
        ),
        pytest.param([Decimal("1.5")], "Decimal", "$[0]", id="decimal"),
        pytest.param([object()], "object", "$[0]", id="object"),
        pytest.param({"a": {"b": [None, 1j]}}, "complex", "$.a.b[1]", id="complex"),
        # Subclasses would come back as their base type: not an exact round trip.
        pytest.param([ItemState.QUEUED], "ItemState", "$[0]", id="str-enum"),
    ],
)
def test_non_json_is_refused_with_its_path(value: Any, reason: str, path: str) -> None:
    with pytest.raises(JSONError) as info:
        check_json(value)
    assert info.value.path == path
    assert reason in str(info.value)
    if path != "$":
        assert str(info.value).endswith(f"at {path}")


def test_containers_that_are_not_lists_hint_at_a_list() -> None:
    with pytest.raises(JSONError, match="use a list"):
        check_json((1, 2))


@pytest.mark.parametrize(
    ("value", "path"),
    [
        pytest.param({1: "a"}, "$", id="int"),
        pytest.param({"x": {(1, 2): "a"}}, "$.x", id="tuple"),
        pytest.param({"x": [{None: "a"}]}, "$.x[0]", id="none"),
        pytest.param({1.5: "a"}, "$", id="float"),
        pytest.param({True: "a"}, "$", id="bool"),
    ],
)
def test_dict_keys_must_be_strings(value: Any, path: str) -> None:
    # json.dumps would turn these into strings silently; the value would not come back.
    with pytest.raises(JSONError, match="is not a string") as info:
        check_json(value)
    assert info.value.path == path


@pytest.mark.parametrize(
    "value",
    [
        pytest.param("\ud800", id="high"),
        pytest.param("ok \udfff", id="low"),
        pytest.param(["a", {"k": "x\udc80"}], id="nested"),
        pytest.param({"\ud83d": 1}, id="key"),
    ],
)
def test_lone_surrogates_are_refused(value: Any) -> None:
    with pytest.raises(JSONError, match="surrogate"):
        check_json(value)


def nest(depth: int) -> Any:
    value: Any = 1
    for level in range(depth):
        value = [value] if level % 2 else {"k": value}
    return value


@pytest.mark.parametrize("max_depth", [1, 2, 5, 32])
def test_nesting_is_limited(max_depth: int) -> None:
    check_json(nest(max_depth), max_depth=max_depth)
    with pytest.raises(JSONError, match="nested too deeply"):
        check_json(nest(max_depth + 1), max_depth=max_depth)
    with pytest.raises(JSONError, match="nested too deeply"):
        encode(nest(max_depth + 1), max_bytes=10_000, max_depth=max_depth)


def test_default_depth_limit_is_64() -> None:
    check_json(nest(64))
    with pytest.raises(JSONError, match="nested too deeply"):
        check_json(nest(65))


def test_scalars_need_no_depth() -> None:
    check_json("text", max_depth=0)
    with pytest.raises(JSONError, match="nested too deeply"):
        check_json([], max_depth=0)


def test_a_value_that_contains_itself_is_refused_not_a_crash() -> None:
    loop: list[Any] = []
    loop.append(loop)
    with pytest.raises(JSONError, match="nested too deeply"):
        check_json(loop)


def test_very_deep_nesting_is_refused_without_recursion_error() -> None:
    with pytest.raises(JSONError, match="nested too deeply"):
        check_json(nest(100_000))


@pytest.mark.parametrize("max_depth", [MAX_JSON_DEPTH, MAX_JSON_DEPTH + 1, 100_000, 10**9])
def test_nesting_is_capped_whatever_max_depth_says(max_depth: int) -> None:
    # Python's json recurses: a value past the cap would raise RecursionError in dumps or
    # loads (on 3.11, at about 1,000 levels less the caller's stack), never JSONError.
    at_cap = nest(MAX_JSON_DEPTH)
    check_json(at_cap, max_depth=max_depth)
    text = encode(at_cap, max_bytes=10_000, max_depth=max_depth)
    assert loads(text) == at_cap
    for too_deep in (nest(MAX_JSON_DEPTH + 1), nest(100_000)):
        with pytest.raises(JSONError, match="nested too deeply"):
            check_json(too_deep, max_depth=max_depth)
        with pytest.raises(JSONError, match="nested too deeply"):
            encode(too_deep, max_bytes=10**9, max_depth=max_depth, what="payload")


def test_nesting_error_names_the_path_of_the_level_too_many() -> None:
    with pytest.raises(JSONError) as info:
        check_json({"a": [{"b": [1]}]}, max_depth=3)
    assert info.value.path == "$.a[0].b"


def test_checking_does_not_recurse() -> None:
    # Refused at the cap however little stack is left: the walk keeps its own stack.
    depth = sys.getrecursionlimit()
    sys.setrecursionlimit(100)
    try:
        with pytest.raises(JSONError, match="nested too deeply"):
            check_json(nest(100_000), max_depth=MAX_JSON_DEPTH)
        with pytest.raises(JSONError, match="not a string"):
            check_json(nest_leaf(MAX_JSON_DEPTH - 1, {1: 2}), max_depth=MAX_JSON_DEPTH)
    finally:
        sys.setrecursionlimit(depth)


def nest_leaf(depth: int, leaf: Any) -> Any:
    value = leaf
    for _ in range(depth):
        value = [value]
    return value


@pytest.mark.parametrize("sign", [1, -1])
def test_integers_round_trip_up_to_the_digits_python_spells(sign: int) -> None:
    longest = sign * (10**MAX_INT_DIGITS - 1)
    for value in (sign * 2**64, sign * 2**1000, longest):
        assert loads(encode([value], max_bytes=10_000)) == [value]
    with pytest.raises(JSONError) as info:
        encode({"n": [longest * 10]}, max_bytes=10**6, what="payload")
    assert str(info.value) == (
        f"payload is not JSON: integer of more than {MAX_INT_DIGITS} digits at $.n[0]"
    )


def test_a_process_that_spells_fewer_digits_refuses_with_json_error() -> None:
    limit = sys.get_int_max_str_digits()
    sys.set_int_max_str_digits(640)
    try:
        with pytest.raises(JSONError, match="payload is not JSON"):
            encode([10**700], max_bytes=10_000, what="payload")
    finally:
        sys.set_int_max_str_digits(limit)


_wild_st = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats()
    | st.text()
    | st.text(st.characters(categories=["Cs"]), max_size=2)
    | st.binary(max_size=2),
    lambda children: (
        st.lists(children, max_size=3)
        | st.lists(children, max_size=3).map(tuple)
        | st.dictionaries(st.text(max_size=3) | st.integers(-1, 1), children, max_size=3)
    ),
    max_leaves=12,
)


@given(value=_wild_st, max_depth=st.integers(0, 4))
def test_check_json_is_exact_or_names_a_culprit(value: Any, max_depth: int) -> None:
    # The fast check and the walk that explains a refusal agree: a value passes both, or
    # the refusal names a reason and a path.
    error: JSONError | None = None
    try:
        check_json(value, max_depth=max_depth)
    except JSONError as exc:
        error = exc
    if error is None:
        assert same(loads(dumps(value)), value)
    else:
        assert error.reason != "not JSON"
        assert error.path.startswith("$")


# -- encode: naming and size ----------------------------------------------------------------


def test_encode_names_the_value_and_keeps_the_path() -> None:
    with pytest.raises(JSONError) as info:
        encode({"a": [1, 2, (3,)]}, max_bytes=100, what="payload")
    assert str(info.value).startswith("payload is not JSON: tuple")
    assert str(info.value).endswith("at $.a[2]")
    assert info.value.path == "$.a[2]"
    assert isinstance(info.value, ValueError)


@pytest.mark.parametrize(
    ("value", "size"),
    [
        pytest.param("abc", 5, id="ascii"),
        pytest.param("ééé", 8, id="two-byte"),
        pytest.param("日本", 8, id="three-byte"),
        pytest.param("😀😀", 10, id="four-byte"),
        pytest.param({"k": ["é", 1]}, len('{"k":["é",1]}'.encode()), id="nested"),
    ],
)
def test_size_is_counted_in_utf8_bytes(value: Any, size: int) -> None:
    assert encode(value, max_bytes=size) == dumps(value)
    with pytest.raises(JSONError) as info:
        encode(value, max_bytes=size - 1, what="result")
    assert str(info.value) == f"result is {size} bytes, over the limit of {size - 1} bytes"


def test_size_limit_on_a_large_value() -> None:
    value = {"text": "é" * 50_000}
    size = len(json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode())
    assert size == 100_011
    encode(value, max_bytes=size)
    with pytest.raises(JSONError, match="over the limit"):
        encode(value, max_bytes=size - 1)


# -- round trip -----------------------------------------------------------------------------


@given(value=json_st)
def test_round_trip_is_exact(value: Any) -> None:
    check_json(value)
    text = dumps(value)
    assert same(loads(text), value)
    # The same text again: a reader that re-encodes does not drift.
    assert dumps(loads(text)) == text
    assert encode(value, max_bytes=len(text.encode()) + 1) == text


@given(value=json_st)
def test_dumps_is_standard_json(value: Any) -> None:
    # Any JSON reader gets the same value back, not just ours.
    assert same(json.loads(dumps(value)), value)
