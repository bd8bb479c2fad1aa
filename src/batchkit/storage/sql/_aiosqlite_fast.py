"""The one place batchkit reaches into aiosqlite's private attributes.

aiosqlite runs every call on its connection in a thread of its own; each call costs a
thread switch both ways, more than SQLite's own work on a small transaction. Its public
API runs one statement per call; `run_in_thread` runs a whole function (a whole
transaction) in one, through `aiosqlite.Connection._execute` and ``_conn``, which are
private. They are used on aiosqlite 0.22.1, the version in ``uv.lock``;
``tests/storage/test_sql_driver_pins.py`` fails when another version is installed, or
when these attributes change, so that an upgrade is checked before it ships. Without
them (`available` says so) SQLite runs through SQLAlchemy, one statement per call.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar, cast

if TYPE_CHECKING:
    import sqlite3
    from collections.abc import Callable
    from typing import Concatenate

__all__ = ["PRIVATE", "available", "run_in_thread"]

P = ParamSpec("P")
T = TypeVar("T")

#: The private attributes of `aiosqlite.Connection` used here: a coroutine method that
#: runs a function in the connection's thread, and the property of its sqlite3 connection.
PRIVATE = ("_execute", "_conn")


def available() -> bool:
    """Whether aiosqlite can run a function in its thread (a whole transaction per call)."""
    try:
        import aiosqlite
    except ImportError:
        return False
    connection = aiosqlite.Connection
    return callable(getattr(connection, "_execute", None)) and isinstance(
        getattr(connection, "_conn", None), property
    )


async def run_in_thread(
    driver: Any,
    fn: Callable[Concatenate[sqlite3.Connection, P], T],
    *args: P.args,
    **kwargs: P.kwargs,
) -> T:
    """Run ``fn(db, *args)`` in the thread of ``driver`` (an `aiosqlite.Connection`),
    ``db`` being its sqlite3 connection, in one call."""
    return cast("T", await driver._execute(fn, driver._conn, *args, **kwargs))
