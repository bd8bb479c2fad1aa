"""SQLStorage in a schema of its own (on MariaDB, a database of its own), as the role a
managed database gives an app, and big batches under a low ``statement_timeout``.

The PostgreSQL tests make a LOGIN role of their own that may create nothing in
``public`` (PostgreSQL 15 lets only the database's owner), and drop it afterwards with
everything it owns; the server's trust authentication lets it in without a password.
"""

from __future__ import annotations

import logging
import re
import secrets
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio
import pytest
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import create_async_engine

from batchkit import BatchRunner, BatchState, ItemSpec, open_storage
from batchkit.exceptions import BatchNotFound, InvalidStorageURL, StorageError
from batchkit.protocols import ClaimRequest
from batchkit.storage.sql import SCHEMA_VERSION, SQLStorage, metadata_for
from batchkit.storage.sql._dialect import fitted
from batchkit.storage.sql._options import split_url_options
from batchkit.storage.sql._postgres import PostgresDialect
from batchkit.testing.contract import new_batch

from .conftest import MYSQL_URL, POSTGRES_URL, require_server

if TYPE_CHECKING:
    from collections.abc import Iterator

    from batchkit import ItemContext

pytestmark = pytest.mark.anyio

DOCS = Path(__file__).resolve().parents[2] / "docs" / "storage"
DRIVERS = ["asyncpg", "psycopg"]
#: batchkit's four tables, by their names after the prefix.
TABLES = {"meta", "batches", "tags", "items"}


async def generate(ctx: ItemContext) -> dict[str, Any]:
    if ctx.payload.get("fail"):
        raise ValueError(f"{ctx.key} fails")
    return {"done": ctx.key}


def specs(n: int, *, failing: int = 0) -> list[ItemSpec]:
    return [ItemSpec(key=f"item-{i}", payload={"fail": i < failing}) for i in range(n)]


# -- without a server: the option, its URL spelling, and what the storage shows -----------


def test_split_url_options_takes_batchkits_keys_off_and_leaves_the_rest() -> None:
    url = "postgresql+asyncpg://app:p%40ss:w@db.internal:5432/app?ssl=require&schema=jobs"
    stripped, options = split_url_options(url)
    assert options == {"schema": "jobs"}
    parsed, before = make_url(stripped), make_url(url)
    assert "schema" not in parsed.query
    assert dict(parsed.query) == {"ssl": "require"}
    assert (parsed.username, parsed.password, parsed.host, parsed.database) == (
        before.username,
        before.password,
        before.host,
        before.database,
    )
    # Without a key of batchkit's, the URL is left exactly as written.
    plain = "postgresql+asyncpg://app:p%40ss@db/app?ssl=require"
    assert split_url_options(plain) == (plain, {})
    many = "postgresql+asyncpg://app@db/app?pooler=transaction&max_connections=3&schema=s"
    assert split_url_options(many)[1] == {
        "pooler": "transaction",
        "max_connections": "3",
        "schema": "s",
    }


def test_a_key_given_twice_is_refused() -> None:
    with pytest.raises(InvalidStorageURL, match="'schema' more than once"):
        split_url_options("postgresql+asyncpg://app:secretpw@db/app?schema=a&schema=b")


@pytest.mark.parametrize("bad", ["1jobs", "jobs-x", "a" * 64, "jobs;drop"])
def test_a_bad_schema_is_refused_naming_the_option_without_the_password(bad: str) -> None:
    with pytest.raises(ValueError, match="schema must be 1 to 63 letters"):
        SQLStorage("postgresql+asyncpg://app:hunter2pw@db/app", schema=bad)
    with pytest.raises(InvalidStorageURL, match=r"\?schema= must be 1 to 63") as caught:
        SQLStorage(f"postgresql+asyncpg://app:hunter2pw@db/app?schema={bad}")
    assert "hunter2pw" not in str(caught.value)


