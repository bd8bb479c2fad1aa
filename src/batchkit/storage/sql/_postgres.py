"""PostgreSQL (asyncpg, psycopg): notifications, advisory locks, and the runner's steady
state (finish an item, claim the next) in one statement."""

from __future__ import annotations

import hashlib
import logging
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any, TypeVar

import anyio
import anyio.lowlevel
from sqlalchemy import bindparam, func, null, or_, select, text, true, union_all

from ...codec import loads
from ...protocols import Claim, FinishResult, Lease
from ._connector import Lanes
from ._dialect import Dialect
from ._faults import DriverFault, is_broken_connection, sqlstate
from ._statements import C, F, Q, R, S

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Callable

    from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

    from ...protocols import ClaimRequest, NewBatch, Outcome, Subscription
    from ._connector import Connector, Lane
    from ._statements import PendingClaim, Statements

__all__ = ["AsyncpgDialect", "PostgresDialect"]

logger = logging.getLogger("batchkit.storage.sql")

T = TypeVar("T")

# SQLSTATEs: serialization failure, deadlock, admin shutdown (pg_terminate_backend),
# crash shutdown, cannot connect now; and the class of connection exceptions (08).
_TRANSIENT = {"40001", "40P01", "57P01", "57P02", "57P03"}
#: Connections a PostgreSQL storage on asyncpg keeps for its hot path between steps.
_LANES = 4
#: The columns a new item's row sets, in the order `AsyncpgDialect.insert_items` sends them.
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


