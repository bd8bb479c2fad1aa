"""The Storage contract and the Generator protocol.

A storage adapter persists; the core decides. Everything that crosses this boundary has
already been validated and encoded by the core: payloads and results arrive as JSON text,
ids are ones batchkit generated or checked. What a storage reads back it hands over as
records (`BatchRecord`, `ItemRecord`), the JSON texts as stored: the core decodes them.
Durations are relative (``lease_seconds``, ``delay``) and measured by the store's own
clock, so that runners on machines whose clocks disagree still agree on who holds a lease.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol, Self, runtime_checkable

from .models import ItemError, ItemState

if TYPE_CHECKING:
    from contextlib import AbstractAsyncContextManager
    from datetime import datetime
    from types import TracebackType

    from .context import ItemContext

__all__ = [
    "BatchInfo",
    "BatchRecord",
    "Claim",
    "ClaimRequest",
    "FinishResult",
    "FinishedBatch",
    "Generator",
    "GroupCommitter",
    "GroupResult",
    "ItemRecord",
    "Lease",
    "LeaseStatus",
    "NewBatch",
    "NewItem",
    "Outcome",
    "Storage",
    "Subscription",
    "SyncGenerator",
    "WorkAnnouncer",
]

MetadataFilter = Mapping[str, str | int | float | bool | None]


class NewItem(NamedTuple):
    """An item to create: its key and its payload as JSON text."""

    key: str
    payload: str


@dataclass(frozen=True, slots=True)
class NewBatch:
    """A batch to create, with all its items, in one atomic step."""

    id: str
    items: Sequence[NewItem]
    metadata: dict[str, Any] = field(default_factory=dict)
    parent_id: str | None = None
    idempotency_key: str | None = None
    #: Cancel the rest of the batch once more items than this have failed (`None`: never).
    max_failures: int | None = None


@dataclass(frozen=True, slots=True)
class BatchRecord:
    """What a storage knows of a batch; the core derives `BatchStatus` from it.

    Reading it must cost O(1) in the batch's size: ``counts`` are counters kept in step
    with every transition, and ``running_progress`` is the sum of the progress of the
    items now ``running`` (at most as many as there are runners).
    """

    id: str
    total: int
    counts: Mapping[ItemState, int]
    created_at: datetime
    updated_at: datetime
    metadata: dict[str, Any] = field(default_factory=dict)
    parent_id: str | None = None
    idempotency_key: str | None = None
    running_progress: float = 0.0
    started_at: datetime | None = None
    finished_at: datetime | None = None
    cancel_requested_at: datetime | None = None
    #: Why the cancel was requested, as its first requester gave it.
    cancel_reason: str | None = None
    max_failures: int | None = None


class ItemRecord(NamedTuple):
    """What a storage knows of an item, as stored; the core derives `Item` from it.

    The JSON texts are handed back as the core wrote them, unread: the core decodes them.
    Immutable; a named tuple, so that a listing of 100,000 items builds 100,000 of them
    at the cost of tuples (a frozen dataclass costs several times more to build).

    Attributes:
        batch_id: the item's batch.
        key: the item's key, unique in its batch.
        position: its index in submission order (0-based).
        payload: the payload as JSON text.
        state: the item's state.
        created_at: when the item was created (with its batch).
        updated_at: when the item last changed.
        progress: fraction done (0..1) as last recorded (1.0 once succeeded).
        message: the last progress message, or `None`.
        attempt: how many times the item has been claimed.
        error: the last `Outcome.error` kept, as its JSON text
            (`ItemError.model_dump_json`), or `None`.
        history: the last `Outcome.history` written, as it is, or `None` if none was.
        result: the result as JSON text, once succeeded; `None` otherwise.
        started_at: when the latest attempt started.
        lease_expires_at: while running, the lease's current deadline (past, once the
            lease has lapsed); `None` in every other state.
        finished_at: when the item reached its final state.
    """

    batch_id: str
    key: str
    position: int
    payload: str
    state: ItemState
    created_at: datetime
    updated_at: datetime
    progress: float = 0.0
    message: str | None = None
    attempt: int = 0
    error: str | None = None
    history: str | None = None
    result: str | None = None
    started_at: datetime | None = None
    lease_expires_at: datetime | None = None
    finished_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class ClaimRequest:
    """Which items a claim may take and for how long.

    Attributes:
        lease_seconds: how long the claim holds before another runner may take the item.
        batch_ids: only items of these batches; `None` for any batch.
        metadata: only items of batches whose metadata has these top-level values
            (compared as JSON, see `list_batches`).
    """

    lease_seconds: float
    batch_ids: tuple[str, ...] | None = None
    metadata: MetadataFilter | None = None


@dataclass(frozen=True, slots=True)
class Lease:
    """The claim a runner holds on a running item; every transition out of running names it."""

    batch_id: str
    key: str
    token: str
    attempt: int


@dataclass(frozen=True, slots=True)
class BatchInfo:
    """What running a batch's items needs of the batch: it never changes after submission."""

    metadata: dict[str, Any]
    max_failures: int | None = None


