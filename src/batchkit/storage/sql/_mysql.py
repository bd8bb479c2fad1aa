"""MySQL and MariaDB (asyncmy): named locks, and no ``UPDATE ... RETURNING``."""

from __future__ import annotations

from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from ...exceptions import StorageError
from ...protocols import LeaseStatus
from ._dialect import Dialect, fitted

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from sqlalchemy.ext.asyncio import AsyncConnection

    from ._statements import Steps

__all__ = ["MySQLDialect"]

# Error numbers: deadlock, lock wait timeout, server gone away, lost connection,
# connection killed (MariaDB KILL), client disconnected (MySQL 8).
_TRANSIENT = {1205, 1213, 2002, 2003, 2006, 2013, 1927, 4031, 1053}
#: Error number: access denied for a user to a database.
_DB_ACCESS_DENIED = 1044
#: The longest name GET_LOCK takes.
_LOCK_NAME_LIMIT = 64


class MySQLDialect(Dialect):
    """MySQL 8+ and MariaDB 10.6+: ``SKIP LOCKED`` claims (with forced indexes, see
    `force_index`), ``GET_LOCK`` around the schema's creation, polling for `subscribe`,
    and a second statement where the others read a row back with RETURNING."""

    def driver_transient(self, orig: BaseException | None) -> bool:
        args: tuple[Any, ...] = getattr(orig, "args", ())
        return bool(args) and isinstance(args[0], int) and args[0] in _TRANSIENT

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
