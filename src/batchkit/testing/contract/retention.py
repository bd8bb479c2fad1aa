"""Contract tests for retention: deleting one batch, or every finished batch past an age."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from ...exceptions import BatchNotFound
from ...ids import new_batch_id
from ._helpers import LONG, _create, _finished, _request

if TYPE_CHECKING:
    from ...protocols import Storage

__all__ = ["RetentionContract"]


class RetentionContract:
    """Retention: `delete_batch` and `delete_finished_batches`."""

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
        done = await _finished(storage)
        active = await _create(storage, 1)
        cancelled = await _create(storage, 1)
        await storage.cancel_batch(cancelled.id)
        assert await storage.delete_finished_batches(older_than=0) == 2
        assert [b.id for b in await storage.list_batches()] == [active.id]
        with pytest.raises(BatchNotFound):
            await storage.get_batch(done.id)

    async def test_delete_finished_batches_keeps_recent_ones(self, storage: Storage) -> None:
        done = await _finished(storage)
        assert await storage.delete_finished_batches(older_than=LONG) == 0
        assert (await storage.get_batch(done.id)).id == done.id
