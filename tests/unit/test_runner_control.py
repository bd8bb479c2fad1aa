"""BatchRunner: cancelling, watching, retrying failed items and completion hooks."""

from __future__ import annotations

import itertools
import logging
import threading
import time
from typing import TYPE_CHECKING, Any, TypeVar

import anyio
import anyio.lowlevel
import pytest

from batchkit import (
    BatchRunner,
    BatchState,
    BatchStatus,
    InvalidBatch,
    ItemContext,
    ItemSpec,
    ItemState,
    MemoryStorage,
    Worker,
)

from .helpers import all_items

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

T = TypeVar("T")

pytestmark = pytest.mark.anyio


@pytest.fixture
def storage() -> MemoryStorage:
    return MemoryStorage()


async def echo(ctx: ItemContext) -> Any:
    return ctx.key


# -- retry_failed ----------------------------------------------------------------------


async def test_retry_failed_resubmits_exactly_the_failed_items(storage: MemoryStorage) -> None:
    # Items fail by 0-based position: 3, 7 and 11.
    failing = True

    async def gen(ctx: ItemContext) -> Any:
        if failing and ctx.position in (3, 7, 11):
            raise RuntimeError(f"flaky {ctx.key}")
        return ctx.payload

    runner = BatchRunner(storage, gen)
    specs = [ItemSpec(key=f"p{i}", payload={"n": i}) for i in range(20)]
    batch = await runner.submit(specs, metadata={"owner": "ada"})
    first = await runner.run(batch.id)
    assert first.state is BatchState.COMPLETED_WITH_ERRORS

    retry = await runner.retry_failed(batch.id)

    assert retry.id != batch.id
    assert retry.parent_id == batch.id
    assert retry.total == 3
    assert retry.metadata == {"owner": "ada"}
    items = await all_items(runner, retry.id)
    assert [(i.key, i.payload, i.position) for i in items] == [
        ("p3", {"n": 3}, 0),
        ("p7", {"n": 7}, 1),
        ("p11", {"n": 11}, 2),
    ]
    assert all(i.state is ItemState.QUEUED and i.attempt == 0 for i in items)
    assert (await runner.retry_failed(batch.id)).id == retry.id  # a double click
    assert len(await storage.list_batches()) == 2
    assert (await runner.status(batch.id)) == first  # the old batch is untouched

    failing = False
    final = await runner.run(retry.id)

    assert final.state is BatchState.COMPLETED
    assert final.parent_id == batch.id
    assert [i.result for i in await all_items(runner, retry.id)] == [{"n": 3}, {"n": 7}, {"n": 11}]
    children = await storage.list_batches(parent_id=batch.id)
    assert [c.id for c in children] == [retry.id]


async def test_retry_failed_with_an_explicit_idempotency_key(storage: MemoryStorage) -> None:
    async def gen(ctx: ItemContext) -> None:
        raise ValueError("no")

    runner = BatchRunner(storage, gen)
    batch = await runner.submit(["a"])
    await runner.run(batch.id)

    one = await runner.retry_failed(batch.id, idempotency_key="retry-1")
    two = await runner.retry_failed(batch.id, idempotency_key="retry-2")
    again = await runner.retry_failed(batch.id, idempotency_key="retry-1")

    assert one.id != two.id
    assert again.id == one.id
    assert one.parent_id == two.parent_id == batch.id


async def test_retry_failed_refuses_a_batch_without_failures(storage: MemoryStorage) -> None:
    runner = BatchRunner(storage, echo)
    batch = await runner.submit(["a", "b"])
    await runner.run(batch.id)

    with pytest.raises(InvalidBatch, match=f"batch {batch.id} has no failed items to retry"):
        await runner.retry_failed(batch.id)

    assert len(await storage.list_batches()) == 1


async def test_retry_failed_refuses_a_batch_still_queued_or_running(
    storage: MemoryStorage,
) -> None:
    errors: list[InvalidBatch] = []

    async def gen(ctx: ItemContext) -> None:
        if ctx.key == "b":
            try:
                await runner.retry_failed(ctx.batch_id)
            except InvalidBatch as exc:
                errors.append(exc)
        raise RuntimeError("fails, so only the state stands in the way")

    runner = BatchRunner(storage, gen)
    batch = await runner.submit(["a", "b", "c"])

    with pytest.raises(InvalidBatch, match="is still queued"):
        await runner.retry_failed(batch.id)
    await runner.run(batch.id)

    assert [str(e) for e in errors] == [
        f"batch {batch.id} is still running; retry its failed items once it has finished"
    ]
    assert len(await storage.list_batches()) == 1
    assert (await runner.retry_failed(batch.id)).total == 3


