"""The executor: claims items, runs them in slots, and writes their outcomes.

Shared by `BatchRunner.run` (items of one batch) and workers (items of any batch). What
it builds on lives beside it: `_keeper` (heartbeats and progress writes), `_calling`
(one call of the generator), `_errors` (what the generator raised), `_failure_limit`
(``max_failures``), `_itemlog` (the items log) and `_batch_info`.
"""

from __future__ import annotations

import heapq
import logging
import math
import time
from contextlib import asynccontextmanager
from dataclasses import replace
from typing import TYPE_CHECKING, Any, Protocol

import anyio
import anyio.lowlevel

from ._calling import Ended, call_generator, is_async_callable
from ._errors import STOPPING, cut
from ._failure_limit import enforce_max_failures
from ._grouping import Group, Joint, write_shared
from ._itemlog import items_logger, log_item
from ._keeper import Keeper, KeeperSettings
from ._secrets import redact
from ._tracing import attempt_span, current_span, end_attempt, public_metadata, tracer
from .context import ItemContext, _Reporter
from .exceptions import StorageError
from .history import History
from .models import ItemError, ItemState, Limits
from .protocols import (
    BatchInfo,
    Claim,
    ClaimRequest,
    FinishResult,
    GroupCommitter,
    Lease,
    Outcome,
    Storage,
)

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable

    from ._batch_info import BatchInfoCache
    from .metrics import Metrics
    from .protocols import Generator, SyncGenerator
    from .retry import RetryPolicy

__all__ = ["Executor", "ExecutorOptions", "build_executor"]


_NO_HISTORY = History()
#: The outcomes after which an item keeps its progress and message (a retry starts anew).
_KEEPS_PROGRESS = frozenset({ItemState.FAILED, ItemState.CANCELLED})

