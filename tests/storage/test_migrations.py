"""Migrations of the SQL tables: tables of schema version 1, with rows in them, upgraded
(``python -m batchkit schema upgrade``, `upgrade_schema`, a revision of an Alembic history)
and then read and run on by the batchkit of today, on SQLite, PostgreSQL and MariaDB.

Version 1 is recreated here as the first release created it (``build_tables`` before
version 2): the tables of today without ``batches.cancel_reason``, ``batches.max_failures``
and ``items.history``; the same indexes, and the same version row.
"""

from __future__ import annotations

import json
import os
import secrets
import sqlite3
import subprocess
import sys
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio
import pytest
from sqlalchemy import (
    Boolean,
    Column,
    Double,
    Index,
    Integer,
    MetaData,
    PrimaryKeyConstraint,
    SmallInteger,
    String,
    Table,
    Text,
    UniqueConstraint,
    inspect,
    select,
    text,
    update,
)
from sqlalchemy.dialects import mysql
from sqlalchemy.ext.asyncio import AsyncConnection, create_async_engine

from batchkit import BatchRunner, BatchState, ItemState, RetryPolicy, SchemaVersionMismatch
from batchkit._argtypes import EXIT_FAILED, EXIT_OK, EXIT_USAGE
from batchkit.cli import main
from batchkit.exceptions import StorageError
from batchkit.protocols import ClaimRequest
from batchkit.storage.sql import (
    SCHEMA_VERSION,
    SchemaUpgrade,
    SQLStorage,
    create_statements,
    metadata_for,
    schema_version,
    upgrade_schema,
    upgrade_statements,
)
from batchkit.storage.sql.schema import ExactString

from .conftest import MYSQL_URL, POSTGRES_URL, _drop_tables, require_server

if TYPE_CHECKING:
    from collections.abc import Iterator

    from batchkit import ItemContext

pytestmark = pytest.mark.anyio

ROOT = Path(__file__).resolve().parents[2]

# -- version 1 -----------------------------------------------------------------------------

_LONG_TEXT = Text().with_variant(mysql.LONGTEXT(), "mysql", "mariadb")


def v1_tables(metadata: MetaData, p: str) -> dict[str, Table]:
    """The tables of schema version 1 under the prefix ``p``."""
    return {
        "meta": Table(
            f"{p}meta",
            metadata,
            Column("name", String(64), primary_key=True),
            Column("value", String(255), nullable=False),
        ),
        "batches": Table(
            f"{p}batches",
            metadata,
            Column("id", String(36), primary_key=True),
            Column("parent_id", String(36), nullable=True),
            Column("idempotency_key", ExactString(255), nullable=True),
            Column("metadata", Text, nullable=False),
            Column("total", Integer, nullable=False),
            Column("n_queued", Integer, nullable=False),
            Column("n_running", Integer, nullable=False),
            Column("n_succeeded", Integer, nullable=False),
            Column("n_failed", Integer, nullable=False),
            Column("n_cancelled", Integer, nullable=False),
            Column("created_at", Double, nullable=False),
            Column("updated_at", Double, nullable=False),
            Column("started_at", Double, nullable=True),
            Column("finished_at", Double, nullable=True),
            Column("cancel_requested_at", Double, nullable=True),
            Column("hook_done", Boolean, nullable=False),
            Column("hook_token", String(32), nullable=True),
            Column("hook_deadline", Double, nullable=True),
            UniqueConstraint("idempotency_key", name=f"{p}uq_batches_idempotency"),
            Index(f"{p}ix_batches_parent", "parent_id"),
            Index(f"{p}ix_batches_hook", "hook_done", "finished_at"),
        ),
        "tags": Table(
            f"{p}tags",
            metadata,
            Column("name", ExactString(191), nullable=False),
            Column("value", ExactString(191), nullable=False),
            Column("batch_id", String(36), nullable=False),
            PrimaryKeyConstraint("name", "value", "batch_id"),
            Index(f"{p}ix_tags_batch", "batch_id"),
        ),
        "items": Table(
            f"{p}items",
            metadata,
            Column("batch_id", String(36), nullable=False),
            Column("position", Integer, nullable=False),
            Column("key", ExactString(512), nullable=False),
            Column("payload", _LONG_TEXT, nullable=False),
            Column("state", String(10), nullable=False),
            Column("active", SmallInteger, nullable=False),
            Column("claimable_at", Double, nullable=True),
            Column("cancel_requested", Boolean, nullable=False),
            Column("progress", Double, nullable=False),
            Column("message", Text, nullable=True),
            Column("attempt", Integer, nullable=False),
            Column("error", Text, nullable=True),
            Column("result", _LONG_TEXT, nullable=True),
            Column("token", String(32), nullable=True),
            Column("created_at", Double, nullable=False),
            Column("updated_at", Double, nullable=False),
            Column("started_at", Double, nullable=True),
            Column("finished_at", Double, nullable=True),
            PrimaryKeyConstraint("batch_id", "position"),
            UniqueConstraint("batch_id", "key", name=f"{p}uq_items_key"),
            Index(f"{p}ix_items_state", "batch_id", "state", "position"),
            Index(f"{p}ix_items_claim", "batch_id", "active", "position"),
            Index(f"{p}ix_items_claim_any", "active", "batch_id", "position"),
        ),
    }


