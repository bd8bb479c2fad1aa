"""The connector: the engine, the database's clock and the statements built once.

It is what every part of the SQL storage shares, and it imports none of them: the
storage and the dialects (``_sqlite``, ``_postgres``, ``_mysql``) are built on it.
"""

from __future__ import annotations

import logging
import math
import re
import time
from collections import namedtuple
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, NamedTuple, TypeVar, cast

import anyio
from sqlalchemy import event
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine
from sqlalchemy.pool import QueuePool

from ..._secrets import safe_url, url_secrets
from ...exceptions import InvalidStorageURL, StorageError
from .._base import chained, fault_of
from ._faults import DriverFault, broken_driver_connection, is_driver_error

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Callable, Generator, Hashable, Mapping

    from ._statements import Steps

__all__ = [
    "AS_GIVEN",
    "DEFAULT_MAX_CONNECTIONS",
    "DEFAULT_POOL_TIMEOUT",
    "POOLERS",
    "POSITIONAL",
    "ConnectionBudgetExhausted",
    "ConnectionSettings",
    "Connector",
    "Lane",
    "Lanes",
    "Plan",
    "Result",
    "Sent",
]

logger = logging.getLogger("batchkit.storage.sql")

T = TypeVar("T")

#: The connections one storage holds at most, by default: its pool, the connections its
#: hot path keeps and its LISTEN connection together. Two worker processes fit a pooler
#: of 10 server connections.
DEFAULT_MAX_CONNECTIONS: Final = 5
#: Seconds a step waits for one of those connections before it gives up.
DEFAULT_POOL_TIMEOUT: Final = 30.0
#: A wait for a connection this long or longer is logged (at most every `_SLOW_EVERY` s).
_SLOW_CHECKOUT: Final = 1.0
_SLOW_EVERY: Final = 10.0


#: A driver's words for a prepared statement that a transaction-mode pooler lost or mixed up.
_PREPARED_LOST = re.compile(
    r"prepared statement \S* ?(does not exist|already exists)|bind message supplies"
)


#: What ``pooler=`` may say.
POOLERS: Final = ("transaction", "session")


@dataclass(frozen=True, slots=True)
class ConnectionSettings:
    """How a storage connects: its connection budget, and what stands in between."""

    max_connections: int = DEFAULT_MAX_CONNECTIONS
    pool_timeout: float = DEFAULT_POOL_TIMEOUT
    pooler: str | None = None
    listen_url: str | None = None

    @classmethod
    def of(
        cls,
        *,
        max_connections: int | None = None,
        pool_timeout: float | None = None,
        pooler: str | None = None,
        listen_url: str | None = None,
        url_options: Mapping[str, str] | None = None,
    ) -> ConnectionSettings:
        """The settings given (`None`: the default), each checked; `ValueError` says
        which one is wrong and why.

        ``url_options`` are the raw values of the storage URL's query (see
        `split_url_options`): each is read as its keyword's type, and one that the keyword
        also gives, differently, is refused (`InvalidStorageURL`).
        """
        given: dict[str, Any] = {
            "max_connections": max_connections,
            "pool_timeout": pool_timeout,
            "pooler": pooler,
            "listen_url": listen_url,
        }
        for key, raw in (url_options or {}).items():
            if key not in given:
                continue
            read = _read_url_option(key, raw)
            if given[key] is not None and given[key] != read:
                shown = "" if key == "listen_url" else f"={raw}"
                raise InvalidStorageURL(
                    f"the storage URL says ?{key}{shown} and the {key}= keyword says "
                    "otherwise: give one of them"
                )
            given[key] = read
        try:
            return cls._checked(**given)
        except ValueError as exc:
            if url_options and not isinstance(exc, InvalidStorageURL):
                # Perhaps the URL's: a bad URL, whichever said it.
                raise InvalidStorageURL(str(exc)) from None
            raise

    @classmethod
    def _checked(
        cls,
        *,
        max_connections: Any,
        pool_timeout: Any,
        pooler: Any,
        listen_url: Any,
    ) -> ConnectionSettings:
        if max_connections is None:
            max_connections = DEFAULT_MAX_CONNECTIONS
        elif isinstance(max_connections, bool) or not isinstance(max_connections, int):
            raise ValueError(f"max_connections must be an int, got {max_connections!r}")
        elif not 1 <= max_connections <= 10_000:
            raise ValueError(f"max_connections must be 1 to 10000, got {max_connections!r}")
        if pool_timeout is None:
            pool_timeout = DEFAULT_POOL_TIMEOUT
        elif isinstance(pool_timeout, bool) or not isinstance(pool_timeout, int | float):
            raise ValueError(f"pool_timeout must be seconds, got {pool_timeout!r}")
        elif not 0 < pool_timeout <= 86_400:
            raise ValueError(
                f"pool_timeout must be more than 0 seconds, at most a day, got {pool_timeout!r}"
            )
        if pooler is not None and pooler not in POOLERS:
            raise ValueError(
                f"pooler must be one of {', '.join(POOLERS)} (or None), got {pooler!r}"
            )
        if listen_url is not None:
            if not isinstance(listen_url, str) or not listen_url.startswith("postgresql"):
                raise ValueError("listen_url must be a postgresql:// URL straight to the database")
            if pooler != "transaction":
                raise ValueError(
                    "listen_url is for pooler='transaction' only: a direct or session-pooled connection listens itself"
                )
        return cls(max_connections, float(pool_timeout), pooler, listen_url)


