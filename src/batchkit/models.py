"""The data of batchkit: item and batch states, what goes in, what comes out."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Self

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from .codec import MAX_JSON_DEPTH

if TYPE_CHECKING:
    from collections.abc import Mapping

__all__ = [
    "ACTIVE_ITEM_STATES",
    "LIMIT_CAPS",
    "MAX_ERROR_TEXT_LENGTH",
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


#: The most characters `Limits.max_error_length` and `Limits.max_traceback_length` allow
#: together: an item's error is stored as JSON in a MySQL/MariaDB ``TEXT`` column (65,535
#: bytes), where an escaped control character takes 6 bytes.
MAX_ERROR_TEXT_LENGTH = 10_000

_TEXT_COLUMN = "a MySQL/MariaDB TEXT column holds 65,535 bytes"
_SHARED = "an error's message and traceback share 10,000 characters"
_PACKET = "a statement on MariaDB must fit its default max_allowed_packet of 16 MiB"
#: The largest value each field of `Limits` accepts, and why: past it, some store could
#: not hold the value or read it back, and the stores would no longer behave the same.
LIMIT_CAPS: Mapping[str, tuple[int, str]] = MappingProxyType(
    {
        "max_items": (2**31 - 1, "SQL stores number items with 32-bit integers"),
        "max_key_length": (512, "the SQL item key column holds 512 characters"),
        "max_payload_bytes": (4 * 1024 * 1024, _PACKET),
        "max_result_bytes": (4 * 1024 * 1024, _PACKET),
        "max_metadata_bytes": (65_535, _TEXT_COLUMN),
        "max_json_depth": (
            MAX_JSON_DEPTH,
            "Python's json and pydantic work by recursion, which deeper values exhaust",
        ),
        "max_message_length": (16_383, f"{_TEXT_COLUMN}, 4 per character"),
        "max_error_length": (MAX_ERROR_TEXT_LENGTH - 1, _SHARED),
        "max_traceback_length": (MAX_ERROR_TEXT_LENGTH - 1, _SHARED),
        "max_idempotency_key_length": (255, "the SQL idempotency key column holds 255 characters"),
        "max_error_history": (50, _PACKET),
        "max_reason_length": (16_383, f"{_TEXT_COLUMN}, 4 per character"),
    }
)


class Limits(BaseModel):
    """Size limits enforced at the edge, before anything is written.

    The defaults suit a web app that sends ids and options to a generator; raise them
    when your payloads or results are genuinely larger. Each limit has a hard cap
    (`LIMIT_CAPS`), the largest value every store holds and reads back the same; a larger
    value is refused here, with a `pydantic.ValidationError` (a `ValueError`). Within
    the limits, every store behaves the same: what one accepts, all accept and give back
    exactly; what one refuses, all refuse before anything is written.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    #: Most items one batch may hold (at most 2,147,483,647).
    max_items: int = Field(default=1_000_000, gt=0)
    #: Longest item key, in characters (at most 512, the SQL key column).
    max_key_length: int = Field(default=512, gt=0)
    #: Largest payload of one item, as UTF-8 JSON bytes (at most 4 MiB: MariaDB's default
    #: ``max_allowed_packet`` of 16 MiB holds an item's row with its escapes).
    max_payload_bytes: int = Field(default=64 * 1024, gt=0)
    #: Largest result of one item, as UTF-8 JSON bytes (at most 4 MiB, as payloads).
    max_result_bytes: int = Field(default=256 * 1024, gt=0)
    #: Largest batch metadata, as UTF-8 JSON bytes (at most 65,535: a MySQL/MariaDB
    #: ``TEXT`` column).
    max_metadata_bytes: int = Field(default=16 * 1024, gt=0)
    #: Deepest nesting of lists and objects in any JSON value: payloads, results and
    #: metadata, whose top-level object counts as one level (at most 128,
    #: `batchkit.codec.MAX_JSON_DEPTH`: encoding and decoding JSON recurse, and deeper
    #: values would exhaust Python's stack).
    max_json_depth: int = Field(default=32, gt=0)
    #: Longest progress message kept, in characters (longer ones are cut; at most 16,383,
    #: four bytes a character in a MySQL/MariaDB ``TEXT`` column).
    max_message_length: int = Field(default=500, gt=0)
    #: Longest error message kept, in characters (longer ones are cut; together with
    #: `max_traceback_length` at most `MAX_ERROR_TEXT_LENGTH`, 10,000, which the defaults
    #: use: raise one, lower the other).
    max_error_length: int = Field(default=2_000, gt=0)
    #: Longest traceback kept, in characters (the end is kept, where the error is;
    #: together with `max_error_length` at most `MAX_ERROR_TEXT_LENGTH`, 10,000).
    max_traceback_length: int = Field(default=8_000, gt=0)
    #: Longest idempotency key, in characters (at most 255, the SQL column).
    max_idempotency_key_length: int = Field(default=255, gt=0)
    #: Most earlier attempts' errors kept on an item (`Item.errors`); older ones are
    #: dropped (at most 50: they are written with the item's result in one statement).
    max_error_history: int = Field(default=10, gt=0)
    #: Longest cancel reason kept, in characters (longer ones are cut; at most 16,383, as
    #: progress messages).
    max_reason_length: int = Field(default=500, gt=0)

    @field_validator("*")
    @classmethod
    def _capped(cls, value: int, info: ValidationInfo) -> int:
        name = info.field_name
        assert name is not None
        cap, why = LIMIT_CAPS[name]
        if value > cap:
            raise ValueError(f"{name} is at most {cap:,} ({why}); got {value:,}")
        return value

    @model_validator(mode="after")
    def _error_text_fits(self) -> Self:
        total = self.max_error_length + self.max_traceback_length
        if total > MAX_ERROR_TEXT_LENGTH:
            raise ValueError(
                f"max_error_length + max_traceback_length is at most "
                f"{MAX_ERROR_TEXT_LENGTH:,} characters (an item's error is stored in a "
                f"column of 65,535 bytes on MySQL/MariaDB); got {total:,}"
            )
        return self


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
    #: While running: when the current attempt's lease ends unless its runner renews it
    #: (by a heartbeat or a progress report). A time in the past means the runner stopped
    #: answering: the item is claimed again once a runner looks. `None` in every other
    #: state.
    lease_expires_at: datetime | None = None
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
