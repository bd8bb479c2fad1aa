"""MySQL and MariaDB (asyncmy): named locks, no ``UPDATE ... RETURNING``, and the hot path
sent to asyncmy directly on kept connections."""

from __future__ import annotations

from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any, TypeVar

import anyio
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from ...exceptions import StorageError
from ...protocols import LeaseStatus
from ._connector import AS_GIVEN, Lanes, Result
from ._dialect import Dialect, OnLanes, fitted
from ._faults import DriverFault, is_driver_error

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

    from ._connector import Connector, Lane, Sent
    from ._statements import Statements, Steps

__all__ = ["AsyncmyDialect", "MySQLDialect"]

T = TypeVar("T")

# Error numbers: deadlock, lock wait timeout, then those that leave the connection
# unusable: server gone away, lost connection, can't connect (2), connection killed
# (MariaDB KILL), client disconnected (MySQL 8), server shutting down.
_BROKEN = {2002, 2003, 2006, 2013, 1927, 4031, 1053}
_TRANSIENT = {1205, 1213, *_BROKEN}
#: Connections a MySQL/MariaDB storage on asyncmy keeps for its hot path between steps.
_LANES = 4
#: Error number: access denied for a user to a database.
_DB_ACCESS_DENIED = 1044
#: The longest name GET_LOCK takes.
_LOCK_NAME_LIMIT = 64


class MySQLDialect(Dialect):
    """MySQL 8+ and MariaDB 10.6+: ``SKIP LOCKED`` claims (with forced indexes, see
    `force_index`), ``GET_LOCK`` around the schema's creation, polling for `subscribe`,
    and a second statement where the others read a row back with RETURNING."""

    @classmethod
    def for_engine(
        cls, engine: AsyncEngine, connector: Connector, statements: Statements, prefix: str
    ) -> Dialect:
        if engine.dialect.driver == "asyncmy":
            return AsyncmyDialect(connector, statements, prefix)
        return cls(connector, statements, prefix)

    def driver_transient(self, orig: BaseException | None) -> bool:
        return _code(orig) in _TRANSIENT

    def raw_transient(self, exc: BaseException) -> bool:
        return _code(exc) in _TRANSIENT

    @asynccontextmanager
    async def schema_lock(self, conn: AsyncConnection) -> AsyncIterator[None]:
        name = fitted(f"batchkit:{self.scope}", _LOCK_NAME_LIMIT)
        await conn.execute(text("SELECT GET_LOCK(:name, 60)"), {"name": name})
        try:
            yield
        finally:
            await conn.execute(text("SELECT RELEASE_LOCK(:name)"), {"name": name})

    async def create_schema(self, conn: AsyncConnection) -> None:
        # The storage's schema is a database of the same server; batchkit's text columns
        # hold any character, whatever the server's default character set.
        assert self.schema is not None
        name = conn.dialect.identifier_preparer.quote_schema(self.schema)
        try:
            await conn.execute(text(f"CREATE DATABASE IF NOT EXISTS {name} CHARACTER SET utf8mb4"))
        except DBAPIError as exc:
            args: tuple[Any, ...] = getattr(exc.orig, "args", ())
            if not args or args[0] != _DB_ACCESS_DENIED:
                raise
            raise StorageError(
                f"database {self.schema!r} does not exist (or the storage's user may not "
                f"see it), and the user may not create it: create it (CREATE DATABASE {name} "
                f"CHARACTER SET utf8mb4;) and GRANT ALL ON {name}.* TO the user, or GRANT "
                f"CREATE ON {name}.* TO the user ({self.connector.fault(exc.orig or exc)})"
            ) from self.connector.cause(exc)

    def clock_query(self) -> Any:
        return text("SELECT UNIX_TIMESTAMP(NOW(6))")

    def with_lease_flag(self, stmt: Any, items: Any, *, notify: bool) -> Any:
        return stmt  # no UPDATE ... RETURNING: `lease_status` reads the flag after

    def lease_status(self, stmt: Any, params: dict[str, Any]) -> Steps[LeaseStatus]:
        if (yield stmt, params).rowcount != 1:
            return LeaseStatus(held=False)
        flag = self.statements.lease_flag()
        return LeaseStatus(held=True, cancel_requested=bool((yield flag, params).scalar()))