# -- where the tables live -----------------------------------------------------------------


@dataclass
class Place:
    """A database, and the prefixes of the tables a test makes in it (dropped after)."""

    name: str
    url: str
    made: list[str]

    def prefix(self) -> str:
        """A new prefix of the test's own."""
        prefix = f"m{secrets.token_hex(4)}_"
        self.made.append(prefix)
        return prefix


@pytest.fixture(
    params=[
        pytest.param("sqlite", id="sqlite"),
        pytest.param("postgres", id="postgres"),
        pytest.param("mysql", id="mariadb"),
    ]
)
def place(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Place]:
    yield from _place(request.param, tmp_path)


def _place(name: str, tmp_path: Path) -> Iterator[Place]:
    if name == "sqlite":
        yield Place(name, f"sqlite+aiosqlite:///{tmp_path / 'app.db'}", [])
        return
    url = POSTGRES_URL if name == "postgres" else MYSQL_URL
    require_server(url, "PostgreSQL" if name == "postgres" else "MariaDB/MySQL")
    made = Place(name, url, [])
    yield made
    anyio.run(_drop_tables, url, made.made)


@pytest.fixture
def sqlite_place(tmp_path: Path) -> Iterator[Place]:
    yield from _place("sqlite", tmp_path)


async def _execute(url: str, *statements: Any) -> None:
    engine = create_async_engine(url)
    try:
        async with engine.begin() as conn:
            for statement in statements:
                await conn.execute(text(statement) if isinstance(statement, str) else statement)
    finally:
        await engine.dispose()


async def make_v1_tables(
    url: str, prefix: str, *, version: str | None = "1", schema: str | None = None
) -> dict[str, Table]:
    """Empty tables of version 1 (with the version row ``version``, if any)."""
    metadata = MetaData(schema=schema)
    tables = v1_tables(metadata, prefix)
    engine = create_async_engine(url)
    try:
        async with engine.begin() as conn:
            await conn.run_sync(metadata.create_all)
            if version is not None:
                await conn.execute(
                    tables["meta"].insert().values(name="schema_version", value=version)
                )
    finally:
        await engine.dispose()
    return tables


async def set_version(url: str, prefix: str, version: str) -> None:
    _, tables = metadata_for(prefix)
    meta = tables.meta
    await _execute(url, update(meta).where(meta.c.name == "schema_version").values(value=version))


async def layout(url: str, prefix: str) -> dict[str, Any]:
    """The tables' columns (name, type, nullable), indexes and primary keys, named without
    the prefix, and the version row."""

    def read(sync: Any) -> dict[str, Any]:
        seen = inspect(sync)
        found: dict[str, Any] = {}
        for field in ("meta", "batches", "tags", "items"):
            name = f"{prefix}{field}"
            if not seen.has_table(name):
                continue
            found[field] = {
                "columns": {
                    c["name"]: (str(c["type"]).split("(")[0].upper(), c["nullable"])
                    for c in seen.get_columns(name)
                },
                "indexes": sorted(
                    (str(ix["name"]).removeprefix(prefix), tuple(ix["column_names"]))
                    for ix in seen.get_indexes(name)
                ),
                "unique": sorted(
                    tuple(u["column_names"]) for u in seen.get_unique_constraints(name)
                ),
                "primary": seen.get_pk_constraint(name)["constrained_columns"],
            }
        if "meta" in found:
            rows = sync.execute(text(f"SELECT name, value FROM {prefix}meta")).all()
            found["version"] = sorted(tuple(r) for r in rows)
        return found

    engine = create_async_engine(url)
    try:
        async with engine.connect() as conn:
            return await conn.run_sync(read)
    finally:
        await engine.dispose()


