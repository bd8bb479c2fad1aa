"""PostgreSQL (asyncpg, psycopg): notifications, advisory locks, and the runner's steady
state (finish an item, claim the next) in one statement."""

from __future__ import annotations

import hashlib
import logging
from contextlib import AsyncExitStack, asynccontextmanager
from typing import TYPE_CHECKING, Any, TypeVar

import anyio
import anyio.lowlevel
from sqlalchemy import bindparam, func, null, or_, select, text, true, union_all
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.pool import NullPool

from ...codec import loads
from ...exceptions import InvalidStorageURL, StorageError
from ...protocols import Claim, FinishResult, Lease
from .._polling import PollingSubscription
from ._connector import Lanes
from ._dialect import Dialect, fitted
from ._faults import DriverFault, is_broken_connection, sqlstate
from ._listen import Listener
from ._options import URL_OPTIONS
from ._statements import C, F, Q, R, S

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Callable

    from sqlalchemy import MetaData
    from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

    from ...protocols import ClaimRequest, NewBatch, Outcome, Subscription
    from ._connector import Connector, Lane
    from ._statements import PendingClaim, Statements

__all__ = ["AsyncpgDialect", "PooledAsyncpgDialect", "PostgresDialect"]

logger = logging.getLogger("batchkit.storage.sql")

T = TypeVar("T")

#: SQLSTATE query_canceled: a statement_timeout, or a cancel request.
_QUERY_CANCELED = "57014"
#: SQLSTATE insufficient_privilege.
_INSUFFICIENT_PRIVILEGE = "42501"
#: Who the storage connects as, in which database, whether it may create a schema
#: there, and whether the storage's schema exists.
_SCHEMA_QUERY = text(
    "SELECT current_user, current_database(), "
    "has_database_privilege(current_database(), 'CREATE'), "
    "EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = :schema)"
)
# SQLSTATEs: serialization failure, deadlock, admin shutdown (pg_terminate_backend),
# crash shutdown, cannot connect now; and the class of connection exceptions (08).
_TRANSIENT = {"40001", "40P01", "57P01", "57P02", "57P03"}
#: The longest identifier PostgreSQL keeps whole (NAMEDATALEN - 1): a channel's name.
_NAME_LIMIT = 63
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


#: asyncpg's options a URL's query may set, and the type each is read as (SQLAlchemy hands
#: the query to ``asyncpg.connect`` as strings, which asyncpg's numbers do not accept).
_ASYNCPG_QUERY: dict[str, Callable[[str], Any]] = {
    "statement_cache_size": int,
    "prepared_statement_cache_size": int,
    "max_cached_statement_lifetime": int,
    "max_cacheable_statement_size": int,
    "timeout": float,
    "command_timeout": float,
    "ssl": str,
    "direct_tls": lambda value: _flag("direct_tls", value),
    "target_session_attrs": str,
    "passfile": str,
    "krbsrvname": str,
    "gsslib": str,
}
#: The parts of a URL that its query may give instead (libpq's spelling: ``?host=a,b``).
_URL_PARTS = frozenset({"user", "password", "host", "port", "database"})
#: The ``ssl`` values asyncpg takes (libpq's ``sslmode`` values, which it also accepts).
_SSL_MODES = ("disable", "allow", "prefer", "require", "verify-ca", "verify-full")


def _unnamed() -> str:
    """The name of every statement prepared behind a transaction pooler: none."""
    return ""


def _flag(name: str, value: str) -> bool:
    if value.lower() in ("1", "true", "yes", "on"):
        return True
    if value.lower() in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"{name} must be true or false")


