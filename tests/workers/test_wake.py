"""An idle worker process wakes on new work announced by the store, not at its next poll.

Each worker here polls only every 60 s (``--poll-interval 60``): an item that starts within
a few seconds of its submit was announced. On MariaDB, which announces nothing to other
processes, the same worker waits for its poll: the test says so with a shorter interval.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import anyio
import pytest

from batchkit import BatchRunner
from batchkit.protocols import ClaimRequest, Outcome

if TYPE_CHECKING:
    from batchkit.protocols import Storage

    from .conftest import Store, Workers

pytestmark = pytest.mark.anyio


async def _nothing(ctx: object) -> None:
    return None


async def _started_within(
    workers: Workers, storage: Storage, keys: list[str], seconds: float
) -> float:
    """Submit ``keys``; how long until the worker logged the first item's start (fails
    past ``seconds``)."""
    before = time.time()
    await BatchRunner(storage, _nothing).submit(keys)
    with anyio.fail_after(seconds):
        while keys[0] not in workers.runs():  # noqa: ASYNC110 - another process's log
            await anyio.sleep(0.01)
    return workers.runs()[keys[0]][0].start - before


async def _idle_worker(workers: Workers, storage: Storage, poll: str = "60") -> None:
    """Start a worker that polls every ``poll`` seconds, and let it go idle."""
    await workers.start("--poll-interval", poll, "--concurrency", "2", hook=None)
    # Its first claim: a batch it runs shows that it is up and has found nothing else.
    await _started_within(workers, storage, ["warm-up"], 30)
    await anyio.sleep(0.5)


@pytest.mark.parametrize("store", ["sqlite", "postgres", "redis"], indirect=True)
async def test_an_idle_worker_starts_a_new_batch_at_once(store: Store, workers: Workers) -> None:
    async with store.storage() as storage:
        await _idle_worker(workers, storage)
        took = [await _started_within(workers, storage, [f"item-{n}"], 10) for n in range(5)]
    # Announced: well under a second each, where the poll would take up to a minute.
    assert max(took) < 2.0, (took, workers.logs())


@pytest.mark.serial  # drops every connection to the server, other tests' too
@pytest.mark.parametrize("store", ["postgres", "redis"], indirect=True)
async def test_an_idle_worker_hears_again_after_its_connection_is_dropped(
    store: Store, workers: Workers
) -> None:
    async with store.storage() as storage:
        await _idle_worker(workers, storage)
        assert await store.kill_connections() >= 1
        await anyio.sleep(3.0)  # it notices, and listens (subscribes) again
        took = await _started_within(workers, storage, ["after-the-drop"], 30)
    assert took < 5.0, (took, workers.logs())


@pytest.mark.parametrize("store", ["sqlite", "postgres", "redis"], indirect=True)
async def test_an_item_handed_back_by_another_process_wakes_an_idle_worker(
    store: Store, workers: Workers
) -> None:
    async with store.storage() as storage:
        # This process holds an item, as a peer worker would, before the worker starts...
        held = await BatchRunner(storage, _nothing).submit(["held"])
        claim = await storage.claim(ClaimRequest(lease_seconds=600, batch_ids=(held.id,)))
        assert claim is not None
        await _idle_worker(workers, storage)
        assert "held" not in workers.runs()
        # ...and hands it back: the idle worker runs it at once, not at its next poll.
        released = time.time()
        await storage.finish(claim.lease, Outcome.released())
        with anyio.fail_after(30):
            while "held" not in workers.runs():  # noqa: ASYNC110 - another process's log
                await anyio.sleep(0.01)
    took = workers.runs()["held"][0].start - released
    assert took < 2.0, (took, workers.logs())


@pytest.mark.parametrize("store", ["mysql"], indirect=True)
async def test_on_mariadb_an_idle_worker_finds_new_work_at_its_poll(
    store: Store, workers: Workers
) -> None:
    async with store.storage() as storage:
        await _idle_worker(workers, storage, poll="1")
        took = await _started_within(workers, storage, ["polled"], 10)
    assert took < 3.0, (took, workers.logs())