# -- batches made in tables of version 1 ---------------------------------------------------


async def _generate(ctx: ItemContext) -> dict[str, str]:
    if ctx.key.startswith("bad"):
        raise ValueError(f"{ctx.key} went wrong")
    return {"key": ctx.key}


async def _healed(ctx: ItemContext) -> dict[str, Any]:
    """Every key succeeds now, but ``flaky``, which fails its first attempt."""
    if ctx.key == "flaky" and ctx.attempt == 1:
        raise ConnectionError("flaky: try 1")
    return {"key": ctx.key, "attempt": ctx.attempt}


@dataclass
class Made:
    """Batches in tables of version 1, and what the library said of them."""

    ids: dict[str, str]
    statuses: dict[str, dict[str, Any]]
    items: dict[str, list[dict[str, Any]]]


async def make_v1_batches(url: str, prefix: str) -> Made:
    """Tables of version 1 under ``prefix`` with batches in every state in them.

    Today's batchkit makes the batches in tables of its own, and their rows are copied,
    column by column, into the tables of version 1: rows as a batchkit writes them, in
    the layout the first release created.
    """
    source = f"s{prefix[1:]}"
    async with SQLStorage(url, table_prefix=source) as storage:
        runner = BatchRunner(storage, _generate, concurrency=2, block_warning=None)
        done = await runner.submit(
            ["a", "bad-1", "b"], metadata={"owner": "ada"}, idempotency_key="order-7"
        )
        await runner.run(done.id)
        failed = await runner.submit(
            [{"key": "bad-2", "payload": {"n": 2}}], metadata={"owner": "bob"}
        )
        await runner.run(failed.id)
        queued = await runner.submit(["q1", "q2"], metadata={"owner": "bob", "tier": 1})
        cancelled = await runner.submit(["c1", "c2"])
        await runner.cancel(cancelled.id, reason="not needed")
        running = await runner.submit(["r1", "r2"], metadata={"owner": "ada"})
        # A runner that died holding "r1": its lease runs out soon after.
        claim = await storage.claim(ClaimRequest(lease_seconds=0.5, batch_ids=(running.id,)))
        assert claim is not None
        ids = {
            "done": done.id,
            "failed": failed.id,
            "queued": queued.id,
            "cancelled": cancelled.id,
            "running": running.id,
        }
        made = await _read(runner, ids)
    for status in made.statuses.values():
        status["cancel_reason"] = None  # version 1 kept no reason
    src, _ = metadata_for(source)
    tables = await make_v1_tables(url, prefix)
    engine = create_async_engine(url)
    try:
        async with engine.begin() as conn:
            for field in ("batches", "tags", "items"):
                old = tables[field]
                new = src.tables[f"{source}{field}"]
                names = [c.name for c in old.columns]
                await conn.execute(
                    old.insert().from_select(names, select(*[new.c[n] for n in names]))
                )
            await conn.run_sync(src.drop_all)
    finally:
        await engine.dispose()
    return made


async def _read(runner: BatchRunner, ids: dict[str, str]) -> Made:
    statuses = {}
    items = {}
    for name, batch_id in ids.items():
        statuses[name] = (await runner.status(batch_id)).model_dump(mode="json")
        items[name] = [
            item.model_dump(mode="json", exclude={"errors"})
            for item in await runner.items(batch_id)
        ]
    return Made(ids, statuses, items)


