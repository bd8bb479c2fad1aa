"""PostgreSQL (asyncpg, psycopg): notifications, advisory locks, and the runner's steady
state (finish an item, claim the next) in one statement."""

from __future__ import annotations

import hashlib
import logging
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any, TypeVar

from sqlalchemy import (
    Text,
    and_,
    bindparam,
    case,
    cast,
    exists,
    false,
    func,
    literal,
    null,
    or_,
    select,
    text,
    true,
    union_all,
)
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError

from ...codec import loads
from ...exceptions import InvalidStorageURL, StorageError
from ...protocols import BatchInfo, Claim, FinishResult, GroupResult, Lease
from ._dialect import Dialect, fitted
from ._faults import sqlstate
from ._listen import QUIET_FOR, WORK
from ._options import asyncpg_query, unnamed
from ._rows import batch_row, tag_rows
from ._statements import SENT_ANYWHERE, C, F, Q, R, S

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Callable, Sequence

    from sqlalchemy import MetaData
    from sqlalchemy.ext.asyncio import AsyncConnection

    from ...protocols import ClaimRequest, NewBatch, Outcome
    from ._connector import Connector
    from ._statements import PendingClaim, Statements, Steps

__all__ = ["PostgresDialect"]

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
#: The batches whose last announcement a storage keeps (older ones are forgotten first).
_ANNOUNCED_KEPT = 1024
#: A new batch of at most this many items is written by one statement (`create_at_once`).
_AT_ONCE_MAX = 100


