"""Worker: a long-running process that executes queued items of any batch from a shared store."""

from __future__ import annotations

import logging
import os
import secrets
import socket
import time
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Self

import anyio
import anyio.abc

from ._batch_info import BatchInfoCache
from ._execution import build_executor
from ._hooks import BatchFinishedHook, fire_hook
from ._options import (
    check_generator,
    check_metadata_filter,
    check_metrics,
    positive_int,
    seconds,
)
from ._secrets import redact
from ._watch import watch_loop
from .exceptions import BatchNotFound, StorageError
from .ids import is_batch_id
from .models import Limits
from .protocols import ClaimRequest, MetadataFilter, WorkAnnouncer
from .retry import RetryPolicy
from .status import status_from_record

if TYPE_CHECKING:
    from collections.abc import Iterable
    from types import TracebackType

    from ._execution import Executor
    from ._keeper import Keeper
    from .metrics import Metrics
    from .protocols import Claim, Generator, Lease, Storage, Subscription, SyncGenerator

__all__ = ["Worker", "WorkerStats"]

logger = logging.getLogger("batchkit.worker")

_CACHE_MAX = 1_024


@dataclass
class WorkerStats:
    """What a worker has done since it started (read it while it runs, or after)."""

    #: When the worker started (`time.time`), or `None` before it has.
    started_at: float | None = None
    #: Attempts started.
    started: int = 0
    succeeded: int = 0
    #: Items failed for good.
    failed: int = 0
    #: Failed attempts put back to `queued` for another try.
    retrying: int = 0
    #: Attempts handed back unfinished (the worker was stopping or cancelled).
    released: int = 0
    cancelled: int = 0
    #: Outcomes refused because another runner had taken the item over.
    refused: int = 0
    #: Items running now.
    running: int = 0
    #: Completion hooks this worker fired.
    hooks_fired: int = 0
    #: Storage errors the worker outlived (it waits and goes on after each).
    storage_errors: int = 0
    #: Batches this worker saw finish.
    batches_finished: set[str] = field(default_factory=set, repr=False)

    @property
    def done(self) -> int:
        """Items this worker took to a final state."""
        return self.succeeded + self.failed + self.cancelled

    def rate(self) -> float:
        """Items taken to a final state per second, since the worker started."""
        if self.started_at is None:
            return 0.0
        return self.done / max(1e-9, time.time() - self.started_at)

    def _count(self, event: str, lease: Lease) -> None:
        if event == "started":
            self.started += 1
            self.running += 1
            return
        if event in ("succeeded", "failed", "retrying", "released", "cancelled", "refused"):
            setattr(self, event, getattr(self, event) + 1)
            self.running = max(0, self.running - 1)


