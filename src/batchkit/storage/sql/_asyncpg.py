"""PostgreSQL on asyncpg: the hot path sent to asyncpg directly on kept connections, new
items streamed in by binary ``COPY``, ``LISTEN`` for `subscribe` and for new work; and the
same behind a transaction-mode pooler (`PooledAsyncpgDialect`)."""

from __future__ import annotations

import logging
import math
from contextlib import AsyncExitStack, asynccontextmanager
from typing import TYPE_CHECKING, Any, TypeVar

import anyio
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.pool import NullPool

from .._polling import PollingSubscription
from ._connector import AS_GIVEN, Lanes, Result
from ._dialect import OnLanes
from ._faults import DriverFault, is_broken_connection, is_driver_error
from ._listen import WORK, Listener
from ._postgres import PostgresDialect
from ._statements import Q

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Callable

    from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

    from ...protocols import NewBatch, Subscription
    from .._bell import Flag
    from ._connector import Connector, Lane, Sent
    from ._dialect import Dialect
    from ._statements import Statements, Steps

__all__ = ["AsyncpgDialect", "PooledAsyncpgDialect"]

logger = logging.getLogger("batchkit.storage.sql")

T = TypeVar("T")

#: Connections a PostgreSQL storage on asyncpg keeps for its hot path between steps.
_LANES = 4
#: A new batch of more items than this has them streamed in by COPY.
_COPY_FROM = 100


