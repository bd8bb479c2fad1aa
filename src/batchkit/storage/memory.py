"""MemoryStorage: the in-process store, complete and public; the official test double."""

from __future__ import annotations

import heapq
import math
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import anyio
import anyio.lowlevel

from ..codec import dumps, loads, same_json
from ..exceptions import BatchNotFound, ItemNotFound
from ..ids import new_token
from ..models import ItemState
from ..protocols import (
    BatchRecord,
    Claim,
    ClaimRequest,
    FinishedBatch,
    FinishResult,
    GroupResult,
    ItemRecord,
    Lease,
    LeaseStatus,
    MetadataFilter,
    NewBatch,
    Outcome,
    Subscription,
)
from ..status import empty_counts
from ._base import AsyncContext, check_group
from ._bell import Bell

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable, Collection, Sequence

__all__ = ["MemoryStorage"]

_QUEUED = ItemState.QUEUED
_RUNNING = ItemState.RUNNING
_SUCCEEDED = ItemState.SUCCEEDED
_FAILED = ItemState.FAILED
_CANCELLED = ItemState.CANCELLED
_TERMINAL = frozenset({_SUCCEEDED, _FAILED, _CANCELLED})


@dataclass(slots=True)
class _Item:
    key: str
    position: int
    payload: str
    created_at: float
    updated_at: float
    state: ItemState = _QUEUED
    progress: float = 0.0
    message: str | None = None
    attempt: int = 0
    #: The error's JSON text, as the SQL and Redis storages keep it.
    error: str | None = None
    result: str | None = None
    history: str | None = None
    token: str | None = None
    deadline: float = 0.0
    not_before: float = 0.0
    started_at: float | None = None
    finished_at: float | None = None


@dataclass(slots=True)
class _Batch:
    id: str
    total: int
    metadata: str
    parent_id: str | None
    idempotency_key: str | None
    created_at: float
    updated_at: float
    items: list[_Item]
    index: dict[str, int]
    counts: dict[ItemState, int]
    #: Positions of queued items claimable now (lazy: stale entries are skipped).
    ready: list[int]
    #: (not_before, position) of queued items waiting for their retry time.
    delayed: list[tuple[float, int]] = field(default_factory=list)
    #: Positions of running items.
    running: set[int] = field(default_factory=set)
    started_at: float | None = None
    finished_at: float | None = None
    cancel_requested_at: float | None = None
    cancel_reason: str | None = None
    max_failures: int | None = None
    hook_done: bool = False
    hook_token: str | None = None
    hook_deadline: float = 0.0
    version: int = 0
    changed: anyio.Event | None = None

    def touch(self) -> None:
        self.version += 1
        if self.changed is not None:
            self.changed.set()
            self.changed = None


def _ts(value: float | None) -> datetime | None:
    return None if value is None else datetime.fromtimestamp(value, UTC)


def _matches(metadata: dict[str, Any], wanted: MetadataFilter | None) -> bool:
    if not wanted:
        return True
    return all(k in metadata and same_json(metadata[k], v) for k, v in wanted.items())


