"""Every adapter of the ``storage_factory`` fixture (see conftest.py) against the contract."""

from __future__ import annotations

import secrets
from typing import TYPE_CHECKING

import anyio
import pytest
from hypothesis import HealthCheck, settings

from batchkit.testing import StorageContract

from .conftest import POSTGRES_URL, _sql_factory, require_server

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

    from batchkit.protocols import Storage

pytestmark = pytest.mark.anyio

#: Examples of the state machine on a real database: each example opens a store and a
#: step costs round trips, so fewer than on memory (the CI profile runs 150 there).
SQL_EXAMPLES = 20
#: Redis steps are cheaper: more examples in the same time.
REDIS_EXAMPLES = 60


class TestStorageContract(StorageContract):
    """The same test functions, run against memory, SQLite, PostgreSQL, MariaDB and Redis."""

    @pytest.fixture
    def state_machine_settings(self, request: pytest.FixtureRequest) -> settings | None:
        adapter = request.node.callspec.params.get("storage_factory")
        if adapter == "memory":
            return None
        return settings(
            max_examples=REDIS_EXAMPLES if adapter == "redis" else SQL_EXAMPLES,
            stateful_step_count=30,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow],
        )


class TestPostgresContractInASchema(StorageContract):
    """The same test functions on PostgreSQL, with the tables in a schema of their own
    (given by the URL): none is in the connection's schema, so a statement that forgot
    the schema fails."""

    @pytest.fixture
    def storage_factory(self, _contract_schema: str) -> Callable[[], Storage]:
        return _sql_factory("t_", f"{POSTGRES_URL}?schema={_contract_schema}")

    @pytest.fixture
    def state_machine_settings(self) -> settings:
        # What is checked here is where the statements go, which a few examples show;
        # the class above explores the steps themselves.
        return settings(
            max_examples=10,
            stateful_step_count=30,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow],
        )


@pytest.fixture(scope="session")
def _contract_schema() -> Iterator[str]:
    """The schema of this test process's tables, made by the first storage that opens,
    emptied by each, dropped at the end."""
    require_server(POSTGRES_URL, "PostgreSQL")
    schema = f"bk_contract_{secrets.token_hex(4)}"
    yield schema
    anyio.run(_drop_schema, schema)


async def _drop_schema(schema: str) -> None:
    from sqlalchemy import text
    from sqlalchemy.ext.asyncio import create_async_engine

    engine = create_async_engine(POSTGRES_URL)
    try:
        async with engine.begin() as conn:
            await conn.execute(text(f"DROP SCHEMA IF EXISTS {schema} CASCADE"))
    finally:
        await engine.dispose()
