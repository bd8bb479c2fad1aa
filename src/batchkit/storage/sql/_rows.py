"""Rows to records, and how metadata is stored for filtering: the same in every dialect."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime
from typing import Any

from ...codec import dumps, is_unicode, loads
from ...models import ItemState
from ...protocols import BatchRecord, ItemRecord, NewBatch
from .._base import last_one

__all__ = [
    "SCALARS",
    "batch_row",
    "item_rows",
    "new_record",
    "tag",
    "tag_name",
    "tag_rows",
    "tag_value",
    "to_item",
    "to_record",
    "ts",
]

_TAG_MAX = 191
_HASHED = "#sha256:"
#: Metadata values stored as tags (and so usable in filters).
SCALARS = (str, int, float, bool, type(None))
_R = ItemState.RUNNING.value


def ts(value: float | None) -> datetime | None:
    return None if value is None else datetime.fromtimestamp(value, UTC)


def tag_name(name: str) -> str:
    """How a top-level metadata key is stored for filtering: as it is, or hashed.

    A key the tags table cannot hold exactly is stored as its SHA-256, so that every key
    is found again: one longer than the column (191 characters), one with NUL (which
    PostgreSQL's text cannot hold), and one that starts like a hash itself (so that no
    key can pass for another's hash). A key that is not valid Unicode (only a filter can
    name one) gets a hash that matches nothing stored.
    """
    if (
        len(name) <= _TAG_MAX
        and "\x00" not in name
        and not name.startswith(_HASHED)
        and (name.isascii() or is_unicode(name))
    ):
        return name
    return _HASHED + hashlib.sha256(name.encode("utf-8", "surrogatepass")).hexdigest()


def tag_value(value: object) -> str:
    """How a metadata scalar is stored for filtering: its JSON text, hashed when long.

    JSON text never starts with ``#``, so no value passes for another's hash.

    Raises:
        ValueError: the value is not JSON (NaN, say): it matches nothing stored.
    """
    encoded = dumps(value)  # type: ignore[arg-type]
    if len(encoded) <= _TAG_MAX and (encoded.isascii() or is_unicode(encoded)):
        return encoded
    return _HASHED + hashlib.sha256(encoded.encode("utf-8", "surrogatepass")).hexdigest()


def tag(name: object, value: object) -> tuple[str, str] | None:
    """The stored name and value a metadata filter looks for; `None` if none can match."""
    if not isinstance(name, str) or not isinstance(value, SCALARS):
        return None
    try:
        return tag_name(name), tag_value(value)
    except ValueError:
        return None


def to_record(row: Any) -> BatchRecord:
    """A batch's row (with its ``running_progress``) as a `BatchRecord`: a row of
    SQLAlchemy's or of a driver's, read by column name."""
    return BatchRecord(
        id=row.id,
        total=row.total,
        counts={
            ItemState.QUEUED: row.n_queued,
            ItemState.RUNNING: row.n_running,
            ItemState.SUCCEEDED: row.n_succeeded,
            ItemState.FAILED: row.n_failed,
            ItemState.CANCELLED: row.n_cancelled,
        },
        created_at=ts(row.created_at),  # type: ignore[arg-type]
        updated_at=ts(row.updated_at),  # type: ignore[arg-type]
        metadata=loads(row.metadata),  # type: ignore[arg-type]
        parent_id=row.parent_id,
        idempotency_key=row.idempotency_key,
        running_progress=float(row.running_progress or 0.0),
        started_at=ts(row.started_at),
        finished_at=ts(row.finished_at),
        cancel_requested_at=ts(row.cancel_requested_at),
        cancel_reason=row.cancel_reason,
        max_failures=row.max_failures,
    )


#: The columns an item's read selects, in this order: what `to_item` reads.
RECORD_COLUMNS = (
    "batch_id",
    "key",
    "position",
    "payload",
    "state",
    "created_at",
    "updated_at",
    "progress",
    "message",
    "attempt",
    "error",
    "history",
    "result",
    "started_at",
    "claimable_at",
    "finished_at",
)


def to_item(row: Any) -> ItemRecord:
    """An item's row, its `RECORD_COLUMNS` in their order (a row of SQLAlchemy's or of a
    driver's), as an `ItemRecord`, its texts as stored."""
    # Unpacked by position: a listing reads a thousand of these a page.
    (
        batch_id,
        key,
        position,
        payload,
        state,
        created_at,
        updated_at,
        progress,
        message,
        attempt,
        error,
        history,
        result,
        started_at,
        claimable_at,
        finished_at,
    ) = row
    if type(key) is bytes:  # MySQL's exact string (VARBINARY), as the driver gives it
        key = key.decode("utf-8")
    return ItemRecord(
        batch_id,
        key,
        position,
        payload,
        _STATES[state],
        # Every item of a batch was created at the batch's time: a listing's pages make it
        # once (a datetime costs about half a microsecond to make).
        _created.get(created_at) or _created_at(created_at),
        _utc(updated_at),
        progress,
        message,
        attempt,
        error,
        history,
        result,
        None if started_at is None else _utc(started_at),
        # The lease's deadline while running; while queued the column holds the retry
        # time, which is not a lease.
        _utc(claimable_at) if state == _R else None,
        None if finished_at is None else _utc(finished_at),
    )


