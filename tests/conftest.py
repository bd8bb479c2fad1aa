"""Shared test configuration."""

from __future__ import annotations

import os

import pytest
from hypothesis import HealthCheck, settings

# CI runs more examples; a local run stays quick. Deadlines are off: the machine is shared.
settings.register_profile(
    "ci", max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.register_profile(
    "dev", max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.load_profile("ci" if os.environ.get("CI") == "true" else "dev")

#: Cases CI leaves to ``make soak`` (marked ``slow``), to keep it under 15 minutes: in CI the
#: same test runs on another store or another event loop. (The fault tests' own list is in
#: ``tests/workers/conftest.py``.)
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
}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if item.nodeid in SOAK_ONLY:
            item.add_marker(pytest.mark.slow)
