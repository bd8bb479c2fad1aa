"""Worker in one process: claiming across batches, filters, stopping, hooks and recovery."""

from __future__ import annotations

import logging
from collections import Counter
from typing import Any

import anyio
import pytest

from batchkit import (
    BatchRunner,
    BatchState,
    BatchStatus,
    ItemContext,
    ItemState,
    MemoryStorage,
    RetryPolicy,
    StorageError,
    Worker,
)
from batchkit.protocols import ClaimRequest, Lease, Outcome
from batchkit.status import item_from_record

from .helpers import CountingStorage, all_items, wait_until

pytestmark = pytest.mark.anyio


@pytest.fixture
def storage() -> MemoryStorage:
    return MemoryStorage()


async def _noop(ctx: ItemContext) -> dict[str, str]:
    return {"key": ctx.key}


def _submitter(storage: Any) -> BatchRunner:
    return BatchRunner(storage, _noop)


# -- claiming ------------------------------------------------------------------------------


async def test_a_worker_runs_every_batch_and_fires_each_hook_once(storage: MemoryStorage) -> None:
    submitter = _submitter(storage)
    batches = [await submitter.submit([f"{n}-{i}" for i in range(5)]) for n in range(3)]
    fired: list[BatchStatus] = []
    worker = Worker(
        storage, _noop, concurrency=3, exit_when_idle=True, on_batch_finished=fired.append
    )
    with anyio.fail_after(10):
        stats = await worker.run()
    assert (stats.succeeded, stats.failed, stats.running) == (15, 0, 0)
    for batch in batches:
        status = await submitter.status(batch.id)
        assert status.state is BatchState.COMPLETED
    assert sorted(s.batch_id for s in fired) == sorted(b.id for b in batches)
    assert all(s.state is BatchState.COMPLETED for s in fired)
    assert stats.hooks_fired == 3


async def test_two_workers_share_a_batch_without_running_an_item_twice(
    storage: MemoryStorage,
) -> None:
    runs: Counter[str] = Counter()
    running: set[str] = set()

    async def gen(ctx: ItemContext) -> None:
        assert ctx.key not in running, f"{ctx.key} runs twice at once"
        running.add(ctx.key)
        runs[ctx.key] += 1
        await anyio.sleep(0.001)
        running.discard(ctx.key)

    fired: list[str] = []
    batch = await _submitter(storage).submit([f"item-{n}" for n in range(200)])
    workers = [
        Worker(
            storage,
            gen,
            concurrency=4,
            batch_ids=[batch.id],
            exit_when_idle=True,
            on_batch_finished=lambda s: fired.append(s.batch_id),
        )
        for _ in range(2)
    ]
    with anyio.fail_after(20):
        async with anyio.create_task_group() as tg:
            for worker in workers:
                tg.start_soon(worker.run)
    assert runs == Counter({f"item-{n}": 1 for n in range(200)})
    assert all(w.stats.succeeded > 20 for w in workers), [w.stats for w in workers]
    assert fired == [batch.id]


async def test_batch_ids_and_metadata_choose_what_a_worker_takes(storage: MemoryStorage) -> None:
    submitter = _submitter(storage)
    video = await submitter.submit(["v1", "v2"], metadata={"queue": "video"})
    other = await submitter.submit(["o1"], metadata={"queue": "text"})
    chosen = await submitter.submit(["c1"])
    await Worker(storage, _noop, metadata={"queue": "video"}, exit_when_idle=True).run()
    assert (await submitter.status(video.id)).state is BatchState.COMPLETED
    assert (await submitter.status(other.id)).counts[ItemState.QUEUED] == 1
    await Worker(storage, _noop, batch_ids=[chosen.id], exit_when_idle=True).run()
    assert (await submitter.status(chosen.id)).state is BatchState.COMPLETED
    assert (await submitter.status(other.id)).counts[ItemState.QUEUED] == 1


async def test_an_idle_worker_polls_once_per_interval_whatever_its_concurrency() -> None:
    storage = CountingStorage()
    worker = Worker(storage, _noop, concurrency=8, poll_interval=0.1)  # type: ignore[arg-type]
    with anyio.move_on_after(1.05):
        await worker.run()
    # About 11 polls; a poll per slot would be about 88. Late timers and a slow start on a
    # busy host lower it: the window is long enough that a second poll comes all the same.
    assert 2 <= storage.calls["claim"] <= 16, storage.calls


