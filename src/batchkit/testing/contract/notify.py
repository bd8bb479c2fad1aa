"""Contract tests for change notification: `subscribe` and a bounded `wait`, and new
work announced to idle workers (`WorkAnnouncer.subscribe_work`)."""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

import anyio
import pytest

from ...protocols import ClaimRequest, Outcome, WorkAnnouncer
from ._helpers import LONG, _claim, _create

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable
    from contextlib import AbstractAsyncContextManager

    from ...protocols import Storage, Subscription

__all__ = ["NotifyContract", "WorkContract"]


async def _woken_after(
    subscription: AbstractAsyncContextManager[Subscription],
    change: Callable[[], Awaitable[object]],
) -> float:
    """How long after ``change`` a waiter on ``subscription`` wakes (at most 5 s)."""
    woke: list[float] = []
    async with subscription as waiting, anyio.create_task_group() as tg:

        async def waiter() -> None:
            await waiting.wait(timeout=5)
            woke.append(anyio.current_time())

        tg.start_soon(waiter)
        await anyio.wait_all_tasks_blocked()
        changed = anyio.current_time()
        await change()
    return woke[0] - changed


class NotifyContract:
    """Notification: a subscriber's `wait` returns on a change, or after its timeout."""

    #: Whether `Storage.subscribe` wakes a waiting reader promptly (set by `StorageContract`).
    notifies_changes: ClassVar[bool]

    async def test_wait_wakes_promptly_on_a_change(self, storage: Storage) -> None:
        if not self.notifies_changes:
            pytest.skip("this storage polls for changes (notifies_changes = False)")
        record = await _create(storage, 1)
        took = await _woken_after(storage.subscribe(record.id), lambda: _claim(storage, record.id))
        assert took < 1.0

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


class WorkContract:
    """New work: a `WorkAnnouncer`'s waiter wakes when items become claimable by a change
    (a batch created, an item handed back), and not for changes that make no work."""

    #: Whether the storage is a `WorkAnnouncer` (set by `StorageContract`; a third party's
    #: adapter that is not sets it to `False`, and its workers poll).
    announces_work: ClassVar[bool]

    def _announcer(self, storage: Storage) -> WorkAnnouncer:
        if not self.announces_work:
            pytest.skip("this storage announces no work (announces_work = False)")
        assert isinstance(storage, WorkAnnouncer), (
            "announces_work is set, subscribe_work is missing"
        )
        return storage

    async def _woken_by(self, storage: Storage, change: Callable[[], Awaitable[object]]) -> float:
        """How long after ``change`` a waiter for work wakes (at most 5 s)."""
        return await _woken_after(self._announcer(storage).subscribe_work(), change)

    async def test_a_new_batch_wakes_a_waiter_for_work(self, storage: Storage) -> None:
        assert await self._woken_by(storage, lambda: _create(storage, 2)) < 1.0

    async def test_an_item_handed_back_wakes_a_waiter_for_work(self, storage: Storage) -> None:
        record = await _create(storage, 1)
        claim = await _claim(storage, record.id)
        released = Outcome.released()
        took = await self._woken_by(storage, lambda: storage.finish(claim.lease, released))
        assert took < 1.0
        assert await storage.claim(ClaimRequest(lease_seconds=LONG)) is not None

    async def test_work_announced_before_the_wait_returns_it_at_once(
        self, storage: Storage
    ) -> None:
        announcer = self._announcer(storage)
        async with announcer.subscribe_work() as work:
            await _create(storage, 1)
            await anyio.sleep(0.2)  # delivered by the store, where it announces through one
            start = anyio.current_time()
            await work.wait(timeout=5)
            assert anyio.current_time() - start < 0.5

    async def test_changes_that_make_no_work_leave_the_waiter_waiting(
        self, storage: Storage
    ) -> None:
        announcer = self._announcer(storage)
        record = await _create(storage, 3)
        claim = await _claim(storage, record.id)
        async with announcer.subscribe_work() as work:
            await anyio.sleep(0.2)
            await work.wait(timeout=0.01)  # whatever came before: taken
            await storage.record_progress(claim.lease, progress=0.5, message="half")
            await storage.heartbeat(claim.lease, lease_seconds=LONG)
            await storage.finish(claim.lease, Outcome.succeeded("1"))
            await storage.cancel_batch(record.id)
            start = anyio.current_time()
            await work.wait(timeout=0.3)
            assert anyio.current_time() - start >= 0.25

    async def test_a_wait_without_work_returns_after_its_timeout(self, storage: Storage) -> None:
        announcer = self._announcer(storage)
        async with announcer.subscribe_work() as work:
            await anyio.sleep(0.2)
            await work.wait(timeout=0.01)
            start = anyio.current_time()
            await work.wait(timeout=0.05)
            assert 0.04 <= anyio.current_time() - start < 1.0
