"""The ``max_failures`` policy: past that many failed items, the rest of the batch is cancelled."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from .exceptions import InvalidBatch
from .models import ItemState

if TYPE_CHECKING:
    from collections.abc import Callable

    from .protocols import Lease, Storage

__all__ = ["check_max_failures", "enforce_max_failures"]

logger = logging.getLogger("batchkit.runner")


def check_max_failures(value: object) -> int | None:
    """``max_failures`` as given to `BatchRunner.submit`: `None` or an integer of at least 0."""
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise InvalidBatch(f"max_failures must be None or an integer of at least 0, got {value!r}")
    return value


async def enforce_max_failures(
    storage: Storage,
    lease: Lease,
    limit: int,
    *,
    failing: bool,
    lease_seconds: float,
    stop_running: Callable[[str], None],
) -> None:
    """Cancel the rest of the batch once more than ``limit`` of its items have failed.

    Checked before the failure is written (counting it), so that a runner dying right
    after writing it still leaves the batch cancelled, and again after (without it),
    for failures written by other runners at the same moment.

    Args:
        storage: the store.
        lease: the lease of the item that failed.
        limit: the batch's ``max_failures``.
        failing: whether the failure is still to be written (it is counted then).
        lease_seconds: how long a heartbeat renews the lease for.
        stop_running: called with the batch's id once it is cancelled here, to stop its
            items running in this process at once.
    """
    batch_id = lease.batch_id
    # Only a failure that will be written counts: the lease must still be ours.
    if failing and not (await storage.heartbeat(lease, lease_seconds=lease_seconds)).held:
        return
    record = await storage.get_batch(batch_id)
    failed = record.counts.get(ItemState.FAILED, 0) + (1 if failing else 0)
    if failed <= limit or record.cancel_requested_at is not None:
        return
    if record.finished_at is not None:
        return
    reason = (
        f"{failed} items failed, more than max_failures={limit}: "
        "the rest of the batch was cancelled"
    )
    await storage.cancel_batch(batch_id, reason=reason)
    logger.warning(
        "batch %s cancelled: %s",
        batch_id,
        reason,
        extra={"batch_id": batch_id, "failed": failed, "max_failures": limit},
    )
    stop_running(batch_id)
