"""The statements of the storage's steps, built once with SQLAlchemy for every dialect.

What a dialect changes in a statement's shape (a notification on PostgreSQL, RETURNING
or not) it says through `Shape`; the statements themselves are written once, here.
"""

from __future__ import annotations

from collections.abc import Generator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, TypeAlias, TypeVar

from sqlalchemy import Text, and_, bindparam, case, func, literal, select

from ...ids import new_token
from ...models import ItemState
from ._connector import POSITIONAL, Result
from ._rows import RECORD_COLUMNS, batch_row, item_rows, tag, tag_rows

if TYPE_CHECKING:
    from collections.abc import Collection

    from sqlalchemy.sql.elements import ColumnElement

    from ...protocols import ClaimRequest, Lease, MetadataFilter, NewBatch, Outcome
    from ._connector import Connector
    from .schema import Tables

__all__ = [
    "ACTIVE",
    "COUNTER",
    "SENT_ANYWHERE",
    "Owed",
    "Params",
    "PendingClaim",
    "Shape",
    "Statements",
    "Steps",
    "force_index",
]

T = TypeVar("T")

#: One transaction's work, written once for every way of executing it: a generator that
#: yields each statement with its parameters and receives that statement's result. It runs
#: through SQLAlchemy (`Dialect.drive`), or straight on the driver (`Dialect.write`: on
#: SQLite whole in the driver's thread, on asyncpg one call per statement).
Steps: TypeAlias = Generator[tuple[Any, "Params"], Result, T]
#: A statement's parameters: one row's, or a list of rows' (the statement runs once for each).
Params: TypeAlias = dict[str, Any] | list[dict[str, Any]]

Q, R = ItemState.QUEUED.value, ItemState.RUNNING.value
S, F, C = ItemState.SUCCEEDED.value, ItemState.FAILED.value, ItemState.CANCELLED.value
#: The batch's counter column of each item state.
COUNTER = {Q: "n_queued", R: "n_running", S: "n_succeeded", F: "n_failed", C: "n_cancelled"}
ACTIVE = {Q, R}


@dataclass(frozen=True, slots=True)
class Owed:
    """A finish's move in its batch's counters (running to ``state``, a final state), left
    for what follows it in the same transaction: a claim in the same batch writes both in
    one UPDATE of the batch's row (`Statements.claimed`); otherwise it is written at the
    end (`Statements.settle`)."""

    batch_id: str
    state: str
    now: float


#: `PendingClaim.sent_in` of a claim sent before its batch was known (a claim in one
#: statement, of any batch): if its answer is lost for good, its item waits for its lease.
SENT_ANYWHERE = "*"


@dataclass
class PendingClaim:
    """What one claim (or finish) call has sent, kept across the retries of its transaction.

    Every try uses the same token, so the item of a try whose commit went through (its
    reply lost with the connection) is recognised by the next try.
    """

    token: str = field(default_factory=new_token)
    sent_in: str | None = None  # the batch of the claim last sent, if one was (or SENT_ANYWHERE)
    finishing: bool = False  # a try of the finish before it has been sent


class Shape(Protocol):
    """What a dialect adds to a statement (see `Dialect`)."""

    def with_notify(self, stmt: Any, id_column: Any, *, only_if: Any = None) -> Any:
        """``stmt`` (an UPDATE of a batch) announcing the change, where that is free (with
        ``only_if``, a condition on the updated row, only when it holds)."""
        ...

    def loud(self, batch_id: str, now: float) -> bool:
        """Whether a change of ``batch_id`` at ``now`` is announced (`Dialect.loud`)."""
        ...

    def counted(self, stmt: Any, column: Any) -> Any:
        """``stmt`` (an UPDATE) made so that its result counts the rows it updated."""
        ...

    def with_lease_flag(self, stmt: Any, items: Any, *, notify: bool) -> Any:
        """``stmt`` (an UPDATE of a leased item) returning its cancel flag, if it can."""
        ...


def force_index(query: Any, table: Any, index: str) -> Any:
    """``query`` reading ``table`` through ``index`` on MySQL/MariaDB (a no-op elsewhere)."""
    for dialect in ("mysql", "mariadb"):
        query = query.with_hint(table, f"FORCE INDEX ({index})", dialect_name=dialect)
    return query


