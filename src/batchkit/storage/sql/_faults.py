"""Which SQL errors can pass (retry the transaction) and which cannot (StorageError).

What holds for every driver is here; what one driver's codes mean is in its dialect's
module (`FaultRules`: ``_sqlite``, ``_postgres``, ``_mysql``).
"""

from __future__ import annotations

import re
import sqlite3
from typing import TYPE_CHECKING

from sqlalchemy.exc import DBAPIError, IntegrityError, InterfaceError, OperationalError

from .._base import Fault

if TYPE_CHECKING:
    from collections.abc import Iterator

__all__ = [
    "DriverFault",
    "FaultRules",
    "broken_driver_connection",
    "is_broken_connection",
    "is_driver_error",
    "sqlstate",
]

_BUSY = re.compile(r"another operation (\(\d+\) )?is in progress", re.IGNORECASE)
# The drivers whose own errors can reach us past SQLAlchemy's wrapping.
_DRIVERS = ("asyncpg", "psycopg", "asyncmy", "pymysql", "aiosqlite", "sqlite3")


def sqlstate(orig: BaseException | None) -> str | None:
    """The SQLSTATE of a driver's error (asyncpg, psycopg), if it has one."""
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


class DriverFault(Exception):
    """An error of a statement sent to the driver directly, past SQLAlchemy."""

    def __init__(self, orig: BaseException, *, transient: bool, broken: bool = False) -> None:
        super().__init__(str(orig))
        self.orig = orig
        self.transient = transient
        self.broken = broken  # the connection is unusable: drop it from the pool


class FaultRules:
    """How one database's driver errors are told apart: a fault to retry, or not.

    A dialect says what its own codes mean (`driver_transient` for an error SQLAlchemy
    wrapped, `raw_transient` for one the driver raised past it); what holds for every
    driver (a dropped connection, a timeout) is decided here.
    """

    def driver_transient(self, orig: BaseException | None) -> bool:
        """Whether the driver error inside a `DBAPIError` is one a retry may get past."""
        return False

    def raw_transient(self, exc: BaseException) -> bool:
        """The same for an error the driver raised directly (not wrapped by SQLAlchemy)."""
        return False

    def is_transient(self, exc: BaseException) -> bool:
        """Whether retrying the whole transaction may succeed (a dropped or busy connection)."""
        if isinstance(exc, DBAPIError):
            if exc.connection_invalidated:
                return True
            orig = exc.orig
            if self.driver_transient(orig):
                return True
            if broken_driver_connection(exc):
                return True
            text = str(orig).lower()
            return bool(
                isinstance(exc, OperationalError | InterfaceError)
                and (
                    "connection" in text and ("closed" in text or "lost" in text or "reset" in text)
                )
            )
        return isinstance(exc, ConnectionError | TimeoutError)

    def is_transient_driver_error(self, exc: BaseException) -> bool:
        """The same question for an error raised by a driver directly (asyncpg, sqlite3)."""
        return is_broken_connection(exc) or self.raw_transient(exc)  # a new connection is not

    def classify(self, exc: Exception) -> Fault | None:
        """What an error of one transaction's try is to `retrying`: a fault of the
        database (to retry, or not) with the driver's own error to show, or `None` for an
        error that is not the database's (a bug), which propagates as it is."""
        if isinstance(exc, DBAPIError):
            return Fault(self.is_transient(exc), exc.orig if exc.orig is not None else exc, exc)
        if isinstance(exc, DriverFault):
            return Fault(exc.transient, exc.orig, exc.orig)
        if isinstance(exc, OSError):  # ConnectionError and TimeoutError among them
            return Fault(transient=True, shown=exc, cause=exc)
        if is_driver_error(exc):
            # A driver's own error that SQLAlchemy let through unwrapped (asyncpg's, as a
            # transaction on a connection the server dropped is ended): a StorageError like
            # any other, never a driver's exception out of the storage.
            return Fault(self.is_transient_driver_error(exc), exc, exc)
        return None


def is_driver_error(exc: BaseException) -> bool:
    """Whether ``exc`` is a database driver's own error, not wrapped by SQLAlchemy."""
    return type(exc).__module__.partition(".")[0] in _DRIVERS


def is_broken_connection(exc: BaseException) -> bool:
    """Whether a driver's error leaves its connection unusable (drop it, open another)."""
    if isinstance(exc, OSError):  # ConnectionError and TimeoutError among them
        return True
    state = sqlstate(exc)
    if state is not None and state.startswith("08"):
        return True
    # asyncpg, on a connection the server dropped while a statement was under way:
    # "cannot switch to state 15; another operation (2) is in progress".
    return _BUSY.search(str(exc)) is not None


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


#: SQLSTATE of a unique key already taken (PostgreSQL, and MySQL/MariaDB's class 23).
_DUPLICATE = ("23505", "23000")


def is_duplicate(exc: BaseException | None) -> bool:
    """Whether ``exc`` (a driver's error, or SQLAlchemy's) says a unique key is taken."""
    if exc is None:
        return False
    if isinstance(exc, IntegrityError | sqlite3.IntegrityError):
        return True
    return sqlstate(exc) in _DUPLICATE
