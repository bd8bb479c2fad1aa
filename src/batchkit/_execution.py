"""Running claimed items: the slot loop, the keeper task and the capture of failures.

Shared by `BatchRunner.run` (items of one batch) and workers (items of any batch).
"""

from __future__ import annotations

import functools
import inspect
import logging
import math
import re
import traceback
from typing import TYPE_CHECKING, Any

import anyio
import anyio.to_thread

from .codec import JSONError, clean_text, encode
from .context import ItemContext, _Reporter
from .models import ItemError, Limits
from .protocols import Claim, ClaimRequest, Lease, LeaseStatus, Outcome, Storage

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from .protocols import Generator, SyncGenerator

__all__ = ["Executor", "error_from_exception", "is_async_callable", "redact"]

logger = logging.getLogger("batchkit.runner")

# user:password@ in URLs (database DSNs, API endpoints) never reaches storage or logs.
# The scheme is bounded so that a long run of letters costs linear time, not quadratic
# (messages are redacted whole, before being cut). The password is greedy to the last
# "@" of the authority: one written with a raw "@" is hidden whole, not just its head.
_CREDENTIALS = re.compile(
    r"(?P<scheme>[a-zA-Z][a-zA-Z0-9+.-]{0,39}://)(?P<user>[^\s:/@]*):[^\s/]+@"
)


def redact(text: str) -> str:
    """Hide passwords embedded in URLs."""
    if "://" not in text:
        return text
    return _CREDENTIALS.sub(r"\g<scheme>\g<user>:***@", text)


def _cut(text: str, limit: int, *, keep_end: bool = False) -> str:
    if len(text) <= limit:
        return text
    if keep_end:
        return "…" + text[-(limit - 1) :]
    return text[: limit - 1] + "…"


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
        type=type(exc).__name__,
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


def _call_sync(generator: Callable[[ItemContext], Any], ctx: ItemContext) -> Any:
    # A sync function that returns a coroutine forgot `async`; trio's to_thread would
    # refuse it with its own TypeError, so recognise it here, the same on every backend.
    value = generator(ctx)
    if inspect.isawaitable(value):
        _close(value)
        return _FORGOT_ASYNC
    return value


class _Keeper:
    """Heartbeats and throttled progress writes for the item a slot is running."""

    def __init__(self, executor: Executor) -> None:
        self._ex = executor
        self.lease: Lease | None = None
        self.reporter: _Reporter | None = None
        self.scope: anyio.CancelScope | None = None
        self.lost = False
        self.cancelled = False
        self._idle = anyio.Event()

    def begin(self, lease: Lease, reporter: _Reporter, scope: anyio.CancelScope) -> None:
        self.lease, self.reporter, self.scope = lease, reporter, scope
        self.lost = self.cancelled = False
        self._idle.set()

    def end(self) -> None:
        if self.reporter is not None and self.reporter.wake is not None:
            self.reporter.wake.set()  # the keeper may be asleep on the finished item
        self.lease = self.reporter = self.scope = None
        self._idle = anyio.Event()

    async def run(self) -> None:
        ex = self._ex
        while True:
            await self._idle.wait()
            lease, reporter, scope = self.lease, self.reporter, self.scope
            if lease is None or reporter is None or scope is None:
                await anyio.lowlevel.checkpoint()
                continue
            last_write = -math.inf
            next_beat = anyio.current_time() + ex.heartbeat_interval
            while self.lease is lease:
                now = anyio.current_time()
                due = next_beat
                if reporter.pending is not None:
                    due = min(due, last_write + ex.progress_interval)
                elif not ex.generator_is_async:
                    due = min(due, now + ex.progress_interval)  # a thread cannot wake us
                if due > now:
                    reporter.wake = anyio.Event()
                    with anyio.move_on_after(due - now):
                        await reporter.wake.wait()
                    reporter.wake = None
                    if self.lease is not lease:
                        break
                    now = anyio.current_time()
                status: LeaseStatus | None = None
                pending = reporter.pending
                if pending is not None and now >= last_write + ex.progress_interval:
                    reporter.pending = None
                    # Shielded: cancelling a driver mid-write (the item ended meanwhile)
                    # can leave its connection half-closed; the write is short anyway.
                    with anyio.CancelScope(shield=True):
                        status = await ex.storage.record_progress(
                            lease, pending[0], pending[1], lease_seconds=ex.lease_seconds
                        )
                    last_write = now
                    next_beat = now + ex.heartbeat_interval
                elif now >= next_beat:
                    with anyio.CancelScope(shield=True):
                        status = await ex.storage.heartbeat(lease, lease_seconds=ex.lease_seconds)
                    next_beat = now + ex.heartbeat_interval
                if status is None or self.lease is not lease:
                    continue
                if not status.held:
                    logger.warning(
                        "lease lost: another runner took the item over",
                        extra={"batch_id": lease.batch_id, "key": lease.key},
                    )
                    self.lost = True
                    scope.cancel()
                    break
                if status.cancel_requested:
                    reporter.cancel_requested = True
                    self.cancelled = True
                    scope.cancel()
                    break
            if self.lease is lease:  # stopped this item; wait for the next one
                self._idle = anyio.Event()


