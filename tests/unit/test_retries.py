"""Automatic retries inside a batch, attempt history, lost attempts and max_failures."""

from __future__ import annotations

import logging
import time
from typing import Any

import anyio
import pytest

from batchkit import (
    BatchRunner,
    BatchState,
    InvalidBatch,
    ItemContext,
    ItemState,
    Limits,
    MemoryStorage,
    RetryPolicy,
)
from batchkit.protocols import ClaimRequest

from .helpers import all_items

pytestmark = pytest.mark.anyio


@pytest.fixture
def storage() -> MemoryStorage:
    return MemoryStorage()


class Flaky(Exception):
    pass


class Fatal(Exception):
    pass


def _fast(max_attempts: int = 3, **options: Any) -> RetryPolicy:
    return RetryPolicy(
        max_attempts=max_attempts, backoff=0.001, max_backoff=0.001, jitter=0.0, **options
    )


# -- the policy itself -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"max_attempts": 0}, "max_attempts"),
        ({"max_attempts": True}, "max_attempts"),
        ({"max_attempts": 2.5}, "max_attempts"),
        ({"backoff": -1}, "backoff"),
        ({"backoff": float("nan")}, "backoff"),
        ({"backoff": []}, "at least one delay"),
        ({"backoff": [1, -2]}, "backoff delay"),
        ({"max_backoff": -1}, "max_backoff"),
        ({"jitter": 1.5}, "jitter"),
        ({"jitter": -0.1}, "jitter"),
    ],
)
def test_a_bad_policy_is_refused_clearly(options: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        RetryPolicy(**options)


def test_retry_on_must_name_exception_classes() -> None:
    with pytest.raises(TypeError, match="retry_on"):
        RetryPolicy(retry_on=(ValueError, "KeyError"))  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="give_up_on"):
        RetryPolicy(give_up_on=42)  # type: ignore[arg-type]


def test_backoff_doubles_up_to_its_cap() -> None:
    policy = RetryPolicy(backoff=1.0, max_backoff=5.0, jitter=0.0)
    assert [policy.delay(n) for n in range(1, 6)] == [1.0, 2.0, 4.0, 5.0, 5.0]
    assert RetryPolicy(backoff=0.0, jitter=0.5).delay(3) == 0.0
    assert RetryPolicy(jitter=0.0).delay(10_000) == 300.0  # no overflow, capped


def test_backoff_as_a_sequence_and_as_a_callable() -> None:
    listed = RetryPolicy(backoff=[0.5, 3, 10], jitter=0.0)
    assert [listed.delay(n) for n in range(1, 6)] == [0.5, 3.0, 10.0, 10.0, 10.0]
    custom = RetryPolicy(backoff=lambda failures: failures * 7.0, jitter=0.0)
    assert custom.delay(2) == 14.0
    broken = RetryPolicy(backoff=lambda failures: -1.0, jitter=0.0)
    with pytest.raises(ValueError, match="backoff callable"):
        broken.delay(1)


def test_jitter_stays_within_its_fraction() -> None:
    policy = RetryPolicy(backoff=10.0, jitter=0.2)
    delays = {policy.delay(1) for _ in range(200)}
    assert all(8.0 <= d <= 12.0 for d in delays)
    assert len(delays) > 50  # actually random


def test_which_errors_are_retried() -> None:
    default = RetryPolicy()
    assert default.retries(Flaky())
    assert default.retries(TimeoutError())
    picky = RetryPolicy(retry_on=(Flaky, TimeoutError), give_up_on=Fatal)
    assert picky.retries(Flaky())
    assert not picky.retries(ValueError())
    both = RetryPolicy(retry_on=Exception, give_up_on=(Fatal, KeyError))
    assert not both.retries(Fatal())
    assert not both.retries(KeyError())
    by_message = RetryPolicy(retry_on=lambda exc: "503" in str(exc))
    assert by_message.retries(Flaky("upstream said 503"))
    assert not by_message.retries(Flaky("404"))


# -- retries in a run --------------------------------------------------------------------


