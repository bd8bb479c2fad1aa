"""Firing completion hooks: claim a finished batch, call the hook, acknowledge it."""

from __future__ import annotations

import inspect
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from ._errors import is_cancellation
from .status import status_from_record

if TYPE_CHECKING:
    from .models import BatchStatus
    from .protocols import Storage

__all__ = ["BatchFinishedHook", "fire_hook"]

logger = logging.getLogger("batchkit.runner")

#: Called once when a batch becomes terminal, with its final status; sync or async.
BatchFinishedHook = Callable[["BatchStatus"], Awaitable[None] | None]


async def fire_hook(
    storage: Storage,
    hook: BatchFinishedHook,
    *,
    lease_seconds: float,
    batch_id: str | None = None,
    name: str | None = None,
) -> str | None:
    """Fire the hook of one finished batch whose hook is due; return its id, or `None`.

    The storage hands each finished batch's hook to one caller at a time, for
    ``lease_seconds``: a caller that dies before acknowledging it lets another fire it
    after that, so the hook fires even when the runner that finished the batch crashed.
    A hook that raises (anything but a cancellation, `SystemExit` included) is logged
    and counts as fired: it is not called again, by this runner or another.
    """
    claimed = await storage.claim_finished_batch(batch_id=batch_id, lease_seconds=lease_seconds)
    if claimed is None:
        return None
    status = status_from_record(claimed.record)
    fields = {"event": "hook_fired", "batch_id": status.batch_id, "state": status.state.value}
    if name is not None:
        fields["worker"] = name
    started = time.monotonic()
    try:
        result = hook(status)
        if inspect.isawaitable(result):
            await result
    except Exception:
        logger.exception("on_batch_finished hook raised", extra=fields)
    except BaseException as exc:
        if is_cancellation(exc):
            raise
        # Raised out of here, the hook's batch would stay unacknowledged, to be fired
        # again by the next runner, which it would stop in turn.
        logger.error("on_batch_finished hook raised", exc_info=exc, extra=fields)
    took = time.monotonic() - started
    acked = await storage.ack_finished_batch(status.batch_id, claimed.token)
    if not acked:
        logger.warning(
            "the on_batch_finished hook of batch %s could not be acknowledged (it took "
            "%.1f s, the lease is %g s): another runner took it over, and may fire it "
            "too, or the batch was deleted",
            status.batch_id,
            took,
            lease_seconds,
            extra=fields,
        )
    elif took >= lease_seconds:
        logger.warning(
            "the on_batch_finished hook of batch %s took %.1f s, longer than the lease "
            "(%g s): another runner may have fired it too; keep hooks short, or raise "
            "the lease",
            status.batch_id,
            took,
            lease_seconds,
            extra=fields,
        )
    logger.info("completion hook of batch %s fired", status.batch_id, extra=fields)
    return status.batch_id