class Executor:
    """Claims, runs and finishes items with one generator, under one set of options."""

    def __init__(
        self,
        *,
        storage: Storage,
        generator: Generator | SyncGenerator,
        limits: Limits,
        item_timeout: float | None,
        lease_seconds: float,
        progress_interval: float,
        metadata_of: Callable[[str], Awaitable[dict[str, Any]]],
        thread_limiter: anyio.CapacityLimiter | None = None,
    ) -> None:
        self.storage = storage
        self.generator = generator
        self.generator_is_async = is_async_callable(generator)
        self.limits = limits
        self.item_timeout = item_timeout
        self.lease_seconds = lease_seconds
        self.heartbeat_interval = lease_seconds / 3
        self.progress_interval = progress_interval
        self.metadata_of = metadata_of
        self.thread_limiter = thread_limiter

    async def run_slot(self, request: ClaimRequest, claim: Claim | None = None) -> int:
        """Claim and run items until none is claimable; return how many ran.

        Cancelling the slot releases the running item to `queued` (shielded) and
        propagates; so does any BaseException the generator raises.
        """
        ran = 0
        keeper = _Keeper(self)
        async with anyio.create_task_group() as tg:
            tg.start_soon(keeper.run)
            if claim is None:
                claim = await self.storage.claim(request)
            while claim is not None:
                outcome = await self._execute(claim, keeper)
                ran += 1
                if outcome is None:  # lease lost: another runner owns the item now
                    claim = await self.storage.claim(request)
                    continue
                try:
                    result = await self.storage.finish(claim.lease, outcome, then_claim=request)
                except BaseException:
                    # The work is done: a cancellation arriving mid-write must not lose its
                    # outcome (the item would stay running until its lease lapsed). Write
                    # it again, shielded; fencing refuses it if the first write landed. (A
                    # store whose step can commit before a cancellation reaches the caller
                    # shields that step itself: see the Storage protocol.)
                    with anyio.CancelScope(shield=True):
                        await self.storage.finish(claim.lease, outcome)
                    raise
                if not result.accepted:
                    logger.warning(
                        "outcome refused: the lease was no longer current",
                        extra={"batch_id": claim.lease.batch_id, "key": claim.lease.key},
                    )
                claim = result.claim
            tg.cancel_scope.cancel()
        return ran

    async def _execute(self, claim: Claim, keeper: _Keeper) -> Outcome | None:
        lease = claim.lease
        reporter = _Reporter(self.limits.max_message_length)
        timeout = self.item_timeout
        outcome: Outcome | None = None
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
                metadata=await self.metadata_of(lease.batch_id),
                reporter=reporter,
            )
            # One scope serves the item timeout (its deadline) and the keeper (which
            # cancels it when the batch is cancelled or the lease is lost).
            deadline = math.inf if timeout is None else anyio.current_time() + timeout
            with anyio.CancelScope(deadline=deadline) as control:
                keeper.begin(lease, reporter, control)
                outcome = await self._invoke(ctx)
        except BaseException:
            keeper.end()
            with anyio.CancelScope(shield=True):
                await self.storage.finish(lease, Outcome.released())
            raise
        keeper.end()
        if keeper.lost:
            return None
        if outcome is not None:
            return outcome
        if keeper.cancelled:
            return Outcome.cancelled()
        return Outcome.failed(
            ItemError(
                type="TimeoutError",
                message=f"the item did not finish within item_timeout={timeout:g}s",
                attempt=lease.attempt,
            )
        )

    async def _invoke(self, ctx: ItemContext) -> Outcome:
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
            return Outcome.failed(
                error_from_exception(exc, attempt=ctx.attempt, limits=self.limits)
            )
        if value is _FORGOT_ASYNC or inspect.isawaitable(value):
            _close(value)
            return Outcome.failed(
                ItemError(
                    type="InvalidResult",
                    message="the generator returned an awaitable; declare it `async def` "
                    "so that batchkit awaits it",
                    attempt=ctx.attempt,
                )
            )
        try:
            text = encode(
                value,
                max_bytes=self.limits.max_result_bytes,
                max_depth=self.limits.max_json_depth,
                what="result",
            )
        except JSONError as exc:
            return Outcome.failed(
                ItemError(type="InvalidResult", message=str(exc), attempt=ctx.attempt)
            )
        return Outcome.succeeded(text)
