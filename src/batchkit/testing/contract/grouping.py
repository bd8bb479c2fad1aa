"""Contract tests for group commit: several successes of one batch written, and its next
items claimed, in one step (`batchkit.protocols.GroupCommitter`)."""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

import anyio
import pytest

from ...codec import loads
from ...models import BatchState
from ...protocols import GroupCommitter, Outcome
from ...status import status_from_record
from ._helpers import (
    _Q,
    _R,
    _S,
    LONG,
    _assert_consistent,
    _claim,
    _create,
    _error,
    _item,
    _state,
    counts_of,
)

if TYPE_CHECKING:
    from ...protocols import BatchRecord, Claim, GroupResult, Storage

__all__ = ["GroupContract"]


def _counts(record: BatchRecord) -> dict[str, int]:
    return {state.value: n for state, n in counts_of(record).items() if n}


def _done(claim: Claim, result: str = '"ok"') -> tuple[object, Outcome]:
    return claim.lease, Outcome.succeeded(result)


class GroupContract:
    """Group commit: what `GroupCommitter.finish_group` writes, refuses and claims."""

    #: Whether the storage is a `GroupCommitter` (runners write each outcome alone if not).
    commits_groups: ClassVar[bool] = True

    def _committer(self, storage: Storage) -> GroupCommitter:
        if not self.commits_groups:
            pytest.skip("the storage writes each outcome alone (commits_groups = False)")
        assert isinstance(storage, GroupCommitter)
        return storage

    async def _group(
        self,
        storage: Storage,
        batch_id: str,
        claims: list[Claim],
        *,
        claim: int,
        lease_seconds: float = LONG,
    ) -> GroupResult:
        succeeded = [(c.lease, Outcome.succeeded(f'"r-{c.lease.key}"')) for c in claims]
        return await self._committer(storage).finish_group(
            batch_id, succeeded, claim=claim, lease_seconds=lease_seconds
        )

    async def test_a_group_ends_each_attempt_and_claims_the_next_items(
        self, storage: Storage
    ) -> None:
        record = await _create(storage, 6)
        held = [await _claim(storage, record.id) for _ in range(3)]
        done = await self._group(storage, record.id, held, claim=2)
        assert done.accepted == [True, True, True]
        assert [c.lease.key for c in done.claims] == ["item-3", "item-4"]
        assert [c.position for c in done.claims] == [3, 4]
        assert [c.lease.attempt for c in done.claims] == [1, 1]
        assert [c.payload for c in done.claims] == [{"n": 3}, {"n": 4}]
        for claim in held:
            item = await _item(storage, record.id, claim.lease.key)
            assert item.state is _S
            assert item.result == f"r-{claim.lease.key}"
            assert item.progress == 1.0
        for claim in done.claims:
            assert await _state(storage, record.id, claim.lease.key) == _R
        after = await _assert_consistent(storage, record.id)
        assert _counts(after) == {"queued": 1, "running": 2, "succeeded": 3}

    async def test_each_claim_of_a_group_is_a_lease_of_its_own(self, storage: Storage) -> None:
        record = await _create(storage, 3)
        claims = (await self._group(storage, record.id, [], claim=3)).claims
        assert len({(c.lease.key, c.lease.token) for c in claims}) == 3
        first, second, third = claims
        assert (await storage.heartbeat(first.lease, lease_seconds=LONG)).held
        assert (await storage.finish(second.lease, Outcome.failed(_error()))).accepted
        # One lease ends its item and no other.
        assert not (await storage.finish(second.lease, Outcome.succeeded("1"))).accepted
        assert await _state(storage, record.id, first.lease.key) == _R
        assert await _state(storage, record.id, third.lease.key) == _R
        await _assert_consistent(storage, record.id)

    async def test_a_group_refuses_a_stale_lease_and_writes_the_others(
        self, storage: Storage
    ) -> None:
        record = await _create(storage, 3)
        others = [await _claim(storage, record.id) for _ in range(2)]
        stale = await _claim(storage, record.id, lease_seconds=0)
        taken_over = await _claim(storage, record.id)  # item-2 again, its lease had lapsed
        assert taken_over.lease.key == stale.lease.key == "item-2"
        done = await self._group(storage, record.id, [others[0], stale, others[1]], claim=1)
        assert done.accepted == [True, False, True]
        assert done.claims == []
        item = await _item(storage, record.id, stale.lease.key)
        assert item.state is _R
        assert item.attempt == 2
        after = await _assert_consistent(storage, record.id)
        assert _counts(after) == {"running": 1, "succeeded": 2}

    async def test_a_group_claims_what_is_claimable_and_no_more(self, storage: Storage) -> None:
        record = await _create(storage, 4)
        await _claim(storage, record.id)
        delayed = await _claim(storage, record.id)
        assert (await storage.finish(delayed.lease, Outcome.released(delay=3600))).accepted
        expired = await _claim(storage, record.id, lease_seconds=0)
        claims = (await self._group(storage, record.id, [], claim=10)).claims
        # The lapsed lease is taken back (a new attempt); the delayed retry is not due.
        assert [(c.lease.key, c.lease.attempt) for c in claims] == [("item-2", 2), ("item-3", 1)]
        assert expired.lease.key == "item-2"
        assert await _state(storage, record.id, delayed.lease.key) == _Q
        after = await _assert_consistent(storage, record.id)
        assert _counts(after) == {"queued": 1, "running": 3}

    async def test_a_group_that_ends_the_batch_finishes_it(self, storage: Storage) -> None:
        record = await _create(storage, 5)
        claims = (await self._group(storage, record.id, [], claim=3)).claims
        done = await self._group(storage, record.id, claims, claim=3)
        assert done.accepted == [True] * 3
        assert [c.lease.key for c in done.claims] == ["item-3", "item-4"]
        last = await self._group(storage, record.id, done.claims, claim=3)
        assert last.accepted == [True, True]
        assert last.claims == []
        after = await _assert_consistent(storage, record.id)
        assert after.finished_at is not None
        assert status_from_record(after).state is BatchState.COMPLETED
        assert _counts(after) == {"succeeded": 5}

    async def test_a_group_claims_nothing_in_a_cancelled_batch(self, storage: Storage) -> None:
        record = await _create(storage, 4)
        held = await _claim(storage, record.id)
        await storage.cancel_batch(record.id)
        done = await self._group(storage, record.id, [held], claim=3)
        assert done.claims == []
        after = await _assert_consistent(storage, record.id)
        assert after.finished_at is not None
        assert _counts(after).keys() <= {"succeeded", "cancelled"}

    async def test_a_group_of_a_batch_that_is_gone_changes_nothing(self, storage: Storage) -> None:
        record = await _create(storage, 2)
        held = await _claim(storage, record.id)
        assert await storage.delete_batch(record.id)
        done = await self._group(storage, record.id, [held], claim=2)
        assert done == type(done)(accepted=[False], claims=[])

    async def test_a_group_refuses_what_it_does_not_take_and_writes_nothing(
        self, storage: Storage
    ) -> None:
        committer = self._committer(storage)
        record = await _create(storage, 3)
        other = await _create(storage, 1)
        first, second = await _claim(storage, record.id), await _claim(storage, record.id)
        stranger = await _claim(storage, other.id)
        before = counts_of(await storage.get_batch(record.id))
        bad: list[list[tuple[object, Outcome]]] = [
            [_done(first), (second.lease, Outcome.failed(_error()))],
            [_done(first), (second.lease, Outcome.released())],
            [_done(first), _done(stranger)],
        ]
        for succeeded in bad:
            with pytest.raises(ValueError, match="group"):
                await committer.finish_group(
                    record.id,
                    succeeded,  # type: ignore[arg-type]
                    claim=1,
                    lease_seconds=LONG,
                )
        for claim in (-1, 1.5):
            with pytest.raises(ValueError, match="claim"):
                await committer.finish_group(
                    record.id,
                    [_done(first)],  # type: ignore[list-item]
                    claim=claim,  # type: ignore[arg-type]
                    lease_seconds=LONG,
                )
        assert counts_of(await storage.get_batch(record.id)) == before
        assert await _state(storage, record.id, first.lease.key) == _R
        assert await _state(storage, other.id, stranger.lease.key) == _R

    async def test_a_group_keeps_results_as_written(self, storage: Storage) -> None:
        record = await _create(storage, 3)
        claims = (await self._group(storage, record.id, [], claim=3)).claims
        results = ['{"a":[1,2.5,null]}', '"caf\\u00e9 \u2603"', "null"]
        succeeded = [(c.lease, Outcome.succeeded(r)) for c, r in zip(claims, results, strict=True)]
        done = await self._committer(storage).finish_group(
            record.id, succeeded, claim=0, lease_seconds=LONG
        )
        assert done.accepted == [True] * 3
        for claim, result in zip(claims, results, strict=True):
            item = await _item(storage, record.id, claim.lease.key)
            assert item.result == loads(result)

    async def test_racing_groups_never_claim_one_item_twice(self, storage: Storage) -> None:
        record = await _create(storage, 24)
        taken: list[str] = []

        async def runner() -> None:
            held: list[Claim] = []
            while True:
                done = await self._group(storage, record.id, held, claim=4)
                assert all(done.accepted)
                if not done.claims:
                    return
                taken.extend(c.lease.key for c in done.claims)
                held = done.claims

        async with anyio.create_task_group() as tg:
            for _ in range(4):
                tg.start_soon(runner)
        assert sorted(taken) == sorted(f"item-{n}" for n in range(24))
        after = await _assert_consistent(storage, record.id)
        assert _counts(after) == {"succeeded": 24}
        assert after.finished_at is not None
