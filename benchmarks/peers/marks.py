"""The work every system runs, and the marks it leaves for the harness.

Every task of every system calls `run_item`: it does nothing, except that item numbers
ending in 9 (every 10th item) raise `ItemFailed`. Before it returns or raises it appends
one line to the file named by ``PEERS_MARKS``: the item's tag, number, and the wall-clock
times it started and ended. One ``write`` of a short line to a file opened with
``O_APPEND`` is atomic, so worker processes and threads can share the file; it costs a
few microseconds per item, the same for every system.

The harness reads the file with `MarkReader`: a run's throughput is its items over the
time from the first start to the last end, and an idle round's latency is the start of
its one item less the time just before it was submitted.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pathlib import Path

__all__ = ["ItemFailed", "Mark", "MarkReader", "fails", "run_item"]

_fd: int | None = None


class ItemFailed(Exception):
    """The error every 10th item raises."""


def fails(n: int) -> bool:
    """Whether item ``n`` raises: every 10th item, the ones whose number ends in 9."""
    return n % 10 == 9


def _write(line: str) -> None:
    global _fd
    if _fd is None:
        _fd = os.open(os.environ["PEERS_MARKS"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    os.write(_fd, line.encode())


def run_item(n: int, tag: str) -> None:
    """One item's work: nothing, or `ItemFailed` for every 10th; its mark is written."""
    start = time.time()
    try:
        if fails(n):
            raise ItemFailed(f"item {n} fails on purpose")
    finally:
        _write(f"{tag} {n} {start!r} {time.time()!r}\n")


@dataclass(frozen=True)
class Mark:
    """One item's run, as the task wrote it."""

    tag: str
    n: int
    start: float
    end: float


@dataclass
class MarkReader:
    """Reads the marks file as it grows; keeps the marks by tag."""

    path: Path
    _offset: int = 0
    _rest: bytes = b""
    by_tag: dict[str, list[Mark]] = field(default_factory=dict)

    def poll(self) -> None:
        """Read what was appended since the last call."""
        try:
            with self.path.open("rb") as marks:
                marks.seek(self._offset)
                data = marks.read()
        except FileNotFoundError:
            return
        self._offset += len(data)
        lines = (self._rest + data).split(b"\n")
        self._rest = lines.pop()
        for line in lines:
            tag, n, start, end = line.decode().split()
            self.by_tag.setdefault(tag, []).append(Mark(tag, int(n), float(start), float(end)))

    def count(self, tag: str) -> int:
        """How many items of ``tag`` have run (after the last `poll`)."""
        return len(self.by_tag.get(tag, ()))

    def wait(self, tag: str, count: int, timeout: float, interval: float = 0.002) -> list[Mark]:
        """Poll until ``count`` items of ``tag`` have run; their marks.

        Raises:
            TimeoutError: fewer had run after ``timeout`` seconds.
        """
        deadline = time.monotonic() + timeout
        while True:
            self.poll()
            if self.count(tag) >= count:
                return self.by_tag[tag]
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.count(tag)} of {count} items of {tag!r} ran")
            time.sleep(interval)