class Statements:
    """The storage's statements, for one set of tables.

    Hot-path statements are built once and cached in the `Connector`; `shape` is the
    dialect's, set when the storage opens (the reads need none).
    """

    def __init__(self, tables: Tables, connector: Connector, prefix: str) -> None:
        self.tables = tables
        self._connector = connector
        self._prefix = prefix
        self.shape: Shape | None = None

    def _shape(self) -> Shape:
        assert self.shape is not None, "a write statement is built once the storage is open"
        return self.shape

    # -- reads -----------------------------------------------------------------------------

    def batch_query(self) -> Any:
        """The SELECT of a batch's row and the progress of its running items."""
        b, i = self.tables.batches, self.tables.items
        # MariaDB may read every item of each listed batch through the primary key.
        running = force_index(
            select(func.coalesce(func.sum(i.c.progress), 0.0)).where(
                i.c.batch_id == b.c.id, i.c.state == R
            ),
            i,
            self._prefix + "ix_items_state",
        ).scalar_subquery()
        return select(b, running.label("running_progress"))

    # -- creating --------------------------------------------------------------------------

    #: The columns of a new batch's row, and of a new item's (`insert_of`).
    BATCH_COLUMNS = (
        "id",
        "parent_id",
        "idempotency_key",
        "metadata",
        "total",
        "n_queued",
        "n_running",
        "n_succeeded",
        "n_failed",
        "n_cancelled",
        "created_at",
        "updated_at",
        "finished_at",
        "max_failures",
        "hook_done",
    )
    TAG_COLUMNS = ("name", "value", "batch_id")
    ITEM_COLUMNS = (
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

    def insert_of(self, table: str) -> Any:
        """The INSERT of one row of ``table`` ("batches", "tags" or "items"), its values
        bound by column name with the prefix ``v_`` (built once)."""
        columns = {
            "batches": self.BATCH_COLUMNS,
            "tags": self.TAG_COLUMNS,
            "items": self.ITEM_COLUMNS,
        }[table]
        target = getattr(self.tables, table)
        return self._connector.stmt(
            ("insert", table),
            lambda: target.insert().values({c: bindparam(f"v_{c}") for c in columns}),
        )

    def create(
        self, batch: NewBatch, now: float, chunk_size: int | None, notice: Any
    ) -> Steps[str | None]:
        """The statements creating ``batch``, its items ``chunk_size`` per statement (none
        with `None`: they are streamed in by the dialect), and ``notice``, the statement
        announcing new work (or `None`); the id of the batch that holds its idempotency
        key instead, if one does."""
        if batch.idempotency_key is not None:
            found = yield from self.by_idempotency(batch.idempotency_key)
            if found is not None:
                return found
        total = len(batch.items)
        yield self.insert_of("batches"), batch_row(batch, now)
        tags = tag_rows(batch)
        if tags:
            yield self.insert_of("tags"), tags
        if chunk_size is not None:
            for start in range(0, total, chunk_size):
                yield self.insert_of("items"), item_rows(batch, now, start, chunk_size)
        if total and notice is not None:
            yield notice, {}
        return None

    def by_idempotency(self, key: str) -> Steps[str | None]:
        """The id of the batch holding the idempotency key ``key``, if one does."""
        row = (yield self.batch_by_idempotency(), {"b_key": key}).first()
        return None if row is None else str(row.id)

    def batch_by_idempotency(self) -> Any:
        """The SELECT of the id of the batch with idempotency key ``b_key``."""
        b = self.tables.batches
        return self._connector.stmt(
            "batch_by_idempotency",
            lambda: select(b.c.id).where(b.c.idempotency_key == bindparam("b_key")),
        )

    def batch_by_id(self) -> Any:
        """The SELECT of batch ``b_id`` with the progress of its running items."""
        b = self.tables.batches
        return self._connector.stmt(
            "batch_by_id", lambda: self.batch_query().where(b.c.id == bindparam("b_id"))
        )

    def batch_exists(self) -> Any:
        """The SELECT of batch ``b_id``'s id (no row: no such batch)."""
        b = self.tables.batches
        return self._connector.stmt(
            "batch_exists", lambda: select(b.c.id).where(b.c.id == bindparam("b_id"))
        )

    def item_by_key(self) -> Any:
        """The SELECT of item ``b_key`` of batch ``b_id``."""
        i = self.tables.items
        return self._connector.stmt(
            "item_by_key",
            lambda: select(*self._record_columns()).where(
                i.c.batch_id == bindparam("b_id"), i.c.key == bindparam("b_key")
            ),
        )

    def _record_columns(self) -> list[Any]:
        """The items' columns an item's read selects (`RECORD_COLUMNS`, in order)."""
        return [self.tables.items.c[name] for name in RECORD_COLUMNS]

    def items_query(
        self,
        batch_id: str,
        *,
        states: Collection[ItemState] | None,
        after: int | None,
        limit: int,
    ) -> tuple[Any, dict[str, Any]] | None:
        """The SELECT of `list_items` and its parameters (`None` when no state is asked
        for). One statement per shape, built once: the batch, the states, the position
        after which the page starts and its size are parameters."""
        params: dict[str, Any] = {"b_id": batch_id, "b_limit": limit}
        if states is not None:
            values = sorted({ItemState(s).value for s in states})
            if not values:
                return None
            params["b_states"] = values
        if after is not None:
            params["b_after"] = after
        shape = (states is not None, after is not None)
        return self._connector.stmt(("items", *shape), lambda: self._items_page(*shape)), params

    def _items_page(self, by_state: bool, after: bool) -> Any:
        i = self.tables.items
        query = select(*self._record_columns()).where(i.c.batch_id == bindparam("b_id"))
        if by_state:
            query = query.where(i.c.state.in_(bindparam("b_states", expanding=True)))
        if after:
            query = query.where(i.c.position > bindparam("b_after"))
        # Read by position (`to_item`): the driver's rows are handed over as they come.
        return (
            query.order_by(i.c.position)
            .limit(bindparam("b_limit"))
            .execution_options(**{POSITIONAL: True})
        )

    def batches_query(
        self,
        *,
        metadata: MetadataFilter | None,
        parent_id: str | None,
        before: str | None,
        limit: int,
    ) -> Any:
        """The SELECT of `list_batches`."""
        b = self.tables.batches
        query = self.batch_query()
        if before is not None:
            query = query.where(b.c.id < before)
        if parent_id is not None:
            query = query.where(b.c.parent_id == parent_id)
        if metadata:
            for condition in self.tag_conditions(metadata, b.c.id):
                query = query.where(condition)
        return query.order_by(b.c.id.desc()).limit(limit)

    def tag_conditions(
        self, metadata: MetadataFilter, batch_id: ColumnElement[Any]
    ) -> list[ColumnElement[bool]]:
        """Conditions on ``batch_id``: its batch's metadata matches ``metadata``."""
        tg = self.tables.tags
        conditions: list[ColumnElement[bool]] = []
        for name, value in metadata.items():
            found = tag(name, value)
            if found is None:  # no stored tag looks like it: it matches nothing, as elsewhere
                conditions.append(literal(False))
                continue
            conditions.append(
                batch_id.in_(
                    select(tg.c.batch_id).where(tg.c.name == found[0], tg.c.value == found[1])
                )
            )
        return conditions

    # -- claiming --------------------------------------------------------------------------

    def claim_select(self, kind: str) -> Any:
        """The SELECT of the next claimable item: of one batch (``b_id``), of several
        (``b_ids``) or of any (``kind``: "one", "many", "any"), claimable at ``b_now``."""
        i = self.tables.items
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
        query = force_index(query.order_by(*order).limit(1), i, self._prefix + index)
        return query.with_for_update(skip_locked=True)

    def claim_query(self, request: ClaimRequest) -> tuple[Any, dict[str, Any]]:
        """The SELECT that finds the next claimable item, and its parameters."""
        i = self.tables.items
        ids = request.batch_ids
        kind = "any" if ids is None else ("one" if len(ids) == 1 else "many")
        if request.metadata:
            query = self.claim_select(kind)
            for condition in self.tag_conditions(request.metadata, i.c.batch_id):
                query = query.where(condition)
        else:
            query = self._connector.stmt(("claim", kind), lambda: self.claim_select(kind))
        params: dict[str, Any] = {}
        if kind == "one":
            params["b_id"] = ids[0]  # type: ignore[index]
        elif kind == "many":
            params["b_ids"] = list(ids)  # type: ignore[arg-type]
        return query, params

    def claim_found(self) -> Any:
        """The running item of batch ``b_id`` that holds the token ``b_token``."""
        i = self.tables.items
        return self._connector.stmt(
            "claim_found",
            lambda: select(i.c.key, i.c.payload, i.c.attempt, i.c.history, i.c.position).where(
                i.c.batch_id == bindparam("b_id"),
                i.c.state == R,
                i.c.token == bindparam("b_token"),
            ),
        )

    def claim_values(self, attempt: Any) -> dict[str, Any]:
        """What a claim sets on its item (``b_token``, ``b_deadline``, ``b_now``)."""
        return {
            "state": R,
            "attempt": attempt,
            "token": bindparam("b_token"),
            "claimable_at": bindparam("b_deadline"),
            "progress": 0.0,
            "message": None,
            "started_at": bindparam("b_now"),
            "updated_at": bindparam("b_now"),
        }

    def claim_update(self) -> Any:
        """The UPDATE claiming the item at (``b_id``, ``b_pos``) in attempt ``b_attempt``."""
        i = self.tables.items
        return self._connector.stmt(
            "claim_update",
            lambda: (
                i.update()
                .where(i.c.batch_id == bindparam("b_id"), i.c.position == bindparam("b_pos"))
                .values(**self.claim_values(bindparam("b_attempt")))
            ),
        )

    # -- group commit (`_group`) -----------------------------------------------------------

    def group_held(self) -> Any:
        """The SELECT (locking them) of batch ``b_id``'s running items among ``g_keys``:
        their tokens tell which leases of a group are current."""
        i = self.tables.items
        return self._connector.stmt(
            "group_held",
            lambda: (
                select(i.c.key, i.c.token)
                .where(
                    i.c.batch_id == bindparam("b_id"),
                    i.c.state == R,
                    i.c.key.in_(bindparam("g_keys", expanding=True)),
                )
                .with_for_update()
            ),
        )

    def group_finish(self, n: int) -> Any:
        """The UPDATE ending ``n`` running items of batch ``b_id`` as succeeded at ``f_now``:
        item ``j`` is key ``g_k<j>``, with result ``g_r<j>`` and history ``g_h<j>`` (`None`
        keeps it). Their leases were found current by `group_held`, in this transaction."""

        def build() -> Any:
            i = self.tables.items
            keys: list[Any] = [bindparam(f"g_k{j}") for j in range(n)]

            def per_item(name: str) -> Any:
                whens = [
                    (i.c.key == keys[j], bindparam(f"g_{name}{j}", type_=Text)) for j in range(n)
                ]
                return case(*whens)

            history = func.coalesce(per_item("h"), i.c.history)
            return (
                i.update()
                .where(i.c.batch_id == bindparam("b_id"), i.c.state == R, i.c.key.in_(keys))
                .values(**self.succeeded_values(bindparam("f_now"), per_item("r"), history))
            )

        return self._connector.stmt(("group_finish", n), build)

    @staticmethod
    def succeeded_values(now: Any, result: Any, history: Any) -> dict[str, Any]:
        """What a group's success sets on its item (`group_finish`, and PostgreSQL's)."""
        return {
            "state": S,
            "active": 0,
            "claimable_at": None,
            "token": None,
            "finished_at": now,
            "updated_at": now,
            "result": result,
            "history": history,
            "progress": 1.0,
            "error": None,
        }

    def group_claim_select(self, n: int) -> Any:
        """The SELECT of batch ``b_id``'s next ``n`` claimable items at ``b_now`` (those
        of a batch whose cancel was requested are left to `SQLStorage.claim`)."""
        i = self.tables.items
        return self._connector.stmt(
            ("group_claim", n),
            lambda: self.claim_select("one").where(~i.c.cancel_requested).limit(n),
        )

    def group_claim_update(self) -> Any:
        """The UPDATE claiming batch ``b_id``'s items at ``b_positions``, each in its next
        attempt, all under the token ``b_token``."""
        i = self.tables.items
        return self._connector.stmt(
            "group_claim_update",
            lambda: (
                i.update()
                .where(
                    i.c.batch_id == bindparam("b_id"),
                    i.c.position.in_(bindparam("b_positions", expanding=True)),
                )
                .values(**self.claim_values(i.c.attempt + 1))
            ),
        )

    def group_counters(self, batch_id: str, now: float, *, claimed: bool) -> Any:
        """The UPDATE of batch ``c_id``'s counters after a group: ``c_done`` items from
        running to succeeded, ``c_started`` from queued to running, at ``c_now``."""
        loud = self._shape().loud(batch_id, now)

        def build() -> Any:
            b = self.tables.batches
            done: Any = bindparam("c_done")
            started: Any = bindparam("c_started")
            at: Any = bindparam("c_now")
            moves = [(Q, "-", started), (R, "-", done), (R, "+", started), (S, "+", done)]
            values = self.counter_values(moves, finishing=done, now=at, started=claimed)
            stmt = b.update().where(b.c.id == bindparam("c_id")).ordered_values(*values)
            return self._shape().with_notify(stmt, b.c.id, only_if=None if loud else self.ended(at))

        return self._connector.stmt(("group_counters", claimed, loud), build)

    # -- items ending, counters ------------------------------------------------------------

    @staticmethod
    def terminal_values(state: str, now: float) -> dict[str, Any]:
        return {
            "state": state,
            "active": 0,
            "claimable_at": None,
            "token": None,
            "finished_at": now,
            "updated_at": now,
        }

    def terminal_at(self, state: str) -> Any:
        """UPDATE making the item at (b_id, b_pos) terminal at b_now."""
        i = self.tables.items
        return self._connector.stmt(
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

    def bump(
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
        loud = self._shape().loud(batch_id, now)
        stmt = self._connector.stmt(
            ("bump", old, new, started, loud),
            lambda: self._build_bump(old, new, started, loud),
        )
        finished = count if (old in ACTIVE and new not in ACTIVE) else 0
        yield stmt, {"c_id": batch_id, "c_count": count, "c_finished": finished, "c_now": now}

    def settle(self, owed: list[Owed]) -> Steps[None]:
        """Write the finishes' counter moves still owed (`Owed`)."""
        while owed:
            move = owed.pop()
            yield from self.bump(move.batch_id, R, move.state, move.now)

    def claimed(self, batch_id: str, now: float, owed: list[Owed]) -> Steps[None]:
        """Move a claimed item from queued to running in its batch's counters, with the
        owed finish of the same batch in the same UPDATE (one statement, not two)."""
        move = next((m for m in owed if m.batch_id == batch_id), None)
        if move is None:
            yield from self.bump(batch_id, Q, R, now, started=True)
            return
        owed.remove(move)
        loud = self._shape().loud(batch_id, now)
        stmt = self._connector.stmt(
            ("bump_claimed", move.state, loud), lambda: self._build_claimed(move.state, loud)
        )
        yield stmt, {"c_id": batch_id, "c_now": now}

    def _build_claimed(self, state: str, loud: bool) -> Any:
        # One item leaves running for ``state`` (it finishes: the batch's end is looked
        # for), one enters it from queued: running is unchanged.
        b = self.tables.batches
        now: Any = bindparam("c_now")
        one = literal(1)
        values = self.counter_values(
            [(Q, "-", one), (state, "+", one)], finishing=one, now=now, started=True
        )
        stmt = b.update().where(b.c.id == bindparam("c_id")).ordered_values(*values)
        return self._shape().with_notify(stmt, b.c.id, only_if=None if loud else self.ended(now))

    def _build_bump(self, old: str, new: str, started: bool, loud: bool) -> Any:
        b = self.tables.batches
        count: Any = bindparam("c_count")
        now: Any = bindparam("c_now")
        values = self.counter_values(
            [(old, "-", count), (new, "+", count)],
            finishing=bindparam("c_finished"),
            now=now,
            started=started,
        )
        stmt = b.update().where(b.c.id == bindparam("c_id")).ordered_values(*values)
        return self._shape().with_notify(stmt, b.c.id, only_if=None if loud else self.ended(now))

    def ended(self, now: Any) -> ColumnElement[bool]:
        """The condition that the batch UPDATE at ``now`` finished its batch (whose end is
        announced even while its other changes are not: `Dialect.loud`)."""
        ended: ColumnElement[bool] = self.tables.batches.c.finished_at == now
        return ended

    def counter_values(
        self,
        moves: list[tuple[str, str, Any]],
        *,
        finishing: Any,
        now: Any,
        started: Any,
    ) -> list[tuple[Any, Any]]:
        """The SET of a batch's counters: each ``(state, "+" or "-", count)`` in
        ``moves``, ``finishing`` items leaving the active states, at ``now``; with
        ``started`` (`True`, or a condition), the batch's start is recorded too."""
        b = self.tables.batches
        counters: dict[str, Any] = {}
        for state, sign, amount in moves:
            column = COUNTER[state]
            before = counters.get(column, b.c[column])
            counters[column] = before - amount if sign == "-" else before + amount
        # finished_at is assigned first: MySQL evaluates SET left to right, so it must see
        # the counters before this update, as PostgreSQL and SQLite always do.
        values: list[tuple[Any, Any]] = [
            (
                b.c.finished_at,
                case(
                    (
                        and_(
                            b.c.finished_at.is_(None),
                            b.c.n_queued + b.c.n_running - finishing == 0,
                        ),
                        now,
                    ),
                    else_=b.c.finished_at,
                ),
            ),
            *((b.c[column], value) for column, value in counters.items()),
            (b.c.updated_at, now),
        ]
        if started is True:
            values.append((b.c.started_at, func.coalesce(b.c.started_at, now)))
        elif started is not False:
            start = func.coalesce(b.c.started_at, now)
            values.append((b.c.started_at, case((started, start), else_=b.c.started_at)))
        return values

    def touch(self, batch_id: str, now: float) -> Steps[None]:
        """Record a change of the batch (and announce it) with no counter moved."""
        b = self.tables.batches
        stmt = self._connector.stmt(
            "touch",
            lambda: self._shape().with_notify(
                b.update().where(b.c.id == bindparam("c_id")).values(updated_at=bindparam("c_now")),
                b.c.id,
            ),
        )
        yield stmt, {"c_id": batch_id, "c_now": now}

    # -- leases ----------------------------------------------------------------------------

    def leased(self) -> ColumnElement[bool]:
        """The item under the lease (l_batch, l_key, l_token), if it is still current."""
        i = self.tables.items
        return and_(
            i.c.batch_id == bindparam("l_batch"),
            i.c.key == bindparam("l_key"),
            i.c.token == bindparam("l_token"),
            i.c.state == R,
        )

    @staticmethod
    def lease_params(lease: Lease) -> dict[str, Any]:
        return {"l_batch": lease.batch_id, "l_key": lease.key, "l_token": lease.token}

    def extend(self, with_progress: bool, with_deadline: bool, loud: bool = True) -> Any:
        """The UPDATE of a leased item's progress (``e_*``) and/or lease deadline (with
        progress and ``loud``: the change announced)."""
        i = self.tables.items

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
            stmt = i.update().where(self.leased()).values(**values)
            return self._shape().with_lease_flag(stmt, i, notify=with_progress and loud)

        return self._connector.stmt(("extend", with_progress, with_deadline, loud), build)

    def lease_flag(self) -> Any:
        """The cancel flag of the leased item."""
        i = self.tables.items
        return self._connector.stmt(
            "lease_flag", lambda: select(i.c.cancel_requested).where(self.leased())
        )

    def release_flag(self) -> Any:
        """The cancel flag of the leased item, locked (a release reads it first)."""
        i = self.tables.items
        return self._connector.stmt(
            "release_flag",
            lambda: select(i.c.cancel_requested).where(self.leased()).with_for_update(),
        )

    def finish(self, state: str) -> Any:
        """The UPDATE ending the leased attempt in ``state`` (``f_*`` parameters)."""
        return self._connector.stmt(
            ("finish", state),
            lambda: self._shape().counted(self.finish_update(state), self.tables.items.c.position),
        )

    def finish_update(self, state: str) -> Any:
        """`finish`'s UPDATE as every dialect writes it, before its `Shape` (built anew)."""
        i = self.tables.items
        error = func.coalesce(bindparam("f_error", type_=Text), i.c.error)
        history = func.coalesce(bindparam("f_history", type_=Text), i.c.history)
        values: dict[str, Any]
        if state == Q:
            values = {
                "state": Q,
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
            if state == S:
                values.update(result=bindparam("f_result", type_=Text), progress=1.0, error=None)
            else:
                values["error"] = error
        return i.update().where(self.leased()).values(**values)

    def landed(self, lease: Lease, outcome: Outcome) -> Steps[bool]:
        """Whether an earlier try of this finish committed (its reply lost with the
        connection): the item ended as asked, in the leased attempt, and nobody holds it."""
        row = (yield self.ended_as(), {"b_id": lease.batch_id, "b_key": lease.key}).first()
        return row is not None and outcome.landed(lease, row.state, row.attempt)

    def ended_as(self) -> Any:
        """The state and attempt of the item (``b_id``, ``b_key``) if nobody holds it."""
        i = self.tables.items
        return self._connector.stmt(
            "ended_as",
            lambda: select(i.c.state, i.c.attempt).where(
                i.c.batch_id == bindparam("b_id"),
                i.c.key == bindparam("b_key"),
                i.c.token.is_(None),
            ),
        )
