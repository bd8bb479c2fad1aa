"""Real worker processes on real stores, hurt on purpose: nothing may be lost.

* SIGKILL: a worker is killed at random moments 6 times and started again (3 times with
  quick items, written in groups; twice with 5 ms items, whose slots share writes; the
  200-kill soak, `make soak`, outside CI).
* Connection drop: the store's server drops every connection while a worker runs.
* Race: four workers on one 3,000-item batch.
* The worker that finished a batch dies before its completion hook has run.
* A poison item raises a BaseException that is not an Exception on every attempt.

A Redis server that crashes under a worker: `test_redis_restart.py`.
"""

from __future__ import annotations

import random
import signal
from typing import TYPE_CHECKING

import anyio
import pytest

from batchkit import BatchRunner, BatchState, ItemSpec, ItemState
from batchkit.status import recount
from batchkit.testing.contract import all_items

from .conftest import Store, Workers, assert_never_at_once

if TYPE_CHECKING:
    from batchkit import Batch

pytestmark = pytest.mark.anyio

KILLS = 6


async def _nothing(ctx: object) -> None:
    return None


async def _submit(store: Store, size: int) -> Batch:
    async with store.storage() as storage:
        return await BatchRunner(storage, _nothing).submit([f"item-{n:05}" for n in range(size)])


async def _check_finished(store: Store, batch: Batch, workers: Workers) -> dict[str, int]:
    """Every item succeeded exactly once in the store's books; its runs per key."""
    async with store.storage() as storage:
        runner = BatchRunner(storage, _nothing)
        status = await runner.status(batch.id)
        items = await all_items(storage, batch.id, page=1_000)
    assert status.state is BatchState.COMPLETED, (status, workers.logs())
    assert [i.key for i in items] == [f"item-{n:05}" for n in range(batch.total)]
    assert status.counts == recount(i.state for i in items)
    assert sum(status.counts.values()) == status.total == batch.total
    assert all(i.state is ItemState.SUCCEEDED for i in items)
    runs = workers.runs()
    for item in items:
        attempts = runs.get(item.key, [])
        assert attempts, f"{item.key} succeeded but its generator never ran"
        # The result is that of a finished run of the attempt the store accepted.
        finished = [(r.pid, r.attempt) for r in attempts if r.end is not None]
        assert (item.result["pid"], item.result["attempt"]) in finished, (item, attempts)
        assert item.attempt >= len(attempts)
    return {key: len(attempts) for key, attempts in runs.items()}


def _hooks_of(workers: Workers, batch: Batch) -> list[str]:
    return [h["state"] for h in workers.hooks() if h["batch_id"] == batch.id]


@pytest.mark.parametrize(
    ("kills", "size", "sleep"),
    [
        # 200 items of 0.1 s on 4 slots: 5 s of work, more than 6 kills leave time for.
        pytest.param(KILLS, 200, 0.1, id="6-kills"),
        # Items of 1 ms: each slot writes several successes at once and claims ahead (group
        # commit), so that a kill finds outcomes owed and items held unstarted.
        pytest.param(3, 3_000, 0.001, id="3-kills-grouped"),
        # Items of 5 ms on 4 slots: successes that end while a write is in flight share
        # the next one, so that a kill finds several slots waiting on one write.
        pytest.param(2, 1_500, 0.005, id="2-kills-shared"),
        pytest.param(
            200,
            10_000,
            0.05,
            id="soak-200-kills",
            marks=[pytest.mark.slow, pytest.mark.timeout(1_800)],
        ),
    ],
)
async def test_a_worker_killed_again_and_again_loses_nothing(
    store: Store, workers: Workers, kills: int, size: int, sleep: float
) -> None:
    batch = await _submit(store, size)
    options = ["--concurrency", "4", "--lease-seconds", "1", "--poll-interval", "0.05"]
    rng = random.Random()
    for _ in range(kills):
        process = await workers.start(*options, sleep=sleep)
        with anyio.fail_after(30):
            while not workers.started_by(process.pid):  # noqa: ASYNC110 - a file, no event
                await anyio.sleep(0.02)
        await anyio.sleep(rng.uniform(0.0, 0.5))
        process.send_signal(signal.SIGKILL)
        assert await workers.wait(process, 10) == -signal.SIGKILL
    # The last one is left to finish: more slots, so that it does not take long.
    options[1] = "8"
    last = await workers.start(*options, "--batch", batch.id, "--exit-when-idle", sleep=sleep)
    assert await workers.wait(last, 600) == 0, workers.logs()

    runs = await _check_finished(store, batch, workers)
    assert max(runs.values()) <= kills + 1
    assert sum(runs.values()) > batch.total, "no kill hit a running item: the test proved nothing"
    assert _hooks_of(workers, batch) == ["completed"]


@pytest.mark.serial  # drops every connection to the server, other tests' too
@pytest.mark.parametrize(
    ("size", "sleep"),
    [
        pytest.param(500, 0.005, id="5ms"),
        pytest.param(3_000, 0.0005, id="grouped"),  # quick items: written in groups
    ],
)
async def test_dropped_connections_lose_nothing(
    server_store: Store, workers: Workers, size: int, sleep: float
) -> None:
    batch = await _submit(server_store, size)
    process = await workers.start(
        "--concurrency", "4", "--batch", batch.id, "--exit-when-idle", sleep=sleep
    )
    dropped = 0
    with anyio.fail_after(120):
        while process.returncode is None:
            await anyio.sleep(0.2)
            if workers.started_by(process.pid):
                dropped += await server_store.kill_connections()
    assert await process.wait() == 0, workers.logs()
    assert dropped >= 3, "no connection was dropped: the test proved nothing"
    await _check_finished(server_store, batch, workers)
    logged = workers.log_of(0).read_text(errors="replace")
    assert "fault, retrying" in logged, "no step was hit by a drop: the test proved nothing"
    # Each drop is a warning that it was retried; nothing logs an error or a traceback.
    assert " ERROR " not in logged, logged[-3000:]
    assert "Traceback" not in logged, logged[logged.index("Traceback") - 500 :][:3000]
    assert _hooks_of(workers, batch) == ["completed"]


