"""ItemContext: what a generator sees of the item it works on."""

from __future__ import annotations

import math
from typing import Any

import anyio
import anyio.lowlevel

from .codec import clean_text

__all__ = ["ItemContext"]


class _Reporter:
    """Progress waiting to be written, shared by a context and the runner's keeper task.

    The generator only sets fields here; the keeper writes them, throttled, so that a
    generator reporting progress 10,000 times costs a handful of storage writes.
    """

    __slots__ = ("cancel_requested", "max_message", "pending", "wake")

    def __init__(self, max_message: int) -> None:
        self.max_message = max_message
        self.pending: tuple[float, str | None] | None = None
        self.cancel_requested = False
        self.wake: anyio.Event | None = None

    def set(self, fraction: float, message: str | None) -> None:
        if not isinstance(fraction, int | float) or isinstance(fraction, bool):
            raise TypeError(f"progress must be a number from 0 to 1, got {fraction!r}")
        if math.isnan(fraction) or not 0.0 <= fraction <= 1.0:
            raise ValueError(f"progress must be from 0 to 1, got {fraction!r}")
        if message is not None:
            if not isinstance(message, str):
                raise TypeError(f"progress message must be a string, got {message!r}")
            message = clean_text(message)
            if len(message) > self.max_message:
                message = message[: self.max_message - 1] + "…"
        self.pending = (float(fraction), message)


class ItemContext:
    """The item a generator works on, and how it reports progress.

    Attributes:
        batch_id: the batch's id.
        key: the item's key, unique in its batch.
        payload: the item's JSON payload, as submitted.
        attempt: which attempt this is: 1 the first time, more after a crash or retry.
        position: the item's index in submission order.
        metadata: the batch's metadata (read-only by convention).
    """

    __slots__ = ("_reporter", "attempt", "batch_id", "key", "metadata", "payload", "position")

    def __init__(
        self,
        *,
        batch_id: str,
        key: str,
        payload: Any,
        attempt: int,
        position: int,
        metadata: dict[str, Any],
        reporter: _Reporter,
    ) -> None:
        self.batch_id = batch_id
        self.key = key
        self.payload = payload
        self.attempt = attempt
        self.position = position
        self.metadata = metadata
        self._reporter = reporter

    def __repr__(self) -> str:
        return f"ItemContext(batch_id={self.batch_id!r}, key={self.key!r}, attempt={self.attempt})"

    async def progress(self, fraction: float, message: str | None = None) -> None:
        """Report how far the item is (0.0 to 1.0) and what it is doing.

        Cheap to call often: writes to the storage are throttled by the runner
        (``progress_interval``) and the latest report always wins. An item that ends
        failed or cancelled keeps the report it made last (written before its outcome if
        the throttle held it back); a success shows its result, and a retry starts anew.
        It is also a checkpoint: if the batch was cancelled, the generator is cancelled
        here.

        Raises:
            ValueError: ``fraction`` is not between 0 and 1.
        """
        reporter = self._reporter
        idle = reporter.pending is None
        reporter.set(fraction, message)
        # Only the first report since the last write wakes the keeper: it then sleeps
        # until the write is due, so a tight loop of reports costs no extra wake-ups.
        wake = reporter.wake
        if idle and wake is not None:
            wake.set()
        await anyio.lowlevel.checkpoint()

    def progress_sync(self, fraction: float, message: str | None = None) -> None:
        """`progress` for a plain (sync) generator running in its worker thread."""
        self._reporter.set(fraction, message)

    @property
    def cancel_requested(self) -> bool:
        """Whether the batch's cancel reached this item: a sync generator should stop."""
        return self._reporter.cancel_requested