async def test_a_flaky_item_succeeds_on_a_later_attempt(storage: MemoryStorage) -> None:
    seen: list[tuple[str, int]] = []

    async def gen(ctx: ItemContext) -> dict[str, int]:
        seen.append((ctx.key, ctx.attempt))
        if ctx.key == "flaky" and ctx.attempt < 3:
            raise Flaky(f"try {ctx.attempt}")
        return {"attempt": ctx.attempt}

    runner = BatchRunner(storage, gen, retry=_fast())
    batch = await runner.submit(["a", "flaky", "b"])
    final = await runner.run(batch.id)

    assert final.state is BatchState.COMPLETED
    assert final.counts[ItemState.SUCCEEDED] == 3
    flaky = await runner.item(batch.id, "flaky")
    assert (flaky.state, flaky.attempt, flaky.result) == (ItemState.SUCCEEDED, 3, {"attempt": 3})
    assert flaky.error is None
    assert [(e.type, e.message, e.attempt) for e in flaky.errors] == [
        ("Flaky", "try 1", 1),
        ("Flaky", "try 2", 2),
    ]
    assert all(e.traceback and "Flaky: try" in e.traceback for e in flaky.errors)
    assert sorted(seen) == [("a", 1), ("b", 1), ("flaky", 1), ("flaky", 2), ("flaky", 3)]


async def test_each_item_has_a_budget_of_its_own(storage: MemoryStorage) -> None:
    attempts: dict[str, int] = {}

    async def gen(ctx: ItemContext) -> None:
        attempts[ctx.key] = ctx.attempt
        if ctx.key.startswith("bad"):
            raise Flaky(f"{ctx.key} attempt {ctx.attempt}")

    runner = BatchRunner(storage, gen, retry=_fast(max_attempts=3))
    batch = await runner.submit(["bad-1", "ok-1", "bad-2", "ok-2"])
    final = await runner.run(batch.id)

    assert final.state is BatchState.COMPLETED_WITH_ERRORS
    assert attempts == {"bad-1": 3, "ok-1": 1, "bad-2": 3, "ok-2": 1}
    for key in ("bad-1", "bad-2"):
        item = await runner.item(batch.id, key)
        assert item.state is ItemState.FAILED
        assert item.error is not None
        assert item.error.message == f"{key} attempt 3"  # only the last attempt's failure
        assert [e.attempt for e in item.errors] == [1, 2, 3]


async def test_give_up_on_fails_at_once_and_retry_on_narrows(storage: MemoryStorage) -> None:
    async def gen(ctx: ItemContext) -> None:
        raise {"fatal": Fatal, "value": ValueError, "flaky": Flaky}[ctx.key]("no")

    policy = _fast(max_attempts=4, retry_on=(Flaky, Fatal), give_up_on=Fatal)
    runner = BatchRunner(storage, gen, retry=policy)
    batch = await runner.submit(["fatal", "value", "flaky"])
    await runner.run(batch.id)
    attempts = {i.key: i.attempt for i in await all_items(runner, batch.id)}
    assert attempts == {"fatal": 1, "value": 1, "flaky": 4}


async def test_a_timeout_is_retried_and_a_non_json_result_is_not(storage: MemoryStorage) -> None:
    async def gen(ctx: ItemContext) -> Any:
        if ctx.key == "slow" and ctx.attempt == 1:
            await anyio.sleep(10)
        if ctx.key == "bad-result":
            return {1, 2}
        return "ok"

    runner = BatchRunner(storage, gen, item_timeout=0.05, retry=_fast())
    batch = await runner.submit(["slow", "bad-result"])
    await runner.run(batch.id)
    slow = await runner.item(batch.id, "slow")
    assert (slow.state, slow.attempt) == (ItemState.SUCCEEDED, 2)
    assert [e.type for e in slow.errors] == ["TimeoutError"]
    bad = await runner.item(batch.id, "bad-result")
    assert (bad.state, bad.attempt) == (ItemState.FAILED, 1)
    assert bad.error is not None
    assert bad.error.type == "InvalidResult"


