"""Generators and hooks for the worker processes of the tests (``--generator`` targets).

They write what happened to files named by environment variables, one JSON line per
event, with ``os.write`` on a file opened for appending, so that a line written before a
SIGKILL is on disk whole:

* ``BATCHKIT_TEST_RUNLOG``: ``{"event": "start"|"end", "key", "pid", "attempt", "t"}``
  per attempt (times from the monotonic clock, which the processes of one machine share);
* ``BATCHKIT_TEST_HOOKLOG``: ``{"batch_id", "state", "pid"}`` per completion hook call.

``BATCHKIT_TEST_SLEEP`` is how long each attempt takes (seconds).
"""

from __future__ import annotations

import json
import os
import signal
import time
from typing import TYPE_CHECKING, Any

import anyio

if TYPE_CHECKING:
    from batchkit import BatchStatus, ItemContext

__all__ = ["dying_hook", "flaky", "generate", "hook", "not_callable", "poisoned"]

_PID = os.getpid()
_SLEEP = float(os.environ.get("BATCHKIT_TEST_SLEEP", "0"))


def _append(variable: str, entry: dict[str, Any]) -> None:
    path = os.environ.get(variable)
    if not path:
        return
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (json.dumps(entry) + "\n").encode())
    finally:
        os.close(fd)


async def generate(ctx: ItemContext) -> dict[str, Any]:
    """Take ``BATCHKIT_TEST_SLEEP`` seconds; log the start and the end of the attempt."""
    entry = {"key": ctx.key, "pid": _PID, "attempt": ctx.attempt}
    _append("BATCHKIT_TEST_RUNLOG", {**entry, "event": "start", "t": time.monotonic()})
    if _SLEEP:
        await anyio.sleep(_SLEEP)
    await ctx.progress(1.0, "done")
    _append("BATCHKIT_TEST_RUNLOG", {**entry, "event": "end", "t": time.monotonic()})
    return {"pid": _PID, "attempt": ctx.attempt}


async def flaky(ctx: ItemContext) -> dict[str, Any]:
    """Fail every first attempt, then do as `generate`."""
    if ctx.attempt == 1:
        raise ConnectionError(f"{ctx.key}: the renderer is busy")
    return await generate(ctx)


async def metered(ctx: ItemContext) -> dict[str, Any]:
    """Do as `generate`, but fail every attempt of an item whose payload says
    ``{"fail": true}``, and the first attempt of one that says ``{"flaky": true}``."""
    wants = ctx.payload if isinstance(ctx.payload, dict) else {}
    if wants.get("fail") or (wants.get("flaky") and ctx.attempt == 1):
        raise ConnectionError(f"{ctx.key}: the renderer is busy")
    return await generate(ctx)


class Poison(BaseException):
    """A host's own BaseException: not an `Exception`."""


_POISONS: dict[str, type[BaseException]] = {
    "Poison": Poison,
    "GeneratorExit": GeneratorExit,
    "SystemExit": SystemExit,
    "KeyboardInterrupt": KeyboardInterrupt,
}


async def poisoned(ctx: ItemContext) -> dict[str, Any]:
    """Raise the BaseException the payload names (``{"raise": "SystemExit"}``), on every
    attempt; do as `generate` for any other payload."""
    if isinstance(ctx.payload, dict) and "raise" in ctx.payload:
        entry = {"key": ctx.key, "pid": _PID, "attempt": ctx.attempt}
        _append("BATCHKIT_TEST_RUNLOG", {**entry, "event": "start", "t": time.monotonic()})
        raise _POISONS[ctx.payload["raise"]](f"{ctx.key} is poisoned")
    return await generate(ctx)


#: Not a generator: the command line refuses it.
not_callable = 42


def hook(status: BatchStatus) -> None:
    """Log the completion hook's call."""
    entry = {"batch_id": status.batch_id, "state": status.state.value, "pid": _PID}
    _append("BATCHKIT_TEST_HOOKLOG", entry)


def dying_hook(status: BatchStatus) -> None:
    """Die the moment the hook is called: the worker that finished the batch is gone."""
    os.kill(_PID, signal.SIGKILL)
