"""Contract tests for concurrent runners: no item claimed twice, counts kept exact."""

from __future__ import annotations

from typing import TYPE_CHECKING

import anyio

from ...protocols import Outcome
from ...status import empty_counts
from ._helpers import _F, _R, _S, _assert_consistent, _create, _error, _request, counts_of

if TYPE_CHECKING:
    from ...protocols import Storage

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
