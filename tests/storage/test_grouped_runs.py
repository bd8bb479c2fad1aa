"""Group commit and claim-ahead as a runner uses them, on every adapter: quick items are
written several at a time, nothing waits past the window, and a stop or a cancellation
leaves no outcome unwritten and no item held."""

from __future__ import annotations

from collections import Counter
from typing import TYPE_CHECKING, Any

import anyio
import pytest

from batchkit import BatchRunner, ItemSpec, ItemState, Worker
from batchkit.exceptions import StorageError
from batchkit.protocols import GroupCommitter
from batchkit.status import recount

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable

    from batchkit import ItemContext
    from batchkit.protocols import Storage

pytestmark = pytest.mark.anyio


@pytest.fixture
async def storage(storage_factory: Callable[[], Storage]) -> AsyncIterator[Storage]:
    async with storage_factory() as store:
        yield store


def _count_groups(storage: Storage) -> Counter[str]:
    """Count the storage's group writes, and the outcomes and claims in them."""
    assert isinstance(storage, GroupCommitter)
    seen: Counter[str] = Counter()
    real = storage.finish_group

    async def counted(batch_id: str, succeeded: Any, **kw: Any) -> Any:
        seen["calls"] += 1
        seen["outcomes"] += len(succeeded)
        done = await real(batch_id, succeeded, **kw)
        seen["claims"] += len(done.claims)
        return done

    storage.finish_group = counted  # type: ignore[method-assign]
    return seen


async def _states(runner: BatchRunner, batch_id: str) -> Counter[ItemState]:
    return Counter(item.state for item in await runner.items(batch_id, limit=1000))


async def _wait_for(check: Callable[[], Any], timeout: float = 10.0) -> None:
    with anyio.fail_after(timeout):
        while not await check():  # noqa: ASYNC110 - the store's state has no event
            await anyio.sleep(0.01)


@pytest.mark.parametrize("concurrency", [1, 4])
async def test_quick_items_are_written_in_groups_and_every_one_lands(
    storage: Storage, concurrency: int
) -> None:
    seen = _count_groups(storage)

    async def double(ctx: ItemContext) -> int:
        return int(ctx.payload) * 2

    runner = BatchRunner(storage, double, concurrency=concurrency)
    batch = await runner.submit([ItemSpec(key=f"k{n}", payload=n) for n in range(400)])
    await runner.run(batch.id)
    status = await runner.status(batch.id)
    assert status.counts[ItemState.SUCCEEDED] == 400
    items = await runner.items(batch.id, limit=1000)
    assert [item.result for item in items] == [n * 2 for n in range(400)]
    assert all(item.attempt == 1 for item in items)
    # Most outcomes went in groups: far fewer writes than items.
    assert seen["outcomes"] >= 300, seen
    assert seen["calls"] <= 400 // 3, seen


async def test_group_commit_0_writes_each_outcome_alone(storage: Storage) -> None:
    seen = _count_groups(storage)

    async def quick(ctx: ItemContext) -> str:
        return ctx.key

    runner = BatchRunner(storage, quick, group_commit=0)
    batch = await runner.submit([ItemSpec(key=f"k{n}") for n in range(50)])
    await runner.run(batch.id)
    assert (await runner.status(batch.id)).counts[ItemState.SUCCEEDED] == 50
    assert seen["calls"] == 0


async def test_a_success_is_written_while_a_long_item_runs(storage: Storage) -> None:
    """The window bounds how late a reader sees a success, and how long an item claimed
    ahead shows running without running: a long item after quick ones lets neither wait."""
    go_on = anyio.Event()

    async def generate(ctx: ItemContext) -> str:
        if ctx.key == "k40":
            await go_on.wait()
        return ctx.key

    runner = BatchRunner(storage, generate, group_commit=0.01)
    batch = await runner.submit([ItemSpec(key=f"k{n}") for n in range(60)])

    async def settled() -> bool:
        states = await _states(runner, batch.id)
        return states[ItemState.SUCCEEDED] == 40 and states[ItemState.RUNNING] == 1

    async with anyio.create_task_group() as tg:
        tg.start_soon(runner.run, batch.id)
        await _wait_for(settled)
        running = [i.key for i in await runner.items(batch.id, limit=100, state="running")]
        assert running == ["k40"]
        go_on.set()
    items = await runner.items(batch.id, limit=100)
    assert all(item.state is ItemState.SUCCEEDED for item in items)
    # An item handed back unrun is claimed again: its attempt says so, nothing else.
    assert all(item.result == item.key for item in items)