class PostgresDialect(Dialect):
    """PostgreSQL through SQLAlchemy (psycopg): ``FOR UPDATE SKIP LOCKED`` claims, changes
    announced by ``pg_notify`` in the statements that make them, and the finish-and-claim
    of one batch in one statement (`finish_and_claim`)."""

    def __init__(self, connector: Connector, statements: Statements, prefix: str) -> None:
        super().__init__(connector, statements, prefix)
        self.channel = f"{prefix}changes"

    @classmethod
    def for_engine(
        cls, engine: AsyncEngine, connector: Connector, statements: Statements, prefix: str
    ) -> Dialect:
        if engine.dialect.driver == "asyncpg":
            return AsyncpgDialect(connector, statements, prefix)
        return cls(connector, statements, prefix)

    def driver_transient(self, orig: BaseException | None) -> bool:
        state = sqlstate(orig)
        return state is not None and (state in _TRANSIENT or state.startswith("08"))

    def raw_transient(self, exc: BaseException) -> bool:
        return sqlstate(exc) in _TRANSIENT

    @asynccontextmanager
    async def schema_lock(self, conn: AsyncConnection) -> AsyncIterator[None]:
        name = f"batchkit:{self.prefix}"
        key = int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big", signed=True)
        await conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": key})
        yield

    def clock_query(self) -> Any:
        return text("SELECT extract(epoch FROM clock_timestamp())")

    def with_notify(self, stmt: Any, id_column: Any) -> Any:
        # The change is announced by the same statement, at no extra round trip; the
        # notification is delivered when the transaction commits.
        return stmt.returning(func.pg_notify(self.channel, id_column))

    def with_lease_flag(self, stmt: Any, items: Any, *, notify: bool) -> Any:
        returning: list[Any] = [items.c.cancel_requested]
        if notify:
            returning.append(func.pg_notify(self.channel, items.c.batch_id))
        return stmt.returning(*returning)

    # -- finish and claim in one statement -------------------------------------------------

    def finish_and_claim(
        self,
        lease: Lease,
        outcome: Outcome,
        request: ClaimRequest | None,
        sent: PendingClaim,
    ) -> Callable[[], Awaitable[FinishResult]] | None:
        # The runner's steady state: an item ends, and the next of the same batch is
        # claimed. Anything else takes the storage's steps.
        if (
            request is None
            or outcome.state.value not in (S, F, C)
            or request.batch_ids != (lease.batch_id,)
            or request.metadata
        ):
            return None
        return lambda: self._attempt(
            lambda via: self._finish_and_claim(via, lease, outcome, request, sent)
        )

    async def _attempt(self, work: Callable[[Any], Awaitable[T]]) -> T:
        # A statement is atomic on its own, hence autocommit.
        return await self.connector.attempt(work, autocommit=True)

    async def _one(self, via: Any, stmt: Any, params: dict[str, Any]) -> Any:
        conn: AsyncConnection = via
        return (await conn.execute(stmt, params)).one()

    async def _all(self, via: Any, stmt: Any, params: dict[str, Any]) -> list[Any]:
        conn: AsyncConnection = via
        return list(await conn.execute(stmt, params))

    async def _finish_and_claim(
        self,
        via: Any,
        lease: Lease,
        outcome: Outcome,
        request: ClaimRequest,
        sent: PendingClaim,
    ) -> FinishResult:
        # ONE statement (so one round trip and one commit): end the leased item, claim the
        # next item of the same batch, and move both in the batch's counters.
        if sent.sent_in is not None:
            done = await self._sent_before(via, lease, outcome, sent.token)
            if done is not None:
                return done
        state = outcome.state.value
        now = self.connector.now()
        token = sent.token
        sent.sent_in = lease.batch_id
        stmt = self.connector.stmt(("pg_finish_claim", state), lambda: self._build(state))
        params = {
            "l_batch": lease.batch_id,
            "l_key": lease.key,
            "l_token": lease.token,
            "f_now": now,
            "f_result": outcome.result,
            "f_error": None if outcome.error is None else outcome.error.model_dump_json(),
            "f_history": outcome.history,
            "b_id": lease.batch_id,
            "b_now": now,
            "b_token": token,
            "b_deadline": now + request.lease_seconds,
        }
        row = await self._one(via, stmt, params)
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

    def _build(self, state: str) -> Any:
        """The finish-and-claim statement, of the storage's own pieces (`Statements`):
        the finish's UPDATE, the claim's SELECT and the claim's SET, the counters' SET,
        each a data-modifying CTE of one statement.

        Every CTE sees the table as it was before the statement: the claim passes over the
        item being finished by name, and over items of a cancelled batch (the storage's
        steps end those, `SQLStorage.claim`), instead of seeing them as they end.
        """
        sql = self.statements
        i, b = sql.tables.items, sql.tables.batches
        finished = sql.finish_update(state).returning(i.c.batch_id).cte("f")
        claimable = (
            sql.claim_select("one")
            .with_only_columns(i.c.batch_id, i.c.position, i.c.state)
            .where(~i.c.cancel_requested, i.c.key != bindparam("l_key"))
            .cte("c")
        )
        claimed = (
            i.update()
            .where(i.c.batch_id == claimable.c.batch_id, i.c.position == claimable.c.position)
            .values(**sql.claim_values(i.c.attempt + 1))
            .returning(
                i.c.key,
                i.c.payload,
                i.c.attempt,
                i.c.position,
                i.c.history,
                claimable.c.state.label("old_state"),
            )
            .cte("u")
        )

        def count(cte: Any, *where: Any) -> Any:
            return select(func.count()).select_from(cte).where(*where).scalar_subquery()

        n = select(
            count(finished).label("done"),
            count(claimed, claimed.c.old_state == Q).label("started"),
            count(claimed).label("claimed"),
        ).cte("n")
        # n's one row is read through subqueries: an UPDATE ... FROM n would be a join
        # without a condition, which SQLAlchemy warns of.
        done, started, claims = (
            select(column).scalar_subquery() for column in (n.c.done, n.c.started, n.c.claimed)
        )
        values = sql.counter_values(
            [(Q, "-", started), (R, "-", done), (R, "+", started), (state, "+", done)],
            finishing=done,
            now=bindparam("b_now"),
            started=claims > 0,
        )
        counters = self.with_notify(
            b.update()
            .where(b.c.id == bindparam("b_id"), or_(done > 0, claims > 0))
            .ordered_values(*values),
            b.c.id,
        ).cte("b")
        return select(
            n.c.done.label("accepted"),
            claimed.c.key,
            claimed.c.payload,
            claimed.c.attempt,
            claimed.c.position,
            claimed.c.history,
            select(func.count()).select_from(counters).scalar_subquery(),
        ).select_from(n.outerjoin(claimed, true()))

    async def _sent_before(
        self, via: Any, lease: Lease, outcome: Outcome, token: str
    ) -> FinishResult | None:
        """What an earlier try of a finish-and-claim did, if its reply was lost after it ran.

        Its claim, if it committed, is the running item of the batch holding its token; its
        finish was accepted if the leased item ended as asked in the same attempt.
        """
        sql = self.statements
        i = sql.tables.items
        stmt = self.connector.stmt(
            "pg_sent_before",
            lambda: union_all(
                sql.claim_found(),
                sql.ended_as().with_only_columns(null(), null(), i.c.attempt, i.c.state, null()),
            ),
        )
        params = {"b_id": lease.batch_id, "b_token": token, "b_key": lease.key}
        rows = await self._all(via, stmt, params)
        claimed = [r for r in rows if r[0] is not None]
        if not claimed:
            return None
        key, payload, attempt, history, position = claimed[0]
        ended = [r for r in rows if r[0] is None]
        accepted = bool(ended) and outcome.landed(lease, ended[0][3], ended[0][2])
        return FinishResult(
            accepted=accepted,
            claim=Claim(
                lease=Lease(lease.batch_id, key, token, attempt),
                position=position,
                payload=loads(payload),
                history=history,
            ),
        )