def test_the_url_and_the_keyword_must_agree() -> None:
    url = "postgresql+asyncpg://app:hunter2pw@db/app?schema=jobs"
    assert SQLStorage(url, schema="jobs").schema == "jobs"
    with pytest.raises(InvalidStorageURL, match="give one of them") as caught:
        SQLStorage(url, schema="other")
    assert "hunter2pw" not in str(caught.value)


def test_sqlite_refuses_a_schema(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'x.db'}"
    for make in (
        lambda: SQLStorage(url, schema="jobs"),
        lambda: SQLStorage(f"{url}?schema=jobs"),
        lambda: SQLStorage(create_async_engine(url), schema="jobs"),
    ):
        with pytest.raises(ValueError, match="sqlite has no schemas"):
            make()


def test_open_storage_reads_the_schema_from_the_url_and_shows_it() -> None:
    storage = open_storage("postgresql+asyncpg://app:hunter2pw@db:5432/app?schema=jobs")
    assert isinstance(storage, SQLStorage)
    assert storage.schema == "jobs"
    assert {t.schema for t in vars(storage.tables).values()} == {"jobs"}
    assert repr(storage) == (
        "SQLStorage('postgresql+asyncpg://app:***@db:5432/app', "
        "table_prefix='batchkit_', schema='jobs')"
    )
    # SQLAlchemy never sees the option (asyncpg would refuse it, psycopg pass it on).
    assert storage._connector.url is not None
    assert "schema" not in make_url(storage._connector.url).query


def test_metadata_for_puts_the_tables_in_the_schema() -> None:
    metadata, tables = metadata_for("app_", schema="jobs")
    assert sorted(metadata.tables) == sorted(f"jobs.app_{name}" for name in TABLES)
    assert tables.items.fullname == "jobs.app_items"
    # Index names are the prefix's: in PostgreSQL an index lives in its table's schema.
    assert {index.name for index in tables.items.indexes} == {
        "app_ix_items_state",
        "app_ix_items_claim",
        "app_ix_items_claim_any",
    }
    assert metadata_for("app_")[1].items.schema is None


def test_lock_and_channel_names_are_the_schemas_own() -> None:
    def channel(schema: str | None, prefix: str = "batchkit_") -> str:
        storage = SQLStorage("postgresql+psycopg://app@db/app", table_prefix=prefix, schema=schema)
        return PostgresDialect(storage._connector, storage._sql, prefix).channel

    assert channel(None) == "batchkit_changes"
    assert channel("jobs") == "jobs.batchkit_changes"
    long_a, long_b = "a" * 62 + "x", "a" * 62 + "y"
    prefix = "p" * 31
    assert len(channel(long_a, prefix)) == 63
    assert channel(long_a, prefix) != channel(long_b, prefix)
    assert fitted("short", 63) == "short"


# -- PostgreSQL: roles and schemas ---------------------------------------------------------


async def admin(*statements: str, **params: Any) -> list[Any]:
    """Run ``statements`` as the server's superuser (autocommit); the last one's rows."""
    engine = create_async_engine(POSTGRES_URL, isolation_level="AUTOCOMMIT")
    rows: list[Any] = []
    try:
        async with engine.connect() as conn:
            for statement in statements:
                result = await conn.execute(text(statement), params)
                rows = list(result.all()) if result.returns_rows else []
    finally:
        await engine.dispose()
    return rows