async def test_a_cancelled_run_leaves_no_outcome_unwritten_and_no_item_held(
    storage: Storage,
) -> None:
    returned: list[str] = []
    blocked = anyio.Event()

    async def generate(ctx: ItemContext) -> str:
        if ctx.key == "k30" and ctx.attempt == 1:
            blocked.set()
            await anyio.sleep_forever()
        returned.append(ctx.key)
        return ctx.key

    runner = BatchRunner(storage, generate, group_commit=1.0)  # nothing written by time
    batch = await runner.submit([ItemSpec(key=f"k{n}") for n in range(50)])
    async with anyio.create_task_group() as tg:
        tg.start_soon(runner.run, batch.id)
        await blocked.wait()
        tg.cancel_scope.cancel()
    items = await runner.items(batch.id, limit=100)
    succeeded = {i.key for i in items if i.state is ItemState.SUCCEEDED}
    assert succeeded == set(returned)
    assert len(succeeded) == 30
    assert {i.state for i in items if i.key not in succeeded} == {ItemState.QUEUED}
    # Run again: the rest lands, and no item whose outcome was written runs twice.
    await runner.run(batch.id)
    assert (await runner.status(batch.id)).counts[ItemState.SUCCEEDED] == 50
    assert sorted(returned) == sorted(f"k{n}" for n in range(50))


async def test_failures_among_groups_keep_every_count_exact(storage: Storage) -> None:
    async def generate(ctx: ItemContext) -> int:
        if int(ctx.payload) % 7 == 3:
            raise ValueError(f"{ctx.key} is broken")
        return int(ctx.payload)

    runner = BatchRunner(storage, generate, concurrency=2)
    batch = await runner.submit([ItemSpec(key=f"k{n}", payload=n) for n in range(200)])
    await runner.run(batch.id)
    status = await runner.status(batch.id)
    failed = sum(1 for n in range(200) if n % 7 == 3)
    assert status.counts[ItemState.FAILED] == failed
    assert status.counts[ItemState.SUCCEEDED] == 200 - failed
    assert await _states(runner, batch.id) == Counter(
        {ItemState.SUCCEEDED: 200 - failed, ItemState.FAILED: failed}
    )


async def test_a_stopped_worker_writes_what_it_owes_and_hands_back_the_rest(
    storage: Storage,
) -> None:
    returned: list[str] = []

    async def generate(ctx: ItemContext) -> str:
        returned.append(ctx.key)
        if len(returned) == 150:
            worker.stop(grace_period=5)
        return ctx.key

    worker = Worker(storage, generate, concurrency=2, group_commit=1.0, poll_interval=0.05)
    runner = BatchRunner(storage, generate)
    batch = await runner.submit([ItemSpec(key=f"k{n}") for n in range(400)])
    with anyio.fail_after(60):
        await worker.run()
    items = await runner.items(batch.id, limit=1000)
    states = Counter(item.state for item in items)
    assert states[ItemState.RUNNING] == 0, states
    assert {i.key for i in items if i.state is ItemState.SUCCEEDED} == set(returned)
    assert states[ItemState.SUCCEEDED] + states[ItemState.QUEUED] == 400


def _slowed(storage: Storage, seconds: float) -> None:
    """Make each write of one outcome take ``seconds`` more, as a busy store's do: slots
    whose items end while one is in flight then wait for it, and share the next."""
    real = storage.finish

    async def slow(lease: Any, outcome: Any, **kw: Any) -> Any:
        await anyio.sleep(seconds)
        return await real(lease, outcome, **kw)

    storage.finish = slow  # type: ignore[method-assign]


async def _check_complete(runner: BatchRunner, batch_id: str, size: int) -> None:
    status = await runner.status(batch_id)
    items = await runner.items(batch_id, limit=1000)
    assert status.counts == recount(item.state for item in items)
    assert status.counts[ItemState.SUCCEEDED] == size, status.counts
    assert [item.result for item in items] == [item.key for item in items]