def _read_url_option(key: str, raw: str) -> Any:
    """A connection option of the URL's query, read as its keyword's type."""
    if key == "max_connections":
        try:
            return int(raw)
        except ValueError:
            raise InvalidStorageURL(
                f"the storage URL's option ?max_connections= must be a whole number, got {raw!r}"
            ) from None
    if key == "pool_timeout":
        try:
            value = float(raw)
        except ValueError:
            value = math.nan
        if not math.isfinite(value):
            raise InvalidStorageURL(
                f"the storage URL's option ?pool_timeout= must be seconds, got {raw!r}"
            )
        return value
    return raw


class ConnectionBudgetExhausted(Exception):
    """Every connection the storage may hold stayed in use for ``pool_timeout`` seconds."""


class Connector:
    """The engine (the storage's own, or the host's), the offset of the database's clock
    and the cache of statements built once, compiled once.

    Args:
        url_or_engine: a database URL (the engine is created by `create_engine`), or an
            `AsyncEngine` the host owns (never disposed here).
        engine_options: extra keyword arguments for `create_async_engine` (URL only).
        settings: the connection budget (its engine's pool and, where it listens, its
            LISTEN connection; an engine of the host's keeps its own pool), and what
            stands between the storage and its database (see `ConnectionSettings`).
    """

    def __init__(
        self,
        url_or_engine: str | AsyncEngine,
        engine_options: dict[str, Any],
        settings: ConnectionSettings | None = None,
    ) -> None:
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
        settings = settings or ConnectionSettings()
        self.max_connections = settings.max_connections
        self.pool_timeout = settings.pool_timeout
        self.pooler = settings.pooler
        self.listen_url = listen_url = settings.listen_url
        if listen_url is not None:
            # Its password is as secret as the main URL's.
            self.secrets = self.secrets | url_secrets(listen_url)
        self._slow_logged = -math.inf
        # The queue in front of the pool (see `connect`), made with the first connection.
        self._gate: anyio.Semaphore | None = None
        self._gate_made = False
        self._gate_key = f"batchkit_gate_{id(self)}"
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

    def create_engine(self, options: dict[str, Any], *, reserved: int = 0) -> AsyncEngine:
        """Create the storage's own engine from its URL, with a dialect's ``options``.

        Its pool holds `max_connections` less the ``reserved`` connections the dialect
        opens beside it (a LISTEN connection to another server).
        """
        assert self.url is not None
        if "poolclass" not in options and "poolclass" not in self._engine_options:
            # Never more connections than the budget: no overflow, and a bounded wait.
            pool_size = self.max_connections - reserved
            options.update(pool_size=pool_size, max_overflow=0, pool_timeout=self.pool_timeout)
        # Every transaction here ends through SQLAlchemy's connection (committed, or rolled
        # back as the connection closes), and a lane runs single autocommit statements or
        # rolls back itself: no connection goes back to the pool inside a transaction. The
        # pool's own ROLLBACK on every return would be a round trip per transaction, and,
        # on a connection the server dropped meanwhile, an ERROR with a traceback in the
        # host's log for a fault the next call retries anyway.
        options["pool_reset_on_return"] = None
        url = options.pop("url", self.url)
        connect_args = {**options.get("connect_args", {})}
        connect_args.update(self._engine_options.get("connect_args", {}))
        options.update(self._engine_options)
        if connect_args:
            options["connect_args"] = connect_args
        self._engine = create_async_engine(url, **options)
        return self._engine

    @property
    def pool_size(self) -> int | None:
        """The connections the engine's pool may open (`None`: a pool without a bound)."""
        pool = None if self._engine is None else self._engine.pool
        if not isinstance(pool, QueuePool):
            return None
        return pool.size() + max(0, pool._max_overflow)

    def lanes_cap(self, wanted: int, *, beside: int = 1) -> int:
        """How many connections a dialect may keep for its hot path: ``wanted``, or fewer,
        so that ``beside`` connections of the pool stay free for everything else."""
        size = self.pool_size
        return wanted if size is None else max(0, min(wanted, size - beside))

    async def connect(self) -> AsyncConnection:
        """A connection of the pool; a wait of a second or more for it is logged, and one
        longer than `pool_timeout` ends in `ConnectionBudgetExhausted` (never a silent hang).

        Callers wait in turn, first come first served: SQLAlchemy's pool hands a connection
        given back to whoever asks next, which may be the task that gave it back, so with
        more tasks than connections one task could wait past `pool_timeout` while the
        others take turns (a runner of 8 slots on 5 connections, all queued on one batch's
        row, did).
        """
        start = time.monotonic()
        gate = self._the_gate()
        if gate is not None:
            with anyio.move_on_after(self.pool_timeout) as waiting:
                await gate.acquire()
            if waiting.cancelled_caught:
                raise DriverFault(self._exhausted(time.monotonic() - start), transient=False)
        try:
            conn = await self.engine.connect()
            if gate is not None:
                # Given back to the gate when the pool takes the connection back.
                (await conn.get_raw_connection()).info[self._gate_key] = True
        except BaseException as exc:
            if gate is not None:
                gate.release()
            if isinstance(exc, PoolTimeout):
                waited = time.monotonic() - start
                raise DriverFault(self._exhausted(waited), transient=False) from None
            raise
        waited = time.monotonic() - start
        if waited >= _SLOW_CHECKOUT and start - self._slow_logged >= _SLOW_EVERY:
            self._slow_logged = start
            logger.warning(
                "waited %.1f s for a database connection: all %s the storage may hold were "
                "in use (raise max_connections, or run fewer items at once)",
                waited,
                self.pool_size if self.pool_size is not None else "connections",
                extra={"waited": round(waited, 3), "max_connections": self.max_connections},
            )
        return conn

    @property
    def awaited(self) -> bool:
        """Whether a task waits for a connection (one coming free should go to it)."""
        return self._gate is not None and self._gate.statistics().tasks_waiting > 0

    def _the_gate(self) -> anyio.Semaphore | None:
        if not self._gate_made:
            self._gate_made = True
            size = self.pool_size
            if size is not None:
                self._gate = anyio.Semaphore(size)
                event.listen(self.engine.sync_engine, "checkin", self._checked_in)
        return self._gate

    def _checked_in(self, dbapi_connection: Any, record: Any) -> None:
        if record is not None and record.info.pop(self._gate_key, False) and self._gate:
            self._gate.release()

    @asynccontextmanager
    async def connection(self) -> AsyncIterator[AsyncConnection]:
        """`connect`, as a context that closes the connection (gives it back) on the way out."""
        conn = await self.connect()
        try:
            yield conn
        finally:
            with anyio.CancelScope(shield=True):
                await conn.close()

    def _exhausted(self, waited: float) -> ConnectionBudgetExhausted:
        return ConnectionBudgetExhausted(
            f"no database connection came free in {waited:.0f} s: all "
            f"{self.pool_size if self.pool_size is not None else ''} connections of the "
            f"pool stayed in use (max_connections={self.max_connections}, "
            f"pool_timeout={self.pool_timeout:g}); raise max_connections, run fewer items "
            "at once, or look for a step holding connections"
        )

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
        async with self.connection() as conn:
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

    async def drive(self, steps: Steps[T], run: Callable[[Sent], Awaitable[Result]]) -> T:
        """Run ``steps`` straight on a driver: ``run`` sends each statement as planned
        (`Sent`) and answers its `Result`."""
        work = self._planned(steps)
        try:
            sent = next(work)
            while True:
                sent = work.send(await run(sent))
        except StopIteration as stop:
            return cast("T", stop.value)

    def drive_here(self, steps: Steps[T], run: Callable[[Sent], Result]) -> T:
        """`drive`, for a driver that answers at once (SQLite's, in its own thread)."""
        work = self._planned(steps)
        try:
            sent = next(work)
            while True:
                sent = work.send(run(sent))
        except StopIteration as stop:
            return cast("T", stop.value)

    def _planned(self, steps: Steps[T]) -> Generator[Sent, Result, T]:
        """``steps`` with each statement planned for the driver (`plan`)."""
        plan = self.plan
        try:
            stmt, params = next(steps)
            while True:
                if isinstance(params, list):  # the same statement for each of these rows
                    sql = plan(stmt, params[0])[0]
                    sent = Sent(sql, [], None, [plan(stmt, row)[1] for row in params])
                else:
                    sent = Sent(*plan(stmt, params), None)
                stmt, params = steps.send((yield sent))
        except StopIteration as stop:
            return cast("T", stop.value)

    # -- one try of a transaction ----------------------------------------------------------

    async def attempt(
        self,
        work: Callable[[AsyncConnection], Awaitable[T]],
        *,
        read: bool = False,
        autocommit: bool = False,
    ) -> T:
        """Run ``work`` once, in a transaction of its own on a pooled connection."""
        async with self.connection() as conn:
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
        error = fault_of(exc, self.secrets)
        if self.pooler != "transaction" and _PREPARED_LOST.search(str(exc)):
            # What a transaction-mode pooler does to prepared statements: say the remedy.
            return StorageError(
                f"{error}; if a transaction-mode pooler (PgBouncer, a managed database's "
                "pooler port) is in between, add ?pooler=transaction to the storage URL"
            )
        return error

    def cause(self, exc: BaseException) -> BaseException | None:
        """``exc``, to chain to a `StorageError`, unless it shows a secret (see `chained`)."""
        return chained(exc, self.secrets)


