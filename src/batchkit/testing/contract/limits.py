"""Contract tests for `Limits`: at each limit a round trip, past it a refusal, in every store.

Every test goes through a `BatchRunner` on the storage under test, as a host would: a
value at a limit (or at its hard cap, `batchkit.models.LIMIT_CAPS`) comes back exactly,
and one past it is refused with `InvalidBatch` before anything is written, or fails the
item with ``InvalidResult`` when a generator returns it. What one store accepts, all do.
"""

from __future__ import annotations

import itertools
import json
import math
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import anyio
import anyio.from_thread
import hypothesis
import hypothesis.strategies as st
import pytest
from hypothesis import HealthCheck, given

from ...codec import MAX_INT_DIGITS, MAX_JSON_DEPTH, dumps, is_unicode
from ...exceptions import InvalidBatch
from ...models import LIMIT_CAPS, ItemState, Limits
from ...protocols import ClaimRequest
from ...runner import BatchRunner
from ._helpers import LONG

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from ...context import ItemContext
    from ...models import Batch, Item
    from ...protocols import Generator, Storage

__all__ = ["LimitsContract"]

_CAP = {name: cap for name, (cap, _why) in LIMIT_CAPS.items()}


def nest(depth: int, leaf: Any = 1) -> Any:
    """``leaf`` inside ``depth`` levels of alternating objects and lists, built without
    recursion (so 100,000 levels cost nothing to make)."""
    value = leaf
    for level in range(depth):
        value = [value] if level % 2 else {"k": value}
    return value


async def _returns_payload(ctx: ItemContext) -> Any:
    return ctx.payload


def _runner(storage: Storage, generator: Generator | None = None, **limits: int) -> BatchRunner:
    return BatchRunner(storage, generator or _returns_payload, limits=Limits(**limits))


async def _ids(storage: Storage) -> list[str]:
    return [b.id for b in await storage.list_batches(limit=1000)]


async def _refused(runner: BatchRunner, items: Any, **options: Any) -> InvalidBatch:
    """Submit, expect `InvalidBatch`, and check that nothing was written."""
    before = await _ids(runner.storage)
    with pytest.raises(InvalidBatch) as info:
        await runner.submit(items, **options)
    assert await _ids(runner.storage) == before, "a refused batch left something behind"
    return info.value


async def _only_item(runner: BatchRunner, batch: Batch) -> Item:
    (item,) = await runner.items(batch.id)
    return item