class AsyncmyDialect(OnLanes, MySQLDialect):
    """MySQL and MariaDB on asyncmy: each step's statements, compiled once, sent to the
    driver directly on a kept connection. Through SQLAlchemy a statement cost about a
    tenth of a millisecond of the client's time beside the driver's own work, and an item
    takes five of them (a claim, a finish and the batch's counters for each)."""

    def __init__(self, connector: Connector, statements: Statements, prefix: str) -> None:
        super().__init__(connector, statements, prefix)
        # One connection of the pool stays free for everything else.
        self._lanes = Lanes(connector, cap=connector.lanes_cap(_LANES, beside=1))
        self._readers = self._lanes

    async def _on_lane(self, lane: Lane, steps: Steps[T], transaction: bool) -> T:
        # The connection is not in autocommit (SQLAlchemy's way; the storage's own
        # statements through SQLAlchemy need it so): its first statement begins a
        # transaction, with no BEGIN to wait for, and the steps run in it whether or not
        # they asked for one, committed at the end (a read must not keep its snapshot
        # for the next).
        driver = lane.driver
        try:
            value = await self._drive_driver(driver, steps)
            await driver.commit()
            return value
        except BaseException as exc:
            with anyio.CancelScope(shield=True):
                await _abandon(lane, exc)
            if isinstance(exc, Exception) and (is_driver_error(exc) or isinstance(exc, OSError)):
                code = _code(exc)
                broken = isinstance(exc, OSError) or code in _BROKEN
                transient = broken or code in _TRANSIENT
                raise DriverFault(exc, transient=transient, broken=broken) from exc
            raise

    async def _drive_driver(self, driver: Any, steps: Steps[T]) -> T:
        async def run(sent: Sent) -> Result:
            async with driver.cursor() as cursor:
                if sent.many is not None:
                    await _executemany(cursor, sent.sql, sent.many)
                    return Result([], len(sent.many))
                await _execute(cursor, sent.sql, sent.args)
                if sent.row_type is None:
                    return Result([], cursor.rowcount)
                rows = await cursor.fetchall()
                if sent.row_type is AS_GIVEN:
                    # As asyncmy gives them: an exact string (``VARBINARY``) as its UTF-8
                    # bytes, which the reader decodes (`to_item`, the key).
                    return Result(list(rows), len(rows))
                return Result([sent.row_type(*_texts(row)) for row in rows], len(rows))

        return await self.connector.drive(steps, run)


async def _abandon(lane: Lane, exc: BaseException) -> None:
    """End the transaction that failed steps left open on ``lane``.

    SQLAlchemy, which never saw it begin, would give the connection back to its pool with
    the transaction open, and the next steps there would commit it. A rollback, where the
    exchange with the server ended cleanly (an error the server sent, one of the steps'
    own between statements); otherwise (a cancellation, a lost connection) the connection
    is closed, and the server rolls back.
    """
    if isinstance(exc, Exception) and not isinstance(exc, OSError) and _code(exc) not in _BROKEN:
        try:
            await lane.driver.rollback()
        except Exception:  # the connection failed too: closing it ends the transaction
            pass
        else:
            return
    await lane.conn.invalidate()


async def _execute(cursor: Any, sql: str, args: list[Any]) -> None:
    """Send one statement (a module function, so that a test may see what is sent)."""
    await cursor.execute(sql, args)


async def _executemany(cursor: Any, sql: str, rows: list[list[Any]]) -> None:
    """Send one statement for each of ``rows``."""
    await cursor.executemany(sql, rows)


def _texts(row: tuple[Any, ...]) -> list[Any]:
    """A row as SQLAlchemy would read it: an exact string's UTF-8 bytes (a ``VARBINARY``
    column, see `ExactString`) as text. (A list, built in one pass: a listing reads a
    thousand rows of sixteen columns a page.)"""
    return [value.decode("utf-8") if type(value) is bytes else value for value in row]


def _code(exc: BaseException | None) -> int | None:
    """A MySQL error's number (its first argument), if it has one."""
    args: tuple[Any, ...] = getattr(exc, "args", ())
    return args[0] if args and isinstance(args[0], int) else None
