"""Shared test configuration."""

from __future__ import annotations

import os

import pytest
from hypothesis import HealthCheck, settings
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

# CI runs more examples; a local run stays quick. Deadlines are off: the machine is shared.
settings.register_profile(
    "ci", max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.register_profile(
    "dev", max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.load_profile("ci" if os.environ.get("CI") == "true" else "dev")

#: Cases CI leaves to ``make soak`` (marked ``slow``), to keep it under 15 minutes: in CI the
#: same test runs on another store or another event loop.
SOAK_ONLY = {
    "tests/examples/fastapi_app/test_browser_pages.py::"
    "test_sigterm_with_two_pages_open_and_both_go_live_again[postgres]",
    "tests/examples/fastapi_app/test_browser_pages.py::"
    "test_sigterm_with_two_pages_open_and_both_go_live_again[redis]",
    # The memory store's state machine runs on trio in CI (test_memory.py).
    "tests/storage/test_contract.py::TestStorageContract::test_state_machine[memory]",
    # MariaDB's runs the steps PostgreSQL's and SQLite's run in CI (its contract tests do).
    "tests/storage/test_contract.py::TestStorageContract::test_state_machine[mysql]",
    # The phone's width stays in CI: the narrower page, where layouts break first.
    "tests/examples/fastapi_app/test_browser_pages.py::"
    "test_every_page_fits_the_window_and_passes_axe[desktop]",
    # The fault tests: each store still has a kill test in CI (SQLite its grouped one,
    # MariaDB its shared one), each kind of kill runs on two stores, the race on three,
    # the poison item on PostgreSQL.
    "tests/workers/test_faults.py::test_a_worker_killed_again_and_again_loses_nothing[mysql-6-kills]",
    "tests/workers/test_faults.py::test_a_worker_killed_again_and_again_loses_nothing[sqlite-6-kills]",
    "tests/workers/test_faults.py::test_four_workers_race_on_one_batch[mysql-3000-items]",
    "tests/workers/test_faults.py::test_a_worker_killed_again_and_again_loses_nothing[mysql-3-kills-grouped]",
    "tests/workers/test_faults.py::test_a_worker_killed_again_and_again_loses_nothing[redis-3-kills-grouped]",
    "tests/workers/test_faults.py::test_a_worker_killed_again_and_again_loses_nothing[sqlite-2-kills-shared]",
    "tests/workers/test_faults.py::test_a_worker_killed_again_and_again_loses_nothing[postgres-2-kills-shared]",
    "tests/workers/test_faults.py::test_a_poison_item_ends_failed_and_its_batch_finishes[mysql]",
    "tests/workers/test_faults.py::test_a_poison_item_ends_failed_and_its_batch_finishes[sqlite]",
    "tests/workers/test_faults.py::test_a_poison_item_ends_failed_and_its_batch_finishes[redis]",
}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if item.nodeid in SOAK_ONLY:
            item.add_marker(pytest.mark.slow)


@pytest.fixture
def exporter(monkeypatch: pytest.MonkeyPatch) -> InMemorySpanExporter:
    """batchkit's spans in this test, captured in memory (the process's global tracer
    provider is left alone: it can be set only once)."""
    import batchkit._execution
    import batchkit.runner

    captured = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(captured))
    for module in (batchkit.runner, batchkit._execution):
        monkeypatch.setattr(module, "tracer", lambda: provider.get_tracer("batchkit"))
    return captured
