"""Contract tests for claiming items, in order and within filters, and holding their leases."""

from __future__ import annotations

import math
from datetime import timedelta
from typing import TYPE_CHECKING

from ...models import TERMINAL_ITEM_STATES, BatchState
from ...protocols import BatchInfo, ClaimRequest, Outcome
from ...status import empty_counts, status_from_record
from ._helpers import (
    _Q,
    _R,
    LONG,
    _claim,
    _claim_key,
    _create,
    _error,
    _item,
    _items,
    _request,
    all_items,
    counts_of,
)

if TYPE_CHECKING:
    from datetime import datetime

    from ...models import Item
    from ...protocols import Storage

__all__ = ["ClaimingContract"]

#: How far an item's `lease_expires_at` may be from the deadline the test expects (its
#: `started_at` or `updated_at`, plus the lease): both are read from the store's clock.
_SLACK = timedelta(seconds=1)


def _near(value: datetime | None, expected: datetime) -> bool:
    return value is not None and abs(value - expected) <= _SLACK


def _lease_end(item: Item) -> datetime:
    assert item.state is _R, item
    assert item.lease_expires_at is not None, "a running item shows its lease's end"
    return item.lease_expires_at


class ClaimingContract:
    """Claiming: which item comes next, what a claim changes, and how leases expire and extend."""

    async def test_claim_takes_lowest_position_first(self, storage: Storage) -> None:
        record = await _create(storage, 3)
        keys = [(await _claim(storage, record.id)).lease.key for _ in range(3)]
        assert keys == ["item-0", "item-1", "item-2"]

    async def test_a_claim_carrying_its_batch_carries_its_own(self, storage: Storage) -> None:
        """A storage may hand a claim its batch's metadata and failure limit (then the
        runner need not read the batch): they are the batch's, of any batch claimed."""
        owner = {"owner": "ada", "options": {"size": [1, 2]}}
        limited = await _create(storage, 2, metadata=owner, max_failures=3)
        plain = await _create(storage, 1)
        seen = {
            limited.id: BatchInfo(metadata=owner, max_failures=3),
            plain.id: BatchInfo(metadata={}, max_failures=None),
        }
        first = await storage.claim(_request(limited.id))
        assert first is not None
        done = await storage.finish(
            first.lease, Outcome.succeeded("1"), then_claim=_request(limited.id)
        )
        assert done.claim is not None
        other = await storage.claim(_request())  # of any batch: the plain one's
        assert other is not None
        for claim in (first, done.claim, other):
            assert claim.batch in (None, seen[claim.lease.batch_id]), claim

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
        item = await _item(storage, record.id, "item-0")
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
        item = await _item(storage, record.id, "item-0")
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
        item = await _item(storage, record.id, "item-0")
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
        item = await _item(storage, record.id, "item-0")
        assert (item.progress, item.message) == (0.25, "rendering")
        assert math.isclose((await storage.get_batch(record.id)).running_progress, 0.75)

    # -- lease_expires_at ------------------------------------------------------------------

    async def test_queued_item_has_no_lease_expiry(self, storage: Storage) -> None:
        record = await _create(storage, 3)
        assert (await _item(storage, record.id, "item-0")).lease_expires_at is None
        waiting = await _claim(storage, record.id)
        await storage.finish(waiting.lease, Outcome.released(delay=LONG, error=_error()))
        released = await _claim(storage, record.id)
        await storage.finish(released.lease, Outcome.released())
        for key in ("item-0", "item-1"):  # waiting for its retry time; claimable again
            item = await _item(storage, record.id, key)
            assert (item.state, item.lease_expires_at) == (_Q, None)
        items = await all_items(storage, record.id)
        assert [(i.state, i.lease_expires_at) for i in items] == [(_Q, None)] * 3

    async def test_claim_sets_lease_expires_at(self, storage: Storage) -> None:
        record = await _create(storage, 3)
        await _claim(storage, record.id, lease_seconds=600)
        await _claim(storage, record.id, lease_seconds=LONG)
        short = await _item(storage, record.id, "item-0")
        long = await _item(storage, record.id, "item-1")
        assert short.started_at is not None
        assert long.started_at is not None
        assert _near(_lease_end(short), short.started_at + timedelta(seconds=600))
        assert _near(_lease_end(long), long.started_at + timedelta(seconds=LONG))
        listed = await all_items(storage, record.id)
        assert [i.lease_expires_at for i in listed] == [
            short.lease_expires_at,
            long.lease_expires_at,
            None,
        ]
        assert [i.lease_expires_at for i in await _items(storage, record.id, states=[_R])] == [
            short.lease_expires_at,
            long.lease_expires_at,
        ]

    async def test_finish_then_claim_sets_lease_expires_at(self, storage: Storage) -> None:
        record = await _create(storage, 2)
        first = await _claim(storage, record.id)
        result = await storage.finish(
            first.lease, Outcome.succeeded("1"), then_claim=_request(record.id, lease_seconds=600)
        )
        assert result.accepted
        assert result.claim is not None
        done, running = await all_items(storage, record.id)
        assert done.lease_expires_at is None
        assert running.started_at is not None
        assert _near(_lease_end(running), running.started_at + timedelta(seconds=600))

    async def test_heartbeat_and_progress_extend_lease_expires_at(self, storage: Storage) -> None:
        record = await _create(storage, 1)
        claim = await _claim(storage, record.id, lease_seconds=60)
        claimed = await _item(storage, record.id, "item-0")
        assert claimed.started_at is not None
        first = _lease_end(claimed)
        assert (await storage.heartbeat(claim.lease, lease_seconds=LONG)).held
        second = _lease_end(await _item(storage, record.id, "item-0"))
        assert second > first
        assert second >= claimed.started_at + timedelta(seconds=LONG) - _SLACK
        status = await storage.record_progress(claim.lease, 0.5, "half", lease_seconds=2 * LONG)
        assert status.held
        progressed = await _item(storage, record.id, "item-0")
        third = _lease_end(progressed)
        assert third > second
        assert _near(third, progressed.updated_at + timedelta(seconds=2 * LONG))
        assert (await storage.record_progress(claim.lease, 0.75, None)).held
        assert _lease_end(await _item(storage, record.id, "item-0")) == third
        [listed] = await all_items(storage, record.id)
        assert listed.lease_expires_at == third

    async def test_terminal_items_have_no_lease_expiry(self, storage: Storage) -> None:
        record = await _create(storage, 5)
        succeeded = await _claim(storage, record.id)
        failed = await _claim(storage, record.id)
        cancelled = await _claim(storage, record.id)
        await _claim(storage, record.id, lease_seconds=0)  # lapsed: the cancel reaps it
        await storage.finish(succeeded.lease, Outcome.succeeded("1"))
        await storage.finish(failed.lease, Outcome.failed(_error()))
        await storage.finish(cancelled.lease, Outcome.cancelled())
        await storage.cancel_batch(record.id)  # item-4, queued, is cancelled too
        items = await all_items(storage, record.id)
        assert all(item.state in TERMINAL_ITEM_STATES for item in items)
        assert [item.lease_expires_at for item in items] == [None] * 5
        for item in items:
            assert (await _item(storage, record.id, item.key)).lease_expires_at is None

    async def test_lapsed_lease_reads_running_with_past_expiry(self, storage: Storage) -> None:
        record = await _create(storage, 2)
        renewed = await _claim(storage, record.id)
        await _claim(storage, record.id, lease_seconds=0)
        assert (await storage.heartbeat(renewed.lease, lease_seconds=0)).held
        # A write after both, for the store's own "now".
        now = (await _create(storage, 1)).created_at
        items = await all_items(storage, record.id)
        for item in items:
            assert _lease_end(item) <= now, "a lapsed lease reads as ended"
            assert (await _item(storage, record.id, item.key)) == item
        lapsed = items[1]
        assert lapsed.started_at is not None
        assert _near(_lease_end(lapsed), lapsed.started_at)