async def test_a_retry_waits_for_its_backoff(storage: MemoryStorage) -> None:
    ended: list[float] = []
    began: list[float] = []

    async def gen(ctx: ItemContext) -> None:
        began.append(time.monotonic())
        if ctx.attempt == 1:
            ended.append(time.monotonic())
            raise Flaky("once")

    runner = BatchRunner(storage, gen, retry=RetryPolicy(backoff=0.3, jitter=0.0))
    batch = await runner.submit(["x"])
    with anyio.fail_after(5):
        final = await runner.run(batch.id)
    assert final.state is BatchState.COMPLETED
    assert len(began) == 2
    assert began[1] - ended[0] >= 0.28
    assert began[1] - ended[0] < 1.0  # woken by the due retry, not a full poll interval


async def test_a_waiting_retry_shows_as_queued_with_its_error(storage: MemoryStorage) -> None:
    async def gen(ctx: ItemContext) -> None:
        raise Flaky("later")

    runner = BatchRunner(storage, gen, retry=RetryPolicy(backoff=60.0))
    batch = await runner.submit(["x", "y"])
    with anyio.move_on_after(0.3):
        await runner.run(batch.id)
    status = await runner.status(batch.id)
    assert status.state is BatchState.RUNNING
    assert status.counts[ItemState.QUEUED] == 2
    for item in await all_items(runner, batch.id):
        assert (item.state, item.attempt) == (ItemState.QUEUED, 1)
        assert item.error is not None
        assert item.error.message == "later"
        assert len(item.errors) == 1


async def test_the_error_history_is_bounded(storage: MemoryStorage) -> None:
    async def gen(ctx: ItemContext) -> None:
        raise Flaky(f"attempt {ctx.attempt} " + "x" * 5_000)

    runner = BatchRunner(
        storage, gen, retry=_fast(max_attempts=12), limits=Limits(max_error_history=4)
    )
    batch = await runner.submit(["x"])
    await runner.run(batch.id)
    item = await runner.item(batch.id, "x")
    assert item.attempt == 12
    assert [e.attempt for e in item.errors] == [9, 10, 11, 12]
    assert all(e.traceback is not None and len(e.traceback) <= 2_000 for e in item.errors)


# -- attempts lost with their runner -------------------------------------------------------


async def test_an_attempt_lost_with_its_runner_is_recorded(storage: MemoryStorage) -> None:
    batch = await BatchRunner(storage, lambda ctx: None).submit(["x"])
    # A runner claimed the item and died: its lease is over at once.
    dead = await storage.claim(ClaimRequest(lease_seconds=0, batch_ids=(batch.id,)))
    assert dead is not None

    async def gen(ctx: ItemContext) -> int:
        return ctx.attempt

    runner = BatchRunner(storage, gen)
    final = await runner.run(batch.id)
    assert final.state is BatchState.COMPLETED
    item = await runner.item(batch.id, "x")
    assert (item.attempt, item.result) == (2, 2)
    assert [(e.type, e.attempt) for e in item.errors] == [("WorkerLost", 1)]


async def test_an_item_that_keeps_killing_its_runners_ends_failed(storage: MemoryStorage) -> None:
    batch = await BatchRunner(storage, lambda ctx: None).submit(["poison", "fine"])
    request = ClaimRequest(lease_seconds=0, batch_ids=(batch.id,))
    for _ in range(2):  # two runners died on it, one after the other
        claim = await storage.claim(request)
        assert claim is not None
        assert claim.lease.key == "poison"
    ran: list[str] = []

    async def gen(ctx: ItemContext) -> None:
        ran.append(ctx.key)

    runner = BatchRunner(storage, gen, retry=_fast(max_attempts=2))
    final = await runner.run(batch.id)
    assert ran == ["fine"]  # the poison item was not run a third time
    assert final.state is BatchState.COMPLETED_WITH_ERRORS
    poison = await runner.item(batch.id, "poison")
    assert poison.state is ItemState.FAILED
    assert poison.error is not None
    assert poison.error.type == "WorkerLost"
    assert [e.attempt for e in poison.errors] == [1, 2]


