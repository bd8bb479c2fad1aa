"""MySQL/MariaDB on asyncmy: the hot path sent to the driver directly, on kept connections.

The steps of a read or a write go to asyncmy past SQLAlchemy (`AsyncmyDialect`). The
connection is not in autocommit, so a step's statements share one transaction without a
BEGIN, committed at the end; these tests hold that to what the storage promises: a write
is all or nothing, whatever stops it half-way, and a read on a kept connection never
answers from an earlier read's snapshot.
"""

from __future__ import annotations

import secrets
from typing import TYPE_CHECKING, Any

import anyio
import pytest
from sqlalchemy import text

from batchkit.protocols import ClaimRequest, Outcome
from batchkit.storage.sql import SQLStorage
from batchkit.storage.sql._mysql import AsyncmyDialect
from batchkit.testing.contract import new_batch

from .conftest import MYSQL_URL, _drop_tables, require_server

if TYPE_CHECKING:
    from collections.abc import Iterator

pytestmark = pytest.mark.anyio


@pytest.fixture
def prefixes() -> Iterator[list[str]]:
    require_server(MYSQL_URL, "MariaDB/MySQL")
    made: list[str] = []
    yield made
    anyio.run(_drop_tables, MYSQL_URL, made)


class _Failed(Exception):
    pass


def _storage(prefixes: list[str], **options: Any) -> SQLStorage:
    prefix = f"m{secrets.token_hex(4)}_"
    prefixes.append(prefix)
    return SQLStorage(MYSQL_URL, table_prefix=prefix, **options)


@pytest.mark.parametrize("stopped_by", ["error", "cancellation"])
async def test_a_write_that_fails_half_way_leaves_nothing(
    prefixes: list[str], stopped_by: str
) -> None:
    # The steps fail after their first statement: with an error of their own, or
    # cancelled. The statement must not be committed, then or by the next steps that run
    # on the same connection.
    failure = _Failed if stopped_by == "error" else anyio.get_cancelled_exc_class()
    async with _storage(prefixes, max_connections=2) as storage:
        dialect = storage._dialect
        assert isinstance(dialect, AsyncmyDialect)
        record, _ = await storage.create_batch(new_batch(1))
        table = storage.tables.batches.name
        bump = text(f"UPDATE {table} SET total = total + 1 WHERE id = :b_id")

        def steps() -> Any:
            yield bump, {"b_id": record.id}
            raise failure

        with pytest.raises(failure):
            await dialect.write(steps)
        for _ in range(3):  # on every connection the storage keeps
            claim = await storage.claim(ClaimRequest(lease_seconds=60, batch_ids=(record.id,)))
            if claim is not None:
                await storage.finish(claim.lease, Outcome.released())
            assert (await storage.get_batch(record.id)).total == 1


async def test_a_kept_connection_reads_what_others_committed_since(prefixes: list[str]) -> None:
    # A read that left its transaction open would pin its snapshot (REPEATABLE READ):
    # the next read on the same kept connection would not see a later commit.
    async with _storage(prefixes, max_connections=2) as reader:
        record, _ = await reader.create_batch(new_batch(1))
        assert (await reader.get_item(record.id, "item-0")).state.value == "queued"
        async with SQLStorage(MYSQL_URL, table_prefix=reader.table_prefix) as writer:
            claim = await writer.claim(ClaimRequest(lease_seconds=60, batch_ids=(record.id,)))
            assert claim is not None
            assert (await writer.finish(claim.lease, Outcome.succeeded("1"))).accepted
        assert (await reader.get_item(record.id, "item-0")).state.value == "succeeded"
        assert (await reader.get_batch(record.id)).finished_at is not None