async def check_upgraded(url: str, prefix: str, made: Made) -> None:
    """The old batches read as they did, and a runner runs old and new work to the end."""
    async with SQLStorage(url, table_prefix=prefix, create_schema=False) as storage:
        runner = BatchRunner(
            storage,
            _healed,
            concurrency=2,
            retry=RetryPolicy(max_attempts=2, backoff=0),
            block_warning=None,
        )
        now = await _read(runner, made.ids)
        assert now.statuses == made.statuses
        assert now.items == made.items
        states = {name: s["state"] for name, s in now.statuses.items()}
        assert states == {
            "done": "completed_with_errors",
            "failed": "failed",
            "queued": "queued",
            "cancelled": "cancelled",
            "running": "running",
        }
        bad = await runner.item(made.ids["done"], "bad-1")
        assert bad.error is not None
        assert (bad.error.type, bad.errors) == ("ValueError", [])
        assert (await runner.item(made.ids["done"], "a")).result == {"key": "a"}
        # The tags: listing by metadata.
        bob = await runner.batches(metadata={"owner": "bob"})
        assert [s.batch_id for s in bob] == [made.ids["queued"], made.ids["failed"]]
        # The idempotency key.
        again = await runner.submit(["x"], idempotency_key="order-7")
        assert again.id == made.ids["done"]

        # Old work, run to the end: the queued batch, the one a dead runner held, and the
        # failed items of a finished batch, retried.
        assert (await runner.run(made.ids["queued"])).state is BatchState.COMPLETED
        ended = await runner.run(made.ids["running"])
        assert (ended.state, ended.counts[ItemState.SUCCEEDED]) == (BatchState.COMPLETED, 2)
        retry = await runner.retry_failed(made.ids["done"])
        assert retry.parent_id == made.ids["done"]
        assert (await runner.run(retry.id)).state is BatchState.COMPLETED
        assert [i.key for i in await runner.items(retry.id)] == ["bad-1"]

        # New work, with what version 2 added: a failure limit, an attempt history, a
        # cancel reason.
        new = await runner.submit(["n1", "flaky"], metadata={"owner": "cy"}, max_failures=5)
        final = await runner.run(new.id)
        assert (final.state, final.max_failures) == (BatchState.COMPLETED, 5)
        flaky = await runner.item(new.id, "flaky")
        assert [e.message for e in flaky.errors] == ["flaky: try 1"]
        stopped = await runner.submit(["s1"])
        assert (await runner.cancel(stopped.id, reason="changed my mind")).cancel_reason == (
            "changed my mind"
        )