logger = logging.getLogger("batchkit.runner")


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
        group_commit: seconds an item's success may wait to be written with the next ones,
            and the items claimed ahead to start (see `_grouping`); 0 writes each outcome
            alone, as does a storage that is not a `GroupCommitter`.
        metrics: told of each item's events and of the store's failures outlived.
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
        batch_info: BatchInfoCache,
        retry: RetryPolicy | None = None,
        thread_limiter: anyio.CapacityLimiter | None = None,
        name: str | None = None,
        on_event: Callable[[str, Lease], None] | None = None,
        patient: bool = False,
        group_commit: float = 0.0,
        metrics: Metrics | None = None,
    ) -> None:
        self.storage = storage
        self.metrics = metrics
        #: batchkit's OpenTelemetry tracer, or `None`: no span at all (see `_tracing`).
        self.tracing = tracer()
        self.group_commit = group_commit if isinstance(storage, GroupCommitter) else 0.0
        self.patient = patient
        self.generator = generator
        self.generator_is_async = is_async_callable(generator)
        self.limits = limits
        self.item_timeout = item_timeout
        self.lease_seconds = lease_seconds
        self.heartbeat_interval = lease_seconds / 3
        self.progress_interval = progress_interval
        #: What each slot's keeper reads of these options.
        self.keeper_settings = KeeperSettings(
            lease_seconds=lease_seconds,
            heartbeat_interval=self.heartbeat_interval,
            progress_interval=progress_interval,
            generator_is_async=self.generator_is_async,
        )
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
        #: Per batch, the successes its slots are writing together (see `Joint`).
        self._joints: dict[str, Joint] = {}

    def running(self) -> list[Lease]:
        """The leases of the items this executor is running now."""
        return [k.lease for k in self._keepers if k.lease is not None]

    @asynccontextmanager
    async def slot(self) -> AsyncIterator[Keeper]:
        """A slot that runs one item at a time: its keeper task runs while it is open."""
        keeper = Keeper(self.storage, self.keeper_settings)
        group = keeper.group = Group(self.group_commit) if self.group_commit else None
        if group is not None:
            keeper.flush_group = lambda: self._flush(group, keep_ahead=False)
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
            if group is not None and group.pending():
                # What the slot owes, written; what it claimed ahead, handed back.
                with anyio.CancelScope(shield=True):
                    await self._flush(group, keep_ahead=False)

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
        if self.metrics is not None:
            self.metrics.item("started")
        retry = self.retry
        stopping: BaseException | None = None
        group = keeper.group
        elapsed = 0.0
        if retry is not None and history.failures >= retry.max_attempts:
            # The attempts lost with their runners used the item's whole budget: an item
            # that kills every worker running it must not be run again.
            error = history.errors[-1]
            outcome = Outcome.failed(error, history=history.encode())
        else:
            if logging_items:
                self._log(logging.INFO, "started", lease)
            ended = await self._execute(claim, keeper, history)
            elapsed = time.monotonic() - started
            if group is not None:
                group.note(elapsed)
            if callable(then_claim):
                then_claim = then_claim()
            if ended is None:  # lease lost: another runner owns the item now
                self._event("refused", lease)
                return await self._next(group, then_claim)
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
            if keeper.unwritten is not None and outcome.state in _KEEPS_PROGRESS:
                await self._last_report(lease, keeper.unwritten)
            if keeper.span is not None:
                self._end_span(keeper, _outcome_name(outcome), exc)
        if callable(then_claim):
            then_claim = then_claim()
        if group is not None and _joins(group, lease, outcome, stopping, then_claim):
            assert then_claim is not None
            return await self._grouped(group, lease, outcome, elapsed, then_claim)
        limit: int | None = None
        if outcome.state is ItemState.FAILED:
            limit = (await self.batch_info(lease.batch_id)).max_failures
            if limit is not None:
                await self._limit_failures(lease, limit, failing=True)
        ahead: Claim | None = None
        if group is not None and group.pending():
            # Written before this outcome. The items claimed ahead run next, unless this
            # slot stops, or the batch is cancelled (or may be: a failure limit).
            keep = (
                then_claim is not None
                and limit is None
                and outcome.state is not ItemState.CANCELLED
            )
            await self._flush(group, keep_ahead=keep)
            if group.ahead:
                ahead, then_claim = group.ahead.popleft(), None
        try:
            if self.group_commit and _shares(lease, outcome, stopping, then_claim):
                assert then_claim is not None
                result = await write_shared(self, self._joints, lease, outcome, then_claim)
            else:
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
                or self.metrics is not None
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
        return result.claim if ahead is None else ahead

    # -- group commit (`_grouping`) --------------------------------------------------------

    async def _grouped(
        self, group: Group, lease: Lease, outcome: Outcome, elapsed: float, request: ClaimRequest
    ) -> Claim | None:
        """Owe a success; write what is owed when it must be, with the next claims."""
        now = anyio.current_time()
        group.owe(lease, outcome, elapsed, now)
        if group.ahead and not group.full(now):
            return group.ahead.popleft()
        claim = 0 if group.ahead else group.size()
        group.ahead.extend(await self._commit(group, lease.batch_id, claim, request.lease_seconds))
        return group.ahead.popleft() if group.ahead else None

    async def _commit(
        self, group: Group, batch_id: str, claim: int, lease_seconds: float
    ) -> list[Claim]:
        """Write the successes owed (`GroupCommitter.finish_group`) and claim ``claim``."""
        owed = group.take_owed()
        storage = self.storage
        assert isinstance(storage, GroupCommitter)  # see group_commit
        try:
            done = await storage.finish_group(
                batch_id,
                [(lease, outcome) for lease, outcome, _ in owed],
                claim=claim,
                lease_seconds=lease_seconds,
            )
        except BaseException as exc:
            if self.patient and isinstance(exc, StorageError | OSError) and not _refused(exc):
                if self.metrics is not None:
                    self.metrics.storage_error(exc)
                for lease, outcome, elapsed in owed:  # each outlives the outage alone
                    result = await self._write(lease, outcome, None)
                    if not result.accepted and await self._landed(lease, outcome):
                        result = FinishResult(accepted=True)  # the group's write landed
                    self._wrote(lease, outcome, elapsed, result)
                return []
            # As a write of one outcome: written again each alone, shielded (see `work`).
            with anyio.CancelScope(shield=True):
                for lease, outcome, _ in owed:
                    await self.storage.finish(lease, outcome)
            raise
        for (lease, outcome, elapsed), accepted in zip(owed, done.accepted, strict=True):
            self._wrote(lease, outcome, elapsed, FinishResult(accepted=accepted))
        return done.claims

    async def _flush(self, group: Group, *, keep_ahead: bool) -> None:
        """Write the successes owed; hand the items claimed ahead back unless kept.

        Shielded: a slot stopping (cancelled) must not leave them owed or held."""
        ahead = [] if keep_ahead else group.take_ahead()
        with anyio.CancelScope(shield=True):
            if group.owed:
                await self._commit(group, group.owed[0][0].batch_id, 0, self.lease_seconds)
            for claim in ahead:
                await self.hand_back(claim)

    async def _next(self, group: Group | None, then_claim: ClaimRequest | None) -> Claim | None:
        """The next claim after an attempt whose outcome was not this runner's to write."""
        if group is not None and group.pending():
            if then_claim is not None and group.ahead:
                return group.ahead.popleft()
            await self._flush(group, keep_ahead=False)
        return None if then_claim is None else await self.storage.claim(then_claim)

    def _wrote(self, lease: Lease, outcome: Outcome, elapsed: float, result: FinishResult) -> None:
        """Log a written success, or its refusal."""
        if not result.accepted:
            self._log(logging.WARNING, "refused", lease)
            self._event("refused", lease)
        elif (
            self.on_event is not None
            or self.metrics is not None
            or items_logger.isEnabledFor(logging.INFO)
        ):
            self._ended(lease, outcome, elapsed)

    async def _write(
        self, lease: Lease, outcome: Outcome, then_claim: ClaimRequest | None
    ) -> FinishResult:
        """Write an item's outcome; a patient executor outlasts the store's outage."""
        try:
            return await self.storage.finish(lease, outcome, then_claim=then_claim)
        except (StorageError, OSError) as exc:
            if not self.patient or _refused(exc):
                raise
            error = exc
            if self.metrics is not None:
                self.metrics.storage_error(exc)
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
            except (StorageError, OSError) as exc:
                if _refused(exc):
                    raise  # no try will ever land: the slot's caller hears of it
                if self.metrics is not None:
                    self.metrics.storage_error(exc)
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
        return outcome.landed(lease, item.state, item.attempt)

    async def _last_report(self, lease: Lease, report: tuple[float, str | None]) -> None:
        """Write the progress an item reported last, not yet written (its writes are
        throttled), before its final failure or cancellation: the item then shows what it
        was doing. A success shows its result; a retry starts its progress anew."""
        try:
            with anyio.CancelScope(shield=True):
                await self.storage.record_progress(lease, *report)
        except (StorageError, OSError) as exc:
            logger.debug(
                "could not write an item's last progress: %s",
                exc,
                extra={"batch_id": lease.batch_id, "key": lease.key},
            )

    async def hand_back(self, claim: Claim) -> None:
        """Give a claimed item back to `queued` without running it (a worker stopping)."""
        history = History.decode(claim.history).with_release()
        done = await self.storage.finish(claim.lease, Outcome.released(history=history.encode()))
        if self.metrics is not None:
            self.metrics.item("handed_back")
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
        if self.metrics is not None:
            self.metrics.item(event, duration)
        if not items_logger.isEnabledFor(level):
            return
        fields: dict[str, Any] = {"duration": round(duration, 6)}
        if outcome.error is not None:
            fields["error_type"] = outcome.error.type
            fields["error"] = cut(outcome.error.message, 200)
        if event == "retrying":
            fields["delay"] = round(outcome.delay, 3)
        self._log(level, event, lease, **fields)

    async def _limit_failures(self, lease: Lease, limit: int, *, failing: bool) -> None:
        """The batch's ``max_failures``: see `enforce_max_failures`."""
        await enforce_max_failures(
            self.storage,
            lease,
            limit,
            failing=failing,
            lease_seconds=self.lease_seconds,
            stop_running=self.cancel_running,
        )

    def cancel_running(self, batch_id: str) -> None:
        """Stop this executor's running items of a batch as cancelled (it just was)."""
        for keeper in list(self._keepers):
            if keeper.lease is not None and keeper.lease.batch_id == batch_id:
                keeper.cancel_now()

    @staticmethod
    def _end_span(keeper: Keeper, outcome: str, error: BaseException | None = None) -> None:
        span, keeper.span = keeper.span, None
        if span is not None:
            end_attempt(span, outcome, error)

    def _event(self, event: str, lease: Lease) -> None:
        if self.on_event is not None:
            self.on_event(event, lease)
        if self.metrics is not None:
            self.metrics.item(event)

    def _log(
        self, level: int, event: str, lease: Lease, *, says: str | None = None, **fields: Any
    ) -> None:
        """Log an item's ``event``; the line says ``says`` when given, else the event."""
        log_item(level, event, lease, worker=self.name, says=says, **fields)

    def recently_running(self, since: float) -> list[Lease]:
        """The items running now, or that ended at ``since`` (`time.monotonic`) or later."""
        return [
            lease
            for k in self._keepers
            if (lease := k.lease or (k.recent if k.recent_end >= since else None))
        ]

    async def _info_of(self, claim: Claim) -> BatchInfo:
        """The claimed item's batch's `BatchInfo`: as the claim carried it (and kept for
        the batch's next items), or read once per batch."""
        batch_id = claim.lease.batch_id
        if claim.batch is None:
            return await self.batch_info(batch_id)
        self.batch_info.remember(batch_id, claim.batch)
        return claim.batch

    async def _execute(self, claim: Claim, keeper: Keeper, history: History) -> Ended | None:
        lease = claim.lease
        reporter = _Reporter(self.limits.max_message_length)
        timeout = self.item_timeout
        ended: Ended | None = None
        try:
            # A storage shields its writes, and a generator need not await anything: this
            # is where a cancelled run notices, once per item, whatever both do.
            await anyio.lowlevel.checkpoint_if_cancelled()
            metadata = (await self._info_of(claim)).metadata
            if self.tracing is not None:
                keeper.span = attempt_span(
                    self.tracing, metadata, lease.batch_id, lease.key, lease.attempt, self.name
                )
            ctx = ItemContext(
                batch_id=lease.batch_id,
                key=lease.key,
                payload=claim.payload,
                attempt=lease.attempt,
                position=claim.position,
                metadata=public_metadata(metadata),
                reporter=reporter,
            )
            # One scope serves the item timeout (its deadline) and the keeper (which
            # cancels it when the batch is cancelled or the lease is lost).
            deadline = math.inf if timeout is None else anyio.current_time() + timeout
            with anyio.CancelScope(deadline=deadline) as control, current_span(keeper.span):
                keeper.begin(lease, reporter, control)
                ended = await call_generator(
                    self.generator,
                    ctx,
                    is_async=self.generator_is_async,
                    limits=self.limits,
                    thread_limiter=self.thread_limiter,
                )
        except BaseException:
            keeper.end()
            self._end_span(keeper, "released")
            released = Outcome.released(history=history.with_release().encode())
            with anyio.CancelScope(shield=True):
                done = await self.storage.finish(lease, released)
            if done.accepted:
                self._log(logging.INFO, "released", lease)
                self._event("released", lease)
            raise
        keeper.end()
        if keeper.lost:
            self._end_span(keeper, "refused")
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