@dataclass(frozen=True, slots=True)
class Claim:
    """A claimed item: the lease, what the generator needs, and the item's history.

    ``history`` is the text the core last wrote with an outcome of this item (see
    `Outcome.history`), or `None` if it never wrote one; a storage keeps it as it is.

    ``batch`` is the item's batch's `BatchInfo`, when the storage read it with the claim
    at no extra round trip; `None` has the runner read the batch (once per batch).
    """

    lease: Lease
    position: int
    payload: Any
    history: str | None = None
    batch: BatchInfo | None = None


@dataclass(frozen=True, slots=True)
class LeaseStatus:
    """The answer to a heartbeat or a progress write."""

    #: The lease is still current; `False` means another runner took the item over.
    held: bool
    #: The batch's cancel was requested: stop and finish the item as cancelled.
    cancel_requested: bool = False


@dataclass(frozen=True, slots=True)
class Outcome:
    """How a running item ends its attempt. Build one with the class methods.

    ``history`` is the item's attempt history as the core encodes it (JSON text): the
    storage stores it with the outcome, unread, and hands it back with the item's next
    claim; `None` keeps the history already stored.
    """

    state: ItemState
    result: str | None = None
    error: ItemError | None = None
    delay: float = 0.0
    history: str | None = None

    @classmethod
    def succeeded(cls, result: str, *, history: str | None = None) -> Outcome:
        """The generator returned; ``result`` is JSON text."""
        return cls(ItemState.SUCCEEDED, result=result, history=history)

    @classmethod
    def failed(cls, error: ItemError, *, history: str | None = None) -> Outcome:
        """The attempt failed for good."""
        return cls(ItemState.FAILED, error=error, history=history)

    @classmethod
    def cancelled(cls, error: ItemError | None = None, *, history: str | None = None) -> Outcome:
        """The batch's cancel reached the running item."""
        return cls(ItemState.CANCELLED, error=error, history=history)

    @classmethod
    def released(
        cls, *, delay: float = 0.0, error: ItemError | None = None, history: str | None = None
    ) -> Outcome:
        """Back to queued, claimable after ``delay`` seconds (a retry keeps its ``error``).

        In a batch whose cancel was requested, a released item becomes cancelled instead.
        """
        return cls(ItemState.QUEUED, error=error, delay=delay, history=history)

    def landed(self, lease: Lease, state: ItemState | str, attempt: int) -> bool:
        """Whether an item found in ``state`` at ``attempt``, held by nobody, is this
        outcome of ``lease``'s attempt, written by a try whose answer was lost.

        A try of a write that ran but whose answer never came is refused when made again
        (the lease is gone): this tells a write that landed from one that did not. A
        release in a batch being cancelled ends the item cancelled: that counts as landed.
        Every adapter and the executor decide it here.
        """
        if attempt != lease.attempt:
            return False
        found = ItemState(state)
        return found is self.state or (
            self.state is ItemState.QUEUED and found is ItemState.CANCELLED
        )


@dataclass(frozen=True, slots=True)
class FinishResult:
    """The answer to `Storage.finish`."""

    #: The lease was current and the outcome was written; `False` means the outcome
    #: changed nothing.
    accepted: bool
    #: The next item, when ``then_claim`` was given and one was claimable (the claim is
    #: made whether or not the outcome was accepted).
    claim: Claim | None = None


@dataclass(frozen=True, slots=True)
class GroupResult:
    """The answer to `GroupCommitter.finish_group`."""

    #: One per outcome given, in its order: whether it was written (its lease was current).
    accepted: list[bool]
    #: The items claimed, lowest position first (fewer than asked when fewer are claimable).
    claims: list[Claim]


@dataclass(frozen=True, slots=True)
class FinishedBatch:
    """A finished batch whose completion hook is due, claimed under ``token``."""

    record: BatchRecord
    token: str