async def test_new_work_is_picked_up_by_a_running_worker(storage: MemoryStorage) -> None:
    worker = Worker(storage, _noop, poll_interval=0.05)
    async with worker:
        batch = await _submitter(storage).submit(["late"])

        async def done() -> bool:
            return (await storage.get_item(batch.id, "late")).state is ItemState.SUCCEEDED

        await wait_until(done)
    assert worker.stats.succeeded == 1


# -- stopping ------------------------------------------------------------------------------


async def test_stop_lets_running_items_finish_within_the_grace_period(
    storage: MemoryStorage,
) -> None:
    async def slow(ctx: ItemContext) -> str:
        await anyio.sleep(0.2)
        return "done"

    batch = await _submitter(storage).submit(["a", "b", "c", "d"])
    worker = Worker(storage, slow, concurrency=2, grace_period=5)
    async with anyio.create_task_group() as tg:
        tg.start_soon(worker.run)
        await wait_until(lambda: _true_when(worker.stats.running == 2))
        worker.stop()
    states = Counter(i.state for i in await all_items(_submitter(storage), batch.id))
    assert states == Counter({ItemState.SUCCEEDED: 2, ItemState.QUEUED: 2})
    assert worker.stats.running == 0


async def test_past_the_grace_period_running_items_go_back_to_queued(
    storage: MemoryStorage,
) -> None:
    started = anyio.Event()

    async def hang(ctx: ItemContext) -> None:
        started.set()
        await anyio.sleep(60)

    batch = await _submitter(storage).submit(["a", "b", "c"])
    worker = Worker(storage, hang, concurrency=2, grace_period=0.1)
    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            tg.start_soon(worker.run)
            await wait_until(lambda: _true_when(worker.stats.running == 2))
            worker.stop()
    items = await all_items(_submitter(storage), batch.id)
    assert [i.state for i in items] == [ItemState.QUEUED] * 3
    assert [i.attempt for i in items] == [1, 1, 0]
    assert worker.stats.released == 2
    # Handed back, not failed: the next worker runs them, and no budget was used.
    await Worker(storage, _noop, exit_when_idle=True, retry=RetryPolicy(max_attempts=1)).run()
    assert [i.state for i in await all_items(_submitter(storage), batch.id)] == [
        ItemState.SUCCEEDED
    ] * 3


async def test_a_second_stop_can_cut_the_grace_period_short(storage: MemoryStorage) -> None:
    started = anyio.Event()

    async def hang(ctx: ItemContext) -> None:
        started.set()
        await anyio.sleep(60)

    await _submitter(storage).submit(["a"])
    worker = Worker(storage, hang, grace_period=30)
    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            tg.start_soon(worker.run)
            await started.wait()
            worker.stop()
            await anyio.sleep(0.05)
            worker.stop(grace_period=0)
    assert worker.stats.released == 1


async def test_cancelling_run_hands_items_back_at_once(storage: MemoryStorage) -> None:
    started = anyio.Event()

    async def hang(ctx: ItemContext) -> None:
        started.set()
        await anyio.sleep(60)

    batch = await _submitter(storage).submit(["a", "b"])
    worker = Worker(storage, hang, concurrency=2)
    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            tg.start_soon(worker.run)
            await started.wait()
            await anyio.sleep(0.01)
            tg.cancel_scope.cancel()
    status = await _submitter(storage).status(batch.id)
    assert status.counts[ItemState.QUEUED] == 2


async def test_leaving_the_async_with_block_stops_the_worker(storage: MemoryStorage) -> None:
    batch = await _submitter(storage).submit([f"i{n}" for n in range(20)])
    async with Worker(storage, _noop, concurrency=2, poll_interval=0.05) as worker:

        async def done() -> bool:
            return (await storage.get_batch(batch.id)).finished_at is not None

        await wait_until(done)
    assert worker.stopping
    assert worker.stats.succeeded == 20


