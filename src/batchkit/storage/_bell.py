"""How an idle worker learns, without polling, that there may be work: a `Flag` per waiting
worker, rung by whatever announces new claimable items.

* `Flag`: one waiter's view; a ring since its last wait makes the next wait return at once,
  so a worker that claims, finds nothing, then waits misses no ring in between.
* `Bell`: the flags of one store in this process. A storage rings it after it commits a
  batch or hands an item back to `queued`, so a worker in the same process wakes in
  microseconds, whatever the store. Each adapter relays what the store itself announces
  to other processes (PostgreSQL's NOTIFY, Redis's pub/sub, a SQLite file's commits) into
  its own flags.
* `bell(key)`: the process's bell of one store, found by a key naming the store (its
  server and database, or its file, and its tables' prefix) so that two storage objects
  on the same store share it (a bell lives while a storage holds it).
"""

from __future__ import annotations

import threading
import weakref
from contextlib import contextmanager
from typing import TYPE_CHECKING

import anyio
import anyio.lowlevel

if TYPE_CHECKING:
    from collections.abc import Iterator

__all__ = ["Bell", "Flag", "bell"]


class Flag:
    """One waiter's flag: set by `ring`, consumed by `wait` (a `Subscription`)."""

    __slots__ = ("__weakref__", "_event", "_raised", "_thread")

    def __init__(self) -> None:
        self._raised = False
        self._event: anyio.Event | None = None
        # An event belongs to its thread's event loop: a ring from another thread (a
        # second event loop on the same store) only raises the flag, which the waiter
        # sees at its next timeout.
        self._thread = threading.get_ident()

    def ring(self) -> None:
        self._raised = True
        if self._event is not None and threading.get_ident() == self._thread:
            self._event.set()

    async def wait(self, timeout: float) -> None:
        """Return at once if rung since the last wait; else at the next ring or after
        ``timeout`` seconds."""
        if not self._raised:
            self._event = anyio.Event()
            try:
                with anyio.move_on_after(timeout):
                    await self._event.wait()
            finally:
                self._event = None
        else:
            await anyio.lowlevel.checkpoint()
        self._raised = False


class Bell:
    """The flags of one store's waiters in this process."""

    def __init__(self) -> None:
        self._flags: weakref.WeakSet[Flag] = weakref.WeakSet()

    def ring(self) -> None:
        for flag in list(self._flags):
            flag.ring()

    @contextmanager
    def flag(self) -> Iterator[Flag]:
        """A new flag rung with this bell while the block runs."""
        flag = Flag()
        self._flags.add(flag)
        try:
            yield flag
        finally:
            self._flags.discard(flag)


# A bell lives while a storage holds it.
_bells: weakref.WeakValueDictionary[str, Bell] = weakref.WeakValueDictionary()
_bells_lock = threading.Lock()


def bell(key: str) -> Bell:
    """The bell of the store named by ``key`` in this process (made on first use); the
    caller keeps it alive by holding it."""
    with _bells_lock:
        found = _bells.get(key)
        if found is None:
            found = _bells[key] = Bell()
    return found
