"""Contract tests for completion hooks: claiming a finished batch once, then acknowledging it."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ...protocols import Outcome
from ...status import empty_counts
from ._helpers import _S, LONG, _claim, _create, _finished, counts_of

if TYPE_CHECKING:
    from ...protocols import Storage

__all__ = ["HooksContract"]


class HooksContract:
    """Completion hooks: `claim_finished_batch` leases a finished batch, `ack_finished_batch` ends it."""

    async def test_claim_finished_batch_skips_active_batches(self, storage: Storage) -> None:
        record = await _create(storage, 2)
        claim = await _claim(storage, record.id)
        await storage.finish(claim.lease, Outcome.succeeded("1"))
        assert await storage.claim_finished_batch(lease_seconds=LONG) is None
        assert await storage.claim_finished_batch(lease_seconds=LONG, batch_id=record.id) is None

    async def test_claim_finished_batch_returns_terminal_batch(self, storage: Storage) -> None:
        done = await _finished(storage, 2)
        finished = await storage.claim_finished_batch(lease_seconds=LONG)
        assert finished is not None
        assert finished.record.id == done.id
        assert counts_of(finished.record) == {**empty_counts(), _S: 2}
        assert finished.token

    async def test_claim_finished_batch_by_id(self, storage: Storage) -> None:
        await _finished(storage)
        wanted = await _finished(storage)
        finished = await storage.claim_finished_batch(lease_seconds=LONG, batch_id=wanted.id)
        assert finished is not None
        assert finished.record.id == wanted.id

    async def test_claim_finished_batch_once_per_lease(self, storage: Storage) -> None:
        done = await _finished(storage)
        assert await storage.claim_finished_batch(lease_seconds=LONG) is not None
        assert await storage.claim_finished_batch(lease_seconds=LONG) is None
        assert await storage.claim_finished_batch(lease_seconds=LONG, batch_id=done.id) is None

    async def test_claim_finished_batch_again_after_expiry(self, storage: Storage) -> None:
        done = await _finished(storage)
        first = await storage.claim_finished_batch(lease_seconds=0)
        again = await storage.claim_finished_batch(lease_seconds=LONG)
        assert first is not None
        assert again is not None
        assert again.record.id == done.id
        assert again.token != first.token

    async def test_ack_finished_batch_ends_its_hook(self, storage: Storage) -> None:
        done = await _finished(storage)
        finished = await storage.claim_finished_batch(lease_seconds=0)
        assert finished is not None
        assert await storage.ack_finished_batch(done.id, finished.token)
        assert await storage.claim_finished_batch(lease_seconds=LONG) is None
        assert await storage.claim_finished_batch(lease_seconds=LONG, batch_id=done.id) is None

    async def test_ack_again_with_the_same_token_is_told_true(self, storage: Storage) -> None:
        """A retry of an ack whose first try landed (its reply lost) must not read as the
        hook claimed by another runner: the same token is acknowledged again."""
        done = await _finished(storage)
        finished = await storage.claim_finished_batch(lease_seconds=LONG)
        assert finished is not None
        assert await storage.ack_finished_batch(done.id, finished.token)
        assert await storage.ack_finished_batch(done.id, finished.token)
        assert await storage.claim_finished_batch(lease_seconds=0) is None

    async def test_ack_with_stale_token_is_refused(self, storage: Storage) -> None:
        done = await _finished(storage)
        old = await storage.claim_finished_batch(lease_seconds=0)
        new = await storage.claim_finished_batch(lease_seconds=LONG)
        assert old is not None
        assert new is not None
        assert not await storage.ack_finished_batch(done.id, old.token)
        assert await storage.ack_finished_batch(done.id, new.token)
        assert not await storage.ack_finished_batch(done.id, old.token)