#: The execution option that marks a statement whose rows are read by position only
#: (``stmt.execution_options(**{POSITIONAL: True})``): the driver's rows are handed over
#: as they come, where others are made named tuples (a listing reads a thousand rows a
#: page, and a named tuple of sixteen columns costs about a microsecond to make). Their
#: readers take the values as the driver gives them: MySQL's exact strings as bytes.
POSITIONAL = "batchkit_positional"


class _AsGiven:
    """The row type of a `POSITIONAL` statement: each row as the driver gives it."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "AS_GIVEN"


#: `Plan.row_type` and `Sent.row_type` of a `POSITIONAL` statement.
AS_GIVEN: Any = _AsGiven()


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
        if names and stmt.get_execution_options().get(POSITIONAL):
            row_type = AS_GIVEN
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


class Sent(NamedTuple):
    """One statement of a step as a driver runs it (see `Connector.drive`)."""

    sql: str
    #: Its arguments, in order.
    args: list[Any]
    #: What each row it returns is made into; `None`: it returns none (its row count is
    #: its answer); `AS_GIVEN`: the driver's rows, read by position.
    row_type: Any
    #: The arguments of each row of an ``executemany`` (then ``args`` is empty), or `None`.
    many: list[list[Any]] | None


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
        if len(self._kept) < self._cap and self._open and not self._connector.awaited:
            self._kept.append(lane)
        else:
            # Given back to the pool (a task waiting for a connection takes it) rather than
            # kept idle here while that task waits: with every connection kept or in use,
            # no task would ever come back to take a kept one.
            await lane.conn.close()
        return result

    async def _new(self) -> Lane:
        conn = await self._connector.connect()
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
