"""The data of batchkit: item and batch states, what goes in, what comes out."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

__all__ = [
    "ACTIVE_ITEM_STATES",
    "TERMINAL_BATCH_STATES",
    "TERMINAL_ITEM_STATES",
    "Batch",
    "BatchState",
    "BatchStatus",
    "Item",
    "ItemError",
    "ItemSpec",
    "ItemState",
    "Limits",
]


class ItemState(StrEnum):
    """Where one item is in its life. `succeeded`, `failed` and `cancelled` are final."""

    #: Waiting to be claimed (new, released, or waiting for its retry time).
    QUEUED = "queued"
    #: Claimed by a runner under a lease; the generator is working on it.
    RUNNING = "running"
    #: The generator returned a result.
    SUCCEEDED = "succeeded"
    #: The generator raised, timed out or returned something that is not JSON.
    FAILED = "failed"
    #: The batch was cancelled before the item could finish.
    CANCELLED = "cancelled"


#: States an item never leaves.
TERMINAL_ITEM_STATES: frozenset[ItemState] = frozenset(
    {ItemState.SUCCEEDED, ItemState.FAILED, ItemState.CANCELLED}
)
#: States of an item that still has work ahead of it.
ACTIVE_ITEM_STATES: frozenset[ItemState] = frozenset({ItemState.QUEUED, ItemState.RUNNING})


class BatchState(StrEnum):
    """The overall state of a batch, always derived from its items' counts."""

    #: Items are waiting and none has started yet.
    QUEUED = "queued"
    #: Some item has started and some item is not finished.
    RUNNING = "running"
    #: Every item finished and none failed or was cancelled.
    COMPLETED = "completed"
    #: Every item finished; some failed, some succeeded.
    COMPLETED_WITH_ERRORS = "completed_with_errors"
    #: Every item finished and every item failed.
    FAILED = "failed"
    #: Every item finished and at least one was cancelled.
    CANCELLED = "cancelled"


#: Batch states that no longer change.
TERMINAL_BATCH_STATES: frozenset[BatchState] = frozenset(
    {
        BatchState.COMPLETED,
        BatchState.COMPLETED_WITH_ERRORS,
        BatchState.FAILED,
        BatchState.CANCELLED,
    }
)


class Limits(BaseModel):
    """Size limits enforced at the edge, before anything is written.

    The defaults suit a web app that sends ids and options to a generator; raise them
    when your payloads or results are genuinely larger.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    #: Most items one batch may hold.
    max_items: int = Field(default=1_000_000, gt=0)
    #: Longest item key, in characters.
    max_key_length: int = Field(default=512, gt=0)
    #: Largest payload of one item, as UTF-8 JSON bytes.
    max_payload_bytes: int = Field(default=64 * 1024, gt=0)
    #: Largest result of one item, as UTF-8 JSON bytes.
    max_result_bytes: int = Field(default=256 * 1024, gt=0)
    #: Largest batch metadata, as UTF-8 JSON bytes.
    max_metadata_bytes: int = Field(default=16 * 1024, gt=0)
    #: Deepest nesting of lists and objects in any JSON value.
    max_json_depth: int = Field(default=32, gt=0)
    #: Longest progress message kept, in characters (longer ones are cut).
    max_message_length: int = Field(default=500, gt=0)
    #: Longest error message kept, in characters (longer ones are cut).
    max_error_length: int = Field(default=2_000, gt=0)
    #: Longest traceback kept, in characters (the end is kept, where the error is).
    max_traceback_length: int = Field(default=8_000, gt=0)
    #: Longest idempotency key, in characters.
    max_idempotency_key_length: int = Field(default=255, gt=0)
    #: Most earlier attempts' errors kept on an item (`Item.errors`); older ones are dropped.
    max_error_history: int = Field(default=10, gt=0)
    #: Longest cancel reason kept, in characters (longer ones are cut).
    max_reason_length: int = Field(default=500, gt=0)


class ItemSpec(BaseModel):
    """One item to submit: a key unique in its batch and a JSON payload."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    #: Unique within the batch; how the host finds the item again (a product id, a path).
    #: Strict: bytes are not silently decoded (a mapping's key must be a `str` too).
    key: str = Field(strict=True)
    #: Any JSON value the generator needs; `None` when the key says it all.
    payload: Any = None


class ItemError(BaseModel):
    """Why an item failed: the exception's type and message, and a bounded traceback."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    #: The exception's class name, e.g. ``"ValueError"``.
    type: str
    #: The exception's message, cut to `Limits.max_error_length`.
    message: str
    #: The end of the formatted traceback, cut to `Limits.max_traceback_length`.
    traceback: str | None = None
    #: The attempt that failed (1 for the first run).
    attempt: int | None = None


class Item(BaseModel):
    """One item of a batch as stored: its state, progress, error and result."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    batch_id: str
    key: str
    #: The item's index in submission order (0-based); pass it as ``after`` to page on.
    position: int
    payload: Any = None
    state: ItemState
    #: Fraction done, 0.0 to 1.0, as last reported by the generator (1.0 once succeeded).
    progress: float = 0.0
    #: The last short progress message ("rendering"), or `None`.
    message: str | None = None
    #: How many times the item has been claimed; never decreases.
    attempt: int = 0
    #: Why the item failed (or why its last attempt failed, while it waits for a retry).
    error: ItemError | None = None
    #: Every failed attempt's error, oldest first (the last `Limits.max_error_history`),
    #: including attempts lost with a runner that died (type ``"WorkerLost"``).
    errors: list[ItemError] = Field(default_factory=list)
    #: What the generator returned, once succeeded.
    result: Any = None
    created_at: datetime
    updated_at: datetime
    #: When the latest attempt started.
    started_at: datetime | None = None
    #: When the item reached its final state.
    finished_at: datetime | None = None


class Batch(BaseModel):
    """One submission: its id, metadata and the batch it retries, if any."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    id: str
    #: The batch this one retries (set by `BatchRunner.retry_failed`).
    parent_id: str | None = None
    #: JSON object the host attached at submission (an owner, a campaign, options).
    metadata: dict[str, Any] = Field(default_factory=dict)
    idempotency_key: str | None = None
    #: Number of items.
    total: int
    #: The rest of the batch is cancelled once more items than this have failed.
    max_failures: int | None = None
    created_at: datetime


class BatchStatus(BaseModel):
    """A batch's derived state, counts and progress; reading it costs O(1)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    batch_id: str
    state: BatchState
    total: int
    #: One entry per `ItemState`, summing to `total`.
    counts: dict[ItemState, int]
    #: Fraction of the whole batch done, 0.0 to 1.0 (finished items count whole).
    progress: float
    is_terminal: bool
    parent_id: str | None = None
    metadata: dict[str, Any] = Field(default_factory=dict)
    cancel_requested: bool = False
    #: Why the batch was cancelled (given to `BatchRunner.cancel`, or the `max_failures`
    #: limit that was passed), when it was.
    cancel_reason: str | None = None
    #: The rest of the batch is cancelled once more items than this have failed.
    max_failures: int | None = None
    created_at: datetime
    #: When an item last changed state.
    updated_at: datetime
    #: When the first item was claimed.
    started_at: datetime | None = None
    #: When the last item reached its final state.
    finished_at: datetime | None = None