def _text_of_bytes(size: int, unit: str = "é") -> str:
    """A string whose JSON text (quotes included) is exactly ``size`` UTF-8 bytes."""
    body = size - 2
    width = len(unit.encode("utf-8"))
    text = unit * (body // width) + "x" * (body % width)
    assert len(dumps(text).encode("utf-8")) == size
    return text


def _escaped_of_bytes(size: int) -> str:
    """A string of backslashes and quotes whose JSON text is exactly ``size`` bytes: JSON
    escapes double it, and a SQL driver's escapes double it again on the wire."""
    assert size % 2 == 0
    text = '\\"' * ((size - 2) // 4) + "\\" * (((size - 2) // 2) % 2)
    assert len(dumps(text).encode("utf-8")) == size
    return text


class LimitsContract:
    """Limits: metadata keys and sizes, JSON depth, payload and result sizes, messages,
    errors, keys and idempotency keys; and a fuzz of submissions."""

    # -- metadata --------------------------------------------------------------------------

    async def test_any_metadata_key_and_value_are_found_by_filters(self, storage: Storage) -> None:
        runner = _runner(storage)
        names = [
            "k" * 191,
            "k" * 192,
            "é" * 191,
            "🎬" * 192,
            "k" * 5_000,
            "a\x00b",
            "#sha256:" + "0" * 64,
            " spaced ",
        ]
        values: list[Any] = ["v", "v" * 192, "🎬" * 500, 2**70, -(10**300), 1.5e300, True, None]
        batches = {}
        for n, name in enumerate(names):
            value = values[n % len(values)]
            batches[name] = await runner.submit(["a"], metadata={name: value, "n": n})
        for n, name in enumerate(names):
            value = values[n % len(values)]
            found = await runner.batches(metadata={name: value})
            assert [s.batch_id for s in found] == [batches[name].id], name[:20]
            assert found[0].metadata == {name: value, "n": n}
            # A name that shares the stored prefix, or a value that does, matches nothing.
            assert await runner.batches(metadata={name + "x": value}) == []
            assert await runner.batches(metadata={name: "other"}) == []
            claim = await storage.claim(
                ClaimRequest(lease_seconds=LONG, metadata={name: value, "n": n})
            )
            assert claim is not None
            assert claim.lease.batch_id == batches[name].id
        assert (
            await storage.claim(ClaimRequest(lease_seconds=LONG, metadata={"k" * 192: 0})) is None
        )
        # Filters no stored value can equal match nothing, in every store.
        assert await runner.batches(metadata={"k" * 191: math.nan}) == []
        assert await runner.batches(metadata={"\ud800" * 3: "v"}) == []
        assert await runner.batches(metadata={"k" * 191: "\ud800"}) == []

    @pytest.mark.parametrize("limit", [None, _CAP["max_metadata_bytes"]])
    async def test_metadata_at_its_size_limit(self, storage: Storage, limit: int | None) -> None:
        runner = _runner(storage) if limit is None else _runner(storage, max_metadata_bytes=limit)
        size = runner.limits.max_metadata_bytes
        overhead = len('{"blob":}')
        blob = _text_of_bytes(size - overhead)
        batch = await runner.submit(["a"], metadata={"blob": blob})
        assert (await runner.status(batch.id)).metadata == {"blob": blob}
        assert [s.batch_id for s in await runner.batches(metadata={"blob": blob})] == [batch.id]
        error = await _refused(runner, ["a"], metadata={"blob": blob + "x"})
        assert f"{size + 1} bytes, over the limit of {size} bytes" in str(error)

    # -- JSON depth ------------------------------------------------------------------------

    async def test_json_nested_to_the_cap_round_trips(self, storage: Storage) -> None:
        deep = nest(MAX_JSON_DEPTH)
        runner = _runner(storage, max_json_depth=MAX_JSON_DEPTH)
        # The metadata object is a level of its own.
        meta = {"deep": nest(MAX_JSON_DEPTH - 1)}
        batch = await runner.submit([{"key": "k", "payload": deep}], metadata=meta)
        assert (await runner.item(batch.id, "k")).payload == deep
        assert (await runner.status(batch.id)).metadata == meta
        assert (await runner.batches())[0].metadata == meta
        final = await runner.run(batch.id)  # the generator returns its payload
        assert final.counts[ItemState.SUCCEEDED] == 1
        item = await runner.item(batch.id, "k")
        assert (item.payload, item.result) == (deep, deep)

    @pytest.mark.parametrize("depth", [None, MAX_JSON_DEPTH])
    async def test_json_nested_past_the_limit_is_refused(
        self, storage: Storage, depth: int | None
    ) -> None:
        runner = _runner(storage) if depth is None else _runner(storage, max_json_depth=depth)
        limit = runner.limits.max_json_depth
        for too_deep in (nest(limit + 1), nest(100_000)):
            error = await _refused(runner, [{"key": "k", "payload": too_deep}])
            assert "nested too deeply" in str(error)
            error = await _refused(runner, ["k"], metadata={"deep": too_deep})
            assert "nested too deeply" in str(error)

        async def deep_result(ctx: ItemContext) -> Any:
            return nest(limit + 1) if ctx.key == "over" else nest(100_000)

        runner = BatchRunner(storage, deep_result, limits=runner.limits)
        batch = await runner.submit(["over", "far over"])
        final = await runner.run(batch.id)
        assert final.counts[ItemState.FAILED] == 2
        for item in await runner.items(batch.id):
            assert item.error is not None
            assert item.error.type == "InvalidResult"
            assert "nested too deeply" in item.error.message
            assert item.result is None

    # -- integers --------------------------------------------------------------------------

    async def test_integers_round_trip_up_to_the_digits_python_spells(
        self, storage: Storage
    ) -> None:
        # Past 64 bits every store keeps the exact digits (all keep JSON as text); past
        # MAX_INT_DIGITS Python's json can neither write nor read them back.
        longest = 10**MAX_INT_DIGITS - 1
        values = [2**63, 2**64 + 1, -(2**100), longest, -longest]

        async def generate(ctx: ItemContext) -> Any:
            return ctx.payload if ctx.key != "too long" else [longest + 1]

        runner = _runner(storage, generate)
        batch = await runner.submit(
            [{"key": "ints", "payload": values}, "too long"], metadata={"n": longest, "m": 2**64}
        )
        assert (await runner.item(batch.id, "ints")).payload == values
        assert (await runner.status(batch.id)).metadata == {"n": longest, "m": 2**64}
        found = await runner.batches(metadata={"m": 2**64})
        assert [s.batch_id for s in found] == [batch.id]
        await runner.run(batch.id)
        ints, too_long = await runner.items(batch.id)
        assert (ints.state, ints.result) == (ItemState.SUCCEEDED, values)
        assert too_long.state is ItemState.FAILED
        assert too_long.error is not None
        assert too_long.error.type == "InvalidResult"
        assert f"more than {MAX_INT_DIGITS} digits" in too_long.error.message
        for value in (longest + 1, -longest - 1):
            error = await _refused(runner, [{"key": "a", "payload": {"n": [value]}}])
            assert f"integer of more than {MAX_INT_DIGITS} digits at $.n[0]" in str(error)
            await _refused(runner, ["a"], metadata={"n": value})

    # -- payload and result sizes -----------------------------------------------------------

    async def test_payloads_and_results_at_the_size_cap(self, storage: Storage) -> None:
        cap = _CAP["max_payload_bytes"]
        runner = _runner(storage, max_payload_bytes=cap, max_result_bytes=cap)
        # Backslashes and quotes: the text that grows most on its way to a SQL server.
        payloads = {"wide": _text_of_bytes(cap, "🎬"), "escaped": _escaped_of_bytes(cap)}
        items = [{"key": key, "payload": value} for key, value in payloads.items()]
        await _refused(runner, [*items, {"key": "over", "payload": _text_of_bytes(cap + 1)}])
        batch = await runner.submit(items)
        for key, value in payloads.items():
            assert (await runner.item(batch.id, key)).payload == value
        final = await runner.run(batch.id)  # each result is its payload: at the cap too
        assert final.counts[ItemState.SUCCEEDED] == 2
        for item in await runner.items(batch.id):
            assert item.result == payloads[item.key]

    async def test_a_result_one_byte_over_its_limit_fails_the_item(self, storage: Storage) -> None:
        limit = 1_000

        async def generate(ctx: ItemContext) -> Any:
            return _text_of_bytes(limit + (ctx.key == "over"))

        runner = _runner(storage, generate, max_result_bytes=limit)
        batch = await runner.submit(["at", "over"])
        await runner.run(batch.id)
        at, over = await runner.items(batch.id)
        assert (at.state, at.result) == (ItemState.SUCCEEDED, _text_of_bytes(limit))
        assert (over.state, over.result) == (ItemState.FAILED, None)
        assert over.error is not None
        assert over.error.type == "InvalidResult"
        assert f"{limit + 1} bytes, over the limit of {limit} bytes" in over.error.message

    # -- messages, errors and reasons ------------------------------------------------------

    @pytest.mark.parametrize("limit", [None, _CAP["max_message_length"]])
    async def test_progress_messages_are_cut(self, storage: Storage, limit: int | None) -> None:
        seen: list[str | None] = []

        async def generate(ctx: ItemContext) -> None:
            await ctx.progress(0.5, "🎬" * 20_000)
            # The runner writes the first report at once, from a task of its own.
            for _ in range(1_000):
                message = (await storage.get_item(ctx.batch_id, ctx.key)).message
                if message is not None:
                    break
                await anyio.sleep(0.01)
            seen.append(message)

        runner = _runner(storage, generate)
        if limit is not None:
            runner = _runner(storage, generate, max_message_length=limit)
        batch = await runner.submit(["a"])
        await runner.run(batch.id)
        length = runner.limits.max_message_length
        assert seen == ["🎬" * (length - 1) + "…"]

    @pytest.mark.parametrize(
        ("error_length", "traceback_length"), [(None, None), (9_990, 10), (10, 9_990)]
    )
    async def test_error_messages_and_tracebacks_are_cut(
        self, storage: Storage, error_length: int | None, traceback_length: int | None
    ) -> None:
        # Control characters: what takes most room once the error is JSON (``\u0001``).
        message = "\x01" * 30_000

        async def generate(ctx: ItemContext) -> None:
            raise RuntimeError(message)

        runner = _runner(storage, generate)
        if error_length is not None and traceback_length is not None:
            runner = _runner(
                storage,
                generate,
                max_error_length=error_length,
                max_traceback_length=traceback_length,
            )
        limits = runner.limits
        batch = await runner.submit(["a"])
        await runner.run(batch.id)
        item = await _only_item(runner, batch)
        assert item.state is ItemState.FAILED
        assert item.error is not None
        assert item.error.type == "RuntimeError"
        assert item.error.message == message[: limits.max_error_length - 1] + "…"
        assert item.error.traceback is not None
        assert len(item.error.traceback) == limits.max_traceback_length
        assert [(e.type, e.message) for e in item.errors] == [("RuntimeError", item.error.message)]

    async def test_cancel_reasons_are_cut(self, storage: Storage) -> None:
        cap = _CAP["max_reason_length"]
        runner = _runner(storage, max_reason_length=cap)
        batch = await runner.submit(["a"])
        status = await runner.cancel(batch.id, reason="🎬" * (cap + 10))
        assert status.cancel_reason == "🎬" * (cap - 1) + "…"
        assert (await runner.status(batch.id)).cancel_reason == status.cancel_reason

    # -- keys ------------------------------------------------------------------------------

    async def test_keys_at_their_length_limit(self, storage: Storage) -> None:
        length = Limits().max_key_length
        assert length == _CAP["max_key_length"]

        async def generate(ctx: ItemContext) -> str:
            return ctx.key

        runner = _runner(storage, generate)
        keys = ["🎬" * length, "é" * length, "k" * length, "🎬" * (length - 1) + "é"]
        await _refused(runner, [*keys, "🎬" * (length + 1)])
        batch = await runner.submit(keys)
        assert [i.key for i in await runner.items(batch.id)] == keys
        for n, key in enumerate(keys):
            assert (await runner.item(batch.id, key)).position == n
        await runner.run(batch.id)
        assert [(i.key, i.result) for i in await runner.items(batch.id)] == [(k, k) for k in keys]

    async def test_keys_differing_only_in_case_or_spaces_are_distinct(
        self, storage: Storage
    ) -> None:
        keys = ["key", "Key", "KEY", "key ", "key  ", " key", "key\t", "straße", "strasse"]
        keys += ["é", "e\u0301", "ǆ", "ǅ", "i̇", "İ"]  # look-alikes

        async def generate(ctx: ItemContext) -> str:
            return ctx.key

        runner = _runner(storage, generate)
        batch = await runner.submit([{"key": k, "payload": n} for n, k in enumerate(keys)])
        assert [(i.key, i.payload) for i in await runner.items(batch.id)] == [
            (k, n) for n, k in enumerate(keys)
        ]
        for n, key in enumerate(keys):
            item = await runner.item(batch.id, key)
            assert (item.key, item.payload) == (key, n)
        final = await runner.run(batch.id)
        assert final.counts[ItemState.SUCCEEDED] == len(keys)
        assert [(i.key, i.result) for i in await runner.items(batch.id)] == [(k, k) for k in keys]

    async def test_idempotency_keys_at_their_length_limit(self, storage: Storage) -> None:
        runner = _runner(storage)
        length = runner.limits.max_idempotency_key_length
        assert length == _CAP["max_idempotency_key_length"]
        keys = ["🎬" * length, "🎬" * (length - 1) + "é", "A" * length, "a" * length]
        keys += ["a" * (length - 1) + " ", "a" * (length - 1)]
        first = [await runner.submit(["x"], idempotency_key=key) for key in keys]
        assert len({b.id for b in first}) == len(keys)
        again = [await runner.submit(["y", "z"], idempotency_key=key) for key in keys]
        assert [b.id for b in again] == [b.id for b in first]
        assert [b.idempotency_key for b in again] == keys
        await _refused(runner, ["x"], idempotency_key="🎬" * (length + 1))

    # -- fuzz ------------------------------------------------------------------------------

    @pytest.fixture
    def submit_fuzz_settings(self) -> hypothesis.settings | None:
        """Hypothesis settings for `test_submit_fuzz`; `None` for the suite's default.

        The default runs 100 examples without a deadline: a few seconds on a database.
        """
        return None

    def test_submit_fuzz(
        self,
        storage_factory: Callable[[], Storage],
        anyio_backend: Any,
        submit_fuzz_settings: hypothesis.settings | None,
    ) -> None:
        """Any keys, payloads, metadata and idempotency keys: an exact round trip, or
        `InvalidBatch` and nothing written, as an independent reading of the rules
        predicts."""
        if isinstance(anyio_backend, tuple):
            backend, options = anyio_backend
        else:
            backend, options = anyio_backend, None
        settings = submit_fuzz_settings or hypothesis.settings(
            max_examples=100,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
        )
        with anyio.from_thread.start_blocking_portal(backend, options) as portal:
            storage = portal.call(_enter, storage_factory)
            try:

                def check(case: _Case) -> None:
                    portal.call(_check_case, storage, case)

                # hypothesis annotates its decorators only in its later releases; through
                # typed names, the module checks against every release pyproject.toml allows.
                fuzz: Callable[[Callable[..., None]], Callable[[], None]] = given(case=_CASES)
                run: Callable[[], None] = settings(fuzz(check))
                run()
            finally:
                portal.call(storage.__aexit__, None, None, None)


async def _enter(factory: Callable[[], Storage]) -> Storage:
    return await factory().__aenter__()


# -- the fuzz: what it submits, and what it expects ----------------------------------------

_Case = tuple[Limits, list[Any], list[Any], Any, Any]

_SMALL = Limits(max_key_length=8, max_payload_bytes=60, max_metadata_bytes=60, max_json_depth=3)
# Mostly what JSON carries, now and then what it cannot: a case is as likely to come
# back as to be refused.
_CHARS = st.characters() | st.sampled_from(  # any code point but lone surrogates
    [" ", "\t", "\n", "a", "A", "é", "\u0301", "ß", "🎬", "\\", '"', "\u2028", "\ufeff"]
)
_WILD_CHARS = _CHARS | st.characters(categories=["Cs"]) | st.just("\x00")
_TEXT = st.text(_CHARS | st.just("\x00"), max_size=10)  # NUL is JSON: ``\u0000``
_WILD_TEXT = st.text(_WILD_CHARS, max_size=10)
_KEYS = (
    st.text(_CHARS, min_size=1, max_size=10)
    | st.sampled_from(["a", "A", "a ", " a", "a\t", "A ", "e\u0301", "é"])
    | st.builds(lambda unit, n: unit * n, st.sampled_from(["k", "é", "🎬"]), st.integers(6, 10))
    | st.builds(lambda unit, n: unit * n, st.sampled_from(["k", "🎬"]), st.integers(510, 514))
)
# Metadata keys may be empty or hold NUL; past 191 characters a SQL store hashes them.
_META_KEYS = (
    _KEYS
    | _TEXT
    | st.builds(lambda unit, n: unit * n, st.sampled_from(["k", "🎬"]), st.integers(189, 194))
)
_WILD_KEYS = _META_KEYS | _WILD_TEXT
_INTS = (
    st.integers()
    | st.integers(2**63 - 2, 2**64 + 2)
    | st.integers(-(2**64) - 2, -(2**63) + 2)
    # The longest integers Python spells, and one digit more: built by the strategy, since
    # such an integer has no repr to show in a strategy's own.
    | st.builds(
        lambda digits, sign: sign * (10**digits - 1),
        st.sampled_from([MAX_INT_DIGITS, MAX_INT_DIGITS + 1]),
        st.sampled_from([1, -1]),
    )
)
_FLOATS = st.floats(allow_nan=False, allow_infinity=False) | st.sampled_from(
    [-0.0, 0.0, 1e308, -1e308, 5e-324, 2.0**53 + 2]
)
_SCALARS = st.none() | st.booleans() | _INTS | _FLOATS | _TEXT
_JSON = st.recursive(
    _SCALARS,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_TEXT, inner, max_size=3),
    max_leaves=8,
)
_WILD_SCALARS = (
    _SCALARS | _WILD_TEXT | st.sampled_from([math.nan, math.inf, -math.inf]) | st.binary(max_size=3)
)
_WILD = st.recursive(
    _WILD_SCALARS,
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.lists(inner, max_size=3).map(tuple)
        | st.dictionaries(_WILD_TEXT, inner, max_size=3)
        | st.dictionaries(st.integers(-2, 2) | st.none() | st.booleans(), inner, max_size=2)
        | st.frozensets(st.integers(), max_size=2)
    ),
    max_leaves=8,
)
_METADATA = st.one_of(
    st.none(),
    st.dictionaries(_META_KEYS, _SCALARS, max_size=3),
    st.dictionaries(_META_KEYS, _JSON, max_size=3),
)