class Subscription(Protocol):
    """A reader's wait for the next change of one batch."""

    async def wait(self, timeout: float) -> None:
        """Return when the batch may have changed since the previous wait, or after ``timeout``.

        A change that happened between two waits (or since the subscription began) makes
        the next wait return at once, so a reader that reads and then waits misses nothing.
        """
        ...


@runtime_checkable
class WorkAnnouncer(Protocol):
    """A storage that announces new work, so that an idle worker waits instead of polling.

    Every adapter of batchkit is one; a `Worker` on a storage that is not polls every
    ``poll_interval`` seconds.
    """

    def subscribe_work(self) -> AbstractAsyncContextManager[Subscription]:
        """Begin waiting for new work anywhere in the storage (see `Subscription`).

        A wait returns soon after items became claimable by a change: a batch created, an
        item handed back to `queued` (a release, a retry). It may also return for no
        reason (a lost connection, a change that was not work): the waiter claims, and
        waits again. Items that become claimable by time alone (a retry's delay over, a
        lease lapsed) are not announced; the waiter's own timeout finds them.
        """
        ...


@runtime_checkable
class GroupCommitter(Protocol):
    """A storage that ends several attempts of one batch and claims its next items in one
    step, so that a runner of quick items pays one commit for several of them.

    Every adapter of batchkit is one. A runner on a storage that is not writes each
    outcome alone (`Storage.finish`).
    """

    async def finish_group(
        self,
        batch_id: str,
        succeeded: Sequence[tuple[Lease, Outcome]],
        *,
        claim: int,
        lease_seconds: float,
    ) -> GroupResult:
        """End each leased attempt as its `Outcome.succeeded`, then claim up to ``claim``
        items of the batch, all in one atomic step.

        Each outcome is fenced by its lease as `Storage.finish` fences it; a refused one
        changes nothing and the others are written all the same. The claims are those
        ``claim`` calls of `Storage.claim` for this batch alone would make, one after the
        other, under ``lease_seconds``, each of a different item (a lease that lapses at
        once does not make an item of the group claimable again within it). A batch that
        is gone refuses every outcome and has nothing to claim.

        Raises:
            ValueError: an outcome is not a success, a lease is of another batch, or
                ``claim`` is negative.
        """
        ...


