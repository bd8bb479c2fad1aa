"""Group commit and claim-ahead as a runner uses them, on every adapter: quick items are
written several at a time, nothing waits past the window, and a stop or a cancellation
leaves no outcome unwritten and no item held."""

from __future__ import annotations

from collections import Counter
from typing import TYPE_CHECKING, Any

import anyio
import pytest

from batchkit import BatchRunner, ItemSpec, ItemState, Worker
from batchkit.protocols import GroupCommitter

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


@pytest.mark.parametrize("bad", [-0.001, float("inf"), float("nan"), True, "5ms"])
def test_group_commit_must_be_seconds(bad: object) -> None:
    from batchkit import MemoryStorage

    async def noop(ctx: ItemContext) -> None:
        return None

    for build in (BatchRunner, Worker):
        with pytest.raises(ValueError, match="group_commit"):
            build(MemoryStorage(), noop, group_commit=bad)  # type: ignore[arg-type]