class MemoryStorage(AsyncContext):
    """Batches and items in this process's memory, under one `anyio.Lock`.

    It honours the whole Storage contract (it is the reference the other adapters are
    compared with), so it is the store to use in tests of code built on batchkit, in a
    notebook, or in a tool whose batches need not outlive the process. Everything is
    lost when the process ends.

    Args:
        clock: the wall clock in seconds since the epoch; tests pass a fake one to move
            leases and retry times forward without sleeping.
    """

    def __init__(self, *, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._lock = anyio.Lock(fast_acquire=True)
        self._batches: dict[str, _Batch] = {}
        self._idempotency: dict[str, str] = {}
        self._closed = False
        self._work = Bell()

    def __repr__(self) -> str:
        return f"MemoryStorage(batches={len(self._batches)})"

    async def aclose(self) -> None:
        """Nothing to release; the data stays readable until the object is dropped."""
        self._closed = True

    # -- creating and reading --------------------------------------------------------

    async def create_batch(self, batch: NewBatch) -> tuple[BatchRecord, bool]:
        """Create a batch with all its items at once (see `Storage.create_batch`)."""
        await anyio.lowlevel.checkpoint()
        async with self._lock:
            if batch.idempotency_key is not None:
                existing = self._idempotency.get(batch.idempotency_key)
                if existing is not None and existing in self._batches:
                    return self._record(self._batches[existing]), False
            if batch.id in self._batches:
                raise ValueError(f"batch id {batch.id!r} already exists")
            now = self._clock()
            items = [
                _Item(key=key, position=pos, payload=payload, created_at=now, updated_at=now)
                for pos, (key, payload) in enumerate(batch.items)
            ]
            index = {item.key: item.position for item in items}
            if len(index) != len(items):
                raise ValueError("item keys are not unique")
            counts = empty_counts()
            counts[_QUEUED] = len(items)
            row = _Batch(
                id=batch.id,
                total=len(items),
                metadata=dumps(batch.metadata),
                parent_id=batch.parent_id,
                idempotency_key=batch.idempotency_key,
                created_at=now,
                updated_at=now,
                items=items,
                index=index,
                counts=counts,
                ready=list(range(len(items))),  # sorted, so already a heap
                max_failures=batch.max_failures,
            )
            if not items:
                row.finished_at = now
            self._batches[batch.id] = row
            if batch.idempotency_key is not None:
                self._idempotency[batch.idempotency_key] = batch.id
            if items:
                self._work.ring()
            return self._record(row), True

    async def get_batch(self, batch_id: str) -> BatchRecord:
        """Read a batch and its counts (see `Storage.get_batch`)."""
        await anyio.lowlevel.checkpoint()
        return self._record(self._get(batch_id))

    async def get_item(self, batch_id: str, key: str) -> ItemRecord:
        """Read one item (see `Storage.get_item`)."""
        await anyio.lowlevel.checkpoint()
        row = self._get(batch_id)
        position = row.index.get(key)
        if position is None:
            raise ItemNotFound(batch_id, key)
        return self._item(row, row.items[position])

    async def list_items(
        self,
        batch_id: str,
        *,
        states: Collection[ItemState] | None = None,
        after: int | None = None,
        limit: int = 100,
    ) -> list[ItemRecord]:
        """List items in submission order (see `Storage.list_items`)."""
        await anyio.lowlevel.checkpoint()
        row = self._get(batch_id)
        start = 0 if after is None else max(0, after + 1)
        wanted = None if states is None else frozenset(states)
        page: list[ItemRecord] = []
        items = row.items
        for position in range(start, len(items)):
            if len(page) >= limit:
                break
            item = items[position]
            if wanted is None or item.state in wanted:
                page.append(self._item(row, item))
        return page

    async def list_batches(
        self,
        *,
        metadata: MetadataFilter | None = None,
        parent_id: str | None = None,
        before: str | None = None,
        limit: int = 100,
    ) -> list[BatchRecord]:
        """List batches newest first (see `Storage.list_batches`)."""
        await anyio.lowlevel.checkpoint()
        page: list[BatchRecord] = []
        for batch_id in sorted(self._batches, reverse=True):
            if len(page) >= limit:
                break
            if before is not None and batch_id >= before:
                continue
            row = self._batches[batch_id]
            if parent_id is not None and row.parent_id != parent_id:
                continue
            if metadata and not _matches(loads(row.metadata), metadata):  # type: ignore[arg-type]
                continue
            page.append(self._record(row))
        return page

    # -- claiming and finishing --------------------------------------------------------

    async def claim(self, request: ClaimRequest) -> Claim | None:
        """Claim the oldest claimable item (see `Storage.claim`)."""
        await anyio.lowlevel.checkpoint()
        async with self._lock:
            return self._claim(request, self._clock())

    async def heartbeat(self, lease: Lease, *, lease_seconds: float) -> LeaseStatus:
        """Extend a current lease (see `Storage.heartbeat`)."""
        await anyio.lowlevel.checkpoint()
        async with self._lock:
            found = self._leased(lease)
            if found is None:
                return LeaseStatus(held=False)
            row, item = found
            item.deadline = self._clock() + lease_seconds
            return LeaseStatus(held=True, cancel_requested=row.cancel_requested_at is not None)

    async def record_progress(
        self,
        lease: Lease,
        progress: float,
        message: str | None,
        *,
        lease_seconds: float | None = None,
    ) -> LeaseStatus:
        """Record progress of a running item (see `Storage.record_progress`)."""
        await anyio.lowlevel.checkpoint()
        async with self._lock:
            found = self._leased(lease)
            if found is None:
                return LeaseStatus(held=False)
            row, item = found
            now = self._clock()
            item.progress = progress
            item.message = message
            item.updated_at = now
            if lease_seconds is not None:
                item.deadline = now + lease_seconds
            row.touch()
            return LeaseStatus(held=True, cancel_requested=row.cancel_requested_at is not None)

    async def finish(
        self,
        lease: Lease,
        outcome: Outcome,
        *,
        then_claim: ClaimRequest | None = None,
    ) -> FinishResult:
        """End a leased attempt, and optionally claim the next item (see `Storage.finish`)."""
        await anyio.lowlevel.checkpoint()
        async with self._lock:
            now = self._clock()
            found = self._leased(lease)
            accepted = found is not None
            if found is not None:
                row, item = found
                self._end_attempt(row, item, outcome, now)
            claim = self._claim(then_claim, now) if then_claim is not None else None
            return FinishResult(accepted=accepted, claim=claim)

    async def finish_group(
        self,
        batch_id: str,
        succeeded: Sequence[tuple[Lease, Outcome]],
        *,
        claim: int,
        lease_seconds: float,
    ) -> GroupResult:
        """End several attempts and claim the batch's next items (see
        `GroupCommitter.finish_group`)."""
        check_group(batch_id, succeeded, claim)
        await anyio.lowlevel.checkpoint()
        async with self._lock:
            now = self._clock()
            accepted = []
            for lease, outcome in succeeded:
                found = self._leased(lease)
                if found is not None:
                    self._end_attempt(*found, outcome, now)
                accepted.append(found is not None)
            # Claimed for ever first, so that a lease that lapses at once does not make
            # an item of this group claimable again by the next claim of the group.
            request = ClaimRequest(math.inf, batch_ids=(batch_id,))
            claims: list[Claim] = []
            while len(claims) < claim and (one := self._claim(request, now)) is not None:
                claims.append(one)
            if claims:
                items = self._batches[batch_id].items
                for one in claims:
                    items[one.position].deadline = now + lease_seconds
            return GroupResult(accepted=accepted, claims=claims)

    async def cancel_batch(self, batch_id: str, *, reason: str | None = None) -> BatchRecord:
        """Request a batch's cancel (see `Storage.cancel_batch`)."""
        await anyio.lowlevel.checkpoint()
        async with self._lock:
            row = self._get(batch_id)
            if row.finished_at is not None:
                return self._record(row)
            now = self._clock()
            if row.cancel_requested_at is None:
                row.cancel_requested_at = now
                row.cancel_reason = reason
            for item in row.items:
                if item.state is _QUEUED or (item.state is _RUNNING and item.deadline <= now):
                    self._set_state(row, item, _CANCELLED, now)
            row.ready.clear()
            row.delayed.clear()
            row.touch()
            return self._record(row)

    # -- completion hooks, notification, retention -------------------------------------

    async def claim_finished_batch(
        self, *, lease_seconds: float, batch_id: str | None = None
    ) -> FinishedBatch | None:
        """Claim a finished batch whose hook is due (see `Storage.claim_finished_batch`)."""
        await anyio.lowlevel.checkpoint()
        async with self._lock:
            now = self._clock()
            if batch_id is not None:
                candidates = [self._get(batch_id)]
            else:
                candidates = list(self._batches.values())
            for row in candidates:
                if row.finished_at is None or row.hook_done:
                    continue
                if row.hook_token is not None and row.hook_deadline > now:
                    continue
                row.hook_token = new_token()
                row.hook_deadline = now + lease_seconds
                return FinishedBatch(record=self._record(row), token=row.hook_token)
            return None

    async def ack_finished_batch(self, batch_id: str, token: str) -> bool:
        """Record that a batch's hook ran (see `Storage.ack_finished_batch`)."""
        await anyio.lowlevel.checkpoint()
        async with self._lock:
            row = self._batches.get(batch_id)
            if row is None or row.hook_token != token:
                return False
            row.hook_done = True  # the token stays: the same ack again is told True
            return True

    @asynccontextmanager
    async def subscribe(self, batch_id: str) -> AsyncIterator[Subscription]:
        """Wait for changes of one batch (see `Storage.subscribe`)."""
        yield _MemorySubscription(self, batch_id)

    @asynccontextmanager
    async def subscribe_work(self) -> AsyncIterator[Subscription]:
        """Wait for new work (see `WorkAnnouncer.subscribe_work`)."""
        with self._work.flag() as flag:
            yield flag

    async def delete_batch(self, batch_id: str) -> bool:
        """Delete a batch and its items (see `Storage.delete_batch`)."""
        await anyio.lowlevel.checkpoint()
        async with self._lock:
            return self._delete(batch_id)

    async def delete_finished_batches(self, *, older_than: float) -> int:
        """Delete batches finished more than ``older_than`` seconds ago."""
        await anyio.lowlevel.checkpoint()
        async with self._lock:
            cutoff = self._clock() - older_than
            doomed = [
                row.id
                for row in self._batches.values()
                if row.finished_at is not None and row.finished_at <= cutoff
            ]
            for batch_id in doomed:
                self._delete(batch_id)
            return len(doomed)

    # -- internals ---------------------------------------------------------------------

    def _get(self, batch_id: str) -> _Batch:
        row = self._batches.get(batch_id)
        if row is None:
            raise BatchNotFound(batch_id)
        return row

    def _delete(self, batch_id: str) -> bool:
        row = self._batches.pop(batch_id, None)
        if row is None:
            return False
        if row.idempotency_key is not None:
            self._idempotency.pop(row.idempotency_key, None)
        row.touch()
        return True

    def _leased(self, lease: Lease) -> tuple[_Batch, _Item] | None:
        row = self._batches.get(lease.batch_id)
        if row is None:
            return None
        position = row.index.get(lease.key)
        if position is None:
            return None
        item = row.items[position]
        if item.state is not _RUNNING or item.token != lease.token:
            return None
        return row, item

    def _claim(self, request: ClaimRequest, now: float) -> Claim | None:
        if request.batch_ids is not None:
            rows = [self._batches[b] for b in request.batch_ids if b in self._batches]
            if len(rows) > 1:
                rows.sort(key=lambda r: r.id)
        else:
            rows = [r for r in self._batches.values() if r.finished_at is None]
        for row in rows:
            if row.finished_at is not None:
                continue
            if request.metadata and not _matches(loads(row.metadata), request.metadata):  # type: ignore[arg-type]
                continue
            item = self._next_claimable(row, now)
            if item is None:
                continue
            item.attempt += 1
            item.token = new_token()
            item.deadline = now + request.lease_seconds
            item.progress = 0.0
            item.message = None
            item.started_at = now
            if item.state is not _RUNNING:
                self._set_state(row, item, _RUNNING, now)
            else:
                item.updated_at = now
                row.touch()
            if row.started_at is None:
                row.started_at = now
            lease = Lease(row.id, item.key, item.token, item.attempt)
            return Claim(
                lease=lease,
                position=item.position,
                payload=loads(item.payload),
                history=item.history,
            )
        return None

    def _next_claimable(self, row: _Batch, now: float) -> _Item | None:
        """The lowest-position claimable item of a batch, or None (reaps when cancelled)."""
        items = row.items
        expired = [p for p in row.running if items[p].deadline <= now]
        if row.cancel_requested_at is not None:
            for position in expired:
                self._set_state(row, items[position], _CANCELLED, now)
            return None
        while row.delayed and row.delayed[0][0] <= now:
            _, position = heapq.heappop(row.delayed)
            item = items[position]
            if item.state is _QUEUED and item.not_before <= now:
                heapq.heappush(row.ready, position)
        while row.ready:
            position = row.ready[0]
            item = items[position]
            if item.state is _QUEUED and item.not_before <= now:
                break
            heapq.heappop(row.ready)  # stale: claimed, cancelled, or waiting again
        else:
            return items[min(expired)] if expired else None
        best = row.ready[0]
        if expired and min(expired) < best:
            return items[min(expired)]
        heapq.heappop(row.ready)
        return items[best]

    def _end_attempt(self, row: _Batch, item: _Item, outcome: Outcome, now: float) -> None:
        item.token = None
        item.deadline = 0.0
        state = outcome.state
        if state is _QUEUED and row.cancel_requested_at is not None:
            state = _CANCELLED
        if outcome.error is not None:
            item.error = outcome.error.model_dump_json()
        if outcome.history is not None:
            item.history = outcome.history
        if state is _SUCCEEDED:
            item.result = outcome.result
            item.progress = 1.0
            item.error = None
        if state is _QUEUED:
            item.progress = 0.0
            item.message = None
            item.not_before = now + max(0.0, outcome.delay)
            if item.not_before <= now:
                heapq.heappush(row.ready, item.position)
            else:
                heapq.heappush(row.delayed, (item.not_before, item.position))
            self._work.ring()
        self._set_state(row, item, state, now)

    def _set_state(self, row: _Batch, item: _Item, state: ItemState, now: float) -> None:
        previous = item.state
        if previous is _RUNNING:
            row.running.discard(item.position)
        if state is _RUNNING:
            row.running.add(item.position)
        elif state in _TERMINAL:
            item.finished_at = now
            item.token = None
        item.state = state
        item.updated_at = now
        row.counts[previous] -= 1
        row.counts[state] += 1
        row.updated_at = now
        if row.counts[_QUEUED] == 0 and row.counts[_RUNNING] == 0 and row.finished_at is None:
            row.finished_at = now
        row.touch()

    def _record(self, row: _Batch) -> BatchRecord:
        items = row.items
        running_progress = math.fsum(items[p].progress for p in row.running)
        return BatchRecord(
            id=row.id,
            total=row.total,
            counts=dict(row.counts),
            created_at=_ts(row.created_at),  # type: ignore[arg-type]
            updated_at=_ts(row.updated_at),  # type: ignore[arg-type]
            metadata=loads(row.metadata),  # type: ignore[arg-type]
            parent_id=row.parent_id,
            idempotency_key=row.idempotency_key,
            running_progress=running_progress,
            started_at=_ts(row.started_at),
            finished_at=_ts(row.finished_at),
            cancel_requested_at=_ts(row.cancel_requested_at),
            cancel_reason=row.cancel_reason,
            max_failures=row.max_failures,
        )

    def _item(self, row: _Batch, item: _Item) -> ItemRecord:
        return ItemRecord(
            batch_id=row.id,
            key=item.key,
            position=item.position,
            payload=item.payload,
            state=item.state,
            progress=item.progress,
            message=item.message,
            attempt=item.attempt,
            error=item.error,
            history=item.history,
            result=item.result,
            created_at=_ts(item.created_at),  # type: ignore[arg-type]
            updated_at=_ts(item.updated_at),  # type: ignore[arg-type]
            started_at=_ts(item.started_at),
            lease_expires_at=_ts(item.deadline) if item.state is _RUNNING else None,
            finished_at=_ts(item.finished_at),
        )


class _MemorySubscription:
    def __init__(self, storage: MemoryStorage, batch_id: str) -> None:
        self._storage = storage
        self._batch_id = batch_id
        row = storage._batches.get(batch_id)
        self._seen = -1 if row is None else row.version

    async def wait(self, timeout: float) -> None:
        row = self._storage._batches.get(self._batch_id)
        if row is None:
            await anyio.sleep(timeout)
            return
        if row.version != self._seen:
            self._seen = row.version
            await anyio.lowlevel.checkpoint()
            return
        if row.changed is None:
            row.changed = anyio.Event()
        with anyio.move_on_after(timeout):
            await row.changed.wait()
        self._seen = row.version