class AsyncpgDialect(OnLanes, PostgresDialect):
    """PostgreSQL on asyncpg: the finish-and-claim sent to the driver directly on a kept
    connection, items streamed in by binary ``COPY``, and ``LISTEN`` for `subscribe`."""

    # (The dialect registered for PostgreSQL: it picks the psycopg one when the driver is.)
    @classmethod
    def for_engine(
        cls, engine: AsyncEngine, connector: Connector, statements: Statements, prefix: str
    ) -> Dialect:
        if engine.dialect.driver != "asyncpg":
            return PostgresDialect(connector, statements, prefix)
        if connector.pooler == "transaction":
            return PooledAsyncpgDialect(connector, statements, prefix)
        return AsyncpgDialect(connector, statements, prefix)

    def __init__(self, connector: Connector, statements: Statements, prefix: str) -> None:
        super().__init__(connector, statements, prefix)
        # Of the pool, one connection for LISTEN and one for everything else stay free.
        self._lanes = Lanes(connector, cap=connector.lanes_cap(_LANES, beside=2))
        self._readers = self._lanes
        self._listener = Listener(connector.connect, self.channel)

    # SQLAlchemy's execution path would cost more than the statement: on a lane, the
    # statement compiled once goes to asyncpg directly.

    async def _attempt(self, work: Callable[[Any], Awaitable[T]]) -> T:
        return await self._lanes.attempt(work)

    #: Each statement in a transaction of its own (behind a transaction pooler).
    each_in_transaction = False

    async def _on_lane(self, lane: Lane, steps: Steps[T], transaction: bool) -> T:
        # Sent to asyncpg directly; reads each in autocommit (a snapshot of its own).
        driver = lane.driver
        try:
            if transaction or self.each_in_transaction:
                async with driver.transaction():
                    return await self._drive_driver(driver, steps)
            return await self._drive_driver(driver, steps)
        except DriverFault:
            raise
        except Exception as exc:
            if is_driver_error(exc) or isinstance(exc, OSError):
                raise self._fault(driver, exc) from exc
            raise

    async def _drive_driver(self, driver: Any, steps: Steps[T]) -> T:
        async def run(sent: Sent) -> Result:
            if sent.many is not None:
                await driver.executemany(sent.sql, sent.many)
                return Result([], len(sent.many))
            if sent.row_type is None:
                return Result([], _rowcount(await driver.execute(sent.sql, *sent.args)))
            records = await driver.fetch(sent.sql, *sent.args)
            if sent.row_type is AS_GIVEN:  # records read by position
                return Result(records, len(records))
            return Result([sent.row_type(*record) for record in records], len(records))

        return await self.connector.drive(steps, run)

    async def _one(self, via: Any, stmt: Any, params: dict[str, Any]) -> Any:
        return await self._driver_call(via, stmt, params, "fetchrow")

    async def _all(self, via: Any, stmt: Any, params: dict[str, Any]) -> list[Any]:
        return list(await self._driver_call(via, stmt, params, "fetch"))

    async def _driver_call(self, via: Any, stmt: Any, params: dict[str, Any], fetch: str) -> Any:
        lane: Lane = via
        sql, args, _ = self.connector.plan(stmt, params)
        call = getattr(lane.driver, fetch)
        try:
            if not self.each_in_transaction:
                return await call(sql, *args)
            async with lane.driver.transaction():
                return await call(sql, *args)
        except Exception as exc:
            raise self._fault(lane.driver, exc) from exc

    def _fault(self, driver: Any, exc: Exception) -> DriverFault:
        """What an error asyncpg raised means: retry, and drop the connection if it is gone."""
        broken = bool(driver.is_closed()) or is_broken_connection(exc)
        transient = broken or self.is_transient_driver_error(exc)
        return DriverFault(exc, transient=transient, broken=broken)

    def copies_items(self, total: int, chunk_size: int) -> bool:
        # A few items: as many INSERTs, sent to asyncpg in one go with the transaction's
        # other statements. More: a binary COPY, several times faster.
        return total > _COPY_FROM

    async def insert_items(
        self, conn: AsyncConnection, batch: NewBatch, now: float, chunk_size: int
    ) -> None:
        # asyncpg streams rows with PostgreSQL's binary COPY, in the transaction already
        # open on this connection: several times faster than INSERTs of the same rows.
        # A COPY per chunk: each is a statement, which a low statement_timeout would
        # cancel for a large batch sent whole; in the batch's transaction, the batch still
        # appears whole or not at all.
        items = batch.items
        if not len(items):
            return
        raw = (await conn.get_raw_connection()).driver_connection
        assert raw is not None
        failure: Exception | None = None
        copied = False
        table = self.statements.tables.items.name
        columns = self.statements.ITEM_COLUMNS  # each row below holds them in this order
        schema = self.schema

        async def copy(scope: anyio.CancelScope) -> None:
            nonlocal failure, copied
            try:
                for start in range(0, len(items), chunk_size):
                    rows = [
                        (batch.id, start + offset, key, payload, Q, 1, 0.0, False, 0.0, 0, now, now)
                        for offset, (key, payload) in enumerate(items[start : start + chunk_size])
                    ]
                    await raw.copy_records_to_table(
                        table, records=rows, columns=columns, schema_name=schema
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
        cancelled = self.cancelled(exc, batch, chunk_size)
        if cancelled is not None:
            raise cancelled from self.connector.cause(exc)
        raise self._fault(raw, exc) from exc

    @asynccontextmanager
    async def subscribe(self, batch_id: str, poll_interval: float) -> AsyncIterator[Subscription]:
        async with AsyncExitStack() as stack:
            sub: Subscription
            try:
                sub = await stack.enter_async_context(self._listener.subscribe(batch_id))
            except Exception as exc:
                # No connection to LISTEN on (the server is away, the budget is spent):
                # this watcher polls; the next one tries to listen again.
                logger.warning(
                    "watch polls every %s s: could not LISTEN (%s)",
                    poll_interval,
                    self.connector.fault(exc),
                    extra={"poll_interval": poll_interval},
                )
                sub = PollingSubscription(poll_interval)
            yield sub

    @asynccontextmanager
    async def relay_work(self, flag: Flag, poll_interval: float) -> AsyncIterator[None]:
        async with anyio.create_task_group() as tg:
            # Listening before the waiter's first claim: nothing announced after it is missed.
            await tg.start(self._relay_work, flag, poll_interval)
            try:
                yield
            finally:
                tg.cancel_scope.cancel()

    async def _relay_work(
        self,
        flag: Flag,
        poll_interval: float,
        *,
        task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
    ) -> None:
        """Ring ``flag`` at every announcement of new work on the storage's LISTEN; listen
        again after the connection is lost (meanwhile the waiter's timeout finds work)."""
        started = said = False
        while True:
            try:
                async with self._listener.subscribe(WORK) as sub:
                    if said:
                        logger.info("idle workers hear of new work again: LISTEN is back")
                        said = False
                    if started:
                        flag.ring()  # what came while nobody listened is looked for now
                    else:
                        started = True
                        task_status.started()
                    while self._listener.listening:
                        await sub.wait(math.inf)
                        flag.ring()
            except Exception as exc:
                if not said:
                    said = True
                    logger.warning(
                        "idle workers look for new work every %s s: could not LISTEN (%s)",
                        poll_interval,
                        self.connector.fault(exc),
                        extra={"poll_interval": poll_interval},
                    )
            if not started:
                started = True
                task_status.started()
            await anyio.sleep(poll_interval)

    async def close(self) -> None:
        await super().close()
        await self._listener.close()


class PooledAsyncpgDialect(AsyncpgDialect):
    """PostgreSQL on asyncpg behind a transaction-mode pooler (``pooler=transaction``).

    The pooler may hand each transaction of one client connection to a different server
    connection, so every statement runs inside a transaction: its unnamed prepared
    statement and its execution stay on one server connection. LISTEN cannot work through
    such a pooler: `watch` listens on the
    storage's ``listen_url`` (straight to the database) when it has one, and polls
    otherwise, which the log says once.
    """

    def __init__(self, connector: Connector, statements: Statements, prefix: str) -> None:
        super().__init__(connector, statements, prefix)
        self._listen_engine: AsyncEngine | None = None
        self._said_polling = False
        if connector.listen_url is not None:
            self._listener = Listener(self._listen_connection, self.channel)

    # The hot path still runs on kept connections, straight to asyncpg, but each
    # statement inside a transaction of its own.
    each_in_transaction = True

    async def _listen_connection(self) -> AsyncConnection:
        if self._listen_engine is None:
            assert self.connector.listen_url is not None
            # One connection at a time, opened for the first watcher, closed after the last.
            self._listen_engine = create_async_engine(self.connector.listen_url, poolclass=NullPool)
        return await self._listen_engine.connect()

    @asynccontextmanager
    async def subscribe(self, batch_id: str, poll_interval: float) -> AsyncIterator[Subscription]:
        if self.connector.listen_url is not None:
            async with super().subscribe(batch_id, poll_interval) as sub:
                yield sub
            return
        if not self._said_polling:
            self._said_polling = True
            logger.warning(
                "watch polls every %s s: LISTEN does not work through a transaction-mode "
                "pooler; give the storage listen_url= (a URL straight to the database) "
                "for live notifications",
                poll_interval,
                extra={"poll_interval": poll_interval},
            )
        yield PollingSubscription(poll_interval)

    @asynccontextmanager
    async def relay_work(self, flag: Flag, poll_interval: float) -> AsyncIterator[None]:
        if self.connector.listen_url is None:
            # Through the pooler no LISTEN holds: idle workers look every poll_interval.
            yield
            return
        async with super().relay_work(flag, poll_interval):
            yield

    async def close(self) -> None:
        await super().close()
        if self._listen_engine is not None:
            await self._listen_engine.dispose()
            self._listen_engine = None


def _rowcount(status: str) -> int:
    """The rows a statement changed, from asyncpg's status ("UPDATE 3"; -1 if it says none)."""
    count = status.rpartition(" ")[2]
    return int(count) if count.isdigit() else -1
