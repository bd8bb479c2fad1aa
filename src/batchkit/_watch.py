"""Watching the event loop: a generator that blocks it holds up every heartbeat."""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

import anyio
import anyio.abc

from ._itemlog import shown

if TYPE_CHECKING:
    from ._execution import Executor

__all__ = ["watch_loop"]

logger = logging.getLogger("batchkit.runner")


async def watch_loop(
    executor: Executor,
    threshold: float,
    *,
    task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
) -> None:
    """Log a warning each time the event loop was blocked for ``threshold`` s or more.

    A generator that blocks the loop (``time.sleep``, CPU-bound work, synchronous I/O)
    holds up every heartbeat of the runner: past the lease, another runner takes its
    items over. The warning names the items that ran while the loop was blocked. Start
    it with ``await task_group.start(...)``: it is watching once that returns.
    """
    interval = min(0.25, threshold / 2)
    started = False
    while True:
        before = anyio.current_time()
        since = time.monotonic()
        if not started:
            task_status.started()
            started = True
        try:
            await anyio.sleep(interval)
        finally:
            # Also when cancelled: the run may end the moment the blocking item does.
            blocked = anyio.current_time() - before - interval
            if blocked >= threshold:
                _report(executor, blocked, since)


def _report(executor: Executor, blocked: float, since: float) -> None:
    running = executor.recently_running(since)
    items = ", ".join(f"{r.batch_id} {shown(r.key)}" for r in running[:5]) or "nothing"
    advice = ""
    if blocked >= executor.lease_seconds:
        advice = (
            f"; that is longer than the lease ({executor.lease_seconds:g} s): another runner "
            "may have taken these items over"
        )
    extra: dict[str, object] = {
        "event": "loop_blocked",
        "blocked": round(blocked, 3),
        "running": [f"{r.batch_id}/{r.key}" for r in running],
    }
    if executor.name is not None:
        extra["worker"] = executor.name
    logger.warning(
        "the event loop was blocked for %.1f s while running %s%s. A generator that blocks "
        "(time.sleep, CPU-bound work, synchronous I/O) holds up every heartbeat: make it a "
        "plain `def` (it then runs in a thread) or move the blocking part into "
        "anyio.to_thread.run_sync",
        blocked,
        items,
        advice,
        extra=extra,
    )