# -- the command line ----------------------------------------------------------------------


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    """``python -m batchkit schema ARGS`` in a process of its own, as a person runs it."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("BATCHKIT_STORAGE", None)
    return subprocess.run(
        [sys.executable, "-m", "batchkit", "schema", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@dataclass
class Said:
    code: int
    out: str
    err: str


def _main(capsys: pytest.CaptureFixture[str], *args: str) -> Said:
    """``python -m batchkit schema ARGS`` in this process (its own start costs seconds)."""
    code = main(["schema", *args])
    out, err = capsys.readouterr()
    return Said(code, out, err)


# -- the upgrade of tables with rows in them -------------------------------------------------


async def test_the_command_upgrades_version_1_tables_with_their_batches(place: Place) -> None:
    prefix = place.prefix()
    place.made.append(f"s{prefix[1:]}")
    made = await make_v1_batches(place.url, prefix)
    assert await schema_version(place.url, table_prefix=prefix) == 1
    refused = SQLStorage(place.url, table_prefix=prefix, create_schema=False)
    try:
        with pytest.raises(SchemaVersionMismatch, match="schema version '1'"):
            await refused.open()
    finally:
        await refused.aclose()

    done = await anyio.to_thread.run_sync(
        _cli, "upgrade", "--storage", place.url, "--prefix", prefix
    )
    assert (done.returncode, done.stderr) == (EXIT_OK, "")
    assert done.stdout == (
        f"upgraded the tables with prefix {prefix!r} from schema version 1 to {SCHEMA_VERSION}\n"
    )
    assert await schema_version(place.url, table_prefix=prefix) == SCHEMA_VERSION
    await check_upgraded(place.url, prefix, made)


async def test_a_dry_run_changes_nothing_and_an_upgrade_gives_a_new_install_s_layout_once(
    place: Place,
) -> None:
    old, new = place.prefix(), place.prefix()
    await make_v1_tables(place.url, old)
    before = await layout(place.url, old)
    dry = await upgrade_schema(place.url, table_prefix=old, dry_run=True)
    assert (dry.from_version, dry.needed, dry.applied) == (1, True, False)
    dialect = {"sqlite": "sqlite", "postgres": "postgresql", "mysql": "mysql"}[place.name]
    # Connected to MariaDB, SQLAlchemy quotes MariaDB's own keywords (`history`) too.
    found = [s.replace("`", "") for s in dry.statements]
    assert found == upgrade_statements(dialect, old, from_version=1)
    assert await layout(place.url, old) == before

    done = await upgrade_schema(place.url, table_prefix=old)
    assert done == SchemaUpgrade(old, 1, SCHEMA_VERSION, dry.statements, applied=True)
    async with SQLStorage(place.url, table_prefix=new):
        pass  # a new install
    upgraded, fresh = await layout(place.url, old), await layout(place.url, new)
    assert upgraded == fresh
    assert fresh["version"] == [("schema_version", str(SCHEMA_VERSION))]

    again = await upgrade_schema(place.url, table_prefix=old)
    assert again == SchemaUpgrade(old, SCHEMA_VERSION, SCHEMA_VERSION, (), applied=False)
    assert await layout(place.url, old) == upgraded


async def test_a_newer_version_is_refused_and_nothing_changes(place: Place) -> None:
    prefix = place.prefix()
    await make_v1_tables(place.url, prefix, version=str(SCHEMA_VERSION + 1))
    before = await layout(place.url, prefix)
    with pytest.raises(SchemaVersionMismatch, match="newer than this batchkit's"):
        await upgrade_schema(place.url, table_prefix=prefix)
    with pytest.raises(SchemaVersionMismatch, match="newer than this batchkit's"):
        await schema_version(place.url, table_prefix=prefix)
    assert await layout(place.url, prefix) == before


async def test_an_interrupted_upgrade_goes_on_from_where_it_stopped(
    place: Place, monkeypatch: pytest.MonkeyPatch
) -> None:
    """PostgreSQL and SQLite roll the whole upgrade back; MariaDB keeps the changes made
    before the fault (each ALTER TABLE commits), and the next upgrade makes the rest."""
    prefix = place.prefix()
    await make_v1_tables(place.url, prefix)
    run = AsyncConnection.exec_driver_sql
    sent: list[str] = []

    async def cut_after_one(self: AsyncConnection, statement: str, *args: Any) -> Any:
        if sent:
            raise ConnectionResetError("the connection went away")
        sent.append(statement)
        return await run(self, statement, *args)

    monkeypatch.setattr(AsyncConnection, "exec_driver_sql", cut_after_one)
    with pytest.raises(StorageError, match="the connection went away"):
        await upgrade_schema(place.url, table_prefix=prefix)
    monkeypatch.undo()
    assert await schema_version(place.url, table_prefix=prefix) == 1
    batches = (await layout(place.url, prefix))["batches"]["columns"]
    assert ("cancel_reason" in batches) is (place.name == "mysql")

    done = await upgrade_schema(place.url, table_prefix=prefix)
    assert len(done.statements) == (3 if place.name == "mysql" else 4)
    assert any("cancel_reason" in s for s in done.statements) is (place.name != "mysql")
    async with SQLStorage(place.url, table_prefix=prefix, create_schema=False) as storage:
        runner = BatchRunner(storage, _healed, block_warning=None)
        batch = await runner.submit(["a"])
        assert (await runner.run(batch.id)).state is BatchState.COMPLETED


async def test_tables_without_a_version_row_get_the_changes_they_lack_and_the_row(
    place: Place,
) -> None:
    """Tables made by migrations that wrote no version row: each change is looked for."""
    prefix = place.prefix()
    await make_v1_tables(place.url, prefix, version=None)
    assert await schema_version(place.url, table_prefix=prefix) is None
    done = await upgrade_schema(place.url, table_prefix=prefix)
    assert (done.from_version, len(done.statements)) == (None, 4)
    assert done.statements[-1].startswith("INSERT INTO")
    assert await schema_version(place.url, table_prefix=prefix) == SCHEMA_VERSION


async def test_current_tables_stamped_with_version_1_are_only_stamped(place: Place) -> None:
    """Tables of today's layout, stamped "1" by migrations that followed an older page
    of the docs: nothing to add, the version row is set right."""
    prefix = place.prefix()
    async with SQLStorage(place.url, table_prefix=prefix):
        pass
    await set_version(place.url, prefix, "1")
    done = await upgrade_schema(place.url, table_prefix=prefix)
    assert [s.split()[0] for s in done.statements] == ["UPDATE"]
    async with SQLStorage(place.url, table_prefix=prefix, create_schema=False):
        pass


async def test_an_upgrade_of_tables_in_a_postgresql_schema() -> None:
    """The schema named by ``schema=``, or by the URL's ``?schema=`` as a storage reads it."""
    require_server(POSTGRES_URL, "PostgreSQL")
    schema, prefix = f"m{secrets.token_hex(4)}", "batchkit_"
    await _execute(POSTGRES_URL, f"CREATE SCHEMA {schema}")
    try:
        await make_v1_tables(POSTGRES_URL, prefix, schema=schema)
        assert await schema_version(POSTGRES_URL, table_prefix=prefix, schema=schema) == 1
        done = await upgrade_schema(f"{POSTGRES_URL}?schema={schema}", table_prefix=prefix)
        assert len(done.statements) == 4
        assert all(f" {schema}.{prefix}" in s for s in done.statements), done.statements
        async with SQLStorage(
            POSTGRES_URL, table_prefix=prefix, schema=schema, create_schema=False
        ):
            pass
    finally:
        await _execute(POSTGRES_URL, f"DROP SCHEMA {schema} CASCADE")