async def test_released_attempts_do_not_use_the_budget(storage: MemoryStorage) -> None:
    started = anyio.Event()

    async def hang(ctx: ItemContext) -> None:
        started.set()
        await anyio.sleep(60)

    hanging = BatchRunner(storage, hang)
    batch = await hanging.submit(["x"])
    for _ in range(2):  # a run cancelled twice hands the item back twice
        started = anyio.Event()
        async with anyio.create_task_group() as tg:
            tg.start_soon(hanging.run, batch.id)
            await started.wait()
            tg.cancel_scope.cancel()
    assert (await hanging.item(batch.id, "x")).state is ItemState.QUEUED

    async def gen(ctx: ItemContext) -> int:
        return ctx.attempt

    runner = BatchRunner(storage, gen, retry=_fast(max_attempts=1))
    final = await runner.run(batch.id)
    assert final.state is BatchState.COMPLETED
    item = await runner.item(batch.id, "x")
    assert (item.attempt, item.result, item.errors) == (3, 3, [])


# -- max_failures --------------------------------------------------------------------------


async def test_max_failures_cancels_the_rest_of_the_batch(storage: MemoryStorage) -> None:
    ran: list[str] = []

    async def gen(ctx: ItemContext) -> None:
        ran.append(ctx.key)
        if ctx.position % 2 == 0:
            raise Fatal(ctx.key)

    runner = BatchRunner(storage, gen)
    batch = await runner.submit([f"item-{n}" for n in range(10)], max_failures=1)
    assert batch.max_failures == 1
    final = await runner.run(batch.id)

    assert ran == ["item-0", "item-1", "item-2"]
    assert final.state is BatchState.CANCELLED
    assert final.counts[ItemState.FAILED] == 2
    assert final.counts[ItemState.SUCCEEDED] == 1
    assert final.counts[ItemState.CANCELLED] == 7
    assert final.cancel_reason is not None
    assert "max_failures=1" in final.cancel_reason
    assert final.max_failures == 1


async def test_max_failures_counts_failures_after_their_retries(storage: MemoryStorage) -> None:
    async def gen(ctx: ItemContext) -> None:
        if ctx.attempt < 3:
            raise Flaky("not yet")

    runner = BatchRunner(storage, gen, retry=_fast(max_attempts=3))
    batch = await runner.submit(["a", "b", "c"], max_failures=0)
    final = await runner.run(batch.id)
    assert final.state is BatchState.COMPLETED
    assert final.cancel_reason is None


async def test_max_failures_zero_on_a_single_failing_item_ends_failed(
    storage: MemoryStorage,
) -> None:
    async def gen(ctx: ItemContext) -> None:
        raise Fatal("no")

    runner = BatchRunner(storage, gen)
    batch = await runner.submit(["only"], max_failures=0)
    final = await runner.run(batch.id)
    assert final.state is BatchState.FAILED  # nothing was left to cancel
    assert final.counts[ItemState.FAILED] == 1


async def test_max_failures_stops_the_runs_own_running_items_at_once(
    storage: MemoryStorage,
) -> None:
    async def gen(ctx: ItemContext) -> None:
        if ctx.key == "bad":
            await anyio.sleep(0.05)
            raise Fatal("bad")
        await anyio.sleep(30)  # would outlive the test without the cancel

    # A long lease: only the runner's own cancel can stop the sleepers in time.
    runner = BatchRunner(storage, gen, concurrency=4, lease_seconds=300)
    batch = await runner.submit(["s1", "s2", "bad", "s3", "s4", "s5"], max_failures=0)
    with anyio.fail_after(5):
        final = await runner.run(batch.id)
    assert final.state is BatchState.CANCELLED
    assert final.counts[ItemState.FAILED] == 1
    assert final.counts[ItemState.CANCELLED] == 5


async def test_retry_failed_keeps_max_failures(storage: MemoryStorage) -> None:
    async def gen(ctx: ItemContext) -> None:
        raise Fatal("no")

    runner = BatchRunner(storage, gen)
    batch = await runner.submit(["a", "b"], max_failures=5)
    await runner.run(batch.id)
    again = await runner.retry_failed(batch.id)
    assert again.max_failures == 5


