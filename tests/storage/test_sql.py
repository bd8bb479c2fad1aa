"""SQLStorage beyond the contract: statement cost, faults, many processes, plans, schema."""

from __future__ import annotations

import json
import logging
import re
import secrets
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from contextlib import ExitStack, aclosing, asynccontextmanager
from dataclasses import dataclass, field, replace
from itertools import pairwise
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio
import anyio.lowlevel
import asyncpg
import pytest
from anyio.streams.buffered import BufferedByteReceiveStream
from sqlalchemy import event, func, inspect, select, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import create_async_engine

from batchkit import BatchRunner, BatchState, ItemSpec, ItemState, open_storage
from batchkit.exceptions import (
    BatchNotFound,
    InvalidStorageURL,
    SchemaVersionMismatch,
    StorageError,
)
from batchkit.protocols import BatchInfo, ClaimRequest, Outcome
from batchkit.status import item_from_record, recount, status_from_record
from batchkit.storage.sql import SCHEMA_VERSION, SQLStorage, _aiosqlite_fast, _mysql, metadata_for
from batchkit.storage.sql._faults import (
    broken_driver_connection,
    is_broken_connection,
    is_driver_error,
)
from batchkit.storage.sql._listen import AGAIN_AFTER, QUIET_FOR
from batchkit.storage.sql._postgres import PostgresDialect
from batchkit.testing.contract import all_items, new_batch

from .conftest import MYSQL_URL, POSTGRES_URL, _drop_tables, require_server

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Callable, Iterator

    from anyio.abc import Process

    from batchkit import BatchStatus, Item, ItemContext
    from batchkit.protocols import Storage

pytestmark = pytest.mark.anyio

RUNNER_PROCESS = Path(__file__).with_name("_runner_process.py")


# -- databases -----------------------------------------------------------------------------


@dataclass
class Database:
    """One database under test; every table prefix it hands out is dropped after the test."""

    name: str
    url: str
    prefixes: list[str] = field(default_factory=list)

    def new_prefix(self) -> str:
        prefix = f"t{secrets.token_hex(4)}_"
        self.prefixes.append(prefix)
        return prefix

    def storage(self, prefix: str | None = None, **options: Any) -> SQLStorage:
        return SQLStorage(self.url, table_prefix=prefix or self.new_prefix(), **options)


def _database(name: str, url: str) -> Iterator[Database]:
    db = Database(name, url)
    yield db
    if db.prefixes:
        anyio.run(_drop_tables, url, db.prefixes)


@pytest.fixture
def sqlite_db(tmp_path: Path) -> Iterator[Database]:
    yield from _database("sqlite", f"sqlite+aiosqlite:///{tmp_path / 'batchkit.db'}")


@pytest.fixture
def postgres_db() -> Iterator[Database]:
    require_server(POSTGRES_URL, "PostgreSQL")
    yield from _database("postgres", POSTGRES_URL)


@pytest.fixture
def mysql_db() -> Iterator[Database]:
    require_server(MYSQL_URL, "MariaDB/MySQL")
    yield from _database("mysql", MYSQL_URL)


@pytest.fixture(params=["sqlite", "postgres", "mysql"])
def db(request: pytest.FixtureRequest) -> Database:
    database: Database = request.getfixturevalue(f"{request.param}_db")
    return database


@asynccontextmanager
async def counting(storage: SQLStorage, *, calls: bool = False) -> AsyncIterator[list[str]]:
    """The SQL statements run for ``storage`` while the block runs.

    On SQLite, every statement SQLite runs, traced by SQLite itself whichever way it reaches
    it (BEGIN and COMMIT included, an executemany once per row). On the servers, or with
    ``calls``, each execute call SQLAlchemy sends (an executemany once), and each the
    storage sends to the driver directly (asyncpg's calls; on SQLite, those made in the
    driver's thread).
    """
    statements: list[str] = []
    sync_engine = storage.engine.sync_engine
    # Connections the storage keeps between steps were checked out before the counting
    # began: give them back, so that every connection used from now on is seen.
    await storage._dialect.release()

    def record(sql: str) -> None:
        statements.append(" ".join(sql.split()))

    if storage.engine.dialect.name == "postgresql":
        import asyncpg

        # What the storage sends to asyncpg itself, past SQLAlchemy (its lanes' calls).
        originals = {
            name: getattr(asyncpg.Connection, name) for name in ("fetch", "fetchrow", "execute")
        }

        def direct(call: Any) -> Any:
            async def sent(self: Any, query: str, *args: Any, **kwargs: Any) -> Any:
                record(query)
                return await call(self, query, *args, **kwargs)

            return sent

        copy = asyncpg.Connection.copy_records_to_table

        async def copied(self: Any, table_name: str, **kwargs: Any) -> Any:
            record(f"COPY {table_name}")
            return await copy(self, table_name, **kwargs)

        for name, call in originals.items():
            setattr(asyncpg.Connection, name, direct(call))
        asyncpg.Connection.copy_records_to_table = copied  # type: ignore[method-assign]
        try:
            async with _sent_by_sqlalchemy(sync_engine, record):
                yield statements
        finally:
            for name, call in originals.items():
                setattr(asyncpg.Connection, name, call)
            asyncpg.Connection.copy_records_to_table = copy  # type: ignore[method-assign]
        return

    if storage.engine.dialect.name == "sqlite" and not calls:

        def trace(dbapi_connection: Any, connection_record: Any) -> None:
            dbapi_connection.run_async(lambda driver: driver.set_trace_callback(record))

        event.listen(sync_engine, "connect", trace)
        await storage.engine.dispose()  # from now on, every connection is a traced one
        try:
            yield statements
        finally:
            event.remove(sync_engine, "connect", trace)
        return

    if storage.engine.dialect.name == "sqlite":
        # The calls made in the driver's thread, each transaction whole (see `_sqlite`).
        run_in_thread = _aiosqlite_fast.run_in_thread

        async def traced(driver: Any, fn: Callable[..., Any], *args: Any) -> Any:
            return await run_in_thread(driver, lambda db, *a: fn(_Recorded(db, record), *a), *args)

        _aiosqlite_fast.run_in_thread = traced  # type: ignore[assignment]
        try:
            async with _sent_by_sqlalchemy(sync_engine, record):
                yield statements
        finally:
            _aiosqlite_fast.run_in_thread = run_in_thread  # type: ignore[assignment]
        return

    if storage.engine.dialect.driver == "asyncmy":
        # What the storage sends to asyncmy itself, past SQLAlchemy (its lanes' calls).
        execute, executemany = _mysql._execute, _mysql._executemany

        async def sent(cursor: Any, sql: str, args: Any) -> None:
            record(sql)
            await execute(cursor, sql, args)

        async def sent_many(cursor: Any, sql: str, rows: Any) -> None:
            record(sql)
            await executemany(cursor, sql, rows)

        _mysql._execute, _mysql._executemany = sent, sent_many  # type: ignore[assignment]
        try:
            async with _sent_by_sqlalchemy(sync_engine, record):
                yield statements
        finally:
            _mysql._execute, _mysql._executemany = execute, executemany  # type: ignore[assignment]
        return

    async with _sent_by_sqlalchemy(sync_engine, record):
        yield statements


class _Recorded:
    """A sqlite3 connection whose execute calls are recorded (an executemany once)."""

    def __init__(self, db: Any, record: Callable[[str], None]) -> None:
        self._db = db
        self._record = record

    def execute(self, sql: str, *args: Any) -> Any:
        self._record(sql)
        return self._db.execute(sql, *args)

    def executemany(self, sql: str, rows: Any) -> Any:
        self._record(sql)
        return self._db.executemany(sql, rows)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._db, name)


@asynccontextmanager
async def _sent_by_sqlalchemy(
    sync_engine: Any, record: Callable[[str], None]
) -> AsyncIterator[None]:
    def sent(conn: Any, cursor: Any, sql: str, parameters: Any, context: Any, many: bool) -> None:
        record(sql)

    event.listen(sync_engine, "before_cursor_execute", sent)
    try:
        yield
    finally:
        event.remove(sync_engine, "before_cursor_execute", sent)


async def _noop(ctx: ItemContext) -> None:
    return None


def _check_accounting(status: BatchStatus, items: list[Item]) -> None:
    """The stored counters equal a recount of the items, and sum to the total."""
    assert status.counts == recount(item.state for item in items)
    assert status.total == len(items) == sum(status.counts.values())


