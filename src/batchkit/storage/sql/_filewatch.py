"""New work in a SQLite file, as other processes make it: SQLite announces nothing.

`FileWatch` keeps a connection of its own to the file and asks it, when the file may have
changed, whether anyone committed since (``PRAGMA data_version``: read from the memory the
WAL shares, no I/O) and only then reads the count of new work (a row of the meta table,
which every transaction making work moves: `SQLiteDialect.work_notice`).

When may the file have changed? On Linux, the kernel says so (inotify on the file's
folder: a commit writes the WAL, or the file itself): an idle worker costs nothing while
nothing is written. Elsewhere it looks every `POLL_INTERVAL`.

The kernel speaks when the committing process writes its last WAL frame, a moment BEFORE
that process marks the commit visible in the WAL's shared memory (which no inotify event
follows). A look at once can come too early, so each event is followed by looks a little
later (`LOOK_AGAIN`) until one sees the new work or the last of them has looked.
"""

from __future__ import annotations

import asyncio
import ctypes
import logging
import os
import sqlite3
import struct
import sys
import threading
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING

import anyio

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable

    from .._bell import Flag

__all__ = ["LOOK_AGAIN", "POLL_INTERVAL", "WORK_COUNT", "FileWatch"]

logger = logging.getLogger("batchkit.storage.sql")

#: The meta table's row counting new work (see `SQLiteDialect.work_notice`).
WORK_COUNT = "work_made"
#: How often a file is looked at where the kernel cannot say that it changed.
POLL_INTERVAL = 0.025
#: After the kernel says the file changed: the delays (seconds, from the event) of the
#: looks that follow the first, in case the commit was not yet visible at that one (its
#: writer was descheduled between its write and its commit's mark, or the file was busy).
LOOK_AGAIN = (0.002, 0.02, 0.2, 1.0)

# inotify (linux/inotify.h): what is watched in the file's folder.
_IN_MODIFY, _IN_CLOSE_WRITE, _IN_MOVED_TO, _IN_CREATE = 0x2, 0x8, 0x80, 0x100
_IN_NONBLOCK, _IN_CLOEXEC = 0o4000, 0o2000000
_EVENT = struct.Struct("iIII")  # wd, mask, cookie, length of the name that follows


class FileWatch:
    """Whether another process made new work in the SQLite file at ``path``."""

    def __init__(self, db: sqlite3.Connection, path: str, meta_table: str) -> None:
        self._db = db
        self.path = path
        self._count = f"SELECT value FROM \"{meta_table}\" WHERE name = '{WORK_COUNT}'"
        # The file's own names in its folder: the database, its WAL, its journal.
        name = os.path.basename(path)
        self._names = {name.encode(), f"{name}-wal".encode(), f"{name}-journal".encode()}
        # Read before the waiter's first claim: nothing made after it is missed. If that
        # first look fails, the first that succeeds says "new work" (a waiter woken for
        # nothing claims nothing; one not woken would wait for its poll).
        self._version: int | None = None
        self._seen: str | _Unknown | None = _UNKNOWN
        self._again: asyncio.TimerHandle | None = None
        self.look()

    @classmethod
    def open(cls, path: str, meta_table: str) -> FileWatch | None:
        try:
            db = sqlite3.connect(path, timeout=0, isolation_level=None, check_same_thread=False)
        except sqlite3.Error:
            logger.warning("cannot watch %s for new work", path, exc_info=True)
            return None
        return cls(db, path, meta_table)

    def look(self) -> bool | None:
        """Whether new work was made since the last look (`None`: the file could not be
        read just now, busy or gone for a moment)."""
        try:
            version = self._db.execute("PRAGMA data_version").fetchone()[0]
            if version == self._version:
                return False
            row = self._db.execute(self._count).fetchone()
        except sqlite3.Error:
            return None
        count = None if row is None else str(row[0])
        made = count != self._seen
        self._version, self._seen = version, count
        return made

    def close(self) -> None:
        if self._again is not None:
            self._again.cancel()
            self._again = None
        self._db.close()

    def changed(self, ring: Callable[[], None]) -> None:
        """The file may have changed: look now, and again after each of `LOOK_AGAIN`
        until a look sees new work (then ``ring``). A new change starts the looks anew."""
        if self._again is not None:
            self._again.cancel()
            self._again = None
        self._look_again(ring, asyncio.get_running_loop().time(), 0)

    def _look_again(self, ring: Callable[[], None], since: float, step: int) -> None:
        self._again = None
        if self.look():
            ring()
            return
        if step < len(LOOK_AGAIN):
            loop = asyncio.get_running_loop()
            self._again = loop.call_at(
                since + LOOK_AGAIN[step], self._look_again, ring, since, step + 1
            )

    @asynccontextmanager
    async def ringing(self, flag: Flag) -> AsyncIterator[None]:
        """Ring ``flag`` at new work while the block runs."""
        try:
            notify = _inotify(os.path.dirname(self.path) or ".")
            if notify is None:
                async with anyio.create_task_group() as tg:
                    tg.start_soon(self._poll, flag)
                    try:
                        yield
                    finally:
                        tg.cancel_scope.cancel()
                return
            fd = notify
            loop = asyncio.get_running_loop()
            loop.add_reader(fd, self._read_events, fd, flag.ring)
            try:
                yield
            finally:
                loop.remove_reader(fd)
                _close_aside(fd)
        finally:
            self.close()

    def _read_events(self, fd: int, ring: Callable[[], None]) -> None:
        # The kernel's events, all of them at once: if one was the file's, look at it (now
        # and a little later: `changed`).
        ours = False
        try:
            while True:
                data = os.read(fd, 65536)
                offset = 0
                while offset < len(data):
                    _, _, _, length = _EVENT.unpack_from(data, offset)
                    start = offset + _EVENT.size
                    name = data[start : start + length].rstrip(b"\0")
                    ours = ours or name in self._names
                    offset = start + length
        except BlockingIOError:
            pass
        except OSError:
            logger.debug("cannot read the watch of %s", self.path, exc_info=True)
        if ours:
            self.changed(ring)

    async def _poll(self, flag: Flag) -> None:
        while True:
            await anyio.sleep(POLL_INTERVAL)
            if self.look():
                flag.ring()


class _Unknown:
    """Nothing seen yet: the first look could not read the file."""


_UNKNOWN = _Unknown()


def _close_aside(fd: int) -> None:
    """Close an inotify descriptor in a thread of its own: closing one waits for the kernel
    to let go of its watches, 4 to 20 ms measured, which the event loop would wait too."""
    threading.Thread(target=os.close, args=(fd,), name="batchkit-inotify-close").start()


def _inotify(folder: str) -> int | None:
    """A non-blocking inotify descriptor watching writes in ``folder``, or `None` where
    there is none (not Linux, no libc, out of watches)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        # The process's own symbols, the C library's among them (glibc's or musl's):
        # `ctypes.util.find_library` would run ldconfig in a subprocess to find it.
        libc = ctypes.CDLL(None, use_errno=True)
        fd = libc.inotify_init1(_IN_NONBLOCK | _IN_CLOEXEC)
        if fd < 0:
            return None
        mask = _IN_MODIFY | _IN_CLOSE_WRITE | _IN_MOVED_TO | _IN_CREATE
        if libc.inotify_add_watch(fd, os.fsencode(folder), mask) < 0:
            os.close(fd)
            return None
    except (OSError, AttributeError):
        return None
    return int(fd)
