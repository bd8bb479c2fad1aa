"""The connector: the engine, the database's clock and the statements built once.

It is what every part of the SQL storage shares, and it imports none of them: the
storage and the dialects (``_sqlite``, ``_postgres``, ``_mysql``) are built on it.
"""

from __future__ import annotations

import time
from collections import namedtuple
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

import anyio
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from ..._secrets import safe_url, url_secrets
from ...exceptions import StorageError
from .._base import chained, fault_of
from ._faults import DriverFault, broken_driver_connection, is_driver_error

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Hashable

__all__ = ["Connector", "Lane", "Lanes", "Plan", "Result"]

T = TypeVar("T")


class Connector:
    """The engine (the storage's own, or the host's), the offset of the database's clock
    and the cache of statements built once, compiled once.

    Args:
        url_or_engine: a database URL (the engine is created by `create_engine`), or an
            `AsyncEngine` the host owns (never disposed here).
        engine_options: extra keyword arguments for `create_async_engine` (URL only).
    """

    def __init__(self, url_or_engine: str | AsyncEngine, engine_options: dict[str, Any]) -> None:
        if isinstance(url_or_engine, str):
            self.url: str | None = url_or_engine
            self._engine: AsyncEngine | None = None
            self.owns_engine = True
            # What the storage shows of its URL is built once from its parts, the same
            # before open, while open and after close; the password is never part of it.
            self.shown = repr(safe_url(url_or_engine))
            self.secrets = url_secrets(url_or_engine)
        else:
            self.url = None
            self._engine = url_or_engine
            self.owns_engine = False
            # The engine's own repr shows the query string, secrets and all.
            try:
                full = url_or_engine.url.render_as_string(hide_password=False)
            except AttributeError:  # not an engine: `open` says so
                full = ""
            self.shown = f"<AsyncEngine {safe_url(full)!r}>"
            self.secrets = url_secrets(full)
        self._engine_options = dict(engine_options)
        #: Seconds to add to this machine's clock to read the database's.
        self.offset = 0.0
        self._stmts: dict[Hashable, Any] = {}
        self._plans: dict[int, Plan] = {}
        self._cached: set[int] = set()

    @property
    def engine(self) -> AsyncEngine:
        """The engine (created on open when the storage was built from a URL)."""
        if self._engine is None:
            raise StorageError("the storage is not open: use `async with SQLStorage(...)`")
        return self._engine

    @property
    def has_engine(self) -> bool:
        return self._engine is not None

    def create_engine(self, options: dict[str, Any]) -> AsyncEngine:
        """Create the storage's own engine from its URL, with a dialect's ``options``."""
        assert self.url is not None
        # Every transaction here ends through SQLAlchemy's connection (committed, or rolled
        # back as the connection closes), and a lane runs single autocommit statements or
        # rolls back itself: no connection goes back to the pool inside a transaction. The
        # pool's own ROLLBACK on every return would be a round trip per transaction, and,
        # on a connection the server dropped meanwhile, an ERROR with a traceback in the
        # host's log for a fault the next call retries anyway.
        options["pool_reset_on_return"] = None
        options.update(self._engine_options)
        self._engine = create_async_engine(self.url, **options)
        return self._engine

    async def dispose(self) -> None:
        """Dispose the engine if the storage created it; a host's engine stays open."""
        if self._engine is not None and self.owns_engine:
            await self._engine.dispose()
            self._engine = None

    # -- the database's clock --------------------------------------------------------------

    async def measure_offset(self, query: Any) -> None:
        """Set the clock offset from ``query``, which reads the database's clock (epoch
        seconds); with `None`, this machine's clock is the database's (SQLite)."""
        # Leases are measured by the database's clock, so runners on machines whose
        # clocks disagree still agree on who holds a lease.
        if query is None:
            self.offset = 0.0
            return
        async with self.engine.connect() as conn:
            before = time.time()
            server = float((await conn.execute(query)).scalar_one())
            after = time.time()
        self.offset = server - (before + after) / 2

    def now(self) -> float:
        """The database's clock, in epoch seconds."""
        return time.time() + self.offset

    # -- statements built once -------------------------------------------------------------
    # The hot path runs statements built once, with bound parameters: SQLAlchemy reuses
    # their compiled form instead of building, keying and compiling a statement per call.

    def stmt(self, key: Hashable, build: Callable[[], Any]) -> Any:
        """The statement cached under ``key``, built by ``build`` the first time."""
        stmt = self._stmts.get(key)
        if stmt is None:
            stmt = self._stmts[key] = build()
            self._cached.add(id(stmt))  # kept alive in _stmts, so the id stays its own
        return stmt

    def is_cached(self, stmt: Any) -> bool:
        """Whether ``stmt`` was built by `stmt` (so its compiled form can be kept)."""
        return id(stmt) in self._cached

    def plan(self, stmt: Any, params: dict[str, Any]) -> tuple[str, list[Any], Any]:
        """SQL text, positional arguments and row type of ``stmt``, to hand to the driver.

        Compiled once for prebuilt statements; an expanding ``IN`` is rendered per call.
        """
        plan = self._plans.get(id(stmt))
        if plan is None:
            plan = Plan.of(stmt, stmt.compile(dialect=self.engine.dialect))
            if id(stmt) in self._cached:
                self._plans[id(stmt)] = plan
        compiled = plan.compiled
        if plan.slots is None:
            if plan.expanding:
                state = compiled.construct_expanded_state(params)
                return state.statement, list(state.positional_parameters), plan.row_type
            values = compiled.construct_params(params)
            return compiled.string, [values[name] for name in compiled.positiontup], plan.row_type
        try:
            arguments = [
                params[s[0]] if s[0] in params else _default(s, params) for s in plan.slots
            ]
        except _Required:  # not given: let SQLAlchemy find it, or say it is missing
            values = compiled.construct_params(params)
            arguments = [values[name] for name in compiled.positiontup]
        return compiled.string, arguments, plan.row_type

    # -- one try of a transaction ----------------------------------------------------------

    async def attempt(
        self,
        work: Callable[[AsyncConnection], Awaitable[T]],
        *,
        read: bool = False,
        autocommit: bool = False,
    ) -> T:
        """Run ``work`` once, in a transaction of its own on a pooled connection."""
        async with self.engine.connect() as conn:
            try:
                if autocommit:
                    conn = await conn.execution_options(isolation_level="AUTOCOMMIT")
                    return await work(conn)
                if read:
                    conn = await conn.execution_options(batchkit_read=True)
                    result = await work(conn)
                    await conn.commit()
                    return result
                async with conn.begin():
                    return await work(conn)
            except Exception as exc:
                # A driver error that SQLAlchemy does not take for a disconnect (asyncpg's
                # "another operation is in progress", raw or wrapped, as a transaction on a
                # connection the server dropped ends), or any driver error it let through
                # unwrapped (the connection may be left inside a transaction): the
                # connection must not go back to the pool, where the retry would take it.
                if is_driver_error(exc) or broken_driver_connection(exc):
                    await conn.invalidate()
                raise

    # -- what a fault may show -------------------------------------------------------------

    def fault(self, exc: BaseException) -> StorageError:
        """The `StorageError` for a driver's error, without the storage's secrets."""
        return fault_of(exc, self.secrets)

    def cause(self, exc: BaseException) -> BaseException | None:
        """``exc``, to chain to a `StorageError`, unless it shows a secret (see `chained`)."""
        return chained(exc, self.secrets)


