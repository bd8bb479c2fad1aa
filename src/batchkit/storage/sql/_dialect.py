"""The dialect interface: what differs between the databases `SQLStorage` runs on.

`SQLStorage.open` picks one `Dialect` for its engine (``_sqlite``, ``_postgres``,
``_mysql``, from `DIALECTS`, which imports only the one asked for) and its steps call it;
they never ask which database they run on. The base class is a database reached through
SQLAlchemy alone, with ``UPDATE ... RETURNING`` and nothing else of its own: each dialect
overrides what it does differently.
"""

from __future__ import annotations

import collections
import functools
import hashlib
from collections.abc import Iterator, Mapping
from contextlib import asynccontextmanager
from importlib import import_module
from typing import TYPE_CHECKING, Any, ClassVar, Final, TypeVar, cast

from sqlalchemy import inspect
from sqlalchemy.schema import CreateSchema

from ...protocols import LeaseStatus
from .._polling import PollingSubscription
from ._connector import Result
from ._faults import FaultRules

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Callable, Sequence

    from sqlalchemy import MetaData
    from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

    from ...exceptions import StorageError
    from ...protocols import (
        Claim,
        ClaimRequest,
        FinishResult,
        GroupResult,
        Lease,
        NewBatch,
        Outcome,
        Subscription,
    )
    from .._bell import Flag
    from ._connector import Connector, Lane, Lanes
    from ._statements import Params, PendingClaim, Statements, Steps

__all__ = ["Dialect", "OnLanes", "fitted"]

T = TypeVar("T")


