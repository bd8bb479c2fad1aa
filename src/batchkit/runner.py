"""BatchRunner: submit batches, run their items, report status, retry and cancel."""

from __future__ import annotations

import heapq
import logging
from collections.abc import AsyncIterator, Collection, Iterable, Mapping
from contextlib import AsyncExitStack
from typing import TYPE_CHECKING, Any

import anyio

from ._batch_info import BatchInfoCache
from ._collector import collector_paused
from ._execution import build_executor
from ._failure_limit import check_max_failures
from ._hooks import BatchFinishedHook, fire_hook
from ._options import (
    check_generator,
    check_metadata_filter,
    check_metrics,
    positive_int,
    positive_seconds,
    seconds,
)
from ._secrets import redact
from ._tracing import RESERVED_PREFIX, submit_span, tracer
from ._watch import watch_loop
from .codec import JSONError, clean_text, encode, is_unicode, loads
from .exceptions import BatchNotFound, InvalidBatch
from .ids import is_batch_id, new_batch_id
from .models import Batch, BatchStatus, Item, ItemSpec, ItemState, Limits
from .protocols import ClaimRequest, MetadataFilter, NewBatch, NewItem, Subscription
from .retry import RetryPolicy
from .status import batch_from_record, item_from_record, status_from_record

if TYPE_CHECKING:
    from ._execution import Executor
    from .metrics import Metrics
    from .protocols import Generator, Storage, SyncGenerator

__all__ = ["BatchFinishedHook", "BatchRunner"]

logger = logging.getLogger("batchkit.runner")

_ITEMS_PAGE_MAX = 1_000


