"""The items log: one line per transition of an item, on the ``batchkit.items`` logger."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from ._errors import cut

if TYPE_CHECKING:
    from .protocols import Lease

__all__ = ["items_logger", "log_item", "shown"]

#: One line per transition of an item (started, succeeded, failed, retrying, released,
#: cancelled, recovered), with the fields ``event batch_id key attempt`` and more.
items_logger = logging.getLogger("batchkit.items")


def shown(key: str) -> str:
    """An item key as the log shows it: quoted, control characters escaped, cut."""
    return repr(cut(key, 80))


def log_item(
    level: int,
    event: str,
    lease: Lease,
    *,
    worker: str | None = None,
    says: str | None = None,
    **fields: Any,
) -> None:
    """Log an item's ``event``; the line says ``says`` when given, else the event.

    Args:
        level: the line's level.
        event: what happened, also the line's ``event`` field.
        lease: the item's lease: its batch, key and attempt.
        worker: the name of the worker that ran it, if a worker did.
        says: the line's text, when it says more than the event's name.
        fields: more fields of the line.
    """
    if not items_logger.isEnabledFor(level):
        return
    extra: dict[str, Any] = {
        "event": event,
        "batch_id": lease.batch_id,
        "key": lease.key,
        "attempt": lease.attempt,
        **fields,
    }
    if worker is not None:
        extra["worker"] = worker
    items_logger.log(
        level, "item %s %s: %s", lease.batch_id, shown(lease.key), says or event, extra=extra
    )