async def test_slots_whose_items_end_together_share_their_writes(storage: Storage) -> None:
    """Items too slow to group within a slot (5 ms against a 2 ms window) still share
    commits: those that end while a write is in flight go together in the next one."""
    seen = _count_groups(storage)
    _slowed(storage, 0.01)
    started: Counter[str] = Counter()

    async def generate(ctx: ItemContext) -> str:
        started[ctx.key] += 1
        await anyio.sleep(0.005)
        return ctx.key

    runner = BatchRunner(storage, generate, concurrency=8, group_commit=0.002)
    batch = await runner.submit([ItemSpec(key=f"k{n:03}") for n in range(200)])
    await runner.run(batch.id)
    await _check_complete(runner, batch.id, 200)
    assert set(started.values()) == {1}
    assert all(item.attempt == 1 for item in await runner.items(batch.id, limit=1000))
    # Most successes went several to a write.
    assert seen["outcomes"] >= 100, seen
    assert seen["outcomes"] >= 2 * seen["calls"], seen


async def test_a_run_cancelled_while_successes_wait_together_loses_none(
    storage: Storage,
) -> None:
    """Cancelled with one shared write in flight and more successes waiting for the next:
    every success is written, every item claimed for a slot goes back, none runs twice."""
    assert isinstance(storage, GroupCommitter)
    returned: list[str] = []
    in_flight = anyio.Event()
    real_group = storage.finish_group

    async def slow_group(batch_id: str, succeeded: Any, **kw: Any) -> Any:
        in_flight.set()
        await anyio.sleep(0.05)
        return await real_group(batch_id, succeeded, **kw)

    storage.finish_group = slow_group  # type: ignore[method-assign]
    _slowed(storage, 0.02)

    async def generate(ctx: ItemContext) -> str:
        await anyio.sleep(0.002)
        returned.append(ctx.key)
        return ctx.key

    runner = BatchRunner(storage, generate, concurrency=8, group_commit=0.001)
    batch = await runner.submit([ItemSpec(key=f"k{n:03}") for n in range(100)])
    async with anyio.create_task_group() as tg:
        tg.start_soon(runner.run, batch.id)
        await in_flight.wait()
        await anyio.sleep(0.01)
        tg.cancel_scope.cancel()
    items = await runner.items(batch.id, limit=1000)
    assert {i.key for i in items if i.state is ItemState.SUCCEEDED} == set(returned)
    assert {i.state for i in items if i.key not in returned} == {ItemState.QUEUED}
    await runner.run(batch.id)
    await _check_complete(runner, batch.id, 100)
    assert sorted(returned) == [f"k{n:03}" for n in range(100)]  # each ran once


@pytest.mark.parametrize("lost_reply", [False, True], ids=["failed", "reply-lost"])
async def test_a_shared_write_that_fails_writes_each_success_alone(
    storage: Storage, lost_reply: bool
) -> None:
    """A shared write that fails (or whose reply is lost after it landed): each of its
    successes is written again alone; one it did write is recognised, not run again."""
    assert isinstance(storage, GroupCommitter)
    real_group = storage.finish_group
    failed = 0

    async def failing(batch_id: str, succeeded: Any, **kw: Any) -> Any:
        nonlocal failed
        if failed < 3:
            failed += 1
            if lost_reply:
                await real_group(batch_id, succeeded, **kw)
            raise StorageError("the store went away")
        return await real_group(batch_id, succeeded, **kw)

    storage.finish_group = failing  # type: ignore[method-assign]
    _slowed(storage, 0.01)
    started: Counter[str] = Counter()

    async def generate(ctx: ItemContext) -> str:
        started[ctx.key] += 1
        await anyio.sleep(0.005)
        return ctx.key

    # A lost reply's claims are nobody's: they run once their one-second leases lapse.
    runner = BatchRunner(storage, generate, concurrency=8, group_commit=0.002, lease_seconds=1)
    batch = await runner.submit([ItemSpec(key=f"k{n:03}") for n in range(100)])
    with anyio.fail_after(30):
        await runner.run(batch.id)
    assert failed == 3
    await _check_complete(runner, batch.id, 100)
    assert set(started.values()) == {1}


@pytest.mark.parametrize("bad", [-0.001, float("inf"), float("nan"), True, "5ms"])
def test_group_commit_must_be_seconds(bad: object) -> None:
    from batchkit import MemoryStorage

    async def noop(ctx: ItemContext) -> None:
        return None

    for build in (BatchRunner, Worker):
        with pytest.raises(ValueError, match="group_commit"):
            build(MemoryStorage(), noop, group_commit=bad)  # type: ignore[arg-type]