@dataclass(slots=True)
class Plan:
    """A statement compiled for the driver: its SQL, row type and whether ``IN`` expands,
    and where each positional argument comes from (`slots`)."""

    compiled: Any
    row_type: Any
    expanding: bool
    #: Per positional parameter: its key, its name, whether it is required, and its
    #: value when the call does not give one (a constant of the statement). `None` when
    #: the compiled form's own `construct_params` must build the arguments (an expanding
    #: ``IN``, a parameter whose value is computed).
    slots: tuple[tuple[str, str, bool, Any], ...] | None

    @classmethod
    def of(cls, stmt: Any, compiled: Any) -> Plan:
        # A SELECT's columns, or an UPDATE's RETURNING columns (none without RETURNING;
        # none known of a textual statement).
        names = [column.key for column in getattr(stmt, "exported_columns", ())]
        row_type = namedtuple("Row", names, rename=True) if names else None
        expanding = "POSTCOMPILE" in compiled.string
        binds = list(compiled.bind_names.items())
        slots: tuple[tuple[str, str, bool, Any], ...] | None = None
        positional = compiled.positiontup is not None
        if positional and not expanding and not any(bind.callable for bind, _ in binds):
            # What `construct_params` looks up on every call, worked out once: a
            # parameter's value by its key, else by its name, else the statement's own.
            escaped = compiled.escaped_bind_names or {}
            own = compiled.params
            by_name = {}
            for bind, name in binds:
                shown = escaped.get(name, name)
                by_name[shown] = (bind.key, name, bind.required, own.get(shown))
            slots = tuple(by_name[name] for name in compiled.positiontup)
        return cls(compiled, row_type, expanding, slots)


