"""What the scripts answer, read back: a batch's record, an item, a metadata filter."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, cast

from ...codec import loads, same_json
from ...models import ItemState
from ...protocols import BatchRecord, ItemRecord

if TYPE_CHECKING:
    from ...protocols import MetadataFilter

__all__ = ["matches", "text", "to_item", "to_record", "ts"]

#: Batches whose metadata one storage keeps decoded (metadata never changes).
_METADATA_KEPT = 10_000


def text(value: Any) -> Any:
    """A reply's bytes as text; anything else as it is."""
    return value.decode("utf-8") if isinstance(value, bytes) else value


def ts(value: Any) -> datetime | None:
    """A time the server wrote (seconds on its clock, as text), or `None`."""
    if value is None or value is False:
        return None
    return datetime.fromtimestamp(float(text(value)), UTC)


def to_record(flat: list[Any], metadata_cache: dict[str, dict[str, Any]]) -> BatchRecord:
    """A batch's record from its hash, as the RECORD script answers it (field, value...).

    ``metadata_cache`` keeps the decoded metadata of the batches seen, by id.
    """
    m = {text(flat[i]): flat[i + 1] for i in range(0, len(flat), 2)}
    batch_id = text(m["id"])
    metadata = metadata_cache.get(batch_id)
    if metadata is None:
        metadata = cast("dict[str, Any]", loads(text(m["metadata"])))
        if len(metadata_cache) < _METADATA_KEPT:
            metadata_cache[batch_id] = metadata  # metadata never changes
    parent = m.get("parent")
    idem = m.get("idem")
    max_failures = m.get("maxf")
    reason = m.get("cancel_reason")
    return BatchRecord(
        id=batch_id,
        total=int(m["total"]),
        counts={
            ItemState.QUEUED: int(m["q"]),
            ItemState.RUNNING: int(m["r"]),
            ItemState.SUCCEEDED: int(m["s"]),
            ItemState.FAILED: int(m["f"]),
            ItemState.CANCELLED: int(m["c"]),
        },
        created_at=ts(m["created"]),  # type: ignore[arg-type]
        updated_at=ts(m["updated"]),  # type: ignore[arg-type]
        metadata=dict(metadata),
        parent_id=None if parent is None else text(parent),
        idempotency_key=None if idem is None else text(idem),
        running_progress=float(text(m.get("running_progress", "0"))),
        started_at=ts(m.get("started")),
        finished_at=ts(m.get("finished")),
        cancel_requested_at=ts(m.get("cancel_at")),
        cancel_reason=None if reason is None else text(reason),
        max_failures=None if max_failures is None else int(max_failures),
    )


def to_item(batch_id: str, reply: list[Any]) -> ItemRecord:
    """An item's record from the fields the ITEM and ITEMS scripts answer, in their order."""
    (key, position, payload, state, progress, message, attempt, error, result) = reply[:9]
    # lease_end: the lease's deadline while running (its score in the running set, on
    # the server's clock like the other times), None otherwise.
    created, updated, started, finished, history, lease_end = reply[9:15]
    return ItemRecord(
        batch_id=batch_id,
        key=text(key),
        position=int(position),
        payload=text(payload),
        state=ItemState(text(state)),
        progress=float(text(progress)),
        message=None if message is None else text(message),
        attempt=int(attempt),
        error=None if error is None else text(error),
        history=None if history is None else text(history),
        result=None if result is None else text(result),
        created_at=ts(created),  # type: ignore[arg-type]
        updated_at=ts(updated),  # type: ignore[arg-type]
        started_at=ts(started),
        lease_expires_at=ts(lease_end),
        finished_at=ts(finished),
    )


def matches(metadata: dict[str, Any], wanted: MetadataFilter) -> bool:
    """Whether a batch's metadata has every key of the filter, with an equal value."""
    return all(k in metadata and same_json(metadata[k], v) for k, v in wanted.items())
