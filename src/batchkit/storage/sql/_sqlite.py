"""SQLite (aiosqlite): one writer at a time, WAL, and whole transactions in one thread call."""

from __future__ import annotations

import logging
import os
import sqlite3
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any, TypeVar

import anyio
from sqlalchemy import Integer, String, event
from sqlalchemy import cast as sql_cast
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import make_url
from sqlalchemy.pool import StaticPool

from ...exceptions import InvalidStorageURL
from . import _aiosqlite_fast
from ._connector import AS_GIVEN, Lanes, Result
from ._dialect import Dialect, OnLanes
from ._faults import DriverFault
from ._filewatch import WORK_COUNT, FileWatch

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Callable

    from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

    from .._bell import Flag
    from ._connector import Connector, Lane, Sent
    from ._statements import Params, Statements, Steps

__all__ = ["SQLiteDialect", "SQLiteLanesDialect"]

T = TypeVar("T")

logger = logging.getLogger("batchkit.storage.sql")


#: The options of the sqlite3 module a SQLite URL's query may set (SQLAlchemy's list).
_SQLITE_QUERY = (
    "uri",
    "timeout",
    "isolation_level",
    "detect_types",
    "check_same_thread",
    "cached_statements",
)


def _check_query(url: str) -> None:
    """Refuse an option of a SQLite URL's query that nothing would read (a typo would
    otherwise be dropped without a word). With ``uri=true`` the rest is SQLite's own URI
    query (``mode=ro``, ``cache=shared``...), which SQLite reads itself."""
    query = make_url(url).query
    if str(query.get("uri", "")).lower() in ("1", "true", "yes", "on"):
        return
    unknown = sorted(set(query) - set(_SQLITE_QUERY))
    if unknown:
        raise InvalidStorageURL(
            f"the storage URL's option {unknown[0]!r} is not one SQLite takes; it takes: "
            f"{', '.join(_SQLITE_QUERY)} (with uri=true, SQLite's own URI options too)"
        )


class SQLiteDialect(Dialect):
    """SQLite through SQLAlchemy: WAL mode, a busy timeout, the write lock taken up front
    (``BEGIN IMMEDIATE``), and this process's writers queued on a lock of their own.

    Used as it is for a shared in-memory database (one connection for everyone), or when
    aiosqlite cannot run a whole transaction per call; otherwise `SQLiteLanesDialect`.
    """

    # A database file is the only place for the tables (an ATTACHed file would have to be
    # attached on every connection): `SQLStorage` refuses a schema here.
    has_schemas = False

    def __init__(self, connector: Connector, statements: Statements, prefix: str) -> None:
        super().__init__(connector, statements, prefix)
        # SQLite has one writer at a time: this process's writers queue here instead of
        # polling the file lock through the busy timeout.
        self._write_lock = anyio.Lock()

    @classmethod
    def engine_options(cls, url: str, connector: Connector) -> dict[str, Any]:
        _check_query(url)
        path = url.partition("://")[2].lstrip("/")
        if path in ("", ":memory:") or "mode=memory" in url:
            return {"poolclass": StaticPool}
        return {}

    @classmethod
    def for_engine(
        cls, engine: AsyncEngine, connector: Connector, statements: Statements, prefix: str
    ) -> Dialect:
        _configure(engine)
        # A shared in-memory database has one connection for everyone: no lanes.
        if (
            engine.dialect.driver == "aiosqlite"
            and not isinstance(engine.pool, StaticPool)
            and _aiosqlite_fast.available()
        ):
            return SQLiteLanesDialect(connector, statements, prefix)
        return cls(connector, statements, prefix)

    # On SQLite, BEGIN IMMEDIATE already serialises the processes creating the tables:
    # `schema_lock` takes no lock of its own. Its clock is this machine's.

    def driver_transient(self, orig: BaseException | None) -> bool:
        return _busy(orig)

    def raw_transient(self, exc: BaseException) -> bool:
        return _busy(exc)

    async def serialize(self, attempt: Callable[[], Awaitable[T]]) -> T:
        async with self._write_lock:
            return await attempt()

    async def exec(self, conn: AsyncConnection, stmt: Any, params: Params) -> Result:
        """Execute one statement of a transaction in one hop to the driver's thread.

        SQLAlchemy's aiosqlite adapter makes several hops to the driver's thread per
        statement (cursor, execute, fetch, close); the compiled SQL sent straight through
        the same connection (so inside the same transaction) costs one.
        """
        if isinstance(params, list) or not self.connector.is_cached(stmt):
            return await super().exec(conn, stmt, params)
        sql, args, row_type = self.connector.plan(stmt, params)
        raw = (await conn.get_raw_connection()).driver_connection
        assert raw is not None
        fetched = await raw.execute_fetchall(sql, args)
        if row_type is None:
            return Result([], -1)
        if row_type is AS_GIVEN:
            return Result(list(fetched), len(fetched))
        return Result([row_type(*row) for row in fetched], len(fetched))

    def counted(self, stmt: Any, column: Any) -> Any:
        # `execute_fetchall` tells no row count: the rows returned count the rows updated.
        return stmt.returning(column)

    # -- new work --------------------------------------------------------------------------

    def work_notice(self) -> Any:
        # A count of new work in the meta table (made by the first work), which
        # `_FileWatch` reads in the other processes when the file changed.
        meta = self.statements.tables.meta

        def build() -> Any:
            moved = sql_cast(sql_cast(meta.c.value, Integer) + 1, String)
            return (
                sqlite_insert(meta)
                .values(name=WORK_COUNT, value="1")
                .on_conflict_do_update(index_elements=[meta.c.name], set_={"value": moved})
            )

        return self.connector.stmt("sqlite_work_notice", build)

    @asynccontextmanager
    async def relay_work(self, flag: Flag, poll_interval: float) -> AsyncIterator[None]:
        path = _file_of(self.connector.engine)
        watch = None if path is None else FileWatch.open(path, self.statements.tables.meta.name)
        if watch is None:
            yield
            return
        async with watch.ringing(flag):
            yield