class ExecutorOptions(Protocol):
    """The options `BatchRunner` and `Worker` share, from which each builds its executor."""

    @property
    def storage(self) -> Storage: ...
    @property
    def generator(self) -> Generator | SyncGenerator: ...
    @property
    def concurrency(self) -> int: ...
    @property
    def limits(self) -> Limits: ...
    @property
    def item_timeout(self) -> float | None: ...
    @property
    def lease_seconds(self) -> float: ...
    @property
    def progress_interval(self) -> float: ...
    @property
    def retry(self) -> RetryPolicy | None: ...
    @property
    def group_commit(self) -> float: ...
    @property
    def metrics(self) -> Metrics | None: ...


def build_executor(
    options: ExecutorOptions,
    batch_info: BatchInfoCache,
    *,
    name: str | None = None,
    on_event: Callable[[str, Lease], None] | None = None,
    patient: bool = False,
) -> Executor:
    """The executor of a runner or a worker: its sync generator gets one thread per slot.

    ``batch_info``, ``name``, ``on_event`` and ``patient`` are as `Executor` takes them.
    """
    return Executor(
        storage=options.storage,
        generator=options.generator,
        limits=options.limits,
        item_timeout=options.item_timeout,
        lease_seconds=options.lease_seconds,
        progress_interval=options.progress_interval,
        batch_info=batch_info,
        retry=options.retry,
        thread_limiter=anyio.CapacityLimiter(options.concurrency),
        name=name,
        on_event=on_event,
        patient=patient,
        group_commit=options.group_commit,
        metrics=options.metrics,
    )


