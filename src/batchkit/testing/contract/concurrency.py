"""Contract tests for concurrent runners: no item claimed twice, counts kept exact."""

from __future__ import annotations

from typing import TYPE_CHECKING

import anyio
import anyio.lowlevel

from ...protocols import Outcome
from ...status import empty_counts
from ._helpers import (
    _C,
    _F,
    _Q,
    _R,
    _S,
    _assert_consistent,
    _create,
    _error,
    _request,
    counts_of,
)

if TYPE_CHECKING:
    from ...protocols import Claim, Storage

__all__ = ["ConcurrencyContract"]


class ConcurrencyContract:
    """Concurrency: many tasks claiming and finishing the same batch at once."""

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

    async def test_the_last_items_ending_at_once_finish_the_batch(self, storage: Storage) -> None:
        """Every item of a batch ends at the same moment, in transactions of their own: the
        batch still finishes (an adapter that splits its counters must not lose the last
        of them to a race), and its completion hook is due once."""
        for _ in range(3):
            record = await _create(storage, 24)
            claims = [await storage.claim(_request(record.id)) for _ in range(24)]

            async def end(claim: Claim | None, n: int) -> None:
                assert claim is not None
                outcome = Outcome.succeeded("1") if n % 3 else Outcome.failed(_error())
                assert (await storage.finish(claim.lease, outcome)).accepted

            async with anyio.create_task_group() as tg:
                for n, claim in enumerate(claims):
                    tg.start_soon(end, claim, n)
            final = await _assert_consistent(storage, record.id)
            assert final.finished_at is not None
            assert counts_of(final) == {**empty_counts(), _S: 16, _F: 8}
            due = await storage.claim_finished_batch(lease_seconds=60, batch_id=record.id)
            assert due is not None
            assert await storage.claim_finished_batch(lease_seconds=60, batch_id=record.id) is None

    async def test_a_cancel_while_items_end_keeps_counts_exact(self, storage: Storage) -> None:
        """A cancel lands while running items end: every item is counted once, in the
        state it ended in, and the batch finishes when the last running one ends."""
        record = await _create(storage, 40)
        claims = [await storage.claim(_request(record.id)) for _ in range(20)]

        async def end(n: int) -> None:
            claim = claims[n]
            assert claim is not None
            for _ in range(n % 4):
                await anyio.lowlevel.checkpoint()
            outcome = Outcome.succeeded("1") if n % 2 else Outcome.failed(_error())
            await storage.finish(claim.lease, outcome)

        async with anyio.create_task_group() as tg:
            for n in range(20):
                tg.start_soon(end, n)
            await anyio.lowlevel.checkpoint()
            await storage.cancel_batch(record.id)
        final = await _assert_consistent(storage, record.id)
        counts = counts_of(final)
        assert counts[_Q] == counts[_R] == 0
        assert counts[_C] >= 20
        assert final.finished_at is not None
