"""How a SQL storage connects: its connection budget, its URL's options, poolers.

The budget (``max_connections``) bounds every connection one storage holds: its pool,
the connections its hot path keeps and its LISTEN connection. A wait for one is bounded
(``pool_timeout``) and logged, never a silent hang. Behind a transaction-mode pooler
(``?pooler=transaction``) no prepared statement outlives its transaction, and `watch`
listens on ``listen_url`` or says once that it polls.
"""

from __future__ import annotations

import contextlib
import logging
import secrets
import time
from typing import TYPE_CHECKING, Any

import anyio
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from batchkit import BatchRunner, BatchState, ItemSpec, ItemState, open_storage
from batchkit.exceptions import InvalidStorageURL, StorageError
from batchkit.storage.sql import SQLStorage
from tests._pgbouncer import PgBouncer, pgbouncer_binary

from .conftest import MYSQL_URL, POSTGRES_URL, _drop_tables, require_server

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

    from batchkit import ItemContext

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def postgres() -> str:
    require_server(POSTGRES_URL, "PostgreSQL")
    return POSTGRES_URL


@pytest.fixture
def prefix() -> Iterator[str]:
    name = f"c{secrets.token_hex(4)}_"
    yield name
    if _reachable(POSTGRES_URL):
        anyio.run(_drop_tables, POSTGRES_URL, [name])


def _reachable(url: str) -> bool:
    try:
        require_server(url, "PostgreSQL")
    except BaseException:
        return False
    return True


@pytest.fixture
def transaction_pooler() -> Iterator[PgBouncer]:
    require_server(POSTGRES_URL, "PostgreSQL")
    bouncer = PgBouncer(pgbouncer_binary(), POSTGRES_URL, "transaction", 10)
    bouncer.start()
    try:
        yield bouncer
    finally:
        bouncer.stop()


async def _echo(ctx: ItemContext) -> dict[str, Any]:
    await anyio.sleep(0.005)
    return {"key": ctx.key}


async def _every_tenth_fails(ctx: ItemContext) -> None:
    if ctx.payload["n"] % 10 == 0:
        raise ValueError("every tenth item fails")


def _items(n: int) -> list[ItemSpec]:
    return [ItemSpec(key=f"item-{i:04}", payload={"n": i}) for i in range(n)]


async def _connections_named(engine: Any, name: str) -> int:
    async with engine.connect() as conn:
        found = await conn.execute(
            text("SELECT count(*) FROM pg_stat_activity WHERE application_name = :name"),
            {"name": name},
        )
        return int(found.scalar_one())


# -- the budget ---------------------------------------------------------------------------


@pytest.mark.parametrize("budget", [2, 3])
async def test_a_storage_never_holds_more_connections_than_its_budget(
    postgres: str, prefix: str, budget: int
) -> None:
    # A runner of 8 slots and two watchers on a budget of 2 or 3: the server never sees
    # more connections of this storage than that, and the batch completes.
    name = f"batchkit-test-{secrets.token_hex(4)}"
    url = f"{postgres}?application_name={name}&max_connections={budget}"
    observer = create_async_engine(postgres)
    most = 0
    try:
        async with SQLStorage(url, table_prefix=prefix) as storage:
            runner = BatchRunner(storage, _echo, concurrency=8)
            batch = await runner.submit(_items(300))
            done = anyio.Event()

            async def observe() -> None:
                nonlocal most
                while not done.is_set():
                    most = max(most, await _connections_named(observer, name))
                    await anyio.sleep(0.01)

            async def watch() -> None:
                async for _ in runner.watch(batch.id):
                    pass

            async with anyio.create_task_group() as tg:
                tg.start_soon(observe)
                tg.start_soon(watch)
                tg.start_soon(watch)
                status = await runner.run(batch.id)
                done.set()
        assert status.state is BatchState.COMPLETED
        assert status.counts[ItemState.SUCCEEDED] == 300
        assert 1 <= most <= budget
    finally:
        await observer.dispose()


