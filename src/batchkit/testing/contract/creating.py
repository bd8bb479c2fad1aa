"""Contract tests for creating batches, reading them back and listing them page by page."""

from __future__ import annotations

import gc
from datetime import timedelta
from typing import TYPE_CHECKING, Any

import anyio
import pytest

from ...codec import dumps
from ...exceptions import BatchNotFound, ItemNotFound
from ...ids import new_batch_id
from ...protocols import ItemRecord, Outcome
from ...status import empty_counts
from ._helpers import _F, _Q, _R, _S, _claim, _create, _error, _item, _items, counts_of, new_batch

if TYPE_CHECKING:
    from collections.abc import Callable

    from ...protocols import Storage

__all__ = ["CreatingContract"]

# Payloads that stores are known to mangle: escapes, NUL (as the JSON escape \u0000),
# characters that are syntax elsewhere, large and deeply nested values.
_PAYLOADS: list[Any] = [
    None,
    "plain",
    "ünïcödé ✓ 漢字 🎬",
    "quotes \" and ' and \\ backslash",
    "{}:* and ${not_a_template} %s %(x)s ?",
    "line one\nline two\r\n\ttabbed",
    "a\x00b",
    "x" * 10_000,
    "é" * 10_000,
    {"nested": {"list": [1, 2.5, True, None, {"deep": ["a", {"b": "c\x00"}]}]}},
    [0, -1, 9_007_199_254_740_993, 0.1, 1e300, -2.5e-8, False],
    {"": "empty key", "key with spaces": {}, "{}:*": []},
]
_KEYS = ["plain", "with {braces}", "a:b:c", "star*", "two words", "line\nbreak", "ünï ✓ 🎬"]


