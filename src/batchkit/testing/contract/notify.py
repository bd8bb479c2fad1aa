"""Contract tests for change notification: `subscribe` and a bounded `wait`."""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

import anyio
import pytest

from ._helpers import _claim, _create

if TYPE_CHECKING:
    from ...protocols import Storage

__all__ = ["NotifyContract"]


class NotifyContract:
    """Notification: a subscriber's `wait` returns on a change, or after its timeout."""

    #: Whether `Storage.subscribe` wakes a waiting reader promptly (set by `StorageContract`).
    notifies_changes: ClassVar[bool]

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