async def test_retry_failed_cannot_be_hijacked_by_a_predictable_key(
    storage: MemoryStorage,
) -> None:
    # Anyone who may submit could take the key retry_failed uses by default before the
    # batch's owner retries it: submit refuses batchkit's namespace.
    async def gen(ctx: ItemContext) -> None:
        if ctx.key != "evil":
            raise ValueError("no")

    runner = BatchRunner(storage, gen)
    victim = await runner.submit(["a", "b"])
    await runner.run(victim.id)

    for key in (f"batchkit:retry-failed:{victim.id}", "batchkit:anything"):
        with pytest.raises(InvalidBatch, match="reserved for batchkit's own use"):
            await runner.submit(["evil"], idempotency_key=key)
        with pytest.raises(InvalidBatch, match="reserved for batchkit's own use"):
            await runner.retry_failed(victim.id, idempotency_key=key)
    assert len(await storage.list_batches()) == 1

    again = await runner.retry_failed(victim.id)
    assert again.parent_id == victim.id
    assert {item.key for item in await all_items(runner, again.id)} == {"a", "b"}


async def test_retry_failed_never_returns_a_batch_that_is_not_its_retry(
    storage: MemoryStorage,
) -> None:
    # A key taken by another batch (one the caller chose, or written before the
    # namespace was reserved) is a clear error, not the other batch.
    async def gen(ctx: ItemContext) -> None:
        raise ValueError("no")

    runner = BatchRunner(storage, gen)
    victim = await runner.submit(["a"])
    await runner.run(victim.id)
    stranger = await runner.submit(["evil"], idempotency_key="shared-key")
    planted = runner._validate(  # as an older version would have written it
        ["evil"], {}, f"batchkit:retry-failed:{victim.id}"
    )
    await storage.create_batch(planted)
    before = await storage.list_batches()

    with pytest.raises(InvalidBatch, match="not a retry of") as info:
        await runner.retry_failed(victim.id, idempotency_key="shared-key")
    assert stranger.id not in str(info.value)
    with pytest.raises(InvalidBatch, match="pass an idempotency_key of your own"):
        await runner.retry_failed(victim.id)
    assert await storage.list_batches() == before

    mine = await runner.retry_failed(victim.id, idempotency_key="victim-retry")
    assert mine.parent_id == victim.id


# -- cancel ----------------------------------------------------------------------------


async def test_cancel_from_inside_a_generator_midway(storage: MemoryStorage) -> None:
    calls: list[str] = []
    interrupted: list[str] = []

    async def gen(ctx: ItemContext) -> str:
        calls.append(ctx.key)
        if ctx.position == 2:
            status = await runner.cancel(ctx.batch_id)
            assert status.cancel_requested
            assert status.state is BatchState.RUNNING  # this item still runs
            try:
                await ctx.progress(0.5, "still going")
                await anyio.sleep_forever()
            finally:
                interrupted.append(ctx.key)
        return ctx.key

    runner = BatchRunner(storage, gen)
    batch = await runner.submit([f"k{i}" for i in range(6)])

    with anyio.fail_after(2):
        final = await runner.run(batch.id)

    assert final.state is BatchState.CANCELLED
    assert final.cancel_requested
    assert final.counts[ItemState.SUCCEEDED] == 2
    assert final.counts[ItemState.CANCELLED] == 4
    assert final.counts[ItemState.RUNNING] == final.counts[ItemState.QUEUED] == 0
    assert calls == ["k0", "k1", "k2"]
    assert interrupted == ["k2"]
    states = [i.state for i in await all_items(runner, batch.id)]
    assert states == [ItemState.SUCCEEDED] * 2 + [ItemState.CANCELLED] * 4