# -- 1. statements per item ----------------------------------------------------------------

#: Statements sent to run a 100-item batch with a generator that does nothing, from the
#: first claim to the final status (measured, then pinned: a change that adds round trips
#: to the hot path fails here). SQLite and MySQL/MariaDB, per item: the finish's UPDATE,
#: the next claim's SELECT (FOR UPDATE SKIP LOCKED on MySQL/MariaDB) and UPDATE, and one
#: UPDATE of the batch's counters for both (`Owed`); SQLite adds each transaction's BEGIN
#: IMMEDIATE and COMMIT (in process: no round trip). PostgreSQL finishes an item and claims
#: the next in one statement.
RUN_100_CEILING = {"sqlite": 609, "postgres": 105, "mysql": 404}


#: The same run with group commit (the default): up to 16 successes and the next claims in
#: one transaction; on PostgreSQL one statement (the first item and the last group aside).
#: Measured: SQLite 146, PostgreSQL 11, MariaDB 128; the margin is for a slower machine,
#: where an item takes longer and a group holds fewer.
RUN_100_GROUPED_CEILING = {"sqlite": 250, "postgres": 30, "mysql": 220}


@pytest.mark.parametrize("grouped", [False, True], ids=["alone", "grouped"])
async def test_statements_per_item_are_pinned(db: Database, grouped: bool) -> None:
    async with db.storage() as storage:
        runner = BatchRunner(storage, _noop, group_commit=0.005 if grouped else 0)
        batch = await runner.submit([f"item-{n}" for n in range(100)])
        async with counting(storage) as statements:
            final = await runner.run(batch.id)
        assert final.state is BatchState.COMPLETED
        assert final.counts[ItemState.SUCCEEDED] == 100
        kinds = Counter(s.split()[0].upper() for s in statements)
        ceiling = (RUN_100_GROUPED_CEILING if grouped else RUN_100_CEILING)[db.name]
        assert len(statements) <= ceiling, kinds


