"""What each generator outcome means, the same for `BatchRunner.run` and a `Worker`.

An `Exception` fails the attempt; so does any other `BaseException` the generator raises
(`GeneratorExit`, a class of its own, `SystemExit`, `KeyboardInterrupt`, a `CancelledError`
that no cancellation caused): the failure is written, counted against the item's retry
budget, and only then do `SystemExit` and `KeyboardInterrupt` propagate. A run past its
deadline fails with `TimeoutError`, whatever the generator returned.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import TYPE_CHECKING, Any

import anyio
import anyio.lowlevel
import pytest

from batchkit import (
    BatchRunner,
    BatchState,
    ItemContext,
    ItemState,
    MemoryStorage,
    RetryPolicy,
    Worker,
)

from .helpers import all_items

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

pytestmark = pytest.mark.anyio


class Poison(BaseException):
    """A host's own BaseException: not an `Exception`, not a cancellation."""


def _raiser(kind: str) -> BaseException:
    return {
        "custom": Poison("poisoned item"),
        "generator_exit": GeneratorExit("closed under it"),
        "system_exit": SystemExit(3),
        "keyboard_interrupt": KeyboardInterrupt(),
    }[kind]


KINDS = ["custom", "generator_exit", "system_exit", "keyboard_interrupt"]
STOPPING = {"system_exit": SystemExit, "keyboard_interrupt": KeyboardInterrupt}
TYPES = {
    "custom": "Poison",
    "generator_exit": "GeneratorExit",
    "system_exit": "SystemExit",
    "keyboard_interrupt": "KeyboardInterrupt",
}


def _generators(kind: str) -> dict[str, Callable[[ItemContext], Any]]:
    async def async_gen(ctx: ItemContext) -> str:
        if ctx.key == "poison":
            raise _raiser(kind)
        await anyio.lowlevel.checkpoint()
        return "ok"

    def sync_gen(ctx: ItemContext) -> str:
        if ctx.key == "poison":
            raise _raiser(kind)
        return "ok"

    return {"async": async_gen, "sync": sync_gen}


async def _drive(run: Callable[[], Awaitable[object]], kind: str) -> None:
    """Run until done, as a supervisor would: again after each stopping error."""
    for _ in range(10):
        try:
            await run()
        except (SystemExit, KeyboardInterrupt) as exc:
            escaped: BaseException = exc
        else:
            return
        assert kind in STOPPING, f"{kind} must not escape"
        assert isinstance(escaped, STOPPING[kind])
    raise AssertionError("still not done after 10 runs")


@pytest.mark.parametrize("flavour", ["async", "sync"])
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("by", ["runner", "worker"])
async def test_a_poison_item_fails_after_its_attempts_and_the_rest_succeed(
    kind: str, flavour: str, by: str
) -> None:
    storage = MemoryStorage()
    gen = _generators(kind)[flavour]
    policy = RetryPolicy(max_attempts=3, backoff=0, jitter=0)
    keys = [f"item-{n}" for n in range(10)]
    keys.insert(4, "poison")
    runner = BatchRunner(storage, gen, retry=policy, concurrency=2)
    batch = await runner.submit(keys)

    async def by_runner() -> object:
        return await runner.run(batch.id)

    async def by_worker() -> object:
        worker = Worker(
            storage, gen, retry=policy, concurrency=2, exit_when_idle=True, poll_interval=0.01
        )
        return await worker.run()

    with anyio.fail_after(10):
        await _drive(by_runner if by == "runner" else by_worker, kind)

    status = await runner.status(batch.id)
    assert status.state is BatchState.COMPLETED_WITH_ERRORS
    items = {item.key: item for item in await all_items(runner, batch.id)}
    poison = items.pop("poison")
    assert {item.state for item in items.values()} == {ItemState.SUCCEEDED}
    assert poison.state is ItemState.FAILED
    assert poison.error is not None
    assert poison.error.type == TYPES[kind]
    # Three failed attempts; a worker stopping may also have handed a claim of it back
    # unrun, which counts in `attempt` but not against the budget.
    assert len(poison.errors) == 3
    assert {e.type for e in poison.errors} == {TYPES[kind]}
    assert poison.error.attempt == poison.attempt


@pytest.mark.parametrize("kind", KINDS)
async def test_without_a_retry_policy_the_first_such_error_fails_the_item(kind: str) -> None:
    runner = BatchRunner(MemoryStorage(), _generators(kind)["async"])
    batch = await runner.submit(["a", "poison", "b"])
    await _drive(lambda: runner.run(batch.id), kind)
    a, poison, b = await all_items(runner, batch.id)
    assert a.state is b.state is ItemState.SUCCEEDED
    assert poison.state is ItemState.FAILED
    assert poison.attempt == 1
    assert poison.error is not None
    assert poison.error.type == TYPES[kind]