async def _run_and_cancel(
    runner: BatchRunner,
    batch_id: str,
    started: anyio.Event,
    cancel: Callable[[], Awaitable[T]],
) -> tuple[BatchStatus, T]:
    """Run the batch and, once ``started`` is set, ``cancel()``, all within 2 s: the run's
    final status, and what ``cancel`` returned."""
    finals: list[BatchStatus] = []

    async def run() -> None:
        finals.append(await runner.run(batch_id))

    with anyio.fail_after(2):
        async with anyio.create_task_group() as tg:
            tg.start_soon(run)
            await started.wait()
            said = await cancel()
    (final,) = finals
    return final, said


async def test_cancel_reaches_a_running_item_at_its_next_heartbeat(
    storage: MemoryStorage,
) -> None:
    started = anyio.Event()

    async def gen(ctx: ItemContext) -> str:
        if ctx.key == "slow":
            started.set()
            await anyio.sleep_forever()  # no progress calls: only a heartbeat can tell it
        return ctx.key

    # Each outcome alone: "never" is not claimed ahead (see test_grouped_runs for that).
    runner = BatchRunner(storage, gen, lease_seconds=0.3, group_commit=0)
    batch = await runner.submit(["fast", "slow", "never"])
    # Cancelled by another runner (a web request's, another process's): the running one
    # hears of it from the store.
    final, requested = await _run_and_cancel(
        runner, batch.id, started, lambda: BatchRunner(storage, gen).cancel(batch.id)
    )

    assert requested.state is BatchState.RUNNING
    assert requested.counts[ItemState.RUNNING] == 1
    assert final.state is BatchState.CANCELLED
    fast, slow, never = await all_items(runner, batch.id)
    assert fast.state is ItemState.SUCCEEDED
    assert slow.state is ItemState.CANCELLED
    assert never.state is ItemState.CANCELLED
    assert never.attempt == 0


async def test_cancel_stops_the_items_the_same_runner_is_running_at_once(
    storage: MemoryStorage,
) -> None:
    """A runner whose `run` is under way stops its own running items when it cancels
    their batch, without waiting for a heartbeat (10 s at the default lease)."""
    started = anyio.Event()

    async def gen(ctx: ItemContext) -> str:
        if ctx.key == "other":
            return ctx.key
        started.set()
        await anyio.sleep_forever()  # no progress calls
        raise AssertionError("not reached")

    runner = BatchRunner(storage, gen, concurrency=2)
    batch = await runner.submit(["a", "b"])
    other = await runner.submit(["other"])

    async def cancel() -> None:
        await anyio.wait_all_tasks_blocked()
        await runner.cancel(batch.id)
        await runner.cancel(other.id)  # none of its items run here: nothing to stop

    final, _ = await _run_and_cancel(runner, batch.id, started, cancel)
    assert final.state is BatchState.CANCELLED
    assert [i.state for i in await all_items(runner, batch.id)] == [ItemState.CANCELLED] * 2


async def test_cancel_tells_a_sync_generator_to_stop(storage: MemoryStorage) -> None:
    started = anyio.Event()
    stopped = threading.Event()

    def gen(ctx: ItemContext) -> str:
        anyio.from_thread.run_sync(started.set)
        deadline = time.monotonic() + 5
        while not ctx.cancel_requested and time.monotonic() < deadline:
            time.sleep(0.01)
        stopped.set()
        return "stopped"

    runner = BatchRunner(storage, gen, lease_seconds=0.3, progress_interval=0.02)
    batch = await runner.submit(["k"])

    with anyio.fail_after(3):
        async with anyio.create_task_group() as tg:
            tg.start_soon(runner.run, batch.id)
            await started.wait()
            await runner.cancel(batch.id)
        await anyio.to_thread.run_sync(stopped.wait, 3)

    assert stopped.is_set()
    item = await runner.item(batch.id, "k")
    assert item.state is ItemState.CANCELLED
    assert item.result is None


async def test_cancel_a_queued_batch_and_a_finished_one(storage: MemoryStorage) -> None:
    calls: list[str] = []

    async def gen(ctx: ItemContext) -> None:
        calls.append(ctx.key)

    runner = BatchRunner(storage, gen)
    queued = await runner.submit(["a", "b"])
    done = await runner.submit(["c"])
    completed = await runner.run(done.id)

    cancelled = await runner.cancel(queued.id)
    unchanged = await runner.cancel(done.id)

    assert cancelled.state is BatchState.CANCELLED
    assert cancelled.counts[ItemState.CANCELLED] == 2
    assert (await runner.run(queued.id)).state is BatchState.CANCELLED
    assert unchanged == completed
    assert calls == ["c"]


