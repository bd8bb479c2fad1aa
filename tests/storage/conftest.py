"""Storage adapters under test: every adapter fans out through the ``storage_factory`` fixture.

An adapter joins by adding one ``pytest.param`` to ``storage_factory`` and one
``<name>_storage_factory`` fixture returning a zero-argument callable that builds a new,
empty, not yet entered storage.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from batchkit import MemoryStorage

if TYPE_CHECKING:
    from collections.abc import Callable

    from batchkit.protocols import Storage

__all__: list[str] = []


@pytest.fixture
def anyio_backend() -> str:
    # Adapter tests run on asyncio; the core's tests cover trio.
    return "asyncio"


@pytest.fixture
def memory_storage_factory() -> Callable[[], Storage]:
    return MemoryStorage


@pytest.fixture(params=[pytest.param("memory", id="memory")])
def storage_factory(request: pytest.FixtureRequest) -> Callable[[], Storage]:
    factory: Callable[[], Storage] = request.getfixturevalue(f"{request.param}_storage_factory")
    return factory