def asyncpg_query(url: str) -> tuple[dict[str, Any], list[str]]:
    """The connect arguments of a ``postgresql+asyncpg`` URL's query, each read as the
    type asyncpg wants, and the query keys to take off the URL (read here instead).

    libpq's spellings that asyncpg lacks are translated: ``sslmode`` is ``ssl``,
    ``application_name`` and ``options``-free server settings go to ``server_settings``.

    Raises:
        InvalidStorageURL: an option asyncpg does not know, or a value of the wrong type
            (the message names the option and lists those it knows; no value is shown,
            it may be a secret).
    """
    args: dict[str, Any] = {}
    dropped: list[str] = []
    for key, raw in make_url(url).query.items():
        value = raw[-1] if isinstance(raw, tuple) else raw
        name = "ssl" if key == "sslmode" else key
        if key == "application_name":
            args.setdefault("server_settings", {})["application_name"] = value
            dropped.append(key)
            continue
        if key in _URL_PARTS:
            continue  # SQLAlchemy reads these itself (several hosts among them)
        read = _ASYNCPG_QUERY.get(name)
        if read is None:
            known = ", ".join(sorted({*_ASYNCPG_QUERY, *_URL_PARTS, "sslmode", "application_name"}))
            raise InvalidStorageURL(
                f"the storage URL's option {key!r} is not one asyncpg takes; it takes: "
                f"{known}; and batchkit's own: {', '.join(URL_OPTIONS)}"
            )
        try:
            args[name] = read(value)
        except ValueError:
            raise InvalidStorageURL(
                f"the storage URL's option {key!r} must be "
                f"{'a whole number' if read is int else 'a number' if read is float else 'true or false'}"
            ) from None
        if name == "ssl" and args[name] not in _SSL_MODES:
            raise InvalidStorageURL(
                f"the storage URL's option {key!r} must be one of {', '.join(_SSL_MODES)}"
            )
        dropped.append(key)
    return args, dropped