@pytest.mark.parametrize("kind", sorted(STOPPING))
async def test_a_stopping_error_is_written_before_it_propagates(kind: str) -> None:
    # The attempt is on the item the moment the error reaches the caller, and the items
    # running beside it are handed back, not lost.
    storage = MemoryStorage()
    started = anyio.Event()

    async def gen(ctx: ItemContext) -> str:
        if ctx.key == "slow":
            started.set()
            await anyio.sleep(30)
        if ctx.key == "poison":
            await started.wait()
            raise _raiser(kind)
        return "ok"

    runner = BatchRunner(storage, gen, concurrency=2)
    batch = await runner.submit(["slow", "poison", "later"])
    with pytest.raises(STOPPING[kind]):
        await runner.run(batch.id)
    slow, poison, later = await all_items(runner, batch.id)
    assert poison.state is ItemState.FAILED
    assert poison.error is not None
    assert poison.error.type == TYPES[kind]
    assert slow.state is ItemState.QUEUED
    assert not slow.errors
    assert later.state is ItemState.QUEUED
    assert later.attempt == 0


async def test_a_worker_outlives_a_generators_custom_base_exception() -> None:
    storage = MemoryStorage()
    runner = BatchRunner(storage, _generators("custom")["async"])
    batch = await runner.submit(["a", "poison", "b"])
    stats = await Worker(storage, runner.generator, exit_when_idle=True).run()
    assert (stats.succeeded, stats.failed) == (2, 1)
    assert (await runner.status(batch.id)).is_terminal


@pytest.mark.parametrize("anyio_backend", ["asyncio"])  # trio's Cancelled cannot be faked
async def test_a_cancelled_error_no_cancellation_caused_fails_the_item() -> None:
    # On asyncio a generator can meet a CancelledError that is not its own cancellation
    # (a future someone else cancelled): that is its error, not a stop of the runner.

    async def gen(ctx: ItemContext) -> str:
        if ctx.key == "b":
            future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            future.cancel()
            await future
        return "ok"

    runner = BatchRunner(MemoryStorage(), gen)
    batch = await runner.submit(["a", "b", "c"])
    with anyio.fail_after(5):
        status = await runner.run(batch.id)
    assert status.counts[ItemState.SUCCEEDED] == 2
    b = await runner.item(batch.id, "b")
    assert b.state is ItemState.FAILED
    assert b.error is not None
    assert b.error.type == "CancelledError"


async def test_cancelling_the_run_still_hands_items_back_uncounted() -> None:
    # The other side of the rule above: a real cancellation is not a failure.
    started = anyio.Event()

    async def gen(ctx: ItemContext) -> str:
        started.set()
        await anyio.sleep(30)
        return "ok"

    runner = BatchRunner(MemoryStorage(), gen, retry=RetryPolicy(max_attempts=2))
    batch = await runner.submit(["a"])
    async with anyio.create_task_group() as tg:
        tg.start_soon(runner.run, batch.id)
        await started.wait()
        tg.cancel_scope.cancel()
    [item] = await all_items(runner, batch.id)
    assert item.state is ItemState.QUEUED
    assert not item.errors


# -- timeouts --------------------------------------------------------------------------


async def _timed_out(gen: Callable[[ItemContext], Awaitable[str]], keys: list[str]) -> list[str]:
    """Run ``keys`` with a 0.1 s timeout; each must fail with a `TimeoutError`: messages."""
    runner = BatchRunner(MemoryStorage(), gen, item_timeout=0.1, block_warning=None)
    batch = await runner.submit(keys)
    await runner.run(batch.id)
    messages = []
    for item in await all_items(runner, batch.id):
        assert item.state is ItemState.FAILED
        assert item.result is None
        assert item.error is not None
        assert item.error.type == "TimeoutError"
        assert "item_timeout=0.1s" in item.error.message
        messages.append(item.error.message)
    return messages


async def test_a_generator_that_ignores_its_cancellation_still_times_out() -> None:
    async def stubborn(ctx: ItemContext) -> str:
        with contextlib.suppress(BaseException):  # the deadline is swallowed
            await anyio.sleep(5)
        return "finished anyway"

    [message] = await _timed_out(stubborn, ["a"])
    assert "ignored its cancellation" in message


async def test_a_generator_that_never_awaits_past_its_deadline_times_out() -> None:
    def blocks(seconds: float) -> None:
        time.sleep(seconds)  # holds the event loop: nothing can cancel it

    async def hog(ctx: ItemContext) -> str:
        blocks(0.3)
        return "finished anyway"

    for message in await _timed_out(hog, ["a", "b"]):
        assert "blocked the event loop" in message


async def test_an_error_raised_after_the_deadline_is_a_timeout() -> None:
    async def gen(ctx: ItemContext) -> str:
        try:
            await anyio.sleep(5)
        except BaseException:
            raise ValueError("interrupted") from None
        return "ok"

    await _timed_out(gen, ["a"])


async def test_a_timed_out_attempt_is_retried_within_its_budget() -> None:
    calls: list[int] = []

    async def gen(ctx: ItemContext) -> str:
        calls.append(ctx.attempt)
        if ctx.attempt == 1:
            try:
                await anyio.sleep(5)
            except BaseException:
                return "late"
        return "on time"

    runner = BatchRunner(
        MemoryStorage(), gen, item_timeout=0.1, retry=RetryPolicy(backoff=0, jitter=0)
    )
    batch = await runner.submit(["a"])
    await runner.run(batch.id)
    [item] = await all_items(runner, batch.id)
    assert calls == [1, 2]
    assert item.state is ItemState.SUCCEEDED
    assert item.result == "on time"
    assert [e.type for e in item.errors] == ["TimeoutError"]
