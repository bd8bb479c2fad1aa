"""A demo batch: twelve product videos, kept in SQLite, with live per-item progress.

Run it with ``python -m examples.demo`` (or ``make demo``). Each item goes through four
stages (script, frames, encode, upload); two items fail on purpose, one of them only the
first time, and the demo ends by retrying the failed items with ``retry_failed``.

The batches are kept in ``batchkit-demo.db``, an SQLite file in the working directory:
run the demo again and it starts by listing the batches of the earlier runs, read back
from the file. ``--storage URL`` (or the ``BATCHKIT_STORAGE`` environment variable) keeps
them elsewhere: ``memory://``, ``postgresql+asyncpg://...``, ``mysql+asyncmy://...``.

Options: ``--scale 0.1`` makes every pause ten times shorter (also read from the
``BATCHKIT_DEMO_SCALE`` environment variable); ``--plain`` prints plain lines even when
Rich is installed, ``--rich`` insists on Rich's live table.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import time
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Any, ClassVar, Literal, TextIO

import anyio

from batchkit import (
    BatchRunner,
    InvalidStorageURL,
    ItemSpec,
    ItemState,
    MissingDependency,
    StorageError,
    open_storage,
)

if TYPE_CHECKING:
    from collections.abc import Collection, Sequence

    from batchkit import BatchStatus, Item, ItemContext, Storage

__all__ = [
    "DEFAULT_STORAGE",
    "PRODUCTS",
    "DemoResult",
    "PlainView",
    "RichView",
    "VideoGenerator",
    "describe_storage",
    "main",
    "open_demo_storage",
    "run_demo",
]

#: Where the demo keeps its batches unless told otherwise: a file in the working directory.
DEFAULT_STORAGE = "sqlite+aiosqlite:///batchkit-demo.db"

_SQL_SCHEMES = ("sqlite+", "postgresql+", "mysql+", "mariadb+")

Display = Literal["auto", "plain", "rich"]

#: The demo's catalogue. ``LMP-07`` has no photos (it fails every time); the upload of
#: ``SCF-11`` is refused the first time only (its retry succeeds).
PRODUCTS: list[dict[str, Any]] = [
    {"sku": "MUG-01", "name": "Ceramic mug", "photos": 4},
    {"sku": "TEE-02", "name": "Organic cotton tee", "photos": 5},
    {"sku": "CAP-03", "name": "Canvas cap", "photos": 3},
    {"sku": "BAG-04", "name": "Tote bag", "photos": 4},
    {"sku": "PEN-05", "name": "Brass pen", "photos": 3},
    {"sku": "NTB-06", "name": "Dot-grid notebook", "photos": 4},
    {"sku": "LMP-07", "name": "Linen lamp shade", "photos": 0},
    {"sku": "SOX-08", "name": "Wool socks", "photos": 3},
    {"sku": "CUP-09", "name": "Travel cup", "photos": 5},
    {"sku": "PST-10", "name": "Botanical poster", "photos": 3},
    {"sku": "SCF-11", "name": "Silk scarf", "photos": 4},
    {"sku": "CND-12", "name": "Soy candle", "photos": 4},
]

#: Keys whose first upload is refused, as a busy service would.
FLAKY_UPLOADS = frozenset({"SCF-11"})


class VideoGenerator:
    """Renders one product video in four stages; the pauses stand in for real work.

    Args:
        delay_scale: multiplies every pause (1.0: about 1.4 s per item; 0: no pauses).
        flaky: keys whose first upload fails with a `ConnectionError`.
    """

    def __init__(self, *, delay_scale: float = 1.0, flaky: Collection[str] = ()) -> None:
        self.delay_scale = delay_scale
        self._refuse_once = set(flaky)

    async def __call__(self, ctx: ItemContext) -> dict[str, Any]:
        """Write a script, build frames from the photos, encode, upload; return the URL."""
        product = ctx.payload
        photos: int = product["photos"]
        # Items differ a little in speed, so the three slots do not move in lockstep.
        pace = self.delay_scale * (0.8 + 0.1 * (ctx.position % 5))

        await ctx.progress(0.0, "script: writing the voice-over")
        await anyio.sleep(0.25 * pace)

        await ctx.progress(0.15, f"frames: building from {photos} photos")
        if not photos:
            raise ValueError(f"no photos of {product['name']!r} to build frames from")
        for done in range(1, photos + 1):
            await anyio.sleep(0.5 * pace / photos)
            await ctx.progress(
                0.15 + 0.45 * done / photos, f"frames: building from {photos} photos"
            )

        await ctx.progress(0.6, "encode: 1080p H.264")
        await anyio.sleep(0.4 * pace)

        await ctx.progress(0.85, "upload: sending to the CDN")
        await anyio.sleep(0.25 * pace)
        if ctx.key in self._refuse_once:
            self._refuse_once.discard(ctx.key)
            raise ConnectionError("upload refused: CDN busy (HTTP 503), try again later")
        return {"video": f"https://cdn.example/videos/{ctx.key}.mp4", "seconds": 10 + 2 * photos}


def open_demo_storage(url: str, *, poll_interval: float = 0.05) -> Storage:
    """The storage ``url`` names, looking for changes every ``poll_interval`` seconds.

    SQLite and MySQL/MariaDB cannot announce a change, so ``watch`` polls them; the demo
    polls more often than the default (0.5 s) to show every stage of every item.

    Raises:
        InvalidStorageURL: the URL names no storage (or a synchronous driver).
        MissingDependency: the storage's extra is not installed.
    """
    if url.lower().startswith(_SQL_SCHEMES):
        # open_storage checks the scheme and the driver, and says what to install.
        open_storage(url)
        from batchkit import SQLStorage

        return SQLStorage.from_url(url, poll_interval=poll_interval)
    return open_storage(url)


def describe_storage(url: str) -> str:
    """A short name for where the batches are: the SQLite file, or the URL without password."""
    scheme, _, rest = url.partition("://")
    if scheme.lower().startswith("sqlite"):
        # sqlite+aiosqlite:///relative.db and sqlite+aiosqlite:////absolute.db
        return rest[1:] if rest.startswith("/") else rest
    return re.sub(r"(//[^:/@]*):[^@/]*@", r"\1:***@", url)


def _names() -> dict[str, str]:
    return {product["sku"]: product["name"] for product in PRODUCTS}


def _detail(item: Item) -> str:
    if item.error is not None and item.state is not ItemState.SUCCEEDED:
        return f"{item.error.type}: {item.error.message}"
    if item.state is ItemState.SUCCEEDED and isinstance(item.result, dict):
        return str(item.result.get("video", ""))
    if item.state is ItemState.RUNNING and item.message is None:
        return f"claimed (attempt {item.attempt})"
    return item.message or ""


def _counts(status: BatchStatus) -> str:
    shown = (ItemState.SUCCEEDED, ItemState.FAILED, ItemState.CANCELLED)
    return ", ".join(f"{state} {status.counts[state]}" for state in shown)


def _show_earlier(earlier: Sequence[BatchStatus], where: str, out: TextIO) -> None:
    if not earlier:
        print(f"No earlier batches in {where}: this is the first run.\n", file=out)
        return
    many = "The 5 most recent" if len(earlier) == 5 else str(len(earlier))
    print(f"{many} earlier batch{'es' if len(earlier) != 1 else ''} in {where}:", file=out)
    for status in earlier:
        when = status.created_at.astimezone().strftime("%Y-%m-%d %H:%M:%S")
        origin = f", retry of {status.parent_id}" if status.parent_id else ""
        print(
            f"  {status.batch_id}  {when}  {status.state}: {status.total} items, "
            f"{_counts(status)}{origin}",
            file=out,
        )
    print(file=out, flush=True)


class PlainView:
    """Prints a line whenever an item changes state or stage, and one per finished item.

    Args:
        out: where to print.
    """

    def __init__(self, out: TextIO) -> None:
        self._out = out
        self._names = _names()
        self._seen: dict[str, tuple[ItemState, str | None]] = {}
        self._finished = -1
        self._started = time.perf_counter()

    def begin(self, title: str) -> None:
        """Start showing a batch."""
        self._seen.clear()
        self._finished = -1
        self._started = time.perf_counter()
        print(title, file=self._out, flush=True)

    def update(self, status: BatchStatus, items: Sequence[Item]) -> None:
        """Show what changed since the previous update."""
        elapsed = time.perf_counter() - self._started
        for item in items:
            # A new line per stage, not per progress report: the message says the stage.
            seen = (item.state, item.message)
            if self._seen.get(item.key, (ItemState.QUEUED, None)) == seen:
                continue
            self._seen[item.key] = seen
            print(
                f"{elapsed:5.1f}s  {item.key:<7} {self._names.get(item.key, ''):<19} "
                f"{item.state:<9} {item.progress:4.0%}  {_detail(item)}",
                file=self._out,
            )
        finished = status.total - status.counts[ItemState.QUEUED] - status.counts[ItemState.RUNNING]
        if finished != self._finished:
            self._finished = finished
            print(
                f"{elapsed:5.1f}s  batch {status.state}: {finished}/{status.total} finished, "
                f"{status.counts[ItemState.RUNNING]} running, {status.progress:.0%} done",
                file=self._out,
            )
        self._out.flush()

    def end(self) -> None:
        """Stop showing the batch."""


class RichView:
    """A live table of every item, redrawn on every change (needs Rich).

    Args:
        out: where to draw.
    """

    _STYLES: ClassVar[dict[ItemState, str]] = {
        ItemState.QUEUED: "dim",
        ItemState.RUNNING: "cyan",
        ItemState.SUCCEEDED: "green",
        ItemState.FAILED: "bold red",
        ItemState.CANCELLED: "yellow",
    }

    def __init__(self, out: TextIO) -> None:
        from rich.console import Console

        self._console = Console(file=out)
        self._names = _names()
        self._live: Any = None
        self._title = ""

    def begin(self, title: str) -> None:
        """Start the live table."""
        from rich.live import Live

        self._title = title
        self._live = Live(console=self._console, refresh_per_second=12, transient=False)
        self._live.start()

    def update(self, status: BatchStatus, items: Sequence[Item]) -> None:
        """Redraw the table."""
        from rich import box
        from rich.progress_bar import ProgressBar
        from rich.table import Table

        table = Table(
            title=f"{self._title}\nbatch {status.state}: {status.progress:.0%} done, {_counts(status)}",
            title_justify="left",
            box=box.SIMPLE_HEAD,
            pad_edge=False,
            expand=True,
        )
        table.add_column("sku", no_wrap=True, min_width=6)
        table.add_column("product", no_wrap=True, min_width=18)
        table.add_column("state", no_wrap=True, min_width=9)
        table.add_column("progress", no_wrap=True, min_width=12)
        table.add_column("%", no_wrap=True, justify="right", min_width=4)
        table.add_column("detail", no_wrap=True, overflow="ellipsis", ratio=1)
        for item in items:
            style = self._STYLES[item.state]
            table.add_row(
                item.key,
                self._names.get(item.key, ""),
                f"[{style}]{item.state}[/]",
                ProgressBar(total=1.0, completed=item.progress, width=12),
                f"{item.progress:4.0%}",
                _detail(item),
            )
        self._live.update(table, refresh=True)

    def end(self) -> None:
        """Leave the last table on screen."""
        if self._live is not None:
            self._live.stop()
            self._live = None


def _view(display: Display, out: TextIO) -> PlainView | RichView:
    if display == "plain":
        return PlainView(out)
    try:
        import rich  # noqa: F401
    except ImportError:
        if display == "rich":
            raise SystemExit(
                "--rich needs Rich: pip install rich (it comes with batchkit[examples])"
            ) from None
        return PlainView(out)
    if display == "auto" and not out.isatty():
        return PlainView(out)  # a live table is for terminals; logs get plain lines
    return RichView(out)


async def _run_and_show(
    runner: BatchRunner, batch_id: str, view: PlainView | RichView
) -> BatchStatus:
    async def follow() -> None:
        # watch() yields on every change and ends at a terminal state; the demo batch is
        # small, so one page of items is all of them.
        async for change in runner.watch(batch_id):
            items = await runner.items(batch_id, limit=len(PRODUCTS))
            # The status is read after the items, so that its counts already include
            # every item state shown; the final one is the terminal status itself.
            status = change if change.is_terminal else await runner.status(batch_id)
            view.update(status, items)

    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(follow)
            final = await runner.run(batch_id)
    finally:
        view.end()
    return final


@dataclass(frozen=True)
class DemoResult:
    """What the demo did: the batches it found, the first batch and the retry of its failures."""

    earlier: list[BatchStatus]
    first: BatchStatus
    failed: list[Item]
    retry: BatchStatus
    retried: list[Item]


async def run_demo(
    *,
    storage: str = DEFAULT_STORAGE,
    delay_scale: float = 1.0,
    display: Display = "auto",
    out: TextIO | None = None,
) -> DemoResult:
    """List the earlier batches, run the demo batch live, summarise it, retry its failures.

    Args:
        storage: the URL of the storage that keeps the batches (an SQLite file in the
            working directory by default).
        delay_scale: multiplies every pause in the generator (0 for no pauses).
        display: ``"rich"`` for a live table, ``"plain"`` for lines, ``"auto"`` for Rich
            when it is installed and ``out`` is a terminal.
        out: where to print; standard output by default.

    Raises:
        InvalidStorageURL: ``storage`` names no storage.
        MissingDependency: the storage's extra is not installed.
        StorageError: the storage cannot be opened.
    """
    out = sys.stdout if out is None else out
    # Frequent progress writes and looks make the demo lively (the defaults are 0.5 s);
    # it looks twice as often as items write, so that every stage of every item shows.
    progress = max(0.01, 0.1 * delay_scale)
    poll = max(0.005, 0.05 * delay_scale)
    async with open_demo_storage(storage, poll_interval=poll) as store:
        return await _demo(
            store, describe_storage(storage), delay_scale, progress, poll, display, out
        )


async def _demo(
    storage: Storage,
    where: str,
    delay_scale: float,
    progress: float,
    poll: float,
    display: Display,
    out: TextIO,
) -> DemoResult:
    runner = BatchRunner(
        storage,
        VideoGenerator(delay_scale=delay_scale, flaky=FLAKY_UPLOADS),
        concurrency=3,
        progress_interval=progress,
        poll_interval=poll,
    )
    names = _names()
    # Batches outlive the process that made them: the earlier runs' are still there.
    earlier = await runner.batches(limit=5)
    _show_earlier(earlier, where, out)
    view = _view(display, out)

    batch = await runner.submit(
        [ItemSpec(key=product["sku"], payload=product) for product in PRODUCTS],
        metadata={"campaign": "spring launch"},
    )
    started = time.perf_counter()
    view.begin(f"Rendering {batch.total} product videos, 3 at a time (batch {batch.id})")
    first = await _run_and_show(runner, batch.id, view)
    print(
        f"\nBatch finished: {first.state} in {time.perf_counter() - started:.1f} s\n"
        f"  {_counts(first)}",
        file=out,
    )
    failed = await runner.items(batch.id, state=ItemState.FAILED, limit=len(PRODUCTS))
    print("Failed items:", file=out)
    for item in failed:
        print(f"  {item.key} {names[item.key]}: {_detail(item)}", file=out)

    again = await runner.retry_failed(batch.id)
    print(
        f"\nRetrying the {again.total} failed items: retry_failed made batch {again.id} "
        f"(parent {again.parent_id})",
        file=out,
        flush=True,
    )
    started = time.perf_counter()
    view.begin(f"Retrying {again.total} items (batch {again.id})")
    retry = await _run_and_show(runner, again.id, view)
    retried = await runner.items(again.id, limit=len(PRODUCTS))
    print(
        f"\nRetry finished: {retry.state} in {time.perf_counter() - started:.1f} s\n"
        f"  {_counts(retry)}",
        file=out,
    )
    for item in retried:
        print(f"  {item.key} {names[item.key]}: {item.state}, {_detail(item)}", file=out)
    out.flush()
    return DemoResult(earlier=earlier, first=first, failed=failed, retry=retry, retried=retried)


def main(argv: Sequence[str] | None = None) -> int:
    """Parse the command line and run the demo; return the exit status."""
    parser = argparse.ArgumentParser(
        prog="python -m examples.demo", description=(__doc__ or "").split("\n")[0]
    )
    parser.add_argument(
        "--scale",
        type=float,
        default=float(os.environ.get("BATCHKIT_DEMO_SCALE", "1.0")),
        help="multiply every pause by this (default 1.0, or $BATCHKIT_DEMO_SCALE)",
    )
    parser.add_argument(
        "--storage",
        metavar="URL",
        default=os.environ.get("BATCHKIT_STORAGE", DEFAULT_STORAGE),
        help=f"where the batches are kept (default {DEFAULT_STORAGE}, or $BATCHKIT_STORAGE)",
    )
    group = parser.add_mutually_exclusive_group()
    group.add_argument(
        "--plain", action="store_const", const="plain", dest="display", help="plain lines only"
    )
    group.add_argument(
        "--rich", action="store_const", const="rich", dest="display", help="a live table (Rich)"
    )
    args = parser.parse_args(argv)
    if args.scale < 0:
        parser.error("--scale must not be negative")
    try:
        open_demo_storage(args.storage)  # a wrong URL or a missing extra is a usage error
    except (InvalidStorageURL, MissingDependency, ValueError) as exc:
        parser.error(str(exc))
    demo = partial(
        run_demo, storage=args.storage, delay_scale=args.scale, display=args.display or "auto"
    )
    try:
        anyio.run(demo)
    except BrokenPipeError:  # the reader went away (`| head`): not the storage's fault
        raise
    except (StorageError, OSError) as exc:  # a server that is down or refuses us
        print(f"cannot use the storage {describe_storage(args.storage)}: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
