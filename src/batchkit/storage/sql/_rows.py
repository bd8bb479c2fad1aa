"""Rows to records, and how metadata is stored for filtering: the same in every dialect."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from ...codec import dumps, is_unicode, loads
from ...models import ItemState
from ...protocols import BatchRecord, ItemRecord

if TYPE_CHECKING:
    from sqlalchemy import Row

__all__ = ["SCALARS", "tag", "tag_name", "tag_value", "to_item", "to_record", "ts"]

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


def to_record(row: Row[Any]) -> BatchRecord:
    """A batch's row (with its ``running_progress``) as a `BatchRecord`."""
    m = row._mapping
    return BatchRecord(
        id=m["id"],
        total=m["total"],
        counts={
            ItemState.QUEUED: m["n_queued"],
            ItemState.RUNNING: m["n_running"],
            ItemState.SUCCEEDED: m["n_succeeded"],
            ItemState.FAILED: m["n_failed"],
            ItemState.CANCELLED: m["n_cancelled"],
        },
        created_at=ts(m["created_at"]),  # type: ignore[arg-type]
        updated_at=ts(m["updated_at"]),  # type: ignore[arg-type]
        metadata=loads(m["metadata"]),  # type: ignore[arg-type]
        parent_id=m["parent_id"],
        idempotency_key=m["idempotency_key"],
        running_progress=float(m["running_progress"] or 0.0),
        started_at=ts(m["started_at"]),
        finished_at=ts(m["finished_at"]),
        cancel_requested_at=ts(m["cancel_requested_at"]),
        cancel_reason=m["cancel_reason"],
        max_failures=m["max_failures"],
    )


def to_item(row: Row[Any]) -> ItemRecord:
    """An item's row as an `ItemRecord`, its texts as stored."""
    m = row._mapping
    return ItemRecord(
        batch_id=m["batch_id"],
        key=m["key"],
        position=m["position"],
        payload=m["payload"],
        state=ItemState(m["state"]),
        progress=m["progress"],
        message=m["message"],
        attempt=m["attempt"],
        error=m["error"],
        history=m["history"],
        result=m["result"],
        created_at=ts(m["created_at"]),  # type: ignore[arg-type]
        updated_at=ts(m["updated_at"]),  # type: ignore[arg-type]
        started_at=ts(m["started_at"]),
        # The lease's deadline while running; while queued the column holds the retry
        # time, which is not a lease.
        lease_expires_at=ts(m["claimable_at"]) if m["state"] == _R else None,
        finished_at=ts(m["finished_at"]),
    )