async def test_a_stopped_worker_can_run_again(storage: MemoryStorage) -> None:
    worker = Worker(storage, _noop, exit_when_idle=True)
    await _submitter(storage).submit(["a"])
    assert (await worker.run()).succeeded == 1
    await _submitter(storage).submit(["b", "c"])
    assert (await worker.run()).succeeded == 2  # counted afresh


async def test_a_worker_runs_once_at_a_time(storage: MemoryStorage) -> None:
    worker = Worker(storage, _noop, poll_interval=0.05)
    async with worker:
        with pytest.raises(RuntimeError, match="already running"):
            await worker.run()


# -- recovery ------------------------------------------------------------------------------


async def test_an_item_of_a_dead_worker_runs_again_with_its_attempt_grown(
    storage: MemoryStorage,
) -> None:
    batch = await _submitter(storage).submit(["x"])
    # A worker claimed the item, then died: its lease lapses.
    await storage.claim(ClaimRequest(lease_seconds=0.1, batch_ids=(batch.id,)))
    seen: list[int] = []

    async def gen(ctx: ItemContext) -> None:
        seen.append(ctx.attempt)

    worker = Worker(storage, gen, batch_ids=[batch.id], poll_interval=0.05, exit_when_idle=True)
    with anyio.fail_after(5):
        await worker.run()
    assert seen == [2]
    item = item_from_record(await storage.get_item(batch.id, "x"))
    assert (item.state, item.attempt) == (ItemState.SUCCEEDED, 2)
    assert [e.type for e in item.errors] == ["WorkerLost"]


async def test_a_hook_whose_runner_died_is_fired_by_a_worker(storage: MemoryStorage) -> None:
    # Finished by a runner without a hook, and by one that claimed the hook and died.
    plain = _submitter(storage)
    first = await plain.submit(["a"])
    await plain.run(first.id)
    second = await plain.submit(["b"])
    await plain.run(second.id)
    orphan = await storage.claim_finished_batch(lease_seconds=0.2, batch_id=second.id)
    assert orphan is not None
    fired: list[str] = []

    async def hook(status: BatchStatus) -> None:
        fired.append(status.batch_id)

    async with Worker(storage, _noop, on_batch_finished=hook, hook_interval=0.05):
        await wait_until(lambda: _true_when(len(fired) == 2), timeout=5)
        await anyio.sleep(0.3)  # and not again
    assert sorted(fired) == sorted([first.id, second.id])


async def _true_when(value: bool) -> bool:
    return value


async def test_a_worker_outlives_a_storage_that_fails_for_a_while(
    caplog: pytest.LogCaptureFixture,
) -> None:
    storage = CountingStorage()
    failures = 3

    async def flaky_claim(*args: Any, **kwargs: Any) -> None:
        nonlocal failures
        if failures:
            failures -= 1
            raise StorageError("the database is restarting")

    batch = await _submitter(storage).submit(["a", "b"])
    storage.before["claim"] = flaky_claim
    worker = Worker(
        storage,  # type: ignore[arg-type]
        _noop,
        batch_ids=[batch.id],
        poll_interval=0.02,
        exit_when_idle=True,
    )
    with anyio.fail_after(5):
        stats = await worker.run()
    assert stats.storage_errors == 3
    assert stats.succeeded == 2
    assert any("the database is restarting" in r.getMessage() for r in caplog.records)


async def test_a_heartbeat_that_fails_for_a_while_does_not_stop_the_item(
    caplog: pytest.LogCaptureFixture,
) -> None:
    storage = CountingStorage()
    failures = 4

    async def flaky(*args: Any, **kwargs: Any) -> None:
        nonlocal failures
        if failures:
            failures -= 1
            raise StorageError("the connection was closed by the server")

    storage.before["heartbeat"] = flaky
    storage.before["record_progress"] = flaky

    async def slow(ctx: ItemContext) -> str:
        for step in range(10):
            await ctx.progress(step / 10, f"step {step}")
            await anyio.sleep(0.05)
        return "done"

    batch = await _submitter(storage).submit(["a", "b"])
    worker = Worker(
        storage,  # type: ignore[arg-type]
        slow,
        lease_seconds=0.3,  # a heartbeat every 0.1 s
        progress_interval=0.05,
        batch_ids=[batch.id],
        exit_when_idle=True,
    )
    with anyio.fail_after(10):
        stats = await worker.run()
    assert failures == 0, "the storage never failed: the test proved nothing"
    assert (stats.succeeded, stats.storage_errors) == (2, 0)
    assert any("could not renew a lease" in r.getMessage() for r in caplog.records)