@pytest.mark.parametrize("bad", [-1, True, 1.5, "3"])
async def test_a_bad_max_failures_is_refused(storage: MemoryStorage, bad: Any) -> None:
    runner = BatchRunner(storage, lambda ctx: None)
    with pytest.raises(InvalidBatch, match="max_failures"):
        await runner.submit(["a"], max_failures=bad)
    assert await storage.list_batches() == []


async def test_cancel_keeps_its_reason(storage: MemoryStorage) -> None:
    runner = BatchRunner(storage, lambda ctx: None)
    batch = await runner.submit(["a"])
    status = await runner.cancel(batch.id, reason="the customer left\x00 " + "x" * 1_000)
    assert status.cancel_reason is not None
    assert status.cancel_reason.startswith("the customer left")
    assert "\x00" not in status.cancel_reason
    assert len(status.cancel_reason) == Limits().max_reason_length
    with pytest.raises(TypeError, match="reason"):
        await runner.cancel(batch.id, reason=3)  # type: ignore[arg-type]


# -- what the log says ---------------------------------------------------------------------


async def test_each_transition_is_one_structured_log_line(
    storage: MemoryStorage, caplog: pytest.LogCaptureFixture
) -> None:
    async def gen(ctx: ItemContext) -> None:
        if ctx.key == "flaky" and ctx.attempt == 1:
            raise Flaky("once")
        if ctx.key == "bad":
            raise Fatal("never")

    caplog.set_level(logging.INFO, logger="batchkit.items")
    runner = BatchRunner(storage, gen, retry=_fast(give_up_on=Fatal))
    batch = await runner.submit(["ok", "flaky", "bad"])
    await runner.run(batch.id)
    lines = [r for r in caplog.records if r.name == "batchkit.items"]
    events = [(r.key, r.attempt, r.event) for r in lines]  # type: ignore[attr-defined]
    assert events == [
        ("ok", 1, "started"),
        ("ok", 1, "succeeded"),
        ("flaky", 1, "started"),
        ("flaky", 1, "retrying"),
        ("bad", 1, "started"),
        ("bad", 1, "failed"),
        ("flaky", 2, "started"),
        ("flaky", 2, "succeeded"),
    ]
    for record in lines:
        assert record.batch_id == batch.id  # type: ignore[attr-defined]
        assert batch.id in record.getMessage()
    retrying = next(r for r in lines if r.event == "retrying")  # type: ignore[attr-defined]
    assert retrying.levelno == logging.WARNING
    assert (retrying.error_type, retrying.error) == ("Flaky", "once")  # type: ignore[attr-defined]
    assert retrying.delay >= 0  # type: ignore[attr-defined]
    done = next(r for r in lines if r.event == "succeeded")  # type: ignore[attr-defined]
    assert done.duration >= 0  # type: ignore[attr-defined]


async def test_a_generator_blocking_the_loop_is_reported(
    storage: MemoryStorage, caplog: pytest.LogCaptureFixture
) -> None:
    async def blocking(ctx: ItemContext) -> None:
        time.sleep(0.5)  # noqa: ASYNC251 - the very mistake the warning is about

    runner = BatchRunner(storage, blocking, block_warning=0.2)
    batch = await runner.submit(["the-blocker"])
    await runner.run(batch.id)
    warnings = [r for r in caplog.records if getattr(r, "event", None) == "loop_blocked"]
    assert warnings, "the blocked loop was not reported"
    message = warnings[0].getMessage()
    assert "'the-blocker'" in message
    assert "plain `def`" in message
    assert warnings[0].blocked >= 0.2  # type: ignore[attr-defined]


async def test_a_generator_that_yields_is_not_reported(
    storage: MemoryStorage, caplog: pytest.LogCaptureFixture
) -> None:
    async def polite(ctx: ItemContext) -> None:
        await anyio.sleep(1.2)

    # A threshold well above a pause of the host or of the collector, still passed 1.2 s.
    runner = BatchRunner(storage, polite, block_warning=1.0)
    batch = await runner.submit(["x"])
    await runner.run(batch.id)
    assert not [r for r in caplog.records if getattr(r, "event", None) == "loop_blocked"]