# -- watch -----------------------------------------------------------------------------


async def test_watch_yields_every_state_change_and_ends_at_the_terminal_state(
    storage: MemoryStorage,
) -> None:
    go = anyio.Event()

    async def gen(ctx: ItemContext) -> str:
        await ctx.progress(0.5, "waiting")
        await go.wait()  # hold the batch running until the watcher has seen it
        return ctx.key

    runner = BatchRunner(storage, gen, progress_interval=0.01)
    batch = await runner.submit(["a", "b", "c"])
    seen: list[BatchStatus] = []
    first = anyio.Event()

    async def watcher() -> None:
        async for status in runner.watch(batch.id):
            seen.append(status)
            first.set()
            if status.state is BatchState.RUNNING:
                go.set()

    with anyio.fail_after(3):
        async with anyio.create_task_group() as tg:
            tg.start_soon(watcher)
            await first.wait()
            tg.start_soon(runner.run, batch.id)

    states = [s.state for s in seen]
    assert states[0] is BatchState.QUEUED
    assert states[-1] is BatchState.COMPLETED
    assert [s for i, s in enumerate(states) if i == 0 or states[i - 1] is not s] == [
        BatchState.QUEUED,
        BatchState.RUNNING,
        BatchState.COMPLETED,
    ]
    assert all(a != b for a, b in itertools.pairwise(seen))
    assert seen[-1].is_terminal
    assert seen[-1].counts[ItemState.SUCCEEDED] == 3


async def test_watch_a_finished_batch_yields_once(storage: MemoryStorage) -> None:
    runner = BatchRunner(storage, echo)
    batch = await runner.submit(["a"])
    final = await runner.run(batch.id)

    with anyio.fail_after(1):
        seen = [s async for s in runner.watch(batch.id)]

    assert seen == [final]


async def test_watch_rejects_a_bad_poll_interval(storage: MemoryStorage) -> None:
    runner = BatchRunner(storage, echo)
    batch = await runner.submit(["a"])

    with pytest.raises(ValueError, match="poll_interval"):
        async for _ in runner.watch(batch.id, poll_interval=0):
            pass


# -- completion hooks ------------------------------------------------------------------


async def test_sync_and_async_hooks_fire_once_with_the_final_status(
    storage: MemoryStorage,
) -> None:
    fired: list[tuple[str, BatchStatus]] = []

    def sync_hook(status: BatchStatus) -> None:
        fired.append(("sync", status))

    async def async_hook(status: BatchStatus) -> None:
        await anyio.lowlevel.checkpoint()
        fired.append(("async", status))

    for kind, hook in (("sync", sync_hook), ("async", async_hook)):
        runner = BatchRunner(storage, echo, on_batch_finished=hook)
        batch = await runner.submit(["a", "b"])

        final = await runner.run(batch.id)
        await runner.run(batch.id)
        await runner.cancel(batch.id)

        assert fired[-1] == (kind, final)
        assert final.state is BatchState.COMPLETED
    assert [k for k, _ in fired] == ["sync", "async"]


async def test_a_hook_that_could_not_be_acknowledged_is_logged_and_a_quick_one_is_not(
    storage: MemoryStorage, caplog: pytest.LogCaptureFixture
) -> None:
    """A quick hook, acknowledged, logs no warning; one whose acknowledgement is refused
    (here its batch was deleted while it ran) says that, not that it ran long."""

    async def delete_it(status: BatchStatus) -> None:
        await runner.delete(status.batch_id)

    quick = BatchRunner(storage, echo, on_batch_finished=lambda status: None)
    runner = BatchRunner(storage, echo, on_batch_finished=delete_it)
    with caplog.at_level(logging.WARNING, "batchkit.runner"):
        await quick.run((await quick.submit(["a"])).id)
        assert caplog.records == []
        batch = await runner.submit(["a"])
        await runner.run(batch.id)
    (said,) = caplog.records
    assert said.getMessage().startswith(
        f"the on_batch_finished hook of batch {batch.id} could not be acknowledged"
    )
    assert "deleted" in said.getMessage()


