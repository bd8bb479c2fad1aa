"""The operator's commands: ``python -m batchkit batches | status | items | errors | watch |
cancel | retry-failed | delete | prune``.

Each reads or acts on a storage the app shares (``--storage URL`` or ``BATCHKIT_STORAGE``,
``--prefix``), through `BatchRunner`, and prints a table fitted to the terminal, or JSON
with ``--json``: one object for a command about one batch, one object per line (JSON
Lines) for a list, streamed page by page, so that a batch of a million items is never
read whole. Exit codes are in `batchkit._argtypes`.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import sys
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import anyio

from ._argtypes import (
    EXIT_CANCELLED,
    EXIT_FAILED,
    EXIT_FAILED_ITEMS,
    EXIT_NOT_FOUND,
    EXIT_OK,
    EXIT_USAGE,
    batch_id,
    positive_int,
    storage_options,
    where,
)
from ._secrets import redact, url_secrets
from ._tables import Column, Table, age, clean
from .exceptions import BatchkitError, BatchNotFound, InvalidBatch, SchemaVersionMismatch
from .models import TERMINAL_ITEM_STATES, BatchState, ItemState
from .runner import BatchRunner

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Callable, Iterable

    from .models import BatchStatus, Item

__all__ = ["COMMANDS", "add_commands", "run_command"]

#: The commands, in the order ``--help`` lists them.
COMMANDS = (
    "batches",
    "status",
    "items",
    "errors",
    "watch",
    "cancel",
    "retry-failed",
    "delete",
    "prune",
)
#: The most a page asks the storage for (the runner's own cap).
_PAGE = 1_000
_UNSAFE = re.compile("[\x7f-\x9f\u2028\u2029]")


async def _not_run(ctx: object) -> None:  # the operator's runner never runs an item
    raise RuntimeError("the operator's commands do not run items")


# -- the parser --------------------------------------------------------------------------


def _storage_options() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    group = common.add_argument_group("storage and output")
    storage_options(group, "the app's storage")
    group.add_argument(
        "--json",
        action="store_true",
        help="print JSON: one object, or one object per line for a list (JSON Lines)",
    )
    return common


def _page_size(text: str) -> int:
    value = positive_int(text)
    if value > _PAGE:
        raise argparse.ArgumentTypeError(f"at most {_PAGE} a page, got {value}")
    return value


def _date(text: str) -> datetime:
    if text.strip().lower() == "now":
        return datetime.now(UTC)
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"not a date: {text!r} (ISO 8601: 2026-01-31 or 2026-01-31T12:00:00+00:00, or now)"
        ) from None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def _batch_state(text: str) -> BatchState:
    try:
        return BatchState(text)
    except ValueError:
        names = ", ".join(s.value for s in BatchState)
        raise argparse.ArgumentTypeError(f"not a batch state: {text!r} (one of {names})") from None


def _item_state(text: str) -> ItemState:
    try:
        return ItemState(text)
    except ValueError:
        names = ", ".join(s.value for s in ItemState)
        raise argparse.ArgumentTypeError(f"not an item state: {text!r} (one of {names})") from None


def add_commands(commands: Any) -> None:
    """Add the operator's commands to ``python -m batchkit``'s subparsers."""
    common = _storage_options()

    def command(
        name: str, summary: str, epilog: str, under: Any = commands
    ) -> argparse.ArgumentParser:
        return under.add_parser(  # type: ignore[no-any-return]
            name,
            help=summary,
            description=summary[0].upper() + summary[1:] + ".",
            epilog=epilog,
            parents=[common],
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )

    listed = command(
        "batches",
        "list batches, newest first",
        "A page at a time (--limit); --before the last id of a page gives the next one, "
        "--all walks every page.\nexit status: 0 listed, 1 storage error, 2 bad options.",
    )
    listed.add_argument(
        "--state",
        type=_batch_state,
        action="append",
        help="only batches in this state (repeat for several)",
    )
    listed.add_argument(
        "--where",
        metavar="KEY=VALUE",
        type=where,
        action="append",
        help="only batches whose metadata has KEY equal to VALUE (JSON when it parses, else text)",
    )
    listed.add_argument(
        "--limit", metavar="N", type=_page_size, default=20, help="batches per page (default: 20)"
    )
    listed.add_argument(
        "--before", metavar="ID", type=batch_id, help="the page after this batch id"
    )
    listed.add_argument("--all", action="store_true", help="every page, printed as it is read")

    one = command(
        "status",
        "show one batch's state, counts and progress",
        "exit status: 0 shown, 1 storage error, 2 bad options, 4 no such batch.",
    )
    one.add_argument("batch_id", metavar="ID", type=batch_id)

    items = command(
        "items",
        "list a batch's items in submission order",
        "A page at a time (--limit); --after the last position of a page gives the next "
        "one, --all walks every page.\nexit status: 0 listed, 1 storage error, 2 bad "
        "options, 4 no such batch.",
    )
    items.add_argument("batch_id", metavar="ID", type=batch_id)
    items.add_argument(
        "--state",
        type=_item_state,
        action="append",
        help="only items in this state (repeat for several)",
    )
    items.add_argument(
        "--limit",
        metavar="N",
        type=_page_size,
        default=50,
        help="items per page (default: 50, at most 1000)",
    )
    items.add_argument("--after", metavar="POSITION", type=int, help="the page after this position")
    items.add_argument("--all", action="store_true", help="every page, printed as it is read")

    errors = command(
        "errors",
        "show a batch's failed items: each one's error and the errors of its attempts",
        "exit status: 0 shown (also when none failed), 1 storage error, 2 bad options, "
        "4 no such batch.",
    )
    errors.add_argument("batch_id", metavar="ID", type=batch_id)
    errors.add_argument("--traceback", action="store_true", help="print each error's traceback too")

    watch = command(
        "watch",
        "follow a batch until it ends, a line per change",
        "exit status: 0 completed, 1 storage error, 2 bad options, 3 cancelled, 4 no such "
        "batch, 5 ended with failed items.",
    )
    watch.add_argument("batch_id", metavar="ID", type=batch_id)

    cancel = command(
        "cancel",
        "cancel a batch: queued items at once, running ones at their next heartbeat",
        "exit status: 0 cancel requested (or the batch had ended already), 1 storage "
        "error, 2 bad options, 4 no such batch.",
    )
    cancel.add_argument("batch_id", metavar="ID", type=batch_id)
    cancel.add_argument("--reason", help="why, kept with the batch")

    retry = command(
        "retry-failed",
        "submit a new batch of a finished batch's failed items",
        "Run twice, it returns the same new batch.\nexit status: 0 submitted, 1 refused "
        "(still running, nothing failed) or storage error, 2 bad options, 4 no such batch.",
    )
    retry.add_argument("batch_id", metavar="ID", type=batch_id)

    delete = command(
        "delete",
        "delete a batch and its items",
        "exit status: 0 deleted, 1 refused (still running, without --force) or storage "
        "error, 2 bad options, 4 no such batch.",
    )
    delete.add_argument("batch_id", metavar="ID", type=batch_id)
    delete.add_argument("--force", action="store_true", help="delete it even while it runs")

    prune = command(
        "prune",
        "delete the batches that finished before a date (retention)",
        "exit status: 0 pruned (also when nothing was), 1 storage error, 2 bad options.",
    )
    prune.add_argument(
        "--finished-before",
        metavar="DATE",
        type=_date,
        required=True,
        help="ISO 8601 (2026-01-31, 2026-01-31T12:00:00+02:00; UTC when no offset is given) or now",
    )
    schema = commands.add_parser(
        "schema",
        help="show or upgrade the schema version of a SQL storage's tables",
        description="Show or upgrade the schema version of a SQL storage's tables.",
    )
    steps = schema.add_subparsers(dest="schema_command", metavar="COMMAND", required=True)
    exits = "1 no tables, a version newer than this batchkit's, or storage error, 2 bad options."
    command(
        "version",
        "show the tables' schema version and this batchkit's",
        f"exit status: 0 shown, {exits}",
        steps,
    )
    upgrade = command(
        "upgrade",
        "bring the tables to this batchkit's schema version, rows and all",
        "In one transaction on PostgreSQL and SQLite. MySQL and MariaDB commit each change "
        "on its own: an upgrade stopped half-way goes on from there when run again.\n"
        f"exit status: 0 upgraded (or current already), {exits}",
        steps,
    )
    upgrade.add_argument("--sql", action="store_true", help="print the SQL it would run; run none")


# -- running a command -------------------------------------------------------------------


def run_command(args: argparse.Namespace, prog: str) -> int:
    """Run the operator's command ``args.command``; return its exit status."""
    if not args.storage:
        print(
            f"{prog} {args.command}: error: give --storage URL or set BATCHKIT_STORAGE",
            file=sys.stderr,
        )
        return EXIT_USAGE
    if args.storage.startswith("memory:"):
        print(
            f"{prog} {args.command}: error: memory:// lives in one process; give the "
            "storage the app uses",
            file=sys.stderr,
        )
        return EXIT_USAGE
    if args.command == "prune" and args.finished_before > datetime.now(UTC):
        print(
            f"{prog} prune: error: --finished-before is in the future; give a past date "
            "(or now, for every finished batch)",
            file=sys.stderr,
        )
        return EXIT_USAGE
    secrets = url_secrets(args.storage)

    def say(message: str) -> None:
        print(f"{prog} {args.command}: {redact(message, secrets)}", file=sys.stderr)

    out = _Output(args.json)
    try:
        return anyio.run(_run, args, out, say)
    except BrokenPipeError:  # | head: the reader has what it wanted
        # Python flushes standard output once more on its way out: into nothing, now.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK
    except KeyboardInterrupt:
        return 130


