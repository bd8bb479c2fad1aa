"""SQLStorage: batches and items in SQLite, PostgreSQL or MySQL/MariaDB (SQLAlchemy 2 async).

The storage's steps are written once here, on three pieces: the `Connector` (the engine,
the database's clock, the statements built once), the `Statements` of its tables, and the
`Dialect` of its database (``_sqlite``, ``_postgres``, ``_mysql``), chosen in `open`.
"""

from __future__ import annotations

import asyncio
import logging
from contextlib import asynccontextmanager, contextmanager, nullcontext
from functools import partial
from typing import TYPE_CHECKING, Any, TypeVar

import anyio
from sqlalchemy import MetaData, or_, select
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, DBAPIError

from ..._collector import collector_paused
from ..._secrets import redact, unparsable
from ...exceptions import (
    BatchNotFound,
    InvalidStorageURL,
    ItemNotFound,
    StorageError,
)
from ...ids import new_token
from ...protocols import (
    BatchRecord,
    Claim,
    ClaimRequest,
    FinishedBatch,
    FinishResult,
    GroupResult,
    Lease,
    LeaseStatus,
    MetadataFilter,
    NewBatch,
    Outcome,
    Subscription,
)
from .._base import AsyncContext, Fault, check_group, refuse_synchronous_driver, retrying
from .._bell import Bell, bell
from .._doubt import ClaimsInDoubt
from ._claim import claim_steps
from ._connector import ConnectionSettings, Connector
from ._dialect import DIALECTS as _DIALECTS
from ._dialect import Dialect
from ._faults import DriverFault, is_driver_error, is_duplicate
from ._group import group_steps
from ._options import driver_options, schema_of, split_url_options
from ._rows import new_record, to_item, to_record
from ._statements import SENT_ANYWHERE, C, Owed, PendingClaim, Q, R, Statements, Steps
from .schema import Tables, build_tables, stamp_or_check, validate_prefix

if TYPE_CHECKING:
    from collections.abc import (
        AsyncIterator,
        Awaitable,
        Callable,
        Collection,
        Iterator,
        Sequence,
    )

    from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

    from ...models import ItemState
    from ...protocols import ItemRecord

# `tag_name`, `tag_value` (from `_rows`) and `Steps` (from `_statements`) are imported
# from this module too: they stay importable here.
__all__ = ["SQLStorage"]

logger = logging.getLogger("batchkit.storage.sql")

T = TypeVar("T")


