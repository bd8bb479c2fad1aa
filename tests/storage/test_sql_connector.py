"""The connector hands statements to the drivers directly: their arguments are SQLAlchemy's.

`Connector.plan` works out once per statement where each positional argument comes from,
instead of asking `construct_params` on every call; the arguments must be the same.
"""

from __future__ import annotations

import functools
from typing import Any

import pytest
from sqlalchemy import bindparam, select
from sqlalchemy.exc import InvalidRequestError
from sqlalchemy.ext.asyncio import create_async_engine

from batchkit.models import ItemState
from batchkit.protocols import ClaimRequest
from batchkit.storage.sql import SQLStorage
from batchkit.storage.sql._asyncpg import AsyncpgDialect
from batchkit.storage.sql._sqlite import SQLiteDialect

pytestmark = pytest.mark.anyio

URLS = {
    "sqlite": "sqlite+aiosqlite:///unused.db",
    "postgres": "postgresql+asyncpg://u@127.0.0.1:1/unused",
}
DIALECTS = {"sqlite": SQLiteDialect, "postgres": AsyncpgDialect}
PARAMS: dict[str, Any] = {
    "b_id": "b",
    "b_ids": ["a", "b"],
    "b_pos": 3,
    "b_now": 1.5,
    "b_key": "k",
    "b_attempt": 2,
    "b_token": "t",
    "b_deadline": 9.5,
    "c_id": "b",
    "c_count": 2,
    "c_finished": 1,
    "c_now": 2.5,
    "l_batch": "b",
    "l_key": "k",
    "l_token": "t",
    "f_now": 3.5,
    "f_at": 4.5,
    "f_result": "1",
    "f_error": None,
    "f_history": "[]",
    "e_progress": 0.5,
    "e_message": "half",
    "e_now": 5.5,
    "e_deadline": 6.5,
}


def _storage(name: str) -> tuple[SQLStorage, Any]:
    # Compiling needs the engine's dialect, not a connection: nothing is opened.
    engine = create_async_engine(URLS[name])
    storage = SQLStorage(engine, table_prefix="plan_")
    dialect = DIALECTS[name](storage._connector, storage._sql, "plan_")
    storage._sql.shape = dialect
    return storage, dialect


def _statements(storage: SQLStorage, dialect: Any) -> list[Any]:
    sql = storage._sql
    found = [
        sql.claim_query(ClaimRequest(60, batch_ids=("b",)))[0],
        sql.claim_query(ClaimRequest(60))[0],
        sql.claim_found(),
        sql.claim_update(),
        sql.terminal_at(ItemState.CANCELLED.value),
        *(stmt for stmt, _ in sql.bump("b", "queued", "running", 1.0, started=True)),
        *(stmt for stmt, _ in sql.bump("b", "running", "succeeded", 1.0)),
        *(stmt for stmt, _ in sql.touch("b", 1.0)),
        sql.extend(True, True),
        sql.extend(False, True),
        sql.lease_flag(),
        sql.release_flag(),
        *(sql.finish(state.value) for state in ItemState if state is not ItemState.RUNNING),
        sql.ended_as(),
    ]
    if isinstance(dialect, AsyncpgDialect):
        for state in ("succeeded", "failed", "cancelled"):
            for loud in (True, False):
                build = functools.partial(dialect._build, state, loud)
                found.append(storage._connector.stmt(("pg_finish_claim", state, loud), build))
    return found


@pytest.mark.parametrize("name", sorted(URLS))
async def test_the_arguments_are_the_ones_sqlalchemy_builds(name: str) -> None:
    storage, dialect = _storage(name)
    connector = storage._connector
    try:
        statements = _statements(storage, dialect)
        assert all(connector.is_cached(stmt) for stmt in statements)
        for stmt in statements:
            for _ in range(2):  # built, then kept
                sql, arguments, _ = connector.plan(stmt, PARAMS)
                compiled = stmt.compile(dialect=connector.engine.dialect)
                values = compiled.construct_params(PARAMS)
                assert sql == compiled.string
                assert arguments == [values[n] for n in compiled.positiontup], sql
    finally:
        await connector.engine.dispose()


@pytest.mark.parametrize("name", sorted(URLS))
async def test_a_missing_or_given_by_the_statement_parameter_is_sqlalchemys_too(
    name: str,
) -> None:
    storage, _ = _storage(name)
    connector = storage._connector
    items = storage.tables.items
    try:
        needs = connector.stmt(
            "needs", lambda: select(items.c.key).where(items.c.position == bindparam("p"))
        )
        with pytest.raises(InvalidRequestError, match="'p'"):
            connector.plan(needs, {})
        assert connector.plan(needs, {"p": 7})[1] == [7]
        given = connector.stmt("given", lambda: needs.params(p=5))
        assert connector.plan(given, {})[1] == [5]
        assert connector.plan(given, {"p": 6})[1] == [6]
    finally:
        await connector.engine.dispose()