async def _run(args: argparse.Namespace, out: _Output, say: Callable[[str], None]) -> int:
    from .storage import open_storage

    url: str = args.storage
    sql = not url.lower().startswith(("redis", "unix"))
    missing = _missing_sqlite_file(url)
    if missing is not None:
        say(f"no SQLite database at {missing}")
        return EXIT_FAILED
    try:
        # The commands read and act on what an app made: they never create its tables (a
        # mistyped --prefix would make new, empty ones).
        options: dict[str, Any] = {"create_schema": False} if sql else {}
        storage = open_storage(url, prefix=args.prefix, **options)
    except (BatchkitError, ValueError) as exc:
        say(str(exc))
        return EXIT_FAILED
    act = _ACTIONS[args.command]
    try:
        async with storage:
            return await act(BatchRunner(storage, _not_run), args, out, say)
    except BatchNotFound as exc:
        say(f"no batch {exc.batch_id}")
        return EXIT_NOT_FOUND
    except SchemaVersionMismatch as exc:
        if "is missing" in str(exc):
            shown = "the default one" if args.prefix is None else repr(args.prefix)
            say(f"no batchkit tables here with the prefix {shown}: give --prefix the app's own")
        else:
            say(str(exc))
        return EXIT_FAILED
    except BrokenPipeError:
        raise  # the reader went away: not the storage's fault
    except Exception as exc:  # a driver's own error too (an option in the URL it refuses)
        say(f"{type(exc).__name__}: {exc}" if not isinstance(exc, BatchkitError) else str(exc))
        return EXIT_FAILED