class PostgresDialect(Dialect):
    """PostgreSQL through SQLAlchemy (psycopg): ``FOR UPDATE SKIP LOCKED`` claims, changes
    announced by ``pg_notify`` in the statements that make them, and the finish-and-claim
    of one batch in one statement (`finish_and_claim`)."""

    def __init__(self, connector: Connector, statements: Statements, prefix: str) -> None:
        super().__init__(connector, statements, prefix)
        # Storages of the same prefix in two schemas keep their notifications apart; a
        # channel is an identifier, cut at 63 bytes by the server (`fitted` keeps it whole).
        self.channel = fitted(f"{self.scope}changes", _NAME_LIMIT)
        # When this storage last announced each batch's change (see `loud`).
        self._announced: dict[str, float] = {}

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
                "prepared_statement_name_func": unnamed,
            }
        # psycopg: never prepared server-side; a statement and its parameters travel in
        # one message sequence, which the pooler keeps on one server connection.
        return {"prepare_threshold": None}

    @classmethod
    def reserved_connections(cls, url: str, connector: Connector) -> int:
        # LISTEN on the direct URL, past the pooler: one connection beside the pool.
        listens = make_url(url).get_driver_name() == "asyncpg"
        return 1 if listens and connector.listen_url is not None else 0

    async def read(self, steps: Callable[[], Steps[T]]) -> T:
        # Each statement in autocommit, a snapshot of its own: no BEGIN and COMMIT around
        # it (psycopg switches to autocommit without a round trip).
        return await self.connector.attempt(lambda conn: self.drive(conn, steps()), autocommit=True)

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

    def with_notify(self, stmt: Any, id_column: Any, *, only_if: Any = None) -> Any:
        # The change is announced by the same statement, at no extra round trip; the
        # notification is delivered when the transaction commits.
        notify = func.pg_notify(self.channel, id_column)
        if only_if is None:
            return stmt.returning(notify)
        return stmt.returning(case((only_if, notify), else_=null()))

    def loud(self, batch_id: str, now: float) -> bool:
        # A transaction that NOTIFYs takes a lock, till after its commit, that every other
        # such transaction of the server waits for (notifications are queued in commit
        # order): the server commits them one at a time. So one storage announces a
        # batch's changes at most every QUIET_FOR seconds; a batch's end is announced
        # always (`Statements.ended`), and a watcher looks again a little after each
        # announcement (`Listener`) for the changes made in between.
        last = self._announced.get(batch_id)
        if last is not None and 0 <= now - last < QUIET_FOR:
            return False
        if len(self._announced) >= _ANNOUNCED_KEPT:
            self._announced = {
                b: at for b, at in self._announced.items() if 0 <= now - at < QUIET_FOR
            }
        self._announced[batch_id] = now
        return True

    def work_notice(self) -> Any:
        return self.connector.stmt(
            "pg_work_notice", lambda: select(func.pg_notify(self.channel, WORK))
        )

    # -- a small batch made in one statement ------------------------------------------------

    def create_at_once(self, batch: NewBatch, now: float) -> Callable[[], Steps[bool]] | None:
        # A submit from a web request is mostly a few items: its batch row, tags, items and
        # work notice in ONE statement (data-modifying CTEs), one round trip on asyncpg,
        # where the transaction of four statements took five.
        if len(batch.items) > _AT_ONCE_MAX:
            return None
        tags = tag_rows(batch)
        params = {
            **batch_row(batch, now),
            "t_names": [t["v_name"] for t in tags],
            "t_values": [t["v_value"] for t in tags],
            "i_keys": [key for key, _ in batch.items],
            "i_payloads": [payload for _, payload in batch.items],
        }
        stmt = self.connector.stmt("pg_create", self._build_create)

        def steps() -> Steps[bool]:
            return (yield stmt, params).scalar() is not None

        return steps

    def _build_create(self) -> Any:
        """The statement making a batch: its row (nothing if its id or idempotency key is
        taken), then, only if it was made, its tags, its items (``unnest`` of their keys and
        payloads) and the work notice; it returns the batch's id if it was made."""
        sql = self.statements
        b, t, i = sql.tables.batches, sql.tables.tags, sql.tables.items
        made = (
            pg_insert(b)
            .values({c: bindparam(f"v_{c}") for c in sql.BATCH_COLUMNS})
            .on_conflict_do_nothing()
            .returning(b.c.id)
            .cte("b")
        )
        texts = ARRAY(Text)
        pairs = (
            func.unnest(bindparam("t_names", type_=texts), bindparam("t_values", type_=texts))
            .table_valued("name", "value")
            .render_derived()
        )
        tagged = t.insert().from_select(
            ["name", "value", "batch_id"],
            select(pairs.c.name, pairs.c.value, made.c.id).select_from(pairs).join(made, true()),
        )
        rows = (
            func.unnest(bindparam("i_keys", type_=texts), bindparam("i_payloads", type_=texts))
            .table_valued("key", "payload", with_ordinality="n")
            .render_derived()
        )
        now: Any = bindparam("v_created_at")
        queued = (
            select(
                made.c.id,
                rows.c.n - 1,
                rows.c.key,
                rows.c.payload,
                literal(Q),
                literal(1),
                literal(0.0),
                false(),
                literal(0.0),
                literal(0),
                now,
                now,
            )
            .select_from(rows)
            .join(made, true())
        )
        inserted = i.insert().from_select(list(sql.ITEM_COLUMNS), queued)
        made_id = select(made.c.id).scalar_subquery()
        notice = case(
            (
                and_(made_id.is_not(None), bindparam("v_total") > 0),
                func.pg_notify(self.channel, WORK),
            ),
            else_=null(),
        )
        return select(made_id.label("id"), notice.label("notice")).add_cte(
            tagged.cte("t"), inserted.cte("i")
        )

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

    # -- a group in one statement ------------------------------------------------------------

    def group_at_once(
        self,
        batch_id: str,
        succeeded: Sequence[tuple[Lease, Outcome]],
        claim: int,
        lease_seconds: float,
        token: str,
    ) -> Callable[[], Awaitable[GroupResult]] | None:
        return lambda: self._attempt(
            lambda via: self._group(via, batch_id, succeeded, claim, lease_seconds, token)
        )

    async def _group(
        self,
        via: Any,
        batch_id: str,
        succeeded: Sequence[tuple[Lease, Outcome]],
        claim: int,
        lease_seconds: float,
        token: str,
    ) -> GroupResult:
        # ONE statement (one round trip, one commit) for the whole group: the successes
        # arrive as arrays, one element per item.
        now = self.connector.now()
        loud = self.loud(batch_id, now)
        stmt = self.connector.stmt(
            ("pg_group", claim, loud), lambda: self._build_group(claim, loud)
        )
        params = {
            "b_id": batch_id,
            "b_now": now,
            "b_token": token,
            "b_deadline": now + lease_seconds,
            "g_keys": [lease.key for lease, _ in succeeded],
            "g_tokens": [lease.token for lease, _ in succeeded],
            "g_results": [outcome.result for _, outcome in succeeded],
            "g_histories": [outcome.history for _, outcome in succeeded],
        }
        rows = await self._all(via, stmt, params)
        done = set(zip(rows[0][0] or (), rows[0][1] or (), strict=True)) if rows else set()
        claims = [
            Claim(
                lease=Lease(batch_id, key, token, attempt),
                position=position,
                payload=loads(payload),
                history=history,
            )
            for _, _, key, payload, attempt, position, history, _ in rows
            if key is not None
        ]
        claims.sort(key=lambda c: c.position)
        accepted = [(lease.key, lease.token) in done for lease, _ in succeeded]
        return GroupResult(accepted=accepted, claims=claims)

    def _claimed(self, passing_over: Any, n: int) -> Any:
        """The CTEs claiming batch ``b_id``'s next ``n`` claimable items but those
        ``passing_over`` excludes (and those of a cancelled batch): the SELECT, and the SET
        returning each item's columns and its state before (``old_state``)."""
        sql = self.statements
        i = sql.tables.items
        claimable = (
            sql.claim_select("one")
            .with_only_columns(i.c.batch_id, i.c.position, i.c.state)
            .where(~i.c.cancel_requested, passing_over)
            .limit(n)
            .cte("c")
        )
        return (
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

    def _build_group(self, n: int, loud: bool) -> Any:
        """The group statement: the successes' UPDATE (from the arrays), the claims' SELECT
        and SET, the counters' SET, each a data-modifying CTE of one statement (as `_build`)."""
        sql = self.statements
        i, b = sql.tables.items, sql.tables.batches
        texts = ARRAY(Text)
        arrays = [
            cast(bindparam(f"g_{name}"), texts)
            for name in ("keys", "tokens", "results", "histories")
        ]
        given = (
            func.unnest(*arrays)
            .table_valued("key", "token", "result", "history")
            .render_derived(name="g")
        )
        v = select(given.c.key, given.c.token, given.c.result, given.c.history).cte("v")
        now: Any = bindparam("b_now")
        finished = (
            i.update()
            .where(
                i.c.batch_id == bindparam("b_id"),
                i.c.key == v.c.key,
                i.c.token == v.c.token,
                i.c.state == R,
            )
            .values(
                **sql.succeeded_values(now, v.c.result, func.coalesce(v.c.history, i.c.history))
            )
            .returning(i.c.key, v.c.token.label("given"))  # (the item's token is cleared)
            .cte("f")
        )
        # Passed over: the items this statement finishes (every CTE sees the table before
        # it); an item given under a stale lease is claimable as ever.
        finishing = exists().where(v.c.key == i.c.key, v.c.token == i.c.token)
        claimed = self._claimed(~finishing, n)

        done, started, claims = (
            _count(finished),
            _count(claimed, claimed.c.old_state == Q),
            _count(claimed),
        )
        values = sql.counter_values(
            [(Q, "-", started), (R, "-", done), (R, "+", started), (S, "+", done)],
            finishing=done,
            now=now,
            started=claims > 0,
        )
        counters = self.with_notify(
            b.update()
            .where(b.c.id == bindparam("b_id"), or_(done > 0, claims > 0))
            .ordered_values(*values),
            b.c.id,
            only_if=None if loud else sql.ended(now),
        ).cte("b")
        keys = select(func.array_agg(finished.c.key)).scalar_subquery()
        tokens = select(func.array_agg(finished.c.given)).scalar_subquery()
        return select(
            keys.label("done"),
            tokens.label("done_tokens"),
            claimed.c.key,
            claimed.c.payload,
            claimed.c.attempt,
            claimed.c.position,
            claimed.c.history,
            select(func.count()).select_from(counters).scalar_subquery(),
        ).select_from(select(literal(1).label("one")).subquery().outerjoin(claimed, true()))

    # -- a claim in one statement ------------------------------------------------------------

    def claim_at_once(
        self, request: ClaimRequest, sent: PendingClaim
    ) -> Callable[[], Awaitable[Claim | None]] | None:
        ids = request.batch_ids
        if request.metadata or sent.sent_in is not None or (ids is not None and not ids):
            return None  # (a claim in doubt is the storage's steps' to hand over)
        kind = "any" if ids is None else ("one" if len(ids) == 1 else "many")
        return lambda: self._attempt(lambda via: self._claim_at_once(via, kind, request, sent))

    async def _claim_at_once(
        self, via: Any, kind: str, request: ClaimRequest, sent: PendingClaim
    ) -> Claim | None:
        # ONE statement (one round trip, one commit): take the next claimable item and
        # move it in its batch's counters.
        token = sent.token
        i = self.statements.tables.items
        if sent.sent_in is not None:
            # An earlier try was sent and its answer lost: if it committed, its item is the
            # active one holding its token.
            found = self.connector.stmt(
                "pg_claimed_by",
                lambda: select(*self._claimed_columns(i)).where(
                    i.c.active == 1, i.c.state == R, i.c.token == bindparam("b_token")
                ),
            )
            rows = await self._all(via, found, {"b_token": token})
            if rows:
                return _claim_of(rows[0], token)
            sent.sent_in = None
        now = self.connector.now()
        params: dict[str, Any] = {
            "b_now": now,
            "b_token": token,
            "b_deadline": now + request.lease_seconds,
        }
        if kind == "one":
            params["b_id"] = request.batch_ids[0]  # type: ignore[index]
        elif kind == "many":
            params["b_ids"] = list(request.batch_ids)  # type: ignore[arg-type]
        # A claim never ends a batch: announced, or not at all (see `loud`).
        loud = self.loud(params.get("b_id", WORK), now)
        stmt = self.connector.stmt(("pg_claim", kind, loud), lambda: self._build_claim(kind, loud))
        # Sent in: the batch asked for, or, unknown before the answer, any.
        sent.sent_in = params.get("b_id", SENT_ANYWHERE)
        rows = await self._all(via, stmt, params)
        return _claim_of(rows[0], token) if rows else None

    @staticmethod
    def _claimed_columns(table: Any) -> list[Any]:
        c = table.c
        return [c.batch_id, c.key, c.payload, c.attempt, c.position, c.history]

    def _build_claim(self, kind: str, loud: bool) -> Any:
        """The claim statement: the claim's SELECT and its SET, and the counters' SET, each
        a data-modifying CTE of one statement (as `_build`, without the finish)."""
        sql = self.statements
        i, b = sql.tables.items, sql.tables.batches
        claimable = (
            sql.claim_select(kind)
            .with_only_columns(i.c.batch_id, i.c.position, i.c.state)
            .where(~i.c.cancel_requested)
            .cte("c")
        )
        claimed = (
            i.update()
            .where(i.c.batch_id == claimable.c.batch_id, i.c.position == claimable.c.position)
            .values(**sql.claim_values(i.c.attempt + 1))
            .returning(*self._claimed_columns(i), claimable.c.state.label("old_state"))
            .cte("u")
        )
        started = (
            select(func.count())
            .select_from(claimed)
            .where(claimed.c.old_state == Q)
            .scalar_subquery()
        )
        values = sql.counter_values(
            [(Q, "-", started), (R, "+", started)],
            finishing=0,
            now=bindparam("b_now"),
            started=True,
        )
        moved: Any = (
            b.update()
            .where(b.c.id == select(claimed.c.batch_id).scalar_subquery())
            .ordered_values(*values)
            # What the runner needs of the batch, read with the claim (`Claim.batch`).
            .returning(b.c.metadata, b.c.max_failures)
        )
        counters = (self.with_notify(moved, b.c.id) if loud else moved).cte("b")
        return select(
            *self._claimed_columns(claimed),
            select(counters.c.metadata).scalar_subquery(),
            select(counters.c.max_failures).scalar_subquery(),
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
        loud = self.loud(lease.batch_id, now)
        stmt = self.connector.stmt(
            ("pg_finish_claim", state, loud), lambda: self._build(state, loud)
        )
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

    def _build(self, state: str, loud: bool = True) -> Any:
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
        claimed = self._claimed(i.c.key != bindparam("l_key"), 1)

        n = select(
            _count(finished).label("done"),
            _count(claimed, claimed.c.old_state == Q).label("started"),
            _count(claimed).label("claimed"),
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
            only_if=None if loud else sql.ended(bindparam("b_now")),
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


def _count(cte: Any, *where: Any) -> Any:
    """The number of rows of ``cte`` (meeting ``where``), as a scalar subquery."""
    return select(func.count()).select_from(cte).where(*where).scalar_subquery()


def _claim_of(row: Any, token: str) -> Claim:
    """A claim from a row of its item's columns (`_claimed_columns`), and maybe of its
    batch's metadata and failure limit after them."""
    batch_id, key, payload, attempt, position, history = row[:6]
    batch = None
    if len(row) > 7 and row[6] is not None:
        batch = BatchInfo(metadata=loads(row[6]), max_failures=row[7])  # type: ignore[arg-type]
    return Claim(
        lease=Lease(batch_id, key, token, attempt),
        position=position,
        payload=loads(payload),
        history=history,
        batch=batch,
    )
