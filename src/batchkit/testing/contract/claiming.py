"""Contract tests for claiming items, in order and within filters, and holding their leases."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from ...models import BatchState
from ...protocols import ClaimRequest
from ...status import empty_counts, status_from_record
from ._helpers import _Q, _R, LONG, _claim, _claim_key, _create, _request, counts_of

if TYPE_CHECKING:
    from ...protocols import Storage

__all__ = ["ClaimingContract"]


class ClaimingContract:
    """Claiming: which item comes next, what a claim changes, and how leases expire and extend."""

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
