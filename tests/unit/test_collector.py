"""A listing builds its page with Python's garbage collector paused, and gives the host's
setting back: on, off, after an error, across threads."""

from __future__ import annotations

import gc
import threading
from typing import TYPE_CHECKING

import pytest

from batchkit import BatchRunner, ItemState, MemoryStorage
from batchkit._collector import collector_paused

if TYPE_CHECKING:
    from collections.abc import Iterator


@pytest.fixture(autouse=True)
def _collector_restored() -> Iterator[None]:
    was = gc.isenabled()
    yield
    (gc.enable if was else gc.disable)()


def _collections_during(build: int) -> int:
    """Collections started while ``build`` lists are made inside `collector_paused`."""
    started = 0

    def count(phase: str, info: dict[str, int]) -> None:
        nonlocal started
        if phase == "start":
            started += 1

    gc.callbacks.append(count)
    try:
        with collector_paused():
            kept = [[n] for n in range(build)]
        assert len(kept) == build
        return started
    finally:
        gc.callbacks.remove(count)


def test_no_collection_runs_while_a_page_is_built() -> None:
    gc.enable()
    # Far more new containers than the youngest generation's threshold (700).
    assert _collections_during(20 * gc.get_threshold()[0]) == 0
    assert gc.isenabled()


def test_the_collector_runs_again_after_the_page() -> None:
    gc.enable()
    with collector_paused():
        pass
    started = 0

    def count(phase: str, info: dict[str, int]) -> None:
        nonlocal started
        started += phase == "start"

    gc.callbacks.append(count)
    try:
        kept = [[n] for n in range(20 * gc.get_threshold()[0])]
    finally:
        gc.callbacks.remove(count)
    assert len(kept) > 0
    assert started > 0


def test_a_host_that_paused_the_collector_keeps_it_paused() -> None:
    gc.disable()
    with collector_paused():
        assert not gc.isenabled()
    assert not gc.isenabled()


def test_an_error_while_building_gives_the_collector_back() -> None:
    gc.enable()

    def build() -> None:
        with collector_paused():
            assert not gc.isenabled()
            raise ValueError("bad row")

    with pytest.raises(ValueError, match="bad row"):
        build()
    assert gc.isenabled()


def test_pages_built_in_several_threads_leave_it_on() -> None:
    gc.enable()
    inside = threading.Barrier(2)

    def build() -> None:
        with collector_paused():
            inside.wait(timeout=10)
            [[n] for n in range(1000)]
            inside.wait(timeout=10)

    threads = [threading.Thread(target=build) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=10)
    assert gc.isenabled()


@pytest.mark.anyio
async def test_runner_items_pages_with_the_collector_given_back() -> None:
    async with MemoryStorage() as storage:
        runner = BatchRunner(storage, lambda ctx: None)
        batch = await runner.submit([f"item-{n}" for n in range(2500)])
        for host_has_it_on in (True, False):
            (gc.enable if host_has_it_on else gc.disable)()
            after = None
            seen = 0
            while page := await runner.items(batch.id, limit=1000, after=after):
                assert gc.isenabled() is host_has_it_on
                assert all(item.state is ItemState.QUEUED for item in page)
                seen += len(page)
                after = page[-1].position
            assert seen == 2500