@pytest.mark.parametrize(
    "size",
    [
        pytest.param(3_000, id="3000-items"),
        pytest.param(
            50_000,
            id="soak-50000-items",
            marks=[pytest.mark.slow, pytest.mark.timeout(3_600)],
        ),
    ],
)
async def test_four_workers_race_on_one_batch(
    server_store: Store, workers: Workers, size: int
) -> None:
    batch = await _submit(server_store, size)
    processes = [
        await workers.start(
            "--concurrency", "2", "--batch", batch.id, "--exit-when-idle", sleep=0.002
        )
        for _ in range(4)
    ]
    for process in processes:
        assert await workers.wait(process, 240 if size <= 5_000 else 3_600) == 0, workers.logs()
    runs = await _check_finished(server_store, batch, workers)
    assert set(runs.values()) == {1}, "an item ran twice, though no lease lapsed"
    assert_never_at_once(workers.runs())
    per_worker: dict[int, int] = {}
    for attempts in workers.runs().values():
        per_worker[attempts[0].pid] = per_worker.get(attempts[0].pid, 0) + 1
    assert len(per_worker) == 4, per_worker  # every worker took part
    assert _hooks_of(workers, batch) == ["completed"]


async def test_a_hook_fires_once_though_the_finishing_worker_died(
    store: Store, workers: Workers
) -> None:
    batch = await _submit(store, 3)
    options = ["--lease-seconds", "1", "--poll-interval", "0.05", "--batch", batch.id]
    # It finishes the batch, claims the hook and dies before the hook has run.
    dying = await workers.start(*options, hook="dying_hook")
    assert await workers.wait(dying, 60) == -signal.SIGKILL, workers.logs()
    async with store.storage() as storage:
        assert (await BatchRunner(storage, _nothing).status(batch.id)).is_terminal
    assert _hooks_of(workers, batch) == []
    # Another worker, with no work left, fires it once the dead one's claim has lapsed.
    again = await workers.start("--lease-seconds", "1", "--poll-interval", "0.05")
    with anyio.fail_after(30):
        while not _hooks_of(workers, batch):  # noqa: ASYNC110 - a file, no event
            await anyio.sleep(0.05)
    await anyio.sleep(1.5)  # past another lease: it must not fire again
    again.send_signal(signal.SIGTERM)
    assert await workers.wait(again, 30) == 0, workers.logs()
    assert _hooks_of(workers, batch) == ["completed"]


POISONS = ["Poison", "GeneratorExit", "SystemExit", "KeyboardInterrupt"]
#: The poisons after which the worker writes the attempt and exits (status 1).
STOPPING = {"SystemExit", "KeyboardInterrupt"}


async def test_a_poison_item_ends_failed_and_its_batch_finishes(
    store: Store, workers: Workers
) -> None:
    # One batch per poison: 20 items, the 8th raising it on every attempt. A worker under
    # a supervisor (started again whenever it exits, as systemd or Kubernetes would) must
    # end each batch: the poison item failed after its 3 attempts, the 19 others done.
    batches = {}
    async with store.storage() as storage:
        runner = BatchRunner(storage, _nothing)
        for poison in POISONS:
            items = [
                ItemSpec(key=f"{poison}-{n:02}", payload={"raise": poison} if n == 7 else None)
                for n in range(20)
            ]
            batches[poison] = await runner.submit(items)
    options = ("--max-attempts", "3", "--backoff", "0", "--concurrency", "2", "--exit-when-idle")
    exits = []
    with anyio.fail_after(120):
        while True:
            process = await workers.start(*options, generator="poisoned", hook=None)
            exits.append(await workers.wait(process, timeout=60))
            if exits[-1] == 0:
                break
            assert len(exits) <= 12, f"the worker keeps exiting: {exits}\n{workers.logs()}"
    # Two stopping poisons, three attempts each: an exit with status 1 after each (fewer
    # when both raise at once, and both attempts are written before the worker stops),
    # then a run that ends idle.
    assert exits[-1] == 0, workers.logs()
    assert set(exits[:-1]) == {1}, exits
    assert 3 <= len(exits) - 1 <= 6, exits
    async with store.storage() as storage:
        runner = BatchRunner(storage, _nothing)
        for poison, batch in batches.items():
            status = await runner.status(batch.id)
            items = await all_items(storage, batch.id)
            assert status.state is BatchState.COMPLETED_WITH_ERRORS, (poison, workers.logs())
            bad = items[7]
            assert bad.state is ItemState.FAILED, (poison, bad)
            assert bad.error is not None
            assert bad.error.type == poison
            assert f"{bad.key} is poisoned" in bad.error.message
            assert [e.type for e in bad.errors] == [poison] * 3, bad.errors
            others = items[:7] + items[8:]
            assert all(i.state is ItemState.SUCCEEDED for i in others), (poison, others)
    runs = workers.runs()
    for poison in POISONS:
        assert len(runs[f"{poison}-07"]) == 3, runs[f"{poison}-07"]  # three, no more
