"""What a worker shows in a terminal: log lines with their fields, and a live summary line."""

from __future__ import annotations

import json
import logging
import shutil
import sys
import threading
import time
from typing import IO, TYPE_CHECKING, Any

import anyio

if TYPE_CHECKING:
    from .worker import Worker

__all__ = ["JSONFormatter", "LiveSummary", "TextFormatter", "fields_of"]

#: The attributes every `logging.LogRecord` has: anything else came in ``extra``.
_STANDARD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {
    "message",
    "asctime",
    "taskName",
}
#: Fields the text format leaves out: the message already says them.
_IN_MESSAGE = frozenset({"batch_id", "key", "event"})


def fields_of(record: logging.LogRecord) -> dict[str, Any]:
    """The structured fields a log record carries (what was passed as ``extra``)."""
    return {k: v for k, v in vars(record).items() if k not in _STANDARD}


class TextFormatter(logging.Formatter):
    """``2026-12-01 12:00:00 INFO    message  field=value ...`` on one line."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)-7s %(message)s", "%Y-%m-%d %H:%M:%S")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        extra = [f"{k}={_short(v)}" for k, v in fields_of(record).items() if k not in _IN_MESSAGE]
        if extra:
            first, newline, rest = line.partition("\n")  # a traceback stays below
            line = f"{first}  {' '.join(extra)}{newline}{rest}"
        return line


class JSONFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message and every field."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in fields_of(record).items():
            entry.setdefault(key, value)
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str, ensure_ascii=False)


def _short(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.3f}".rstrip("0").rstrip(".")
    if isinstance(value, str):
        return value if value and " " not in value and len(value) <= 80 else repr(value[:80])
    return str(value)


class LiveSummary(logging.Handler):
    """A summary line kept at the bottom of a terminal, with log lines printed above it.

    It is a logging handler: each record is written above the summary, which is then
    drawn again; `run` redraws it twice a second until cancelled.
    """

    def __init__(self, worker: Worker, stream: IO[str] | None = None) -> None:
        super().__init__()
        self.worker = worker
        self.stream = stream if stream is not None else sys.stderr
        self._write_lock = threading.Lock()
        self._shown = False

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = self.format(record)
        except Exception:
            self.handleError(record)
            return
        with self._write_lock:
            self._clear()
            self.stream.write(text + "\n")
            self._draw()

    async def run(self) -> None:
        """Redraw the summary twice a second, until cancelled (then clear it)."""
        try:
            while True:
                with self._write_lock:
                    self._clear()
                    self._draw()
                await anyio.sleep(0.5)
        finally:
            with self._write_lock:
                self._clear()
                self.stream.flush()

    def summary(self) -> str:
        """The summary line's text."""
        worker, stats = self.worker, self.worker.stats
        up = 0.0 if stats.started_at is None else time.time() - stats.started_at
        minutes, seconds = divmod(int(up), 60)
        hours, minutes = divmod(minutes, 60)
        state = "stopping" if worker.stopping else "working" if stats.running else "idle"
        return (
            f"{state}: running {stats.running}/{worker.concurrency} | "
            f"succeeded {stats.succeeded} | failed {stats.failed} | retrying {stats.retrying} | "
            f"released {stats.released} | {stats.rate():.1f} items/s | "
            f"up {hours:d}:{minutes:02d}:{seconds:02d} | {worker.name}"
        )

    def _clear(self) -> None:
        if self._shown:
            self.stream.write("\r\x1b[2K")
            self._shown = False

    def _draw(self) -> None:
        # Wider than the terminal, the line would wrap and could not be cleared.
        width = max(20, shutil.get_terminal_size().columns - 1)
        self.stream.write("\x1b[7m" + self.summary()[:width] + "\x1b[0m")
        self.stream.flush()
        self._shown = True