async def _none() -> None:
    return None


@pytest.mark.parametrize("grouped", [False, True], ids=["alone", "grouped"])
@pytest.mark.parametrize("lands", [False, True], ids=["write-failed", "reply-lost"])
async def test_an_outcome_the_store_cannot_take_for_a_while_is_kept_and_written(
    caplog: pytest.LogCaptureFixture, lands: bool, grouped: bool
) -> None:
    """The store is down past its own retries as items end: the worker keeps each outcome
    and writes it once the store answers, instead of dropping the work and running the
    item again after its lease lapses. A try whose write landed but whose reply was lost
    counts as written. Grouped: the group's write fails first, then each outcome's."""
    storage = CountingStorage()
    failures = 6
    runs: Counter[str] = Counter()

    async def down(lease: Lease, outcome: Outcome, **kwargs: Any) -> None:
        nonlocal failures
        if failures:
            failures -= 1
            if lands and failures == 5:
                await storage.inner.finish(lease, outcome)  # written; the answer is lost
            raise StorageError("Error 111 connecting to 127.0.0.1:6379")

    async def group_down(batch_id: str, succeeded: Any, **kwargs: Any) -> None:
        nonlocal failures
        if failures:
            failures -= 1
            if lands:
                await storage.inner.finish_group(batch_id, succeeded, **kwargs)
            raise StorageError("Error 111 connecting to 127.0.0.1:6379")

    async def count(ctx: ItemContext) -> str:
        runs[ctx.key] += 1
        return ctx.key

    keys = ["a", "b", "c"] if grouped else ["a", "b"]
    batch = await _submitter(storage).submit(keys)
    if grouped:
        storage.before["finish_group"] = group_down
        storage.before["finish"] = lambda *a, **k: down(*a, **k) if failures < 6 else _none()
    else:
        storage.before["finish"] = down
    worker = Worker(
        storage,  # type: ignore[arg-type]
        count,
        lease_seconds=0.3,  # tries again every 0.033 s
        batch_ids=[batch.id],
        exit_when_idle=True,
        group_commit=0.005 if grouped else 0,
    )
    with anyio.fail_after(10):
        stats = await worker.run()
    assert failures == 0, "the storage never failed: the test proved nothing"
    assert runs == dict.fromkeys(keys, 1), "an item ran again"
    assert (stats.succeeded, stats.storage_errors) == (len(keys), 0)
    items = await all_items(_submitter(storage.inner), batch.id)
    assert [(i.state, i.result) for i in items] == [(ItemState.SUCCEEDED, key) for key in keys]
    if not (grouped and lands):
        assert all(i.attempt == 1 for i in items)
    # (A group whose reply was lost had claimed the next items: they waited for their
    # leases to lapse, and ran once, in their second attempt.)
    assert any("could not write its outcome" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("lands", [False, True], ids=["write-failed", "reply-lost"])
async def test_successes_sharing_a_write_outlive_an_outage(
    caplog: pytest.LogCaptureFixture, lands: bool
) -> None:
    """Slots whose items end while a write is in flight share the next one; the store is
    down for that shared write and for the writes after it, past its own retries. Each
    success is written alone once the store answers; a shared write that landed though
    its reply was lost counts as written; no item runs again."""
    storage = CountingStorage()
    first = True
    outage = 4
    shared: list[int] = []
    runs: Counter[str] = Counter()

    async def finish(lease: Lease, outcome: Outcome, **kwargs: Any) -> None:
        nonlocal first, outage
        if first:  # the first write is slow: the other slots' successes wait for it
            first = False
            await anyio.sleep(0.1)
        elif shared and outage:
            outage -= 1
            raise StorageError("Error 111 connecting to 127.0.0.1:6379")

    async def finish_group(batch_id: str, succeeded: Any, **kwargs: Any) -> None:
        shared.append(len(succeeded))
        if len(shared) == 1:
            if lands:
                await storage.inner.finish_group(batch_id, succeeded, **kwargs)
            raise StorageError("Error 111 connecting to 127.0.0.1:6379")

    async def generate(ctx: ItemContext) -> str:
        runs[ctx.key] += 1
        await anyio.sleep(0.01)
        return ctx.key

    keys = [f"k{n}" for n in range(12)]
    batch = await _submitter(storage).submit(keys)
    storage.before["finish"] = finish
    storage.before["finish_group"] = finish_group
    worker = Worker(
        storage,  # type: ignore[arg-type]
        generate,
        concurrency=4,
        lease_seconds=0.6 if lands else 30,  # a lost reply's claims wait out their leases
        batch_ids=[batch.id],
        exit_when_idle=True,
        group_commit=0.002,
    )
    with anyio.fail_after(10):
        stats = await worker.run()
    assert shared, "no write was shared"
    assert shared[0] >= 2, shared
    assert outage == 0, "the store never went down: the test proved nothing"
    assert runs == dict.fromkeys(keys, 1), "an item ran again"
    assert (stats.succeeded, stats.storage_errors) == (len(keys), 0)
    items = await all_items(_submitter(storage.inner), batch.id)
    assert [(i.state, i.result) for i in items] == [(ItemState.SUCCEEDED, key) for key in keys]
    messages = [r.getMessage() for r in caplog.records]
    assert any("could not write" in m and "together" in m for m in messages)
    assert any("could not write its outcome" in m for m in messages)


async def test_retries_happen_on_a_worker_too(storage: MemoryStorage) -> None:
    async def flaky(ctx: ItemContext) -> int:
        if ctx.attempt < 2:
            raise ConnectionError("try again")
        return ctx.attempt

    batch = await _submitter(storage).submit(["a", "b"])
    policy = RetryPolicy(max_attempts=2, backoff=0.01, jitter=0)
    worker = Worker(storage, flaky, retry=policy, batch_ids=[batch.id], exit_when_idle=True)
    with anyio.fail_after(5):
        stats = await worker.run()
    assert (stats.succeeded, stats.retrying) == (2, 2)
    assert [i.result for i in await all_items(_submitter(storage), batch.id)] == [2, 2]


async def test_each_transition_is_logged_with_the_worker_name(
    storage: MemoryStorage, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="batchkit")
    batch = await _submitter(storage).submit(["a"])
    await Worker(storage, _noop, name="w-1", exit_when_idle=True).run()
    lines = [r for r in caplog.records if r.name == "batchkit.items"]
    assert [(r.event, r.worker, r.batch_id) for r in lines] == [  # type: ignore[attr-defined]
        ("started", "w-1", batch.id),
        ("succeeded", "w-1", batch.id),
    ]
    events = [getattr(r, "event", None) for r in caplog.records if r.name == "batchkit.worker"]
    assert events[0] == "worker_started"
    assert "batch_finished" in events
    assert events[-1] == "worker_stopped"


# -- bad arguments -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "error", "message"),
    [
        ({"concurrency": 0}, ValueError, "concurrency"),
        ({"lease_seconds": 0}, ValueError, "lease_seconds"),
        ({"lease_seconds": float("inf")}, ValueError, "lease_seconds"),
        ({"grace_period": -1}, ValueError, "grace_period"),
        ({"poll_interval": 0}, ValueError, "poll_interval"),
        ({"batch_ids": "0190-abc"}, TypeError, "batch_ids"),
        ({"batch_ids": ["not-an-id"]}, ValueError, "not a batch id"),
        ({"batch_ids": []}, ValueError, "empty"),
        ({"metadata": {"owner": ["a"]}}, ValueError, "metadata"),
        ({"retry": 3}, TypeError, "RetryPolicy"),
        ({"on_batch_finished": "hook"}, TypeError, "on_batch_finished"),
    ],
)
def test_bad_worker_options_are_refused(
    options: dict[str, Any], error: type[Exception], message: str
) -> None:
    with pytest.raises(error, match=message):
        Worker(MemoryStorage(), _noop, **options)
