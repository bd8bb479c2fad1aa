"""Helpers shared by the contract suite's tests, some public for adapters' own tests."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ...codec import dumps
from ...ids import new_batch_id
from ...models import ItemError, ItemState
from ...protocols import BatchRecord, Claim, ClaimRequest, NewBatch, NewItem, Outcome
from ...status import item_from_record, recount
from .._shared import LONG, all_items, counts_of

if TYPE_CHECKING:
    from collections.abc import Collection, Sequence

    from ...models import Item
    from ...protocols import Storage

__all__ = ["LONG", "all_items", "counts_of", "new_batch"]

_Q, _R = ItemState.QUEUED, ItemState.RUNNING
_S, _F, _C = ItemState.SUCCEEDED, ItemState.FAILED, ItemState.CANCELLED


def new_batch(
    items: int | Sequence[str] = 3,
    *,
    payloads: Sequence[Any] | None = None,
    metadata: dict[str, Any] | None = None,
    parent_id: str | None = None,
    idempotency_key: str | None = None,
    max_failures: int | None = None,
) -> NewBatch:
    """Build a `NewBatch` with a fresh id.

    Args:
        items: how many items (keys ``item-0``, ``item-1``...) or the keys themselves.
        payloads: one JSON value per item; by default each item's payload is ``{"n": i}``.
        metadata: the batch's metadata.
        parent_id: the batch this one retries.
        idempotency_key: the submission's idempotency key.
        max_failures: the batch's failure limit.
    """
    keys = [f"item-{i}" for i in range(items)] if isinstance(items, int) else list(items)
    values: list[Any] = [{"n": i} for i in range(len(keys))] if payloads is None else list(payloads)
    return NewBatch(
        id=new_batch_id(),
        items=[NewItem(key, dumps(value)) for key, value in zip(keys, values, strict=True)],
        metadata=dict(metadata or {}),
        parent_id=parent_id,
        idempotency_key=idempotency_key,
        max_failures=max_failures,
    )


async def _create(storage: Storage, items: int | Sequence[str] = 3, **kw: Any) -> BatchRecord:
    record, created = await storage.create_batch(new_batch(items, **kw))
    assert created
    return record


async def _claim(storage: Storage, batch_id: str, *, lease_seconds: float = LONG) -> Claim:
    claim = await storage.claim(ClaimRequest(lease_seconds=lease_seconds, batch_ids=(batch_id,)))
    assert claim is not None, "expected a claimable item"
    return claim


async def _claim_key(storage: Storage, request: ClaimRequest) -> tuple[str, str] | None:
    claim = await storage.claim(request)
    return None if claim is None else (claim.lease.batch_id, claim.lease.key)


def _request(*batch_ids: str, lease_seconds: float = LONG) -> ClaimRequest:
    return ClaimRequest(lease_seconds=lease_seconds, batch_ids=batch_ids or None)


def _error(attempt: int = 1, message: str = "boom") -> ItemError:
    return ItemError(
        type="ValueError",
        message=message,
        traceback='Traceback (most recent call last):\n  File "g.py"\nValueError: boom',
        attempt=attempt,
    )


async def _item(storage: Storage, batch_id: str, key: str) -> Item:
    """One item read back as the core shows it: its record, built into an `Item`."""
    return item_from_record(await storage.get_item(batch_id, key))


async def _items(
    storage: Storage,
    batch_id: str,
    *,
    states: Collection[ItemState] | None = None,
    after: int | None = None,
    limit: int = 100,
) -> list[Item]:
    """One page of `Storage.list_items`, each record built into an `Item`."""
    records = await storage.list_items(batch_id, states=states, after=after, limit=limit)
    return [item_from_record(record) for record in records]


async def _state(storage: Storage, batch_id: str, key: str) -> ItemState:
    return (await storage.get_item(batch_id, key)).state


async def _assert_consistent(storage: Storage, batch_id: str) -> BatchRecord:
    record = await storage.get_batch(batch_id)
    counts = counts_of(record)
    assert sum(counts.values()) == record.total
    assert counts == recount(item.state for item in await all_items(storage, batch_id))
    return record


async def _finished(storage: Storage, size: int = 1) -> BatchRecord:
    record = await _create(storage, size)
    while claim := await storage.claim(_request(record.id)):
        await storage.finish(claim.lease, Outcome.succeeded("1"))
    return await storage.get_batch(record.id)
