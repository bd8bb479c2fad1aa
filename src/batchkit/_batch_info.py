"""What running a batch's items needs of the batch, read once per batch and kept."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .protocols import BatchInfo

if TYPE_CHECKING:
    from .protocols import Storage

__all__ = ["BatchInfo", "BatchInfoCache"]


class BatchInfoCache:
    """Reads a batch's `BatchInfo` once and keeps it (it never changes after submission).

    Args:
        storage: where to read it.
        size: how many batches to keep; the oldest read is dropped first.
    """

    def __init__(self, storage: Storage, size: int = 1_024) -> None:
        self._storage = storage
        self._size = size
        self._info: dict[str, BatchInfo] = {}

    async def __call__(self, batch_id: str) -> BatchInfo:
        """The batch's info.

        Raises:
            BatchNotFound: no batch has this id.
        """
        info = self._info.get(batch_id)
        if info is None:
            record = await self._storage.get_batch(batch_id)
            info = BatchInfo(metadata=record.metadata, max_failures=record.max_failures)
            self.remember(batch_id, info)
        return info

    def remember(self, batch_id: str, info: BatchInfo) -> None:
        """Keep ``info`` of a batch, read by other means (a claim that carried it)."""
        if batch_id not in self._info and len(self._info) >= self._size:
            self._info.pop(next(iter(self._info)))
        self._info[batch_id] = info

    def forget(self, batch_id: str) -> None:
        """Drop what is kept of a batch (it was deleted, or it finished)."""
        self._info.pop(batch_id, None)