class _Required(Exception):
    """A required parameter the call does not give by key or name (see `Plan.slots`)."""


def _default(slot: tuple[str, str, bool, Any], params: dict[str, Any]) -> Any:
    """A positional argument the call's parameters do not give by key (see `Plan.slots`)."""
    _, name, required, value = slot
    if name in params:
        return params[name]
    if required:
        raise _Required
    return value


class Result:
    """Rows and row count of a hot-path statement, whichever way it was executed."""

    __slots__ = ("rowcount", "rows")

    def __init__(self, rows: list[Any], rowcount: int) -> None:
        self.rows = rows
        self.rowcount = rowcount

    def first(self) -> Any:
        return self.rows[0] if self.rows else None

    def scalar(self) -> Any:
        row = self.first()
        return None if row is None else row[0]


# -- lanes: connections kept for the hot path ---------------------------------------------


@dataclass(slots=True)
class Lane:
    """A connection kept out of the pool, and its driver's own connection object."""

    conn: AsyncConnection
    driver: Any


class Lanes:
    """Connections kept out of SQLAlchemy's pool between hot-path steps, at most ``cap``.

    Checking a connection out of SQLAlchemy's pool and back in for every step costs more
    than the step itself; a few are kept here between steps instead.
    """

    def __init__(self, connector: Connector, cap: int) -> None:
        self._connector = connector
        self._cap = cap
        self._kept: list[Lane] = []
        self._open = True

    async def attempt(self, work: Callable[[Lane], Awaitable[T]]) -> T:
        """Run ``work`` once on a lane: a connection kept out of the pool, used directly."""
        lane = self._kept.pop() if self._kept else await self._new()
        try:
            result = await work(lane)
        except DriverFault as fault:
            if fault.broken:
                await lane.conn.invalidate()
                # The server dropped this connection (a restart, a kill): the ones kept
                # beside it are most likely gone too, so the retry opens a new one.
                await self.drop(invalidate=True)
            await lane.conn.close()
            raise
        except BaseException:
            await lane.conn.close()
            raise
        if len(self._kept) < self._cap and self._open:
            self._kept.append(lane)
        else:
            await lane.conn.close()
        return result

    async def _new(self) -> Lane:
        conn = await self._connector.engine.connect()
        try:
            raw = await conn.get_raw_connection()
        except BaseException:
            await conn.close()
            raise
        return Lane(conn, raw.driver_connection)

    async def drop(self, *, invalidate: bool = False) -> None:
        """Close the lanes kept (they go back to the pool, or, invalidated, away)."""
        lanes, self._kept = self._kept, []
        with anyio.CancelScope(shield=True):
            for lane in lanes:
                if invalidate:
                    await lane.conn.invalidate()
                await lane.conn.close()

    async def close(self) -> None:
        """Close the lanes kept, and keep none from now on (the storage is closing)."""
        self._open = False
        await self.drop()