@dataclass
class Cluster:
    """The PostgreSQL server under test, and the roles and schemas a test made on it."""

    roles: list[str] = field(default_factory=list)
    schemas: list[str] = field(default_factory=list)
    #: The test's table prefix, its own: tests running at once look for their tables only.
    prefix: str = field(default_factory=lambda: f"bk_{secrets.token_hex(4)}_")

    async def new_role(self) -> str:
        """A LOGIN role that owns nothing and may create nothing in ``public``."""
        role = f"bk_role_{secrets.token_hex(4)}"
        await admin(f"CREATE ROLE {role} LOGIN")
        self.roles.append(role)
        # PostgreSQL 15 already leaves CREATE on public to the database's owner.
        await admin(f"REVOKE ALL ON SCHEMA public FROM {role}")
        assert not await privilege(role, "public", "CREATE")
        return role

    def new_schema(self) -> str:
        schema = f"bk_schema_{secrets.token_hex(4)}"
        self.schemas.append(schema)
        return schema

    async def drop(self) -> None:
        for schema in self.schemas:
            await admin(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
        for role in self.roles:
            await admin(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = :role",
                role=role,
            )
            await admin(f"DROP OWNED BY {role}", f"DROP ROLE {role}")


@pytest.fixture
def cluster() -> Iterator[Cluster]:
    require_server(POSTGRES_URL, "PostgreSQL")
    made = Cluster()
    yield made
    anyio.run(made.drop)


def role_url(role: str, driver: str = "asyncpg", **query: str) -> str:
    """``postgresql+<driver>://ROLE@host:port/db?...`` (trust authentication)."""
    url = make_url(POSTGRES_URL).set(
        drivername=f"postgresql+{driver}", username=role, password=None
    )
    return url.update_query_dict(query).render_as_string(hide_password=False)


async def privilege(role: str, schema: str, what: str) -> bool:
    rows = await admin(
        "SELECT has_schema_privilege(:role, :schema, :what)", role=role, schema=schema, what=what
    )
    return bool(rows[0][0])


async def refusal(storage: SQLStorage) -> StorageError:
    """The error ``storage`` fails to open with (its engine disposed afterwards)."""
    try:
        with pytest.raises(StorageError) as refused:
            await storage.open()
    finally:
        await storage.aclose()
    return refused.value


async def tables_of(prefix: str) -> dict[str, set[str]]:
    """The schemas holding tables named with ``prefix``, and their names after it."""
    rows = await admin(
        "SELECT schemaname, tablename FROM pg_tables WHERE starts_with(tablename, :prefix)",
        prefix=prefix,
    )
    found: dict[str, set[str]] = {}
    for schema, table in rows:
        found.setdefault(schema, set()).add(table.removeprefix(prefix))
    return found


def documented_sql(
    case: str, *, role: str, schema: str, prefix: str = "batchkit_", page: str = "postgresql.md"
) -> list[str]:
    """The statements of a storage page's SQL block marked ``<!-- grants-<case> -->``,
    with its names (role or user ``app``, schema ``batchkit``, prefix ``batchkit_``) made
    the test's; the role or user itself is the test's own, made without a password."""
    text = (DOCS / page).read_text()
    block = re.search(rf"<!-- grants-{case} -->\s*```sql\n(.*?)```", text, re.DOTALL)
    assert block is not None, f"the grants of case ({case}) are not on {page}"
    sql = re.sub(r"--[^\n]*", "", block.group(1))
    sql = re.sub(r"\bbatchkit_(meta|batches|tags|items)\b", rf"{prefix}\1", sql)
    sql = re.sub(r"\bbatchkit\b", schema, sql)
    sql = re.sub(r"\bapp\b", role, sql)
    statements = [" ".join(s.split()) for s in sql.split(";")]
    made = ("CREATE ROLE", "CREATE USER")
    return [s for s in statements if s and not s.upper().startswith(made)]


@pytest.mark.parametrize("driver", DRIVERS)
async def test_the_app_role_creates_its_tables_in_its_own_schema(
    cluster: Cluster, driver: str
) -> None:
    role, schema, prefix = await cluster.new_role(), cluster.new_schema(), cluster.prefix
    await admin(*documented_sql("a", role=role, schema=schema, prefix=prefix))
    storage = open_storage(role_url(role, driver, schema=schema), prefix=prefix)
    async with storage:
        runner = BatchRunner(storage, generate, concurrency=2)
        batch = await runner.submit(specs(12, failing=2), metadata={"owner": "ada"})
        final = await runner.run(batch.id)
        assert final.state == BatchState.COMPLETED_WITH_ERRORS
        assert (final.counts["succeeded"], final.counts["failed"]) == (10, 2)
        retry = await runner.retry_failed(batch.id)
        assert (await runner.run(retry.id)).state == BatchState.FAILED
        assert [b.batch_id for b in await runner.batches(metadata={"owner": "ada"})] == [
            retry.id,
            batch.id,
        ]
    assert await tables_of(prefix) == {schema: TABLES}
    owners = await admin(
        "SELECT DISTINCT tableowner FROM pg_tables WHERE schemaname = :schema", schema=schema
    )
    assert owners == [(role,)]
    indexes = await admin(
        "SELECT indexname FROM pg_indexes WHERE schemaname = :schema", schema=schema
    )
    assert {f"{prefix}ix_items_claim", f"{prefix}uq_items_key"} <= {row[0] for row in indexes}
    owned_in_public = await admin(
        "SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE n.nspname = 'public' AND pg_get_userbyid(c.relowner) = :role",
        role=role,
    )
    assert owned_in_public == [(0,)]


async def test_a_missing_schema_is_created_only_if_the_role_may(cluster: Cluster) -> None:
    role, schema = await cluster.new_role(), cluster.new_schema()
    url = role_url(role, schema=schema)
    refused = await refusal(SQLStorage(url, table_prefix=cluster.prefix))
    said = str(refused)
    assert f"schema '{schema}' does not exist, and role '{role}' may not create it" in said
    assert f"CREATE SCHEMA {schema} AUTHORIZATION {role};" in said
    assert f"GRANT CREATE ON DATABASE {make_url(POSTGRES_URL).database} TO {role};" in said
    assert await tables_of(cluster.prefix) == {}

    await admin(f"GRANT CREATE ON DATABASE {make_url(POSTGRES_URL).database} TO {role}")
    async with SQLStorage(url, table_prefix=cluster.prefix) as storage:
        record, _ = await storage.create_batch(new_batch(3))
        assert record.total == 3
    assert await admin(
        "SELECT pg_get_userbyid(nspowner) FROM pg_namespace WHERE nspname = :schema",
        schema=schema,
    ) == [(role,)]
    assert await tables_of(cluster.prefix) == {schema: TABLES}


async def test_a_role_that_may_not_create_tables_is_told_the_grant(cluster: Cluster) -> None:
    role, schema = await cluster.new_role(), cluster.new_schema()
    await admin(f"CREATE SCHEMA {schema}", f"GRANT USAGE ON SCHEMA {schema} TO {role}")
    refused = await refusal(SQLStorage(role_url(role, schema=schema), table_prefix=cluster.prefix))
    assert f"GRANT CREATE ON SCHEMA {schema} TO {role};" in str(refused)
    assert "permission denied for schema" in str(refused)
    # Without a schema of its own, the role meets PostgreSQL 15's `public`.
    refused = await refusal(SQLStorage(role_url(role), table_prefix=cluster.prefix))
    assert "give the storage a schema of its own (schema=...)" in str(refused)


async def _create_as_migrations_would(schema: str, prefix: str) -> None:
    """What an administrator's migrations do: the tables and their version row."""
    metadata, tables = metadata_for(prefix, schema=schema)
    engine = create_async_engine(POSTGRES_URL)
    try:
        async with engine.begin() as conn:
            await conn.run_sync(metadata.create_all)
            await conn.execute(
                tables.meta.insert().values(name="schema_version", value=str(SCHEMA_VERSION))
            )
    finally:
        await engine.dispose()


@pytest.mark.parametrize("driver", DRIVERS)
async def test_an_admin_creates_the_tables_and_the_app_role_gets_dml_only(
    cluster: Cluster, driver: str
) -> None:
    role, schema, prefix = await cluster.new_role(), cluster.new_schema(), cluster.prefix
    statements = documented_sql("b", role=role, schema=schema, prefix=prefix)
    assert statements[0] == f"CREATE SCHEMA {schema}"
    await admin(statements[0])
    await _create_as_migrations_would(schema, prefix)
    await admin(*statements[1:])
    assert not await privilege(role, schema, "CREATE")

    url = role_url(role, driver, schema=schema)
    async with SQLStorage(url, table_prefix=prefix, create_schema=False) as storage:
        runner = BatchRunner(storage, generate, concurrency=3)
        batch = await runner.submit(specs(30, failing=3), metadata={"owner": "ada"})
        final = await runner.run(batch.id)
        assert (final.state, final.counts["failed"]) == (BatchState.COMPLETED_WITH_ERRORS, 3)
        retry = await runner.retry_failed(batch.id)
        cancelled = await runner.submit(specs(5))
        assert (await runner.cancel(cancelled.id)).state == BatchState.CANCELLED
        assert [b.batch_id for b in await runner.batches()] == [cancelled.id, retry.id, batch.id]
        assert [i.key for i in await runner.items(batch.id, state="failed")] == [
            "item-0",
            "item-1",
            "item-2",
        ]
        assert await runner.delete(cancelled.id)
        assert await storage.delete_finished_batches(older_than=0) == 1  # the first batch
        assert [b.batch_id for b in await runner.batches()] == [retry.id]
    # Opened to create what is missing, it finds everything there and needs no more.
    async with SQLStorage(url, table_prefix=prefix) as storage:
        assert [b.id for b in await storage.list_batches()] == [retry.id]
    assert await tables_of(prefix) == {schema: TABLES}


async def test_watch_is_notified_live_in_a_schema(cluster: Cluster) -> None:
    role, schema = await cluster.new_role(), cluster.new_schema()
    await admin(f"CREATE SCHEMA {schema} AUTHORIZATION {role}")
    url = role_url(role, schema=schema)
    # Polling would look again after a minute: only notifications can keep up.
    async with (
        SQLStorage(url, table_prefix=cluster.prefix, poll_interval=60) as watching,
        SQLStorage(url, table_prefix=cluster.prefix) as running,
    ):
        assert watching._dialect.channel == f"{schema}.{cluster.prefix}changes"
        watcher = BatchRunner(watching, generate, poll_interval=60)
        runner = BatchRunner(running, generate)
        batch = await runner.submit(specs(5))
        seen: list[BatchState] = []

        async def watch() -> None:
            async for status in watcher.watch(batch.id, poll_interval=60):
                seen.append(status.state)

        with anyio.fail_after(20):
            async with anyio.create_task_group() as tg:
                tg.start_soon(watch)
                await anyio.sleep(0.3)  # the watcher listens
                await runner.run(batch.id)
        assert seen[0] == BatchState.QUEUED
        assert seen[-1] == BatchState.COMPLETED
        assert len(seen) >= 3


async def test_the_same_prefix_in_two_schemas_keeps_apart(cluster: Cluster) -> None:
    import asyncpg

    first, second, prefix = cluster.new_schema(), cluster.new_schema(), cluster.prefix
    url = POSTGRES_URL.replace("+asyncpg", "")
    async with (
        SQLStorage(POSTGRES_URL, table_prefix=prefix, schema=first) as one,
        SQLStorage(POSTGRES_URL, table_prefix=prefix, schema=second) as two,
    ):
        heard: list[str] = []
        announced = anyio.Event()

        def hear(connection: object, pid: int, channel: str, payload: str) -> None:
            heard.append(payload)
            if payload != "*":  # (new work: announced first, as the batch is created)
                announced.set()

        listener = await asyncpg.connect(url)
        try:
            await listener.add_listener(two._dialect.channel, hear)
            record, _ = await one.create_batch(new_batch(4))
            assert await two.list_batches() == []
            with pytest.raises(BatchNotFound):
                await two.get_batch(record.id)
            assert await two.claim(ClaimRequest(batch_ids=None, lease_seconds=30)) is None
            claim = await one.claim(ClaimRequest(batch_ids=None, lease_seconds=30))
            assert claim is not None
            await anyio.sleep(0.3)
            assert heard == []  # the first schema's changes are not announced to the second
            other, _ = await two.create_batch(new_batch(1))
            assert await two.claim(ClaimRequest(batch_ids=None, lease_seconds=30)) is not None
            with anyio.fail_after(5):
                await announced.wait()
            # Its batch's changes, and the new work it made ("*", see `subscribe_work`).
            assert set(heard) == {other.id, "*"}
        finally:
            await listener.close()

        # Opening a store takes a lock of its schema's and prefix's own: a storage opening
        # in another schema does not wait for it, one opening in the same schema does.
        third = cluster.new_schema()
        reopened = anyio.Event()

        async def reopen() -> None:
            async with SQLStorage(POSTGRES_URL, table_prefix=prefix, schema=first):
                reopened.set()

        async with anyio.create_task_group() as tg:
            async with (
                one.engine.connect() as conn,
                conn.begin(),
                one._dialect.schema_lock(conn),
            ):
                with anyio.fail_after(10):
                    async with SQLStorage(POSTGRES_URL, table_prefix=prefix, schema=third):
                        pass
                tg.start_soon(reopen)
                await anyio.sleep(0.5)
                assert not reopened.is_set(), "the first schema's lock was not taken"
            with anyio.fail_after(10):
                await reopened.wait()
    assert await tables_of(prefix) == {first: TABLES, second: TABLES, third: TABLES}


# -- PostgreSQL: a big batch under a low statement_timeout ------------------------------

#: Items of the big batch: one COPY of them all takes 2 to 4 s on the test machine.
BIG = 200_000


async def test_a_big_batch_survives_a_low_statement_timeout(
    cluster: Cluster, caplog: pytest.LogCaptureFixture
) -> None:
    role = await cluster.new_role()
    schema = cluster.new_schema()
    await admin(
        f"ALTER ROLE {role} SET statement_timeout = '2s'",
        f"CREATE SCHEMA {schema} AUTHORIZATION {role}",
    )
    url = role_url(role, schema=schema)
    async with SQLStorage(url, table_prefix=cluster.prefix) as storage:
        async with storage.engine.connect() as conn:
            assert (await conn.execute(text("SHOW statement_timeout"))).scalar() == "2s"
        runner = BatchRunner(storage, generate)
        keys = [f"k{i}" for i in range(BIG)]
        started = time.perf_counter()
        batch = await runner.submit(keys)
        took = time.perf_counter() - started
        status = await runner.status(batch.id)
        assert (status.total, status.counts["queued"]) == (BIG, BIG)
        logging.getLogger(__name__).info("%d items submitted in %.2f s", BIG, took)

    # One statement for every item would take longer than a statement_timeout far above
    # a chunk's time: the server cancels it, and the message says what to change.
    options = {"connect_args": {"server_settings": {"statement_timeout": "300"}}}
    caplog.set_level(logging.WARNING, logger="batchkit")
    async with SQLStorage(
        url, table_prefix=cluster.prefix, chunk_size=100_000, engine_options=options
    ) as storage:
        with pytest.raises(StorageError) as cancelled:
            await storage.create_batch(new_batch(100_000))
        said = str(cancelled.value)
        assert "statement_timeout cancelled" in said
        assert "smaller chunk_size" in said
        assert "100000 per statement" in said
        assert len(await storage.list_batches()) == 1  # the big one alone: nothing written
    assert not [r for r in caplog.records if "retrying" in r.getMessage()]


# -- MariaDB/MySQL: a database of the same server -----------------------------------------


async def test_mariadb_schema_is_a_database_of_the_same_server() -> None:
    require_server(MYSQL_URL, "MariaDB/MySQL")
    database = f"test_batchkit_schema_{secrets.token_hex(3)}"
    created = f"{database}_new"
    prefix = f"t{secrets.token_hex(4)}_"
    root = create_async_engine(MYSQL_URL, isolation_level="AUTOCOMMIT")
    try:
        async with root.connect() as conn:
            await conn.execute(text(f"CREATE DATABASE {database}"))
        async with open_storage(f"{MYSQL_URL}?schema={database}", prefix=prefix) as storage:
            assert isinstance(storage, SQLStorage)
            runner = BatchRunner(storage, generate, concurrency=2)
            batch = await runner.submit(specs(10, failing=1), metadata={"owner": "ada"})
            final = await runner.run(batch.id)
            assert (final.state, final.counts["failed"]) == (BatchState.COMPLETED_WITH_ERRORS, 1)
            assert [b.batch_id for b in await runner.batches(metadata={"owner": "ada"})] == [
                batch.id
            ]
        # A missing database is created, for a user who may.
        async with SQLStorage(MYSQL_URL, table_prefix=prefix, schema=created) as storage:
            record, _ = await storage.create_batch(new_batch(2))
            assert record.total == 2
        async with root.connect() as conn:
            rows = await conn.execute(
                text(
                    "SELECT table_schema, table_name FROM information_schema.tables "
                    "WHERE table_name LIKE :like"
                ),
                {"like": f"{prefix}%"},
            )
            found: dict[str, set[str]] = {}
            for where, table in rows:
                found.setdefault(where, set()).add(table.removeprefix(prefix))
            charset = await conn.execute(
                text(
                    "SELECT default_character_set_name FROM information_schema.schemata "
                    "WHERE schema_name = :name"
                ),
                {"name": created},
            )
            assert charset.scalar() == "utf8mb4"
        assert found == {database: TABLES, created: TABLES}
    finally:
        async with root.connect() as conn:
            await conn.execute(text(f"DROP DATABASE IF EXISTS {database}"))
            await conn.execute(text(f"DROP DATABASE IF EXISTS {created}"))
        await root.dispose()


async def test_mariadb_users_with_the_documented_grants() -> None:
    require_server(MYSQL_URL, "MariaDB/MySQL")
    tag = secrets.token_hex(3)
    users = {"a": f"bk_user_a_{tag}", "b": f"bk_user_b_{tag}"}
    databases = {"a": f"test_batchkit_schema_a_{tag}", "b": f"test_batchkit_schema_b_{tag}"}
    prefix = "bk_app_"
    root = create_async_engine(MYSQL_URL, isolation_level="AUTOCOMMIT")

    async def as_root(*statements: str) -> None:
        async with root.connect() as conn:
            for statement in statements:
                await conn.execute(text(statement))

    def user_url(case: str) -> str:
        # No database in the URL: the user has rights on its schema's alone.
        url = make_url(MYSQL_URL).set(username=users[case], password=None, database="")
        return f"{url.render_as_string(hide_password=False)}?schema={databases[case]}"

    try:
        for case, user in users.items():
            await as_root(f"CREATE USER '{user}'@'%'")
            grants = documented_sql(
                f"mysql-{case}", role=user, schema=databases[case], page="mysql.md"
            )
            if case == "b":  # an administrator's migrations made the tables
                await as_root(f"CREATE DATABASE {databases[case]}")
                metadata, tables = metadata_for(prefix, schema=databases[case])
                async with root.begin() as conn:
                    await conn.run_sync(metadata.create_all)
                    await conn.execute(
                        tables.meta.insert().values(
                            name="schema_version", value=str(SCHEMA_VERSION)
                        )
                    )
            await as_root(*grants)
            storage = open_storage(user_url(case), prefix=prefix, create_schema=case == "a")
            async with storage:
                runner = BatchRunner(storage, generate, concurrency=2)
                batch = await runner.submit(specs(6, failing=1))
                final = await runner.run(batch.id)
                assert final.counts["failed"] == 1
                retry = await runner.retry_failed(batch.id)
                assert (await runner.cancel(retry.id)).state == BatchState.CANCELLED
                assert await runner.delete(batch.id)
    finally:
        for user in users.values():
            await as_root(f"DROP USER IF EXISTS '{user}'@'%'")
        for database in databases.values():
            await as_root(f"DROP DATABASE IF EXISTS {database}")
        await root.dispose()


def test_a_url_rebuilt_without_the_option_keeps_its_password_whole_and_hidden() -> None:
    url = "postgresql+asyncpg://app:p%40ss%2Fw0rd%3F@db:5432/app?schema=jobs&ssl=require"
    storage = SQLStorage(url)
    for shown in (repr(storage), str(storage)):
        assert "p@ss" not in shown
        assert "p%40ss" not in shown
    assert storage._connector.url is not None
    rebuilt = make_url(storage._connector.url)
    assert (rebuilt.password, dict(rebuilt.query)) == ("p@ss/w0rd?", {"ssl": "require"})
