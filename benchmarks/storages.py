"""Storage benchmark: submit, sequential run, status reads and memory, per durable store.

Usage::

    python benchmarks/storages.py                  # SQLite, PostgreSQL, MySQL/MariaDB, Redis
    python benchmarks/storages.py --quick          # without the 1,000,000-item batch
    python benchmarks/storages.py --dialects sqlite,postgres
    python benchmarks/storages.py --ceilings-only  # each store's ceiling alone (seconds)
    python benchmarks/storages.py --no-ceilings    # the storage measurements alone

For each store it measures, with a generator that does nothing:

* submitting 100,000 items (one ``runner.submit`` call);
* running 10,000 items one after the other (``concurrency=1``): items per second, and
  the SQL statements per item (on SQLite every statement SQLite runs, BEGIN and COMMIT
  included; on the servers every statement sent, the drivers' own BEGIN and COMMIT
  aside: see ``_Counter``; on Redis every command Redis ran, from its ``commandstats``);
* right after that run, the store's ceiling for it: what one connection does per second
  with nothing of batchkit in the way, and the run's items per second over it. On
  PostgreSQL the commit rate of a one-row ``UPDATE`` (``pgbench``, 1 client, when it is
  on ``PATH``; else a bare asyncpg loop); on SQLite and MySQL/MariaDB the same
  ``UPDATE`` in a bare aiosqlite or asyncmy loop, each committed; on Redis the round
  trip of ``EVAL "return 1" 0`` (``redis-benchmark``, 1 client, when it is on ``PATH``;
  else a bare redis-py loop). A sequential run waits for each item's round trips and
  commit, so this is the bound it works against; the table says which tool measured it
  (see ``_ceilings``);
* the median of 200 ``runner.status()`` calls on batches of 1,000, 100,000 and
  1,000,000 items (it must not grow with the batch);
* the resident memory of a runner process working through a 1,000,000-item batch for a
  bounded time (``--rss-seconds``, 10 by default) before it is cancelled: it must stay
  flat, the runner streams its items. The runner runs in a fresh interpreter, so the
  memory is its own; how long the cancelled ``run()`` takes to return is reported too.

SQLite uses a file in a temporary directory. The servers are read from
``BATCHKIT_BENCH_POSTGRES_URL``, ``BATCHKIT_BENCH_MYSQL_URL`` and
``BATCHKIT_BENCH_REDIS_URL`` (by default the local test servers,
``postgresql+asyncpg://postgres@127.0.0.1:5432/test``,
``mysql+asyncmy://root@127.0.0.1:3306/test`` and ``redis://127.0.0.1:6379/0``); a server
that is not reachable is skipped, with a line saying so. Every run uses tables (or keys)
of its own under a fresh prefix, dropped at the end, the ceilings' tables included.
Progress goes to standard error; the Markdown table to standard output.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import secrets
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import anyio

import batchkit
from _ceilings import Ceiling, measure_ceiling
from batchkit import BatchRunner, ItemContext, ItemState

if TYPE_CHECKING:
    from collections.abc import Iterator

    from batchkit.protocols import Storage

__all__ = ["DialectResult", "main", "measure_dialect"]

SUBMIT_ITEMS = 100_000
RUN_ITEMS = 10_000
STATUS_SIZES = (1_000, 100_000, 1_000_000)
HUGE = 1_000_000
STATUS_READS = 200
#: How long the memory run may take to stop once cancelled before it is reported as hung.
CANCEL_BOUND_S = 60

#: Targets: PostgreSQL submit of 100,000 items (s), sequential items/s (PostgreSQL and
#: SQLite), status read on 1,000,000 items (ms, PostgreSQL); Redis: the same three.
TARGET_PG_SUBMIT_S = 3.0
TARGET_ITEMS_PER_SECOND = 1_500
TARGET_PG_STATUS_MS = 5.0
TARGET_REDIS_SUBMIT_S = 2.0
TARGET_REDIS_ITEMS_PER_SECOND = 4_000
TARGET_REDIS_STATUS_MS = 2.0

#: Options of the measured runner (``--group-commit``); none: the library's defaults.
RUNNER_OPTIONS: dict[str, Any] = {}

SERVERS = {
    "postgres": os.environ.get(
        "BATCHKIT_BENCH_POSTGRES_URL", "postgresql+asyncpg://postgres@127.0.0.1:5432/test"
    ),
    "mysql": os.environ.get("BATCHKIT_BENCH_MYSQL_URL", "mysql+asyncmy://root@127.0.0.1:3306/test"),
    "redis": os.environ.get("BATCHKIT_BENCH_REDIS_URL", "redis://127.0.0.1:6379/0"),
}
DIALECTS = ("sqlite", "postgres", "mysql", "redis")
NAMES = {"sqlite": "SQLite", "postgres": "PostgreSQL", "mysql": "MySQL/MariaDB", "redis": "Redis"}


def log(message: str) -> None:
    """A progress line on standard error, stamped with the time since start."""
    print(f"[{time.perf_counter() - _STARTED:7.1f}s] {message}", file=sys.stderr, flush=True)


_STARTED = time.perf_counter()


async def noop(ctx: ItemContext) -> None:
    """The cheapest generator: whatever is measured is batchkit's and the database's cost."""


def _specs(count: int) -> list[dict[str, Any]]:
    return [{"key": f"item-{n:07d}", "payload": {"n": n}} for n in range(count)]


def _reachable(url: str) -> str | None:
    """None when the server accepts connections, else why not."""
    parts = urlsplit(url)
    try:
        with socket.create_connection((parts.hostname or "127.0.0.1", parts.port or 0), 2):
            return None
    except OSError as exc:
        return f"{parts.hostname}:{parts.port} is not reachable ({exc})"


@dataclass
class DialectResult:
    """What was measured on one dialect."""

    dialect: str
    server: str = ""
    submit_s: float = 0.0
    run_items_per_s: float = 0.0
    statements_per_item: float = 0.0
    statements_note: str = ""
    status_ms: dict[int, float] = field(default_factory=dict)
    huge_submit_s: float | None = None
    rss: dict[str, Any] = field(default_factory=dict)
    skipped: str | None = None
    #: One connection's ceiling on the store (see ``_ceilings``), None when not measured.
    ceiling: Ceiling | None = None
    #: Why the ceiling could not be measured, when it failed.
    ceiling_error: str | None = None

    @property
    def ceiling_ratio(self) -> float | None:
        """The sequential run's items per second over the ceiling's operations per second."""
        if self.ceiling is None or not self.run_items_per_s:
            return None
        return self.run_items_per_s / self.ceiling.ops_per_s


class _Counter:
    """Counts the SQL statements of a run while ``active``, as the database receives them.

    SQLite: every statement SQLite runs, from SQLite's own trace (``BEGIN IMMEDIATE`` and
    ``COMMIT`` included), whichever way it was sent. PostgreSQL and MySQL/MariaDB: each
    statement sent through SQLAlchemy (the ``BEGIN`` and ``COMMIT`` a driver sends by
    itself are not counted) and each one the storage sends to the driver directly: to
    asyncpg (seen by wrapping asyncpg's ``Connection.fetchrow`` and ``fetch`` while
    counting) or to
    asyncmy (the storage's ``_mysql._execute``).
    """

    def __init__(self, storage: Any) -> None:
        from sqlalchemy import event

        self.statements = 0
        self.active = False
        self._dialect = storage.engine.dialect.name
        sync_engine = storage.engine.sync_engine
        if self._dialect == "sqlite":
            # Set on every checkout: the run's connections are checked out after this.
            event.listen(sync_engine, "checkout", self._trace)
        else:
            event.listen(sync_engine, "before_cursor_execute", self._on_statement)

    def _on_statement(self, *args: Any) -> None:
        if self.active:
            self.statements += 1

    def _trace(self, dbapi_connection: Any, *args: Any) -> None:
        dbapi_connection.run_async(lambda driver: driver.set_trace_callback(self._on_statement))

    @contextmanager
    def counting(self) -> Iterator[None]:
        """Count while the block runs."""
        restore = None
        if self._dialect == "postgresql":
            import asyncpg

            fetchrow, fetch = asyncpg.Connection.fetchrow, asyncpg.Connection.fetch

            async def counted(conn: Any, query: str, *args: Any, **kwargs: Any) -> Any:
                self._on_statement()
                return await fetchrow(conn, query, *args, **kwargs)

            async def counted_all(conn: Any, query: str, *args: Any, **kwargs: Any) -> Any:
                self._on_statement()
                return await fetch(conn, query, *args, **kwargs)

            asyncpg.Connection.fetchrow = counted  # type: ignore[method-assign]
            asyncpg.Connection.fetch = counted_all  # type: ignore[method-assign]

            def restore() -> None:
                asyncpg.Connection.fetchrow = fetchrow  # type: ignore[method-assign]
                asyncpg.Connection.fetch = fetch  # type: ignore[method-assign]

        mysql = sys.modules.get("batchkit.storage.sql._mysql")
        if self._dialect in ("mysql", "mariadb") and hasattr(mysql, "_execute"):
            # The statements the storage sends to asyncmy directly, past SQLAlchemy.
            execute, executemany = mysql._execute, mysql._executemany  # type: ignore[union-attr]

            async def sent(*args: Any) -> None:
                self._on_statement()
                await execute(*args)

            async def sent_many(*args: Any) -> None:
                self._on_statement()
                await executemany(*args)

            mysql._execute, mysql._executemany = sent, sent_many  # type: ignore[union-attr]

            def restore() -> None:
                mysql._execute, mysql._executemany = execute, executemany  # type: ignore[union-attr]

        self.active = True
        try:
            yield
        finally:
            self.active = False
            if restore is not None:
                restore()


async def _median_status_ms(runner: BatchRunner, batch_id: str) -> float:
    times: list[int] = []
    for _ in range(STATUS_READS):
        start = time.perf_counter_ns()
        await runner.status(batch_id)
        times.append(time.perf_counter_ns() - start)
    return statistics.median(times) / 1e6


async def _submit_logged(runner: BatchRunner, count: int, what: str) -> tuple[str, float]:
    """Submit ``count`` items, with a progress line every 15 s; return (batch id, seconds)."""
    specs = _specs(count)
    log(f"submitting {count:,} items ({what})")
    start = time.perf_counter()
    async with anyio.create_task_group() as tg:

        async def tick() -> None:
            while True:
                await anyio.sleep(15)
                log(f"  ... still submitting, {time.perf_counter() - start:.0f} s")

        tg.start_soon(tick)
        batch = await runner.submit(specs)
        tg.cancel_scope.cancel()
    elapsed = time.perf_counter() - start
    log(f"  submitted in {elapsed:.2f} s")
    return batch.id, elapsed


def _url_for(dialect: str, workdir: str) -> str:
    if dialect == "sqlite":
        return f"sqlite+aiosqlite:///{os.path.join(workdir, 'bench.db')}"
    return SERVERS[dialect]


async def _redis_commands(storage: Any) -> tuple[int, int]:
    """Calls the Redis server has answered, and commands it ran in all (scripts' own
    included), from its ``commandstats`` (all clients; the machine is idle)."""
    stats = await storage.client.info("commandstats")
    calls = sum(int(stats[name]["calls"]) for name in ("cmdstat_evalsha", "cmdstat_info"))
    return calls, sum(int(entry["calls"]) for entry in stats.values())


def _open(dialect: str, url: str, prefix: str, *, create: bool = True) -> Storage:
    if dialect == "redis":
        from batchkit.storage.redis import RedisStorage

        return RedisStorage(url, prefix=prefix)
    from batchkit.storage.sql import SQLStorage

    return SQLStorage(url, table_prefix=prefix, create_schema=create)


async def _server_version(storage: Any) -> str:
    if not hasattr(storage, "engine"):
        info = await storage.client.info("server")
        return f"Redis {info['redis_version']}"
    from sqlalchemy import text

    if storage.engine.dialect.name == "sqlite":
        query = text("SELECT 'SQLite ' || sqlite_version()")
    else:
        query = text("SELECT version()")
    async with storage.engine.connect() as conn:
        version = str((await conn.execute(query)).scalar_one())
    return " ".join(version.split()[:2]) if storage.engine.dialect.name == "postgresql" else version


async def _measure_ceiling_logged(result: DialectResult, url: str, prefix: str) -> None:
    """Measure the store's ceiling into ``result``; a failure is reported, not raised."""
    log(f"{result.dialect}: measuring one connection's ceiling")
    try:
        result.ceiling = await measure_ceiling(result.dialect, url, prefix)
    except Exception as exc:
        result.ceiling_error = f"{type(exc).__name__}: {exc}".strip()
        log(f"  ceiling not measured: {result.ceiling_error}")
        return
    result.server = result.server or result.ceiling.server
    log(f"  {result.ceiling.ops_per_s:,.0f} ops/s ({result.ceiling.what})")


async def measure_dialect(
    dialect: str, url: str, *, quick: bool, rss_seconds: float, ceilings: bool = True
) -> DialectResult:
    """Run every measurement on one store, under a fresh prefix dropped at the end.

    With ``ceilings``, the store's ceiling (see ``_ceilings``) is measured right after the
    sequential run, so that the two see the machine in the same state.
    """
    prefix = f"bench{secrets.token_hex(3)}_"
    result = DialectResult(dialect=dialect)
    storage: Any = _open(dialect, url, prefix)
    try:
        async with storage:
            result.server = await _server_version(storage)
            log(f"{dialect}: {result.server}, tables {prefix}*")
            runner = BatchRunner(storage, noop, **RUNNER_OPTIONS)
            counter = None if dialect == "redis" else _Counter(storage)

            big, result.submit_s = await _submit_logged(runner, SUBMIT_ITEMS, "submit timing")
            small, _ = await _submit_logged(runner, STATUS_SIZES[0], "status read")

            run_id, _ = await _submit_logged(runner, RUN_ITEMS, "sequential run")
            log(f"running {RUN_ITEMS:,} items, concurrency=1")
            if counter is None:
                calls, commands = await _redis_commands(storage)
                start = time.perf_counter()
                final = await runner.run(run_id)
                elapsed = time.perf_counter() - start
                calls_after, commands_after = await _redis_commands(storage)
                statements = calls_after - calls - 1  # the INFO itself
                result.statements_note = (
                    f" ({(commands_after - commands - 1) / RUN_ITEMS:.1f} commands run)"
                )
            else:
                with counter.counting():
                    start = time.perf_counter()
                    final = await runner.run(run_id)
                    elapsed = time.perf_counter() - start
                statements = counter.statements
            if final.counts[ItemState.SUCCEEDED] != RUN_ITEMS:
                raise RuntimeError(f"the run did not complete: {final}")
            result.run_items_per_s = RUN_ITEMS / elapsed
            result.statements_per_item = statements / RUN_ITEMS
            log(
                f"  {result.run_items_per_s:,.0f} items/s, "
                f"{result.statements_per_item:.2f} statements per item"
            )
            if ceilings:
                await _measure_ceiling_logged(result, url, prefix)
                if result.ceiling_ratio is not None:
                    log(f"  the run reached {result.ceiling_ratio:.2f} of the ceiling")

            for size, batch_id in ((STATUS_SIZES[0], small), (STATUS_SIZES[1], big)):
                result.status_ms[size] = await _median_status_ms(runner, batch_id)
                log(f"status() on {size:,} items: median {result.status_ms[size]:.3f} ms")

            rss_batch, rss_size = big, SUBMIT_ITEMS
            if not quick:
                huge, result.huge_submit_s = await _submit_logged(runner, HUGE, "status and memory")
                result.status_ms[HUGE] = await _median_status_ms(runner, huge)
                log(f"status() on {HUGE:,} items: median {result.status_ms[HUGE]:.3f} ms")
                rss_batch, rss_size = huge, HUGE

        log(f"running the {rss_size:,}-item batch for {rss_seconds:g} s in a fresh interpreter")
        result.rss = _rss_child(dialect, url, prefix, rss_batch, rss_seconds)
        result.rss["batch_size"] = rss_size
        log(
            f"  {result.rss['done']:,} items done; RSS {_rss_cell(result.rss)} MB "
            f"(start → after 1 s → end, peak); cancel: {_cancel_cell(result.rss)}"
        )
    finally:
        await _drop(dialect, url, prefix)
        log(f"dropped {prefix}*")
    return result


async def _drop(dialect: str, url: str, prefix: str) -> None:
    if dialect == "redis":
        from redis.asyncio import Redis

        client = Redis.from_url(url)
        try:
            async for key in client.scan_iter(match=f"{prefix}:*", count=1_000):
                await client.unlink(key)
        finally:
            await client.aclose()
        return
    from batchkit.storage.sql import SQLStorage

    # Through the storage, which reads the URL's own options (?pooler=, ?schema=...).
    async with SQLStorage(url, table_prefix=prefix) as storage, storage.engine.begin() as conn:
        await conn.run_sync(storage.metadata.drop_all, checkfirst=True)


def _rss_child(
    dialect: str, url: str, prefix: str, batch_id: str, seconds: float
) -> dict[str, Any]:
    """Run the memory measurement in a fresh interpreter; bound the wait for its cancel."""
    child = subprocess.Popen(
        [sys.executable, __file__, "--rss-child", dialect, url, prefix, batch_id, str(seconds)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        out, err = child.communicate(timeout=seconds + CANCEL_BOUND_S + 30)
    except subprocess.TimeoutExpired:
        child.kill()
        out, err = child.communicate()
    lines = out.splitlines()
    if not lines:
        raise RuntimeError(f"the memory run failed:\n{err}")
    # The first line is written when the time is up, the second once the cancelled run
    # has put its item back; a cancel that hangs is reported, not waited for.
    result: dict[str, Any] = json.loads(lines[0])
    result["cancel_s"] = json.loads(lines[1])["cancel_s"] if len(lines) > 1 else None
    if result["cancel_s"] is None:
        warnings = sorted({line for line in err.splitlines() if line.strip()})
        result["cancel_error"] = "; ".join(warnings[-3:]) or f"exit status {child.returncode}"
    return result


def _proc_status_mb(field_name: str) -> float | None:
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith(field_name + ":"):
                    return int(line.split()[1]) / 1024  # kB
    except OSError:
        pass
    return None


def _current_rss_mb() -> float:
    current = _proc_status_mb("VmRSS")
    return _peak_rss_mb() if current is None else current


def _peak_rss_mb() -> float:
    # VmHWM starts afresh in a new program; ru_maxrss may keep the parent's peak on Linux.
    peak = _proc_status_mb("VmHWM")
    if peak is not None:
        return peak
    usage = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return usage / (1024 * 1024) if sys.platform == "darwin" else usage / 1024


async def rss_child(dialect: str, url: str, prefix: str, batch_id: str, seconds: float) -> None:
    """Run ``batch_id`` for ``seconds`` and print what the memory did, then cancel the run.

    Prints two JSON lines: the measurements when the time is up, and how long the
    cancelled ``run()`` took to return.
    """
    done = 0
    cancelled_at = 0.0

    async def counting(ctx: ItemContext) -> None:
        nonlocal done
        done += 1

    async with _open(dialect, url, prefix, create=False) as storage:
        runner = BatchRunner(storage, counting)
        await runner.status(batch_id)  # connections and statement caches warm
        start_mb = _current_rss_mb()
        samples: list[float] = []

        async def measure(scope: anyio.CancelScope) -> None:
            for _ in range(max(1, round(seconds))):
                await anyio.sleep(seconds / max(1, round(seconds)))
                samples.append(_current_rss_mb())
            report = {
                "seconds": seconds,
                "done": done,
                "start_mb": start_mb,
                "first_s_mb": samples[0],
                "last_mb": samples[-1],
                "peak_mb": _peak_rss_mb(),
            }
            print(json.dumps(report), flush=True)
            nonlocal cancelled_at
            cancelled_at = time.perf_counter()
            scope.cancel()

        async with anyio.create_task_group() as tg:
            tg.start_soon(measure, tg.cancel_scope)
            await runner.run(batch_id)
        # run() returns once its item is back in the queue; a status read must follow.
        with anyio.fail_after(CANCEL_BOUND_S):
            await runner.status(batch_id)
        print(json.dumps({"cancel_s": time.perf_counter() - cancelled_at}), flush=True)


def _rss_cell(rss: dict[str, Any]) -> str:
    return (
        f"{rss['start_mb']:.0f} → {rss['first_s_mb']:.0f} → {rss['last_mb']:.0f} "
        f"({rss['peak_mb']:.0f})"
    )


def _cancel_cell(rss: dict[str, Any]) -> str:
    if rss["cancel_s"] is None:
        return f"not within {CANCEL_BOUND_S} s"
    return f"{rss['cancel_s']:.2f}"


def _fmt(value: float | None, spec: str) -> str:
    return "—" if value is None else format(value, spec)


def report(results: list[DialectResult], *, quick: bool) -> str:
    """The Markdown table of all dialects, and the targets met or missed."""
    measured = [r for r in results if r.skipped is None]
    if not measured:
        return "\n".join(f"{r.dialect} skipped: {r.skipped}" for r in results)
    lines = [
        f"batchkit {batchkit.__version__}, Python {platform.python_version()}, "
        f"{platform.system()} {platform.machine()}, {os.cpu_count()} CPUs; no-op async "
        "generator, items with a JSON payload",
        "",
    ]
    lines.append("| | " + " | ".join(r.dialect for r in measured) + " |")
    lines.append("| --- |" + " ---: |" * len(measured))

    def row(name: str, cells: list[str]) -> None:
        lines.append(f"| {name} | " + " | ".join(cells) + " |")

    row("server", [r.server for r in measured])
    row(f"submit {SUBMIT_ITEMS:,} items (s)", [f"{r.submit_s:.2f}" for r in measured])
    row(
        f"sequential run of {RUN_ITEMS:,} items (items/s)",
        [f"{r.run_items_per_s:,.0f}" for r in measured],
    )
    if any(r.ceiling is not None for r in measured):
        row(
            "the same over one connection's ceiling (below)",
            [_fmt(r.ceiling_ratio, ".2f") for r in measured],
        )
    row(
        "statements (Redis: script calls) per item",
        [f"{r.statements_per_item:.2f}{r.statements_note}" for r in measured],
    )
    for size in STATUS_SIZES:
        if quick and size == HUGE:
            continue
        row(
            f"`status()` on {size:,} items, median (ms)",
            [_fmt(r.status_ms.get(size), ".2f") for r in measured],
        )
    if not quick:
        row(f"submit {HUGE:,} items (s)", [_fmt(r.huge_submit_s, ".1f") for r in measured])
    rss_seconds = measured[0].rss["seconds"]
    size = f"{measured[0].rss['batch_size']:,}"
    row(
        f"runner on a {size}-item batch for {rss_seconds:g} s: items done",
        [f"{r.rss['done']:,}" for r in measured],
    )
    row("runner RSS (MB): start → after 1 s → end (peak)", [_rss_cell(r.rss) for r in measured])
    row("`run()` returned after its cancel (s)", [_cancel_cell(r.rss) for r in measured])
    for r in results:
        if r.skipped is not None:
            lines.append(f"\n{r.dialect} skipped: {r.skipped}")
        elif r.rss.get("cancel_error"):
            lines.append(f"\n{r.dialect}: the cancelled run hung: {r.rss['cancel_error']}")
    ceilings = _ceilings_table(measured, with_runs=True)
    if ceilings:
        lines.extend(["", *ceilings])
    lines.append("")
    lines.extend(_targets(results))
    return "\n".join(lines)


def _ceilings_table(results: list[DialectResult], *, with_runs: bool) -> list[str]:
    """The ceilings measured, one row per store; with ``with_runs``, beside the sequential
    run's items per second and the ratio of the two. Empty when none was attempted."""
    tried = [r for r in results if r.ceiling is not None or r.ceiling_error is not None]
    if not tried:
        return []
    lines = [
        "One connection's ceiling on each store, measured in this run: a sequential run "
        "waits for each item's round trips and commit, so it cannot go faster than this.",
        "",
    ]
    if with_runs:
        lines.append(
            f"| store | sequential run of {RUN_ITEMS:,} items (items/s) | ceiling (ops/s) "
            "| ceiling measured as | items/s over ceiling |"
        )
        lines.append("| --- | ---: | ---: | --- | ---: |")
    else:
        lines.append("| store | server | ceiling (ops/s) | ceiling measured as |")
        lines.append("| --- | --- | ---: | --- |")
    notes: list[str] = []
    for r in tried:
        name = NAMES[r.dialect]
        ceiling = r.ceiling
        ops = "—" if ceiling is None else f"{ceiling.ops_per_s:,.0f}"
        what = "not measured (below)" if ceiling is None else ceiling.what
        if with_runs:
            lines.append(
                f"| {name} | {r.run_items_per_s:,.0f} | {ops} | {what} "
                f"| {_fmt(r.ceiling_ratio, '.2f')} |"
            )
        else:
            lines.append(f"| {name} | {r.server or '—'} | {ops} | {what} |")
        if r.ceiling_error is not None:
            notes.append(f"{r.dialect} ceiling not measured: {r.ceiling_error}")
    return [*lines, *("\n" + note for note in notes)]


def report_ceilings(results: list[DialectResult]) -> str:
    """The Markdown table of the ceilings alone (``--ceilings-only``)."""
    lines = [
        f"Python {platform.python_version()}, {platform.system()} {platform.machine()}, "
        f"{os.cpu_count()} CPUs",
        "",
        *_ceilings_table(results, with_runs=False),
    ]
    lines.extend(f"\n{r.dialect} skipped: {r.skipped}" for r in results if r.skipped is not None)
    return "\n".join(lines)


def _targets(results: list[DialectResult]) -> list[str]:
    found = {r.dialect: r for r in results if r.skipped is None}
    checks: list[str] = []

    def check(name: str, ok: bool, got: str) -> None:
        checks.append(f"- {name}: {'met' if ok else 'MISSED'} ({got})")

    pg = found.get("postgres")
    if pg is not None:
        check(
            f"PostgreSQL submit {SUBMIT_ITEMS:,} < {TARGET_PG_SUBMIT_S:g} s",
            pg.submit_s < TARGET_PG_SUBMIT_S,
            f"{pg.submit_s:.2f} s",
        )
        check(
            f"PostgreSQL sequential >= {TARGET_ITEMS_PER_SECOND:,} items/s",
            pg.run_items_per_s >= TARGET_ITEMS_PER_SECOND,
            f"{pg.run_items_per_s:,.0f}",
        )
        if HUGE in pg.status_ms:
            check(
                f"PostgreSQL status at {HUGE:,} items < {TARGET_PG_STATUS_MS:g} ms",
                pg.status_ms[HUGE] < TARGET_PG_STATUS_MS,
                f"{pg.status_ms[HUGE]:.2f} ms",
            )
    lite = found.get("sqlite")
    if lite is not None:
        check(
            f"SQLite sequential >= {TARGET_ITEMS_PER_SECOND:,} items/s",
            lite.run_items_per_s >= TARGET_ITEMS_PER_SECOND,
            f"{lite.run_items_per_s:,.0f}",
        )
    red = found.get("redis")
    if red is not None:
        check(
            f"Redis submit {SUBMIT_ITEMS:,} < {TARGET_REDIS_SUBMIT_S:g} s",
            red.submit_s < TARGET_REDIS_SUBMIT_S,
            f"{red.submit_s:.2f} s",
        )
        check(
            f"Redis sequential >= {TARGET_REDIS_ITEMS_PER_SECOND:,} items/s",
            red.run_items_per_s >= TARGET_REDIS_ITEMS_PER_SECOND,
            f"{red.run_items_per_s:,.0f}",
        )
        if HUGE in red.status_ms:
            check(
                f"Redis status at {HUGE:,} items < {TARGET_REDIS_STATUS_MS:g} ms",
                red.status_ms[HUGE] < TARGET_REDIS_STATUS_MS,
                f"{red.status_ms[HUGE]:.2f} ms",
            )
    return ["Targets:", *checks] if checks else []


async def _main(
    dialects: list[str], quick: bool, rss_seconds: float, ceilings: str
) -> list[DialectResult]:
    """Measure each dialect; ``ceilings`` is "with", "without" or "only"."""
    results: list[DialectResult] = []
    workdir = tempfile.mkdtemp(prefix="batchkit-bench-")
    try:
        for dialect in dialects:
            url = _url_for(dialect, workdir)
            if dialect != "sqlite":
                why = _reachable(url)
                if why is not None:
                    log(f"{dialect} skipped: {why}")
                    results.append(DialectResult(dialect=dialect, skipped=why))
                    continue
            if ceilings == "only":
                result = DialectResult(dialect=dialect)
                await _measure_ceiling_logged(result, url, f"bench{secrets.token_hex(3)}_")
                results.append(result)
                continue
            results.append(
                await measure_dialect(
                    dialect,
                    url,
                    quick=quick,
                    rss_seconds=rss_seconds,
                    ceilings=ceilings == "with",
                )
            )
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return results


def main(argv: list[str] | None = None) -> int:
    """Measure every dialect asked for and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else None)
    parser.add_argument(
        "--dialects",
        default=",".join(DIALECTS),
        help=f"comma-separated, from {', '.join(DIALECTS)} (all by default)",
    )
    parser.add_argument(
        "--quick", action="store_true", help="skip the 1,000,000-item batch (minutes per dialect)"
    )
    parser.add_argument(
        "--rss-seconds", type=float, default=10.0, help="how long the memory run lasts (10)"
    )
    which = parser.add_mutually_exclusive_group()
    which.add_argument(
        "--ceilings-only",
        action="store_true",
        help="measure only each store's one-connection ceiling (a few seconds per store)",
    )
    which.add_argument(
        "--no-ceilings", action="store_true", help="skip the ceilings and the ratios to them"
    )
    parser.add_argument(
        "--group-commit",
        type=float,
        default=None,
        metavar="SECONDS",
        help="the runner's group_commit (0: each outcome alone); the library's default if "
        "not given",
    )
    parser.add_argument("--rss-child", nargs=5, help=argparse.SUPPRESS)  # internal
    args = parser.parse_args(argv)
    if args.group_commit is not None:
        RUNNER_OPTIONS["group_commit"] = args.group_commit

    if args.rss_child is not None:
        dialect, url, prefix, batch_id, seconds = args.rss_child
        anyio.run(rss_child, dialect, url, prefix, batch_id, float(seconds))
        return 0

    dialects = [d.strip() for d in args.dialects.split(",") if d.strip()]
    unknown = sorted(set(dialects) - set(DIALECTS))
    if unknown or not dialects:
        parser.error(f"--dialects takes {', '.join(DIALECTS)}; got {args.dialects!r}")
    if args.rss_seconds <= 0:
        parser.error("--rss-seconds must be positive")
    ceilings = "only" if args.ceilings_only else "without" if args.no_ceilings else "with"
    results = anyio.run(_main, dialects, args.quick, args.rss_seconds, ceilings)
    print(report_ceilings(results) if args.ceilings_only else report(results, quick=args.quick))
    return 0


if __name__ == "__main__":
    sys.exit(main())