async def test_hook_fires_when_cancel_finishes_the_batch(storage: MemoryStorage) -> None:
    fired: list[BatchStatus] = []
    runner = BatchRunner(storage, echo, on_batch_finished=fired.append)
    batch = await runner.submit(["a", "b"])

    status = await runner.cancel(batch.id)
    await runner.cancel(batch.id)
    await runner.run(batch.id)

    assert fired == [status]
    assert status.state is BatchState.CANCELLED


async def test_hook_fires_once_when_a_running_item_ends_the_cancel(storage: MemoryStorage) -> None:
    fired: list[BatchStatus] = []

    async def gen(ctx: ItemContext) -> None:
        await runner.cancel(ctx.batch_id)  # not finished yet: this item still runs
        await ctx.progress(0.1)
        await anyio.sleep_forever()

    runner = BatchRunner(storage, gen, on_batch_finished=fired.append)
    batch = await runner.submit(["a", "b"])

    with anyio.fail_after(2):
        final = await runner.run(batch.id)
    await runner.cancel(batch.id)

    assert fired == [final]
    assert final.state is BatchState.CANCELLED


async def test_a_hook_that_raises_is_logged_and_run_still_returns(
    storage: MemoryStorage, caplog: pytest.LogCaptureFixture
) -> None:
    calls: list[str] = []

    def hook(status: BatchStatus) -> None:
        calls.append(status.batch_id)
        raise RuntimeError("mail server down")

    runner = BatchRunner(storage, echo, on_batch_finished=hook)
    batch = await runner.submit(["a"])

    with caplog.at_level(logging.ERROR, logger="batchkit"):
        final = await runner.run(batch.id)
        await runner.run(batch.id)

    assert final.state is BatchState.COMPLETED
    assert calls == [batch.id]
    records = [r for r in caplog.records if "on_batch_finished" in r.getMessage()]
    assert len(records) == 1
    assert records[0].levelno == logging.ERROR
    assert records[0].exc_info is not None
    assert "mail server down" in str(records[0].exc_info[1])


class HookPoison(BaseException):
    pass


@pytest.mark.parametrize("raised", [HookPoison("no"), SystemExit(2), GeneratorExit()])
async def test_a_hook_that_raises_a_base_exception_counts_as_fired(
    storage: MemoryStorage, raised: BaseException
) -> None:
    # Raised out of the runner, the hook would stay unacknowledged and stop the next
    # runner that fires it, and the next.
    calls: list[str] = []

    async def hook(status: BatchStatus) -> None:
        calls.append(status.batch_id)
        raise raised

    runner = BatchRunner(storage, echo, on_batch_finished=hook)
    batch = await runner.submit(["a"])
    final = await runner.run(batch.id)
    await runner.run(batch.id)
    stats = await Worker(storage, echo, on_batch_finished=hook, exit_when_idle=True).run()

    assert final.state is BatchState.COMPLETED
    assert calls == [batch.id]
    assert stats.failed == 0


async def test_two_runners_on_one_batch_fire_the_hook_once(storage: MemoryStorage) -> None:
    calls: list[str] = []
    fired: list[tuple[str, BatchStatus]] = []

    async def gen(ctx: ItemContext) -> str:
        calls.append(ctx.key)
        for _ in range(3):
            await anyio.lowlevel.checkpoint()
        return ctx.key

    def hook_of(name: str) -> Any:
        async def hook(status: BatchStatus) -> None:
            await anyio.lowlevel.checkpoint()
            fired.append((name, status))

        return hook

    one = BatchRunner(storage, gen, on_batch_finished=hook_of("one"), poll_interval=0.05)
    two = BatchRunner(storage, gen, on_batch_finished=hook_of("two"), poll_interval=0.05)
    batch = await one.submit([f"k{i}" for i in range(8)])
    finals: list[BatchStatus] = []

    async def run(runner: BatchRunner) -> None:
        finals.append(await runner.run(batch.id))

    with anyio.fail_after(3):
        async with anyio.create_task_group() as tg:
            tg.start_soon(run, one)
            tg.start_soon(run, two)

    assert sorted(calls) == sorted(f"k{i}" for i in range(8))  # each item ran once
    assert [f.state for f in finals] == [BatchState.COMPLETED] * 2
    assert len(fired) == 1
    assert fired[0][1].state is BatchState.COMPLETED
    await one.run(batch.id)
    await two.run(batch.id)
    assert len(fired) == 1