_STATES = {state.value: state for state in ItemState}
_fromtimestamp = datetime.fromtimestamp


def _utc(value: float) -> datetime:
    return _fromtimestamp(value, UTC)


#: The creation time last read, as stored and as a datetime.
_created, _created_at = last_one(_utc)


# -- a new batch's rows, and its record --------------------------------------------------

_Q = ItemState.QUEUED.value


def batch_row(batch: NewBatch, now: float) -> dict[str, Any]:
    """A new batch's row, as `Statements.insert_of` ("batches") binds it."""
    total = len(batch.items)
    return {
        "v_id": batch.id,
        "v_parent_id": batch.parent_id,
        "v_idempotency_key": batch.idempotency_key,
        "v_metadata": dumps(batch.metadata),
        "v_total": total,
        "v_n_queued": total,
        "v_n_running": 0,
        "v_n_succeeded": 0,
        "v_n_failed": 0,
        "v_n_cancelled": 0,
        "v_created_at": now,
        "v_updated_at": now,
        "v_finished_at": None if total else now,
        "v_max_failures": batch.max_failures,
        "v_hook_done": False,
    }


def tag_rows(batch: NewBatch) -> list[dict[str, Any]]:
    """A new batch's tags: one per top-level scalar of its metadata (see `tag_name`)."""
    return [
        {"v_name": tag_name(name), "v_value": tag_value(value), "v_batch_id": batch.id}
        for name, value in batch.metadata.items()
        if isinstance(value, SCALARS)
    ]


def item_rows(batch: NewBatch, now: float, start: int, size: int) -> list[dict[str, Any]]:
    """The rows of ``size`` new items of ``batch`` from position ``start``, queued."""
    return [
        {
            "v_batch_id": batch.id,
            "v_position": start + offset,
            "v_key": key,
            "v_payload": payload,
            "v_state": _Q,
            "v_active": 1,
            "v_claimable_at": 0.0,
            "v_cancel_requested": False,
            "v_progress": 0.0,
            "v_attempt": 0,
            "v_created_at": now,
            "v_updated_at": now,
        }
        for offset, (key, payload) in enumerate(batch.items[start : start + size])
    ]


def new_record(batch: NewBatch, now: float) -> BatchRecord:
    """The record of ``batch`` as its rows were just written at ``now`` (what reading it
    back would give)."""
    total = len(batch.items)
    created = ts(now)
    assert created is not None
    return BatchRecord(
        id=batch.id,
        total=total,
        counts={
            ItemState.QUEUED: total,
            ItemState.RUNNING: 0,
            ItemState.SUCCEEDED: 0,
            ItemState.FAILED: 0,
            ItemState.CANCELLED: 0,
        },
        created_at=created,
        updated_at=created,
        metadata=loads(dumps(batch.metadata)),  # type: ignore[arg-type]
        parent_id=batch.parent_id,
        idempotency_key=batch.idempotency_key,
        finished_at=None if total else created,
        max_failures=batch.max_failures,
    )
