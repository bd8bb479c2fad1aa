"""PostgreSQL through PgBouncer, as most hosted PostgreSQL is reached.

A PgBouncer of the test's own (see ``tests/_pgbouncer.py``) stands in front of the
PostgreSQL under test, in transaction mode (``?pooler=transaction``) and in session mode,
with a pool of 10 server connections. Worker processes and the storage's own API go
through it; the test checks the books through a direct connection.
"""

from __future__ import annotations

import secrets
from typing import TYPE_CHECKING, Any

import anyio
import pytest

from tests._pgbouncer import PgBouncer, pgbouncer_binary
from tests.storage.conftest import POSTGRES_URL, _drop_tables, require_server

from .conftest import Store, Workers
from .test_faults import _check_finished, _submit

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

    from batchkit import ItemContext

pytestmark = pytest.mark.anyio

POOL = 10


def _pgbouncer(mode: str) -> Iterator[PgBouncer]:
    require_server(POSTGRES_URL, "PostgreSQL")
    bouncer = PgBouncer(pgbouncer_binary(), POSTGRES_URL, mode, POOL)
    bouncer.start()
    try:
        yield bouncer
    finally:
        bouncer.stop()


@pytest.fixture
def pooler(request: pytest.FixtureRequest) -> Iterator[PgBouncer]:
    """A PgBouncer in the mode the test's parameter names."""
    yield from _pgbouncer(request.param)


@pytest.fixture
def prefix() -> Iterator[str]:
    name = f"b{secrets.token_hex(4)}_"
    yield name
    anyio.run(_drop_tables, POSTGRES_URL, [name])


async def _nothing(ctx: ItemContext) -> None:
    return None


async def _echo(ctx: ItemContext) -> dict[str, Any]:
    await anyio.sleep(0.002)
    return {"key": ctx.key}


@pytest.mark.parametrize(
    ("pooler", "query"),
    [
        pytest.param("transaction", "?pooler=transaction", id="transaction"),
        pytest.param("session", "", id="session"),
    ],
    indirect=["pooler"],
)
async def test_two_cli_workers_through_pgbouncer_run_every_item_once(
    tmp_path: Path, pooler: PgBouncer, query: str, prefix: str
) -> None:
    # Two worker processes at --concurrency 4 each, on the default connection budget: in
    # session mode they must fit the pooler's 10 server connections (before, they took
    # them all and hung until the pooler gave up, and leases lapsed); in transaction mode
    # no prepared statement may cross from one client to another.
    direct = Store("postgres", POSTGRES_URL, prefix)
    pooled = Store("postgres", pooler.url() + query, prefix)
    batch = await _submit(direct, 240)
    workers = Workers(pooled, tmp_path)
    try:
        started = [
            await workers.start("--concurrency", "4", "--exit-when-idle", sleep=0.02)
            for _ in range(2)
        ]
        for process in started:
            assert await workers.wait(process, 90) == 0, workers.logs()
        runs = await _check_finished(direct, batch, workers)
    finally:
        await workers.aclose()
    # No lease lapsed: every item ran once.
    assert set(runs.values()) == {1}, workers.logs()
    logs = workers.logs()
    assert " ERROR " not in logs, logs
    assert "Traceback" not in logs, logs
    warnings = [line for line in logs.splitlines() if " WARNING " in line]
    if query:
        # Through a transaction pooler, the one thing said: the run's watch polls.
        assert all("watch polls" in line for line in warnings), logs
    else:
        assert not warnings, logs


@pytest.mark.parametrize("pooler", ["transaction"], indirect=True)
async def test_a_pooler_killed_and_restarted_under_two_workers_loses_nothing(
    tmp_path: Path, pooler: PgBouncer, prefix: str
) -> None:
    # The pooler dies (SIGKILL) with items running and comes back on the same port 2 s
    # later: the workers outlast it (their writes wait for the store), every item ends
    # succeeded, in the store's books once.
    direct = Store("postgres", POSTGRES_URL, prefix)
    pooled = Store("postgres", pooler.url() + "?pooler=transaction", prefix)
    batch = await _submit(direct, 300)
    workers = Workers(pooled, tmp_path)
    try:
        started = [
            await workers.start("--concurrency", "4", "--exit-when-idle", sleep=0.05)
            for _ in range(2)
        ]
        with anyio.fail_after(60):
            while len(workers.runs()) < 60:  # noqa: ASYNC110 - the log has no event
                await anyio.sleep(0.05)
        pooler.kill()
        await anyio.sleep(2)
        pooler.start()
        for process in started:
            assert await workers.wait(process, 90) == 0, workers.logs()
        await _check_finished(direct, batch, workers)
    finally:
        await workers.aclose()
    logs = "".join(workers.log_of(n).read_text() for n in range(2))
    assert "Traceback" not in logs, workers.logs()
    # The kill hit the workers mid-batch: they retried, and got through.
    assert "transient database fault, retrying" in logs, workers.logs()