# -- what the command says, on SQLite --------------------------------------------------------


def test_the_command_shows_the_version(
    sqlite_place: Place, capsys: pytest.CaptureFixture[str]
) -> None:
    prefix = sqlite_place.prefix()
    anyio.run(make_v1_tables, sqlite_place.url, prefix)
    where = ("--storage", sqlite_place.url, "--prefix", prefix)
    shown = _main(capsys, "version", *where)
    assert (shown.code, shown.err) == (EXIT_OK, "")
    assert shown.out == (
        f"the tables with prefix {prefix!r}: schema version 1; this batchkit's: {SCHEMA_VERSION}\n"
        "upgrade them with python -m batchkit schema upgrade (--sql prints its SQL)\n"
    )
    assert json.loads(_main(capsys, "version", *where, "--json").out) == {
        "table_prefix": prefix,
        "stored_version": 1,
        "current_version": SCHEMA_VERSION,
        "upgrade_needed": True,
    }
    assert _main(capsys, "upgrade", *where).code == EXIT_OK
    again = _main(capsys, "upgrade", *where)
    assert (again.code, again.out) == (
        EXIT_OK,
        f"the tables with prefix {prefix!r} are current: schema version {SCHEMA_VERSION}\n",
    )
    current = _main(capsys, "version", *where)
    assert current.out == (
        f"the tables with prefix {prefix!r}: schema version {SCHEMA_VERSION}; "
        f"this batchkit's: {SCHEMA_VERSION}\n"
    )


def test_the_command_prints_the_sql_and_changes_nothing(
    sqlite_place: Place, capsys: pytest.CaptureFixture[str]
) -> None:
    prefix = sqlite_place.prefix()
    anyio.run(make_v1_tables, sqlite_place.url, prefix)
    before = anyio.run(layout, sqlite_place.url, prefix)
    where = ("--storage", sqlite_place.url, "--prefix", prefix)
    done = _main(capsys, "upgrade", *where, "--sql")
    assert (done.code, done.err) == (EXIT_OK, "")
    assert anyio.run(layout, sqlite_place.url, prefix) == before
    assert done.out.splitlines() == [
        f"-- the tables with prefix {prefix!r} from schema version 1 to 2",
        f"ALTER TABLE {prefix}batches ADD COLUMN cancel_reason TEXT;",
        f"ALTER TABLE {prefix}batches ADD COLUMN max_failures INTEGER;",
        f"ALTER TABLE {prefix}items ADD COLUMN history TEXT;",
        f"UPDATE {prefix}meta SET value='2' WHERE {prefix}meta.name = 'schema_version';",
    ]
    # What it printed is what a person applies by hand.
    with sqlite3.connect(sqlite_place.url.partition(":///")[2]) as db:
        db.executescript(done.out)
    assert anyio.run(_version_of, sqlite_place.url, prefix) == SCHEMA_VERSION
    current = _main(capsys, "upgrade", *where, "--sql")
    assert current.out == (
        f"-- the tables with prefix {prefix!r} are current: schema version {SCHEMA_VERSION}\n"
    )
    assert json.loads(_main(capsys, "upgrade", *where, "--sql", "--json").out) == {
        "table_prefix": prefix,
        "from_version": SCHEMA_VERSION,
        "to_version": SCHEMA_VERSION,
        "statements": [],
        "applied": False,
        "needed": False,
    }


def test_the_command_refuses_a_newer_version(
    sqlite_place: Place, capsys: pytest.CaptureFixture[str]
) -> None:
    prefix = sqlite_place.prefix()
    anyio.run(partial(make_v1_tables, sqlite_place.url, prefix, version="99"))
    for command in ("upgrade", "version"):
        done = _main(capsys, command, "--storage", sqlite_place.url, "--prefix", prefix)
        assert (done.code, done.out) == (EXIT_FAILED, "")
        assert done.err == (
            f"python -m batchkit schema {command}: the tables with prefix {prefix!r} have "
            f"schema version 99, newer than this batchkit's ({SCHEMA_VERSION}): install the "
            "batchkit that wrote them, or a later one; no batchkit takes tables back to an "
            "older version\n"
        )


