"""Calling the host's generator once: awaited, or in a worker thread, to an `Outcome`.

Whatever the call comes to (a value, an error, an awaitable from a sync function, a
result that is not JSON) becomes the attempt's outcome; only a cancellation of the
running task propagates.
"""

from __future__ import annotations

import functools
import inspect
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import anyio
import anyio.to_thread

from ._errors import error_from_exception, is_cancellation
from .codec import JSONError, encode
from .models import ItemError
from .protocols import Outcome

if TYPE_CHECKING:
    from collections.abc import Callable

    from .context import ItemContext
    from .models import Limits
    from .protocols import Generator, SyncGenerator

__all__ = ["Ended", "call_generator", "is_async_callable"]

#: What an attempt came to before the retry policy has its say: the outcome, and the
#: exception that failed it (`None` when none was raised: a result that is not JSON).
Ended = tuple[Outcome, BaseException | None]


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


async def call_generator(
    generator: Generator | SyncGenerator,
    ctx: ItemContext,
    *,
    is_async: bool,
    limits: Limits,
    thread_limiter: anyio.CapacityLimiter | None,
) -> Ended:
    """Run one attempt of ``generator`` on ``ctx``; a sync one runs in a worker thread."""
    try:
        if is_async:
            value = await generator(ctx)
        else:
            value = await anyio.to_thread.run_sync(
                _call_sync,
                generator,
                ctx,
                abandon_on_cancel=True,
                limiter=thread_limiter,
            )
    except Exception as exc:
        error = error_from_exception(exc, attempt=ctx.attempt, limits=limits)
        return Outcome.failed(error), exc
    except BaseException as exc:
        if is_cancellation(exc):
            raise
        value = _Raised(exc)
    if type(value) is _Raised:
        # GeneratorExit, SystemExit, KeyboardInterrupt, a class of the host's own: the
        # attempt fails like any other, counted against the item's budget, and is
        # written before anything propagates (`Executor.work` re-raises the two that
        # stop a process): an item that raises one on every run must end `failed`, not
        # be handed back uncounted to crash the next runner in turn.
        error = error_from_exception(value.exc, attempt=ctx.attempt, limits=limits)
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
            max_bytes=limits.max_result_bytes,
            max_depth=limits.max_json_depth,
            what="result",
        )
    except JSONError as exc:
        error = ItemError(type="InvalidResult", message=str(exc), attempt=ctx.attempt)
        return Outcome.failed(error), None
    return Outcome.succeeded(text), None
