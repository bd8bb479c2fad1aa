"""The one place batchkit reaches into aiosqlite's private attributes.

aiosqlite runs every call on its connection in a thread of its own; each call costs a
thread switch both ways, more than SQLite's own work on a small transaction. Its public
API runs one statement per call; `run_in_thread` runs a whole function (a whole
transaction) in one, through `aiosqlite.Connection._execute` and ``_conn``, which are
private. They are checked on aiosqlite 0.22.1, the version in ``uv.lock``
(``tests/storage/test_sql_driver_pins.py`` fails there when these attributes change, so
that an upgrade of the lock is checked before it ships).

Any other version (``make test-lowest``, ``make test-latest``, a user's own) is checked
where the fast path is chosen: `available` looks at the shape of what `run_in_thread`
uses, once per engine (never per statement), and when anything is missing or changed,
SQLite runs through SQLAlchemy, one statement per call, and a DEBUG line says why, once
per process.
"""

from __future__ import annotations

import inspect
import logging
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar, cast

if TYPE_CHECKING:
    import sqlite3
    from collections.abc import Callable
    from typing import Concatenate

__all__ = ["PRIVATE", "available", "missing", "run_in_thread"]

P = ParamSpec("P")
T = TypeVar("T")

logger = logging.getLogger("batchkit.storage")

#: The private attributes of `aiosqlite.Connection` used here: a coroutine method that
#: runs a function in the connection's thread, and the property of its sqlite3 connection.
PRIVATE = ("_execute", "_conn")

# The reasons already logged: each is logged once per process.
_logged: set[str] = set()


def missing() -> str | None:
    """Why aiosqlite cannot run a function in its thread the way `run_in_thread` does, or
    `None` when it can.

    ``_execute`` must be a coroutine function taking ``(self, fn, *args, **kwargs)``, and
    ``_conn`` a property of `aiosqlite.Connection`. Read without calling or instantiating
    anything (``inspect.getattr_static``): cheap, and nothing of aiosqlite's runs.
    """
    try:
        import aiosqlite
    except ImportError:
        return "aiosqlite is not installed"
    connection = getattr(aiosqlite, "Connection", None)
    if not isinstance(connection, type):
        return "aiosqlite.Connection is not a class"
    execute = inspect.getattr_static(connection, "_execute", None)
    if not inspect.iscoroutinefunction(execute):
        return "aiosqlite.Connection._execute is not a coroutine function"
    try:
        parameters = list(inspect.signature(execute).parameters.values())
    except (TypeError, ValueError):
        return "aiosqlite.Connection._execute has no signature to check"
    Parameter = inspect.Parameter
    positional = (Parameter.POSITIONAL_ONLY, Parameter.POSITIONAL_OR_KEYWORD)
    kinds = [p.kind for p in parameters]
    rest = parameters[3:]
    if not (
        len(kinds) >= 3
        and kinds[0] in positional  # self
        and kinds[1] in positional  # fn
        and kinds[2] is Parameter.VAR_POSITIONAL
        and any(p.kind is Parameter.VAR_KEYWORD for p in rest)
        # Nothing more it would need: a keyword-only parameter must have a default.
        and all(p.default is not Parameter.empty for p in rest if p.kind is Parameter.KEYWORD_ONLY)
    ):
        return "aiosqlite.Connection._execute does not take (self, fn, *args, **kwargs)"
    conn = inspect.getattr_static(connection, "_conn", None)
    if not isinstance(conn, property) or conn.fget is None:
        return "aiosqlite.Connection._conn is not a property"
    return None


def available() -> bool:
    """Whether aiosqlite can run a function in its thread (a whole transaction per call).

    When it cannot, says why at DEBUG, once per process per reason; nothing is raised.
    """
    reason = missing()
    if reason is None:
        return True
    if reason not in _logged:
        _logged.add(reason)
        logger.debug("SQLite runs one statement per call to aiosqlite's thread: %s", reason)
    return False


async def run_in_thread(
    driver: Any,
    fn: Callable[Concatenate[sqlite3.Connection, P], T],
    *args: P.args,
    **kwargs: P.kwargs,
) -> T:
    """Run ``fn(db, *args)`` in the thread of ``driver`` (an `aiosqlite.Connection`),
    ``db`` being its sqlite3 connection, in one call."""
    return cast("T", await driver._execute(fn, driver._conn, *args, **kwargs))
