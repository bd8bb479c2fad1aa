"""Running claimed items: the slot loop, the keeper task and the capture of failures.

Shared by `BatchRunner.run` (items of one batch) and workers (items of any batch).
"""

from __future__ import annotations

import asyncio
import functools
import heapq
import inspect
import logging
import math
import time
import traceback
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import anyio
import anyio.lowlevel
import anyio.to_thread

from ._keeper import Keeper
from ._secrets import redact
from .codec import JSONError, clean_text, encode
from .context import ItemContext, _Reporter
from .exceptions import StorageError
from .history import History
from .models import ItemError, ItemState, Limits
from .protocols import Claim, ClaimRequest, FinishResult, Lease, Outcome, Storage

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Callable

    from .protocols import Generator, SyncGenerator
    from .retry import RetryPolicy

__all__ = [
    "BatchInfo",
    "BatchInfoCache",
    "Executor",
    "error_from_exception",
    "is_async_callable",
    "is_cancellation",
    "redact",
]

logger = logging.getLogger("batchkit.runner")
#: One line per transition of an item (started, succeeded, failed, retrying, released,
#: cancelled, recovered), with the fields ``event batch_id key attempt`` and more.
items_logger = logging.getLogger("batchkit.items")


def _cut(text: str, limit: int, *, keep_end: bool = False) -> str:
    if len(text) <= limit:
        return text
    if limit <= 1:
        return "…"[:limit]
    if keep_end:
        return "…" + text[-(limit - 1) :]
    return text[: limit - 1] + "…"


#: Longest exception class name kept in `ItemError.type` (a generated class can have any).
_MAX_TYPE_LENGTH = 200


def error_from_exception(exc: BaseException, *, attempt: int, limits: Limits) -> ItemError:
    """The bounded, redacted record of why an attempt failed."""
    # The generator's exception is foreign code: its __str__ may itself raise, and that
    # must fail the item, not escape the runner.
    try:
        message = str(exc) or repr(exc)
    except Exception:
        message = f"<{type(exc).__name__}: str() failed>"
    try:
        formatted = "".join(traceback.format_exception(exc))
    except Exception:
        formatted = message
    return ItemError(
        type=_cut(clean_text(type(exc).__name__), _MAX_TYPE_LENGTH),
        message=_cut(clean_text(redact(message)), limits.max_error_length),
        traceback=_cut(clean_text(redact(formatted)), limits.max_traceback_length, keep_end=True),
        attempt=attempt,
    )


def is_async_callable(fn: object) -> bool:
    """Whether calling ``fn`` returns an awaitable (async function, partial, or object)."""
    while isinstance(fn, functools.partial):
        fn = fn.func
    if inspect.iscoroutinefunction(fn):
        return True
    call = getattr(fn, "__call__", None)  # noqa: B004
    return call is not None and inspect.iscoroutinefunction(call)


_FORGOT_ASYNC = object()


def _close(value: object) -> None:
    close = getattr(value, "close", None)
    if callable(close):
        close()  # silence "coroutine was never awaited"


@dataclass(frozen=True, slots=True)
class _Raised:
    """A sync generator's `BaseException` that is not an `Exception`, carried as a value.

    Raised across the thread boundary, a `GeneratorExit` would be taken by the event
    loop machinery as the closing of its own coroutine.
    """

    exc: BaseException


def _call_sync(generator: Callable[[ItemContext], Any], ctx: ItemContext) -> Any:
    # A sync function that returns a coroutine forgot `async`; trio's to_thread would
    # refuse it with its own TypeError, so recognise it here, the same on every backend.
    try:
        value = generator(ctx)
    except Exception:
        raise
    except BaseException as exc:
        return _Raised(exc)
    if inspect.isawaitable(value):
        _close(value)
        return _FORGOT_ASYNC
    return value


@dataclass(frozen=True, slots=True)
class BatchInfo:
    """What running a batch's items needs of the batch: it never changes after submission."""

    metadata: dict[str, Any]
    max_failures: int | None = None


