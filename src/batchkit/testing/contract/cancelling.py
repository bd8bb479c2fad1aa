"""Contract tests for cancelling a batch: queued items at once, running ones when they stop."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ...models import BatchState
from ...protocols import Outcome
from ...status import empty_counts, status_from_record
from ._helpers import _C, _R, LONG, _claim, _create, _request, _state, counts_of

if TYPE_CHECKING:
    from ...protocols import Storage

__all__ = ["CancellingContract"]


class CancellingContract:
    """Cancelling: what happens to queued, running, expired and finished items of a batch."""

    async def test_cancel_makes_queued_items_cancelled_at_once(self, storage: Storage) -> None:
        record = await _create(storage, 3)
        cancelled = await storage.cancel_batch(record.id)
        assert counts_of(cancelled) == {**empty_counts(), _C: 3}
        assert cancelled.cancel_requested_at is not None
        assert cancelled.finished_at is not None
        assert [i.state for i in await storage.list_items(record.id)] == [_C, _C, _C]
        assert status_from_record(cancelled).state is BatchState.CANCELLED

    async def test_cancel_keeps_the_first_reason(self, storage: Storage) -> None:
        record = await _create(storage, 2)
        await _claim(storage, record.id)
        reason = "more than max_failures=0 items failed: ✓ {x}:*\nsecond line"
        first = await storage.cancel_batch(record.id, reason=reason)
        assert first.cancel_reason == reason
        again = await storage.cancel_batch(record.id, reason="a later reason")
        assert again.cancel_reason == reason
        assert (await storage.get_batch(record.id)).cancel_reason == reason

    async def test_cancel_without_a_reason_keeps_none(self, storage: Storage) -> None:
        record = await _create(storage, 1)
        assert (await storage.get_batch(record.id)).cancel_reason is None
        assert (await storage.cancel_batch(record.id)).cancel_reason is None

    async def test_cancel_of_a_finished_batch_keeps_no_reason(self, storage: Storage) -> None:
        record = await _create(storage, 1)
        claim = await _claim(storage, record.id)
        await storage.finish(claim.lease, Outcome.succeeded("1"))
        after = await storage.cancel_batch(record.id, reason="too late")
        assert (after.cancel_reason, after.cancel_requested_at) == (None, None)

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