@pytest.mark.parametrize("database", ["postgres", "mysql"])
async def test_more_slots_than_connections_take_turns(database: str) -> None:
    # 8 slots on 2 connections, every transaction queued on one batch's row: each slot
    # gets its turn within a short pool_timeout. (SQLAlchemy's pool alone hands a
    # connection given back to whoever asks next: a slot could wait past the timeout
    # while the others took turns, and the run failed with ConnectionBudgetExhausted.)
    url = POSTGRES_URL if database == "postgres" else MYSQL_URL
    require_server(url, database)
    name = f"c{secrets.token_hex(4)}_"
    try:
        async with SQLStorage(url, table_prefix=name, max_connections=3, pool_timeout=1) as storage:
            runner = BatchRunner(storage, _every_tenth_fails, concurrency=8)
            batch = await runner.submit(_items(3_000))
            status = await runner.run(batch.id)
        assert status.counts[ItemState.SUCCEEDED] == 2_700
        assert status.counts[ItemState.FAILED] == 300
    finally:
        await _drop_tables(url, [name])


async def test_a_wait_for_a_connection_is_logged(
    postgres: str, prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    async with SQLStorage(postgres, table_prefix=prefix, max_connections=2) as storage:
        runner = BatchRunner(storage, _echo)
        batch = await runner.submit(_items(1))
        held = [await storage.engine.connect() for _ in range(2)]

        async def give_back() -> None:
            await anyio.sleep(1.5)
            for conn in held:
                await conn.close()

        with caplog.at_level(logging.WARNING, logger="batchkit.storage.sql"):
            async with anyio.create_task_group() as tg:
                tg.start_soon(give_back)
                status = await runner.status(batch.id)
    assert status.total == 1
    said = [r.getMessage() for r in caplog.records if "waited" in r.getMessage()]
    assert len(said) == 1, caplog.text
    assert "raise max_connections" in said[0]


async def test_no_connection_coming_free_fails_in_bounded_time(postgres: str, prefix: str) -> None:
    async with SQLStorage(
        postgres, table_prefix=prefix, max_connections=2, pool_timeout=0.5
    ) as storage:
        runner = BatchRunner(storage, _echo)
        batch = await runner.submit(_items(1))
        held = [await storage.engine.connect() for _ in range(2)]
        try:
            start = time.monotonic()
            with pytest.raises(StorageError, match="max_connections=2") as caught:
                await runner.status(batch.id)
            assert time.monotonic() - start < 5
            assert "pool_timeout=0.5" in str(caught.value)
        finally:
            for conn in held:
                await conn.close()
        # Once connections come free, the storage works again.
        assert (await runner.status(batch.id)).total == 1


async def test_asyncpg_needs_two_connections_one_to_listen(postgres: str, prefix: str) -> None:
    storage = SQLStorage(f"{postgres}?max_connections=1", table_prefix=prefix)
    with pytest.raises(InvalidStorageURL, match="at least 2 on asyncpg"):
        await storage.open()
    await storage.aclose()


# -- the URL's options ----------------------------------------------------------------------


async def _open(url: str) -> None:
    async with open_storage(url):
        pass


@pytest.mark.parametrize(
    ("query", "says"),
    [
        ("bogus=1", "'bogus' is not one asyncpg takes"),
        ("statement_cache_size=many", "'statement_cache_size' must be a whole number"),
        ("command_timeout=soon", "'command_timeout' must be a number"),
        ("ssl=maybe", "'ssl' must be one of disable"),
        ("direct_tls=perhaps", "'direct_tls' must be true or false"),
        ("max_connections=lots", "max_connections= must be a whole number"),
        ("max_connections=0", "max_connections must be 1 to 10000"),
        ("pool_timeout=never", "pool_timeout= must be seconds"),
        ("pool_timeout=nan", "pool_timeout= must be seconds"),
        ("pooler=statement", "pooler must be one of transaction, session"),
        ("listen_url=postgresql%3A%2F%2Fh%2Fd", "listen_url is for pooler='transaction' only"),
        ("pooler=transaction&listen_url=redis%3A%2F%2Fh", "listen_url must be a postgresql"),
        ("max_connections=3&max_connections=4", "more than once"),
    ],
)
async def test_a_bad_url_option_is_refused_by_name(postgres: str, query: str, says: str) -> None:
    url = postgres.replace("postgres@", "postgres:s3cret-pw@") + "?" + query
    with pytest.raises(InvalidStorageURL) as caught:
        await _open(url)
    assert says in str(caught.value)
    assert "s3cret-pw" not in str(caught.value)


@pytest.mark.parametrize(
    "query",
    [
        "statement_cache_size=0",
        "sslmode=disable",
        "ssl=disable&command_timeout=30&timeout=10",
        "application_name=batchkit-tests",
        "max_connections=3&pool_timeout=5",
        "pooler=session",
    ],
)
async def test_the_driver_and_storage_options_of_a_url_work(
    postgres: str, prefix: str, query: str
) -> None:
    async with open_storage(f"{postgres}?{query}", prefix=prefix) as storage:
        runner = BatchRunner(storage, _echo, concurrency=2)
        batch = await runner.submit(_items(5))
        assert (await runner.run(batch.id)).state is BatchState.COMPLETED


async def test_a_keyword_and_the_url_that_disagree_are_refused(postgres: str) -> None:
    with pytest.raises(InvalidStorageURL, match="give one of them"):
        SQLStorage(f"{postgres}?max_connections=3", max_connections=4)
    # The same value twice is no disagreement.
    SQLStorage(f"{postgres}?max_connections=3", max_connections=3)


def test_the_listen_urls_password_is_never_shown() -> None:
    listen = "postgresql%2Basyncpg%3A%2F%2Fapp%3Alisten-s3cret%40db%3A5432%2Fapp"
    storage = SQLStorage(
        f"postgresql+asyncpg://app@pooler:6543/app?pooler=transaction&listen_url={listen}"
    )
    assert "listen-s3cret" not in repr(storage)
    keyword = SQLStorage(
        "postgresql+asyncpg://app@pooler:6543/app",
        pooler="transaction",
        listen_url="postgresql+asyncpg://app:listen-s3cret@db:5432/app",
    )
    assert "listen-s3cret" not in repr(keyword)


def test_a_lost_prepared_statement_names_the_pooler_option() -> None:
    # What asyncpg says when a transaction-mode pooler hands a statement prepared on one
    # server connection to another: the storage's error says what to add to the URL.
    from batchkit.storage.sql._connector import ConnectionSettings, Connector

    connector = Connector("postgresql+asyncpg://app@pooler:6543/app", {})
    said = str(
        connector.fault(RuntimeError('prepared statement "__asyncpg_stmt_1b__" does not exist'))
    )
    assert "?pooler=transaction" in said
    pooled = Connector(
        "postgresql+asyncpg://app@pooler:6543/app", {}, ConnectionSettings(pooler="transaction")
    )
    assert "?pooler=transaction" not in str(
        pooled.fault(RuntimeError('prepared statement "x" does not exist'))
    )


# -- a transaction-mode pooler -----------------------------------------------------------------


@pytest.mark.parametrize("driver", ["asyncpg", "psycopg"])
async def test_a_batch_runs_through_a_transaction_pooler(
    transaction_pooler: PgBouncer, prefix: str, driver: str
) -> None:
    url = transaction_pooler.url(f"postgresql+{driver}") + "?pooler=transaction"
    async with open_storage(url, prefix=prefix) as storage:
        runner = BatchRunner(storage, _echo, concurrency=8)
        batch = await runner.submit(_items(300))
        status = await runner.run(batch.id)
        assert status.state is BatchState.COMPLETED
        assert status.counts[ItemState.SUCCEEDED] == 300


async def test_watch_through_a_transaction_pooler_says_once_that_it_polls(
    transaction_pooler: PgBouncer, prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    url = transaction_pooler.url() + "?pooler=transaction"
    with caplog.at_level(logging.WARNING, logger="batchkit.storage.sql"):
        async with SQLStorage(url, table_prefix=prefix, poll_interval=0.05) as storage:
            runner = BatchRunner(storage, _echo)
            batch = await runner.submit(_items(3))
            for _ in range(3):
                async with storage.subscribe(batch.id) as changes:
                    await changes.wait(0.01)
            seen = []
            async with anyio.create_task_group() as tg:

                async def watch() -> None:
                    async for status in runner.watch(batch.id):
                        seen.append(status.state)

                tg.start_soon(watch)
                await runner.run(batch.id)
    assert seen[-1] is BatchState.COMPLETED
    said = [r.getMessage() for r in caplog.records if "polls" in r.getMessage()]
    assert len(said) == 1, caplog.text
    assert "listen_url" in said[0]


async def test_watch_through_a_transaction_pooler_listens_on_listen_url(
    transaction_pooler: PgBouncer, prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    # A poll interval of a minute: only a notification can end the wait early.
    url = transaction_pooler.url() + "?pooler=transaction"
    with caplog.at_level(logging.WARNING, logger="batchkit.storage.sql"):
        async with (
            SQLStorage(
                url, table_prefix=prefix, listen_url=POSTGRES_URL, poll_interval=60
            ) as storage,
            SQLStorage(POSTGRES_URL, table_prefix=prefix) as other,
        ):
            batch = await BatchRunner(storage, _echo).submit(_items(3))
            async with storage.subscribe(batch.id) as changes:
                await changes.wait(0.01)  # whatever came before
                await BatchRunner(other, _echo).cancel(batch.id)
                start = time.monotonic()
                with anyio.fail_after(10):
                    await changes.wait(60)
                assert time.monotonic() - start < 10
    assert "polls" not in caplog.text


@pytest.mark.parametrize(
    ("query", "says"),
    [
        ("bogus=1", "an option its driver does not take: connect() got an unexpected keyword"),
        ("connect_timeout=soon", "an option of the storage URL cannot be read"),
    ],
)
async def test_an_option_the_mysql_driver_refuses_is_a_bad_url(query: str, says: str) -> None:
    # asyncmy reads the query itself: what it refuses is a bad URL too, never a traceback.
    from .conftest import MYSQL_URL

    require_server(MYSQL_URL, "MariaDB/MySQL")
    url = MYSQL_URL.replace("root@", "root:s3cret-pw@") + "?" + query
    with pytest.raises(InvalidStorageURL) as caught:
        await _open(url)
    assert says in str(caught.value)
    assert "s3cret-pw" not in str(caught.value)


# -- the LISTEN connection, shared ------------------------------------------------------------


async def _listening(engine: Any, name: str) -> list[int]:
    async with engine.connect() as conn:
        found = await conn.execute(
            text(
                "SELECT pid FROM pg_stat_activity "
                "WHERE application_name = :name AND query ILIKE 'LISTEN%'"
            ),
            {"name": name},
        )
        return [int(pid) for pid in found.scalars()]


async def test_one_listen_connection_serves_every_watched_batch(postgres: str, prefix: str) -> None:
    name = f"batchkit-test-{secrets.token_hex(4)}"
    observer = create_async_engine(postgres, isolation_level="AUTOCOMMIT")
    try:
        async with (
            SQLStorage(f"{postgres}?application_name={name}", table_prefix=prefix) as storage,
            SQLStorage(postgres, table_prefix=prefix) as other,
        ):
            runner = BatchRunner(storage, _echo)
            batches = [await runner.submit(_items(2)) for _ in range(3)]
            async with contextlib.AsyncExitStack() as stack:
                subs = [await stack.enter_async_context(storage.subscribe(b.id)) for b in batches]
                for sub in subs:
                    await sub.wait(0.01)  # whatever came before
                listeners = await _listening(observer, name)
                assert len(listeners) == 1
                # Each watcher hears of its own batch only.
                await BatchRunner(other, _echo).cancel(batches[1].id)
                with anyio.fail_after(10):
                    await subs[1].wait(30)
                with anyio.move_on_after(0.3) as quiet:
                    await subs[0].wait(30)
                assert quiet.cancelled_caught
                # The server drops the LISTEN connection: the watchers look again at once,
                # and the next watcher listens on a new connection.
                async with observer.connect() as conn:
                    await conn.execute(
                        text("SELECT pg_terminate_backend(:pid)"), {"pid": listeners[0]}
                    )
                with anyio.fail_after(10):
                    await subs[0].wait(30)
                async with storage.subscribe(batches[2].id) as again:
                    await again.wait(0.01)
                    await BatchRunner(other, _echo).cancel(batches[2].id)
                    with anyio.fail_after(10):
                        await again.wait(30)
                assert len(await _listening(observer, name)) == 1
            # The last watcher gone, the LISTEN connection goes back to the pool.
            assert await _listening(observer, name) == []
    finally:
        await observer.dispose()


async def test_an_option_sqlite_would_drop_is_a_bad_url(tmp_path: Path) -> None:
    # A typo in a SQLite URL's query would otherwise be dropped without a word.
    with pytest.raises(InvalidStorageURL, match="'timout' is not one SQLite takes"):
        await _open(f"sqlite+aiosqlite:///{tmp_path / 'a.db'}?timout=30")
    assert not (tmp_path / "a.db").exists()
    await _open(f"sqlite+aiosqlite:///{tmp_path / 'b.db'}?timeout=30&max_connections=2")
    # With uri=true, the rest is SQLite's own URI query, which SQLite reads itself.
    await _open(f"sqlite+aiosqlite:///file:{tmp_path / 'c.db'}?uri=true&mode=rwc")
    assert (tmp_path / "c.db").exists()
