"""PostgreSQL's LISTEN on asyncpg: one connection per storage, shared by all its watchers.

Every change of a storage's batches is announced on one channel, with the batch's id as
the payload, so one LISTEN serves any number of watched batches: a process watching a
hundred batches holds one connection for it, not a hundred (see ``max_connections``).
"""

from __future__ import annotations

import asyncio
import logging
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

import anyio
import anyio.lowlevel

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Callable

    from sqlalchemy.ext.asyncio import AsyncConnection

__all__ = ["AGAIN_AFTER", "QUIET_FOR", "WORK", "ListenSubscription", "Listener"]

#: A storage on PostgreSQL announces one batch's changes at most every QUIET_FOR seconds
#: (`PostgresDialect.loud`), and its end always; a watcher looks again AGAIN_AFTER seconds
#: after the batch's last announcement, for the changes made in between, committed by then.
QUIET_FOR = 0.05
AGAIN_AFTER = 2 * QUIET_FOR

#: The payload announcing new work (a batch created, an item handed back to `queued`), on
#: the same channel as the batches' changes: not a batch id, so no watcher takes it for one.
WORK = "*"

logger = logging.getLogger("batchkit.storage.sql")


class ListenSubscription:
    """One watcher's view of the shared LISTEN: set when its batch is announced."""

    def __init__(self, batch_id: str) -> None:
        self.batch_id = batch_id
        self._changed = False
        self._event: anyio.Event | None = None

    def changed(self) -> None:
        self._changed = True
        if self._event is not None:
            self._event.set()

    async def wait(self, timeout: float) -> None:
        if not self._changed:
            self._event = anyio.Event()
            with anyio.move_on_after(timeout):
                await self._event.wait()
            self._event = None
        else:
            await anyio.lowlevel.checkpoint()
        self._changed = False


class Listener:
    """The LISTEN connection of one storage, opened for its first watcher and closed
    after its last.

    Args:
        connect: opens the connection (a pooled one of the storage's engine, or one to a
            direct URL when the storage goes through a transaction pooler).
        channel: the storage's notification channel.
    """

    def __init__(self, connect: Callable[[], Awaitable[AsyncConnection]], channel: str) -> None:
        self._connect = connect
        self._channel = channel
        self._watchers: dict[str, set[ListenSubscription]] = {}
        self._conn: AsyncConnection | None = None
        self._driver: Any = None
        self._lock = anyio.Lock()
        # Per announced batch: the timer of the look again (`AGAIN_AFTER`).
        self._again: dict[str, asyncio.TimerHandle] = {}

    @property
    def listening(self) -> bool:
        """Whether the LISTEN connection is open (a lost one is replaced by the next
        `subscribe`)."""
        return self._driver is not None and not self._driver.is_closed()

    @asynccontextmanager
    async def subscribe(self, batch_id: str) -> AsyncIterator[ListenSubscription]:
        """Wait for the announcements of ``batch_id`` (or of `WORK`)."""
        sub = ListenSubscription(batch_id)
        async with self._lock:
            if self._driver is not None and self._driver.is_closed():
                await self._drop()  # the server dropped it: listen again on a new one
            if self._conn is None:
                await self._open()
            self._watchers.setdefault(batch_id, set()).add(sub)
        try:
            yield sub
        finally:
            with anyio.CancelScope(shield=True):
                async with self._lock:
                    subs = self._watchers.get(batch_id)
                    if subs is not None:
                        subs.discard(sub)
                        if not subs:
                            del self._watchers[batch_id]
                    if not self._watchers:
                        await self._drop()

    async def _open(self) -> None:
        conn = await self._connect()
        try:
            raw = await conn.get_raw_connection()
            driver = raw.driver_connection
            assert driver is not None
            await driver.add_listener(self._channel, self._on_notify)
            driver.add_termination_listener(self._on_close)
        except BaseException:
            with anyio.CancelScope(shield=True):
                await conn.close()
            raise
        self._conn, self._driver = conn, driver

    def _on_notify(self, connection: object, pid: int, channel: str, payload: str) -> None:
        subs = self._watchers.get(payload)
        if not subs:
            return
        for sub in subs:
            sub.changed()
        if payload == WORK:
            return
        # Changes made after this one may go unannounced for a moment: look again then.
        pending = self._again.pop(payload, None)
        if pending is not None:
            pending.cancel()
        loop = asyncio.get_running_loop()
        self._again[payload] = loop.call_later(AGAIN_AFTER, self._look_again, payload)

    def _look_again(self, batch_id: str) -> None:
        self._again.pop(batch_id, None)
        for sub in self._watchers.get(batch_id, ()):
            sub.changed()

    def _on_close(self, connection: object) -> None:
        # Announcements may have been missed: every watcher looks again, and the next
        # watcher to arrive listens on a new connection.
        for subs in self._watchers.values():
            for sub in subs:
                sub.changed()

    async def _drop(self) -> None:
        for pending in self._again.values():
            pending.cancel()
        self._again.clear()
        conn, driver = self._conn, self._driver
        self._conn = self._driver = None
        if conn is None:
            return
        try:
            if driver.is_closed():
                await conn.invalidate()  # not back to the pool: it is dead
            else:
                driver.remove_termination_listener(self._on_close)
                await driver.remove_listener(self._channel, self._on_notify)
        except Exception:  # the connection is gone: nothing to remove
            logger.debug("could not remove a LISTEN callback", exc_info=True)
        try:
            await conn.close()
        except Exception:
            logger.debug("could not close the LISTEN connection", exc_info=True)

    async def close(self) -> None:
        async with self._lock:
            self._watchers.clear()
            await self._drop()
