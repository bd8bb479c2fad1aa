"""The subscription of a store that cannot announce changes: it looks again now and then."""

from __future__ import annotations

import anyio

__all__ = ["PollingSubscription"]


class PollingSubscription:
    """Waits ``interval`` seconds (or less, when the reader's timeout is shorter)."""

    def __init__(self, interval: float) -> None:
        self._interval = interval

    async def wait(self, timeout: float) -> None:
        await anyio.sleep(min(timeout, self._interval))
