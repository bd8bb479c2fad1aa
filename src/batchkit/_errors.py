"""What a generator raised: its bounded, redacted `ItemError`, and how the runner takes it.

A cancellation of the running task propagates; `SystemExit` and `KeyboardInterrupt` fail
the attempt and then stop the runner; anything else fails the attempt.
"""

from __future__ import annotations

import asyncio
import traceback
from typing import TYPE_CHECKING

import anyio

from ._secrets import redact
from .codec import clean_text
from .models import ItemError

if TYPE_CHECKING:
    from .models import Limits

__all__ = ["STOPPING", "cut", "error_from_exception", "is_cancellation"]

#: Errors that stop a process: after the attempt is written, they propagate.
STOPPING = (SystemExit, KeyboardInterrupt)

#: Longest exception class name kept in `ItemError.type` (a generated class can have any).
_MAX_TYPE_LENGTH = 200


def cut(text: str, limit: int, *, keep_end: bool = False) -> str:
    """``text`` cut to ``limit`` characters, an ellipsis marking the cut (at the start
    with ``keep_end``, where the end of a traceback is what matters)."""
    if len(text) <= limit:
        return text
    if limit <= 1:
        return "…"[:limit]
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
        type=cut(clean_text(type(exc).__name__), _MAX_TYPE_LENGTH),
        message=cut(clean_text(redact(message)), limits.max_error_length),
        traceback=cut(clean_text(redact(formatted)), limits.max_traceback_length, keep_end=True),
        attempt=attempt,
    )


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
