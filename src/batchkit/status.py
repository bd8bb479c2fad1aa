"""The aggregator: a batch's state and progress, derived from its items' counts.

Pure functions, no I/O. Every reader (status calls, lists, watch streams, the example
apps) goes through `derive_state`, so a stored status can never disagree with the items.
The public `Batch`, `BatchStatus` and `Item` of what a storage reads are built here too.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ._tracing import public_metadata
from .codec import loads
from .history import errors_of
from .models import (
    TERMINAL_BATCH_STATES,
    Batch,
    BatchState,
    BatchStatus,
    Item,
    ItemError,
    ItemState,
)

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping

    from .protocols import BatchRecord, ItemRecord

__all__ = [
    "batch_from_record",
    "derive_progress",
    "derive_state",
    "empty_counts",
    "item_from_record",
    "recount",
    "status_from_record",
]


def empty_counts() -> dict[ItemState, int]:
    """A counts mapping with every `ItemState` at zero."""
    return dict.fromkeys(ItemState, 0)


def recount(states: Iterable[ItemState]) -> dict[ItemState, int]:
    """Count item states from scratch (what the stored counters must always equal)."""
    counts = empty_counts()
    for state in states:
        counts[state] += 1
    return counts


def derive_state(
    counts: Mapping[ItemState, int], *, started: bool, cancel_requested: bool
) -> BatchState:
    """Derive a batch's state from its items' counts.

    Args:
        counts: how many items are in each state (missing states count zero).
        started: whether any item of the batch was ever claimed.
        cancel_requested: whether the batch's cancel was requested.

    Returns:
        ``queued`` while items wait and none ever started and no cancel was requested;
        ``running`` while any other item is queued or running; once every item is
        terminal: ``cancelled`` if any was cancelled, else ``completed`` if none failed,
        else ``failed`` if every item failed, else ``completed_with_errors``.
    """
    active = counts.get(ItemState.QUEUED, 0) + counts.get(ItemState.RUNNING, 0)
    if active:
        if not started and not cancel_requested:
            return BatchState.QUEUED
        return BatchState.RUNNING
    if counts.get(ItemState.CANCELLED, 0):
        return BatchState.CANCELLED
    failed = counts.get(ItemState.FAILED, 0)
    if not failed:
        return BatchState.COMPLETED
    if not counts.get(ItemState.SUCCEEDED, 0):
        return BatchState.FAILED
    return BatchState.COMPLETED_WITH_ERRORS


def derive_progress(
    counts: Mapping[ItemState, int], total: int, running_progress: float = 0.0
) -> float:
    """Fraction of the batch done: finished items count whole, running ones by their progress."""
    if total <= 0:
        return 1.0
    done = (
        counts.get(ItemState.SUCCEEDED, 0)
        + counts.get(ItemState.FAILED, 0)
        + counts.get(ItemState.CANCELLED, 0)
    )
    fraction = (done + max(0.0, running_progress)) / total
    return min(1.0, max(0.0, fraction))


def status_from_record(record: BatchRecord) -> BatchStatus:
    """Build the public `BatchStatus` of a stored batch record."""
    counts = empty_counts()
    counts.update(record.counts)
    state = derive_state(
        counts,
        started=record.started_at is not None,
        cancel_requested=record.cancel_requested_at is not None,
    )
    return BatchStatus(
        batch_id=record.id,
        state=state,
        total=record.total,
        counts=counts,
        progress=derive_progress(counts, record.total, record.running_progress),
        is_terminal=state in TERMINAL_BATCH_STATES,
        parent_id=record.parent_id,
        metadata=public_metadata(record.metadata),
        cancel_requested=record.cancel_requested_at is not None,
        cancel_reason=record.cancel_reason,
        max_failures=record.max_failures,
        created_at=record.created_at,
        updated_at=record.updated_at,
        started_at=record.started_at,
        finished_at=record.finished_at,
    )


def batch_from_record(record: BatchRecord) -> Batch:
    """Build the public `Batch` of a stored batch record."""
    return Batch(
        id=record.id,
        parent_id=record.parent_id,
        metadata=public_metadata(record.metadata),
        idempotency_key=record.idempotency_key,
        total=record.total,
        max_failures=record.max_failures,
        created_at=record.created_at,
    )


def item_from_record(record: ItemRecord) -> Item:
    """Build the public `Item` of a stored item record, decoding its JSON texts.

    ``errors`` come from the record's history (none when it has none; a history that is
    not one reads as empty, with a warning).

    Raises:
        pydantic.ValidationError: the stored error is not an `ItemError`'s JSON.
    """
    error = record.error
    result = record.result
    history = record.history
    # Built without validating again what the storage wrote (and validated) itself: its
    # fields already have their types, and its JSON texts are decoded here.
    item = Item.__new__(Item)
    _set(
        item,
        "__dict__",
        {
            "batch_id": record.batch_id,
            "key": record.key,
            "position": record.position,
            "payload": loads(record.payload),
            "state": record.state,
            "progress": record.progress,
            "message": record.message,
            "attempt": record.attempt,
            "error": None if error is None else ItemError.model_validate_json(error),
            "errors": [] if history is None else errors_of(history),
            "result": None if result is None else loads(result),
            "created_at": record.created_at,
            "updated_at": record.updated_at,
            "started_at": record.started_at,
            "lease_expires_at": record.lease_expires_at,
            "finished_at": record.finished_at,
        },
    )
    _set(item, "__pydantic_fields_set__", _ITEM_FIELDS)
    _set(item, "__pydantic_extra__", None)
    _set(item, "__pydantic_private__", None)
    return item


#: Every field of `Item`: an item built here has them all set.
_ITEM_FIELDS = frozenset(Item.model_fields)
#: How a frozen model's attributes are set when it is built (as pydantic's
#: `model_construct` does for any model, at several times the cost).
_set = object.__setattr__