@st.composite
def _cases(draw: st.DrawFn) -> _Case:
    # JSON throughout, then at most one flaw, now and then: as many cases come back as
    # are refused, and a refusal has one cause that shrinks to its simplest.
    limits = draw(st.sampled_from([Limits(), Limits(), _SMALL]))
    keys: list[Any] = draw(st.lists(_KEYS, max_size=5, unique=True))
    payloads = [draw(_JSON) for _ in keys]
    meta: Any = draw(_METADATA)
    flaw = draw(st.sampled_from([None, None, None, "key", "duplicate", "payload", "metadata"]))
    if flaw == "key":
        keys.append(draw(_WILD_TEXT | st.integers() | st.binary(max_size=2)))
        payloads.append(None)
    elif flaw == "duplicate" and keys:
        keys.append(draw(st.sampled_from(keys)))
        payloads.append(draw(_JSON))
    elif flaw == "payload" and keys:
        payloads[draw(st.integers(0, len(keys) - 1))] = draw(_WILD)
    elif flaw == "metadata":
        meta = draw(st.dictionaries(_WILD_KEYS, _WILD, max_size=3) | st.lists(_SCALARS))
    # An idempotency key: any text, batchkit's reserved namespace now and then; made
    # unique per case by a suffix (keys are shared by the whole store).
    idempotency: Any = draw(
        st.none()
        | _WILD_TEXT
        | st.sampled_from(["batchkit:", "batchkit:retry-failed:", "Batchkit:", " batchkit:"])
        | st.integers()
    )
    return limits, keys, payloads, meta, idempotency