def _missing_sqlite_file(url: str) -> str | None:
    """The path of a SQLite URL whose file does not exist (opening it would create it)."""
    if not url.lower().startswith("sqlite"):
        return None
    try:
        from sqlalchemy.engine import make_url

        database = make_url(url).database
    except Exception:
        return None
    if not database or database == ":memory:" or database.startswith("file:"):
        return None
    return None if os.path.exists(database) else database


class _Output:
    """Standard output: JSON objects, or text lines fitted to the terminal."""

    def __init__(self, as_json: bool) -> None:
        self.json = as_json
        self.width = max(40, shutil.get_terminal_size((100, 24)).columns)

    def obj(self, value: Any) -> None:
        text = json.dumps(value, ensure_ascii=False)
        # JSON escapes C0 controls itself; DEL, the C1 controls (a one-character CSI among
        # them) and the line separators are escaped too, so that a line printed in a
        # terminal, or split by a reader, stays one line that does nothing.
        text = _UNSAFE.sub(lambda m: f"\\u{ord(m.group()):04x}", text)
        sys.stdout.write(text + "\n")
        sys.stdout.flush()

    def line(self, text: str = "") -> None:
        sys.stdout.write(text + "\n")

    def table(self, table: Table) -> None:
        for line in table.lines(self.width):
            self.line(line)
        sys.stdout.flush()


