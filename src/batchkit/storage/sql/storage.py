"""SQLStorage: batches and items in SQLite, PostgreSQL or MySQL/MariaDB (SQLAlchemy 2 async)."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import sqlite3
import time
from collections import namedtuple
from collections.abc import Generator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Self, TypeAlias, TypeVar, cast

import anyio
from sqlalchemy import Row, Text, and_, bindparam, case, event, func, literal, or_, select, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine
from sqlalchemy.pool import StaticPool

from ..._secrets import redact, safe_url, shows_secret, unparsable, url_secrets
from ...codec import dumps, is_unicode, loads
from ...exceptions import (
    BatchNotFound,
    InvalidStorageURL,
    ItemNotFound,
    SchemaVersionMismatch,
    StorageError,
)
from ...history import errors_of
from ...ids import new_token
from ...models import Item, ItemError, ItemState
from ...protocols import (
    BatchRecord,
    Claim,
    ClaimRequest,
    FinishedBatch,
    FinishResult,
    Lease,
    LeaseStatus,
    MetadataFilter,
    NewBatch,
    Outcome,
    Subscription,
)
from .._doubt import ClaimsInDoubt
from .._polling import PollingSubscription
from ._faults import (
    broken_driver_connection,
    is_broken_connection,
    is_driver_error,
    is_transient,
    is_transient_driver_error,
)
from .schema import SCHEMA_VERSION, Tables, build_tables, validate_prefix

if TYPE_CHECKING:
    from collections.abc import (
        AsyncIterator,
        Awaitable,
        Callable,
        Collection,
        Hashable,
        Iterator,
    )
    from types import TracebackType

    from sqlalchemy import MetaData
    from sqlalchemy.sql.elements import ColumnElement

__all__ = ["SQLStorage"]

logger = logging.getLogger("batchkit.storage.sql")

T = TypeVar("T")

#: One transaction's work, written once for every way of executing it: a generator that
#: yields each statement with its parameters and receives that statement's result. It runs
#: through SQLAlchemy (`SQLStorage._drive`) or, on SQLite, whole in the driver's thread.
Steps: TypeAlias = Generator[tuple[Any, dict[str, Any]], "_Result", T]

_Q, _R = ItemState.QUEUED.value, ItemState.RUNNING.value
_S, _F, _C = ItemState.SUCCEEDED.value, ItemState.FAILED.value, ItemState.CANCELLED.value
_COUNTER = {
    _Q: "n_queued",
    _R: "n_running",
    _S: "n_succeeded",
    _F: "n_failed",
    _C: "n_cancelled",
}
_ACTIVE = {_Q, _R}
#: The columns a new item's row sets, in the order `SQLStorage._copy_items` sends them.
_COPIED = (
    "batch_id",
    "position",
    "key",
    "payload",
    "state",
    "active",
    "claimable_at",
    "cancel_requested",
    "progress",
    "attempt",
    "created_at",
    "updated_at",
)
_TAG_MAX = 191
_HASHED = "#sha256:"
_SYNC_URLS = {
    "sqlite": "sqlite+aiosqlite",
    "postgresql": "postgresql+asyncpg",
    "postgres": "postgresql+asyncpg",
    "mysql": "mysql+asyncmy",
    "mariadb": "mariadb+asyncmy",
}


def _ts(value: float | None) -> datetime | None:
    return None if value is None else datetime.fromtimestamp(value, UTC)


def tag_name(name: str) -> str:
    """How a top-level metadata key is stored for filtering: as it is, or hashed.

    A key the tags table cannot hold exactly is stored as its SHA-256, so that every key
    is found again: one longer than the column (191 characters), one with NUL (which
    PostgreSQL's text cannot hold), and one that starts like a hash itself (so that no
    key can pass for another's hash). A key that is not valid Unicode (only a filter can
    name one) gets a hash that matches nothing stored.
    """
    if (
        len(name) <= _TAG_MAX
        and "\x00" not in name
        and not name.startswith(_HASHED)
        and (name.isascii() or is_unicode(name))
    ):
        return name
    return _HASHED + hashlib.sha256(name.encode("utf-8", "surrogatepass")).hexdigest()


def tag_value(value: object) -> str:
    """How a metadata scalar is stored for filtering: its JSON text, hashed when long.

    JSON text never starts with ``#``, so no value passes for another's hash.

    Raises:
        ValueError: the value is not JSON (NaN, say): it matches nothing stored.
    """
    encoded = dumps(value)  # type: ignore[arg-type]
    if len(encoded) <= _TAG_MAX and (encoded.isascii() or is_unicode(encoded)):
        return encoded
    return _HASHED + hashlib.sha256(encoded.encode("utf-8", "surrogatepass")).hexdigest()


def _tag(name: object, value: object) -> tuple[str, str] | None:
    """The stored name and value a metadata filter looks for; `None` if none can match."""
    if not isinstance(name, str) or not isinstance(value, _SCALARS):
        return None
    try:
        return tag_name(name), tag_value(value)
    except ValueError:
        return None


_SCALARS = (str, int, float, bool, type(None))


class SQLStorage:
    """Batches and items in a SQL database, through SQLAlchemy 2's async engines.

    Supported: ``sqlite+aiosqlite`` (the embedded default: WAL mode, a busy timeout and a
    write transaction taken up front), ``postgresql+asyncpg`` and ``postgresql+psycopg``
    (``FOR UPDATE SKIP LOCKED`` claims, ``LISTEN/NOTIFY`` for `watch`), ``mysql+asyncmy``
    and ``mariadb+asyncmy`` (``SKIP LOCKED`` claims; MariaDB 10.6+, MySQL 8+).

    Every transition updates the item and its batch's counters in one transaction, so a
    status is one primary-key read. Transient faults (a dropped connection, a deadlock, a
    busy SQLite file) are retried with backoff; others surface as `StorageError`.

    Args:
        url_or_engine: a database URL, or an `AsyncEngine` the host owns (left open by
            `aclose`).
        table_prefix: prefix of the table names (letters, digits, underscores).
        create_schema: create the tables if they are missing when the storage opens;
            with `False` they must exist (created by your migrations).
        poll_interval: how often a waiting `watch` looks again on databases without
            change notification (SQLite, MySQL/MariaDB).
        retries: how many times a transaction hit by a transient fault is retried.
        chunk_size: items per ``INSERT`` when creating a batch.
        engine_options: extra keyword arguments for `create_async_engine` (URL only).
    """

    def __init__(
        self,
        url_or_engine: str | AsyncEngine,
        *,
        table_prefix: str = "batchkit_",
        create_schema: bool = True,
        poll_interval: float = 0.5,
        retries: int = 6,
        chunk_size: int = 1_000,
        engine_options: dict[str, Any] | None = None,
    ) -> None:
        validate_prefix(table_prefix)
        if isinstance(url_or_engine, str):
            scheme = url_or_engine.partition("://")[0].lower()
            if scheme in _SYNC_URLS:
                fixed = _SYNC_URLS[scheme]
                rest = url_or_engine.partition("://")[2]
                raise ValueError(
                    f"{scheme}:// names a synchronous driver; batchkit is async: use "
                    f"{redact(f'{fixed}://{rest}')}"
                )
            self._url: str | None = url_or_engine
            self._engine: AsyncEngine | None = None
            self._owns_engine = True
            # What the storage shows of its URL is built once from its parts, the same
            # before open, while open and after close; the password is never part of it.
            self._shown = repr(safe_url(url_or_engine))
            self._secrets = url_secrets(url_or_engine)
        else:
            self._url = None
            self._engine = url_or_engine
            self._owns_engine = False
            # The engine's own repr shows the query string, secrets and all.
            try:
                full = url_or_engine.url.render_as_string(hide_password=False)
            except AttributeError:  # not an engine: `open` says so
                full = ""
            self._shown = f"<AsyncEngine {safe_url(full)!r}>"
            self._secrets = url_secrets(full)
        self.table_prefix = table_prefix
        self.create_schema = create_schema
        self.poll_interval = poll_interval
        self.retries = retries
        self.chunk_size = chunk_size
        self._engine_options = dict(engine_options or {})
        from sqlalchemy import MetaData

        self.metadata: MetaData = MetaData()
        self.tables: Tables = build_tables(self.metadata, table_prefix)
        self._channel = f"{table_prefix}changes"
        self._offset = 0.0
        self._opened = False
        self._open_lock = anyio.Lock()
        self._dialect = ""
        self._returning = False
        self._stmts: dict[Hashable, Any] = {}
        self._plans: dict[int, _Plan] = {}
        self._cached: set[int] = set()
        # Connections kept out of the pool for the hot path (see `_run_lane`).
        self._lanes: list[_Lane] = []
        self._lane_cap = 0
        # Claims that may have committed as the store went away past the retries.
        self._doubtful: ClaimsInDoubt[_PendingClaim] = ClaimsInDoubt()
        self._sqlite_lanes = False
        self._pg_lanes = False
        # SQLite has one writer at a time: this process's writers queue here instead of
        # polling the file lock through the busy timeout.
        self._write_lock = anyio.Lock()
        self._serial_writes = False

    @classmethod
    def from_url(cls, url: str, **options: Any) -> SQLStorage:
        """A storage for ``url`` that owns (and on close disposes) its engine."""
        return cls(url, **options)

    def __repr__(self) -> str:
        return f"SQLStorage({self._shown}, table_prefix={self.table_prefix!r})"

    @property
    def engine(self) -> AsyncEngine:
        """The engine (created on open when the storage was built from a URL)."""
        if self._engine is None:
            raise StorageError("the storage is not open: use `async with SQLStorage(...)`")
        return self._engine

    # -- lifecycle -----------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        await self.open()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def open(self) -> None:
        """Connect, set up the tables (or check their version) and measure the clock."""
        async with self._open_lock:
            if self._opened:
                return
            try:
                asyncio.get_running_loop()
            except RuntimeError:
                raise StorageError(
                    "SQLStorage runs on asyncio (SQLAlchemy's async engines need it); "
                    "run the host with asyncio, or use MemoryStorage on trio"
                ) from None
            if self._engine is None:
                assert self._url is not None
                try:
                    make_url(self._url)
                except (ArgumentError, ValueError) as exc:
                    # The parser's message may quote a piece of the password (a "port").
                    raise InvalidStorageURL(
                        f"cannot open {self!r}: its URL cannot be parsed: "
                        f"{unparsable(self._url, exc, self._secrets)}"
                    ) from None
                self._engine = self._create_engine(self._url)
            engine = self._engine
            self._dialect = engine.dialect.name
            if self._dialect not in ("sqlite", "postgresql", "mysql", "mariadb"):
                raise StorageError(f"SQLStorage does not support the {self._dialect!r} dialect")
            if self._dialect == "sqlite":
                _configure_sqlite(engine)
            self._returning = bool(engine.dialect.update_returning)
            driver = engine.dialect.driver
            self._serial_writes = self._dialect == "sqlite"
            # A shared in-memory database has one connection for everyone: no lanes.
            self._sqlite_lanes = (
                driver == "aiosqlite"
                and not isinstance(engine.pool, StaticPool)
                and _aiosqlite_runs_functions()
            )
            self._pg_lanes = self._dialect == "postgresql" and driver == "asyncpg"
            self._lane_cap = 1 if self._sqlite_lanes else (_PG_LANES if self._pg_lanes else 0)
            tries = 0
            while True:
                try:
                    await self._setup_schema()
                    self._offset = await self._measure_offset()
                    break
                except DBAPIError as exc:
                    # A new SQLite file is switched to WAL under a lock that another
                    # process opening it at the same moment may hold: try again.
                    if tries >= self.retries or not is_transient(exc):
                        raise self._cannot_open(exc.orig) from self._cause(exc)
                except OSError as exc:  # the server is not there (connection refused, DNS)
                    raise self._cannot_open(exc) from self._cause(exc)
                tries += 1
                await anyio.sleep(min(2.0, 0.05 * 2**tries))
            self._opened = True

    def _cannot_open(self, says: object) -> StorageError:
        # A driver may repeat the URL's host, which holds a piece of a password written
        # with a raw "@" (``u:p@ss@h`` is host ``ss@h`` to SQLAlchemy).
        return StorageError(f"cannot open {self!r}: {redact(str(says), self._secrets)}")

    def _cause(self, exc: BaseException) -> BaseException | None:
        # A driver's error that shows a secret is not chained: a logged traceback would
        # print it (the message above says what it said, redacted).
        return None if shows_secret(exc, self._secrets) else exc

    def _create_engine(self, url: str) -> AsyncEngine:
        options: dict[str, Any] = {}
        if url.startswith("sqlite"):
            path = url.partition("://")[2].lstrip("/")
            if path in ("", ":memory:") or "mode=memory" in url:
                options = {"poolclass": StaticPool}
            else:
                options = {}
        # Every transaction here ends through SQLAlchemy's connection (committed, or rolled
        # back as the connection closes), and a lane runs single autocommit statements or
        # rolls back itself: no connection goes back to the pool inside a transaction. The
        # pool's own ROLLBACK on every return would be a round trip per transaction, and,
        # on a connection the server dropped meanwhile, an ERROR with a traceback in the
        # host's log for a fault the next call retries anyway.
        options["pool_reset_on_return"] = None
        options.update(self._engine_options)
        return create_async_engine(url, **options)

    async def aclose(self) -> None:
        """Dispose the engine if this storage created it; a host's engine stays open."""
        await self._close_lanes()
        if self._engine is not None and self._owns_engine:
            await self._engine.dispose()
            self._engine = None
        self._opened = False

    async def _setup_schema(self) -> None:
        meta = self.tables.meta
        async with self.engine.begin() as conn, self._schema_lock(conn):
            if self.create_schema:
                await conn.run_sync(self.metadata.create_all, checkfirst=True)
            else:
                exists = await conn.run_sync(lambda sync: sync.dialect.has_table(sync, meta.name))
                if not exists:
                    raise SchemaVersionMismatch(
                        f"table {meta.name!r} is missing and create_schema=False: create "
                        "batchkit's tables with your migrations (batchkit.storage.sql.schema)"
                    )
            row = (
                await conn.execute(select(meta.c.value).where(meta.c.name == "schema_version"))
            ).first()
            if row is None and self.create_schema:
                try:
                    async with conn.begin_nested():
                        await conn.execute(
                            meta.insert().values(name="schema_version", value=str(SCHEMA_VERSION))
                        )
                except IntegrityError:
                    pass  # another process wrote it first
                return
            version = None if row is None else row[0]
            if version != str(SCHEMA_VERSION):
                raise SchemaVersionMismatch(
                    f"the tables with prefix {self.table_prefix!r} have schema version "
                    f"{version!r}; this batchkit reads version {SCHEMA_VERSION}"
                )

    @asynccontextmanager
    async def _schema_lock(self, conn: AsyncConnection) -> AsyncIterator[None]:
        # Processes opening a new database at once would race to create the same tables
        # (and fail on "already exists"): one creates them while the others wait, then
        # find them. On SQLite, BEGIN IMMEDIATE already serialises them.
        if not self.create_schema or self._dialect == "sqlite":
            yield
            return
        name = f"batchkit:{self.table_prefix}"
        if self._dialect == "postgresql":
            key = int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big", signed=True)
            await conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": key})
            yield
            return
        await conn.execute(text("SELECT GET_LOCK(:name, 60)"), {"name": name})
        try:
            yield
        finally:
            await conn.execute(text("SELECT RELEASE_LOCK(:name)"), {"name": name})

    async def _measure_offset(self) -> float:
        # Leases are measured by the database's clock, so runners on machines whose
        # clocks disagree still agree on who holds a lease.
        if self._dialect == "postgresql":
            query = text("SELECT extract(epoch FROM clock_timestamp())")
        elif self._dialect in ("mysql", "mariadb"):
            query = text("SELECT UNIX_TIMESTAMP(NOW(6))")
        else:
            return 0.0
        async with self.engine.connect() as conn:
            before = time.time()
            server = float((await conn.execute(query)).scalar_one())
            after = time.time()
        return server - (before + after) / 2

    def _now(self) -> float:
        return time.time() + self._offset

    # -- transactions ----------------------------------------------------------------------

    async def _run(
        self,
        work: Callable[[AsyncConnection], Awaitable[T]],
        *,
        read: bool = False,
        autocommit: bool = False,
    ) -> T:
        """Run ``work`` in a transaction of its own, retried on transient faults."""
        return await self._retrying(
            lambda: self._attempt(work, read=read, autocommit=autocommit), write=not read
        )

    async def _write(self, steps: Callable[[], Steps[T]]) -> T:
        """Run a hot-path write transaction, by the fastest way the database allows.

        On SQLite, the whole transaction runs in one call to the driver's thread; elsewhere
        its statements go through SQLAlchemy one by one.
        """
        if self._sqlite_lanes:
            return await self._run_lane(lambda lane: self._sqlite_transaction(lane, steps()))
        return await self._run(lambda conn: self._drive(conn, steps()))

    async def _run_lane(self, work: Callable[[_Lane], Awaitable[T]]) -> T:
        """Run ``work`` on a lane: a connection kept out of the pool, used directly."""
        return await self._retrying(lambda: self._lane_attempt(work), write=True)

    async def _retrying(self, attempt: Callable[[], Awaitable[T]], *, write: bool) -> T:
        if not self._opened:
            await self.open()
        tries = 0
        while True:
            try:
                if not write:
                    return await attempt()
                # A write that commits must reach its caller: cancelled between the
                # commit and the return, a claim would be lost until its lease lapsed.
                with anyio.CancelScope(shield=True):
                    if not self._serial_writes:
                        return await attempt()
                    async with self._write_lock:
                        return await attempt()
            except DBAPIError as exc:
                if tries >= self.retries or not is_transient(exc):
                    raise self._fault(exc.orig if exc.orig is not None else exc) from exc
            except _DriverFault as fault:
                orig = fault.orig
                if tries >= self.retries or not fault.transient:
                    raise self._fault(orig) from orig
            except (ConnectionError, TimeoutError, OSError) as exc:
                if tries >= self.retries:
                    raise self._fault(exc) from exc
            except Exception as exc:
                # A driver's own error that SQLAlchemy let through unwrapped (asyncpg's, as a
                # transaction on a connection the server dropped is ended): a StorageError
                # like any other, never a driver's exception out of the storage.
                if not is_driver_error(exc):
                    raise
                if tries >= self.retries or not is_transient_driver_error(exc):
                    raise self._fault(exc) from exc
            tries += 1
            delay = min(2.0, 0.05 * 2**tries)
            logger.warning(
                "transient database fault, retrying", extra={"attempt": tries, "delay": delay}
            )
            await anyio.sleep(delay)

    def _fault(self, exc: BaseException) -> StorageError:
        """The `StorageError` for a driver's error, without the storage's secrets."""
        return StorageError(redact(f"{type(exc).__name__}: {exc}", self._secrets))

    async def _attempt(
        self,
        work: Callable[[AsyncConnection], Awaitable[T]],
        *,
        read: bool = False,
        autocommit: bool = False,
    ) -> T:
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

    # -- lanes: connections kept for the hot path ---------------------------------------------

    async def _lane_attempt(self, work: Callable[[_Lane], Awaitable[T]]) -> T:
        # Checking a connection out of SQLAlchemy's pool and back in for every step costs
        # more than the step itself; a few are kept here between steps instead.
        lane = self._lanes.pop() if self._lanes else await self._new_lane()
        try:
            result = await work(lane)
        except _DriverFault as fault:
            if fault.broken:
                await lane.conn.invalidate()
                # The server dropped this connection (a restart, a kill): the ones kept
                # beside it are most likely gone too, so the retry opens a new one.
                await self._close_lanes(invalidate=True)
            await lane.conn.close()
            raise
        except BaseException:
            await lane.conn.close()
            raise
        if len(self._lanes) < self._lane_cap and self._opened:
            self._lanes.append(lane)
        else:
            await lane.conn.close()
        return result

    async def _new_lane(self) -> _Lane:
        conn = await self.engine.connect()
        try:
            raw = await conn.get_raw_connection()
        except BaseException:
            await conn.close()
            raise
        return _Lane(conn, raw.driver_connection)

    async def _close_lanes(self, *, invalidate: bool = False) -> None:
        lanes, self._lanes = self._lanes, []
        with anyio.CancelScope(shield=True):
            for lane in lanes:
                if invalidate:
                    await lane.conn.invalidate()
                await lane.conn.close()

    # -- executing steps -------------------------------------------------------------------

    async def _drive(self, conn: AsyncConnection, steps: Steps[T]) -> T:
        """Run ``steps`` through SQLAlchemy, statement by statement, on ``conn``."""
        try:
            stmt, params = next(steps)
            while True:
                result = await self._exec(conn, stmt, params)
                stmt, params = steps.send(result)
        except StopIteration as stop:
            return cast("T", stop.value)

    async def _sqlite_transaction(self, lane: _Lane, steps: Steps[T]) -> T:
        """Run ``steps`` as one transaction in ONE call to the SQLite driver's thread."""
        driver = lane.driver
        try:
            return cast("T", await driver._execute(self._sqlite_steps, driver._conn, steps))
        except sqlite3.Error as exc:
            raise _DriverFault(exc, transient=is_transient_driver_error(exc)) from exc

    def _sqlite_steps(self, db: sqlite3.Connection, steps: Steps[T]) -> T:
        # In the driver's thread: BEGIN IMMEDIATE, every statement, COMMIT.
        db.execute("BEGIN IMMEDIATE")
        try:
            try:
                stmt, params = next(steps)
                while True:
                    sql, args, row_type = self._plan(stmt, params)
                    cursor = db.execute(sql, args)
                    if row_type is None:
                        result = _Result([], cursor.rowcount)
                    else:
                        rows = [row_type(*row) for row in cursor.fetchall()]
                        result = _Result(rows, len(rows))
                    cursor.close()
                    stmt, params = steps.send(result)
            except StopIteration as stop:
                value = cast("T", stop.value)
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise
        return value

    # -- creating and reading --------------------------------------------------------------

    async def create_batch(self, batch: NewBatch) -> tuple[BatchRecord, bool]:
        """Create a batch with all its items in one transaction (see `Storage.create_batch`)."""
        t = self.tables
        now = self._now()

        async def work(conn: AsyncConnection) -> tuple[BatchRecord, bool]:
            if batch.idempotency_key is not None:
                existing = await self._id_by_idempotency(conn, batch.idempotency_key)
                if existing is not None:
                    return await self._record(conn, existing), False
            total = len(batch.items)
            await conn.execute(
                t.batches.insert().values(
                    id=batch.id,
                    parent_id=batch.parent_id,
                    idempotency_key=batch.idempotency_key,
                    metadata=dumps(batch.metadata),
                    total=total,
                    n_queued=total,
                    n_running=0,
                    n_succeeded=0,
                    n_failed=0,
                    n_cancelled=0,
                    created_at=now,
                    updated_at=now,
                    finished_at=None if total else now,
                    max_failures=batch.max_failures,
                    hook_done=False,
                )
            )
            tags = [
                {"name": tag_name(name), "value": tag_value(value), "batch_id": batch.id}
                for name, value in batch.metadata.items()
                if isinstance(value, _SCALARS)
            ]
            if tags:
                await conn.execute(t.tags.insert(), tags)
            if self._pg_lanes and total:
                await self._copy_items(conn, batch, now)
                return await self._record(conn, batch.id), True
            insert = t.items.insert()
            size = self.chunk_size
            for start in range(0, total, size):
                rows = [
                    {
                        "batch_id": batch.id,
                        "position": start + offset,
                        "key": key,
                        "payload": payload,
                        "state": _Q,
                        "active": 1,
                        "claimable_at": 0.0,
                        "cancel_requested": False,
                        "progress": 0.0,
                        "attempt": 0,
                        "created_at": now,
                        "updated_at": now,
                    }
                    for offset, (key, payload) in enumerate(batch.items[start : start + size])
                ]
                await conn.execute(insert, rows)
            return await self._record(conn, batch.id), True

        try:
            return await self._run(work)
        except StorageError as exc:
            if not isinstance(exc.__cause__, IntegrityError):
                raise

            # A concurrent submit with the same idempotency key won, or our own commit
            # landed before a dropped connection made us try again.
            async def lookup(conn: AsyncConnection) -> tuple[BatchRecord, bool] | None:
                if batch.idempotency_key is not None:
                    found = await self._id_by_idempotency(conn, batch.idempotency_key)
                    if found is not None:
                        return await self._record(conn, found), found == batch.id
                try:
                    return await self._record(conn, batch.id), True
                except BatchNotFound:
                    return None

            found = await self._run(lookup, read=True)
            if found is None:
                raise
            return found

    async def _copy_items(self, conn: AsyncConnection, batch: NewBatch, now: float) -> None:
        # asyncpg streams rows with PostgreSQL's binary COPY, in the transaction already
        # open on this connection: several times faster than INSERTs of the same rows.
        raw = (await conn.get_raw_connection()).driver_connection
        assert raw is not None
        rows = (
            (batch.id, position, key, payload, _Q, 1, 0.0, False, 0.0, 0, now, now)
            for position, (key, payload) in enumerate(batch.items)
        )
        failure: Exception | None = None
        copied = False

        async def copy(scope: anyio.CancelScope) -> None:
            nonlocal failure, copied
            try:
                await raw.copy_records_to_table(
                    self.tables.items.name, records=rows, columns=_COPIED
                )
                copied = True
            except Exception as exc:
                failure = exc
            finally:
                scope.cancel()

        # asyncpg's COPY can wait forever on a connection lost under it: give the COPY up
        # once the connection has closed.
        closed = anyio.Event()

        def on_close(connection: object) -> None:
            closed.set()

        raw.add_termination_listener(on_close)
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(copy, tg.cancel_scope)
                await closed.wait()
                tg.cancel_scope.cancel()
        finally:
            raw.remove_termination_listener(on_close)
        if copied:
            return
        exc = failure or ConnectionError("the connection closed during COPY")
        raise _asyncpg_fault(raw, exc) from exc

    async def _id_by_idempotency(self, conn: AsyncConnection, key: str) -> str | None:
        b = self.tables.batches
        found = (await conn.execute(select(b.c.id).where(b.c.idempotency_key == key))).scalar()
        return None if found is None else str(found)

    async def get_batch(self, batch_id: str) -> BatchRecord:
        """Read a batch and its counters: one primary-key read (see `Storage.get_batch`)."""
        return await self._run(lambda conn: self._record(conn, batch_id), read=True)

    async def _record(self, conn: AsyncConnection, batch_id: str) -> BatchRecord:
        row = (
            await conn.execute(self._batch_query().where(self.tables.batches.c.id == batch_id))
        ).first()
        if row is None:
            raise BatchNotFound(batch_id)
        return self._to_record(row)

    def _batch_query(self) -> Any:
        b, i = self.tables.batches, self.tables.items
        # MariaDB may read every item of each listed batch through the primary key.
        running = _force_index(
            select(func.coalesce(func.sum(i.c.progress), 0.0)).where(
                i.c.batch_id == b.c.id, i.c.state == _R
            ),
            i,
            self.table_prefix + "ix_items_state",
        ).scalar_subquery()
        return select(b, running.label("running_progress"))

    @staticmethod
    def _to_record(row: Row[Any]) -> BatchRecord:
        m = row._mapping
        return BatchRecord(
            id=m["id"],
            total=m["total"],
            counts={
                ItemState.QUEUED: m["n_queued"],
                ItemState.RUNNING: m["n_running"],
                ItemState.SUCCEEDED: m["n_succeeded"],
                ItemState.FAILED: m["n_failed"],
                ItemState.CANCELLED: m["n_cancelled"],
            },
            created_at=_ts(m["created_at"]),  # type: ignore[arg-type]
            updated_at=_ts(m["updated_at"]),  # type: ignore[arg-type]
            metadata=loads(m["metadata"]),  # type: ignore[arg-type]
            parent_id=m["parent_id"],
            idempotency_key=m["idempotency_key"],
            running_progress=float(m["running_progress"] or 0.0),
            started_at=_ts(m["started_at"]),
            finished_at=_ts(m["finished_at"]),
            cancel_requested_at=_ts(m["cancel_requested_at"]),
            cancel_reason=m["cancel_reason"],
            max_failures=m["max_failures"],
        )

    async def get_item(self, batch_id: str, key: str) -> Item:
        """Read one item (see `Storage.get_item`)."""
        i = self.tables.items

        async def work(conn: AsyncConnection) -> Item:
            row = (
                await conn.execute(select(i).where(i.c.batch_id == batch_id, i.c.key == key))
            ).first()
            if row is None:
                await self._require_batch(conn, batch_id)
                raise ItemNotFound(batch_id, key)
            return self._to_item(row)

        return await self._run(work, read=True)

    async def _require_batch(self, conn: AsyncConnection, batch_id: str) -> None:
        b = self.tables.batches
        if (await conn.execute(select(b.c.id).where(b.c.id == batch_id))).first() is None:
            raise BatchNotFound(batch_id)

    @staticmethod
    def _to_item(row: Row[Any]) -> Item:
        m = row._mapping
        error = m["error"]
        result = m["result"]
        return Item(
            batch_id=m["batch_id"],
            key=m["key"],
            position=m["position"],
            payload=loads(m["payload"]),
            state=ItemState(m["state"]),
            progress=m["progress"],
            message=m["message"],
            attempt=m["attempt"],
            error=None if error is None else ItemError.model_validate_json(error),
            errors=errors_of(m["history"]),
            result=None if result is None else loads(result),
            created_at=_ts(m["created_at"]),  # type: ignore[arg-type]
            updated_at=_ts(m["updated_at"]),  # type: ignore[arg-type]
            started_at=_ts(m["started_at"]),
            # The lease's deadline while running; while queued the column holds the retry
            # time, which is not a lease.
            lease_expires_at=_ts(m["claimable_at"]) if m["state"] == _R else None,
            finished_at=_ts(m["finished_at"]),
        )

    async def list_items(
        self,
        batch_id: str,
        *,
        states: Collection[ItemState] | None = None,
        after: int | None = None,
        limit: int = 100,
    ) -> list[Item]:
        """List items in submission order (see `Storage.list_items`)."""
        query = self._items_query(batch_id, states=states, after=after, limit=limit)
        if query is None:
            return []

        async def work(conn: AsyncConnection) -> list[Item]:
            rows = (await conn.execute(query)).all()
            if not rows:
                await self._require_batch(conn, batch_id)
            return [self._to_item(row) for row in rows]

        return await self._run(work, read=True)

    def _items_query(
        self,
        batch_id: str,
        *,
        states: Collection[ItemState] | None,
        after: int | None,
        limit: int,
    ) -> Any:
        """The SELECT of `list_items` (None when no state is asked for)."""
        i = self.tables.items
        query = select(i).where(i.c.batch_id == batch_id)
        if states is not None:
            values = sorted({ItemState(s).value for s in states})
            if not values:
                return None
            query = query.where(i.c.state.in_(values))
        if after is not None:
            query = query.where(i.c.position > after)
        return query.order_by(i.c.position).limit(limit)

    async def list_batches(
        self,
        *,
        metadata: MetadataFilter | None = None,
        parent_id: str | None = None,
        before: str | None = None,
        limit: int = 100,
    ) -> list[BatchRecord]:
        """List batches newest first (see `Storage.list_batches`)."""
        query = self._batches_query(
            metadata=metadata, parent_id=parent_id, before=before, limit=limit
        )

        async def work(conn: AsyncConnection) -> list[BatchRecord]:
            return [self._to_record(row) for row in (await conn.execute(query)).all()]

        return await self._run(work, read=True)

    def _batches_query(
        self,
        *,
        metadata: MetadataFilter | None,
        parent_id: str | None,
        before: str | None,
        limit: int,
    ) -> Any:
        """The SELECT of `list_batches`."""
        b = self.tables.batches
        query = self._batch_query()
        if before is not None:
            query = query.where(b.c.id < before)
        if parent_id is not None:
            query = query.where(b.c.parent_id == parent_id)
        if metadata:
            for condition in self._tag_conditions(metadata, b.c.id):
                query = query.where(condition)
        return query.order_by(b.c.id.desc()).limit(limit)

    def _tag_conditions(
        self, metadata: MetadataFilter, batch_id: ColumnElement[Any]
    ) -> list[ColumnElement[bool]]:
        tg = self.tables.tags
        conditions: list[ColumnElement[bool]] = []
        for name, value in metadata.items():
            tag = _tag(name, value)
            if tag is None:  # no stored tag looks like it: it matches nothing, as elsewhere
                conditions.append(literal(False))
                continue
            conditions.append(
                batch_id.in_(select(tg.c.batch_id).where(tg.c.name == tag[0], tg.c.value == tag[1]))
            )
        return conditions

    # -- claiming and finishing ------------------------------------------------------------
    # The hot path runs statements built once, with bound parameters: SQLAlchemy reuses
    # their compiled form instead of building, keying and compiling a statement per call.

    def _stmt(self, key: Hashable, build: Callable[[], Any]) -> Any:
        stmt = self._stmts.get(key)
        if stmt is None:
            stmt = self._stmts[key] = build()
            self._cached.add(id(stmt))  # kept alive in _stmts, so the id stays its own
        return stmt

    async def _exec(self, conn: AsyncConnection, stmt: Any, params: dict[str, Any]) -> _Result:
        """Execute one statement of a transaction; on SQLite in one hop to the driver's thread.

        SQLAlchemy's aiosqlite adapter makes several hops to the driver's thread per
        statement (cursor, execute, fetch, close); the compiled SQL sent straight through
        the same connection (so inside the same transaction) costs one.
        """
        if self._dialect != "sqlite" or id(stmt) not in self._cached:
            result = await conn.execute(stmt, params)
            rows = result.all() if result.returns_rows else []
            return _Result(list(rows), result.rowcount)
        sql, args, row_type = self._plan(stmt, params)
        raw = (await conn.get_raw_connection()).driver_connection
        assert raw is not None
        fetched = await raw.execute_fetchall(sql, args)
        if row_type is None:
            return _Result([], -1)
        return _Result([row_type(*row) for row in fetched], len(fetched))

    def _plan(self, stmt: Any, params: dict[str, Any]) -> tuple[str, list[Any], Any]:
        """SQL text, positional arguments and row type of ``stmt``, to hand to the driver.

        Compiled once for prebuilt statements; an expanding ``IN`` is rendered per call.
        """
        plan = self._plans.get(id(stmt))
        if plan is None:
            compiled = stmt.compile(dialect=self.engine.dialect)
            names = [column.key for column in stmt.exported_columns] if _returns_rows(stmt) else []
            plan = _Plan(
                compiled,
                namedtuple("Row", names, rename=True) if names else None,
                "POSTCOMPILE" in compiled.string,
            )
            if id(stmt) in self._cached:
                self._plans[id(stmt)] = plan
        compiled = plan.compiled
        if plan.expanding:
            state = compiled.construct_expanded_state(params)
            return state.statement, list(state.positional_parameters), plan.row_type
        values = compiled.construct_params(params)
        return compiled.string, [values[name] for name in compiled.positiontup], plan.row_type

    def _claim_query(self, request: ClaimRequest) -> tuple[Any, dict[str, Any]]:
        """The SELECT that finds the next claimable item, and its parameters."""
        i = self.tables.items
        ids = request.batch_ids
        kind = "any" if ids is None else ("one" if len(ids) == 1 else "many")

        def build() -> Any:
            query = select(
                i.c.batch_id,
                i.c.position,
                i.c.key,
                i.c.payload,
                i.c.state,
                i.c.attempt,
                i.c.cancel_requested,
                i.c.history,
            )
            if kind == "one":
                query = query.where(i.c.batch_id == bindparam("b_id"))
            elif kind == "many":
                query = query.where(i.c.batch_id.in_(bindparam("b_ids", expanding=True)))
            query = query.where(i.c.active == 1, i.c.claimable_at <= bindparam("b_now"))
            order = (i.c.position,) if kind == "one" else (i.c.batch_id, i.c.position)
            # MySQL and MariaDB may otherwise walk the primary key in position order and
            # read every finished item of the batch before the first claimable one.
            index = "ix_items_claim" if kind == "one" else "ix_items_claim_any"
            query = _force_index(query.order_by(*order).limit(1), i, self.table_prefix + index)
            return query.with_for_update(skip_locked=True)

        if request.metadata:
            query = build()
            for condition in self._tag_conditions(request.metadata, i.c.batch_id):
                query = query.where(condition)
        else:
            query = self._stmt(("claim", kind), build)
        params: dict[str, Any] = {}
        if kind == "one":
            params["b_id"] = ids[0]  # type: ignore[index]
        elif kind == "many":
            params["b_ids"] = list(ids)  # type: ignore[arg-type]
        return query, params

    async def claim(self, request: ClaimRequest) -> Claim | None:
        """Claim the oldest claimable item (see `Storage.claim`)."""
        pending = self._in_doubt(request) or _PendingClaim()
        with self._doubt_on_failure(pending):
            return await self._write(lambda: self._claim(request, pending))

    def _in_doubt(self, request: ClaimRequest) -> _PendingClaim | None:
        """A claim in doubt (see `ClaimsInDoubt`) that ``request`` may take over."""
        batches = self._doubtful.batches(request)
        return self._doubtful.take(batches[0]) if batches else None

    @contextmanager
    def _doubt_on_failure(self, pending: _PendingClaim) -> Iterator[None]:
        try:
            yield
        except StorageError:
            if pending.sent_in is not None:  # its claim was sent: it may have committed
                self._doubtful.remember(pending.sent_in, pending)
            raise

    def _claim(self, request: ClaimRequest, pending: _PendingClaim) -> Steps[Claim | None]:
        if request.batch_ids is not None and not request.batch_ids:
            return None
        i = self.tables.items
        if pending.sent_in is not None:
            # An earlier try of this claim sent its UPDATE and then lost the connection: if
            # it committed, the item is this claim's, not a stray running until its lease
            # lapses (one lease of delay, and an attempt counted for nothing). It is the
            # batch's running item holding the claim's token.
            found = self._stmt(
                "claim_found",
                lambda: select(i.c.key, i.c.payload, i.c.attempt, i.c.history, i.c.position).where(
                    i.c.batch_id == bindparam("b_id"),
                    i.c.state == _R,
                    i.c.token == bindparam("b_token"),
                ),
            )
            batch_id = pending.sent_in
            row = (yield (found, {"b_id": batch_id, "b_token": pending.token})).first()
            if row is not None:
                return Claim(
                    lease=Lease(batch_id, row.key, pending.token, row.attempt),
                    position=row.position,
                    payload=loads(row.payload),
                    history=row.history,
                )
            pending.sent_in = None
        query, params = self._claim_query(request)
        update = self._stmt(
            "claim_update",
            lambda: (
                i.update()
                .where(i.c.batch_id == bindparam("b_id"), i.c.position == bindparam("b_pos"))
                .values(
                    state=_R,
                    attempt=bindparam("b_attempt"),
                    token=bindparam("b_token"),
                    claimable_at=bindparam("b_deadline"),
                    progress=0.0,
                    message=None,
                    started_at=bindparam("b_now"),
                    updated_at=bindparam("b_now"),
                )
            ),
        )
        for _ in range(64):
            now = self._now()
            row = (yield query, {**params, "b_now": now}).first()
            if row is None:
                return None
            batch_id, position = row.batch_id, row.position
            if row.cancel_requested:
                # A crashed runner's item in a cancelled batch: it ends cancelled.
                yield self._terminal_at(_C), {"b_id": batch_id, "b_pos": position, "b_now": now}
                yield from self._bump(batch_id, _R, _C, now)
                continue
            token = pending.token
            attempt = row.attempt + 1
            pending.sent_in = batch_id
            yield (
                update,
                {
                    "b_id": batch_id,
                    "b_pos": position,
                    "b_attempt": attempt,
                    "b_token": token,
                    "b_deadline": now + request.lease_seconds,
                    "b_now": now,
                },
            )
            if row.state == _Q:
                yield from self._bump(batch_id, _Q, _R, now, started=True)
            else:
                yield from self._touch(batch_id, now)
            return Claim(
                lease=Lease(batch_id, row.key, token, attempt),
                position=position,
                payload=loads(row.payload),
                history=row.history,
            )
        return None

    def _terminal_values(self, state: str, now: float) -> dict[str, Any]:
        return {
            "state": state,
            "active": 0,
            "claimable_at": None,
            "token": None,
            "finished_at": now,
            "updated_at": now,
        }

    def _terminal_at(self, state: str) -> Any:
        """UPDATE making the item at (b_id, b_pos) terminal at b_now."""
        i = self.tables.items
        return self._stmt(
            ("terminal_at", state),
            lambda: (
                i.update()
                .where(i.c.batch_id == bindparam("b_id"), i.c.position == bindparam("b_pos"))
                .values(
                    state=state,
                    active=0,
                    claimable_at=None,
                    token=None,
                    finished_at=bindparam("b_now"),
                    updated_at=bindparam("b_now"),
                )
            ),
        )

    def _bump(
        self,
        batch_id: str,
        old: str,
        new: str,
        now: float,
        *,
        count: int = 1,
        started: bool = False,
    ) -> Steps[None]:
        """Move ``count`` items from ``old`` to ``new`` in the batch's counters."""
        if count == 0:
            return
        stmt = self._stmt(("bump", old, new, started), lambda: self._build_bump(old, new, started))
        finished = count if (old in _ACTIVE and new not in _ACTIVE) else 0
        yield stmt, {"c_id": batch_id, "c_count": count, "c_finished": finished, "c_now": now}

    def _build_bump(self, old: str, new: str, started: bool) -> Any:
        b = self.tables.batches
        count: Any = bindparam("c_count")
        now: Any = bindparam("c_now")
        # finished_at is assigned first: MySQL evaluates SET left to right, so it must see
        # the counters before this update, as PostgreSQL and SQLite always do.
        values: list[tuple[Any, Any]] = [
            (
                b.c.finished_at,
                case(
                    (
                        and_(
                            b.c.finished_at.is_(None),
                            b.c.n_queued + b.c.n_running - bindparam("c_finished") == 0,
                        ),
                        now,
                    ),
                    else_=b.c.finished_at,
                ),
            ),
            (b.c[_COUNTER[old]], b.c[_COUNTER[old]] - count),
            (b.c[_COUNTER[new]], b.c[_COUNTER[new]] + count),
            (b.c.updated_at, now),
        ]
        if started:
            values.append((b.c.started_at, func.coalesce(b.c.started_at, now)))
        stmt = b.update().where(b.c.id == bindparam("c_id")).ordered_values(*values)
        return self._with_notify(stmt, b.c.id)

    def _touch(self, batch_id: str, now: float) -> Steps[None]:
        b = self.tables.batches
        stmt = self._stmt(
            "touch",
            lambda: self._with_notify(
                b.update().where(b.c.id == bindparam("c_id")).values(updated_at=bindparam("c_now")),
                b.c.id,
            ),
        )
        yield stmt, {"c_id": batch_id, "c_now": now}

    def _with_notify(self, stmt: Any, id_column: Any) -> Any:
        # On PostgreSQL the change is announced by the same statement, at no extra round
        # trip; the notification is delivered when the transaction commits.
        if self._dialect == "postgresql":
            return stmt.returning(func.pg_notify(self._channel, id_column))
        return stmt

    def _leased(self) -> ColumnElement[bool]:
        """The item under the lease (l_batch, l_key, l_token), if it is still current."""
        i = self.tables.items
        return and_(
            i.c.batch_id == bindparam("l_batch"),
            i.c.key == bindparam("l_key"),
            i.c.token == bindparam("l_token"),
            i.c.state == _R,
        )

    @staticmethod
    def _lease_params(lease: Lease) -> dict[str, Any]:
        return {"l_batch": lease.batch_id, "l_key": lease.key, "l_token": lease.token}

    async def heartbeat(self, lease: Lease, *, lease_seconds: float) -> LeaseStatus:
        """Extend a current lease (see `Storage.heartbeat`)."""
        return await self._write(
            lambda: self._extend(lease, None, None, self._now() + lease_seconds)
        )

    async def record_progress(
        self,
        lease: Lease,
        progress: float,
        message: str | None,
        *,
        lease_seconds: float | None = None,
    ) -> LeaseStatus:
        """Record progress of a running item: one statement (see `Storage.record_progress`)."""
        deadline = None if lease_seconds is None else self._now() + lease_seconds
        return await self._write(lambda: self._extend(lease, progress, message, deadline))

    def _extend(
        self,
        lease: Lease,
        progress: float | None,
        message: str | None,
        deadline: float | None,
    ) -> Steps[LeaseStatus]:
        i = self.tables.items
        with_progress = progress is not None
        with_deadline = deadline is not None

        def build() -> Any:
            values: dict[str, Any] = {}
            if with_progress:
                values.update(
                    progress=bindparam("e_progress"),
                    message=bindparam("e_message", type_=Text),
                    updated_at=bindparam("e_now"),
                )
            if with_deadline:
                values["claimable_at"] = bindparam("e_deadline")
            stmt = i.update().where(self._leased()).values(**values)
            if not self._returning:
                return stmt
            returning: list[Any] = [i.c.cancel_requested]
            if with_progress and self._dialect == "postgresql":
                returning.append(func.pg_notify(self._channel, i.c.batch_id))
            return stmt.returning(*returning)

        stmt = self._stmt(("extend", with_progress, with_deadline), build)
        params = self._lease_params(lease)
        params.update(
            e_progress=progress, e_message=message, e_now=self._now(), e_deadline=deadline
        )
        if self._returning:
            row = (yield stmt, params).first()
            if row is None:
                return LeaseStatus(held=False)
            return LeaseStatus(held=True, cancel_requested=bool(row[0]))
        if (yield stmt, params).rowcount != 1:
            return LeaseStatus(held=False)
        flag = self._stmt("lease_flag", lambda: select(i.c.cancel_requested).where(self._leased()))
        return LeaseStatus(held=True, cancel_requested=bool((yield flag, params).scalar()))

    async def finish(
        self,
        lease: Lease,
        outcome: Outcome,
        *,
        then_claim: ClaimRequest | None = None,
    ) -> FinishResult:
        """End a leased attempt and claim the next item in one transaction."""
        if (
            self._dialect == "postgresql"
            and then_claim is not None
            and outcome.state.value in (_S, _F, _C)
            and then_claim.batch_ids == (lease.batch_id,)
            and not then_claim.metadata
        ):
            sent = _PendingClaim()
            with self._doubt_on_failure(sent):
                if self._pg_lanes:
                    return await self._run_lane(
                        lambda lane: self._pg_finish_and_claim(
                            lane, lease, outcome, then_claim, sent
                        )
                    )
                return await self._run(
                    lambda conn: self._pg_finish_and_claim(conn, lease, outcome, then_claim, sent),
                    autocommit=True,
                )

        pending = _PendingClaim()

        def steps() -> Steps[FinishResult]:
            again, pending.finishing = pending.finishing, True
            accepted = yield from self._finish(lease, outcome)
            if not accepted and again:
                accepted = yield from self._ended_as(lease, outcome)
            claim = None if then_claim is None else (yield from self._claim(then_claim, pending))
            return FinishResult(accepted=accepted, claim=claim)

        with self._doubt_on_failure(pending):
            return await self._write(steps)

    async def _pg_finish_and_claim(
        self,
        via: _Lane | AsyncConnection,
        lease: Lease,
        outcome: Outcome,
        request: ClaimRequest,
        sent: _PendingClaim,
    ) -> FinishResult:
        # The runner's steady state, in ONE statement (so one round trip and one commit):
        # end the leased item, claim the next item of the same batch, and move both in the
        # batch's counters. A statement is atomic on its own, hence autocommit. On asyncpg
        # it goes to the driver directly: SQLAlchemy's execution path would cost more than
        # the statement.
        if sent.sent_in is not None:
            done = await self._pg_sent_before(via, lease, outcome, sent.token)
            if done is not None:
                return done
        state = outcome.state.value
        now = self._now()
        token = sent.token
        sent.sent_in = lease.batch_id
        stmt = self._stmt(("pg_finish_claim", state), lambda: self._pg_finish_claim_sql(state))
        params = {
            "lb": lease.batch_id,
            "lk": lease.key,
            "lt": lease.token,
            "now": now,
            "result": outcome.result,
            "error": None if outcome.error is None else outcome.error.model_dump_json(),
            "history": outcome.history,
            "token": token,
            "deadline": now + request.lease_seconds,
        }
        if isinstance(via, _Lane):
            sql, args, _ = self._plan(stmt, params)
            try:
                row = await via.driver.fetchrow(sql, *args)
            except Exception as exc:
                raise _asyncpg_fault(via.driver, exc) from exc
        else:
            row = (await via.execute(stmt, params)).one()
        accepted, key, payload, attempt, position, history = row[:6]
        claim = None
        if key is not None:
            claim = Claim(
                lease=Lease(lease.batch_id, key, token, attempt),
                position=position,
                payload=loads(payload),
                history=history,
            )
        return FinishResult(accepted=bool(accepted), claim=claim)

    async def _pg_sent_before(
        self, via: _Lane | AsyncConnection, lease: Lease, outcome: Outcome, token: str
    ) -> FinishResult | None:
        """What an earlier try of a finish-and-claim did, if its reply was lost after it ran.

        Its claim, if it committed, is the running item of the batch holding its token; its
        finish was accepted if the leased item ended as asked in the same attempt.
        """

        def build() -> Any:
            items = self.tables.items.name
            return text(f"""
SELECT key, payload, attempt, position, history FROM {items}
WHERE batch_id = :lb AND state = 'running' AND token = :token
UNION ALL
SELECT NULL, NULL, attempt, NULL, state FROM {items}
WHERE batch_id = :lb AND key = :lk AND token IS NULL
""")

        stmt = self._stmt("pg_sent_before", build)
        params = {"lb": lease.batch_id, "token": token, "lk": lease.key}
        rows: list[Any]
        if isinstance(via, _Lane):
            sql, args, _ = self._plan(stmt, params)
            try:
                rows = list(await via.driver.fetch(sql, *args))
            except Exception as exc:
                raise _asyncpg_fault(via.driver, exc) from exc
        else:
            rows = list(await via.execute(stmt, params))
        claimed = [r for r in rows if r[0] is not None]
        if not claimed:
            return None
        key, payload, attempt, position, history = claimed[0]
        ended = [r for r in rows if r[0] is None]
        accepted = (
            bool(ended) and ended[0][2] == lease.attempt and ended[0][4] == outcome.state.value
        )
        return FinishResult(
            accepted=accepted,
            claim=Claim(
                lease=Lease(lease.batch_id, key, token, attempt),
                position=position,
                payload=loads(payload),
                history=history,
            ),
        )

    def _pg_finish_claim_sql(self, state: str) -> Any:
        items, batches = self.tables.items.name, self.tables.batches.name
        counter = _COUNTER[state]
        if state == _S:
            outcome = "result = :result, progress = 1.0, error = NULL"
        else:
            outcome = "error = COALESCE(CAST(:error AS TEXT), error)"
        sql = f"""
WITH f AS (
    UPDATE {items} SET state = '{state}', active = 0, claimable_at = NULL, token = NULL,
        finished_at = :now, updated_at = :now, {outcome},
        history = COALESCE(CAST(:history AS TEXT), history)
    WHERE batch_id = :lb AND key = :lk AND token = :lt AND state = 'running'
    RETURNING batch_id
), c AS (
    SELECT batch_id, position, state FROM {items}
    WHERE batch_id = :lb AND active = 1 AND claimable_at <= :now
        AND NOT cancel_requested AND key <> :lk
    ORDER BY position LIMIT 1 FOR UPDATE SKIP LOCKED
), u AS (
    UPDATE {items} AS i SET state = 'running', attempt = i.attempt + 1, token = :token,
        claimable_at = :deadline, progress = 0.0, message = NULL,
        started_at = :now, updated_at = :now
    FROM c WHERE i.batch_id = c.batch_id AND i.position = c.position
    RETURNING i.key, i.payload, i.attempt, i.position, i.history, c.state AS old_state
), n AS (
    SELECT (SELECT count(*) FROM f) AS done,
           (SELECT count(*) FROM u WHERE old_state = 'queued') AS started,
           (SELECT count(*) FROM u) AS claimed
), b AS (
    UPDATE {batches} SET
        finished_at = CASE WHEN finished_at IS NULL
            AND n_queued + n_running - n.done = 0 THEN :now ELSE finished_at END,
        n_queued = n_queued - n.started,
        n_running = n_running - n.done + n.started,
        {counter} = {counter} + n.done,
        started_at = CASE WHEN n.claimed > 0 THEN COALESCE(started_at, :now)
            ELSE started_at END,
        updated_at = :now
    FROM n WHERE id = :lb AND (n.done > 0 OR n.claimed > 0)
    RETURNING pg_notify('{self._channel}', id)
)
SELECT n.done AS accepted, u.key, u.payload, u.attempt, u.position, u.history,
    (SELECT count(*) FROM b)
FROM n LEFT JOIN u ON true
"""
        typed = bindparam("result", type_=Text) if state == _S else bindparam("error", type_=Text)
        return text(sql).bindparams(typed, bindparam("history", type_=Text))

    def _finish_stmt(self, state: str) -> Any:
        i = self.tables.items

        def build() -> Any:
            error = func.coalesce(bindparam("f_error", type_=Text), i.c.error)
            history = func.coalesce(bindparam("f_history", type_=Text), i.c.history)
            values: dict[str, Any]
            if state == _Q:
                values = {
                    "state": _Q,
                    "claimable_at": bindparam("f_at"),
                    "token": None,
                    "progress": 0.0,
                    "message": None,
                    "updated_at": bindparam("f_now"),
                    "error": error,
                    "history": history,
                }
            else:
                values = {
                    "state": state,
                    "active": 0,
                    "claimable_at": None,
                    "token": None,
                    "finished_at": bindparam("f_now"),
                    "updated_at": bindparam("f_now"),
                    "history": history,
                }
                if state == _S:
                    values.update(
                        result=bindparam("f_result", type_=Text), progress=1.0, error=None
                    )
                else:
                    values["error"] = error
            stmt = i.update().where(self._leased()).values(**values)
            if self._dialect == "sqlite":
                stmt = stmt.returning(i.c.position)  # how the fast path counts rows
            return stmt

        return self._stmt(("finish", state), build)

    def _ended_as(self, lease: Lease, outcome: Outcome) -> Steps[bool]:
        """Whether an earlier try of this finish committed (its reply lost with the
        connection): the item ended as asked, in the leased attempt, and nobody holds it."""
        i = self.tables.items
        query = self._stmt(
            "ended_as",
            lambda: select(i.c.state, i.c.attempt).where(
                i.c.batch_id == bindparam("b_id"),
                i.c.key == bindparam("b_key"),
                i.c.token.is_(None),
            ),
        )
        row = (yield query, {"b_id": lease.batch_id, "b_key": lease.key}).first()
        if row is None or row.attempt != lease.attempt:
            return False
        asked = outcome.state.value
        return bool(row.state == asked or (asked == _Q and row.state == _C))

    def _finish(self, lease: Lease, outcome: Outcome) -> Steps[bool]:
        i = self.tables.items
        now = self._now()
        state = outcome.state.value
        params = self._lease_params(lease)
        if state == _Q:
            # A release in a cancelled batch ends the item instead: read the flag first.
            flag_query = self._stmt(
                "release_flag",
                lambda: select(i.c.cancel_requested).where(self._leased()).with_for_update(),
            )
            flag = (yield flag_query, params).first()
            if flag is None:
                return False
            if flag[0]:
                state = _C
        params.update(
            f_now=now,
            f_at=now + max(0.0, outcome.delay),
            f_result=outcome.result,
            f_error=None if outcome.error is None else outcome.error.model_dump_json(),
            f_history=outcome.history,
        )
        done = yield self._finish_stmt(state), params
        if done.rowcount != 1:
            return False
        yield from self._bump(lease.batch_id, _R, state, now)
        return True

    async def cancel_batch(self, batch_id: str, *, reason: str | None = None) -> BatchRecord:
        """Request a batch's cancel (see `Storage.cancel_batch`)."""
        i, b = self.tables.items, self.tables.batches

        async def work(conn: AsyncConnection) -> BatchRecord:
            now = self._now()
            row = (
                await conn.execute(
                    select(b.c.finished_at).where(b.c.id == batch_id).with_for_update()
                )
            ).first()
            if row is None:
                raise BatchNotFound(batch_id)
            if row[0] is not None:
                return await self._record(conn, batch_id)
            await conn.execute(
                b.update()
                .where(b.c.id == batch_id, b.c.cancel_requested_at.is_(None))
                .values(cancel_requested_at=now, cancel_reason=reason)
            )
            queued = await conn.execute(
                i.update()
                .where(i.c.batch_id == batch_id, i.c.state == _Q)
                .values(**self._terminal_values(_C, now))
            )
            await self._drive(conn, self._bump(batch_id, _Q, _C, now, count=queued.rowcount))
            expired = await conn.execute(
                i.update()
                .where(i.c.batch_id == batch_id, i.c.state == _R, i.c.claimable_at <= now)
                .values(**self._terminal_values(_C, now))
            )
            await self._drive(conn, self._bump(batch_id, _R, _C, now, count=expired.rowcount))
            await conn.execute(
                i.update()
                .where(i.c.batch_id == batch_id, i.c.state == _R)
                .values(cancel_requested=True)
            )
            await self._drive(conn, self._touch(batch_id, now))
            return await self._record(conn, batch_id)

        return await self._run(work)

    # -- completion hooks, notification, retention -----------------------------------------

    async def claim_finished_batch(
        self, *, lease_seconds: float, batch_id: str | None = None
    ) -> FinishedBatch | None:
        """Claim a finished batch whose hook is due (see `Storage.claim_finished_batch`)."""
        b = self.tables.batches

        async def work(conn: AsyncConnection) -> FinishedBatch | None:
            now = self._now()
            query = select(b.c.id).where(
                b.c.finished_at.is_not(None),
                b.c.hook_done.is_(False),
                or_(b.c.hook_token.is_(None), b.c.hook_deadline <= now),
            )
            if batch_id is not None:
                await self._require_batch(conn, batch_id)
                query = query.where(b.c.id == batch_id)
            query = query.order_by(b.c.finished_at).limit(1)
            found = (await conn.execute(query.with_for_update(skip_locked=True))).scalar()
            if found is None:
                return None
            token = new_token()
            await conn.execute(
                b.update()
                .where(b.c.id == found)
                .values(hook_token=token, hook_deadline=now + lease_seconds)
            )
            return FinishedBatch(record=await self._record(conn, found), token=token)

        return await self._run(work)

    async def ack_finished_batch(self, batch_id: str, token: str) -> bool:
        """Record that a batch's hook ran (see `Storage.ack_finished_batch`)."""
        b = self.tables.batches

        async def work(conn: AsyncConnection) -> bool:
            done = await conn.execute(
                b.update()
                .where(b.c.id == batch_id, b.c.hook_token == token, b.c.hook_done.is_(False))
                .values(hook_done=True, hook_token=None)
            )
            return bool(done.rowcount == 1)

        return await self._run(work)

    @asynccontextmanager
    async def subscribe(self, batch_id: str) -> AsyncIterator[Subscription]:
        """Wait for changes of one batch: LISTEN/NOTIFY on PostgreSQL, polling elsewhere."""
        if not self._opened:
            await self.open()
        if self._dialect != "postgresql" or self.engine.dialect.driver != "asyncpg":
            yield PollingSubscription(self.poll_interval)
            return
        async with self.engine.connect() as conn:
            raw = await conn.get_raw_connection()
            driver = raw.driver_connection
            assert driver is not None
            sub = _ListenSubscription(batch_id)
            await driver.add_listener(self._channel, sub.on_notify)
            try:
                yield sub
            finally:
                with anyio.CancelScope(shield=True):
                    try:
                        await driver.remove_listener(self._channel, sub.on_notify)
                    except Exception:  # the connection is gone: nothing to remove
                        logger.debug("could not remove a LISTEN callback", exc_info=True)

    async def delete_batch(self, batch_id: str) -> bool:
        """Delete a batch and its items (see `Storage.delete_batch`)."""
        return await self._run(lambda conn: self._delete(conn, batch_id))

    async def _delete(self, conn: AsyncConnection, batch_id: str) -> bool:
        t = self.tables
        await conn.execute(t.items.delete().where(t.items.c.batch_id == batch_id))
        await conn.execute(t.tags.delete().where(t.tags.c.batch_id == batch_id))
        done = await conn.execute(t.batches.delete().where(t.batches.c.id == batch_id))
        return bool(done.rowcount == 1)

    async def delete_finished_batches(self, *, older_than: float) -> int:
        """Delete batches finished more than ``older_than`` seconds ago (retention)."""
        b = self.tables.batches
        cutoff = self._now() - older_than

        async def doomed(conn: AsyncConnection) -> list[str]:
            query = select(b.c.id).where(b.c.finished_at.is_not(None), b.c.finished_at <= cutoff)
            return list((await conn.execute(query)).scalars())

        deleted = 0
        for batch_id in await self._run(doomed, read=True):
            deleted += await self.delete_batch(batch_id)
        return deleted


