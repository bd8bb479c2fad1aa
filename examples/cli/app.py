"""The commands: generate, status, list, retry-failed, resume, watch.

Exit codes (the same for every command):

====  ==========================================================================
 0    done: the batch completed without errors (or the read command succeeded)
 1    the batch finished, and some items failed (``retry-failed`` retries them)
 2    bad usage or bad input (an unreadable CSV, an unknown option, a bad storage URL)
 3    the batch was cancelled
 4    no such batch, or the storage cannot be reached
 130  interrupted (Ctrl-C): nothing is left running; ``resume`` finishes the batch
====  ==========================================================================
"""

from __future__ import annotations

import importlib
import json
import logging
import os
import shlex
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any
from urllib.parse import urlsplit

import anyio
import typer

from batchkit import (
    BatchkitError,
    BatchNotFound,
    BatchRunner,
    BatchState,
    InvalidBatch,
    ItemState,
    open_storage,
)

from .display import LiveView, PlainView, follow, format_counts
from .items import BadItems, read_items

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from batchkit import BatchStatus, Item
    from batchkit.protocols import Storage

__all__ = ["app", "main"]

EXIT_OK, EXIT_FAILED_ITEMS, EXIT_USAGE, EXIT_CANCELLED, EXIT_NOT_FOUND = 0, 1, 2, 3, 4
EXIT_INTERRUPTED = 130
DEFAULT_STORAGE = "sqlite+aiosqlite:///batchkit-demo.db"
DEFAULT_GENERATOR = "examples.fastapi_app.generator:generate"
PROGRAM = "python -m examples.cli"

app = typer.Typer(
    name="batchkit-demo",
    help="Generate a product video for every row of a CSV file, with batchkit: live "
    "progress per item, resume after Ctrl-C or a crash, retry the failed ones.",
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode=None,
    epilog="Exit codes: 0 completed without errors, 1 some items failed, 2 bad usage or "
    "input, 3 cancelled, 4 no such batch or storage unreachable, 130 interrupted (resume it).",
)

Storage_ = Annotated[
    str,
    typer.Option(
        "--storage",
        envvar="BATCHKIT_STORAGE",
        help="where batches are kept (default: an SQLite file in this directory)",
        show_default=False,
    ),
]
Prefix_ = Annotated[
    str | None,
    typer.Option(
        "--prefix",
        envvar="BATCHKIT_STORAGE_PREFIX",
        help="the table prefix (SQL) or key prefix (Redis) of the batches, to keep them apart "
        "from another app's in the same database (default: batchkit's)",
        show_default=False,
    ),
]
Generator_ = Annotated[
    str,
    typer.Option("--generator", help="the generator, as module:attribute", show_default=False),
]
Json_ = Annotated[bool, typer.Option("--json", help="print JSON, for scripts")]
Plain_ = Annotated[
    bool,
    typer.Option("--plain", help="plain lines even on a terminal (they are the default elsewhere)"),
]
Concurrency_ = Annotated[
    int, typer.Option("--concurrency", "-c", min=1, max=64, help="items at once")
]
Output_ = Annotated[
    Path,
    typer.Option("--output", help="where the default generator writes its videos"),
]


def main() -> None:
    """The console script's entry point."""
    _quiet_logs()
    app()


def _quiet_logs() -> None:
    # The display shows every item's fate; the log keeps batchkit's warnings (a storage
    # fault being retried, a blocked event loop), not one line per item.
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("batchkit.items").setLevel(logging.ERROR)


# -- shared plumbing -----------------------------------------------------------------------


def _load(target: str) -> Any:
    module, _, attr = target.partition(":")
    if not module or not attr:
        raise typer.BadParameter(
            f"expected module:attribute, got {target!r}", param_hint="--generator"
        )
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        value: Any = importlib.import_module(module)
        for part in attr.split("."):
            value = getattr(value, part)
    except (ImportError, AttributeError) as exc:
        raise typer.BadParameter(
            f"cannot load {target!r}: {exc}", param_hint="--generator"
        ) from None
    if not callable(value):
        raise typer.BadParameter(f"{target!r} is not callable", param_hint="--generator")
    return value