class Dialect(FaultRules):
    """What one database does its own way; the storage's steps are written once on it.

    It is the statements' `Shape` (what a dialect adds to a statement), the `FaultRules`
    of its driver, and the way each transaction is executed. One is made per `open`.

    Args:
        connector: the storage's engine, clock and statement cache.
        statements: the storage's statements, for its tables.
        prefix: the storage's table prefix (names its locks and its notification channel).
    """

    #: Whether `SQLStorage`'s ``schema`` may name a place for the tables: a schema
    #: (PostgreSQL), a database of the same server (MySQL/MariaDB).
    has_schemas: ClassVar[bool] = True

    def __init__(self, connector: Connector, statements: Statements, prefix: str) -> None:
        self.connector = connector
        self.statements = statements
        self.prefix = prefix
        #: The storage's schema, as its tables say (`None`: the connection's own).
        self.schema: str | None = statements.tables.meta.schema
        #: What sets the storage's tables apart from others on the server (its locks and
        #: its notification channel are named after it): its prefix, in its schema.
        self.scope = prefix if self.schema is None else f"{self.schema}.{prefix}"

    @classmethod
    def engine_options(cls, url: str, connector: Connector) -> dict[str, Any]:
        """Options of `create_async_engine` this dialect needs for ``url``."""
        return {}

    @classmethod
    def reserved_connections(cls, url: str, connector: Connector) -> int:
        """Connections this dialect opens outside the engine's pool (counted in
        ``max_connections``): a LISTEN connection to a server past the pooler."""
        return 0

    @classmethod
    def for_engine(
        cls, engine: AsyncEngine, connector: Connector, statements: Statements, prefix: str
    ) -> Dialect:
        """The dialect for ``engine`` (a subclass may pick a variant by its driver)."""
        return cls(connector, statements, prefix)

    # -- opening ---------------------------------------------------------------------------

    @asynccontextmanager
    async def schema_lock(self, conn: AsyncConnection) -> AsyncIterator[None]:
        """Held while the tables are created, so processes opening a new database at
        once do not race to create the same tables (and fail on "already exists")."""
        yield

    async def create_tables(self, conn: AsyncConnection, metadata: MetaData) -> None:
        """Create the storage's schema if it is missing, then its tables if they are."""
        if self.schema is not None and not await self.has_schema(conn):
            await self.create_schema(conn)
        await conn.run_sync(metadata.create_all, checkfirst=True)

    async def has_schema(self, conn: AsyncConnection) -> bool:
        """Whether the storage's schema exists."""
        schema = self.schema
        assert schema is not None
        return bool(await conn.run_sync(lambda sync: inspect(sync).has_schema(schema)))

    async def create_schema(self, conn: AsyncConnection) -> None:
        """Create the storage's schema (missing: see `create_tables`)."""
        assert self.schema is not None
        await conn.execute(CreateSchema(self.schema))

    def clock_query(self) -> Any:
        """The SELECT of the database's clock in epoch seconds (`None`: it is ours)."""
        return None

    # -- executing -------------------------------------------------------------------------

    async def serialize(self, attempt: Callable[[], Awaitable[T]]) -> T:
        """Run one try of a write transaction (queued behind this process's other writers
        where the database has one writer at a time)."""
        return await attempt()

    async def write(self, steps: Callable[[], Steps[T]]) -> T:
        """One try of a hot-path write transaction, by the fastest way the database allows:
        here, its statements one by one through SQLAlchemy."""
        return await self.connector.attempt(lambda conn: self.drive(conn, steps()))

    async def write_alone(self, steps: Callable[[], Steps[T]]) -> T:
        """One try of a write that is one statement, atomic alone (a lease's write, a
        `create_at_once`): where the dialect can, without a transaction around it."""
        return await self.write(steps)

    def create_at_once(self, batch: NewBatch, now: float) -> Callable[[], Steps[bool]] | None:
        """The creation of ``batch`` (items, tags, the work notice) in ONE statement, where
        the dialect writes it so (`None`: the storage's steps do): its result says whether
        the batch was created (`False`: its id or its idempotency key is taken)."""
        return None

    async def read(self, steps: Callable[[], Steps[T]]) -> T:
        """One try of a read, by the fastest way the database allows: here, a read-only
        transaction through SQLAlchemy."""
        return await self.connector.attempt(lambda conn: self.drive(conn, steps()), read=True)

    async def drive(self, conn: AsyncConnection, steps: Steps[T]) -> T:
        """Run ``steps`` through SQLAlchemy, statement by statement, on ``conn``."""
        try:
            stmt, params = next(steps)
            while True:
                result = await self.exec(conn, stmt, params)
                stmt, params = steps.send(result)
        except StopIteration as stop:
            return cast("T", stop.value)

    async def exec(self, conn: AsyncConnection, stmt: Any, params: Params) -> Result:
        """Execute one statement of a transaction (once per row of a list of rows)."""
        result = await conn.execute(stmt, params)
        if not result.returns_rows:
            return Result([], result.rowcount)
        # Rows as named tuples, as the driver-direct dialects give them: a SQLAlchemy row
        # reads a column by name in about half a microsecond, a named tuple in a tenth
        # (a listing reads sixteen columns of a thousand rows a page).
        row_type = _row_type(tuple(result.keys()))
        return Result([row_type(*row) for row in result.all()], result.rowcount)

    def copies_items(self, total: int, chunk_size: int) -> bool:
        """Whether a new batch of ``total`` items has them streamed in (`insert_items`)
        rather than inserted by the storage's statements."""
        return False

    async def insert_items(
        self, conn: AsyncConnection, batch: NewBatch, now: float, chunk_size: int
    ) -> None:
        """Stream a new batch's items in, in its transaction on ``conn`` (`copies_items`)."""
        raise NotImplementedError

    def cancelled(
        self, exc: BaseException | None, batch: NewBatch, chunk_size: int
    ) -> StorageError | None:
        """The error to raise when the server cancelled a statement writing ``batch``
        (its statement timeout), or `None`."""
        return None

    def finish_and_claim(
        self,
        lease: Lease,
        outcome: Outcome,
        request: ClaimRequest | None,
        sent: PendingClaim,
    ) -> Callable[[], Awaitable[FinishResult]] | None:
        """One try of a finish with its next claim in a way of this dialect's own, or
        `None`: the storage's steps do it (`SQLStorage.finish`)."""
        return None

    def group_at_once(
        self,
        batch_id: str,
        succeeded: Sequence[tuple[Lease, Outcome]],
        claim: int,
        lease_seconds: float,
        token: str,
    ) -> Callable[[], Awaitable[GroupResult]] | None:
        """The first try of a group (`SQLStorage.finish_group`) in one statement of this
        dialect's own, or `None`: the storage's steps do it (and every try made again)."""
        return None

    def claim_at_once(
        self, request: ClaimRequest, sent: PendingClaim
    ) -> Callable[[], Awaitable[Claim | None]] | None:
        """One try of a claim in a way of this dialect's own (one statement), or `None`:
        the storage's steps do it. A claim it does not find is looked for again by the
        steps, which also end what a cancel left claimable (`SQLStorage.claim`)."""
        return None

    def lease_status(self, stmt: Any, params: dict[str, Any]) -> Steps[LeaseStatus]:
        """Run a lease's UPDATE (`Statements.extend`): whether the lease is held, and the
        item's cancel flag, read by the UPDATE itself (RETURNING)."""
        row = (yield stmt, params).first()
        if row is None:
            return LeaseStatus(held=False)
        return LeaseStatus(held=True, cancel_requested=bool(row[0]))

    @asynccontextmanager
    async def subscribe(self, batch_id: str, poll_interval: float) -> AsyncIterator[Subscription]:
        """Wait for changes of one batch: by polling, unless the database can notify."""
        yield PollingSubscription(poll_interval)

    # -- new work, for idle workers (see `SQLStorage.subscribe_work`) -----------------------

    def bell_key(self, engine: AsyncEngine) -> str:
        """What names the storage's tables in this process, whichever storage object reaches
        them: its server and database (no password), and its scope."""
        url = engine.url
        return (
            f"{url.get_backend_name()}://{url.username or ''}@{url.host or ''}:"
            f"{url.port or ''}/{url.database or ''}|{self.scope}"
        )

    def work_notice(self) -> Any:
        """The statement that tells other processes' idle workers of new work (a batch
        created, an item handed back), run in the transaction that makes it; `None` where
        the database cannot tell them (their own timeout finds it)."""
        return None

    @asynccontextmanager
    async def relay_work(self, flag: Flag, poll_interval: float) -> AsyncIterator[None]:
        """While the block runs, ring ``flag`` when another process announces new work
        (nothing where the database cannot: the waiter's own timeout finds it)."""
        yield

    async def release(self) -> None:
        """Give back the connections kept between steps, if any (they are reopened)."""

    async def close(self) -> None:
        """Give back the connections kept between steps, for good (the storage closes)."""

    # -- the statements' shape (see `Shape`) -----------------------------------------------

    def with_notify(self, stmt: Any, id_column: Any, *, only_if: Any = None) -> Any:
        """``stmt`` (an UPDATE of a batch) announcing the change, where that is free (with
        ``only_if``, a condition on the updated row, only when it holds)."""
        return stmt

    def loud(self, batch_id: str, now: float) -> bool:
        """Whether a change of ``batch_id`` at ``now`` is announced by its statement: always,
        where announcing costs nothing (a dialect that announces nothing, or not this way)."""
        return True

    def counted(self, stmt: Any, column: Any) -> Any:
        """``stmt`` (an UPDATE) made so that its result counts the rows it updated."""
        return stmt

    def with_lease_flag(self, stmt: Any, items: Any, *, notify: bool) -> Any:
        """``stmt`` (an UPDATE of a leased item) returning the item's cancel flag."""
        return stmt.returning(items.c.cancel_requested)