def _force_index(query: Any, table: Any, index: str) -> Any:
    """``query`` reading ``table`` through ``index`` on MySQL/MariaDB (a no-op elsewhere)."""
    for dialect in ("mysql", "mariadb"):
        query = query.with_hint(table, f"FORCE INDEX ({index})", dialect_name=dialect)
    return query


_PG_LANES = 4
"""Connections a PostgreSQL storage keeps for its hot path between steps."""


@dataclass(slots=True)
class _Lane:
    """A connection kept out of the pool, and its driver's own connection object."""

    conn: AsyncConnection
    driver: Any


@dataclass(slots=True)
class _Plan:
    """A statement compiled for the driver: its SQL, row type and whether ``IN`` expands."""

    compiled: Any
    row_type: Any
    expanding: bool


@dataclass
class _PendingClaim:
    """What one claim (or finish) call has sent, kept across the retries of its transaction.

    Every try uses the same token, so the item of a try whose commit went through (its
    reply lost with the connection) is recognised by the next try.
    """

    token: str = field(default_factory=new_token)
    sent_in: str | None = None  # the batch of the claim last sent, if one was
    finishing: bool = False  # a try of the finish before it has been sent


class _DriverFault(Exception):
    """An error of a statement sent to the driver directly, past SQLAlchemy."""

    def __init__(self, orig: BaseException, *, transient: bool, broken: bool = False) -> None:
        super().__init__(str(orig))
        self.orig = orig
        self.transient = transient
        self.broken = broken  # the connection is unusable: drop it from the pool


