"""StorageContract: the test suite every Storage adapter passes, shipped for third parties.

Subclass it in a test module and provide one fixture, ``storage_factory``: a zero-argument
callable that returns a new, empty Storage that has not been entered yet::

    import pytest
    from batchkit.testing import StorageContract

    class TestMyStorage(StorageContract):
        @pytest.fixture
        def storage_factory(self):
            return lambda: MyStorage(...)

The suite never sleeps to let time pass: a lease expires at once when it is taken or
extended with ``lease_seconds=0`` (an item is claimable when its deadline is not after
the store's now), and a retry that waits an hour is not claimable during a test.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, ClassVar

import anyio
import pytest

from ..codec import dumps
from ..exceptions import BatchNotFound, ItemNotFound
from ..ids import new_batch_id
from ..models import BatchState, Item, ItemError, ItemState
from ..protocols import BatchRecord, Claim, ClaimRequest, Lease, NewBatch, NewItem, Outcome
from ..status import empty_counts, recount, status_from_record

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable, Sequence

    from ..protocols import Storage

__all__ = ["LONG", "StorageContract", "all_items", "counts_of", "new_batch"]

#: Seconds of a lease or a retry wait that does not end while a test runs.
LONG = 3600.0

_Q, _R = ItemState.QUEUED, ItemState.RUNNING
_S, _F, _C = ItemState.SUCCEEDED, ItemState.FAILED, ItemState.CANCELLED

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


def new_batch(
    items: int | Sequence[str] = 3,
    *,
    payloads: Sequence[Any] | None = None,
    metadata: dict[str, Any] | None = None,
    parent_id: str | None = None,
    idempotency_key: str | None = None,
) -> NewBatch:
    """Build a `NewBatch` with a fresh id.

    Args:
        items: how many items (keys ``item-0``, ``item-1``...) or the keys themselves.
        payloads: one JSON value per item; by default each item's payload is ``{"n": i}``.
        metadata: the batch's metadata.
        parent_id: the batch this one retries.
        idempotency_key: the submission's idempotency key.
    """
    keys = [f"item-{i}" for i in range(items)] if isinstance(items, int) else list(items)
    values: list[Any] = [{"n": i} for i in range(len(keys))] if payloads is None else list(payloads)
    return NewBatch(
        id=new_batch_id(),
        items=[NewItem(key, dumps(value)) for key, value in zip(keys, values, strict=True)],
        metadata=dict(metadata or {}),
        parent_id=parent_id,
        idempotency_key=idempotency_key,
    )


def counts_of(record: BatchRecord) -> dict[ItemState, int]:
    """A record's counts with every `ItemState` present (zero when the store left it out)."""
    counts = empty_counts()
    counts.update(record.counts)
    return counts


async def all_items(storage: Storage, batch_id: str, *, page: int = 100) -> list[Item]:
    """Every item of a batch in submission order, read page by page."""
    items: list[Item] = []
    after: int | None = None
    while chunk := await storage.list_items(batch_id, after=after, limit=page):
        items.extend(chunk)
        after = chunk[-1].position
    return items


async def _create(storage: Storage, items: int | Sequence[str] = 3, **kw: Any) -> BatchRecord:
    record, created = await storage.create_batch(new_batch(items, **kw))
    assert created
    return record


async def _claim(storage: Storage, batch_id: str, *, lease_seconds: float = LONG) -> Claim:
    claim = await storage.claim(ClaimRequest(lease_seconds=lease_seconds, batch_ids=(batch_id,)))
    assert claim is not None, "expected a claimable item"
    return claim


async def _claim_key(storage: Storage, request: ClaimRequest) -> tuple[str, str] | None:
    claim = await storage.claim(request)
    return None if claim is None else (claim.lease.batch_id, claim.lease.key)


def _request(*batch_ids: str, lease_seconds: float = LONG) -> ClaimRequest:
    return ClaimRequest(lease_seconds=lease_seconds, batch_ids=batch_ids or None)


def _error(attempt: int = 1, message: str = "boom") -> ItemError:
    return ItemError(
        type="ValueError",
        message=message,
        traceback='Traceback (most recent call last):\n  File "g.py"\nValueError: boom',
        attempt=attempt,
    )


