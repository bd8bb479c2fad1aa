"""Every adapter of the ``storage_factory`` fixture (see conftest.py) against the contract."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, settings

from batchkit.testing import StorageContract

pytestmark = pytest.mark.anyio

#: Examples of the state machine on a real database: each example opens a store and a
#: step costs round trips, so fewer than on memory (the CI profile runs 200 there).
SQL_EXAMPLES = 40
#: Redis steps are cheaper: more examples in the same time.
REDIS_EXAMPLES = 100


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