class OnLanes:
    """A dialect's fast paths on connections kept out of the pool (`Lanes`): writes on
    ``_lanes``, reads on ``_readers`` (the same lanes where readers need none of their
    own). Listed before the dialect's class, it takes the place of its `Dialect.read`,
    `Dialect.write` and `Dialect.write_alone`."""

    _lanes: Lanes
    _readers: Lanes

    async def _on_lane(self, lane: Lane, steps: Steps[T], transaction: bool) -> T:
        """Run ``steps`` on ``lane``: as one transaction, or each statement on its own."""
        raise NotImplementedError

    async def read(self, steps: Callable[[], Steps[T]]) -> T:
        return await self._readers.attempt(lambda lane: self._on_lane(lane, steps(), False))

    async def write(self, steps: Callable[[], Steps[T]]) -> T:
        return await self._lanes.attempt(lambda lane: self._on_lane(lane, steps(), True))

    async def write_alone(self, steps: Callable[[], Steps[T]]) -> T:
        # One statement, atomic alone: no BEGIN and COMMIT around it.
        return await self._lanes.attempt(lambda lane: self._on_lane(lane, steps(), False))

    async def release(self) -> None:
        await self._lanes.drop()
        if self._readers is not self._lanes:
            await self._readers.drop()

    async def close(self) -> None:
        await self._lanes.close()
        if self._readers is not self._lanes:
            await self._readers.close()


def fitted(name: str, limit: int) -> str:
    """``name``, or, past ``limit`` characters, its start and a digest of the whole: a name
    of the server's (a lock, a channel) that stays the storage's own whatever its length."""
    if len(name) <= limit:
        return name
    digest = hashlib.sha256(name.encode()).hexdigest()[:16]
    return f"{name[: limit - 17]}_{digest}"


@functools.lru_cache(maxsize=256)
def _row_type(names: tuple[str, ...]) -> Any:
    """The named tuple of rows with these columns (one per shape of result)."""
    return collections.namedtuple("Row", names, rename=True)


class _Dialects(Mapping[str, "type[Dialect]"]):
    """The dialect of each database SQLAlchemy names (`Dialect.for_engine` picks its
    variant), each imported when first asked for: a storage on SQLite loads neither
    SQLAlchemy's PostgreSQL dialect nor its MySQL one, and so on."""

    _WHERE: Final = {
        "sqlite": ("._sqlite", "SQLiteDialect"),
        # (psycopg's too: see `AsyncpgDialect.for_engine`)
        "postgresql": ("._asyncpg", "AsyncpgDialect"),
        "mysql": ("._mysql", "MySQLDialect"),
        "mariadb": ("._mysql", "MySQLDialect"),
    }

    def __getitem__(self, name: str) -> type[Dialect]:
        module, attribute = self._WHERE[name]
        found: type[Dialect] = getattr(import_module(module, __package__), attribute)
        return found

    def __iter__(self) -> Iterator[str]:
        return iter(self._WHERE)

    def __len__(self) -> int:
        return len(self._WHERE)


#: Each database's `Dialect` class, by the name SQLAlchemy gives the database.
DIALECTS: Final[Mapping[str, type[Dialect]]] = _Dialects()