class BatchRunner:
    """Submits batches and executes their items with one generator.

    Args:
        storage: where batches live: `MemoryStorage`, or any adapter of the `Storage` protocol.
        generator: ``async def generate(ctx) -> result`` doing one item's work; a plain
            function is accepted too and runs in a worker thread.
        concurrency: how many items of a batch run at once (1: one after the other, in
            submission order).
        item_timeout: seconds after which an item's attempt fails with ``TimeoutError``;
            `None` for no limit.
        lease_seconds: how long a claim on a running item holds without a heartbeat;
            heartbeats renew it every third of this while the generator works, so only a
            crashed runner lets it lapse.
        progress_interval: at most one progress write per item per this many seconds.
        group_commit: when items are quick, an item's success may wait this many seconds
            to be written with the next ones' in one step, and the items a slot claims
            ahead (as many as it runs in that time, at most 16) wait no longer to start:
            one commit for several items. A reader sees a success late, or an item
            `running` early, by this much at most; a crash loses nothing beyond what a
            crash loses anyway (the items run again once their leases lapse). 0 writes
            each outcome alone.
        poll_interval: how often a waiting reader or runner looks again when the storage
            cannot notify it of changes.
        limits: size limits on keys, payloads, results and messages.
        on_batch_finished: called once per batch when it becomes terminal, with its final
            status; with many runners and crashes it still fires once.
        retry: automatic retries of failed items inside the batch (`RetryPolicy`);
            `None` for none: a failure is final.
        block_warning: report in the log each time the event loop was blocked this many
            seconds or more while items ran (a generator doing blocking work); `None` to
            not watch.
        metrics: told of every item's events in `run`, and reads how many run
            (`batchkit.metrics`, as ``worker="in-process"``); `None` for none.
    """

    def __init__(
        self,
        storage: Storage,
        generator: Generator | SyncGenerator,
        *,
        concurrency: int = 1,
        item_timeout: float | None = None,
        lease_seconds: float = 30.0,
        progress_interval: float = 0.5,
        group_commit: float = 0.005,
        poll_interval: float = 1.0,
        limits: Limits | None = None,
        on_batch_finished: BatchFinishedHook | None = None,
        retry: RetryPolicy | None = None,
        block_warning: float | None = 1.0,
        metrics: Metrics | None = None,
    ) -> None:
        check_generator(generator)
        check_metrics(metrics)
        positive_int("concurrency", concurrency)
        positive_seconds("item_timeout", item_timeout, allow_none=True)
        positive_seconds("lease_seconds", lease_seconds)
        positive_seconds("progress_interval", progress_interval)
        positive_seconds("poll_interval", poll_interval)
        positive_seconds("block_warning", block_warning, allow_none=True)
        if retry is not None and not isinstance(retry, RetryPolicy):
            raise TypeError(f"retry must be a RetryPolicy or None, got {retry!r}")
        self.storage = storage
        self.generator = generator
        self.concurrency = concurrency
        self.item_timeout = item_timeout
        self.lease_seconds = float(lease_seconds)
        self.progress_interval = float(progress_interval)
        self.group_commit = seconds("group_commit", group_commit, allow_zero=True)
        self.poll_interval = float(poll_interval)
        self.limits = limits or Limits()
        self.on_batch_finished = on_batch_finished
        self.retry = retry
        self.block_warning = block_warning
        self.metrics = metrics
        self._batch_info = BatchInfoCache(storage)
        #: The executors of this runner's `run` calls under way (`cancel` stops their items).
        self._running: set[Executor] = set()

    def __repr__(self) -> str:
        # A storage of the host's own may show its URL whole: hidden here all the same.
        storage = redact(repr(self.storage))
        return f"BatchRunner(storage={storage}, concurrency={self.concurrency})"

    # -- submitting ----------------------------------------------------------------------

    async def submit(
        self,
        items: Iterable[ItemSpec | Mapping[str, Any] | str],
        *,
        metadata: Mapping[str, Any] | None = None,
        idempotency_key: str | None = None,
        max_failures: int | None = None,
    ) -> Batch:
        """Validate and persist a batch; return at once without running anything.

        Args:
            items: `ItemSpec`s, mappings with ``key`` and ``payload``, or plain string keys.
            metadata: a JSON object kept with the batch (an owner, options); batches can
                be listed by its top-level values.
            idempotency_key: submitting the same key again returns the batch it made the
                first time and writes nothing (the items of the second call are ignored).
                Keys are shared by everyone who submits to the store: scope them (by
                owner, say) so that one user's key cannot return another's batch. Keys
                starting with ``batchkit:`` are batchkit's own (`retry_failed`).
            max_failures: once more items than this have failed (for good, after their
                retries), the rest of the batch is cancelled, with the reason recorded
                (`BatchStatus.cancel_reason`); `None` runs every item whatever fails.

        Raises:
            InvalidBatch: the batch is empty, too large, has a duplicate or invalid key, a
                payload that is not JSON or over the size limit, invalid metadata, or an
                idempotency key in batchkit's own namespace. The message names the
                offending item; nothing is written.
        """
        limit = check_max_failures(max_failures)
        _check_not_reserved(idempotency_key)
        new = self._validate(items, metadata, idempotency_key, max_failures=limit)
        return await self._create(new)

    def _validate(
        self,
        items: Iterable[ItemSpec | Mapping[str, Any] | str],
        metadata: Mapping[str, Any] | None,
        idempotency_key: str | None,
        parent_id: str | None = None,
        max_failures: int | None = None,
    ) -> NewBatch:
        limits = self.limits
        if isinstance(items, str | bytes | Mapping):
            raise InvalidBatch(
                "items must be an iterable of items (ItemSpec, mappings or string keys), "
                f"not a single {type(items).__name__}"
            )
        meta = self._validate_metadata(metadata)
        if idempotency_key is not None and (
            not isinstance(idempotency_key, str)
            or not idempotency_key
            or len(idempotency_key) > limits.max_idempotency_key_length
            or "\x00" in idempotency_key
            or not (idempotency_key.isascii() or is_unicode(idempotency_key))
        ):
            raise InvalidBatch(
                "idempotency_key must be a non-empty string of at most "
                f"{limits.max_idempotency_key_length} characters without NUL, valid Unicode"
            )
        max_items = limits.max_items
        max_key = limits.max_key_length
        max_payload = limits.max_payload_bytes
        max_depth = limits.max_json_depth
        seen: dict[str, int] = {}
        out: list[NewItem] = []
        null = "null"
        for index, raw in enumerate(items):
            if index >= max_items:
                raise InvalidBatch(f"a batch holds at most {max_items} items (Limits.max_items)")
            if type(raw) is str:
                key, payload, has_payload = raw, None, False
            elif isinstance(raw, ItemSpec):
                key, payload, has_payload = raw.key, raw.payload, True
            elif isinstance(raw, Mapping):
                extra = set(raw) - {"key", "payload"}
                if "key" not in raw or extra:
                    what = f"unknown fields {sorted(map(str, extra))}" if extra else "no 'key'"
                    raise InvalidBatch(f"item #{index}: {what}; expected {{'key', 'payload'}}")
                key, payload, has_payload = raw["key"], raw.get("payload"), True
            else:
                raise InvalidBatch(
                    f"item #{index}: {type(raw).__name__} is not an item; "
                    "use ItemSpec(key=..., payload=...), a mapping or a string key"
                )
            if type(key) is not str:
                raise InvalidBatch(f"item #{index}: key must be a string, got {key!r}")
            if not key or len(key) > max_key or "\x00" in key:
                shown = key if len(key) <= 80 else key[:77] + "..."
                raise InvalidBatch(
                    f"item #{index} (key {shown!r}): a key must be 1 to {max_key} characters "
                    "without NUL"
                )
            if not (key.isascii() or is_unicode(key)):
                raise InvalidBatch(f"item #{index} (key {key!r}): key is not valid Unicode")
            first = seen.setdefault(key, index)
            if first != index:
                raise InvalidBatch(f"item #{index} (key {key!r}): duplicate of item #{first}")
            if not has_payload or payload is None:
                text = null
            else:
                try:
                    text = encode(
                        payload, max_bytes=max_payload, max_depth=max_depth, what="payload"
                    )
                except JSONError as exc:
                    raise InvalidBatch(f"item #{index} (key {key!r}): {exc}") from None
            out.append(NewItem(key, text))
        if not out:
            raise InvalidBatch("a batch needs at least one item")
        return NewBatch(
            id=new_batch_id(),
            items=out,
            metadata=meta,
            parent_id=parent_id,
            idempotency_key=idempotency_key,
            max_failures=max_failures,
        )

    def _validate_metadata(self, metadata: Mapping[str, Any] | None) -> dict[str, Any]:
        if metadata is None:
            return {}
        if not isinstance(metadata, Mapping):
            raise InvalidBatch(f"metadata must be a mapping, got {type(metadata).__name__}")
        limits = self.limits
        try:
            text = encode(
                dict(metadata),
                max_bytes=limits.max_metadata_bytes,
                max_depth=limits.max_json_depth,
                what="metadata",
            )
        except JSONError as exc:
            raise InvalidBatch(str(exc)) from None
        reserved = [k for k in metadata if isinstance(k, str) and k.startswith(RESERVED_PREFIX)]
        if reserved:
            raise InvalidBatch(
                f"metadata key {reserved[0]!r}: keys starting with {RESERVED_PREFIX!r} are "
                "batchkit's own"
            )
        # A copy of its own, made of JSON types only, that the caller cannot change later.
        return loads(text)  # type: ignore[return-value]

    async def _create(self, new: NewBatch) -> Batch:
        tracing = tracer()
        if tracing is None:
            return await self._store(new)
        span = submit_span(tracing, new.id, len(new.items), new.parent_id, new.metadata)
        try:
            return await self._store(new)
        except BaseException as exc:
            span.record_exception(exc)
            raise
        finally:
            span.end()

    async def _store(self, new: NewBatch) -> Batch:
        record, created = await self.storage.create_batch(new)
        if new.parent_id is not None and record.parent_id != new.parent_id:
            # The retry's key was taken first by a batch that is not this retry (a key
            # chosen by someone else, or written before the namespace was reserved):
            # that batch is not the caller's to see.
            raise InvalidBatch(
                f"the idempotency key {new.idempotency_key!r} is already used by a batch "
                f"that is not a retry of {new.parent_id}; pass an idempotency_key of your own"
            )
        if created:
            logger.info("batch submitted", extra={"batch_id": record.id, "total": record.total})
        return batch_from_record(record)

    # -- running -----------------------------------------------------------------------

    async def run(self, batch_id: str) -> BatchStatus:
        """Run the batch's claimable items until the batch is terminal; return its status.

        Items are claimed in submission order, ``concurrency`` at a time. An item whose
        generator raises (any `BaseException`) or runs past ``item_timeout`` fails its
        attempt and the next one starts; nothing raised by a generator escapes, except
        `KeyboardInterrupt` and `SystemExit`: once the failed attempt is written, the
        other running items are handed back to `queued` and `run` raises it. When
        items are held by other runners, `run` waits for them. Cancelling the task that
        runs it puts its running items back to `queued` (ready for the next `run`) and
        propagates the cancellation.

        Raises:
            BatchNotFound: no batch has this id.
        """
        self._check_id(batch_id)
        await self._batch_info(batch_id)  # fails early on an unknown batch
        request = ClaimRequest(lease_seconds=self.lease_seconds, batch_ids=(batch_id,))
        executor = self._executor()
        stop = anyio.CancelScope()
        executor.on_stopping = stop.cancel
        untrack = None
        if self.metrics is not None:
            untrack = self.metrics.track("in-process", lambda: len(executor.running()))
        self._running.add(executor)
        try:
            with stop:
                status = await self._run(batch_id, request, executor)
        except BaseExceptionGroup as group:
            _reraise_single(group)
            raise
        finally:
            self._running.discard(executor)
            if untrack is not None:
                untrack()
        if executor.stopping is not None:
            raise executor.stopping
        await self._fire_hook(batch_id)
        return status

    async def _run(self, batch_id: str, request: ClaimRequest, executor: Executor) -> BatchStatus:
        async with AsyncExitStack() as stack:
            if self.block_warning is not None:
                watchers = await stack.enter_async_context(anyio.create_task_group())
                await watchers.start(watch_loop, executor, self.block_warning)
                stack.callback(watchers.cancel_scope.cancel)
            changes: Subscription | None = None
            while True:
                await self._run_slots(executor, request)
                status = await self.status(batch_id)
                if status.is_terminal:
                    break
                # Items are running elsewhere or waiting for their retry time. The
                # subscription starts only now (a batch run through by this runner
                # never needs one), then the items are looked at once more, so a
                # change made before it started is not missed.
                if changes is None:
                    changes = await stack.enter_async_context(self.storage.subscribe(batch_id))
                    continue
                await changes.wait(self._wait_time(executor))
        return status

    def _wait_time(self, executor: Executor) -> float:
        # A retry this runner scheduled is due sooner than the next poll: wake for it,
        # a little late rather than early (the store's clock decides). One that fell due
        # since the last look gets one quick look more.
        due = executor.retries_due
        now = anyio.current_time()
        passed = False
        while due and due[0] <= now:
            heapq.heappop(due)
            passed = True
        if passed:
            return 0.005
        if due:
            return min(self.poll_interval, due[0] - now + 0.005)
        return self.poll_interval

    async def _run_slots(self, executor: Executor, request: ClaimRequest) -> None:
        if self.concurrency == 1:
            await executor.run_slot(request)
            return
        first = await self.storage.claim(request)
        if first is None:
            return
        async with anyio.create_task_group() as tg:
            for _ in range(self.concurrency - 1):
                tg.start_soon(executor.run_slot, request)
            # The claimed item runs in this task, at once: a new task cancelled before
            # its first step would leave the claim running until its lease lapsed.
            await executor.run_slot(request, first)

    def _executor(self) -> Executor:
        return build_executor(self, self._batch_info)

    async def _fire_hook(self, batch_id: str) -> None:
        if self.on_batch_finished is not None:
            await fire_hook(
                self.storage,
                self.on_batch_finished,
                lease_seconds=self.lease_seconds,
                batch_id=batch_id,
            )

    # -- reading -------------------------------------------------------------------------

    async def status(self, batch_id: str) -> BatchStatus:
        """The batch's derived state, counts and progress (one O(1) read).

        Raises:
            BatchNotFound: no batch has this id.
        """
        self._check_id(batch_id)
        return status_from_record(await self.storage.get_batch(batch_id))

    async def items(
        self,
        batch_id: str,
        *,
        state: ItemState | str | Collection[ItemState | str] | None = None,
        limit: int = 100,
        after: int | None = None,
    ) -> list[Item]:
        """A page of the batch's items in submission order.

        Args:
            batch_id: the batch.
            state: only items in this state (or these states).
            limit: page size, 1 to 1000.
            after: the ``position`` of the last item of the previous page.

        Raises:
            BatchNotFound: no batch has this id.
            ValueError: an unknown state or a bad ``limit``/``after``.
        """
        self._check_id(batch_id)
        states: frozenset[ItemState] | None
        if state is None:
            states = None
        elif isinstance(state, str):
            states = frozenset({ItemState(state)})
        else:
            states = frozenset(ItemState(s) for s in state)
        if (
            not isinstance(limit, int)
            or isinstance(limit, bool)
            or not 1 <= limit <= _ITEMS_PAGE_MAX
        ):
            raise ValueError(f"limit must be from 1 to {_ITEMS_PAGE_MAX}, got {limit!r}")
        if after is not None and (not isinstance(after, int) or isinstance(after, bool)):
            raise ValueError(f"after must be an item position (int), got {after!r}")
        if after is not None:
            if after >= _LAST_POSITION:
                await self.status(batch_id)  # an unknown batch is still BatchNotFound
                return []  # past every position a store holds (its columns are 32-bit)
            after = max(after, -1)
        records = await self.storage.list_items(batch_id, states=states, after=after, limit=limit)
        with collector_paused():
            return [item_from_record(record) for record in records]

    async def item(self, batch_id: str, key: str) -> Item:
        """One item of a batch, by key.

        Raises:
            BatchNotFound: no batch has this id.
            ItemNotFound: the batch has no such key.
        """
        self._check_id(batch_id)
        return item_from_record(await self.storage.get_item(batch_id, key))

    async def batches(
        self,
        *,
        metadata: MetadataFilter | None = None,
        limit: int = 50,
        before: str | None = None,
    ) -> list[BatchStatus]:
        """Batches newest first, with their derived status.

        Args:
            metadata: only batches whose metadata has these top-level values
                (``{"owner": "ada"}``).
            limit: page size, 1 to 1000.
            before: the id of the last batch of the previous page.
        """
        if (
            not isinstance(limit, int)
            or isinstance(limit, bool)
            or not 1 <= limit <= _ITEMS_PAGE_MAX
        ):
            raise ValueError(f"limit must be from 1 to {_ITEMS_PAGE_MAX}, got {limit!r}")
        if before is not None and not is_batch_id(before):
            raise ValueError(f"before must be a batch id, got {before!r}")
        if metadata is not None:
            check_metadata_filter(metadata)
        records = await self.storage.list_batches(metadata=metadata, before=before, limit=limit)
        return [status_from_record(r) for r in records]

    async def watch(
        self, batch_id: str, *, poll_interval: float | None = None
    ) -> AsyncIterator[BatchStatus]:
        """Yield the batch's status now and after every change, ending at a terminal state.

        It waits on the storage's change notification where there is one (MemoryStorage,
        PostgreSQL, Redis) and polls every ``poll_interval`` seconds otherwise. Statuses
        equal to the one before are not repeated.

        Raises:
            BatchNotFound: no batch has this id.
        """
        self._check_id(batch_id)
        interval = self.poll_interval if poll_interval is None else poll_interval
        positive_seconds("poll_interval", interval)
        last: BatchStatus | None = None
        async with self.storage.subscribe(batch_id) as changes:
            while True:
                status = await self.status(batch_id)
                if status != last:
                    yield status
                    last = status
                if status.is_terminal:
                    return
                await changes.wait(interval)

    # -- acting on a batch -------------------------------------------------------------

    async def cancel(self, batch_id: str, *, reason: str | None = None) -> BatchStatus:
        """Cancel a batch: queued items end `cancelled` at once, and so do the items this
        runner is running (in a `run` under way); items running elsewhere end at their
        runner's next heartbeat or progress call. Cancelling a finished batch changes
        nothing.

        Args:
            batch_id: the batch.
            reason: why, kept as `BatchStatus.cancel_reason` (the first reason given
                stays); cut to `Limits.max_reason_length`.

        Raises:
            BatchNotFound: no batch has this id.
        """
        self._check_id(batch_id)
        if reason is not None:
            if not isinstance(reason, str):
                raise TypeError(f"reason must be a string or None, got {reason!r}")
            reason = clean_text(reason)
            limit = self.limits.max_reason_length
            if len(reason) > limit:
                reason = reason[: limit - 1] + "…"
        status = status_from_record(await self.storage.cancel_batch(batch_id, reason=reason))
        logger.info("batch cancel requested", extra={"batch_id": batch_id, "reason": reason})
        for executor in list(self._running):
            executor.cancel_running(batch_id)
        if status.is_terminal:
            await self._fire_hook(batch_id)
        return status

    async def retry_failed(self, batch_id: str, *, idempotency_key: str | None = None) -> Batch:
        """Submit a new batch of exactly the failed items' keys and payloads.

        The new batch has ``parent_id == batch_id`` and the old batch's metadata. Calling
        it twice returns the same new batch (the default idempotency key is derived from
        ``batch_id``, in a namespace `submit` refuses), so a double click never runs the
        retry twice.

        Args:
            batch_id: the finished batch whose failed items to run again.
            idempotency_key: a key of your own instead of the default (to retry the same
                batch more than once, say, after the retry failed too).

        Raises:
            BatchNotFound: no batch has this id.
            InvalidBatch: the batch is still running, or nothing in it failed, or the
                idempotency key already names a batch that is not a retry of this one
                (nothing is written, and no other batch is returned).
        """
        status = await self.status(batch_id)
        if not status.is_terminal:
            raise InvalidBatch(
                f"batch {batch_id} is still {status.state.value}; retry its failed items "
                "once it has finished"
            )
        if not status.counts[ItemState.FAILED]:
            raise InvalidBatch(f"batch {batch_id} has no failed items to retry")
        failed: list[ItemSpec] = []
        after: int | None = None
        while True:
            page = await self.storage.list_items(
                batch_id, states=(ItemState.FAILED,), after=after, limit=_ITEMS_PAGE_MAX
            )
            failed.extend(ItemSpec(key=item.key, payload=loads(item.payload)) for item in page)
            if len(page) < _ITEMS_PAGE_MAX:
                break
            after = page[-1].position
        if idempotency_key is None:
            key = f"{RESERVED_KEY_PREFIX}retry-failed:{batch_id}"
        else:
            _check_not_reserved(idempotency_key)
            key = idempotency_key
        new = self._validate(
            failed, status.metadata, key, parent_id=batch_id, max_failures=status.max_failures
        )
        return await self._create(new)

    async def delete(self, batch_id: str) -> bool:
        """Delete a batch and its items; `False` when there was none."""
        self._check_id(batch_id)
        self._batch_info.forget(batch_id)
        return await self.storage.delete_batch(batch_id)

    @staticmethod
    def _check_id(batch_id: str) -> None:
        # Only ids batchkit made reach a storage: they become SQL values and Redis keys.
        if not is_batch_id(batch_id):
            raise BatchNotFound(batch_id)


#: Idempotency keys starting with this are batchkit's own; `submit` refuses them.
RESERVED_KEY_PREFIX = "batchkit:"
#: The last item position a store can hold (an INTEGER column): nothing comes after it.
_LAST_POSITION = 2**31 - 1


def _check_not_reserved(idempotency_key: object) -> None:
    if isinstance(idempotency_key, str) and idempotency_key.startswith(RESERVED_KEY_PREFIX):
        raise InvalidBatch(
            f"idempotency keys starting with {RESERVED_KEY_PREFIX!r} are reserved for "
            "batchkit's own use (retry_failed); choose another key"
        )


def _reraise_single(group: BaseExceptionGroup[BaseException]) -> None:
    """Raise the one real error of a task group instead of the group that wraps it."""
    cancelled = anyio.get_cancelled_exc_class()
    real = [e for e in _leaves(group) if not isinstance(e, cancelled)]
    if len(real) == 1:
        raise real[0] from None


def _leaves(group: BaseExceptionGroup[BaseException]) -> list[BaseException]:
    out: list[BaseException] = []
    for exc in group.exceptions:
        if isinstance(exc, BaseExceptionGroup):
            out.extend(_leaves(exc))
        else:
            out.append(exc)
    return out
