"""What the contract suite and the state machine both use: reading a store back whole."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..status import empty_counts, item_from_record

if TYPE_CHECKING:
    from ..models import Item, ItemState
    from ..protocols import BatchRecord, Storage

__all__ = ["LONG", "all_items", "counts_of"]

#: Seconds of a lease or a retry wait that does not end while a test runs.
LONG = 3600.0


def counts_of(record: BatchRecord) -> dict[ItemState, int]:
    """A record's counts with every `ItemState` present (zero when the store left it out)."""
    counts = empty_counts()
    counts.update(record.counts)
    return counts


async def all_items(storage: Storage, batch_id: str, *, page: int = 100) -> list[Item]:
    """Every item of a batch in submission order, read page by page (as `Item`s)."""
    items: list[Item] = []
    after: int | None = None
    while chunk := await storage.list_items(batch_id, after=after, limit=page):
        items.extend(item_from_record(record) for record in chunk)
        after = chunk[-1].position
    return items
