"""Showing a running batch: a live Rich display on a terminal, plain lines elsewhere."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any, TextIO

import anyio

from batchkit import ItemState

if TYPE_CHECKING:
    from batchkit import BatchRunner, BatchStatus, Item

__all__ = ["LiveView", "PlainView", "follow", "format_counts"]

_ORDER = (
    ItemState.QUEUED,
    ItemState.RUNNING,
    ItemState.SUCCEEDED,
    ItemState.FAILED,
    ItemState.CANCELLED,
)
_STYLES = {
    ItemState.QUEUED: "dim",
    ItemState.RUNNING: "cyan",
    ItemState.SUCCEEDED: "green",
    ItemState.FAILED: "bold red",
    ItemState.CANCELLED: "yellow",
}


def format_counts(status: BatchStatus) -> str:
    """``3 queued · 2 running · 10 succeeded`` (the states with items)."""
    return " · ".join(f"{status.counts[s]} {s.value}" for s in _ORDER if status.counts[s])


def _title(item: Item) -> str:
    payload = item.payload if isinstance(item.payload, dict) else {}
    return str(payload.get("title") or payload.get("name") or "")


class _Clock:
    """Elapsed time and the ETA from the rate at which items finish."""

    def __init__(self) -> None:
        self.started = time.monotonic()
        self._first: tuple[float, int] | None = None

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def eta(self, status: BatchStatus) -> float | None:
        finished = status.total - status.counts[ItemState.QUEUED] - status.counts[ItemState.RUNNING]
        now = time.monotonic()
        if self._first is None:
            self._first = (now, finished)
            return None
        since, at_first = self._first
        done = finished - at_first
        if done <= 0 or now <= since:
            return None
        return (status.total - finished) * (now - since) / done


def _clock_text(seconds: float | None) -> str:
    if seconds is None:
        return "--:--"
    minutes, secs = divmod(round(seconds), 60)
    return f"{minutes:d}:{secs:02d}"


class PlainView:
    """One line per change: an item starting, changing stage, finishing; and the batch."""

    def __init__(self, out: TextIO) -> None:
        self.out = out
        self._clock = _Clock()
        self._running: dict[str, str | None] = {}
        self._finished = -1

    def start(self, title: str) -> None:
        print(title, file=self.out, flush=True)

    def update(self, status: BatchStatus, running: list[Item], ended: list[Item]) -> None:
        t = self._clock.elapsed()
        now = {item.key: item for item in running}
        for item in running:
            if self._running.get(item.key, "") != item.message:
                print(
                    f"{t:6.1f}s  {item.key:<10} running    {item.progress:4.0%}  "
                    f"{item.message or 'started'}",
                    file=self.out,
                )
        for item in ended:
            detail = ""
            if item.error is not None and item.state is not ItemState.SUCCEEDED:
                detail = f"{item.error.type}: {item.error.message}"
            elif isinstance(item.result, dict):
                detail = str(item.result.get("file") or item.result.get("video") or "")
            print(f"{t:6.1f}s  {item.key:<10} {item.state.value:<10} {detail}", file=self.out)
        self._running = {key: item.message for key, item in now.items()}
        finished = status.total - status.counts[ItemState.QUEUED] - status.counts[ItemState.RUNNING]
        if finished != self._finished:
            self._finished = finished
            print(
                f"{t:6.1f}s  batch {status.state.value}: {finished}/{status.total} finished "
                f"({format_counts(status)}), ETA {_clock_text(self._clock.eta(status))}",
                file=self.out,
            )
        self.out.flush()

    def stop(self) -> None:
        self.out.flush()


class LiveView:
    """A Rich live display: the batch's bar, counts and ETA, and a row per running item."""

    def __init__(self, console: Any) -> None:
        self.console = console
        self._clock = _Clock()
        self._live: Any = None
        self._title = ""

    def start(self, title: str) -> None:
        from rich.live import Live

        self._title = title
        self._live = Live(console=self.console, refresh_per_second=8, transient=False)
        self._live.start()

    def update(self, status: BatchStatus, running: list[Item], ended: list[Item]) -> None:
        from rich.console import Group
        from rich.progress_bar import ProgressBar
        from rich.table import Table
        from rich.text import Text

        finished = status.total - status.counts[ItemState.QUEUED] - status.counts[ItemState.RUNNING]
        head = Table.grid(padding=(0, 1))
        head.add_row(
            Text(status.state.value, style="bold"),
            ProgressBar(total=max(1, status.total), completed=finished, width=32),
            Text(f"{finished}/{status.total}"),
            Text(f"{status.progress:4.0%}"),
            Text(f"ETA {_clock_text(self._clock.eta(status))}", style="dim"),
        )
        counts = Text(" · ").join(
            Text(f"{status.counts[s]} {s.value}", style=_STYLES[s])
            for s in _ORDER
            if status.counts[s]
        )
        rows = Table(box=None, pad_edge=False, show_header=bool(running), expand=False)
        rows.add_column("item", no_wrap=True, min_width=10)
        rows.add_column("title", no_wrap=True, max_width=24)
        rows.add_column("progress", no_wrap=True)
        rows.add_column("%", justify="right", no_wrap=True)
        rows.add_column("stage", no_wrap=True, overflow="ellipsis", max_width=40)
        for item in running:
            rows.add_row(
                Text(item.key, style="cyan"),
                _title(item),
                ProgressBar(total=1.0, completed=item.progress, width=20),
                f"{item.progress:4.0%}",
                item.message or "started",
            )
        self._live.update(Group(Text(self._title), head, counts, rows), refresh=True)

    def stop(self) -> None:
        if self._live is not None:
            self._live.stop()
            self._live = None


async def follow(
    runner: BatchRunner, batch_id: str, view: PlainView | LiveView, *, interval: float = 0.2
) -> BatchStatus:
    """Show the batch until it is terminal (or until cancelled); return its last status."""
    known: set[str] = set()
    while True:
        status = await runner.status(batch_id)
        running = await runner.items(batch_id, state=ItemState.RUNNING, limit=1_000)
        # Items that stopped running since the last look: read how they ended.
        current = {item.key for item in running}
        ended = [await runner.item(batch_id, key) for key in sorted(known - current)]
        known = current
        view.update(status, running, [i for i in ended if i.state is not ItemState.QUEUED])
        if status.is_terminal:
            return status
        await anyio.sleep(interval)
