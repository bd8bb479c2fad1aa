"""Which SQL errors can pass (retry the transaction) and which cannot (StorageError)."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError

if TYPE_CHECKING:
    from collections.abc import Iterator

__all__ = [
    "broken_driver_connection",
    "is_broken_connection",
    "is_driver_error",
    "is_transient",
    "is_transient_driver_error",
]

# PostgreSQL SQLSTATEs: serialization failure, deadlock, admin shutdown
# (pg_terminate_backend), crash shutdown, cannot connect now, connection exceptions.
_PG_TRANSIENT = {"40001", "40P01", "57P01", "57P02", "57P03"}
# MySQL/MariaDB error numbers: deadlock, lock wait timeout, server gone away, lost
# connection, connection killed (MariaDB KILL), client disconnected (MySQL 8).
_MYSQL_TRANSIENT = {1205, 1213, 2002, 2003, 2006, 2013, 1927, 4031, 1053}
_BUSY = re.compile(r"another operation (\(\d+\) )?is in progress", re.IGNORECASE)
# The drivers whose own errors can reach us past SQLAlchemy's wrapping.
_DRIVERS = ("asyncpg", "psycopg", "asyncmy", "pymysql", "aiosqlite", "sqlite3")


def _sqlstate(orig: BaseException | None) -> str | None:
    for attr in ("sqlstate", "pgcode"):
        value = getattr(orig, attr, None)
        if isinstance(value, str):
            return value
    cause = getattr(orig, "__cause__", None)
    if cause is not None and cause is not orig:
        value = getattr(cause, "sqlstate", None)
        if isinstance(value, str):
            return value
    return None


def is_transient(exc: BaseException) -> bool:
    """Whether retrying the whole transaction may succeed (a dropped or busy connection)."""
    if isinstance(exc, DBAPIError):
        if exc.connection_invalidated:
            return True
        orig = exc.orig
        state = _sqlstate(orig)
        if state is not None and (state in _PG_TRANSIENT or state.startswith("08")):
            return True
        args = getattr(orig, "args", ())
        if args and isinstance(args[0], int) and args[0] in _MYSQL_TRANSIENT:
            return True
        text = str(orig).lower()
        if "database is locked" in text or "database is busy" in text:
            return True  # SQLite past its busy timeout
        if broken_driver_connection(exc):
            return True
        return bool(
            isinstance(exc, OperationalError | InterfaceError)
            and ("connection" in text and ("closed" in text or "lost" in text or "reset" in text))
        )
    return isinstance(exc, ConnectionError | TimeoutError)


def is_driver_error(exc: BaseException) -> bool:
    """Whether ``exc`` is a database driver's own error, not wrapped by SQLAlchemy."""
    return type(exc).__module__.partition(".")[0] in _DRIVERS


def is_broken_connection(exc: BaseException) -> bool:
    """Whether a driver's error leaves its connection unusable (drop it, open another)."""
    if isinstance(exc, OSError):  # ConnectionError and TimeoutError among them
        return True
    state = _sqlstate(exc)
    if state is not None and state.startswith("08"):
        return True
    # asyncpg, on a connection the server dropped while a statement was under way:
    # "cannot switch to state 15; another operation (2) is in progress".
    return _BUSY.search(str(exc)) is not None


def is_transient_driver_error(exc: BaseException) -> bool:
    """The same question for an error raised by a driver directly (asyncpg, sqlite3)."""
    if is_broken_connection(exc):
        return True  # a new connection is not
    if _sqlstate(exc) in _PG_TRANSIENT:
        return True
    text = str(exc).lower()
    return "database is locked" in text or "database is busy" in text


def _causes(exc: BaseException) -> Iterator[BaseException]:
    """``exc``, then what it wraps: a DBAPIError's driver error, each one's cause."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        orig = getattr(current, "orig", None)
        current = orig if isinstance(orig, BaseException) else current.__cause__


def broken_driver_connection(exc: BaseException) -> bool:
    """Whether a driver's error in ``exc`` (raw or wrapped) left its connection unusable."""
    return any(is_driver_error(e) and is_broken_connection(e) for e in _causes(exc))