@dataclass(frozen=True)
class Where:
    """Where the batches are: a storage URL, and the prefix of their tables or keys."""

    url: str
    prefix: str | None = None

    def open(self) -> Storage:
        """The storage, not yet opened. Raises ValueError or BatchkitError on bad input."""
        return open_storage(self.url, prefix=self.prefix)

    def hint(self) -> str:
        """The options to repeat in a printed command: those not given by default or env.

        A password in the URL is shown as ``***``: printed commands end up in logs.
        """
        parts = ""
        if self.url not in (DEFAULT_STORAGE, os.environ.get("BATCHKIT_STORAGE")):
            parts += f" --storage {shlex.quote(_hide_password(self.url))}"
        if self.prefix is not None and self.prefix != os.environ.get("BATCHKIT_STORAGE_PREFIX"):
            parts += f" --prefix {shlex.quote(self.prefix)}"
        return parts


def _hide_password(url: str) -> str:
    try:
        parts = urlsplit(url)
    except ValueError:
        return url
    if not parts.password:
        return url
    user = f"{parts.username}:***@" if parts.username else ":***@"
    return parts._replace(netloc=user + parts.netloc.rpartition("@")[2]).geturl()


def _run(work: Callable[[Storage], Awaitable[int]], where: Where) -> None:
    """Open the storage, run ``work`` in it, exit with the code it returns."""
    raise typer.Exit(_call(work, where))