async def test_a_run_that_fails_nothing_rolls_nothing_back(
    db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every transaction ends in its COMMIT, and its connection goes back to the pool as it
    is: a ROLLBACK on the way back would cost a round trip per transaction (and, on a
    connection the server dropped meanwhile, an ERROR in the host's log)."""
    prefix = db.new_prefix()
    async with db.storage(prefix) as storage:
        runner = BatchRunner(storage, _noop)
        batch = await runner.submit([f"item-{n}" for n in range(50)])
        rollbacks = 0
        do_rollback = storage.engine.dialect.do_rollback

        def counted(dbapi_connection: Any) -> None:
            nonlocal rollbacks
            rollbacks += 1
            do_rollback(dbapi_connection)

        monkeypatch.setattr(storage.engine.dialect, "do_rollback", counted)
        final = await runner.run(batch.id)
        await runner.items(batch.id, state=ItemState.FAILED)
        await storage.claim(ClaimRequest(lease_seconds=60, batch_ids=(batch.id,)))  # none left
        monkeypatch.undo()
    assert final.counts[ItemState.SUCCEEDED] == 50
    assert rollbacks == 0
    # A host that wants the pool's own reset back asks for it.
    # (Its connections go back to the pool when they are used, or, kept for the hot path,
    # when the storage closes.)
    async with db.storage(prefix, engine_options={"pool_reset_on_return": "rollback"}) as storage:
        monkeypatch.setattr(storage.engine.dialect, "do_rollback", counted)
        await BatchRunner(storage, _noop).status(batch.id)
    monkeypatch.undo()
    assert rollbacks >= 1


@pytest.mark.parametrize("grouped", [False, True], ids=["alone", "grouped"])
async def test_sqlite_runs_each_transaction_in_one_call_to_its_thread(
    sqlite_db: Database, monkeypatch: pytest.MonkeyPatch, grouped: bool
) -> None:
    """aiosqlite runs everything in a thread of its own; each call there costs a thread
    switch both ways, more than SQLite's own work on a small transaction. The runner's
    steady state (finish an item, claim the next) is ONE such call; grouped, one call
    writes up to 16 items."""
    import aiosqlite

    calls = 0
    execute = aiosqlite.Connection._execute

    async def counted(self: Any, fn: Any, *args: Any, **kwargs: Any) -> Any:
        nonlocal calls
        calls += 1
        return await execute(self, fn, *args, **kwargs)

    async with sqlite_db.storage() as storage:
        runner = BatchRunner(storage, _noop, group_commit=0.005 if grouped else 0)
        monkeypatch.setattr(aiosqlite.Connection, "_execute", counted)
        used = []
        for size in (10, 100, 300):  # the first one opens the connections
            batch = await runner.submit([f"item-{n}" for n in range(size)])
            calls = 0
            final = await runner.run(batch.id)
            assert final.counts[ItemState.SUCCEEDED] == size
            used.append(calls)
        monkeypatch.undo()
    # The reads around a run (the batch's metadata, its final status) cost the same
    # whatever the size; each further item costs exactly one call, or a group's share.
    if grouped:
        assert used[2] - used[1] <= 200 // 8, used
    else:
        assert used[2] - used[1] == 200, used


#: Statements of one progress write, BEGIN and COMMIT aside: PostgreSQL and SQLite update
#: the item and read its cancel flag in one UPDATE ... RETURNING; MySQL/MariaDB have no
#: UPDATE ... RETURNING and read the flag with a second statement.
PROGRESS_STATEMENTS = {"sqlite": 1, "postgres": 1, "mysql": 2}


async def test_statements_of_a_progress_write(db: Database) -> None:
    async with db.storage() as storage:
        record, _ = await storage.create_batch(new_batch(1))
        claim = await storage.claim(ClaimRequest(lease_seconds=60, batch_ids=(record.id,)))
        assert claim is not None
        async with counting(storage) as statements:
            status = await storage.record_progress(claim.lease, 0.5, "half", lease_seconds=60)
        assert status.held
        assert not status.cancel_requested
        work = [
            s for s in statements if s.split()[0].upper().rstrip(";") not in ("BEGIN", "COMMIT")
        ]
        assert len(work) == PROGRESS_STATEMENTS[db.name], work
        if db.name == "postgres":  # one statement, in autocommit: one round trip
            assert statements == work, statements
        assert work[0].upper().startswith("UPDATE")
        if db.name != "mysql":
            assert " RETURNING " in work[0].upper()
        item = await storage.get_item(record.id, "item-0")
        assert (item.progress, item.message) == (0.5, "half")


async def test_creating_a_batch_costs_statements_per_chunk_not_per_item(db: Database) -> None:
    chunk_size = 1_000
    async with db.storage(chunk_size=chunk_size) as storage:
        async with counting(storage, calls=True) as statements:
            record, created = await storage.create_batch(new_batch(5_000))
        assert created
        assert record.total == 5_000
        items_table = storage.tables.items.name
        inserts = [s for s in statements if s.startswith(f"INSERT INTO {items_table} ")]
        copies = [s for s in statements if s == f"COPY {items_table}"]
        writes = 5_000 // chunk_size
        if db.name == "postgres":  # asyncpg streams each chunk in a binary COPY
            assert (len(inserts), len(copies)) == (0, writes), statements
        else:
            assert (len(inserts), len(copies)) == (writes, 0), statements
        # The batch row, the BEGIN and COMMIT, the announcement of new work and the record
        # read back: a constant.
        assert len(statements) <= writes + 5, statements
        assert len(await all_items(storage, record.id, page=1_000)) == 5_000


# -- 2. transient faults -------------------------------------------------------------------


class _RetryCounter(logging.Handler):
    """Counts an adapter's "transient ... fault, retrying" warnings: each is a step hit by
    a fault (a SQL transaction, a Redis call)."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.count = 0

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if message.startswith("transient ") and message.endswith("fault, retrying"):
            self.count += 1


async def _run_while_killing(
    storage: Storage,
    kill: Callable[[], Awaitable[int]],
    *,
    logger_name: str = "batchkit.storage.sql",
    needs_retry: bool = True,
) -> None:
    """Run a 300-item batch while ``kill`` drops the storage's connections now and then.

    ``kill`` returns how many faults it caused. With ``needs_retry``, it keeps going until
    the storage has retried a few steps, and at least one retry is required; without, it
    causes a few faults that need no retry (a Redis ``SCRIPT FLUSH``).

    The batch must end with every item succeeded exactly once in the store, each item's
    generator having run at least once, and more than once only for an item claimed again
    (its attempt > 1). The lease is short because a connection dropped while a claim
    commits leaves the item running under a lease nobody holds (the commit landed, the
    answer did not): it runs again once the lease lapses.
    """
    calls: Counter[str] = Counter()

    async def generate(ctx: ItemContext) -> dict[str, str]:
        calls[ctx.key] += 1
        await anyio.sleep(0.002)
        return {"key": ctx.key}

    runner = BatchRunner(storage, generate, lease_seconds=1.0, poll_interval=0.2)
    keys = [f"item-{n}" for n in range(300)]
    batch = await runner.submit(keys)
    retries = _RetryCounter()
    logger = logging.getLogger(logger_name)
    logger.addHandler(retries)
    killed = 0
    try:
        async with anyio.create_task_group() as tg:

            async def killer() -> None:
                nonlocal killed
                # Until a few steps have been hit and retried.
                while (retries.count < 3 if needs_retry else killed < 5) and killed < 12:
                    await anyio.sleep(0.05)
                    killed += await kill()

            tg.start_soon(killer)
            final = await runner.run(batch.id)
            tg.cancel_scope.cancel()
    finally:
        logger.removeHandler(retries)
    assert killed >= 1
    if needs_retry:
        assert retries.count >= 1, "no step was hit: the test proved nothing"
    assert final.state is BatchState.COMPLETED
    items = await all_items(storage, batch.id, page=1_000)
    assert [item.key for item in items] == keys
    for item in items:
        assert item.state is ItemState.SUCCEEDED
        assert item.result == {"key": item.key}
        assert 1 <= calls[item.key] <= item.attempt, (item.key, calls[item.key], item.attempt)
    _check_accounting(await runner.status(batch.id), items)
    assert final.counts[ItemState.SUCCEEDED] == len(keys)


async def test_postgres_connections_killed_during_a_run_are_retried(
    postgres_db: Database,
) -> None:
    app = f"bk-fault-{secrets.token_hex(4)}"
    storage = postgres_db.storage(
        engine_options={"connect_args": {"server_settings": {"application_name": app}}}
    )
    admin = create_async_engine(postgres_db.url, isolation_level="AUTOCOMMIT")
    terminate = text(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
        "WHERE datname = current_database() AND pid <> pg_backend_pid() "
        "AND application_name = :app"
    )

    async def kill() -> int:
        async with admin.connect() as conn:
            return sum(
                1 for done in (await conn.execute(terminate, {"app": app})).scalars() if done
            )

    try:
        async with storage:
            await _run_while_killing(storage, kill)
    finally:
        await admin.dispose()


async def test_postgres_kept_connection_killed_between_steps_is_replaced(
    postgres_db: Database,
) -> None:
    """The connection kept for the finish-and-claim step dies while idle: the next step
    notices, drops it from the pool and runs again on a fresh one, losing nothing."""
    app = f"bk-lane-{secrets.token_hex(4)}"
    storage = postgres_db.storage(
        engine_options={"connect_args": {"server_settings": {"application_name": app}}}
    )
    admin = create_async_engine(postgres_db.url, isolation_level="AUTOCOMMIT")
    retries = _RetryCounter()
    logger = logging.getLogger("batchkit.storage.sql")
    logger.addHandler(retries)
    try:
        async with storage:
            record, _ = await storage.create_batch(new_batch(3))
            request = ClaimRequest(lease_seconds=60, batch_ids=(record.id,))
            first = await storage.claim(request)
            assert first is not None
            done = await storage.finish(first.lease, Outcome.succeeded("1"), then_claim=request)
            assert done.accepted
            assert done.claim is not None
            async with admin.connect() as conn:
                killed = (
                    await conn.execute(
                        text(
                            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                            "WHERE application_name = :app"
                        ),
                        {"app": app},
                    )
                ).scalar()

            assert killed >= 1
            again = await storage.finish(
                done.claim.lease, Outcome.succeeded("2"), then_claim=request
            )
            assert again.accepted
            assert again.claim is not None
            assert again.claim.lease.key == "item-2"
            assert retries.count >= 1, "the killed connection was not used: the test proved nothing"
            last = await storage.finish(again.claim.lease, Outcome.succeeded("3"))
            assert last.accepted
            items = await all_items(storage, record.id)
            assert [item.result for item in items] == [1, 2, 3]
            _check_accounting(status_from_record(await storage.get_batch(record.id)), items)
    finally:
        logger.removeHandler(retries)
        await admin.dispose()


async def test_postgres_connection_killed_during_a_large_submit_is_retried(
    postgres_db: Database,
) -> None:
    """The items stream in by COPY: a connection killed under it rolls the whole batch back,
    and the retry writes it once, completely."""
    app = f"bk-copy-{secrets.token_hex(4)}"
    storage = postgres_db.storage(
        engine_options={"connect_args": {"server_settings": {"application_name": app}}}
    )
    admin = create_async_engine(postgres_db.url, isolation_level="AUTOCOMMIT")
    terminate = text(
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
        "WHERE application_name = :app AND query ILIKE 'COPY%'"
    )
    retries = _RetryCounter()
    logger = logging.getLogger("batchkit.storage.sql")
    logger.addHandler(retries)
    try:
        async with storage, anyio.create_task_group() as tg:

            async def killer() -> None:
                async with admin.connect() as conn:
                    while retries.count == 0:
                        await conn.execute(terminate, {"app": app})
                        await anyio.sleep(0.005)

            tg.start_soon(killer)
            with anyio.fail_after(60):
                record, created = await storage.create_batch(new_batch(200_000))
            tg.cancel_scope.cancel()
            assert created
            assert retries.count >= 1, "no COPY was hit: the test proved nothing"
            assert record.total == 200_000
            items = storage.tables.items
            async with storage.engine.connect() as conn:
                count = (
                    await conn.execute(
                        select(func.count()).select_from(items).where(items.c.batch_id == record.id)
                    )
                ).scalar()
            assert count == 200_000
    finally:
        logger.removeHandler(retries)
        await admin.dispose()


async def _states_are(storage: Any, batch_id: str, states: list[ItemState]) -> None:
    """The batch's items are in ``states``, and its counters agree with them."""
    items = await all_items(storage, batch_id)
    assert [i.state for i in items] == states
    _check_accounting(status_from_record(await storage.get_batch(batch_id)), items)


class LosesReplies(SQLStorage):
    """An SQLStorage whose next ``lose`` write transactions commit, and then lose their
    reply as if the connection had dropped at that moment."""

    lose = 0

    async def _retrying(self, attempt: Callable[[], Awaitable[Any]], *, write: bool) -> Any:
        async def commit_then_drop() -> Any:
            result = await attempt()
            if write and self.lose:
                self.lose -= 1
                raise ConnectionResetError("the connection dropped before the reply came")
            return result

        return await super()._retrying(commit_then_drop, write=write)


async def test_a_claim_or_finish_whose_reply_was_lost_is_not_done_twice(db: Database) -> None:
    async with LosesReplies(db.url, table_prefix=db.new_prefix()) as storage:
        await check_lost_replies(storage)


@pytest.mark.parametrize("key", [None, "order-7"])
async def test_a_submit_whose_reply_was_lost_makes_its_batch_once(
    db: Database, key: str | None
) -> None:
    """The batch was written, and the reply lost: the retry finds it its own (created),
    not a stranger's, and writes nothing twice; a later submit with its key gets it."""
    async with LosesReplies(db.url, table_prefix=db.new_prefix()) as storage:
        storage.lose = 1
        made = new_batch(3, idempotency_key=key)
        record, created = await storage.create_batch(made)
        assert (record.id, created, record.total) == (made.id, True, 3)
        assert [i.key for i in await all_items(storage, made.id)] == [f"item-{n}" for n in range(3)]
        assert [b.id for b in await storage.list_batches()] == [made.id]
        if key is not None:
            again, created = await storage.create_batch(new_batch(5, idempotency_key=key))
            assert (again.id, created, again.total) == (made.id, False, 3)


async def test_a_claim_in_doubt_past_the_retries_is_taken_by_the_next_claim(
    db: Database,
) -> None:
    async with LosesReplies(db.url, table_prefix=db.new_prefix()) as storage:
        await check_claims_in_doubt(storage)


async def check_claims_in_doubt(storage: Any) -> None:
    """A claim, or a finish that claims the next item, lands as the store goes away for
    longer than the retries: the call raises `StorageError` and its claimed item has a
    token nobody knows. The next claim this storage makes hands over that very item,
    instead of leaving it running, with nobody on it, until its lease lapses."""
    record, _ = await storage.create_batch(new_batch(4))
    request = ClaimRequest(batch_ids=(record.id,), lease_seconds=30)
    retries = storage.retries

    async def running() -> int:
        return (await storage.get_batch(record.id)).counts[ItemState.RUNNING]

    async def away_past_the_retries(call: Awaitable[Any]) -> None:
        storage.retries, storage.lose = 0, 1
        try:
            with pytest.raises(StorageError):
                await call
        finally:
            storage.retries, storage.lose = retries, 0

    await away_past_the_retries(storage.claim(request))
    assert await running() == 1  # it did land
    first = await storage.claim(request)
    assert first is not None
    assert (first.position, first.lease.attempt, await running()) == (0, 1, 1)

    # The finish of a patient worker lands with its claim of the next item; the worker
    # writes the outcome again (refused: it is written), then claims.
    await away_past_the_retries(
        storage.finish(first.lease, Outcome.succeeded('"a"'), then_claim=request)
    )
    assert not (await storage.finish(first.lease, Outcome.succeeded('"a"'))).accepted
    second = await storage.claim(request)
    assert second is not None
    assert (second.position, second.lease.attempt, await running()) == (1, 1, 1)
    assert (await storage.finish(second.lease, Outcome.succeeded('"b"'))).accepted

    # A claim of another batch, or filtered by metadata, does not take it.
    await away_past_the_retries(storage.claim(request))
    other, _ = await storage.create_batch(new_batch(1))
    elsewhere = await storage.claim(ClaimRequest(batch_ids=(other.id,), lease_seconds=30))
    assert elsewhere is not None
    assert elsewhere.lease.batch_id == other.id
    third = await storage.claim(ClaimRequest(lease_seconds=30))  # any batch: it may
    assert third is not None
    assert (third.lease.batch_id, third.position, third.lease.attempt) == (record.id, 2, 1)
    assert await running() == 1
    ok, running_, queued = ItemState.SUCCEEDED, ItemState.RUNNING, ItemState.QUEUED
    await _states_are(storage, record.id, [ok, ok, running_, queued])


async def check_lost_replies(storage: Any) -> None:
    """Claims and finishes whose write landed and whose reply was lost (``storage.lose``
    sets how many): the retry neither does them again nor calls them refused."""
    record, _ = await storage.create_batch(new_batch(4))
    request = ClaimRequest(batch_ids=(record.id,), lease_seconds=30)

    async def running() -> int:
        return (await storage.get_batch(record.id)).counts[ItemState.RUNNING]

    storage.lose = 1
    first = await storage.claim(request)
    # The retry finds the item the lost try claimed, instead of claiming another and
    # leaving the first running, with nobody working on it, for a whole lease.
    assert first is not None
    assert (first.position, first.lease.attempt, await running()) == (0, 1, 1)

    storage.lose = 1
    done = await storage.finish(first.lease, Outcome.succeeded('"a"'), then_claim=request)
    assert done.accepted, "the finish went through: its retry must not be called refused"
    assert done.claim is not None
    assert (done.claim.position, done.claim.lease.attempt, await running()) == (1, 1, 1)

    storage.lose = 1
    alone = await storage.finish(done.claim.lease, Outcome.succeeded('"b"'))
    assert alone.accepted
    assert alone.claim is None
    assert await running() == 0

    # A finish whose lease was really lost is still refused, retry or not.
    third = await storage.claim(request)
    assert third is not None
    storage.lose = 1
    stale = replace(third.lease, attempt=third.lease.attempt + 1, token="not-the-token")
    assert not (await storage.finish(stale, Outcome.succeeded('"c"'))).accepted

    # A claim of any batch's item, too.
    storage.lose = 1
    fourth = await storage.claim(ClaimRequest(lease_seconds=30))
    assert fourth is not None
    assert (fourth.position, await running()) == (3, 2)
    ok, running_ = ItemState.SUCCEEDED, ItemState.RUNNING
    await _states_are(storage, record.id, [ok, ok, running_, running_])

    # A release whose reply was lost, in a batch being cancelled: the item ended
    # cancelled, which is the release landing, not a refusal (alone, and with a claim).
    other, _ = await storage.create_batch(new_batch(3))
    here = ClaimRequest(batch_ids=(other.id,), lease_seconds=30)
    a, b = await storage.claim(here), await storage.claim(here)
    assert a is not None
    assert b is not None
    await storage.cancel_batch(other.id)
    storage.lose = 1
    assert (await storage.finish(a.lease, Outcome.released())).accepted
    storage.lose = 1
    last = await storage.finish(b.lease, Outcome.released(), then_claim=here)
    assert last.accepted
    assert last.claim is None
    gone = ItemState.CANCELLED
    await _states_are(storage, other.id, [gone, gone, gone])

    # The claim of a finished batch's completion hook, its reply lost: the retry hands the
    # batch over, where it found it leased (by its own lost try) and left the hook
    # unfired for a whole lease, or for good under a worker that exits when idle.
    storage.lose = 1
    hook = await storage.claim_finished_batch(lease_seconds=30, batch_id=other.id)
    assert hook is not None, "the hook's claim landed: its retry must hand it over"
    assert hook.record.id == other.id
    assert await storage.ack_finished_batch(other.id, hook.token)
    # The same for a claim of any finished batch's hook (a worker's sweep).
    for claimed in (third, fourth):
        assert (await storage.finish(claimed.lease, Outcome.succeeded('"d"'))).accepted
    storage.lose = 1
    hook = await storage.claim_finished_batch(lease_seconds=30)
    assert hook is not None, "the hook's claim landed: its retry must hand it over"
    assert hook.record.id == record.id
    # Its acknowledgement, its reply lost: the retry is told it landed, not that another
    # runner took the hook over.
    storage.lose = 1
    assert await storage.ack_finished_batch(record.id, hook.token)
    assert storage.lose == 0, "the ack's reply was lost and it was tried again"
    assert await storage.claim_finished_batch(lease_seconds=30) is None
    assert not await storage.ack_finished_batch(other.id, "not-the-token")


class _AsyncpgBusy(Exception):
    """Stands for asyncpg's InternalClientError, which SQLAlchemy lets through unwrapped."""

    __module__ = "asyncpg.exceptions._base"


async def test_a_driver_error_sqlalchemy_does_not_wrap_is_retried_on_a_new_connection(
    db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A transaction whose connection the server dropped can end in asyncpg's own error
    ("another operation is in progress"), past SQLAlchemy's wrapping. It is retried on a
    new connection (the broken one never goes back to the pool), and a driver error that
    cannot pass is a StorageError: no driver exception leaves the storage, which would stop
    a worker."""
    async with db.storage(db.new_prefix()) as storage:
        record, _ = await storage.create_batch(new_batch(2))
        invalidated: list[object] = []
        event.listen(storage.engine.sync_engine, "invalidate", lambda *a: invalidated.append(a))
        do_commit = storage.engine.dialect.do_commit
        errors = [_AsyncpgBusy("cannot switch to state 15; another operation (2) is in progress")]

        def commit(dbapi_connection: Any) -> None:
            if errors:
                raise errors.pop()
            do_commit(dbapi_connection)

        monkeypatch.setattr(storage.engine.dialect, "do_commit", commit)
        # (A listing: it runs a transaction through SQLAlchemy, where a batch's own read
        # goes to the driver directly.)
        assert [b.id for b in await storage.list_batches()] == [record.id]  # retried, read
        assert not errors
        assert len(invalidated) == 1  # the broken connection was dropped, not pooled

        errors.append(_AsyncpgBusy("a driver error that cannot pass"))
        with pytest.raises(StorageError, match="cannot pass") as caught:
            await storage.list_batches()
        assert isinstance(caught.value.__cause__, _AsyncpgBusy)
        # Its connection may still be inside the transaction: dropped too, not pooled.
        assert len(invalidated) == 2
        monkeypatch.undo()
        assert [b.id for b in await storage.list_batches()] == [record.id]


def test_which_driver_errors_leave_a_connection_broken() -> None:
    assert is_broken_connection(
        _AsyncpgBusy("cannot switch to state 12; another operation (2) is in progress")
    )
    assert is_broken_connection(
        _AsyncpgBusy("cannot perform operation: another operation is in progress")
    )
    assert is_broken_connection(ConnectionResetError(104, "Connection reset by peer"))
    assert not is_broken_connection(_AsyncpgBusy("duplicate key value violates unique constraint"))
    assert is_driver_error(_AsyncpgBusy("x"))
    assert is_driver_error(sqlite3.OperationalError("x"))
    assert not is_driver_error(ValueError("x"))
    wrapped = DBAPIError("COMMIT", None, _AsyncpgBusy("another operation (2) is in progress"))
    assert broken_driver_connection(wrapped)
    assert not broken_driver_connection(DBAPIError("COMMIT", None, ValueError("other")))


async def test_a_host_engine_gets_every_connection_back(db: Database) -> None:
    engine = create_async_engine(db.url)

    async def short(ctx: ItemContext) -> None:
        await anyio.sleep(0.001)

    try:
        async with SQLStorage(engine, table_prefix=db.new_prefix()) as storage:
            runner = BatchRunner(storage, short, concurrency=4)
            batch = await runner.submit([f"item-{n}" for n in range(40)])
            final = await runner.run(batch.id)
            assert final.counts[ItemState.SUCCEEDED] == 40
        assert engine.pool.checkedout() == 0  # type: ignore[attr-defined]
    finally:
        await engine.dispose()


async def test_mariadb_connections_killed_during_a_run_are_retried(mysql_db: Database) -> None:
    ids: set[int] = set()

    def remember(dbapi_connection: Any, record: Any) -> None:
        cursor = dbapi_connection.cursor()
        cursor.execute("SELECT CONNECTION_ID()")
        ids.add(int(cursor.fetchone()[0]))
        cursor.close()

    admin = create_async_engine(mysql_db.url, isolation_level="AUTOCOMMIT")

    async def kill() -> int:
        killed = 0
        async with admin.connect() as conn:
            live = set(
                (
                    await conn.execute(text("SELECT ID FROM information_schema.PROCESSLIST"))
                ).scalars()
            )
            for connection_id in sorted(ids & live):
                try:
                    await conn.execute(text(f"KILL CONNECTION {connection_id:d}"))
                    killed += 1
                except DBAPIError:
                    pass  # it closed by itself in the meantime
        return killed

    try:
        async with mysql_db.storage() as storage:
            event.listen(storage.engine.sync_engine, "connect", remember)
            # Reconnect so that every connection of the storage is a known one.
            await storage.engine.dispose()
            await _run_while_killing(storage, kill)
    finally:
        await admin.dispose()


# -- 3. runner processes sharing one batch -------------------------------------------------


async def _run_processes(
    count: int, url: str, prefix: str, batch_id: str, tmp_path: Path
) -> tuple[list[dict[str, Any]], list[Path]]:
    """Run ``count`` runner processes on one batch, started together; their final lines."""
    logs = [tmp_path / f"runner-{n}.jsonl" for n in range(count)]
    command = [sys.executable, str(RUNNER_PROCESS), url, prefix, batch_id]
    processes: list[Process] = []
    with ExitStack() as files:
        try:
            for n, log in enumerate(logs):
                stderr = files.enter_context((tmp_path / f"runner-{n}.err").open("wb"))
                processes.append(
                    await anyio.open_process(
                        [*command, str(log)],
                        stdin=subprocess.PIPE,
                        stdout=subprocess.PIPE,
                        stderr=stderr,
                    )
                )
            outputs = [BufferedByteReceiveStream(p.stdout) for p in processes if p.stdout]
            with anyio.fail_after(60):
                for out in outputs:
                    assert await out.receive_until(b"\n", 1_000) == b"ready"
                for process in processes:
                    assert process.stdin is not None
                    await process.stdin.send(b"go\n")
                finals = [json.loads(await out.receive_until(b"\n", 1_000)) for out in outputs]
                codes = [await process.wait() for process in processes]
        finally:
            for process in processes:
                if process.returncode is None:
                    process.kill()
                await process.aclose()
    errors = [(tmp_path / f"runner-{n}.err").read_text() for n in range(count)]
    assert codes == [0] * count, errors
    return finals, logs


async def test_two_runner_processes_share_one_batch(db: Database, tmp_path: Path) -> None:
    prefix = db.new_prefix()
    keys = [f"item-{n}" for n in range(2_000)]
    async with db.storage(prefix) as storage:
        runner = BatchRunner(storage, _noop)
        batch = await runner.submit(keys)
        finals, logs = await _run_processes(2, db.url, prefix, batch.id, tmp_path)
        await _check_shared_run(storage, batch.id, keys, finals, logs)


async def _check_shared_run(
    storage: Storage, batch_id: str, keys: list[str], finals: list[dict[str, Any]], logs: list[Path]
) -> None:
    """Runner processes shared one batch: each item ran once, never in two at a time, and
    the counts equal a recount."""
    assert [f["state"] for f in finals] == ["completed"] * len(finals)
    runs: dict[str, list[tuple[int, float, float]]] = {}
    for log in logs:
        for line in log.read_text(encoding="utf-8").splitlines():
            entry = json.loads(line)
            runs.setdefault(entry["key"], []).append((entry["pid"], entry["start"], entry["end"]))
    assert set(runs) == set(keys)
    for key, intervals in runs.items():
        intervals.sort(key=lambda run: run[1])
        for (pid_a, _, end_a), (pid_b, start_b, _) in pairwise(intervals):
            assert end_a <= start_b, f"{key} ran in {pid_a} and {pid_b} at the same time"
    # No lease lapsed (30 s), so no item ran twice.
    assert all(len(intervals) == 1 for intervals in runs.values())
    per_process = Counter(intervals[0][0] for intervals in runs.values())
    assert set(per_process) == {f["pid"] for f in finals}, per_process
    assert min(per_process.values()) >= len(keys) // 20, per_process

    items = await all_items(storage, batch_id, page=1_000)
    assert [item.key for item in items] == keys
    for item in items:
        assert item.state is ItemState.SUCCEEDED
        # Ran once (above); an attempt more for each time a runner claimed it ahead and
        # handed it back unrun when an item before it ran past the group's window.
        assert item.attempt >= 1
        assert item.result == {"pid": runs[item.key][0][0]}
    status = await BatchRunner(storage, _noop).status(batch_id)
    assert status.state is BatchState.COMPLETED
    _check_accounting(status, items)


# -- 4. payloads and keys ------------------------------------------------------------------

AWKWARD = [
    "'; DROP TABLE x; --",
    '"; DROP TABLE x; --',
    "%",
    "_",
    "%_%",
    "a%",
    "a_c",
    "\\",
    "\\'",
    "a\\",
    "\\%\\_",
    "it's",
    "O''Brien",
    "`tick`",
    "$1 ? :name %s %(name)s",
    "A",
    "a",
    "a ",
    " a",
    "ü",
    "日本語",
    "🎉 emoji",
    "tab\tline\nreturn\r",
    "zero\u200bwidth",
    "é" * 512,
    "🎉" * 512,
]
LONG_TEXTS = ["x" * 10_000, "é" * 5_000, "🎉" * 2_500, "'; --%_\\" * 1_250]


async def test_keys_and_payloads_round_trip_exactly(db: Database) -> None:
    async def echo(ctx: ItemContext) -> Any:
        return ctx.payload

    payloads: list[Any] = [
        {"text": key, key: [key, LONG_TEXTS[n % len(LONG_TEXTS)]]} for n, key in enumerate(AWKWARD)
    ]
    async with db.storage() as storage:
        runner = BatchRunner(storage, echo)
        batch = await runner.submit(
            [
                ItemSpec(key=key, payload=payload)
                for key, payload in zip(AWKWARD, payloads, strict=True)
            ],
            idempotency_key="'; DROP TABLE x; --",
        )
        await runner.run(batch.id)
        items = await all_items(storage, batch.id)
        assert [item.key for item in items] == AWKWARD
        assert [item.payload for item in items] == payloads
        assert [item.result for item in items] == payloads
        for key, payload in zip(AWKWARD, payloads, strict=True):
            item = item_from_record(await storage.get_item(batch.id, key))
            assert (item.key, item.payload) == (key, payload)
        again = await runner.submit(["other"], idempotency_key="'; DROP TABLE x; --")
        assert again.id == batch.id


async def test_metadata_filters_match_exactly_not_as_patterns(db: Database) -> None:
    async with db.storage() as storage:
        runner = BatchRunner(storage, _noop)
        owners = ["a%", "abc", "a_c", "aXc", "'; DROP TABLE x; --", "\\", "A", "a"]
        ids = {
            owner: (await runner.submit(["k"], metadata={"owner": owner})).id for owner in owners
        }
        for owner in owners:
            found = await runner.batches(metadata={"owner": owner})
            assert [status.batch_id for status in found] == [ids[owner]], owner
            assert found[0].metadata == {"owner": owner}


# -- 5. query plans ------------------------------------------------------------------------

_EXPLAIN = {"sqlite": "EXPLAIN QUERY PLAN ", "postgres": "EXPLAIN ", "mysql": "EXPLAIN "}
_PG_INDEX = re.compile(r"(?:Index Only Scan|Index Scan(?: Backward)?) using (\S+) on (\S+)")
_PG_NO_INDEX = re.compile(r"(?:Seq Scan|Bitmap Heap Scan|Tid Scan|Sample Scan) on (\S+)")
_SQLITE_ACCESS = re.compile(
    r"^(?:SEARCH|SCAN) (\S+)(?: USING (?:COVERING )?INDEX (\S+)| USING (?:INTEGER )?PRIMARY KEY)?"
)


@dataclass
class Plan:
    """A query plan: its text, each table access (table, index or None) and whether it sorts."""

    text: str
    accesses: list[tuple[str, str | None]]
    sorts: bool


def _parse_plan(dialect: str, rows: list[dict[str, Any]]) -> Plan:
    accesses: list[tuple[str, str | None]] = []
    if dialect == "postgres":
        lines = [row["QUERY PLAN"] for row in rows]
        for line in lines:
            if found := _PG_INDEX.search(line):
                accesses.append((found[2], found[1]))
            elif found := _PG_NO_INDEX.search(line):
                accesses.append((found[1], None))
        sorts = any(line.strip(" ->").startswith(("Sort", "Incremental Sort")) for line in lines)
    elif dialect == "sqlite":
        lines = [row["detail"] for row in rows]
        for line in lines:
            if found := _SQLITE_ACCESS.match(line):
                index = found[2] or ("PRIMARY KEY" if "PRIMARY KEY" in line else None)
                accesses.append((found[1], index))
        sorts = any("TEMP B-TREE" in line for line in lines)
    else:
        lines = [" | ".join(f"{k}={v}" for k, v in row.items()) for row in rows]
        accesses = [(row["table"], row["key"]) for row in rows]
        sorts = any("filesort" in (row["Extra"] or "") for row in rows)
    return Plan("\n".join(lines), accesses, sorts)


async def _explain(db: Database, storage: SQLStorage, query: Any, params: dict[str, Any]) -> Plan:
    """The plan of ``query`` exactly as the adapter sends it (same SQL, same parameters)."""
    plans: list[list[dict[str, Any]]] = []

    def rewrite(
        conn: Any, cursor: Any, statement: str, parameters: Any, context: Any, many: bool
    ) -> tuple[str, Any]:
        if context.execution_options.get("explain") and statement.lstrip().startswith("SELECT"):
            statement = _EXPLAIN[db.name] + statement
        return statement, parameters

    def collect(
        conn: Any, cursor: Any, statement: str, parameters: Any, context: Any, many: bool
    ) -> None:
        if context.execution_options.get("explain") and statement.startswith(_EXPLAIN[db.name]):
            names = [column[0] for column in cursor.description]
            plans.append([dict(zip(names, row, strict=True)) for row in cursor.fetchall()])

    sync_engine = storage.engine.sync_engine
    event.listen(sync_engine, "before_cursor_execute", rewrite, retval=True)
    event.listen(sync_engine, "after_cursor_execute", collect)
    try:
        async with storage.engine.connect() as conn:
            explaining = await conn.execution_options(explain=True)
            await explaining.execute(query, params)
            await explaining.rollback()
    finally:
        event.remove(sync_engine, "before_cursor_execute", rewrite)
        event.remove(sync_engine, "after_cursor_execute", collect)
    (rows,) = plans
    return _parse_plan(db.name, rows)


async def _fill_for_plans(storage: SQLStorage) -> tuple[str, list[str]]:
    """20,000 items as a store holds them after a while: mostly finished.

    One batch of 10,000 items, 9,000 done (3 of them failed), and 100 batches of 100 items,
    75 of them done. The statistics are refreshed, so each planner sees the real shape.
    """
    big, _ = await storage.create_batch(new_batch(10_000, metadata={"owner": "big"}))
    small = [
        (await storage.create_batch(new_batch(100, metadata={"owner": f"user-{n % 10}"})))[0].id
        for n in range(100)
    ]
    i = storage.tables.items
    done = {"state": ItemState.SUCCEEDED.value, "active": 0, "claimable_at": None}
    async with storage.engine.begin() as conn:
        await conn.execute(i.update().where(i.c.batch_id.in_(small[:75])).values(**done))
        await conn.execute(
            i.update().where(i.c.batch_id == big.id, i.c.position < 9_000).values(**done)
        )
        await conn.execute(
            i.update()
            .where(i.c.batch_id == big.id, i.c.position.in_([10, 5_000, 8_999]))
            .values(state=ItemState.FAILED.value)
        )
    tables = [storage.tables.items, storage.tables.batches, storage.tables.tags]
    async with storage.engine.begin() as conn:
        if storage.engine.dialect.name == "sqlite":
            await conn.exec_driver_sql("ANALYZE")
        elif storage.engine.dialect.name == "postgresql":
            for table in tables:
                await conn.exec_driver_sql(f"ANALYZE {table.name}")
        else:
            for table in tables:
                (await conn.exec_driver_sql(f"ANALYZE TABLE {table.name}")).all()
    return big.id, small


async def _primary_key_index(db: Database, storage: SQLStorage, table: str) -> str:
    if db.name == "postgres":
        return f"{table}_pkey"
    if db.name == "mysql":
        return "PRIMARY"
    async with storage.engine.connect() as conn:
        rows = (await conn.exec_driver_sql(f"PRAGMA index_list({table})")).all()
    (name,) = [row._mapping["name"] for row in rows if row._mapping["origin"] == "pk"]
    return str(name)


#: One query of the adapter: what it is for, the query and its parameters, the indexes that
#: must serve each table it reads, and whether it reads a batch's items in index order (so
#: that it must never sort them).
PlanCase = tuple[str, Any, dict[str, Any], dict[str, set[str]], bool]


async def _plan_cases(db: Database, storage: SQLStorage) -> list[PlanCase]:
    """The adapter's reads, built as the adapter builds them, on `_fill_for_plans` data."""
    big, small = await _fill_for_plans(storage)
    items, batches = storage.tables.items.name, storage.tables.batches.name
    p = storage.table_prefix
    claim, claim_any = f"{p}ix_items_claim", f"{p}ix_items_claim_any"
    by_state = f"{p}ix_items_state"
    items_pk = await _primary_key_index(db, storage, items)
    batches_pk = await _primary_key_index(db, storage, batches)

    def claiming(what: str, batch_ids: tuple[str, ...] | None, indexes: set[str]) -> PlanCase:
        query, params = storage._sql.claim_query(ClaimRequest(60, batch_ids=batch_ids))
        return (what, query, {**params, "b_now": time.time() + 1}, {items: indexes}, True)

    def listing(what: str, **options: Any) -> PlanCase:
        options = {"metadata": None, "parent_id": None, "before": None, "limit": 50} | options
        expected = {items: {by_state}}
        if not options["metadata"]:
            expected[batches] = {batches_pk}
        return (what, storage._sql.batches_query(**options), {}, expected, False)

    page = storage._sql.items_query(big, states=None, after=5_000, limit=100)
    failed = storage._sql.items_query(big, states={ItemState.FAILED}, after=None, limit=100)
    assert page is not None
    assert failed is not None
    status = storage._sql.batch_query().where(storage.tables.batches.c.id == small[80])
    return [
        claiming("claim in one batch", (big,), {claim, claim_any}),
        claiming("claim in any batch", None, {claim_any}),
        claiming("claim in two batches", (big, small[90]), {claim, claim_any}),
        ("items page", page[0], page[1], {items: {items_pk}}, True),
        ("items in one state", failed[0], failed[1], {items: {by_state}}, True),
        listing("batch listing"),
        # Batches and tags are small here: a planner may rightly scan them.
        listing("batches of an owner", metadata={"owner": "user-3"}, before=small[50]),
        ("status", status, {}, {items: {by_state}}, False),
    ]


async def test_the_adapter_queries_use_their_indexes(db: Database) -> None:
    async with db.storage() as storage:
        for what, query, params, expected, ordered in await _plan_cases(db, storage):
            plan = await _explain(db, storage, query, params)
            for table, indexes in expected.items():
                used = [index for name, index in plan.accesses if name == table]
                assert used, f"{what}: {table} is not read?\n{plan.text}"
                assert set(used) <= indexes, f"{what}: {table} read through {used}\n{plan.text}"
            if ordered:
                assert not plan.sorts, f"{what}: sorts the batch's items\n{plan.text}"


# -- 6. schema -----------------------------------------------------------------------------


async def test_missing_tables_with_create_schema_false_are_refused(db: Database) -> None:
    storage = db.storage(create_schema=False)
    try:
        with pytest.raises(SchemaVersionMismatch, match="missing and create_schema=False"):
            await storage.open()
        # A storage that could not open keeps nothing open (its engine is disposed).
        with pytest.raises(StorageError, match="not open"):
            storage.engine  # noqa: B018
        meta = storage.tables.meta.name
        engine = create_async_engine(db.url)
        try:
            async with engine.connect() as conn:
                assert not await conn.run_sync(lambda sync: inspect(sync).has_table(meta))
        finally:
            await engine.dispose()
    finally:
        await storage.aclose()


async def test_another_schema_version_is_refused(db: Database) -> None:
    prefix = db.new_prefix()
    async with db.storage(prefix) as storage:
        meta = storage.tables.meta
        async with storage.engine.begin() as conn:
            await conn.execute(meta.update().values(value="999"))
    for create_schema in (True, False):
        other = db.storage(prefix, create_schema=create_schema)
        expected = f"schema version '999'; this batchkit reads version {SCHEMA_VERSION}"
        with pytest.raises(SchemaVersionMismatch, match=expected):
            await other.open()
        await other.aclose()


async def test_opening_the_same_tables_again_is_idempotent(db: Database) -> None:
    prefix = db.new_prefix()
    async with db.storage(prefix) as first:
        record, _ = await first.create_batch(new_batch(2))
    async with db.storage(prefix) as second, db.storage(prefix, create_schema=False) as third:
        assert (await second.get_batch(record.id)).total == 2
        assert (await third.get_batch(record.id)).total == 2
        meta = second.tables.meta
        async with second.engine.connect() as conn:
            rows = (await conn.execute(select(meta.c.name, meta.c.value))).all()
        versions = [tuple(row) for row in rows if row[0] == "schema_version"]
        assert versions == [("schema_version", str(SCHEMA_VERSION))]


async def test_processes_opening_a_new_database_at_once_all_succeed(db: Database) -> None:
    prefix = db.new_prefix()
    storages = [db.storage(prefix) for _ in range(4)]
    try:
        async with anyio.create_task_group() as tg:
            for storage in storages:
                tg.start_soon(storage.open)
        record, _ = await storages[0].create_batch(new_batch(1))
        for storage in storages:
            assert (await storage.get_batch(record.id)).total == 1
    finally:
        for storage in storages:
            await storage.aclose()


async def test_storages_sharing_a_host_sqlite_engine(tmp_path: Path) -> None:
    engine = create_async_engine(f"sqlite+aiosqlite:///{tmp_path / 'shared.db'}")
    try:
        for _ in range(2):  # opened again after a close, on the same engine
            async with (
                SQLStorage(engine, table_prefix="first_") as first,
                SQLStorage(engine, table_prefix="second_") as second,
            ):
                one, _ = await first.create_batch(new_batch(1))
                two, _ = await second.create_batch(new_batch(2))
                assert (await first.get_batch(one.id)).total == 1
                assert (await second.get_batch(two.id)).total == 2
                with pytest.raises(BatchNotFound):
                    await first.get_batch(two.id)
    finally:
        await engine.dispose()


@pytest.mark.parametrize("prefix", ["x;drop", "1abc", "a" * 40, "", "a-b", "é"])
def test_an_invalid_table_prefix_is_refused_before_anything_is_written(
    tmp_path: Path, prefix: str
) -> None:
    path = tmp_path / "never.db"
    with pytest.raises(ValueError, match="table_prefix"):
        SQLStorage(f"sqlite+aiosqlite:///{path}", table_prefix=prefix)
    with pytest.raises(ValueError, match="table_prefix"):
        SQLStorage(POSTGRES_URL, table_prefix=prefix)
    with pytest.raises(ValueError, match="table_prefix"):
        metadata_for(prefix)
    assert not path.exists()


@pytest.mark.parametrize(
    ("url", "fixed"),
    [
        ("postgresql://u@db.example/app", "postgresql+asyncpg://u@db.example/app"),
        ("postgres://u@db.example/app", "postgresql+asyncpg://u@db.example/app"),
        ("mysql://u@db.example/app", "mysql+asyncmy://u@db.example/app"),
        ("sqlite:///{path}", "sqlite+aiosqlite:///{path}"),
        ("postgresql+psycopg2://u@db.example/app", "postgresql+asyncpg://u@db.example/app"),
        ("mysql+pymysql://u@db.example/app", "mysql+asyncmy://u@db.example/app"),
        ("mariadb://u@db.example/app", "mariadb+asyncmy://u@db.example/app"),
    ],
)
def test_a_synchronous_url_is_refused_with_the_async_spelling(
    tmp_path: Path, url: str, fixed: str
) -> None:
    path = tmp_path / "x.db"
    # The same refusal, in the same words, as open_storage's (and a ValueError).
    with pytest.raises(InvalidStorageURL, match="synchronous") as caught:
        SQLStorage(url.format(path=path))
    assert fixed.format(path=path) in str(caught.value)
    with pytest.raises(InvalidStorageURL) as opened:
        open_storage(url.format(path=path))
    assert str(opened.value) == str(caught.value)
    assert not path.exists()


async def test_a_host_engine_stays_open_and_a_url_engine_is_disposed(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'host.db'}"
    host_engine = create_async_engine(url)
    closed: list[str] = []
    try:
        event.listen(host_engine.sync_engine, "close", lambda *_: closed.append("host"))
        async with SQLStorage(host_engine) as storage:
            record, _ = await storage.create_batch(new_batch(3))
        assert closed == []
        async with host_engine.connect() as conn:  # still the host's, still usable
            query = select(storage.tables.items.c.key).order_by(storage.tables.items.c.position)
            assert list((await conn.execute(query)).scalars()) == ["item-0", "item-1", "item-2"]
        assert storage.engine is host_engine
    finally:
        await host_engine.dispose()

    owned = SQLStorage(url)
    async with owned:
        engine = owned.engine
        event.listen(engine.sync_engine, "close", lambda *_: closed.append("owned"))
        assert (await owned.get_batch(record.id)).total == 3
    assert "owned" in closed
    with pytest.raises(StorageError, match="not open"):
        owned.engine  # noqa: B018


async def test_open_storage_gives_an_sqlite_storage_in_wal_mode(tmp_path: Path) -> None:
    path = tmp_path / "opened.db"
    storage = open_storage(f"sqlite+aiosqlite:///{path}")
    assert isinstance(storage, SQLStorage)
    async with storage:
        await storage.create_batch(new_batch(1))
        async with storage.engine.connect() as conn:
            assert (await conn.exec_driver_sql("PRAGMA journal_mode")).scalar() == "wal"
    # WAL is a property of the file: a plain connection sees it too.
    with sqlite3.connect(path) as plain:
        assert plain.execute("PRAGMA journal_mode").fetchone() == ("wal",)
        prefix = storage.table_prefix
        assert plain.execute(f"SELECT count(*) FROM {prefix}items").fetchone() == (1,)
    plain.close()


# -- 7. change notification ----------------------------------------------------------------


async def test_postgres_notification_crosses_storages(postgres_db: Database) -> None:
    prefix = postgres_db.new_prefix()
    async with postgres_db.storage(prefix) as watcher, postgres_db.storage(prefix) as actor:
        assert watcher.engine is not actor.engine
        record, _ = await actor.create_batch(new_batch(2))
        # A poll interval far longer than the test: only a notification can wake the watch.
        runner = BatchRunner(watcher, _noop, poll_interval=30)
        async with aclosing(runner.watch(record.id)) as statuses:
            first = await anext(statuses)
            assert first.state is BatchState.QUEUED
            changed: list[float] = []
            async with anyio.create_task_group() as tg:

                async def act() -> None:
                    await anyio.wait_all_tasks_blocked()
                    await actor.claim(ClaimRequest(lease_seconds=60, batch_ids=(record.id,)))
                    changed.append(time.monotonic())

                tg.start_soon(act)
                with anyio.fail_after(5):
                    second = await anext(statuses)
                woke = time.monotonic()
        assert second.state is BatchState.RUNNING
        assert second.counts[ItemState.RUNNING] == 1
        assert woke - changed[0] < 2.0  # far sooner than the 30 s poll, even on a busy host


async def check_claims_carry_their_batch(storage: Any) -> None:
    """The first claim of a batch brings its metadata and failure limit (`Claim.batch`):
    a worker runs a batch's first item without reading the batch first."""
    metadata = {"owner": "ada", "n": 1}
    record, _ = await storage.create_batch(new_batch(2, metadata=metadata, max_failures=4))
    for request in (ClaimRequest(lease_seconds=30, batch_ids=(record.id,)), ClaimRequest(30)):
        claim = await storage.claim(request)
        assert claim is not None
        assert claim.batch == BatchInfo(metadata=metadata, max_failures=4)


async def test_a_postgres_claim_carries_its_batch(postgres_db: Database) -> None:
    async with postgres_db.storage() as storage:
        await check_claims_carry_their_batch(storage)


async def test_postgres_announces_a_busy_batch_a_few_times_a_second_and_its_end(
    postgres_db: Database,
) -> None:
    """Every NOTIFY makes the server commit its transaction after every other one that
    NOTIFYs: a storage announces one batch's changes at most every `QUIET_FOR`, and its
    end always. A watcher still sees every change, and the end at once."""
    prefix = postgres_db.new_prefix()
    async with postgres_db.storage(prefix) as storage:
        dialect = storage._dialect
        assert isinstance(dialect, PostgresDialect)
        heard: list[tuple[float, str]] = []
        listener = await asyncpg.connect(POSTGRES_URL.replace("+asyncpg", ""))
        await listener.add_listener(
            dialect.channel, lambda *args: heard.append((time.monotonic(), args[-1]))
        )
        try:
            runner = BatchRunner(storage, _noop, concurrency=4, poll_interval=30)
            batch = await runner.submit([f"item-{n}" for n in range(400)])
            began = time.monotonic()
            final = await runner.run(batch.id)
            took = time.monotonic() - began
            await anyio.sleep(0.3)
        finally:
            await listener.close()
    assert final.state is BatchState.COMPLETED
    announced = [at for at, payload in heard if payload == batch.id]
    # 800 transitions; at most one announcement per window (with a few to spare for the
    # claims, the progress and the end), where every transition announced itself before.
    assert 1 <= len(announced) <= took / QUIET_FOR + 10, (len(announced), took)


async def test_a_postgres_watcher_sees_an_unannounced_change_soon(
    postgres_db: Database,
) -> None:
    """A change made just after an announced one goes unannounced (`QUIET_FOR`): the
    watcher looks again `AGAIN_AFTER` the announcement, so it sees that change too, and
    not only at its poll (30 s here)."""
    prefix = postgres_db.new_prefix()
    async with postgres_db.storage(prefix) as watcher, postgres_db.storage(prefix) as actor:
        record, _ = await actor.create_batch(new_batch(3))
        request = ClaimRequest(lease_seconds=60, batch_ids=(record.id,))
        first, second = await actor.claim(request), await actor.claim(request)
        assert first is not None
        assert second is not None
        await anyio.sleep(2 * QUIET_FOR)  # the claims' window is over
        async with watcher.subscribe(record.id) as changes:
            await actor.finish(first.lease, Outcome.succeeded("1"))  # announced
            await actor.finish(second.lease, Outcome.succeeded("2"))  # within its window
            with anyio.fail_after(5):
                await changes.wait(timeout=30)
            began = time.monotonic()
            with anyio.fail_after(5):
                await changes.wait(timeout=30)
            looked = time.monotonic() - began
        status = await watcher.get_batch(record.id)
    assert looked < AGAIN_AFTER + 1.0
    assert status.counts[ItemState.SUCCEEDED] == 2


def test_sql_storage_refuses_trio_clearly(tmp_path: Path) -> None:
    # SQLAlchemy's async engines run on asyncio; on trio the error must say so.
    import trio

    async def main() -> None:
        async with SQLStorage(f"sqlite+aiosqlite:///{tmp_path / 'trio.db'}"):
            pass

    with pytest.raises(StorageError, match="runs on asyncio"):
        trio.run(main)


async def test_unreachable_server_is_a_storage_error() -> None:
    storage = SQLStorage("postgresql+asyncpg://nobody@127.0.0.1:1/none")
    with pytest.raises(StorageError, match="cannot open"):
        await storage.open()
    await storage.aclose()


@pytest.mark.parametrize("adapter", ["sqlite", "postgres", "mysql"])
async def test_cancelling_run_repeatedly_leaves_nothing_running(
    adapter: str, request: pytest.FixtureRequest
) -> None:
    # Each cancel lands wherever it lands, including inside the step that finishes one
    # item and claims the next: neither item may be left running under a lost lease.
    make = request.getfixturevalue(f"{adapter}_storage_factory")

    async def gen(ctx: Any) -> int:
        await anyio.lowlevel.checkpoint()
        return 1

    async with make() as storage:
        runner = BatchRunner(storage, gen)
        batch = await runner.submit([str(i) for i in range(3_000)])
        for delay in (0.05, 0.11, 0.17, 0.23, 0.29):
            with anyio.move_on_after(delay):
                await runner.run(batch.id)
            status = await runner.status(batch.id)
            assert status.counts[ItemState.RUNNING] == 0
        assert status.counts[ItemState.SUCCEEDED] > 0


async def test_a_run_whose_generator_never_awaits_stops_when_cancelled(db: Database) -> None:
    # The storage shields its writes and this generator has no await of its own: the run
    # must still notice its cancellation between two items, not run the batch through.
    done = 0

    async def busy(ctx: ItemContext) -> None:
        nonlocal done
        done += 1

    async with db.storage() as storage:
        runner = BatchRunner(storage, busy)
        batch = await runner.submit([f"item-{n}" for n in range(5_000)])
        with anyio.fail_after(30):
            async with anyio.create_task_group() as tg:
                tg.start_soon(runner.run, batch.id)
                await _wait_for(lambda: done >= 20)
                tg.cancel_scope.cancel()
        status = await runner.status(batch.id)
    assert status.counts[ItemState.RUNNING] == 0
    assert status.counts[ItemState.SUCCEEDED] == done
    assert status.counts[ItemState.QUEUED] > 4_000, status.counts


async def _wait_for(check: Callable[[], bool]) -> None:
    # Polling on purpose: a plain counter has no event to wait on.
    while not check():  # noqa: ASYNC110
        await anyio.sleep(0.005)


async def test_many_storages_opening_new_sqlite_files_at_once_all_succeed(
    tmp_path: Path,
) -> None:
    # Switching a new file to WAL needs its lock, which another opener may hold at that
    # instant (SQLite then answers "database is locked" at once, busy timeout or not):
    # opening tries again instead of failing.
    for n in range(30):
        url = f"sqlite+aiosqlite:///{tmp_path / f'new-{n}.db'}"
        storages = [SQLStorage(url) for _ in range(8)]
        try:
            async with anyio.create_task_group() as tg:
                for storage in storages:
                    tg.start_soon(storage.open)
            record, _ = await storages[0].create_batch(new_batch(1))
            for storage in storages:
                assert (await storage.get_batch(record.id)).total == 1
        finally:
            for storage in storages:
                await storage.aclose()