class AsyncpgDialect(PostgresDialect):
    """PostgreSQL on asyncpg: the finish-and-claim sent to the driver directly on a kept
    connection, items streamed in by binary ``COPY``, and ``LISTEN`` for `subscribe`."""

    def __init__(self, connector: Connector, statements: Statements, prefix: str) -> None:
        super().__init__(connector, statements, prefix)
        self._lanes = Lanes(connector, cap=_LANES)

    # SQLAlchemy's execution path would cost more than the statement: on a lane, the
    # statement compiled once goes to asyncpg directly.

    async def _attempt(self, work: Callable[[Any], Awaitable[T]]) -> T:
        return await self._lanes.attempt(work)

    async def _one(self, via: Any, stmt: Any, params: dict[str, Any]) -> Any:
        lane: Lane = via
        sql, args, _ = self.connector.plan(stmt, params)
        try:
            return await lane.driver.fetchrow(sql, *args)
        except Exception as exc:
            raise self._fault(lane.driver, exc) from exc

    async def _all(self, via: Any, stmt: Any, params: dict[str, Any]) -> list[Any]:
        lane: Lane = via
        sql, args, _ = self.connector.plan(stmt, params)
        try:
            return list(await lane.driver.fetch(sql, *args))
        except Exception as exc:
            raise self._fault(lane.driver, exc) from exc

    def _fault(self, driver: Any, exc: Exception) -> DriverFault:
        """What an error asyncpg raised means: retry, and drop the connection if it is gone."""
        broken = bool(driver.is_closed()) or is_broken_connection(exc)
        transient = broken or self.is_transient_driver_error(exc)
        return DriverFault(exc, transient=transient, broken=broken)

    async def insert_items(
        self, conn: AsyncConnection, batch: NewBatch, now: float, chunk_size: int
    ) -> None:
        # asyncpg streams rows with PostgreSQL's binary COPY, in the transaction already
        # open on this connection: several times faster than INSERTs of the same rows.
        if not len(batch.items):
            return
        raw = (await conn.get_raw_connection()).driver_connection
        assert raw is not None
        rows = (
            (batch.id, position, key, payload, Q, 1, 0.0, False, 0.0, 0, now, now)
            for position, (key, payload) in enumerate(batch.items)
        )
        failure: Exception | None = None
        copied = False
        table = self.statements.tables.items.name

        async def copy(scope: anyio.CancelScope) -> None:
            nonlocal failure, copied
            try:
                await raw.copy_records_to_table(table, records=rows, columns=_COPIED)
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
        raise self._fault(raw, exc) from exc

    @asynccontextmanager
    async def subscribe(self, batch_id: str, poll_interval: float) -> AsyncIterator[Subscription]:
        async with self.connector.engine.connect() as conn:
            raw = await conn.get_raw_connection()
            driver = raw.driver_connection
            assert driver is not None
            sub = _ListenSubscription(batch_id)
            await driver.add_listener(self.channel, sub.on_notify)
            try:
                yield sub
            finally:
                with anyio.CancelScope(shield=True):
                    try:
                        await driver.remove_listener(self.channel, sub.on_notify)
                    except Exception:  # the connection is gone: nothing to remove
                        logger.debug("could not remove a LISTEN callback", exc_info=True)

    async def release(self) -> None:
        await self._lanes.drop()

    async def close(self) -> None:
        await self._lanes.close()


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