class PostgresDialect(Dialect):
    """PostgreSQL through SQLAlchemy (psycopg): ``FOR UPDATE SKIP LOCKED`` claims, changes
    announced by ``pg_notify`` in the statements that make them, and the finish-and-claim
    of one batch in one statement (`finish_and_claim`)."""

    def __init__(self, connector: Connector, statements: Statements, prefix: str) -> None:
        super().__init__(connector, statements, prefix)
        # Storages of the same prefix in two schemas keep their notifications apart; a
        # channel is an identifier, cut at 63 bytes by the server (`fitted` keeps it whole).
        self.channel = fitted(f"{self.scope}changes", _NAME_LIMIT)

    @classmethod
    def engine_options(cls, url: str, connector: Connector) -> dict[str, Any]:
        options: dict[str, Any] = {}
        if make_url(url).get_driver_name() == "asyncpg":
            listens = connector.pooler != "transaction" or connector.listen_url is not None
            if listens and connector.max_connections < 2:
                raise InvalidStorageURL(
                    "max_connections must be at least 2 on asyncpg: one connection is "
                    "watch's LISTEN, another runs everything else"
                )
            connect_args, dropped = asyncpg_query(url)
            options["connect_args"] = connect_args
            options["url"] = make_url(url).difference_update_query(dropped)
        if connector.pooler != "transaction":
            return options
        options.setdefault("connect_args", {}).update(cls._pooled_connect_args(url))
        return options

    @staticmethod
    def _pooled_connect_args(url: str) -> dict[str, Any]:
        # Behind a transaction-mode pooler, consecutive transactions of one connection may
        # run on different server connections: no prepared statement may outlive its
        # transaction, and none may be named (names would collide between clients).
        driver = make_url(url).get_driver_name()
        if driver == "asyncpg":
            # Unnamed statements only, each prepared in the transaction that runs it
            # (`PooledAsyncpgDialect` runs every statement inside a transaction).
            # (asyncpg 0.29 names what SQLAlchemy prepares unless given a name: the
            # empty name is the unnamed statement.)
            return {
                "statement_cache_size": 0,
                "prepared_statement_cache_size": 0,
                "prepared_statement_name_func": _unnamed,
            }
        # psycopg: never prepared server-side; a statement and its parameters travel in
        # one message sequence, which the pooler keeps on one server connection.
        return {"prepare_threshold": None}

    @classmethod
    def reserved_connections(cls, url: str, connector: Connector) -> int:
        # LISTEN on the direct URL, past the pooler: one connection beside the pool.
        listens = make_url(url).get_driver_name() == "asyncpg"
        return 1 if listens and connector.listen_url is not None else 0

    @classmethod
    def for_engine(
        cls, engine: AsyncEngine, connector: Connector, statements: Statements, prefix: str
    ) -> Dialect:
        if engine.dialect.driver == "asyncpg":
            if connector.pooler == "transaction":
                return PooledAsyncpgDialect(connector, statements, prefix)
            return AsyncpgDialect(connector, statements, prefix)
        return cls(connector, statements, prefix)

    def driver_transient(self, orig: BaseException | None) -> bool:
        state = sqlstate(orig)
        return state is not None and (state in _TRANSIENT or state.startswith("08"))

    def raw_transient(self, exc: BaseException) -> bool:
        return sqlstate(exc) in _TRANSIENT

    @asynccontextmanager
    async def schema_lock(self, conn: AsyncConnection) -> AsyncIterator[None]:
        name = f"batchkit:{self.scope}"
        key = int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big", signed=True)
        await conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": key})
        yield

    async def create_tables(self, conn: AsyncConnection, metadata: MetaData) -> None:
        # A managed database gives the app a role that may not create anything in
        # `public` (PostgreSQL 15 lets only the database's owner), nor perhaps a schema:
        # what it lacks is said with the GRANT that gives it.
        quote = conn.dialect.identifier_preparer.quote
        grantee = ""
        if self.schema is not None:
            found = await conn.execute(_SCHEMA_QUERY, {"schema": self.schema})
            role, database, may_create, exists = found.one()
            grantee = quote(role)
            if not exists:
                if not may_create:
                    raise StorageError(
                        f"schema {self.schema!r} does not exist, and role {role!r} may not "
                        f"create it: create it for the role (CREATE SCHEMA {quote(self.schema)} "
                        f"AUTHORIZATION {quote(role)};), or let the role create schemas "
                        f"(GRANT CREATE ON DATABASE {quote(database)} TO {quote(role)};)"
                    )
                await self.create_schema(conn)
        try:
            await conn.run_sync(metadata.create_all, checkfirst=True)
        except DBAPIError as exc:
            if sqlstate(exc.orig) != _INSUFFICIENT_PRIVILEGE:
                raise
            said = self.connector.fault(exc.orig or exc)
            if self.schema is None:
                fix = (
                    "give the storage a schema of its own (schema=...), or GRANT CREATE ON "
                    "SCHEMA <schema> TO <role>;"
                )
            else:
                fix = f"GRANT CREATE ON SCHEMA {quote(self.schema)} TO {grantee};"
            raise StorageError(
                f"the storage's role may not create batchkit's tables ({said}): {fix} or "
                "create the tables with your migrations and open the storage with "
                "create_schema=False"
            ) from self.connector.cause(exc)

    async def insert_items(
        self, conn: AsyncConnection, batch: NewBatch, now: float, chunk_size: int
    ) -> None:
        try:
            await super().insert_items(conn, batch, now, chunk_size)
        except DBAPIError as exc:
            cancelled = self.cancelled(exc.orig, batch, chunk_size)
            if cancelled is None:
                raise
            raise cancelled from self.connector.cause(exc)

    def cancelled(
        self, exc: BaseException | None, batch: NewBatch, chunk_size: int
    ) -> StorageError | None:
        """The error to raise when the server cancelled a statement writing ``batch``'s
        items (SQLSTATE 57014), most likely for its ``statement_timeout``: a deterministic
        fault, never retried, that a smaller ``chunk_size`` avoids."""
        if sqlstate(exc) != _QUERY_CANCELED:
            return None
        said = str(self.connector.fault(exc)) if exc is not None else "query_canceled"
        total = len(batch.items)
        if "statement timeout" in said.lower():
            return StorageError(
                f"PostgreSQL's statement_timeout cancelled a statement writing the "
                f"{total} items of the batch ({chunk_size} per statement), and the batch "
                "was not created: give the storage a smaller chunk_size, or raise "
                f"statement_timeout for its role ({said})"
            )
        return StorageError(
            f"PostgreSQL cancelled a statement writing the {total} items of the batch "
            f"({chunk_size} per statement), and the batch was not created ({said}); if "
            "its statement_timeout did, give the storage a smaller chunk_size"
        )

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
        # Of the pool, one connection for LISTEN and one for everything else stay free.
        self._lanes = Lanes(connector, cap=connector.lanes_cap(_LANES, beside=2))
        self._listener = Listener(connector.connect, self.channel)

    # SQLAlchemy's execution path would cost more than the statement: on a lane, the
    # statement compiled once goes to asyncpg directly.

    async def _attempt(self, work: Callable[[Any], Awaitable[T]]) -> T:
        return await self._lanes.attempt(work)

    #: Each statement in a transaction of its own (behind a transaction pooler).
    each_in_transaction = False

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
                        table, records=rows, columns=_COPIED, schema_name=schema
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

    async def release(self) -> None:
        await self._lanes.drop()

    async def close(self) -> None:
        await self._lanes.close()
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

    async def close(self) -> None:
        await super().close()
        if self._listen_engine is not None:
            await self._listen_engine.dispose()
            self._listen_engine = None
