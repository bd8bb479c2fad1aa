"""How an idle worker sees new work that another process commits to a SQLite file
(`FileWatch`): the kernel says the file changed, and the watch reads whether new work was
made since its last look."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import threading
import time
from typing import TYPE_CHECKING

import anyio
import pytest

from batchkit.storage._bell import Flag
from batchkit.storage.sql import _filewatch
from batchkit.storage.sql._filewatch import LOOK_AGAIN, WORK_COUNT, FileWatch

if TYPE_CHECKING:
    from pathlib import Path

pytestmark = pytest.mark.anyio

META = "meta"


def _connect(path: Path) -> sqlite3.Connection:
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    return db


def _make_work(db: sqlite3.Connection) -> None:
    db.execute(
        f"INSERT INTO {META} (name, value) VALUES (?, '1') "
        "ON CONFLICT (name) DO UPDATE SET value = CAST(CAST(value AS INTEGER) + 1 AS TEXT)",
        (WORK_COUNT,),
    )


@pytest.fixture
def path(tmp_path: Path) -> Path:
    path = tmp_path / "batchkit.db"
    with _connect(path) as db:
        db.execute(f"CREATE TABLE {META} (name TEXT PRIMARY KEY, value TEXT)")
    return path


async def test_work_committed_just_after_the_kernels_word_still_wakes(path: Path) -> None:
    """The kernel speaks when a commit's last WAL frame is written, before the writer
    marks the commit visible: a look at that word alone can come too early, and the
    waiter would sleep until its poll. The watch looks again a little later."""
    watch = FileWatch.open(str(path), META)
    assert watch is not None
    writer = _connect(path)
    flag = Flag()
    try:
        watch.changed(flag.ring)  # the word came; the commit is not visible yet
        await anyio.sleep(0.01)
        _make_work(writer)  # now it is (and no word follows)
        started = time.monotonic()
        await flag.wait(timeout=LOOK_AGAIN[-1] + 5)
        assert time.monotonic() - started < LOOK_AGAIN[-1] + 1
    finally:
        writer.close()
        watch.close()


async def test_a_change_that_made_no_work_rings_nothing(path: Path) -> None:
    watch = FileWatch.open(str(path), META)
    assert watch is not None
    writer = _connect(path)
    flag = Flag()
    try:
        writer.execute(f"INSERT INTO {META} (name, value) VALUES ('other', 'x')")
        watch.changed(flag.ring)
        started = time.monotonic()
        await flag.wait(timeout=LOOK_AGAIN[-1] + 0.3)
        assert time.monotonic() - started >= LOOK_AGAIN[-1] + 0.2  # not woken
    finally:
        writer.close()
        watch.close()


async def test_a_first_look_that_could_not_read_counts_the_next_as_new_work(
    tmp_path: Path,
) -> None:
    """A file not readable at the first look (here: its tables not made yet) must not
    swallow the first work made: the next look that reads says there is work."""
    path = tmp_path / "batchkit.db"
    watch = FileWatch.open(str(path), META)
    assert watch is not None
    try:
        assert watch.look() is None
        with _connect(path) as db:
            db.execute(f"CREATE TABLE {META} (name TEXT PRIMARY KEY, value TEXT)")
            _make_work(db)
        assert watch.look() is True
        assert watch.look() is False
    finally:
        watch.close()


linux_only = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="the kernel's word (inotify) is Linux's"
)


@linux_only
async def test_the_kernels_watch_is_closed_off_the_event_loop(
    path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Closing an inotify descriptor waits for the kernel to let go of its watches (4 to
    20 ms): a worker stopping in a host's process must not stall its event loop so long.
    The watch still rings while it runs, and its descriptor is closed after."""
    opened: list[int] = []
    closed: list[tuple[int, threading.Thread]] = []
    done = threading.Event()

    def inotify(folder: str) -> int | None:
        fd = real_inotify(folder)
        assert fd is not None
        opened.append(fd)
        return fd

    class OS:
        def __getattr__(self, name: str) -> object:
            return getattr(os, name)

        def close(self, fd: int) -> None:
            os.close(fd)
            closed.append((fd, threading.current_thread()))
            done.set()

    real_inotify = _filewatch._inotify
    monkeypatch.setattr(_filewatch, "_inotify", inotify)
    monkeypatch.setattr(_filewatch, "os", OS())
    watch = FileWatch.open(str(path), META)
    assert watch is not None
    writer = _connect(path)
    flag = Flag()
    try:
        async with watch.ringing(flag):
            _make_work(writer)
            started = time.monotonic()
            await flag.wait(timeout=5)
            assert time.monotonic() - started < 4  # rung, not timed out
        assert await anyio.to_thread.run_sync(done.wait, 5)
    finally:
        writer.close()
    ((fd, thread),) = closed
    assert fd == opened[0]
    assert thread is not threading.current_thread()


@linux_only
def test_the_kernels_watch_opens_without_starting_a_process(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Finding the C library must not run ldconfig (as `ctypes.util.find_library` does):
    a process started at each worker's start costs time, and some containers forbid it."""
    started: list[object] = []

    def no_process(*args: object, **kwargs: object) -> None:
        started.append(args)
        raise OSError("no process may be started here")

    monkeypatch.setattr(subprocess, "Popen", no_process)
    fd = _filewatch._inotify(str(tmp_path))
    assert fd is not None
    os.close(fd)
    assert started == []