def test_the_command_creates_no_table_nor_database(
    sqlite_place: Place, capsys: pytest.CaptureFixture[str]
) -> None:
    path = Path(sqlite_place.url.partition(":///")[2])
    for command in ("upgrade", "version"):
        done = _main(capsys, command, "--storage", sqlite_place.url)
        assert (done.code, done.err) == (
            EXIT_FAILED,
            f"python -m batchkit schema {command}: no SQLite database at {path}\n",
        )
    assert not path.exists()
    sqlite3.connect(path).close()
    for command in ("upgrade", "version"):
        done = _main(capsys, command, "--storage", sqlite_place.url, "--prefix", "typo_")
        assert done.code == EXIT_FAILED
        assert "no batchkit tables with the prefix 'typo_' here" in done.err
    with sqlite3.connect(path) as db:
        assert db.execute("SELECT name FROM sqlite_master").fetchall() == []


@pytest.mark.parametrize(
    ("url", "said"),
    [
        pytest.param("postgresql+asyncpg://u:S3cretPW@127.0.0.1:1/x", "cannot open", id="down"),
        pytest.param(
            "postgresql+asyncpg://u:S3cretPW@127.0.0.1:9/x?sslmode=bogus", "sslmode", id="option"
        ),
        pytest.param("mysql+asyncmy://u:S3cretPW@[::1/x", "cannot be parsed", id="unparsable"),
        pytest.param("postgresql://u:S3cretPW@127.0.0.1:9/x", "synchronous", id="sync-driver"),
        pytest.param("redis://:S3cretPW@127.0.0.1:9/0", "only SQL storages", id="redis"),
    ],
)
def test_a_bad_or_unreachable_store_is_a_message_not_a_traceback(
    url: str, said: str, capsys: pytest.CaptureFixture[str]
) -> None:
    done = _main(capsys, "upgrade", "--storage", url)
    assert done.code == (EXIT_USAGE if "redis" in url else EXIT_FAILED)
    assert said in done.err
    assert "Traceback" not in done.err
    assert "S3cretPW" not in done.out + done.err


# -- the statements ------------------------------------------------------------------------


def test_the_statements_of_each_dialect_name_the_prefix_and_the_schema() -> None:
    for dialect in ("sqlite", "postgresql", "mysql", "mariadb"):
        found = upgrade_statements(dialect, "app_", from_version=1, schema="jobs")
        assert len(found) == 4
        assert all(" jobs.app_" in s for s in found), found
        history = "LONGTEXT" if dialect in ("mysql", "mariadb") else "TEXT"
        assert found[2].endswith(f"history {history}") or found[2].endswith(f"`history` {history}")
    assert upgrade_statements("sqlite", from_version=SCHEMA_VERSION) == []
    created = create_statements("postgresql", "app_")
    assert created[0].startswith("CREATE TABLE app_meta")
    assert created[-1] == (
        f"INSERT INTO app_meta (name, value) VALUES ('schema_version', '{SCHEMA_VERSION}')"
    )
    with pytest.raises(ValueError, match="not a schema version"):
        upgrade_statements("sqlite", from_version=0)
    with pytest.raises(SchemaVersionMismatch, match="newer"):
        upgrade_statements("sqlite", from_version=SCHEMA_VERSION + 1)
    with pytest.raises(ValueError, match="dialect 'oracle'"):
        upgrade_statements("oracle", from_version=1)


# -- inside an Alembic history -----------------------------------------------------------------

_ENV = """\
import asyncio

from alembic import context
from sqlalchemy.ext.asyncio import create_async_engine

{extra}


def run(connection):
    context.configure(
        connection=connection,
        target_metadata={target},
        version_table="{prefix}alembic_version",
        {configure}
    )
    with context.begin_transaction():
        context.run_migrations()


async def main():
    engine = create_async_engine(context.config.get_main_option("sqlalchemy.url"))
    async with engine.connect() as connection:
        await connection.run_sync(run)
        await connection.commit()
    await engine.dispose()


asyncio.run(main())
"""

_CREATE = """\
from alembic import op

from batchkit.storage.sql import create_statements

revision = "0001"
down_revision = None


def upgrade() -> None:
    for statement in create_statements(op.get_context().dialect, "{prefix}"):
        op.execute(statement)
"""