@runtime_checkable
class Storage(Protocol):
    """Where batches and items live. Every adapter passes `batchkit.testing.StorageContract`.

    Rules every method keeps:

    * Terminal items (`succeeded`, `failed`, `cancelled`) never change.
    * Counters change in the same atomic step as the item they count, so counts always
      sum to the total and equal a recount.
    * A transition out of `running` names its `Lease`; when the lease is no longer
      current (another runner claimed the item after it expired) it changes nothing.
    * In a batch whose cancel was requested nothing becomes `queued` again.
    * A step that commits reaches its caller: where a cancellation could arrive between
      the commit and the return (a network store), the adapter shields the step, or a
      claim it made would be lost until its lease lapsed.
    """

    async def __aenter__(self) -> Self: ...

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...

    async def aclose(self) -> None:
        """Release connections this storage opened. A closed storage is not used again."""
        ...

    async def create_batch(self, batch: NewBatch) -> tuple[BatchRecord, bool]:
        """Create a batch with all its items, atomically: all are written or none.

        Args:
            batch: the batch, its validated items (keys unique) in submission order.

        Returns:
            The batch's record and `True`; or, when ``batch.idempotency_key`` was already
            used, the existing batch's record and `False` (nothing is written).
        """
        ...

    async def get_batch(self, batch_id: str) -> BatchRecord:
        """Read a batch and its counts in O(1).

        Raises:
            BatchNotFound: no batch has this id.
        """
        ...

    async def get_item(self, batch_id: str, key: str) -> ItemRecord:
        """Read one item's record, its JSON texts as stored (the core builds the `Item`).

        A running item's ``lease_expires_at`` is its lease's current deadline (past, once
        the lease has lapsed); it is `None` in every other state.

        Raises:
            BatchNotFound: no batch has this id.
            ItemNotFound: the batch has no item with this key.
        """
        ...

    async def list_items(
        self,
        batch_id: str,
        *,
        states: Collection[ItemState] | None = None,
        after: int | None = None,
        limit: int = 100,
    ) -> list[ItemRecord]:
        """List a batch's item records in submission order (as `get_item` reads them).

        Args:
            batch_id: the batch.
            states: only items in one of these states; `None` for all.
            after: only items whose ``position`` is greater (the last position of the
                previous page).
            limit: at most this many items.

        Raises:
            BatchNotFound: no batch has this id.
        """
        ...

    async def list_batches(
        self,
        *,
        metadata: MetadataFilter | None = None,
        parent_id: str | None = None,
        before: str | None = None,
        limit: int = 100,
    ) -> list[BatchRecord]:
        """List batches newest first (batch ids sort by creation time).

        Args:
            metadata: only batches whose metadata has these top-level keys with these
                scalar values, compared as JSON (``True`` does not match ``1``, ``1`` does
                not match ``1.0``; a missing key matches nothing, not even ``None``).
            parent_id: only batches that retry this batch.
            before: only batches whose id sorts before this one (the last id of the
                previous page).
            limit: at most this many batches.
        """
        ...

    async def claim(self, request: ClaimRequest) -> Claim | None:
        """Take the oldest claimable item and make it `running` under a new lease.

        Claimable: `queued` with no retry time or one that has passed, or `running` with an
        expired lease. Oldest: the earliest batch first, then the lowest position. The
        item's ``attempt`` grows by one, its progress and message are cleared. Items of a
        batch whose cancel was requested are never claimed; such an item found `running`
        with an expired lease is made `cancelled`.

        Returns:
            The claim, or `None` when nothing is claimable now.
        """
        ...

    async def heartbeat(self, lease: Lease, *, lease_seconds: float) -> LeaseStatus:
        """Extend a lease to ``lease_seconds`` from now, if it is still current."""
        ...

    async def record_progress(
        self,
        lease: Lease,
        progress: float,
        message: str | None,
        *,
        lease_seconds: float | None = None,
    ) -> LeaseStatus:
        """Record a running item's progress (0..1) and message; optionally extend the lease."""
        ...

    async def finish(
        self,
        lease: Lease,
        outcome: Outcome,
        *,
        then_claim: ClaimRequest | None = None,
    ) -> FinishResult:
        """End the leased attempt with ``outcome``, fenced by the lease.

        Args:
            lease: the lease the item was claimed under.
            outcome: succeeded, failed, cancelled, or released back to queued.
            then_claim: also claim the next item, in the same step where the store can.

        Returns:
            Whether the outcome was written, and the next claim if one was asked for.
        """
        ...

    async def cancel_batch(self, batch_id: str, *, reason: str | None = None) -> BatchRecord:
        """Request the batch's cancel: queued items become `cancelled` at once.

        Running items keep running until their runner sees the request (its next
        heartbeat or progress write answers ``cancel_requested``) and finishes them as
        cancelled; a running item whose lease has already expired is cancelled at once.
        Cancelling a finished batch changes nothing.

        Args:
            batch_id: the batch.
            reason: why, kept as the batch's ``cancel_reason``; the first request's
                reason stays when the cancel is requested again.

        Raises:
            BatchNotFound: no batch has this id.
        """
        ...

    async def claim_finished_batch(
        self, *, lease_seconds: float, batch_id: str | None = None
    ) -> FinishedBatch | None:
        """Claim a finished batch whose completion hook has not been acknowledged.

        A claim not acknowledged within ``lease_seconds`` may be taken again, so a hook
        whose runner died still fires.

        Raises:
            BatchNotFound: ``batch_id`` was given and no batch has it.
        """
        ...

    async def ack_finished_batch(self, batch_id: str, token: str) -> bool:
        """Record that the completion hook ran.

        Returns:
            `True` when the claim under ``token`` is acknowledged, by this call or an
            earlier one with the same token (a retry whose first try's reply was lost);
            `False` when ``token`` is not the batch's current claim (the hook was claimed
            again since, its lease lapsed), or there is no such batch.
        """
        ...

    def subscribe(self, batch_id: str) -> AbstractAsyncContextManager[Subscription]:
        """Begin waiting for changes of one batch (see `Subscription`)."""
        ...

    async def delete_batch(self, batch_id: str) -> bool:
        """Delete a batch and its items; `False` when there was none."""
        ...

    async def delete_finished_batches(self, *, older_than: float) -> int:
        """Delete batches that finished more than ``older_than`` seconds ago (retention).

        A batch whose completion hook has not run yet is deleted too: retention wins.

        Returns:
            How many batches were deleted.
        """
        ...


class Generator(Protocol):
    """The host's function that does one item's work and returns a JSON result."""

    async def __call__(self, ctx: ItemContext, /) -> Any: ...


class SyncGenerator(Protocol):
    """A plain function doing one item's work; it runs in a worker thread."""

    def __call__(self, ctx: ItemContext, /) -> Any: ...