class SQLStorage(AsyncContext):
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
        schema: the PostgreSQL schema of the tables, or on MySQL/MariaDB the database
            (of the same server) that holds them; `None`: the connection's own. SQLite
            refuses one. Also ``?schema=`` in the URL.
        create_schema: create the tables if they are missing when the storage opens;
            with `False` they must exist (created by your migrations).
        poll_interval: how often a waiting `watch` looks again on databases without
            change notification (SQLite, MySQL/MariaDB).
        retries: how many times a transaction hit by a transient fault is retried.
        chunk_size: items per statement when creating a batch (an ``INSERT``, or a
            ``COPY`` on asyncpg): keep one well within a ``statement_timeout``.
        engine_options: extra keyword arguments for `create_async_engine` (URL only).
        max_connections: the connections the storage holds at most, its pool, its hot
            path's and its LISTEN connection together (5); a wait for one is logged.
        pool_timeout: seconds a step waits for a connection before its `StorageError` (30).
        pooler: ``"transaction"`` behind a transaction-mode pooler (PgBouncer): no
            prepared statement outlives its transaction; ``"session"`` changes nothing.
        listen_url: with ``pooler="transaction"``, a URL straight to the database for
            `watch`'s LISTEN (without one, `watch` polls). These four may also be given in
            the URL's query (``?max_connections=8``): see the docs' "Connections and poolers".
    """

    def __init__(
        self,
        url_or_engine: str | AsyncEngine,
        *,
        table_prefix: str = "batchkit_",
        schema: str | None = None,
        create_schema: bool = True,
        poll_interval: float = 0.5,
        retries: int = 6,
        chunk_size: int = 1_000,
        engine_options: dict[str, Any] | None = None,
        max_connections: int | None = None,
        pool_timeout: float | None = None,
        pooler: str | None = None,
        listen_url: str | None = None,
    ) -> None:
        validate_prefix(table_prefix)
        url_options: dict[str, str] = {}
        if isinstance(url_or_engine, str):
            refuse_synchronous_driver(url_or_engine)
            # batchkit's own options of the URL's query, taken off before SQLAlchemy reads it.
            url_or_engine, url_options = split_url_options(url_or_engine)
        settings = ConnectionSettings.of(
            max_connections=max_connections,
            pool_timeout=pool_timeout,
            pooler=pooler,
            listen_url=listen_url,
            url_options=url_options,
        )
        self._connector = Connector(url_or_engine, engine_options or {}, settings)
        self.table_prefix = table_prefix
        self.schema = schema_of(url_or_engine, schema, url_options, _DIALECTS)
        self.create_schema = create_schema
        self.poll_interval = poll_interval
        self.retries = retries
        self.chunk_size = chunk_size
        self.metadata: MetaData = MetaData()
        self.tables: Tables = build_tables(self.metadata, table_prefix, self.schema)
        self._sql = Statements(self.tables, self._connector, table_prefix)
        # Until `open` picks the database's own: a dialect that adds nothing.
        self._dialect = Dialect(self._connector, self._sql, table_prefix)
        self._opened = False
        self._open_lock = anyio.Lock()
        # Rung when this storage makes new work (see `subscribe_work`); the tables' own
        # once open, shared with every storage of this process on them.
        self._bell = Bell()
        # Claims that may have committed as the store went away past the retries.
        self._doubtful: ClaimsInDoubt[PendingClaim] = ClaimsInDoubt()

    @classmethod
    def from_url(cls, url: str, **options: Any) -> SQLStorage:
        """A storage for ``url`` that owns (and on close disposes) its engine."""
        return cls(url, **options)

    def __repr__(self) -> str:
        schema = "" if self.schema is None else f", schema={self.schema!r}"
        return f"SQLStorage({self._connector.shown}, table_prefix={self.table_prefix!r}{schema})"

    @property
    def engine(self) -> AsyncEngine:
        """The engine (created on open when the storage was built from a URL)."""
        return self._connector.engine

    # -- lifecycle (``async with`` comes from `AsyncContext`) -----------------------------

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
            connector = self._connector
            if not connector.has_engine:
                url = connector.url
                assert url is not None
                try:
                    backend = make_url(url).get_backend_name()
                except (ArgumentError, ValueError) as exc:
                    # The parser's message may quote a piece of the password (a "port").
                    raise InvalidStorageURL(
                        f"cannot open {self!r}: its URL cannot be parsed: "
                        f"{unparsable(url, exc, connector.secrets)}"
                    ) from None
                family = _DIALECTS.get(backend, Dialect)
                with driver_options(connector.secrets, reading=True):
                    connector.create_engine(
                        family.engine_options(url, connector),
                        reserved=family.reserved_connections(url, connector),
                    )
            engine = connector.engine
            name = engine.dialect.name
            if name not in _DIALECTS:
                raise StorageError(f"SQLStorage does not support the {name!r} dialect")
            dialect = _DIALECTS[name].for_engine(engine, connector, self._sql, self.table_prefix)
            self._dialect = dialect
            self._sql.shape = dialect
            self._bell = bell(dialect.bell_key(engine))
            try:
                with driver_options(connector.secrets):
                    await retrying(
                        partial(self._setup, dialect),
                        classify=partial(self._opening_fault, dialect),
                        fault=self._cannot_open,
                        retries=self.retries,
                        write=False,
                    )
            except BaseException:
                # Nothing stays open of a storage that could not open (its own engine).
                with anyio.CancelScope(shield=True):
                    await dialect.close()
                    await connector.dispose()
                raise
            self._opened = True

    async def _setup(self, dialect: Dialect) -> None:
        await self._setup_schema()
        await self._connector.measure_offset(dialect.clock_query())

    def _opening_fault(self, dialect: Dialect, exc: Exception) -> Fault | None:
        cause = self._connector.cause(exc)
        if isinstance(exc, DBAPIError):
            # A new SQLite file is switched to WAL under a lock that another process
            # opening it at the same moment may hold: try again.
            shown = exc.orig if exc.orig is not None else exc
            return Fault(dialect.is_transient(exc), shown, cause)
        if isinstance(exc, OSError):  # the server is not there (connection refused, DNS)
            return Fault(transient=False, shown=exc, cause=cause)
        if isinstance(exc, DriverFault):  # no connection came free (`Connector.connect`)
            return Fault(exc.transient, exc.orig, self._connector.cause(exc.orig))
        if is_driver_error(exc):  # one SQLAlchemy let through unwrapped (asyncpg's, at connect)
            return Fault(dialect.is_transient_driver_error(exc), exc, cause)
        return None

    def _cannot_open(self, says: object) -> StorageError:
        # A driver may repeat the URL's host, which holds a piece of a password written
        # with a raw "@" (``u:p@ss@h`` is host ``ss@h`` to SQLAlchemy).
        return StorageError(f"cannot open {self!r}: {redact(str(says), self._connector.secrets)}")

    async def aclose(self) -> None:
        """Dispose the engine if this storage created it; a host's engine stays open."""
        await self._dialect.close()
        await self._connector.dispose()
        self._opened = False

    async def _setup_schema(self) -> None:
        async with self.engine.begin() as conn, self._schema_lock(conn):
            if self.create_schema:
                await self._dialect.create_tables(conn, self.metadata)
            await stamp_or_check(conn, self.tables, self.table_prefix, create=self.create_schema)

    def _schema_lock(self, conn: AsyncConnection) -> Any:
        # Only a storage that creates the tables needs one (see `Dialect.schema_lock`).
        return self._dialect.schema_lock(conn) if self.create_schema else nullcontext()

    def _now(self) -> float:
        return self._connector.now()

    # -- transactions ----------------------------------------------------------------------

    async def _run(
        self,
        work: Callable[[AsyncConnection], Awaitable[T]],
        *,
        read: bool = False,
        autocommit: bool = False,
    ) -> T:
        """Run ``work`` in a transaction of its own, retried on transient faults."""
        connector = self._connector
        return await self._retrying(
            lambda: connector.attempt(work, read=read, autocommit=autocommit), write=not read
        )

    async def _read(self, steps: Callable[[], Steps[T]]) -> T:
        """Run a read, each statement a snapshot of its own, by the fastest way the
        database allows (`Dialect.read`), retried on transient faults."""
        return await self._retrying(lambda: self._dialect.read(steps), write=False)

    async def _write(self, steps: Callable[[], Steps[T]]) -> T:
        """Run a hot-path write transaction, by the fastest way the database allows
        (`Dialect.write`), retried on transient faults."""
        return await self._retrying(lambda: self._dialect.write(steps), write=True)

    async def _write_alone(self, steps: Callable[[], Steps[T]]) -> T:
        """Run a lease's write (`Dialect.write_alone`), retried on transient faults."""
        return await self._retrying(lambda: self._dialect.write_alone(steps), write=True)

    async def _retrying(self, attempt: Callable[[], Awaitable[T]], *, write: bool) -> T:
        if not self._opened:
            await self.open()
        dialect = self._dialect
        once: Callable[[], Awaitable[T]] = attempt
        if write:
            # A write's try waits its turn where the database has one writer at a time.
            once = partial(dialect.serialize, attempt)
        return await retrying(
            once,
            classify=dialect.classify,
            fault=self._connector.fault,
            retries=self.retries,
            write=write,
            logger=logger,
            message="transient database fault, retrying",
        )

    # -- creating and reading --------------------------------------------------------------

    async def create_batch(self, batch: NewBatch) -> tuple[BatchRecord, bool]:
        """Create a batch with all its items at once (see `Storage.create_batch`), the
        dialect's fastest way: one statement (`Dialect.create_at_once`), one transaction
        (`Dialect.write`), or its items streamed in by ``COPY`` (asyncpg, big batches)."""
        now = self._now()
        at_once = self._dialect.create_at_once(batch, now)

        async def attempt() -> str | None:
            if at_once is not None:
                for _ in range(3):
                    if await self._dialect.write_alone(at_once):
                        return None
                    # Its id or idempotency key is taken: by whom? (None: deleted since.)
                    if (existing := await self._existing(batch)) is not None:
                        return existing
                raise StorageError(f"batch {batch.id} was refused again and again")
            if self._dialect.copies_items(len(batch.items), self.chunk_size):
                return await self._connector.attempt(
                    lambda conn: self._create_copying(conn, batch, now)
                )
            return await self._dialect.write(
                lambda: self._sql.create(batch, now, self.chunk_size, self._dialect.work_notice())
            )

        try:
            existing = await self._retrying(attempt, write=True)
        except StorageError as exc:
            cause = getattr(exc.__cause__, "orig", None) or exc.__cause__
            cancelled = self._dialect.cancelled(cause, batch, self.chunk_size)
            if cancelled is not None:
                raise cancelled from exc.__cause__
            if not is_duplicate(cause):
                raise
            # A concurrent submit with the same idempotency key won, or our own commit
            # landed before a dropped connection made us try again.
            existing = await self._existing(batch)
            if existing is None:
                raise
        if existing == batch.id:
            # Our own: an earlier try committed, its answer lost with the connection.
            return await self.get_batch(batch.id), True
        if existing is not None:
            return await self.get_batch(existing), False
        if batch.items:
            self._bell.ring()
        return new_record(batch, now), True

    async def _existing(self, batch: NewBatch) -> str | None:
        """The batch that took ``batch``'s place: the one holding its idempotency key, or
        ``batch`` itself (an earlier try's commit landed), if either exists."""
        if batch.idempotency_key is not None:
            key = batch.idempotency_key
            found = await self._read(lambda: self._sql.by_idempotency(key))
            if found is not None:
                return found
        return batch.id if await self._read(lambda: self._batch_exists(batch.id)) else None

    async def _create_copying(
        self, conn: AsyncConnection, batch: NewBatch, now: float
    ) -> str | None:
        found = await self._dialect.drive(
            conn, self._sql.create(batch, now, None, self._dialect.work_notice())
        )
        if found is None:
            await self._dialect.insert_items(conn, batch, now, self.chunk_size)
        return found

    async def get_batch(self, batch_id: str) -> BatchRecord:
        """Read a batch and its counters: one primary-key read (see `Storage.get_batch`)."""
        found = await self._read(lambda: self._record_steps(batch_id))
        if found is None:
            raise BatchNotFound(batch_id)
        return found

    def _record_steps(self, batch_id: str) -> Steps[BatchRecord | None]:
        row = (yield self._sql.batch_by_id(), {"b_id": batch_id}).first()
        return None if row is None else to_record(row)

    async def _record(self, conn: AsyncConnection, batch_id: str) -> BatchRecord:
        """`get_batch` inside a transaction on ``conn``."""
        found = await self._dialect.drive(conn, self._record_steps(batch_id))
        if found is None:
            raise BatchNotFound(batch_id)
        return found

    async def get_item(self, batch_id: str, key: str) -> ItemRecord:
        """Read one item (see `Storage.get_item`)."""

        def steps() -> Steps[ItemRecord | bool]:
            row = (yield self._sql.item_by_key(), {"b_id": batch_id, "b_key": key}).first()
            if row is not None:
                return to_item(row)
            return (yield from self._batch_exists(batch_id))

        found = await self._read(steps)
        if found is False:
            raise BatchNotFound(batch_id)
        if found is True:
            raise ItemNotFound(batch_id, key)
        return found

    def _batch_exists(self, batch_id: str) -> Steps[bool]:
        return (yield self._sql.batch_exists(), {"b_id": batch_id}).first() is not None

    async def _require_batch(self, conn: AsyncConnection, batch_id: str) -> None:
        if not await self._dialect.drive(conn, self._batch_exists(batch_id)):
            raise BatchNotFound(batch_id)

    async def list_items(
        self,
        batch_id: str,
        *,
        states: Collection[ItemState] | None = None,
        after: int | None = None,
        limit: int = 100,
    ) -> list[ItemRecord]:
        """List items in submission order (see `Storage.list_items`)."""
        query = self._sql.items_query(batch_id, states=states, after=after, limit=limit)
        if query is None:
            return []
        stmt, params = query

        def steps() -> Steps[list[ItemRecord] | None]:
            rows = (yield stmt, params).rows
            if not rows and not (yield from self._batch_exists(batch_id)):
                return None
            with collector_paused():
                return [to_item(row) for row in rows]

        found = await self._read(steps)
        if found is None:
            raise BatchNotFound(batch_id)
        return found

    async def list_batches(
        self,
        *,
        metadata: MetadataFilter | None = None,
        parent_id: str | None = None,
        before: str | None = None,
        limit: int = 100,
    ) -> list[BatchRecord]:
        """List batches newest first (see `Storage.list_batches`)."""
        query = self._sql.batches_query(
            metadata=metadata, parent_id=parent_id, before=before, limit=limit
        )

        async def work(conn: AsyncConnection) -> list[BatchRecord]:
            return [to_record(row) for row in (await conn.execute(query)).all()]

        return await self._run(work, read=True)

    # -- claiming and finishing ------------------------------------------------------------

    async def claim(self, request: ClaimRequest) -> Claim | None:
        """Claim the oldest claimable item (see `Storage.claim`)."""
        pending = self._in_doubt(request) or PendingClaim()
        with self._doubt_on_failure(pending):
            at_once = self._dialect.claim_at_once(request, pending)
            if at_once is not None:
                claim = await self._retrying(at_once, write=True)
                if claim is not None:
                    return claim
                pending.sent_in = None  # answered: nothing claimed, nothing in doubt
            return await self._write(lambda: self._claim(request, pending, []))

    def _in_doubt(self, request: ClaimRequest) -> PendingClaim | None:
        """A claim in doubt (see `ClaimsInDoubt`) that ``request`` may take over."""
        batches = self._doubtful.batches(request)
        return self._doubtful.take(batches[0]) if batches else None

    @contextmanager
    def _doubt_on_failure(self, pending: PendingClaim) -> Iterator[None]:
        try:
            yield
        except StorageError:
            # Its claim was sent: it may have committed. (One sent before its batch was
            # known cannot be looked for: its item waits for its lease.)
            if pending.sent_in not in (None, SENT_ANYWHERE):
                self._doubtful.remember(pending.sent_in, pending)
            raise

    def _claim(
        self, request: ClaimRequest, pending: PendingClaim, owed: list[Owed]
    ) -> Steps[Claim | None]:
        return claim_steps(self._sql, self._now, request, pending, owed)

    async def heartbeat(self, lease: Lease, *, lease_seconds: float) -> LeaseStatus:
        """Extend a current lease (see `Storage.heartbeat`)."""
        deadline = self._now() + lease_seconds
        return await self._write_alone(lambda: self._extend(lease, None, None, deadline))

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
        return await self._write_alone(lambda: self._extend(lease, progress, message, deadline))

    def _extend(
        self,
        lease: Lease,
        progress: float | None,
        message: str | None,
        deadline: float | None,
    ) -> Steps[LeaseStatus]:
        now = self._now()
        loud = progress is not None and self._dialect.loud(lease.batch_id, now)
        stmt = self._sql.extend(progress is not None, deadline is not None, loud)
        params = self._sql.lease_params(lease)
        params.update(e_progress=progress, e_message=message, e_now=now, e_deadline=deadline)
        return (yield from self._dialect.lease_status(stmt, params))

    async def finish(
        self,
        lease: Lease,
        outcome: Outcome,
        *,
        then_claim: ClaimRequest | None = None,
    ) -> FinishResult:
        """End a leased attempt and claim the next item in one transaction."""
        if not self._opened:
            await self.open()
        pending = PendingClaim()
        with self._doubt_on_failure(pending):
            fused = self._dialect.finish_and_claim(lease, outcome, then_claim, pending)
            if fused is not None:
                return await self._retrying(fused, write=True)

            def steps() -> Steps[FinishResult]:
                again, pending.finishing = pending.finishing, True
                owed: list[Owed] = []  # the finish's counters, moved with the claim's
                accepted = yield from self._finish(lease, outcome, owed)
                if not accepted and again:
                    accepted = yield from self._sql.landed(lease, outcome)
                claim = None
                if then_claim is not None:
                    claim = yield from self._claim(then_claim, pending, owed)
                yield from self._sql.settle(owed)
                return FinishResult(accepted=accepted, claim=claim)

            result = await self._write(steps)
        if result.accepted and outcome.state.value == Q:
            self._bell.ring()  # handed back: an idle worker of this process may take it
        return result

    def _finish(self, lease: Lease, outcome: Outcome, owed: list[Owed]) -> Steps[bool]:
        sql = self._sql
        now = self._now()
        state = outcome.state.value
        params = sql.lease_params(lease)
        if state == Q:
            # A release in a cancelled batch ends the item instead: read the flag first.
            flag = (yield sql.release_flag(), params).first()
            if flag is None:
                return False
            if flag[0]:
                state = C
        params.update(
            f_now=now,
            f_at=now + max(0.0, outcome.delay),
            f_result=outcome.result,
            f_error=None if outcome.error is None else outcome.error.model_dump_json(),
            f_history=outcome.history,
        )
        done = yield sql.finish(state), params
        if done.rowcount != 1:
            return False
        if state == Q:
            yield from sql.bump(lease.batch_id, R, state, now)
        else:
            owed.append(Owed(lease.batch_id, state, now))  # written by the caller: see `Owed`
        notice = self._dialect.work_notice()
        if state == Q and notice is not None:
            yield notice, {}
        return True

    async def finish_group(
        self,
        batch_id: str,
        succeeded: Sequence[tuple[Lease, Outcome]],
        *,
        claim: int,
        lease_seconds: float,
    ) -> GroupResult:
        """End several attempts and claim the batch's next items in one transaction (see
        `GroupCommitter.finish_group` and `_group`)."""
        check_group(batch_id, succeeded, claim)
        if not self._opened:
            await self.open()
        token, tries = new_token(), 0
        at_once = self._dialect.group_at_once(batch_id, succeeded, claim, lease_seconds, token)

        def steps() -> Steps[GroupResult]:
            return group_steps(
                self._sql,
                batch_id,
                succeeded,
                claim=claim,
                lease_seconds=lease_seconds,
                token=token,
                now=self._now(),
                again=tries > 1,
            )

        async def attempt() -> GroupResult:
            nonlocal tries
            tries += 1
            if tries == 1 and at_once is not None:
                return await at_once()
            return await self._dialect.write(steps)

        return await self._retrying(attempt, write=True)

    async def cancel_batch(self, batch_id: str, *, reason: str | None = None) -> BatchRecord:
        """Request a batch's cancel (see `Storage.cancel_batch`)."""
        i, b = self.tables.items, self.tables.batches
        sql = self._sql

        async def work(conn: AsyncConnection) -> BatchRecord:
            now = self._now()
            drive = self._dialect.drive
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
                .where(i.c.batch_id == batch_id, i.c.state == Q)
                .values(**sql.terminal_values(C, now))
            )
            await drive(conn, sql.bump(batch_id, Q, C, now, count=queued.rowcount))
            expired = await conn.execute(
                i.update()
                .where(i.c.batch_id == batch_id, i.c.state == R, i.c.claimable_at <= now)
                .values(**sql.terminal_values(C, now))
            )
            await drive(conn, sql.bump(batch_id, R, C, now, count=expired.rowcount))
            await conn.execute(
                i.update()
                .where(i.c.batch_id == batch_id, i.c.state == R)
                .values(cancel_requested=True)
            )
            await drive(conn, sql.touch(batch_id, now))
            return await self._record(conn, batch_id)

        return await self._run(work)

    # -- completion hooks, notification, retention -----------------------------------------

    async def claim_finished_batch(
        self, *, lease_seconds: float, batch_id: str | None = None
    ) -> FinishedBatch | None:
        """Claim a finished batch whose hook is due (see `Storage.claim_finished_batch`)."""
        b = self.tables.batches
        # One token for every try: a retry whose first try landed (its reply lost) finds
        # the batch its own, where it would find it leased and leave its hook unfired.
        token = new_token()

        async def work(conn: AsyncConnection) -> FinishedBatch | None:
            now = self._now()
            query = select(b.c.id).where(
                b.c.finished_at.is_not(None),
                b.c.hook_done.is_(False),
                or_(b.c.hook_token.is_(None), b.c.hook_deadline <= now, b.c.hook_token == token),
            )
            if batch_id is not None:
                await self._require_batch(conn, batch_id)
                query = query.where(b.c.id == batch_id)
            query = query.order_by(b.c.finished_at).limit(1)
            found = (await conn.execute(query.with_for_update(skip_locked=True))).scalar()
            if found is None:
                return None
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
            # The token stays: a retry whose first try landed (its reply lost) is told
            # True again, and a stale token still finds another.
            done = await conn.execute(
                b.update()
                .where(b.c.id == batch_id, b.c.hook_token == token)
                .values(hook_done=True, hook_deadline=None)
            )
            return bool(done.rowcount == 1)

        return await self._run(work)

    @asynccontextmanager
    async def subscribe_work(self) -> AsyncIterator[Subscription]:
        """Wait for new work (see `WorkAnnouncer.subscribe_work`): this process's, at once;
        other processes', through the dialect (`Dialect.relay_work`)."""
        if not self._opened:
            await self.open()
        with self._bell.flag() as flag:
            async with self._dialect.relay_work(flag, self.poll_interval):
                yield flag

    @asynccontextmanager
    async def subscribe(self, batch_id: str) -> AsyncIterator[Subscription]:
        """Wait for changes of one batch: LISTEN/NOTIFY on PostgreSQL, polling elsewhere."""
        if not self._opened:
            await self.open()
        async with self._dialect.subscribe(batch_id, self.poll_interval) as subscription:
            yield subscription

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