class CreatingContract:
    """Creating, reading and listing: records, items, pages, filters and round trips."""

    async def test_create_returns_record_and_true(self, storage: Storage) -> None:
        new = new_batch(3, metadata={"owner": "ann", "n": 1}, idempotency_key="k-1")
        record, created = await storage.create_batch(new)
        assert created
        assert (record.id, record.total, record.metadata) == (new.id, 3, {"owner": "ann", "n": 1})
        assert counts_of(record) == {**empty_counts(), _Q: 3}
        assert record.idempotency_key == "k-1"
        assert record.parent_id is None
        assert record.started_at is record.finished_at is record.cancel_requested_at is None
        assert record.running_progress == 0.0
        assert await storage.get_batch(new.id) == record

    async def test_create_keeps_max_failures(self, storage: Storage) -> None:
        limited = await _create(storage, 2, max_failures=3)
        assert limited.max_failures == 3
        assert (await storage.get_batch(limited.id)).max_failures == 3
        none = await _create(storage, 1, max_failures=0)
        assert (await storage.get_batch(none.id)).max_failures == 0
        assert (await _create(storage, 1)).max_failures is None
        listed = {r.id: r.max_failures for r in await storage.list_batches()}
        assert listed[limited.id] == 3

    async def test_create_keeps_parent_id(self, storage: Storage) -> None:
        parent = await _create(storage)
        child = await _create(storage, 1, parent_id=parent.id)
        assert child.parent_id == parent.id
        assert (await storage.get_batch(child.id)).parent_id == parent.id

    async def test_idempotency_key_returns_existing_batch(self, storage: Storage) -> None:
        first, _ = await storage.create_batch(new_batch(2, idempotency_key="same"))
        again = new_batch(5, idempotency_key="same")
        record, created = await storage.create_batch(again)
        assert not created
        assert (record.id, record.total) == (first.id, 2)
        assert [b.id for b in await storage.list_batches()] == [first.id]
        with pytest.raises(BatchNotFound):
            await storage.get_batch(again.id)

    async def test_new_items_are_queued_and_blank(self, storage: Storage) -> None:
        record = await _create(storage, ["a", "b"])
        item = await _item(storage, record.id, "b")
        assert (item.batch_id, item.key, item.position, item.state) == (record.id, "b", 1, _Q)
        assert (item.payload, item.progress, item.message, item.attempt) == ({"n": 1}, 0.0, None, 0)
        assert item.error is item.result is item.started_at is item.finished_at is None

    @pytest.mark.parametrize(
        "call",
        [
            pytest.param(lambda s, b: s.get_batch(b), id="get_batch"),
            pytest.param(lambda s, b: s.list_items(b), id="list_items"),
            pytest.param(lambda s, b: s.get_item(b, "item-0"), id="get_item"),
            pytest.param(lambda s, b: s.cancel_batch(b), id="cancel_batch"),
        ],
    )
    async def test_unknown_batch_raises_batch_not_found(
        self, storage: Storage, call: Callable[[Storage, str], Any]
    ) -> None:
        await _create(storage)
        with pytest.raises(BatchNotFound):
            await call(storage, new_batch_id())

    async def test_get_item_unknown_key_raises_item_not_found(self, storage: Storage) -> None:
        record = await _create(storage)
        with pytest.raises(ItemNotFound):
            await storage.get_item(record.id, "no-such-key")

    @pytest.mark.parametrize("payload", _PAYLOADS, ids=lambda p: repr(p)[:24])
    async def test_payload_round_trips(self, storage: Storage, payload: Any) -> None:
        record = await _create(storage, ["k"], payloads=[payload])
        assert (await _item(storage, record.id, "k")).payload == payload
        assert [i.payload for i in await _items(storage, record.id)] == [payload]
        assert (await _claim(storage, record.id)).payload == payload

    async def test_keys_round_trip(self, storage: Storage) -> None:
        record = await _create(storage, _KEYS)
        assert [i.key for i in await storage.list_items(record.id)] == _KEYS
        for key in _KEYS:
            assert (await storage.get_item(record.id, key)).key == key
        assert (await _claim(storage, record.id)).lease.key == _KEYS[0]

    async def test_result_round_trips(self, storage: Storage) -> None:
        record = await _create(storage, 1)
        result: dict[str, Any] = {
            "url": "s3://b/k?x=1&y={}",
            "text": "a\x00b ✓\n",
            "n": [1.5, None, True],
        }
        claim = await _claim(storage, record.id)
        await storage.finish(claim.lease, Outcome.succeeded(dumps(result)))
        assert (await _item(storage, record.id, "item-0")).result == result

    # -- records: the stored text, handed back as written ---------------------------------

    async def test_a_new_item_record_has_no_result_error_or_history(self, storage: Storage) -> None:
        record = await _create(storage, ["a", "b"])
        got = await storage.get_item(record.id, "b")
        assert isinstance(got, ItemRecord)
        assert (got.batch_id, got.key, got.position, got.state) == (record.id, "b", 1, _Q)
        assert (got.payload, got.progress, got.message, got.attempt) == (
            dumps({"n": 1}),
            0.0,
            None,
            0,
        )
        assert got.error is got.result is got.history is None
        assert got.started_at is got.lease_expires_at is got.finished_at is None

    @pytest.mark.parametrize("payload", _PAYLOADS, ids=lambda p: repr(p)[:24])
    async def test_item_record_keeps_the_payload_text_as_written(
        self, storage: Storage, payload: Any
    ) -> None:
        new = new_batch(["k"], payloads=[payload])
        await storage.create_batch(new)
        written = new.items[0].payload
        got = await storage.get_item(new.id, "k")
        assert isinstance(got, ItemRecord)
        assert isinstance(got.payload, str)
        assert got.payload.encode("utf-8") == written.encode("utf-8")
        listed = await storage.list_items(new.id)
        assert listed == [got]
        assert isinstance(listed[0], ItemRecord)

    async def test_item_record_keeps_the_result_text_as_written(self, storage: Storage) -> None:
        record = await _create(storage, 1)
        written = dumps(
            {
                "text": 'ünïcödé ✓ 漢字 🎬 a\x00b "q" \\',
                "nested": {"list": [1, 2.5, True, None, {"deep": ["a", {"b": "c\x00"}]}]},
                "big": [9_007_199_254_740_993, 1e300, -2.5e-8],
                "": {},
            }
        )
        claim = await _claim(storage, record.id)
        assert (await storage.finish(claim.lease, Outcome.succeeded(written))).accepted
        got = await storage.get_item(record.id, "item-0")
        assert isinstance(got, ItemRecord)
        assert (got.state, got.error) == (_S, None)
        assert isinstance(got.result, str)
        assert got.result.encode("utf-8") == written.encode("utf-8")
        assert [r.result for r in await storage.list_items(record.id)] == [written]

    async def test_list_items_returns_the_records_get_item_reads(self, storage: Storage) -> None:
        record = await _create(storage, 4)
        done = await _claim(storage, record.id)
        await storage.finish(done.lease, Outcome.succeeded('{"ok":"✓"}'))
        failed = await _claim(storage, record.id)
        await storage.finish(failed.lease, Outcome.failed(_error()))
        await _claim(storage, record.id)  # item-2 running, item-3 queued
        listed = await storage.list_items(record.id)
        assert all(isinstance(r, ItemRecord) for r in listed)
        assert [r.state for r in listed] == [_S, _F, _R, _Q]
        assert listed == [await storage.get_item(record.id, r.key) for r in listed]
        assert await storage.list_items(record.id, states=[_F]) == [listed[1]]

    async def test_a_listing_reads_times_and_progress_as_written(self, storage: Storage) -> None:
        # Each batch's items carry their own creation time, whichever batch was read
        # before; a fraction of progress comes back exactly; times are aware UTC.
        first = await _create(storage, 3)
        await anyio.sleep(0.01)
        second = await _create(storage, 2)
        running = await _claim(storage, first.id)
        await storage.record_progress(running.lease, 1 / 3, "a third")
        done = await _claim(storage, first.id)
        await storage.finish(done.lease, Outcome.succeeded("1"))
        for _ in range(2):
            earlier = await storage.list_items(first.id)
            later = await storage.list_items(second.id)
            assert max(i.created_at for i in earlier) < min(i.created_at for i in later)
            for item in earlier + later:
                for at in (item.created_at, item.updated_at, item.started_at, item.finished_at):
                    assert at is None or at.utcoffset() == timedelta(0), (item.key, at)
                assert item.updated_at >= item.created_at
        listed = await storage.list_items(first.id)
        assert [(i.state, i.progress, i.message) for i in listed] == [
            (_R, 1 / 3, "a third"),
            (_S, 1.0, None),
            (_Q, 0.0, None),
        ]
        assert listed[0].started_at is not None
        assert listed[0].finished_at is None
        assert listed[0].lease_expires_at is not None
        assert listed[0].lease_expires_at > listed[0].started_at
        assert listed[1].finished_at is not None
        assert listed[1].started_at is not None
        assert listed[1].started_at <= listed[1].finished_at
        assert (listed[2].started_at, listed[2].finished_at) == (None, None)

    # -- listing ---------------------------------------------------------------------------

    async def test_list_items_in_submission_order(self, storage: Storage) -> None:
        keys = ["zeta", "alpha", "mid", "10", "9"]
        record = await _create(storage, keys)
        items = await storage.list_items(record.id)
        assert [(i.key, i.position) for i in items] == [(k, n) for n, k in enumerate(keys)]

    async def test_list_items_filters_by_state(self, storage: Storage) -> None:
        record = await _create(storage, 4)
        first = await _claim(storage, record.id)
        await storage.finish(first.lease, Outcome.failed(_error()))
        await _claim(storage, record.id)
        assert [i.key for i in await storage.list_items(record.id, states=[_Q])] == [
            "item-2",
            "item-3",
        ]
        both = await storage.list_items(record.id, states={_F, _R})
        assert [(i.key, i.state) for i in both] == [("item-0", _F), ("item-1", _R)]
        assert await storage.list_items(record.id, states=[_S]) == []

    async def test_list_items_pages_with_after_and_limit(self, storage: Storage) -> None:
        record = await _create(storage, 7)
        first = await storage.list_items(record.id, limit=3)
        assert [i.position for i in first] == [0, 1, 2]
        second = await storage.list_items(record.id, after=first[-1].position, limit=3)
        assert [i.position for i in second] == [3, 4, 5]
        last = await storage.list_items(record.id, after=second[-1].position, limit=3)
        assert [i.position for i in last] == [6]
        assert await storage.list_items(record.id, after=6) == []

    async def test_a_listing_leaves_the_collector_as_the_host_had_it(
        self, storage: Storage
    ) -> None:
        # A page may be built with Python's garbage collector paused; the host's own
        # setting comes back after it, after a refusal too.
        record = await _create(storage, 5)
        was = gc.isenabled()
        try:
            for host_has_it_on in (True, False):
                (gc.enable if host_has_it_on else gc.disable)()
                assert len(await storage.list_items(record.id)) == 5
                assert gc.isenabled() is host_has_it_on
                with pytest.raises(BatchNotFound):
                    await storage.list_items(new_batch_id())
                assert gc.isenabled() is host_has_it_on
        finally:
            (gc.enable if was else gc.disable)()

    async def test_list_items_pages_within_a_state_filter(self, storage: Storage) -> None:
        record = await _create(storage, 6)
        for _ in range(3):  # items 0, 1, 2 running; 3, 4, 5 queued
            await _claim(storage, record.id)
        page = await storage.list_items(record.id, states=[_Q], after=3, limit=1)
        assert [i.key for i in page] == ["item-4"]

    async def test_list_batches_newest_first(self, storage: Storage) -> None:
        ids = [(await _create(storage, 1)).id for _ in range(3)]
        assert [b.id for b in await storage.list_batches()] == ids[::-1]

    async def test_list_batches_pages_with_before_and_limit(self, storage: Storage) -> None:
        ids = [(await _create(storage, 1)).id for _ in range(5)][::-1]
        first = await storage.list_batches(limit=2)
        assert [b.id for b in first] == ids[:2]
        second = await storage.list_batches(before=first[-1].id, limit=2)
        assert [b.id for b in second] == ids[2:4]
        assert [b.id for b in await storage.list_batches(before=second[-1].id)] == ids[4:]

    async def test_list_batches_filters_by_metadata(self, storage: Storage) -> None:
        ann = await _create(storage, 1, metadata={"owner": "ann", "team": 7})
        await _create(storage, 1, metadata={"owner": "bob", "team": 7})
        await _create(storage, 1)
        assert [b.id for b in await storage.list_batches(metadata={"owner": "ann"})] == [ann.id]
        both = await storage.list_batches(metadata={"owner": "ann", "team": 7})
        assert [b.id for b in both] == [ann.id]
        assert len(await storage.list_batches(metadata={"team": 7})) == 2
        assert await storage.list_batches(metadata={"owner": "eve"}) == []

    async def test_metadata_filter_compares_as_json(self, storage: Storage) -> None:
        one = await _create(storage, 1, metadata={"v": 1})
        flag = await _create(storage, 1, metadata={"v": True})
        real = await _create(storage, 1, metadata={"v": 1.5})
        null = await _create(storage, 1, metadata={"v": None})
        await _create(storage, 1, metadata={})

        async def ids(value: Any) -> list[str]:
            return [b.id for b in await storage.list_batches(metadata={"v": value})]

        assert await ids(1) == [one.id]
        assert await ids(True) == [flag.id]
        assert await ids(1.5) == [real.id]
        assert await ids(None) == [null.id]  # a missing key does not match None
        assert await ids("1") == []

    async def test_list_batches_filters_by_parent(self, storage: Storage) -> None:
        parent = await _create(storage, 1)
        first = await _create(storage, 1, parent_id=parent.id)
        await _create(storage, 1)
        second = await _create(storage, 1, parent_id=parent.id)
        children = await storage.list_batches(parent_id=parent.id)
        assert [b.id for b in children] == [second.id, first.id]