async def _state(storage: Storage, batch_id: str, key: str) -> ItemState:
    return (await storage.get_item(batch_id, key)).state


async def _assert_consistent(storage: Storage, batch_id: str) -> BatchRecord:
    record = await storage.get_batch(batch_id)
    counts = counts_of(record)
    assert sum(counts.values()) == record.total
    assert counts == recount(item.state for item in await all_items(storage, batch_id))
    return record


class StorageContract:
    """The behaviours every `batchkit.protocols.Storage` adapter must show.

    Subclasses provide the ``storage_factory`` fixture. Set ``notifies_changes = False``
    on an adapter that only polls, so that the prompt-wake test is skipped.
    """

    pytestmark = pytest.mark.anyio

    #: Whether `Storage.subscribe` wakes a waiting reader promptly on a change.
    notifies_changes: ClassVar[bool] = True

    @pytest.fixture
    async def storage(self, storage_factory: Callable[[], Storage]) -> AsyncIterator[Storage]:
        """A new, empty storage, entered for the test and closed after it."""
        async with storage_factory() as store:
            yield store

    # -- creating and reading ------------------------------------------------------------

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
        item = await storage.get_item(record.id, "b")
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
        assert (await storage.get_item(record.id, "k")).payload == payload
        assert [i.payload for i in await storage.list_items(record.id)] == [payload]
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
        assert (await storage.get_item(record.id, "item-0")).result == result

    # -- listing -------------------------------------------------------------------------

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

    # -- claiming ------------------------------------------------------------------------

    async def test_claim_takes_lowest_position_first(self, storage: Storage) -> None:
        record = await _create(storage, 3)
        keys = [(await _claim(storage, record.id)).lease.key for _ in range(3)]
        assert keys == ["item-0", "item-1", "item-2"]

    async def test_claim_takes_oldest_batch_first(self, storage: Storage) -> None:
        old = await _create(storage, 2)
        new = await _create(storage, 1)
        taken = [await _claim_key(storage, _request()) for _ in range(4)]
        assert taken == [(old.id, "item-0"), (old.id, "item-1"), (new.id, "item-0"), None]

    async def test_claim_batch_ids_restricts(self, storage: Storage) -> None:
        await _create(storage, 1)
        wanted = await _create(storage, 1)
        await _create(storage, 1)
        assert await _claim_key(storage, _request(wanted.id)) == (wanted.id, "item-0")
        assert await _claim_key(storage, _request(wanted.id)) is None

    async def test_claim_batch_ids_takes_oldest_listed_batch(self, storage: Storage) -> None:
        old = await _create(storage, 1)
        new = await _create(storage, 1)
        assert await _claim_key(storage, _request(new.id, old.id)) == (old.id, "item-0")

    async def test_claim_metadata_restricts(self, storage: Storage) -> None:
        await _create(storage, 1, metadata={"owner": "ann"})
        bob = await _create(storage, 1, metadata={"owner": "bob"})
        request = ClaimRequest(lease_seconds=LONG, metadata={"owner": "bob"})
        assert await _claim_key(storage, request) == (bob.id, "item-0")
        assert await _claim_key(storage, request) is None

    async def test_claim_makes_item_running_and_counts_attempt(self, storage: Storage) -> None:
        record = await _create(storage, 2)
        claim = await _claim(storage, record.id)
        assert (claim.lease.batch_id, claim.lease.key, claim.lease.attempt) == (
            record.id,
            "item-0",
            1,
        )
        assert (claim.position, claim.payload) == (0, {"n": 0})
        item = await storage.get_item(record.id, "item-0")
        assert (item.state, item.attempt) == (_R, 1)
        assert item.started_at is not None
        assert counts_of(await storage.get_batch(record.id)) == {**empty_counts(), _Q: 1, _R: 1}

    async def test_claim_sets_batch_started_at(self, storage: Storage) -> None:
        record = await _create(storage, 2)
        await _claim(storage, record.id)
        after = await storage.get_batch(record.id)
        assert after.started_at is not None
        assert status_from_record(after).state is BatchState.RUNNING

    async def test_claim_returns_none_when_nothing_is_claimable(self, storage: Storage) -> None:
        assert await storage.claim(_request()) is None
        record = await _create(storage, 1)
        await _claim(storage, record.id)
        assert await storage.claim(_request()) is None
        assert await storage.claim(_request(record.id)) is None

    async def test_unexpired_lease_is_not_reclaimable(self, storage: Storage) -> None:
        record = await _create(storage, 1)
        await _claim(storage, record.id)
        assert await storage.claim(_request(record.id)) is None

    async def test_expired_lease_is_reclaimable_with_next_attempt(self, storage: Storage) -> None:
        record = await _create(storage, 1)
        old = await _claim(storage, record.id, lease_seconds=0)
        new = await _claim(storage, record.id)
        assert (new.lease.key, new.lease.attempt) == ("item-0", 2)
        assert new.lease.token != old.lease.token
        item = await storage.get_item(record.id, "item-0")
        assert (item.state, item.attempt) == (_R, 2)
        assert counts_of(await storage.get_batch(record.id))[_R] == 1

    async def test_heartbeat_zero_expires_the_lease(self, storage: Storage) -> None:
        record = await _create(storage, 1)
        claim = await _claim(storage, record.id)
        assert (await storage.heartbeat(claim.lease, lease_seconds=0)).held
        assert (await _claim(storage, record.id)).lease.attempt == 2

    async def test_heartbeat_extends_an_expired_lease(self, storage: Storage) -> None:
        record = await _create(storage, 1)
        claim = await _claim(storage, record.id, lease_seconds=0)
        assert (await storage.heartbeat(claim.lease, lease_seconds=LONG)).held
        assert await storage.claim(_request(record.id)) is None

    async def test_progress_can_extend_the_lease(self, storage: Storage) -> None:
        record = await _create(storage, 1)
        claim = await _claim(storage, record.id, lease_seconds=0)
        status = await storage.record_progress(claim.lease, 0.5, "half", lease_seconds=LONG)
        assert status.held
        assert await storage.claim(_request(record.id)) is None

    async def test_reclaim_clears_progress(self, storage: Storage) -> None:
        record = await _create(storage, 1)
        old = await _claim(storage, record.id)
        await storage.record_progress(old.lease, 0.7, "busy", lease_seconds=0)
        await _claim(storage, record.id)
        item = await storage.get_item(record.id, "item-0")
        assert (item.progress, item.message) == (0.0, None)

    async def test_heartbeat_on_current_lease_is_held(self, storage: Storage) -> None:
        record = await _create(storage, 1)
        claim = await _claim(storage, record.id)
        status = await storage.heartbeat(claim.lease, lease_seconds=LONG)
        assert (status.held, status.cancel_requested) == (True, False)

    async def test_progress_is_stored_and_visible(self, storage: Storage) -> None:
        record = await _create(storage, 3)
        first = await _claim(storage, record.id)
        second = await _claim(storage, record.id)
        status = await storage.record_progress(first.lease, 0.25, "rendering")
        assert (status.held, status.cancel_requested) == (True, False)
        await storage.record_progress(second.lease, 0.5, None)
        item = await storage.get_item(record.id, "item-0")
        assert (item.progress, item.message) == (0.25, "rendering")
        assert math.isclose((await storage.get_batch(record.id)).running_progress, 0.75)

    # -- stale leases --------------------------------------------------------------------

    async def _superseded(self, storage: Storage) -> tuple[BatchRecord, Lease, Item]:
        record = await _create(storage, 1)
        old = await _claim(storage, record.id, lease_seconds=0)
        new = await _claim(storage, record.id)
        await storage.record_progress(new.lease, 0.4, "new runner")
        return record, old.lease, await storage.get_item(record.id, "item-0")

    async def test_stale_lease_heartbeat_is_refused(self, storage: Storage) -> None:
        record, stale, before = await self._superseded(storage)
        assert not (await storage.heartbeat(stale, lease_seconds=0)).held
        assert await storage.claim(_request(record.id)) is None  # the new lease still holds
        assert await storage.get_item(record.id, "item-0") == before

    async def test_stale_lease_progress_is_refused(self, storage: Storage) -> None:
        record, stale, before = await self._superseded(storage)
        assert not (await storage.record_progress(stale, 0.9, "old runner")).held
        assert await storage.get_item(record.id, "item-0") == before

    @pytest.mark.parametrize(
        "outcome",
        [
            pytest.param(Outcome.succeeded('"old"'), id="succeeded"),
            pytest.param(Outcome.failed(_error()), id="failed"),
            pytest.param(Outcome.released(), id="released"),
            pytest.param(Outcome.cancelled(), id="cancelled"),
        ],
    )
    async def test_stale_lease_finish_is_refused(self, storage: Storage, outcome: Outcome) -> None:
        record, stale, before = await self._superseded(storage)
        counts = counts_of(await storage.get_batch(record.id))
        assert not (await storage.finish(stale, outcome)).accepted
        assert await storage.get_item(record.id, "item-0") == before
        assert counts_of(await storage.get_batch(record.id)) == counts

    async def test_forged_token_is_refused(self, storage: Storage) -> None:
        record = await _create(storage, 1)
        claim = await _claim(storage, record.id)
        forged = Lease(record.id, "item-0", "not-the-token", claim.lease.attempt)
        assert not (await storage.heartbeat(forged, lease_seconds=LONG)).held
        assert not (await storage.finish(forged, Outcome.succeeded("1"))).accepted
        assert await _state(storage, record.id, "item-0") == _R

    async def test_expired_lease_not_yet_reclaimed_can_finish(self, storage: Storage) -> None:
        record = await _create(storage, 1)
        claim = await _claim(storage, record.id, lease_seconds=0)
        assert (await storage.finish(claim.lease, Outcome.succeeded("1"))).accepted
        assert await _state(storage, record.id, "item-0") == _S

    # -- finishing -----------------------------------------------------------------------

    async def test_finish_succeeded(self, storage: Storage) -> None:
        record = await _create(storage, 2)
        claim = await _claim(storage, record.id)
        await storage.record_progress(claim.lease, 0.5, "half")
        result = await storage.finish(claim.lease, Outcome.succeeded(dumps({"ok": [1]})))
        assert result.accepted
        assert result.claim is None
        item = await storage.get_item(record.id, "item-0")
        assert (item.state, item.result, item.progress, item.error) == (_S, {"ok": [1]}, 1.0, None)
        assert item.finished_at is not None
        counts = counts_of(await storage.get_batch(record.id))
        assert counts == {**empty_counts(), _Q: 1, _S: 1}

    async def test_succeeded_clears_an_earlier_error(self, storage: Storage) -> None:
        record = await _create(storage, 1)
        first = await _claim(storage, record.id)
        await storage.finish(first.lease, Outcome.released(error=_error()))
        second = await _claim(storage, record.id)
        await storage.finish(second.lease, Outcome.succeeded("true"))
        assert (await storage.get_item(record.id, "item-0")).error is None

    async def test_finish_failed_keeps_the_error(self, storage: Storage) -> None:
        record = await _create(storage, 1)
        claim = await _claim(storage, record.id)
        error = _error(attempt=1, message="boom ✓ {x}:*\nsecond line")
        assert (await storage.finish(claim.lease, Outcome.failed(error))).accepted
        item = await storage.get_item(record.id, "item-0")
        assert (item.state, item.error, item.result) == (_F, error, None)
        assert item.finished_at is not None

    async def test_finish_cancelled(self, storage: Storage) -> None:
        record = await _create(storage, 1)
        claim = await _claim(storage, record.id)
        assert (await storage.finish(claim.lease, Outcome.cancelled())).accepted
        assert await _state(storage, record.id, "item-0") == _C
        assert status_from_record(await storage.get_batch(record.id)).state is BatchState.CANCELLED

    async def test_release_requeues_and_resets_progress(self, storage: Storage) -> None:
        record = await _create(storage, 1)
        claim = await _claim(storage, record.id)
        await storage.record_progress(claim.lease, 0.6, "busy")
        assert (await storage.finish(claim.lease, Outcome.released())).accepted
        item = await storage.get_item(record.id, "item-0")
        assert (item.state, item.progress, item.message, item.attempt) == (_Q, 0.0, None, 1)
        assert item.finished_at is None
        assert (await _claim(storage, record.id)).lease.attempt == 2

    async def test_release_keeps_the_error(self, storage: Storage) -> None:
        record = await _create(storage, 1)
        claim = await _claim(storage, record.id)
        await storage.finish(claim.lease, Outcome.released(delay=LONG, error=_error()))
        assert (await storage.get_item(record.id, "item-0")).error == _error()

    async def test_release_with_delay_waits(self, storage: Storage) -> None:
        record = await _create(storage, 2)
        claim = await _claim(storage, record.id)
        await storage.finish(claim.lease, Outcome.released(delay=LONG))
        assert (await _claim(storage, record.id)).lease.key == "item-1"
        assert await storage.claim(_request(record.id)) is None
        assert await _state(storage, record.id, "item-0") == _Q

    async def test_release_without_delay_is_claimable_at_once(self, storage: Storage) -> None:
        record = await _create(storage, 2)
        claim = await _claim(storage, record.id)
        await storage.finish(claim.lease, Outcome.released(delay=0))
        again = await _claim(storage, record.id)
        assert (again.lease.key, again.lease.attempt) == ("item-0", 2)

    @pytest.mark.parametrize(
        "outcome",
        [
            pytest.param(Outcome.succeeded('"again"'), id="succeeded"),
            pytest.param(Outcome.failed(_error(message="again")), id="failed"),
            pytest.param(Outcome.released(), id="released"),
            pytest.param(Outcome.cancelled(), id="cancelled"),
        ],
    )
    async def test_terminal_item_never_changes(self, storage: Storage, outcome: Outcome) -> None:
        record = await _create(storage, 1)
        claim = await _claim(storage, record.id)
        await storage.finish(claim.lease, Outcome.failed(_error()))
        before = await storage.get_item(record.id, "item-0")
        assert not (await storage.heartbeat(claim.lease, lease_seconds=LONG)).held
        assert not (await storage.record_progress(claim.lease, 0.5, "late")).held
        assert not (await storage.finish(claim.lease, outcome)).accepted
        assert await storage.claim(_request(record.id)) is None
        assert await storage.get_item(record.id, "item-0") == before

    async def test_counts_sum_to_total_through_every_transition(self, storage: Storage) -> None:
        record = await _create(storage, 5)
        outcomes = [
            Outcome.succeeded("1"),
            Outcome.failed(_error()),
            Outcome.released(),
            Outcome.cancelled(),
        ]
        for outcome in outcomes:
            claim = await _claim(storage, record.id)
            await _assert_consistent(storage, record.id)
            await storage.finish(claim.lease, outcome)
            await _assert_consistent(storage, record.id)
        await storage.cancel_batch(record.id)
        final = await _assert_consistent(storage, record.id)
        assert counts_of(final) == {**empty_counts(), _S: 1, _F: 1, _C: 3}

    async def test_finished_at_set_when_last_active_item_ends(self, storage: Storage) -> None:
        record = await _create(storage, 2)
        first = await _claim(storage, record.id)
        second = await _claim(storage, record.id)
        await storage.finish(first.lease, Outcome.succeeded("1"))
        assert (await storage.get_batch(record.id)).finished_at is None
        await storage.finish(second.lease, Outcome.failed(_error()))
        final = await storage.get_batch(record.id)
        assert final.finished_at is not None
        assert status_from_record(final).state is BatchState.COMPLETED_WITH_ERRORS

    async def test_finish_then_claim_returns_the_next_claim(self, storage: Storage) -> None:
        record = await _create(storage, 2)
        claim = await _claim(storage, record.id)
        result = await storage.finish(
            claim.lease, Outcome.succeeded("1"), then_claim=_request(record.id)
        )
        assert result.accepted
        assert result.claim is not None
        assert (result.claim.lease.key, result.claim.lease.attempt) == ("item-1", 1)
        assert await _state(storage, record.id, "item-1") == _R
        last = await storage.finish(
            result.claim.lease, Outcome.succeeded("2"), then_claim=_request(record.id)
        )
        assert (last.accepted, last.claim) == (True, None)

    async def test_finish_then_claim_honours_its_request(self, storage: Storage) -> None:
        other = await _create(storage, 1)
        record = await _create(storage, 1)
        claim = await _claim(storage, record.id)
        result = await storage.finish(
            claim.lease, Outcome.succeeded("1"), then_claim=_request(record.id)
        )
        assert (result.accepted, result.claim) == (True, None)
        assert await _state(storage, other.id, "item-0") == _Q

    async def test_refused_finish_still_claims_the_next(self, storage: Storage) -> None:
        record = await _create(storage, 2)
        old = await _claim(storage, record.id, lease_seconds=0)
        await _claim(storage, record.id)  # takes item-0 over
        result = await storage.finish(
            old.lease, Outcome.succeeded("1"), then_claim=_request(record.id)
        )
        assert not result.accepted
        assert result.claim is not None
        assert result.claim.lease.key == "item-1"

    # -- cancelling ----------------------------------------------------------------------

    async def test_cancel_makes_queued_items_cancelled_at_once(self, storage: Storage) -> None:
        record = await _create(storage, 3)
        cancelled = await storage.cancel_batch(record.id)
        assert counts_of(cancelled) == {**empty_counts(), _C: 3}
        assert cancelled.cancel_requested_at is not None
        assert cancelled.finished_at is not None
        assert [i.state for i in await storage.list_items(record.id)] == [_C, _C, _C]
        assert status_from_record(cancelled).state is BatchState.CANCELLED

    async def test_cancel_lets_running_items_run_and_tells_them(self, storage: Storage) -> None:
        record = await _create(storage, 2)
        claim = await _claim(storage, record.id)
        cancelled = await storage.cancel_batch(record.id)
        assert counts_of(cancelled) == {**empty_counts(), _R: 1, _C: 1}
        assert cancelled.finished_at is None
        beat = await storage.heartbeat(claim.lease, lease_seconds=LONG)
        assert (beat.held, beat.cancel_requested) == (True, True)
        progress = await storage.record_progress(claim.lease, 0.5, None)
        assert (progress.held, progress.cancel_requested) == (True, True)

    async def test_running_item_of_cancelled_batch_ends_cancelled(self, storage: Storage) -> None:
        record = await _create(storage, 2)
        claim = await _claim(storage, record.id)
        await storage.cancel_batch(record.id)
        assert (await storage.finish(claim.lease, Outcome.cancelled())).accepted
        final = await storage.get_batch(record.id)
        assert counts_of(final) == {**empty_counts(), _C: 2}
        assert final.finished_at is not None
        assert status_from_record(final).state is BatchState.CANCELLED

    async def test_cancel_ends_running_item_whose_lease_expired(self, storage: Storage) -> None:
        record = await _create(storage, 1)
        claim = await _claim(storage, record.id, lease_seconds=0)
        cancelled = await storage.cancel_batch(record.id)
        assert counts_of(cancelled) == {**empty_counts(), _C: 1}
        assert not (await storage.finish(claim.lease, Outcome.succeeded("1"))).accepted

    async def test_release_in_cancelled_batch_becomes_cancelled(self, storage: Storage) -> None:
        record = await _create(storage, 1)
        claim = await _claim(storage, record.id)
        await storage.cancel_batch(record.id)
        assert (await storage.finish(claim.lease, Outcome.released())).accepted
        assert await _state(storage, record.id, "item-0") == _C

    async def test_claim_skips_batch_whose_cancel_was_requested(self, storage: Storage) -> None:
        record = await _create(storage, 2)
        await _claim(storage, record.id)
        await storage.cancel_batch(record.id)
        assert await storage.claim(_request(record.id)) is None
        assert await storage.claim(_request()) is None

    async def test_claim_cancels_expired_item_of_cancelled_batch(self, storage: Storage) -> None:
        record = await _create(storage, 1)
        claim = await _claim(storage, record.id)
        await storage.cancel_batch(record.id)
        await storage.heartbeat(claim.lease, lease_seconds=0)
        assert await storage.claim(_request(record.id)) is None
        assert await _state(storage, record.id, "item-0") == _C

    async def test_cancel_of_finished_batch_changes_nothing(self, storage: Storage) -> None:
        record = await _create(storage, 1)
        claim = await _claim(storage, record.id)
        await storage.finish(claim.lease, Outcome.succeeded("1"))
        before = await storage.get_batch(record.id)
        assert await storage.cancel_batch(record.id) == before
        assert await storage.get_batch(record.id) == before
        assert status_from_record(before).state is BatchState.COMPLETED

    # -- completion hooks ----------------------------------------------------------------

    async def _finished(self, storage: Storage, size: int = 1) -> BatchRecord:
        record = await _create(storage, size)
        while claim := await storage.claim(_request(record.id)):
            await storage.finish(claim.lease, Outcome.succeeded("1"))
        return await storage.get_batch(record.id)

    async def test_claim_finished_batch_skips_active_batches(self, storage: Storage) -> None:
        record = await _create(storage, 2)
        claim = await _claim(storage, record.id)
        await storage.finish(claim.lease, Outcome.succeeded("1"))
        assert await storage.claim_finished_batch(lease_seconds=LONG) is None
        assert await storage.claim_finished_batch(lease_seconds=LONG, batch_id=record.id) is None

    async def test_claim_finished_batch_returns_terminal_batch(self, storage: Storage) -> None:
        done = await self._finished(storage, 2)
        finished = await storage.claim_finished_batch(lease_seconds=LONG)
        assert finished is not None
        assert finished.record.id == done.id
        assert counts_of(finished.record) == {**empty_counts(), _S: 2}
        assert finished.token

    async def test_claim_finished_batch_by_id(self, storage: Storage) -> None:
        await self._finished(storage)
        wanted = await self._finished(storage)
        finished = await storage.claim_finished_batch(lease_seconds=LONG, batch_id=wanted.id)
        assert finished is not None
        assert finished.record.id == wanted.id

    async def test_claim_finished_batch_once_per_lease(self, storage: Storage) -> None:
        done = await self._finished(storage)
        assert await storage.claim_finished_batch(lease_seconds=LONG) is not None
        assert await storage.claim_finished_batch(lease_seconds=LONG) is None
        assert await storage.claim_finished_batch(lease_seconds=LONG, batch_id=done.id) is None

    async def test_claim_finished_batch_again_after_expiry(self, storage: Storage) -> None:
        done = await self._finished(storage)
        first = await storage.claim_finished_batch(lease_seconds=0)
        again = await storage.claim_finished_batch(lease_seconds=LONG)
        assert first is not None
        assert again is not None
        assert again.record.id == done.id
        assert again.token != first.token

    async def test_ack_finished_batch_ends_its_hook(self, storage: Storage) -> None:
        done = await self._finished(storage)
        finished = await storage.claim_finished_batch(lease_seconds=0)
        assert finished is not None
        assert await storage.ack_finished_batch(done.id, finished.token)
        assert not await storage.ack_finished_batch(done.id, finished.token)
        assert await storage.claim_finished_batch(lease_seconds=LONG) is None

    async def test_ack_with_stale_token_is_refused(self, storage: Storage) -> None:
        done = await self._finished(storage)
        old = await storage.claim_finished_batch(lease_seconds=0)
        new = await storage.claim_finished_batch(lease_seconds=LONG)
        assert old is not None
        assert new is not None
        assert not await storage.ack_finished_batch(done.id, old.token)
        assert await storage.ack_finished_batch(done.id, new.token)

    # -- notification --------------------------------------------------------------------

    async def test_wait_wakes_promptly_on_a_change(self, storage: Storage) -> None:
        if not self.notifies_changes:
            pytest.skip("this storage polls for changes (notifies_changes = False)")
        record = await _create(storage, 1)
        woke: list[float] = []
        async with storage.subscribe(record.id) as changes, anyio.create_task_group() as tg:

            async def waiter() -> None:
                await changes.wait(timeout=5)
                woke.append(anyio.current_time())

            tg.start_soon(waiter)
            await anyio.wait_all_tasks_blocked()
            changed = anyio.current_time()
            await _claim(storage, record.id)
        assert woke[0] - changed < 1.0

    async def test_change_before_wait_returns_at_once(self, storage: Storage) -> None:
        record = await _create(storage, 1)
        async with storage.subscribe(record.id) as changes:
            await _claim(storage, record.id)
            start = anyio.current_time()
            await changes.wait(timeout=5)
            assert anyio.current_time() - start < 1.0

    async def test_wait_without_change_returns_after_timeout(self, storage: Storage) -> None:
        record = await _create(storage, 1)
        async with storage.subscribe(record.id) as changes:
            start = anyio.current_time()
            await changes.wait(timeout=0.05)
            assert 0.04 <= anyio.current_time() - start < 1.0

    # -- retention -----------------------------------------------------------------------

    async def test_delete_batch_removes_batch_and_items(self, storage: Storage) -> None:
        record = await _create(storage, 2)
        keep = await _create(storage, 1)
        assert await storage.delete_batch(record.id)
        with pytest.raises(BatchNotFound):
            await storage.get_batch(record.id)
        with pytest.raises(BatchNotFound):
            await storage.list_items(record.id)
        with pytest.raises(BatchNotFound):
            await storage.get_item(record.id, "item-0")
        assert [b.id for b in await storage.list_batches()] == [keep.id]
        assert await storage.claim(_request(record.id)) is None

    async def test_delete_batch_twice_returns_false(self, storage: Storage) -> None:
        record = await _create(storage, 1)
        assert await storage.delete_batch(record.id)
        assert not await storage.delete_batch(record.id)
        assert not await storage.delete_batch(new_batch_id())

    async def test_delete_finished_batches_deletes_finished_only(self, storage: Storage) -> None:
        done = await self._finished(storage)
        active = await _create(storage, 1)
        cancelled = await _create(storage, 1)
        await storage.cancel_batch(cancelled.id)
        assert await storage.delete_finished_batches(older_than=0) == 2
        assert [b.id for b in await storage.list_batches()] == [active.id]
        with pytest.raises(BatchNotFound):
            await storage.get_batch(done.id)

    async def test_delete_finished_batches_keeps_recent_ones(self, storage: Storage) -> None:
        done = await self._finished(storage)
        assert await storage.delete_finished_batches(older_than=LONG) == 0
        assert (await storage.get_batch(done.id)).id == done.id

    # -- concurrency ---------------------------------------------------------------------

    async def test_concurrent_claims_never_share_an_item(self, storage: Storage) -> None:
        record = await _create(storage, 200)
        taken: list[str] = []

        async def worker() -> None:
            while claim := await storage.claim(_request(record.id)):
                taken.append(claim.lease.key)

        async with anyio.create_task_group() as tg:
            for _ in range(20):
                tg.start_soon(worker)
        assert sorted(taken) == sorted(f"item-{i}" for i in range(200))
        assert counts_of(await storage.get_batch(record.id)) == {**empty_counts(), _R: 200}

    async def test_concurrent_finish_and_claim_keep_counts(self, storage: Storage) -> None:
        record = await _create(storage, 60)

        async def worker(n: int) -> None:
            claim = await storage.claim(_request(record.id))
            while claim is not None:
                outcome = Outcome.succeeded("1") if n % 2 else Outcome.failed(_error())
                result = await storage.finish(claim.lease, outcome, then_claim=_request(record.id))
                assert result.accepted
                claim = result.claim

        async with anyio.create_task_group() as tg:
            for n in range(10):
                tg.start_soon(worker, n)
        final = await _assert_consistent(storage, record.id)
        counts = counts_of(final)
        assert counts[_S] + counts[_F] == 60
        assert final.finished_at is not None

    # -- the state machine ---------------------------------------------------------------

    def test_state_machine(
        self, storage_factory: Callable[[], Storage], anyio_backend: Any
    ) -> None:
        """Random sequences of operations keep every rule (see `batchkit.testing.stateful`)."""
        from .stateful import run_state_machine  # it builds on this module's helpers

        if isinstance(anyio_backend, tuple):
            backend, options = anyio_backend
        else:
            backend, options = anyio_backend, None
        run_state_machine(storage_factory, backend=backend, backend_options=options)