def _status_json(status: BatchStatus) -> dict[str, Any]:
    return status.model_dump(mode="json")


def _item_json(item: Item) -> dict[str, Any]:
    return item.model_dump(mode="json")


def _percent(fraction: float) -> str:
    return f"{100 * fraction:.0f}%"


def _counts(status: BatchStatus) -> str:
    return " · ".join(f"{n} {s.value}" for s, n in status.counts.items() if n) or "empty"


def _compact(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"), sort_keys=True)


# -- the commands ------------------------------------------------------------------------


async def _batch_pages(
    runner: BatchRunner, args: argparse.Namespace
) -> AsyncIterator[list[BatchStatus]]:
    """Pages of ``--limit`` batches that pass ``--state`` (read as many as that takes)."""
    wanted = None if not args.state else set(args.state)
    metadata = dict(args.where) if args.where else None
    before = args.before
    page: list[BatchStatus] = []
    while True:
        read = await runner.batches(
            metadata=metadata, limit=_PAGE if wanted else args.limit, before=before
        )
        for status in read:
            if wanted is None or status.state in wanted:
                page.append(status)
                if len(page) == args.limit:
                    yield page
                    page = []
                    if not args.all:
                        return
        if len(read) < (_PAGE if wanted else args.limit):
            break
        before = read[-1].batch_id
    yield page


async def _batches(
    runner: BatchRunner, args: argparse.Namespace, out: _Output, say: Callable[[str], None]
) -> int:
    shown = 0
    last: str | None = None
    async for page in _batch_pages(runner, args):
        if out.json:
            for status in page:
                out.obj(_status_json(status))
        elif page:
            table = Table(
                [
                    Column("ID"),
                    Column("STATE"),
                    Column("DONE", right=True),
                    Column("FAILED", right=True),
                    Column("PROGRESS", right=True),
                    Column("AGE", right=True),
                    Column("METADATA", flexible=True),
                ]
            )
            for s in page:
                finished = sum(n for st, n in s.counts.items() if st in TERMINAL_ITEM_STATES)
                table.add(
                    s.batch_id,
                    s.state.value,
                    f"{finished}/{s.total}",
                    s.counts[ItemState.FAILED],
                    _percent(s.progress),
                    age(s.created_at),
                    _compact(s.metadata) if s.metadata else "",
                )
            out.table(table)
        shown += len(page)
        if page:
            last = page[-1].batch_id
    if not out.json:
        if not shown:
            out.line("no batches")
        elif last is not None and shown == args.limit and not args.all:
            say(f"more may follow: --before {last}")
    return EXIT_OK


async def _status(
    runner: BatchRunner, args: argparse.Namespace, out: _Output, say: Callable[[str], None]
) -> int:
    status = await runner.status(args.batch_id)
    if out.json:
        out.obj(_status_json(status))
        return EXIT_OK
    _describe(out, status)
    return EXIT_OK


def _describe(out: _Output, s: BatchStatus) -> None:
    rows: list[tuple[str, object]] = [
        ("batch", s.batch_id),
        (
            "state",
            s.state.value
            + (" (cancel requested)" if s.cancel_requested and not s.is_terminal else ""),
        ),
        ("progress", f"{_percent(s.progress)} of {s.total} items"),
        ("items", _counts(s)),
        ("created", f"{s.created_at.isoformat(timespec='seconds')} ({age(s.created_at)} ago)"),
    ]
    if s.started_at is not None:
        rows.append(("started", s.started_at.isoformat(timespec="seconds")))
    if s.finished_at is not None:
        rows.append(("finished", s.finished_at.isoformat(timespec="seconds")))
    if s.parent_id is not None:
        rows.append(("retry of", s.parent_id))
    if s.cancel_reason is not None:
        rows.append(("cancelled", s.cancel_reason))
    if s.max_failures is not None:
        rows.append(("max failures", s.max_failures))
    if s.metadata:
        rows.append(("metadata", _compact(s.metadata)))
    for name, value in rows:
        out.line(f"{name:>12}  {clean(value)}")


async def _item_pages(
    runner: BatchRunner,
    batch: str,
    states: Iterable[ItemState] | None,
    limit: int,
    after: int | None,
    every: bool,
) -> AsyncIterator[list[Item]]:
    while True:
        page = await runner.items(
            batch, state=None if states is None else list(states), limit=limit, after=after
        )
        yield page
        if not every or len(page) < limit:
            return
        after = page[-1].position


async def _items(
    runner: BatchRunner, args: argparse.Namespace, out: _Output, say: Callable[[str], None]
) -> int:
    await runner.status(args.batch_id)  # no such batch: exit 4, not an empty list
    limit = args.limit
    shown = 0
    last: int | None = None
    async for page in _item_pages(runner, args.batch_id, args.state, limit, args.after, args.all):
        if out.json:
            for item in page:
                out.obj(_item_json(item))
        elif page:
            table = Table(
                [
                    Column("POS", right=True),
                    Column("KEY", flexible=True, least=12),
                    Column("STATE"),
                    Column("TRY", right=True),
                    Column("PROGRESS", right=True),
                    Column("MESSAGE", flexible=True, least=10),
                ]
            )
            for item in page:
                note = item.message or ""
                if item.error is not None and item.state is not ItemState.SUCCEEDED:
                    note = f"{item.error.type}: {item.error.message}"
                table.add(
                    item.position,
                    item.key,
                    item.state.value,
                    item.attempt,
                    _percent(item.progress),
                    note,
                )
            out.table(table)
        shown += len(page)
        if page:
            last = page[-1].position
    if not out.json:
        if not shown:
            out.line("no items")
        elif last is not None and shown == limit and not args.all:
            say(f"more may follow: --after {last}")
    return EXIT_OK


async def _errors(
    runner: BatchRunner, args: argparse.Namespace, out: _Output, say: Callable[[str], None]
) -> int:
    status = await runner.status(args.batch_id)
    failed = 0
    async for page in _item_pages(runner, args.batch_id, [ItemState.FAILED], _PAGE, None, True):
        for item in page:
            failed += 1
            if out.json:
                body = {
                    "key": item.key,
                    "position": item.position,
                    "attempt": item.attempt,
                    "error": None if item.error is None else item.error.model_dump(mode="json"),
                    "errors": [e.model_dump(mode="json") for e in item.errors],
                }
                out.obj(body)
                continue
            out.line(
                f"{clean(item.key)}  (position {item.position}, {item.attempt} attempt{'s' if item.attempt != 1 else ''})"
            )
            if item.error is not None:
                out.line(f"  {clean(item.error.type)}: {clean(item.error.message)}")
            earlier = (
                item.errors[:-1] if item.errors and item.errors[-1] == item.error else item.errors
            )
            for n, error in enumerate(earlier, start=1):
                which = n if error.attempt is None else error.attempt
                out.line(f"  attempt {which}: {clean(error.type)}: {clean(error.message)}")
            if args.traceback and item.error is not None and item.error.traceback:
                for line in item.error.traceback.splitlines():
                    out.line("    " + clean(line))
    if not out.json:
        out.line(
            f"{failed} failed of {status.total}" if failed else f"no failed items of {status.total}"
        )
    return EXIT_OK


def _final_code(status: BatchStatus) -> int:
    if status.state is BatchState.CANCELLED:
        return EXIT_CANCELLED
    if status.counts[ItemState.FAILED]:
        return EXIT_FAILED_ITEMS
    return EXIT_OK


async def _watch(
    runner: BatchRunner, args: argparse.Namespace, out: _Output, say: Callable[[str], None]
) -> int:
    last: BatchStatus | None = None
    async for status in runner.watch(args.batch_id):
        last = status
        if out.json:
            out.obj(_status_json(status))
        else:
            out.line(
                f"{datetime.now(UTC):%H:%M:%S}  {status.state.value:<21}  {_percent(status.progress):>4}  {_counts(status)}"
            )
            sys.stdout.flush()
    assert last is not None
    return _final_code(last)


async def _cancel(
    runner: BatchRunner, args: argparse.Namespace, out: _Output, say: Callable[[str], None]
) -> int:
    status = await runner.cancel(args.batch_id, reason=args.reason)
    if out.json:
        out.obj(_status_json(status))
    else:
        _describe(out, status)
    return EXIT_OK


async def _retry_failed(
    runner: BatchRunner, args: argparse.Namespace, out: _Output, say: Callable[[str], None]
) -> int:
    try:
        batch = await runner.retry_failed(args.batch_id)
    except InvalidBatch as exc:
        say(str(exc))
        return EXIT_FAILED
    if out.json:
        out.obj({"batch_id": batch.id, "parent_id": batch.parent_id, "total": batch.total})
    else:
        out.line(
            f"submitted {batch.id}: {batch.total} failed item{'s' if batch.total != 1 else ''} of {args.batch_id}"
        )
    return EXIT_OK


async def _delete(
    runner: BatchRunner, args: argparse.Namespace, out: _Output, say: Callable[[str], None]
) -> int:
    status = await runner.status(args.batch_id)
    if not status.is_terminal and not args.force:
        say(
            f"batch {args.batch_id} is still {status.state.value}: cancel it first, or "
            "delete it with --force (a worker on it loses its items)"
        )
        return EXIT_FAILED
    deleted = await runner.delete(args.batch_id)
    if not deleted:
        raise BatchNotFound(args.batch_id)
    if out.json:
        out.obj({"batch_id": args.batch_id, "deleted": True})
    else:
        out.line(f"deleted {args.batch_id} ({status.total} items)")
    return EXIT_OK


async def _prune(
    runner: BatchRunner, args: argparse.Namespace, out: _Output, say: Callable[[str], None]
) -> int:
    older_than = max(0.0, (datetime.now(UTC) - args.finished_before).total_seconds())
    deleted = await runner.storage.delete_finished_batches(older_than=older_than)
    if out.json:
        out.obj({"deleted": deleted, "finished_before": args.finished_before.isoformat()})
    else:
        out.line(
            f"deleted {deleted} batch{'es' if deleted != 1 else ''} finished before {args.finished_before.isoformat(timespec='seconds')}"
        )
    return EXIT_OK


_ACTIONS: dict[
    str, Callable[[BatchRunner, argparse.Namespace, _Output, Callable[[str], None]], Awaitable[int]]
] = {
    "batches": _batches,
    "status": _status,
    "items": _items,
    "errors": _errors,
    "watch": _watch,
    "cancel": _cancel,
    "retry-failed": _retry_failed,
    "delete": _delete,
    "prune": _prune,
}