class BatchInfoCache:
    """Reads a batch's `BatchInfo` once and keeps it (it never changes after submission).

    Args:
        storage: where to read it.
        size: how many batches to keep; the oldest read is dropped first.
    """

    def __init__(self, storage: Storage, size: int = 1_024) -> None:
        self._storage = storage
        self._size = size
        self._info: dict[str, BatchInfo] = {}

    async def __call__(self, batch_id: str) -> BatchInfo:
        """The batch's info.

        Raises:
            BatchNotFound: no batch has this id.
        """
        info = self._info.get(batch_id)
        if info is None:
            record = await self._storage.get_batch(batch_id)
            info = BatchInfo(metadata=record.metadata, max_failures=record.max_failures)
            if len(self._info) >= self._size:
                self._info.pop(next(iter(self._info)))
            self._info[batch_id] = info
        return info

    def forget(self, batch_id: str) -> None:
        """Drop what is kept of a batch (it was deleted, or it finished)."""
        self._info.pop(batch_id, None)


#: What an attempt came to before the retry policy has its say: the outcome, and the
#: exception that failed it (`None` when none was raised: a result that is not JSON).
_Ended = tuple[Outcome, BaseException | None]


_NO_HISTORY = History()


class Executor:
    """Claims, runs and finishes items with one generator, under one set of options.

    Args:
        storage: the store.
        generator: the host's generator.
        limits: size limits.
        item_timeout: seconds an attempt may take, or `None`.
        lease_seconds: how long a claim holds without a heartbeat.
        progress_interval: at most one progress write per item per this many seconds.
        batch_info: reads (and may cache) a batch's `BatchInfo`.
        retry: automatic retries, or `None` for none.
        thread_limiter: bounds the threads of a sync generator.
        name: the runner's name in the log (a worker's id).
        on_event: told of each transition of an item (``"started"``, ``"succeeded"``,
            ``"failed"``, ``"retrying"``, ``"released"``, ``"cancelled"``, ``"refused"``).
        patient: when the store cannot take an item's outcome past its own retries, keep
            the outcome and write it once the store answers again (a worker outliving an
            outage), instead of raising `StorageError` (a run, whose caller decides).
    """

    def __init__(
        self,
        *,
        storage: Storage,
        generator: Generator | SyncGenerator,
        limits: Limits,
        item_timeout: float | None,
        lease_seconds: float,
        progress_interval: float,
        batch_info: Callable[[str], Awaitable[BatchInfo]],
        retry: RetryPolicy | None = None,
        thread_limiter: anyio.CapacityLimiter | None = None,
        name: str | None = None,
        on_event: Callable[[str, Lease], None] | None = None,
        patient: bool = False,
    ) -> None:
        self.storage = storage
        self.patient = patient
        self.generator = generator
        self.generator_is_async = is_async_callable(generator)
        self.limits = limits
        self.item_timeout = item_timeout
        self.lease_seconds = lease_seconds
        self.heartbeat_interval = lease_seconds / 3
        self.progress_interval = progress_interval
        self.batch_info = batch_info
        self.retry = retry
        self.thread_limiter = thread_limiter
        self.name = name
        self.on_event = on_event
        #: When the retries this executor scheduled are due (anyio clock), as a heap.
        self.retries_due: list[float] = []
        #: The first `SystemExit` or `KeyboardInterrupt` a generator raised: its attempt
        #: is written, then ``on_stopping`` is called; the owner stops its slots and
        #: raises it from its own task (raised in a task of a group, asyncio would let
        #: it out of the event loop at once, with the other items still running).
        self.stopping: BaseException | None = None
        self.on_stopping: Callable[[], None] | None = None
        self._keepers: set[Keeper] = set()

    def running(self) -> list[Lease]:
        """The leases of the items this executor is running now."""
        return [k.lease for k in self._keepers if k.lease is not None]

    @asynccontextmanager
    async def slot(self) -> AsyncIterator[Keeper]:
        """A slot that runs one item at a time: its keeper task runs while it is open."""
        keeper = Keeper(self)
        self._keepers.add(keeper)
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(keeper.run)
                try:
                    yield keeper
                finally:
                    tg.cancel_scope.cancel()
        finally:
            self._keepers.discard(keeper)

    async def run_slot(self, request: ClaimRequest, claim: Claim | None = None) -> int:
        """Claim and run items until none is claimable; return how many ran.

        Cancelling the slot releases the running item to `queued` (shielded) and
        propagates.
        """
        ran = 0
        async with self.slot() as keeper:
            if claim is None:
                claim = await self.storage.claim(request)
            while claim is not None:
                claim = await self.work(keeper, claim, then_claim=request)
                ran += 1
        return ran

    async def work(
        self,
        keeper: Keeper,
        claim: Claim,
        *,
        then_claim: ClaimRequest | Callable[[], ClaimRequest | None] | None,
    ) -> Claim | None:
        """Run one claimed item to its outcome, write it, and return the next claim.

        The next claim is made with ``then_claim`` (in the same step as the finish where
        the store can), or not at all when it is `None`; a callable is asked when the
        item has ended (a worker told to stop meanwhile answers `None`).

        A `SystemExit` or `KeyboardInterrupt` raised by the generator fails the attempt
        like any error; once it is written, nothing more is claimed and the error is
        kept as `stopping` for the owner to raise.
        """
        lease = claim.lease
        logging_items = items_logger.isEnabledFor(logging.INFO)
        started = time.monotonic()
        if claim.history is None and lease.attempt == 1:
            history, lost = _NO_HISTORY, 0  # the common case, spared the decoding
        else:
            history = History.decode(claim.history)
            lost = history.lost(lease.attempt)
            if lost:
                history = self._note_lost(lease, history, lost)
        if self.on_event is not None:
            self.on_event("started", lease)
        retry = self.retry
        stopping: BaseException | None = None
        if retry is not None and history.failures >= retry.max_attempts:
            # The attempts lost with their runners used the item's whole budget: an item
            # that kills every worker running it must not be run again.
            error = history.errors[-1]
            outcome = Outcome.failed(error, history=history.encode())
        else:
            if logging_items:
                self._log(logging.INFO, "started", lease)
            ended = await self._execute(claim, keeper, history)
            if callable(then_claim):
                then_claim = then_claim()
            if ended is None:  # lease lost: another runner owns the item now
                self._event("refused", lease)
                return None if then_claim is None else await self.storage.claim(then_claim)
            outcome, exc = ended
            if isinstance(exc, STOPPING):
                stopping, then_claim = exc, None
                self._log(
                    logging.ERROR,
                    "stopping",
                    lease,
                    says=f"the generator raised {type(exc).__name__}: the attempt is "
                    "written as failed, then the runner stops",
                )
            if outcome.state is ItemState.FAILED or lost:
                outcome = self._decide(outcome, exc, history, lost)
        if callable(then_claim):
            then_claim = then_claim()
        limit: int | None = None
        if outcome.state is ItemState.FAILED:
            limit = (await self.batch_info(lease.batch_id)).max_failures
            if limit is not None:
                await self._limit_failures(lease, limit, failing=True)
        try:
            result = await self._write(lease, outcome, then_claim)
        except BaseException:
            # The work is done: a cancellation arriving mid-write must not lose its
            # outcome (the item would stay running until its lease lapsed). Write it
            # again, shielded; fencing refuses it if the first write landed. (A store
            # whose step can commit before a cancellation reaches the caller shields
            # that step itself: see the Storage protocol.)
            with anyio.CancelScope(shield=True):
                await self.storage.finish(lease, outcome)
            raise
        if not result.accepted:
            self._log(logging.WARNING, "refused", lease)
            self._event("refused", lease)
        else:
            if (
                logging_items
                or self.on_event is not None
                or outcome.state is not ItemState.SUCCEEDED
            ):
                self._ended(lease, outcome, time.monotonic() - started)
            if limit is not None:
                await self._limit_failures(lease, limit, failing=False)
        if stopping is not None:
            if self.stopping is None:
                self.stopping = stopping
            if self.on_stopping is not None:
                self.on_stopping()
            return None
        return result.claim

    async def _write(
        self, lease: Lease, outcome: Outcome, then_claim: ClaimRequest | None
    ) -> FinishResult:
        """Write an item's outcome; a patient executor outlasts the store's outage."""
        try:
            return await self.storage.finish(lease, outcome, then_claim=then_claim)
        except (StorageError, OSError) as exc:
            if not self.patient:
                raise
            error = exc
        # The work is done and only its record is missing: running it again after its
        # lease lapsed would cost a whole attempt. Try again until the store answers (the
        # lease fences the write, so one landing late is refused, never doubled); the
        # next item is claimed by the slot afterwards.
        self._log(
            logging.WARNING,
            "outcome_pending",
            lease,
            says=f"could not write its outcome, trying again soon: {redact(str(error))}",
        )
        pause = min(1.0, self.heartbeat_interval / 3)
        tries = 1
        while True:
            await anyio.sleep(pause)
            tries += 1
            try:
                result = await self.storage.finish(lease, outcome)
            except (StorageError, OSError):
                continue
            if not result.accepted and await self._landed(lease, outcome):
                result = FinishResult(accepted=True)  # a try whose reply was lost landed
            self._log(logging.INFO, "outcome_written", lease, says="outcome written", tries=tries)
            return result

    async def _landed(self, lease: Lease, outcome: Outcome) -> bool:
        """Whether the item ended as ``outcome`` says, in this very attempt."""
        try:
            item = await self.storage.get_item(lease.batch_id, lease.key)
        except (StorageError, OSError, LookupError):
            return False
        if item.attempt != lease.attempt or item.state is ItemState.RUNNING:
            return False
        asked = outcome.state
        return item.state is asked or (
            asked is ItemState.QUEUED and item.state is ItemState.CANCELLED
        )

    async def hand_back(self, claim: Claim) -> None:
        """Give a claimed item back to `queued` without running it (a worker stopping)."""
        history = History.decode(claim.history).with_release()
        done = await self.storage.finish(claim.lease, Outcome.released(history=history.encode()))
        if done.accepted:
            self._log(logging.INFO, "released", claim.lease)

    def _note_lost(self, lease: Lease, history: History, lost: int) -> History:
        first = lease.attempt - lost
        for attempt in range(first, lease.attempt):
            error = ItemError(
                type="WorkerLost",
                message=f"attempt {attempt} ended without an outcome: its runner stopped "
                "(it crashed, was killed, or was blocked past its lease)",
                attempt=attempt,
            )
            history = history.with_failure(error, keep=self.limits.max_error_history)
        self._log(logging.WARNING, "recovered", lease, lost_attempts=lost)
        return history

    def _decide(
        self, outcome: Outcome, exc: BaseException | None, history: History, lost: int
    ) -> Outcome:
        if outcome.state is not ItemState.FAILED or outcome.error is None:
            return replace(outcome, history=history.encode()) if lost else outcome
        error = outcome.error
        history = history.with_failure(error, keep=self.limits.max_error_history)
        retry = self.retry
        if (
            retry is not None
            and history.failures < retry.max_attempts
            and exc is not None
            and retry.retries(exc)
        ):
            delay = retry.delay(history.failures)
            return Outcome.released(delay=delay, error=error, history=history.encode())
        return Outcome.failed(error, history=history.encode())

    def _ended(self, lease: Lease, outcome: Outcome, duration: float) -> None:
        state = outcome.state
        if state is ItemState.SUCCEEDED:
            event, level = "succeeded", logging.INFO
        elif state is ItemState.QUEUED:
            if outcome.error is not None:
                event, level = "retrying", logging.WARNING
            else:
                event, level = "released", logging.INFO
            if len(self.retries_due) < 10_000:
                heapq.heappush(self.retries_due, anyio.current_time() + outcome.delay)
        elif state is ItemState.FAILED:
            event, level = "failed", logging.WARNING
        else:
            event, level = state.value, logging.INFO
        if self.on_event is not None:
            self.on_event(event, lease)
        if not items_logger.isEnabledFor(level):
            return
        fields: dict[str, Any] = {"duration": round(duration, 6)}
        if outcome.error is not None:
            fields["error_type"] = outcome.error.type
            fields["error"] = _cut(outcome.error.message, 200)
        if event == "retrying":
            fields["delay"] = round(outcome.delay, 3)
        self._log(level, event, lease, **fields)

    async def _limit_failures(self, lease: Lease, limit: int, *, failing: bool) -> None:
        """Cancel the rest of the batch once more than ``limit`` of its items have failed.

        Checked before the failure is written (counting it), so that a runner dying right
        after writing it still leaves the batch cancelled, and again after (without it),
        for failures written by other runners at the same moment.
        """
        batch_id = lease.batch_id
        # Only a failure that will be written counts: the lease must still be ours.
        seconds = self.lease_seconds
        if failing and not (await self.storage.heartbeat(lease, lease_seconds=seconds)).held:
            return
        record = await self.storage.get_batch(batch_id)
        failed = record.counts.get(ItemState.FAILED, 0) + (1 if failing else 0)
        if failed <= limit or record.cancel_requested_at is not None:
            return
        if record.finished_at is not None:
            return
        reason = (
            f"{failed} items failed, more than max_failures={limit}: "
            "the rest of the batch was cancelled"
        )
        await self.storage.cancel_batch(batch_id, reason=reason)
        logger.warning(
            "batch %s cancelled: %s",
            batch_id,
            reason,
            extra={"batch_id": batch_id, "failed": failed, "max_failures": limit},
        )
        for keeper in list(self._keepers):
            if keeper.lease is not None and keeper.lease.batch_id == batch_id:
                keeper.cancel_now()

    def _event(self, event: str, lease: Lease) -> None:
        if self.on_event is not None:
            self.on_event(event, lease)

    def _log(
        self, level: int, event: str, lease: Lease, *, says: str | None = None, **fields: Any
    ) -> None:
        """Log an item's ``event``; the line says ``says`` when given, else the event."""
        if not items_logger.isEnabledFor(level):
            return
        extra: dict[str, Any] = {
            "event": event,
            "batch_id": lease.batch_id,
            "key": lease.key,
            "attempt": lease.attempt,
            **fields,
        }
        if self.name is not None:
            extra["worker"] = self.name
        items_logger.log(
            level, "item %s %s: %s", lease.batch_id, _shown(lease.key), says or event, extra=extra
        )

    def recently_running(self, since: float) -> list[Lease]:
        """The items running now, or that ended at ``since`` (`time.monotonic`) or later."""
        return [
            lease
            for k in self._keepers
            if (lease := k.lease or (k.recent if k.recent_end >= since else None))
        ]

    async def _execute(self, claim: Claim, keeper: Keeper, history: History) -> _Ended | None:
        lease = claim.lease
        reporter = _Reporter(self.limits.max_message_length)
        timeout = self.item_timeout
        ended: _Ended | None = None
        try:
            # A storage shields its writes, and a generator need not await anything: this
            # is where a cancelled run notices, once per item, whatever both do.
            await anyio.lowlevel.checkpoint_if_cancelled()
            ctx = ItemContext(
                batch_id=lease.batch_id,
                key=lease.key,
                payload=claim.payload,
                attempt=lease.attempt,
                position=claim.position,
                metadata=(await self.batch_info(lease.batch_id)).metadata,
                reporter=reporter,
            )
            # One scope serves the item timeout (its deadline) and the keeper (which
            # cancels it when the batch is cancelled or the lease is lost).
            deadline = math.inf if timeout is None else anyio.current_time() + timeout
            with anyio.CancelScope(deadline=deadline) as control:
                keeper.begin(lease, reporter, control)
                ended = await self._invoke(ctx)
        except BaseException:
            keeper.end()
            released = Outcome.released(history=history.with_release().encode())
            with anyio.CancelScope(shield=True):
                done = await self.storage.finish(lease, released)
            if done.accepted:
                self._log(logging.INFO, "released", lease)
                self._event("released", lease)
            raise
        keeper.end()
        if keeper.lost:
            return None
        late = anyio.current_time() - deadline
        if ended is not None and (late < 0 or keeper.cancelled):
            return ended
        if keeper.cancelled:
            return Outcome.cancelled(), None
        # Past its deadline the attempt has failed, whatever the generator did after it:
        # returned a value (it ignored its cancellation, or never awaited anything for
        # the cancellation to reach it) or raised.
        assert timeout is not None
        message = f"the item did not finish within item_timeout={timeout:g}s"
        if ended is not None and not control.cancel_called:
            # The deadline passed while the generator held the event loop: nothing else
            # ran meanwhile (heartbeats, progress, other items).
            message += f"; it blocked the event loop until {late:.3g}s past its deadline"
            self._log(logging.WARNING, "blocked", lease, says=message)
        elif ended is not None:
            message += f"; it ignored its cancellation and ended {late:.3g}s late"
        error = ItemError(type="TimeoutError", message=message, attempt=lease.attempt)
        return Outcome.failed(error), TimeoutError(message)

    async def _invoke(self, ctx: ItemContext) -> _Ended:
        try:
            if self.generator_is_async:
                value = await self.generator(ctx)
            else:
                value = await anyio.to_thread.run_sync(
                    _call_sync,
                    self.generator,
                    ctx,
                    abandon_on_cancel=True,
                    limiter=self.thread_limiter,
                )
        except Exception as exc:
            error = error_from_exception(exc, attempt=ctx.attempt, limits=self.limits)
            return Outcome.failed(error), exc
        except BaseException as exc:
            if is_cancellation(exc):
                raise
            value = _Raised(exc)
        if type(value) is _Raised:
            # GeneratorExit, SystemExit, KeyboardInterrupt, a class of the host's own: the
            # attempt fails like any other, counted against the item's budget, and is
            # written before anything propagates (`work` re-raises the two that stop a
            # process): an item that raises one on every run must end `failed`, not be
            # handed back uncounted to crash the next runner in turn.
            error = error_from_exception(value.exc, attempt=ctx.attempt, limits=self.limits)
            return Outcome.failed(error), value.exc
        if value is _FORGOT_ASYNC or inspect.isawaitable(value):
            _close(value)
            error = ItemError(
                type="InvalidResult",
                message="the generator returned an awaitable; declare it `async def` "
                "so that batchkit awaits it",
                attempt=ctx.attempt,
            )
            return Outcome.failed(error), None
        try:
            text = encode(
                value,
                max_bytes=self.limits.max_result_bytes,
                max_depth=self.limits.max_json_depth,
                what="result",
            )
        except JSONError as exc:
            error = ItemError(type="InvalidResult", message=str(exc), attempt=ctx.attempt)
            return Outcome.failed(error), None
        return Outcome.succeeded(text), None


def is_cancellation(exc: BaseException) -> bool:
    """Whether ``exc`` is a cancellation of the running task, not an error named like one.

    On asyncio a generator can raise `asyncio.CancelledError` itself, or get one from a
    future someone else cancelled, while nothing cancels its task: that is the
    generator's error. (trio's `Cancelled` cannot be raised by hand.)
    """
    if not isinstance(exc, anyio.get_cancelled_exc_class()):
        return False
    if isinstance(exc, asyncio.CancelledError):
        task = asyncio.current_task()
        return task is None or task.cancelling() > 0
    return True


#: Errors that stop a process: after the attempt is written, they propagate.
STOPPING = (SystemExit, KeyboardInterrupt)


def _shown(key: str) -> str:
    """An item key as the log shows it: quoted, control characters escaped, cut."""
    return repr(_cut(key, 80))