def _joins(
    group: Group,
    lease: Lease,
    outcome: Outcome,
    stopping: BaseException | None,
    then_claim: ClaimRequest | None,
) -> bool:
    """Whether an outcome joins its slot's group: a success, the slot going on with the
    same batch (`_shares`), and items quick enough to group (or a group already open)."""
    return (
        _shares(lease, outcome, stopping, then_claim)
        and (group.size() > 1 or group.pending())
        and (not group.owed or group.owed[0][0].batch_id == lease.batch_id)
    )


def _shares(
    lease: Lease,
    outcome: Outcome,
    stopping: BaseException | None,
    then_claim: ClaimRequest | None,
) -> bool:
    """Whether a success is written in its batch's `Joint`: the slot goes on with the
    same batch (the step claims its next item there)."""
    return (
        outcome.state is ItemState.SUCCEEDED
        and stopping is None
        and then_claim is not None
        and then_claim.batch_ids == (lease.batch_id,)
        and not then_claim.metadata
    )


def _outcome_name(outcome: Outcome) -> str:
    """An attempt's outcome as its span says it (see `_tracing.end_attempt`)."""
    if outcome.state is ItemState.QUEUED:
        return "released" if outcome.error is None else "retrying"
    return outcome.state.value


def _refused(exc: BaseException) -> bool:
    """Whether the store refused a write in a way that no retry changes (see
    `StorageError.transient`): waiting it out would wait forever."""
    return isinstance(exc, StorageError) and not exc.transient