_CASES = _cases()
_UNIQUE = itertools.count()


def _json_size(value: Any) -> int:
    text = json.dumps(value, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
    return len(text.encode("utf-8"))


def _plain_json(value: Any, depth: int) -> bool:
    """Whether ``value`` is JSON that comes back exactly, nested ``depth`` deep at most."""
    kind = type(value)
    if value is None or kind is bool:
        return True
    if kind is int:
        return bool(-(10**MAX_INT_DIGITS) < value < 10**MAX_INT_DIGITS)
    if kind is float:
        return math.isfinite(value)
    if kind is str:
        return is_unicode(value)
    if kind is list:
        return depth > 0 and all(_plain_json(v, depth - 1) for v in value)
    if kind is dict:
        return depth > 0 and all(
            type(k) is str and is_unicode(k) and _plain_json(v, depth - 1) for k, v in value.items()
        )
    return False


def _acceptable(limits: Limits, keys: Sequence[Any], payloads: Sequence[Any], meta: Any) -> bool:
    if not keys or len(set(keys)) != len(keys):
        return False
    for key in keys:
        if type(key) is not str or not 1 <= len(key) <= limits.max_key_length:
            return False
        if "\x00" in key or not is_unicode(key):
            return False
    for payload in payloads:
        if payload is None:
            continue
        if not _plain_json(payload, limits.max_json_depth):
            return False
        if _json_size(payload) > limits.max_payload_bytes:
            return False
    if meta is None:
        return True
    if not isinstance(meta, Mapping):
        return False
    return (
        _plain_json(meta, limits.max_json_depth) and _json_size(meta) <= limits.max_metadata_bytes
    )


def _acceptable_key(idempotency: Any) -> bool:
    if idempotency is None:
        return True
    return (
        type(idempotency) is str
        and "\x00" not in idempotency
        and is_unicode(idempotency)
        and not idempotency.startswith("batchkit:")
    )


async def _check_case(storage: Storage, case: _Case) -> None:
    limits, keys, payloads, meta, idempotency = case
    if isinstance(idempotency, str):
        idempotency += f"#{next(_UNIQUE)}"
    runner = BatchRunner(storage, _returns_payload, limits=limits)
    items = [{"key": k, "payload": p} for k, p in zip(keys, payloads, strict=True)]
    options = {"metadata": meta, "idempotency_key": idempotency}
    if not (_acceptable(limits, keys, payloads, meta) and _acceptable_key(idempotency)):
        await _refused(runner, items, **options)
        return
    batch = await runner.submit(items, **options)
    assert batch.idempotency_key == idempotency
    if idempotency is not None:
        assert (await runner.submit(["other"], idempotency_key=idempotency)).id == batch.id
    meta = meta or {}
    status = await runner.status(batch.id)
    assert (status.total, dumps(status.metadata)) == (len(keys), dumps(meta))
    listed = await runner.items(batch.id, limit=1000)
    assert [i.key for i in listed] == keys
    assert [dumps(i.payload) for i in listed] == [dumps(p) for p in payloads]
    for key, payload in zip(keys, payloads, strict=True):
        assert dumps((await runner.item(batch.id, key)).payload) == dumps(payload)
    for name, value in meta.items():
        if value is None or isinstance(value, str | int | float):
            found = await runner.batches(metadata={name: value}, limit=1000)
            assert batch.id in [s.batch_id for s in found]
