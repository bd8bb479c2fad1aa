"""What the scripts answer, read back: a batch's record, an item, a metadata filter."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, cast

from ...codec import loads, same_json
from ...models import ItemState
from ...protocols import BatchRecord, Claim, GroupResult, ItemRecord, Lease
from .._base import last_one

if TYPE_CHECKING:
    from collections.abc import Sequence

    from ...protocols import MetadataFilter, Outcome

__all__ = ["ITEM_FIELDS", "matches", "text", "to_group", "to_item", "to_record", "ts"]

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


#: How many fields the ITEM and ITEMS scripts answer for an item (see ``item_fields``).
ITEM_FIELDS = 15


def to_item(batch_id: str, reply: list[Any]) -> ItemRecord:
    """An item's record from the `ITEM_FIELDS` fields the ITEM and ITEMS scripts answer
    for it, in their order."""
    # A listing reads a thousand of these a page: every field decoded in one pass (a Lua
    # false is no value, whichever protocol brings it), the record built by position, a
    # state found by its value.
    fields: list[Any] = [
        v.decode("utf-8") if type(v) is bytes else None if v is False else v for v in reply
    ]
    (key, position, payload, state, progress, message, attempt, error, result) = fields[:9]
    # The times are whole microseconds on the server's clock; lease_end, the lease's
    # deadline while running (its score in the running set, seconds as text), None
    # otherwise.
    created, updated, started, finished, history, lease_end = fields[9:15]
    return ItemRecord(
        batch_id,
        key,
        int(position),
        payload,
        _STATES[state],
        # Every item of a batch was created at the batch's time: made once a listing.
        _created.get(created) or _created_at(created),
        _utc(updated),
        float(progress),
        message,
        int(attempt),
        error,
        history,
        result,
        None if started is None else _utc(started),
        None if lease_end is None else _time(float(lease_end), UTC),
        None if finished is None else _utc(finished),
    )


_STATES = {state.value: state for state in ItemState}
_time = datetime.fromtimestamp
_MICROS = 1_000_000


def to_group(
    batch_id: str, token: str, succeeded: Sequence[tuple[Lease, Outcome]], reply: list[Any]
) -> GroupResult:
    """FINISH_GROUP's reply: whether each success was written, then the claims it made."""
    accepted = []
    for (lease, outcome), found in zip(succeeded, reply[2:], strict=False):
        if isinstance(found, list):  # tried again: did an earlier try land?
            accepted.append(outcome.landed(lease, text(found[0]), int(found[1])))
        else:
            accepted.append(bool(found))
    fields = reply[2 + len(succeeded) :]
    claims = [
        Claim(
            lease=Lease(batch_id, text(key), token, int(attempt)),
            position=int(position),
            payload=loads(text(payload)),
            history=None if history is None else text(history),
        )
        for key, position, payload, attempt, history in zip(*[iter(fields)] * 5, strict=True)
    ]
    return GroupResult(accepted=accepted, claims=claims)


def _utc(micros: int) -> datetime:
    return _time(micros / _MICROS, UTC)


#: The creation time last read, as the server wrote it and as a datetime.
_created, _created_at = last_one(_utc)


def matches(metadata: dict[str, Any], wanted: MetadataFilter) -> bool:
    """Whether a batch's metadata has every key of the filter, with an equal value."""
    return all(k in metadata and same_json(metadata[k], v) for k, v in wanted.items())