def _asyncpg_fault(driver: Any, exc: Exception) -> _DriverFault:
    """What an error asyncpg raised means: retry, and drop the connection if it is gone."""
    broken = bool(driver.is_closed()) or is_broken_connection(exc)
    return _DriverFault(exc, transient=broken or is_transient_driver_error(exc), broken=broken)


def _aiosqlite_runs_functions() -> bool:
    """Whether aiosqlite can run a function in its thread (a whole transaction per call)."""
    try:
        import aiosqlite
    except ImportError:
        return False
    connection = aiosqlite.Connection
    return callable(getattr(connection, "_execute", None)) and isinstance(
        getattr(connection, "_conn", None), property
    )


class _Result:
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


def _returns_rows(stmt: Any) -> bool:
    return bool(getattr(stmt, "is_select", False) or getattr(stmt, "_returning", ()))


class _ListenSubscription:
    def __init__(self, batch_id: str) -> None:
        self._batch_id = batch_id
        self._changed = False
        self._event: anyio.Event | None = None

    def on_notify(self, connection: object, pid: int, channel: str, payload: str) -> None:
        if payload == self._batch_id:
            self._changed = True
            if self._event is not None:
                self._event.set()

    async def wait(self, timeout: float) -> None:
        if not self._changed:
            self._event = anyio.Event()
            with anyio.move_on_after(timeout):
                await self._event.wait()
            self._event = None
        else:
            await anyio.lowlevel.checkpoint()
        self._changed = False


def _configure_sqlite(engine: AsyncEngine) -> None:
    # Once per engine: storages sharing a host's engine, or opened again, would otherwise
    # each add a listener, and the second BEGIN would fail inside the first.
    sync_engine = engine.sync_engine
    if not event.contains(sync_engine, "begin", _sqlite_begin):
        event.listen(sync_engine, "connect", _sqlite_connect)
        event.listen(sync_engine, "begin", _sqlite_begin)


def _sqlite_connect(dbapi_connection: Any, _record: Any) -> None:
    # Let SQLAlchemy's "begin" event issue BEGIN itself (the driver would defer it).
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    # The busy timeout first: switching a new file to WAL needs its lock, which another
    # process opening the same file at the same moment may hold.
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


def _sqlite_begin(conn: Any) -> None:
    # Writers take the write lock up front, so two transactions never both read and
    # then fail to upgrade; readers take none.
    if conn.get_execution_options().get("batchkit_read"):
        conn.exec_driver_sql("BEGIN")
    else:
        conn.exec_driver_sql("BEGIN IMMEDIATE")