class SQLiteLanesDialect(OnLanes, SQLiteDialect):
    """SQLite with each hot-path transaction run whole in ONE call to aiosqlite's thread,
    on a connection kept out of the pool (`_aiosqlite_fast`)."""

    def __init__(self, connector: Connector, statements: Statements, prefix: str) -> None:
        super().__init__(connector, statements, prefix)
        self._lanes = Lanes(connector, cap=connector.lanes_cap(1))
        # Readers do not wait for the writer (WAL): their own connections.
        self._readers = Lanes(connector, cap=connector.lanes_cap(2, beside=2))

    async def _on_lane(self, lane: Lane, steps: Steps[T], transaction: bool) -> T:
        """Run ``steps`` (as one transaction, or each statement on its own) in ONE call to
        the SQLite driver's thread."""
        run = self._transaction if transaction else self._drive
        try:
            return await _aiosqlite_fast.run_in_thread(lane.driver, run, steps)
        except sqlite3.Error as exc:
            raise DriverFault(exc, transient=self.is_transient_driver_error(exc)) from exc

    def _transaction(self, db: sqlite3.Connection, steps: Steps[T]) -> T:
        # In the driver's thread: BEGIN IMMEDIATE, every statement, COMMIT.
        db.execute("BEGIN IMMEDIATE")
        try:
            value = self._drive(db, steps)
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise
        return value

    def _drive(self, db: sqlite3.Connection, steps: Steps[T]) -> T:
        def run(sent: Sent) -> Result:
            if sent.many is not None:
                db.executemany(sent.sql, sent.many).close()
                return Result([], len(sent.many))
            cursor = db.execute(sent.sql, sent.args)
            try:
                if sent.row_type is None:
                    return Result([], cursor.rowcount)
                rows = cursor.fetchall()
                if sent.row_type is not AS_GIVEN:
                    rows = [sent.row_type(*row) for row in rows]
                return Result(rows, len(rows))
            finally:
                cursor.close()

        return self.connector.drive_here(steps, run)


def _file_of(engine: AsyncEngine) -> str | None:
    """The database file of ``engine``, or `None` (in memory, or named by a URI)."""
    url = engine.url
    database = url.database
    if (
        not database
        or database == ":memory:"
        or database.startswith("file:")
        or str(url.query.get("uri", "")).lower() in ("1", "true", "yes", "on")
    ):
        return None
    return os.path.realpath(database)


def _busy(exc: BaseException | None) -> bool:
    """Whether SQLite gave up waiting for its lock (past its busy timeout)."""
    text = str(exc).lower()
    return "database is locked" in text or "database is busy" in text


def _configure(engine: AsyncEngine) -> None:
    # Once per engine: storages sharing a host's engine, or opened again, would otherwise
    # each add a listener, and the second BEGIN would fail inside the first.
    sync_engine = engine.sync_engine
    if not event.contains(sync_engine, "begin", _begin):
        event.listen(sync_engine, "connect", _connect)
        event.listen(sync_engine, "begin", _begin)


def _connect(dbapi_connection: Any, _record: Any) -> None:
    # Let SQLAlchemy's "begin" event issue BEGIN itself (the driver would defer it).
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    # The busy timeout first: switching a new file to WAL needs its lock, which another
    # process opening the same file at the same moment may hold.
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


def _begin(conn: Any) -> None:
    # Writers take the write lock up front, so two transactions never both read and
    # then fail to upgrade; readers take none.
    if conn.get_execution_options().get("batchkit_read"):
        conn.exec_driver_sql("BEGIN")
    else:
        conn.exec_driver_sql("BEGIN IMMEDIATE")