def _call(work: Callable[[Storage], Awaitable[int]], where: Where) -> int:
    """Open the storage, run ``work`` in it; the code it returns (or an error's)."""
    try:
        storage = where.open()
    except (BatchkitError, ValueError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(EXIT_USAGE) from None

    async def body() -> int:
        async with storage as store:
            return await work(store)

    try:
        code = anyio.run(body)
    except BatchNotFound as exc:
        typer.echo(f"error: {exc}", err=True)
        code = EXIT_NOT_FOUND
    except (BatchkitError, OSError) as exc:
        typer.echo(f"error: {exc}", err=True)
        code = EXIT_NOT_FOUND
    return code


def _code(status: BatchStatus) -> int:
    if status.state is BatchState.COMPLETED:
        return EXIT_OK
    if status.state is BatchState.CANCELLED:
        return EXIT_CANCELLED
    return EXIT_FAILED_ITEMS


def _view(plain: bool) -> PlainView | LiveView:
    if plain or not sys.stdout.isatty():
        return PlainView(sys.stdout)
    from rich.console import Console

    return LiveView(Console())


async def _failed(runner: BatchRunner, batch_id: str) -> list[Item]:
    failed: list[Item] = []
    after = None
    while page := await runner.items(batch_id, state=ItemState.FAILED, limit=1_000, after=after):
        failed.extend(page)
        after = page[-1].position
    return failed


def _status_json(status: BatchStatus, failed: list[Item] | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {
        "batch_id": status.batch_id,
        "state": status.state.value,
        "total": status.total,
        "counts": {s.value: n for s, n in status.counts.items()},
        "progress": round(status.progress, 4),
        "is_terminal": status.is_terminal,
        "parent_id": status.parent_id,
        "created_at": status.created_at.isoformat(),
    }
    if failed is not None:
        body["failed"] = [
            {
                "key": i.key,
                "error": None if i.error is None else f"{i.error.type}: {i.error.message}",
            }
            for i in failed
        ]
    return body


async def _execute(
    runner: BatchRunner,
    batch_id: str,
    *,
    plain: bool,
    where: Where,
    title: str,
    output: Path | None,
) -> int:
    """Run the batch with a display; Ctrl-C stops it cleanly. The exit code."""
    view = _view(plain)
    view.start(title)
    started = time.monotonic()
    interrupted = False
    final: BatchStatus | None = None
    try:
        async with anyio.create_task_group() as tg:
            signals_scope = anyio.CancelScope()

            async def on_signal() -> None:
                nonlocal interrupted
                with (
                    signals_scope,
                    anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals,
                ):
                    async for _ in signals:
                        interrupted = True
                        tg.cancel_scope.cancel()  # run() hands its running items back
                        return

            tg.start_soon(on_signal)
            tg.start_soon(follow, runner, batch_id, view)
            final = await runner.run(batch_id)
            # The display ends by itself once it has shown the terminal state.
            signals_scope.cancel()
    finally:
        view.stop()
    status = await runner.status(batch_id)
    if interrupted or final is None:
        left = status.counts[ItemState.QUEUED] + status.counts[ItemState.RUNNING]
        typer.echo(
            f"\nInterrupted: {left} of {status.total} items are left, and none is running.\n"
            f"Finish them with:\n  {PROGRAM} resume {batch_id}{where.hint()}"
        )
        return EXIT_INTERRUPTED
    await _summary(runner, status, time.monotonic() - started, where=where, output=output)
    return _code(status)


async def _summary(
    runner: BatchRunner,
    status: BatchStatus,
    seconds: float | None,
    *,
    where: Where,
    output: Path | None,
) -> None:
    took = "" if seconds is None else f" in {seconds:.1f} s"
    typer.echo(f"\nBatch {status.batch_id}: {status.state.value}{took} ({format_counts(status)})")
    failed = await _failed(runner, status.batch_id)
    if failed:
        typer.echo(f"Failed ({len(failed)}):")
        for item in failed:
            error = "" if item.error is None else f"{item.error.type}: {item.error.message}"
            typer.echo(f"  {item.key}  {error}")
    if output is not None and status.counts[ItemState.SUCCEEDED]:
        typer.echo(f"Videos: {output / status.batch_id}")
    typer.echo("Next:")
    typer.echo(f"  {PROGRAM} status {status.batch_id}{where.hint()}")
    if failed:
        typer.echo(f"  {PROGRAM} retry-failed {status.batch_id}{where.hint()}")


def _output(generator: str, output: Path) -> Path | None:
    if generator != DEFAULT_GENERATOR:
        return None
    os.environ["BATCHKIT_STUDIO_OUTPUT"] = str(output)  # where the bundled generator writes
    return output


# -- commands ------------------------------------------------------------------------------


@app.command()
def generate(
    items_csv: Annotated[
        Path, typer.Argument(metavar="ITEMS.csv", help="a 'key' column, then payload columns")
    ],
    storage: Storage_ = DEFAULT_STORAGE,
    prefix: Prefix_ = None,
    generator: Generator_ = DEFAULT_GENERATOR,
    concurrency: Concurrency_ = 4,
    output: Output_ = Path("batchkit-output"),
    plain: Plain_ = False,
) -> None:
    """Submit a batch of one item per CSV row and run it, showing every item live."""
    try:
        specs = read_items(items_csv)
    except BadItems as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(EXIT_USAGE) from None
    fn = _load(generator)  # a generator that cannot be loaded is refused before anything is written
    out = _output(generator, output)
    where = Where(storage, prefix)

    async def work(store: Storage) -> int:
        runner = BatchRunner(store, fn, concurrency=concurrency)
        try:
            batch = await runner.submit(specs, metadata={"source": items_csv.name})
        except InvalidBatch as exc:
            typer.echo(f"error: {exc}", err=True)
            return EXIT_USAGE
        title = f"Batch {batch.id}: {batch.total} items from {items_csv.name}"
        return await _execute(runner, batch.id, plain=plain, where=where, title=title, output=out)

    _run(work, where)


@app.command()
def resume(
    batch_id: str,
    storage: Storage_ = DEFAULT_STORAGE,
    prefix: Prefix_ = None,
    generator: Generator_ = DEFAULT_GENERATOR,
    concurrency: Concurrency_ = 4,
    output: Output_ = Path("batchkit-output"),
    plain: Plain_ = False,
) -> None:
    """Finish what is left of a batch (after Ctrl-C or a crash)."""
    fn = _load(generator)
    out = _output(generator, output)
    where = Where(storage, prefix)

    async def work(store: Storage) -> int:
        runner = BatchRunner(store, fn, concurrency=concurrency)
        status = await runner.status(batch_id)
        if status.is_terminal:
            typer.echo(f"Batch {batch_id} has ended already: nothing is left to run.")
            await _summary(runner, status, None, where=where, output=out)
            return _code(status)
        title = f"Resuming batch {batch_id}: {format_counts(status)}"
        return await _execute(runner, batch_id, plain=plain, where=where, title=title, output=out)

    _run(work, where)


@app.command("retry-failed")
def retry_failed(
    batch_id: str,
    storage: Storage_ = DEFAULT_STORAGE,
    prefix: Prefix_ = None,
    generator: Generator_ = DEFAULT_GENERATOR,
    concurrency: Concurrency_ = 4,
    output: Output_ = Path("batchkit-output"),
    plain: Plain_ = False,
    run: Annotated[bool, typer.Option("--run/--no-run", help="run the new batch now")] = True,
) -> None:
    """Submit a new batch of exactly the failed items of a finished batch, and run it."""
    fn = _load(generator)
    out = _output(generator, output)
    where = Where(storage, prefix)

    async def work(store: Storage) -> int:
        runner = BatchRunner(store, fn, concurrency=concurrency)
        try:
            again = await runner.retry_failed(batch_id)
        except InvalidBatch as exc:
            typer.echo(f"error: {exc}", err=True)
            return EXIT_USAGE
        typer.echo(f"Batch {again.id} retries the {again.total} failed items of {batch_id}.")
        if not run:
            typer.echo(f"Run it with:\n  {PROGRAM} resume {again.id}{where.hint()}")
            return EXIT_OK
        title = f"Batch {again.id}: {again.total} items retried from {batch_id}"
        return await _execute(runner, again.id, plain=plain, where=where, title=title, output=out)

    _run(work, where)


@app.command()
def status(
    batch_id: str,
    storage: Storage_ = DEFAULT_STORAGE,
    prefix: Prefix_ = None,
    as_json: Json_ = False,
) -> None:
    """A batch's derived state, its counts, and its failed items with their errors."""
    where = Where(storage, prefix)

    if not as_json:

        async def exists(store: Storage) -> int:
            await BatchRunner(store, _nothing).status(batch_id)
            return EXIT_OK

        code = _call(exists, where)  # no such batch: said as the other commands say it
        if code == EXIT_OK:
            # The library's own commands print it: `python -m batchkit status` and `errors`.
            code = _library(["status", batch_id], where)
        if code == EXIT_OK:
            typer.echo("")
            code = _library(["errors", batch_id], where)
        raise typer.Exit(code)

    async def work(store: Storage) -> int:
        runner = BatchRunner(store, _nothing)
        current = await runner.status(batch_id)
        failed = await _failed(runner, batch_id)
        typer.echo(json.dumps(_status_json(current, failed), indent=2))
        return EXIT_OK

    _run(work, where)


@app.command("list")
def list_batches(
    storage: Storage_ = DEFAULT_STORAGE,
    prefix: Prefix_ = None,
    limit: Annotated[int, typer.Option("--limit", min=1, max=1_000, help="how many")] = 10,
    as_json: Json_ = False,
) -> None:
    """Recent batches, newest first, with their derived state."""
    where = Where(storage, prefix)

    listed: list[BatchStatus] = []

    async def work(store: Storage) -> int:
        listed.extend(await BatchRunner(store, _nothing).batches(limit=limit))
        if as_json:
            typer.echo(json.dumps([_status_json(s) for s in listed], indent=2))
        elif not listed:
            typer.echo(
                f"No batches yet: try  {PROGRAM} generate examples/cli/products.csv{where.hint()}"
            )
        return EXIT_OK

    code = _call(work, where)
    if code != EXIT_OK or as_json or not listed:
        raise typer.Exit(code)
    # The library's own command prints the table: `python -m batchkit batches`.
    raise typer.Exit(_library(["batches", "--limit", str(limit)], where))


@app.command()
def watch(
    batch_id: str,
    storage: Storage_ = DEFAULT_STORAGE,
    prefix: Prefix_ = None,
    plain: Plain_ = False,
    as_json: Json_ = False,
) -> None:
    """Follow a batch that another process runs, until it finishes."""
    where = Where(storage, prefix)

    async def work(store: Storage) -> int:
        runner = BatchRunner(store, _nothing, poll_interval=0.2)
        if as_json:
            last = None
            async for current in runner.watch(batch_id):
                typer.echo(json.dumps(_status_json(current)))
                last = current
            assert last is not None
            return _code(last)
        view = _view(plain)
        view.start(f"Watching batch {batch_id}")
        try:
            final = await follow(runner, batch_id, view)
        finally:
            view.stop()
        typer.echo(f"\nBatch {batch_id}: {final.state.value} ({format_counts(final)})")
        return _code(final)

    _run(work, where)


def _library(command: list[str], where: Where) -> int:
    """Run one of batchkit's own commands (``python -m batchkit ...``) on the demo's
    storage: where the demo's commands and the library's overlap, the library's print.
    Its exit status, as the demo's own codes say it."""
    from batchkit.cli import main as batchkit_main

    args = [*command, "--storage", where.url]
    if where.prefix is not None:
        args += ["--prefix", where.prefix]
    code = batchkit_main(args, prog="python -m batchkit")
    # The library's 1 is a failure to act (a storage that cannot be opened): the demo's 4.
    return {0: EXIT_OK, 2: EXIT_USAGE, 4: EXIT_NOT_FOUND}.get(code, EXIT_NOT_FOUND)


async def _nothing(ctx: object) -> None:
    """The generator of the read commands: they run nothing."""
    return None