class Worker:
    """Executes queued items of any batch (or of selected batches) until it is stopped.

    Many workers, in one process or on many machines, can share one storage (PostgreSQL,
    MySQL/MariaDB or Redis; SQLite on one machine): each item is claimed by one of them
    under a lease that heartbeats renew while the generator works. An item whose worker
    died is claimed again once its lease expires (at-least-once), with its ``attempt``
    grown by one. Completion hooks fire once per batch across all of them.

    Run it with ``await worker.run()`` (until `stop` is called, or until there is nothing
    left with ``exit_when_idle``), or as ``async with worker:`` to run it in the
    background of a block (an app's lifespan): leaving the block stops it gracefully.

    Whatever a generator raises fails that item's attempt and the worker goes on; a
    `SystemExit` or `KeyboardInterrupt` it raises fails the attempt too, which is written
    first, and then stops the worker as itself (its other running items are handed back
    to `queued`), so that a process exits when its code asks it to.

    Args:
        storage: the shared store (opened by the caller).
        generator: ``async def generate(ctx) -> result``, or a plain function (it runs in
            a worker thread).
        concurrency: how many items this worker runs at once.
        lease_seconds: seconds a claim holds without a heartbeat; heartbeats renew it every
            third of this. A worker that dies holds its items this long at most.
        batch_ids: only items of these batches; `None` for any batch.
        metadata: only items of batches whose metadata has these top-level values
            (``{"queue": "video"}``).
        retry: automatic retries of failed items (`RetryPolicy`); `None` for none.
        item_timeout: seconds after which an attempt fails with ``TimeoutError``.
        grace_period: once stopping, how long running items may take to finish before
            they are handed back to `queued` for another worker.
        poll_interval: the longest an idle worker waits before it looks for work by
            itself (seconds). A storage that announces new work (every storage of
            batchkit's: `batchkit.protocols.WorkAnnouncer`) wakes it at once for a new
            batch or an item handed back; the wait finds what time alone makes
            claimable (a retry's delay over, a lapsed lease).
        progress_interval: at most one progress write per item per this many seconds.
        group_commit: when items are quick, an item's success may wait this many seconds
            to be written with the next ones' in one step, and the items a slot claims
            ahead (as many as it runs in that time, at most 16) wait no longer to start:
            one commit for several items. A reader sees a success late, or an item
            `running` early, by this much at most; a crash loses nothing beyond what a
            crash loses anyway (the items run again once their leases lapse). 0 writes
            each outcome alone.
        on_batch_finished: called once per batch when it becomes terminal, with its final
            status, whichever worker finished it and even if that one died right after;
            keep it shorter than ``lease_seconds`` (a hook still running after that may be
            fired again by another worker).
        hook_interval: how often the worker looks for finished batches whose hook has not
            fired (a worker that died before firing one); by default ``poll_interval``.
        exit_when_idle: stop once nothing is claimable and nothing is running here; with
            ``batch_ids``, once those batches are finished (retries not yet due and items
            held by other workers keep it waiting). A `StorageError` that is not
            transient (the store refuses what the worker asks, and would again) stops it
            too: `run` raises it.
        limits: size limits (results, messages, errors).
        block_warning: report in the log each time the event loop was blocked this many
            seconds or more; `None` to not watch.
        name: how the worker shows in the log; by default ``host:pid:xxxx``.
        metrics: told of every item's events and of the store's failures the worker
            outlives, and reads how many items it runs (`batchkit.metrics`); `None` for
            none.
    """

    def __init__(
        self,
        storage: Storage,
        generator: Generator | SyncGenerator,
        *,
        concurrency: int = 1,
        lease_seconds: float = 30.0,
        batch_ids: Iterable[str] | None = None,
        metadata: MetadataFilter | None = None,
        retry: RetryPolicy | None = None,
        item_timeout: float | None = None,
        grace_period: float = 30.0,
        poll_interval: float = 1.0,
        progress_interval: float = 0.5,
        group_commit: float = 0.005,
        on_batch_finished: BatchFinishedHook | None = None,
        hook_interval: float | None = None,
        exit_when_idle: bool = False,
        limits: Limits | None = None,
        block_warning: float | None = 1.0,
        name: str | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        check_generator(generator)
        check_metrics(metrics)
        positive_int("concurrency", concurrency)
        if retry is not None and not isinstance(retry, RetryPolicy):
            raise TypeError(f"retry must be a RetryPolicy or None, got {retry!r}")
        if on_batch_finished is not None and not callable(on_batch_finished):
            raise TypeError(f"on_batch_finished must be callable, got {on_batch_finished!r}")
        ids: tuple[str, ...] | None = None
        if batch_ids is not None:
            if isinstance(batch_ids, str):
                raise TypeError("batch_ids must be an iterable of batch ids, not one string")
            ids = tuple(dict.fromkeys(batch_ids))
            for batch_id in ids:
                if not is_batch_id(batch_id):
                    raise ValueError(f"not a batch id: {batch_id!r}")
            if not ids:
                raise ValueError("batch_ids is empty: pass None to take items of any batch")
        if metadata is not None:
            check_metadata_filter(metadata)
        self.storage = storage
        self.generator = generator
        self.concurrency = concurrency
        self.lease_seconds = seconds("lease_seconds", lease_seconds)
        self.batch_ids = ids
        self.metadata = dict(metadata) if metadata else None
        self.retry = retry
        self.item_timeout = None if item_timeout is None else seconds("item_timeout", item_timeout)
        self.grace_period = seconds("grace_period", grace_period, allow_zero=True)
        self.poll_interval = seconds("poll_interval", poll_interval)
        self.progress_interval = seconds("progress_interval", progress_interval)
        self.group_commit = seconds("group_commit", group_commit, allow_zero=True)
        self.hook_interval = (
            self.poll_interval if hook_interval is None else seconds("hook_interval", hook_interval)
        )
        self.on_batch_finished = on_batch_finished
        self.exit_when_idle = bool(exit_when_idle)
        self.limits = limits or Limits()
        self.block_warning = (
            None if block_warning is None else seconds("block_warning", block_warning)
        )
        self.name = name or f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(2)}"
        self.stats = WorkerStats()
        self.metrics = metrics
        self._request = ClaimRequest(
            lease_seconds=self.lease_seconds, batch_ids=self.batch_ids, metadata=self.metadata
        )
        self._same_batch: dict[str, ClaimRequest] = {}
        self._batch_info = BatchInfoCache(storage)
        self._stopping = False
        self._grace = self.grace_period
        self._wake = anyio.Event()
        self._stop_requested = anyio.Event()
        self._poll_lock = anyio.Lock()
        self._busy = 0
        self._running = False
        self._stack: AsyncExitStack | None = None
        self._refused: StorageError | None = None
        self._work: Subscription | None = None

    def __repr__(self) -> str:
        # A storage of the host's own may show its URL whole: hidden here all the same.
        storage = redact(repr(self.storage))
        return f"Worker(name={self.name!r}, storage={storage}, concurrency={self.concurrency})"

    # -- lifecycle -------------------------------------------------------------------------

    @property
    def stopping(self) -> bool:
        """Whether the worker has been asked to stop."""
        return self._stopping

    def stop(self, *, grace_period: float | None = None) -> None:
        """Stop claiming; let running items finish within the grace period, then hand
        the rest back to `queued`, and make `run` return.

        Safe to call more than once (a second call may shorten the grace period: a second
        Ctrl-C with ``grace_period=0``), and from a signal handler of the event loop.

        Args:
            grace_period: seconds running items get to finish; by default the worker's.
        """
        grace = (
            self.grace_period
            if grace_period is None
            else seconds("grace_period", grace_period, allow_zero=True)
        )
        self._grace = min(self._grace, grace) if self._stopping else grace
        if not self._stopping:
            self._stopping = True
            logger.info(
                "worker %s stopping: %d item(s) running, %g s to finish",
                self.name,
                self.stats.running,
                self._grace,
                extra={"event": "stopping", "worker": self.name, "running": self.stats.running},
            )
        self._stop_requested.set()
        self._wake.set()

    async def run(self) -> WorkerStats:
        """Claim and run items until stopped (or idle, with ``exit_when_idle``).

        Cancelling the task that runs it hands the running items back to `queued` at
        once and propagates the cancellation.

        Returns:
            What the worker did.
        """
        self._begin()
        return await self._run()

    def _begin(self) -> None:
        if self._running:
            raise RuntimeError("this worker is already running")
        self._running = True
        if self.stats.started_at is not None:
            # It ran before and was stopped: run afresh (a stop() before the first run
            # still counts, so that a signal arriving during start-up is not lost).
            self.stats = WorkerStats()
            self._stopping = False
            self._grace = self.grace_period
            self._wake = anyio.Event()
            self._stop_requested = anyio.Event()
            self._refused = None

    async def _run(self) -> WorkerStats:
        self.stats.started_at = time.time()
        logger.info(
            "worker %s started: concurrency %d, lease %g s, on %s",
            self.name,
            self.concurrency,
            self.lease_seconds,
            redact(repr(self.storage)),
            extra={"event": "worker_started", "worker": self.name},
        )
        executor = build_executor(
            self,
            self._batch_info,
            name=self.name,
            on_event=lambda event, lease: self.stats._count(event, lease),
            patient=True,
        )
        executor.on_stopping = lambda: self.stop(grace_period=0)
        untrack = None
        if self.metrics is not None:
            untrack = self.metrics.track(self.name, lambda: self.stats.running)
        try:
            async with AsyncExitStack() as stack:
                # Before the tasks: a subscription may run a task of its own (a relay).
                self._work = await self._subscribe_work(stack)
                async with anyio.create_task_group() as outer:
                    if self.block_warning is not None:
                        await outer.start(watch_loop, executor, self.block_warning)
                    if self.on_batch_finished is not None:
                        outer.start_soon(self._sweep_hooks)
                    async with anyio.create_task_group() as slots:
                        outer.start_soon(self._enforce_grace, slots.cancel_scope)
                        for _ in range(self.concurrency):
                            slots.start_soon(self._slot, executor)
                    if self.on_batch_finished is not None:
                        await self._fire_due_hooks()  # what finished while stopping
                    outer.cancel_scope.cancel()
        finally:
            if untrack is not None:
                untrack()
            self._running = False
            self._work = None
            stats = self.stats
            logger.info(
                "worker %s stopped: %d succeeded, %d failed, %d retrying, %d released, "
                "%d cancelled",
                self.name,
                stats.succeeded,
                stats.failed,
                stats.retrying,
                stats.released,
                stats.cancelled,
                extra={"event": "worker_stopped", "worker": self.name},
            )
        if executor.stopping is not None:
            raise executor.stopping
        if self._refused is not None:
            raise self._refused
        return self.stats

    async def _subscribe_work(self, stack: AsyncExitStack) -> Subscription | None:
        """The storage's announcements of new work, that idle slots wait on; `None` (poll
        every ``poll_interval``) on a storage that makes none, or cannot now."""
        if not isinstance(self.storage, WorkAnnouncer):
            return None
        try:
            return await stack.enter_async_context(self.storage.subscribe_work())
        except (StorageError, OSError) as exc:
            self._storage_error(exc)
            self._log_storage_error(
                logging.WARNING,
                "cannot wait for new work (%s): looking every %g s",
                exc,
                self.poll_interval,
            )
            return None

    def _storage_error(self, exc: BaseException) -> None:
        self.stats.storage_errors += 1
        if self.metrics is not None:
            self.metrics.storage_error(exc)

    def _log_storage_error(self, level: int, message: str, *args: object) -> None:
        """Log a storage call that failed: ``message`` after the worker's name."""
        logger.log(
            level,
            "worker %s: " + message,
            self.name,
            *args,
            extra={"event": "storage_error", "worker": self.name},
            stacklevel=2,
        )

    async def _enforce_grace(self, slots: anyio.CancelScope) -> None:
        await self._stop_requested.wait()
        began = anyio.current_time()
        while True:
            # A later stop() may shorten the grace period: look again when it does.
            self._stop_requested = anyio.Event()
            remaining = began + self._grace - anyio.current_time()
            if remaining <= 0:
                break
            with anyio.move_on_after(remaining):
                await self._stop_requested.wait()
        if self.stats.running:
            logger.warning(
                "worker %s: grace period over, handing %d running item(s) back to queued",
                self.name,
                self.stats.running,
                extra={"event": "grace_over", "worker": self.name},
            )
        slots.cancel()

    async def __aenter__(self) -> Self:
        """Start `run` in the background; leaving the block stops it gracefully."""
        self._begin()
        stack = AsyncExitStack()
        try:
            await stack.__aenter__()
            tg = await stack.enter_async_context(anyio.create_task_group())
            tg.start_soon(self._run)
        except BaseException:
            self._running = False
            await stack.__aexit__(None, None, None)
            raise
        self._stack = stack
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        stack, self._stack = self._stack, None
        if stack is None:
            return
        # Leaving because of an error or a cancellation: hand the items back now.
        self.stop(grace_period=0.0 if exc_type is not None else None)
        await stack.__aexit__(exc_type, exc, tb)

    # -- the slots -------------------------------------------------------------------------

    async def _slot(self, executor: Executor) -> None:
        async with executor.slot() as keeper:
            while not self._stopping:
                try:
                    await self._work_one(executor, keeper)
                except (StorageError, OSError) as exc:
                    self._storage_error(exc)
                    if self.exit_when_idle and isinstance(exc, StorageError) and not exc.transient:
                        # Waiting cannot help and nothing else would end the run.
                        self._refused = self._refused or exc
                        self.stop(grace_period=0)
                        return
                    # The store is unreachable beyond the adapter's own retries: wait and
                    # go on; items this slot held come back when their lease lapses.
                    self._log_storage_error(
                        logging.ERROR,
                        "storage error, retrying in %g s: %s",
                        self.poll_interval,
                        exc,
                    )
                    await self._sleep(self.poll_interval)

    async def _work_one(self, executor: Executor, keeper: Keeper) -> None:
        claim = await self._next_claim()
        if claim is None:
            return
        self._busy += 1
        try:
            while claim is not None:
                if self._stopping:
                    # Claimed in the same step as the last finish, as the stop came.
                    with anyio.CancelScope(shield=True):
                        await executor.hand_back(claim)
                    return
                batch_id = claim.lease.batch_id

                def then(batch_id: str = batch_id) -> ClaimRequest | None:
                    return None if self._stopping else self._same_batch_request(batch_id)

                try:
                    claim = await executor.work(keeper, claim, then_claim=then)
                except BatchNotFound:
                    claim = None  # deleted while its item ran: nothing left to write
                if claim is None and not self._stopping:
                    await self._batch_drained(batch_id)
                    claim = await self.storage.claim(self._request)
        finally:
            self._busy -= 1

    async def _next_claim(self) -> Claim | None:
        # Idle slots take turns: one polls the store while the others wait here, so an
        # idle worker costs one claim per poll interval, not one per slot.
        async with self._poll_lock:
            while not self._stopping:
                claim = await self.storage.claim(self._request)
                if claim is not None:
                    return claim
                if self.exit_when_idle and self._busy == 0 and await self._all_done():
                    logger.info(
                        "worker %s: nothing left to do",
                        self.name,
                        extra={"event": "idle", "worker": self.name},
                    )
                    self.stop()
                    return None
                await self._idle()
        return None

    async def _all_done(self) -> bool:
        # Any batch: what no worker can claim now is not this worker's to wait for. Chosen
        # batches: until they are finished (retries due later, leases held elsewhere).
        if self.batch_ids is None:
            return True
        for batch_id in self.batch_ids:
            try:
                record = await self.storage.get_batch(batch_id)
            except BatchNotFound:
                continue
            if not status_from_record(record).is_terminal:
                return False
        return True

    async def _sleep(self, seconds: float) -> None:
        with anyio.move_on_after(seconds):
            await self._wake.wait()

    async def _idle(self) -> None:
        """Wait for new work: until the storage announces some, ``poll_interval`` passes
        (what time alone makes claimable: a retry's delay, a lapsed lease), or a stop."""
        work = self._work
        if work is None:
            await self._sleep(self.poll_interval)
            return
        wake = self._wake
        async with anyio.create_task_group() as tg:

            async def until_stopped() -> None:
                await wake.wait()
                tg.cancel_scope.cancel()

            tg.start_soon(until_stopped)
            await work.wait(self.poll_interval)
            tg.cancel_scope.cancel()

    def _same_batch_request(self, batch_id: str) -> ClaimRequest:
        request = self._same_batch.get(batch_id)
        if request is None:
            if len(self._same_batch) >= _CACHE_MAX:
                self._same_batch.clear()
            request = ClaimRequest(lease_seconds=self.lease_seconds, batch_ids=(batch_id,))
            self._same_batch[batch_id] = request
        return request

    async def _batch_drained(self, batch_id: str) -> None:
        """Nothing of the batch is claimable now: if it just finished, say so and fire its hook."""
        try:
            status = status_from_record(await self.storage.get_batch(batch_id))
        except BatchNotFound:
            return
        if not status.is_terminal:
            return
        self._batch_info.forget(batch_id)
        self._same_batch.pop(batch_id, None)
        if batch_id not in self.stats.batches_finished:
            if len(self.stats.batches_finished) >= 10_000:
                self.stats.batches_finished.clear()
            self.stats.batches_finished.add(batch_id)
            counts = {s.value: n for s, n in status.counts.items() if n}
            logger.info(
                "batch %s finished: %s %s",
                batch_id,
                status.state.value,
                counts,
                extra={
                    "event": "batch_finished",
                    "batch_id": batch_id,
                    "state": status.state.value,
                    "worker": self.name,
                },
            )
        if self.on_batch_finished is not None:
            await self._fire(batch_id)

    # -- completion hooks ---------------------------------------------------------------

    async def _fire(self, batch_id: str | None) -> str | None:
        assert self.on_batch_finished is not None
        fired = await fire_hook(
            self.storage,
            self.on_batch_finished,
            lease_seconds=self.lease_seconds,
            batch_id=batch_id,
            name=self.name,
        )
        if fired is not None:
            self.stats.hooks_fired += 1
        return fired

    async def _fire_due_hooks(self) -> None:
        """Fire every hook that is due: batches finished by a worker that died first."""
        try:
            while await self._fire(None) is not None:
                pass
        except (StorageError, OSError) as exc:
            self._storage_error(exc)
            self._log_storage_error(
                logging.ERROR, "storage error while firing completion hooks: %s", exc
            )

    async def _sweep_hooks(self) -> None:
        while True:
            await self._fire_due_hooks()
            await anyio.sleep(self.hook_interval)