_UPGRADE = """\
from alembic import op

from batchkit.storage.sql import pending_statements

revision = "0002"
down_revision = "0001"


def upgrade() -> None:
    for statement in pending_statements(op.get_bind(), "{prefix}"):
        op.execute(statement)
"""


def _alembic(tmp_path: Path, url: str, prefix: str, env: str) -> Any:
    from alembic.config import Config

    home = tmp_path / f"alembic-{prefix}"
    (home / "versions").mkdir(parents=True)
    (home / "env.py").write_text(env)
    template = Path(__import__("alembic").__file__).parent / "templates/generic/script.py.mako"
    (home / "script.py.mako").write_text(template.read_text())
    config = Config()
    config.set_main_option("script_location", str(home))
    config.set_main_option("sqlalchemy.url", url)
    return config


@pytest.mark.parametrize("place", ["sqlite", "postgres"], indirect=True)
def test_batchkit_revisions_in_an_alembic_history(place: Place, tmp_path: Path) -> None:
    """A history whose first revision creates batchkit's tables and whose second brings
    them to the installed batchkit's version: on a new database, and on tables of
    version 1 that batchkit made before the app adopted Alembic (stamped, then upgraded)."""
    from alembic import command

    for adopting in (False, True):
        prefix = place.prefix()
        place.made.append(f"s{prefix[1:]}")
        config = _alembic(
            tmp_path,
            place.url,
            prefix,
            _ENV.format(extra="", target="None", prefix=prefix, configure=""),
        )
        versions = Path(config.get_main_option("script_location")) / "versions"
        (versions / "0001_batchkit.py").write_text(_CREATE.format(prefix=prefix))
        (versions / "0002_batchkit_upgrade.py").write_text(_UPGRADE.format(prefix=prefix))
        made = None
        if adopting:
            made = anyio.run(make_v1_batches, place.url, prefix)
            command.stamp(config, "0001")
        try:
            command.upgrade(config, "head")
            command.upgrade(config, "head")  # at head: nothing runs
            assert anyio.run(_version_of, place.url, prefix) == SCHEMA_VERSION
            if made is not None:
                anyio.run(check_upgraded, place.url, prefix, made)
        finally:
            anyio.run(_execute, place.url, f"DROP TABLE IF EXISTS {prefix}alembic_version")


def test_an_autogenerated_revision_with_the_version_row(tmp_path: Path) -> None:
    """Autogenerate writes batchkit's tables (the hook in env.py adds the import of its
    column type); the revision then writes the version row with `pending_statements`."""
    from alembic import command

    url = f"sqlite+aiosqlite:///{tmp_path / 'app.db'}"
    prefix = "batchkit_"
    hook = """\
from batchkit.storage.sql import metadata_for

batchkit_metadata, _ = metadata_for("batchkit_")


def render_item(type_, obj, autogen_context):
    if type_ == "type" and type(obj).__module__.startswith("batchkit."):
        autogen_context.imports.add(f"import {type(obj).__module__}")
    return False
"""
    config = _alembic(
        tmp_path,
        url,
        prefix,
        _ENV.format(
            extra=hook,
            target="batchkit_metadata",
            prefix=prefix,
            configure="render_item=render_item,",
        ),
    )
    script = command.revision(config, message="batchkit tables", autogenerate=True, rev_id="0001")
    path = Path(script.path)  # type: ignore[union-attr]
    written = path.read_text()
    assert "import batchkit.storage.sql.schema\n" in written
    assert "batchkit.storage.sql.schema.ExactString(length=255)" in written
    assert "batchkit.storage.sql.schema.LongText()" in written
    marker = "    # ### end Alembic commands ###"
    imported = "import batchkit.storage.sql.schema\n"
    path.write_text(
        written.replace(
            imported, imported + "from batchkit.storage.sql import pending_statements\n", 1
        ).replace(
            marker,
            marker
            + '\n    for statement in pending_statements(op.get_bind(), "batchkit_"):\n'
            + "        op.execute(statement)",
            1,
        )
    )
    command.upgrade(config, "head")
    assert anyio.run(_version_of, url, prefix) == SCHEMA_VERSION


async def _version_of(url: str, prefix: str) -> int | None:
    async with SQLStorage(url, table_prefix=prefix, create_schema=False):
        pass
    return await schema_version(url, table_prefix=prefix)
