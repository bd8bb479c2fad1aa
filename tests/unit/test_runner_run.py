"""BatchRunner.run: isolation of failures, timeouts, concurrency, results and progress."""

from __future__ import annotations

import functools
import gc
import math
import threading
from typing import Any

import anyio
import anyio.lowlevel
import pytest

from batchkit import (
    BatchRunner,
    BatchState,
    ItemContext,
    ItemSpec,
    ItemState,
    Limits,
    MemoryStorage,
    RetryPolicy,
)
from batchkit.exceptions import StorageError
from batchkit.protocols import ClaimRequest, Outcome

from .helpers import CountingStorage, all_items, wait_until

pytestmark = pytest.mark.anyio


@pytest.fixture
def storage() -> MemoryStorage:
    return MemoryStorage()


class RenderError(Exception):
    pass


# -- isolation -------------------------------------------------------------------------


async def test_failures_are_isolated_and_every_item_runs_once(storage: MemoryStorage) -> None:
    # Items fail by 0-based position: 3, 7 and 11.
    calls: list[str] = []

    async def gen(ctx: ItemContext) -> dict[str, Any]:
        calls.append(ctx.key)
        if ctx.position in (3, 7, 11):
            raise RenderError(f"cannot render {ctx.key}")
        return {"video": f"{ctx.key}.mp4", "n": ctx.payload["n"]}

    runner = BatchRunner(storage, gen)
    keys = [f"product-{i:02}" for i in range(20)]
    batch = await runner.submit([ItemSpec(key=k, payload={"n": i}) for i, k in enumerate(keys)])

    final = await runner.run(batch.id)

    assert final.state is BatchState.COMPLETED_WITH_ERRORS
    assert final.is_terminal
    assert final.counts[ItemState.SUCCEEDED] == 17
    assert final.counts[ItemState.FAILED] == 3
    assert sum(final.counts.values()) == final.total == 20
    assert final.progress == 1.0
    assert calls == keys  # each item exactly once, in submission order
    items = await all_items(runner, batch.id)
    for item in items:
        assert item.attempt == 1
        if item.position in (3, 7, 11):
            assert item.state is ItemState.FAILED
            assert item.result is None
            assert item.error is not None
            assert item.error.type == "RenderError"
            assert item.error.message == f"cannot render {item.key}"
            assert item.error.attempt == 1
            assert item.error.traceback is not None
            assert "RenderError: cannot render" in item.error.traceback
            assert "in gen" in item.error.traceback
        else:
            assert item.state is ItemState.SUCCEEDED
            assert item.error is None
            assert item.result == {"video": f"{item.key}.mp4", "n": item.position}
            assert item.progress == 1.0


async def test_every_item_failing_makes_the_batch_failed(storage: MemoryStorage) -> None:
    async def gen(ctx: ItemContext) -> None:
        raise ValueError("bad input")

    runner = BatchRunner(storage, gen)
    batch = await runner.submit(["a", "b", "c"])

    final = await runner.run(batch.id)

    assert final.state is BatchState.FAILED
    assert final.counts[ItemState.FAILED] == 3
    assert await runner.status(batch.id) == final


async def test_all_succeeding_makes_the_batch_completed_and_run_again_is_a_no_op(
    storage: MemoryStorage,
) -> None:
    calls: list[str] = []

    async def gen(ctx: ItemContext) -> str:
        calls.append(ctx.key)
        return ctx.key.upper()

    runner = BatchRunner(storage, gen)
    batch = await runner.submit(["a", "b"])

    final = await runner.run(batch.id)
    again = await runner.run(batch.id)

    assert final.state is BatchState.COMPLETED
    assert again == final
    assert calls == ["a", "b"]
    assert [i.result for i in await all_items(runner, batch.id)] == ["A", "B"]


async def test_exception_that_cannot_be_printed_still_fails_only_its_item(
    storage: MemoryStorage,
) -> None:
    class Unprintable(Exception):
        def __str__(self) -> str:
            raise RuntimeError("__str__ is broken")

    async def gen(ctx: ItemContext) -> str:
        if ctx.key == "bad":
            raise Unprintable()
        return "ok"

    runner = BatchRunner(storage, gen)
    batch = await runner.submit(["bad", "good"])

    final = await runner.run(batch.id)

    assert final.state is BatchState.COMPLETED_WITH_ERRORS
    bad, good = await all_items(runner, batch.id)
    assert bad.error is not None
    assert bad.error.type == "Unprintable"
    assert good.result == "ok"


async def test_hanging_generator_times_out_and_the_batch_moves_on(storage: MemoryStorage) -> None:
    async def gen(ctx: ItemContext) -> str:
        if ctx.key == "hangs":
            await anyio.sleep_forever()
        return "done"

    runner = BatchRunner(storage, gen, item_timeout=0.05)
    batch = await runner.submit(["first", "hangs", "last"])

    with anyio.fail_after(2):
        final = await runner.run(batch.id)

    assert final.state is BatchState.COMPLETED_WITH_ERRORS
    first, hangs, last = await all_items(runner, batch.id)
    assert first.state is last.state is ItemState.SUCCEEDED
    assert hangs.state is ItemState.FAILED
    assert hangs.error is not None
    assert hangs.error.type == "TimeoutError"
    assert "item_timeout=0.05" in hangs.error.message


async def test_an_error_is_cut_to_the_smallest_limits(storage: MemoryStorage) -> None:
    # A class name of any length (a generated class) and a one-character traceback
    # limit: what is stored is bounded all the same.
    Odd = type("E" * 5_000, (Exception,), {})

    async def gen(ctx: ItemContext) -> None:
        raise Odd("x" * 100)

    limits = Limits(max_error_length=1, max_traceback_length=1)
    runner = BatchRunner(storage, gen, limits=limits)
    batch = await runner.submit(["a"])
    await runner.run(batch.id)
    [item] = await all_items(runner, batch.id)
    assert item.error is not None
    assert (item.error.message, item.error.traceback) == ("…", "…")
    assert len(item.error.type) == 200
    assert item.error.type.startswith("EEE")


async def test_stored_errors_are_bounded_and_redacted(storage: MemoryStorage) -> None:
    messages = {
        "huge": "x" * 100_000,
        # A long run of letters before "://" must not make redaction slow.
        "glued": "y" * 100_000 + "://",
        "dsn": "cannot connect to postgresql://user:secret@host/db: timeout",
        "raw-at": "cannot connect to mysql://app:p@ssw0rd@db.internal:3306/app",
    }

    async def gen(ctx: ItemContext) -> None:
        raise ConnectionError(messages[ctx.key])

    limits = Limits()
    runner = BatchRunner(storage, gen)
    batch = await runner.submit(list(messages))
    with anyio.fail_after(2):
        await runner.run(batch.id)

    huge, glued, dsn, raw_at = await all_items(runner, batch.id)
    for item in (huge, glued):
        assert item.error is not None
        assert item.error.traceback is not None
        assert len(item.error.message) == limits.max_error_length
        assert item.error.message.startswith(messages[item.key][:100])
        assert len(item.error.traceback) == limits.max_traceback_length
        assert item.error.traceback.rstrip().endswith(messages[item.key][-100:])
    assert dsn.error is not None
    assert dsn.error.traceback is not None
    assert "secret" not in dsn.error.message
    assert "secret" not in dsn.error.traceback
    assert dsn.error.message == "cannot connect to postgresql://user:***@host/db: timeout"
    assert raw_at.error is not None
    assert raw_at.error.traceback is not None
    assert "ssw0rd" not in raw_at.error.message
    assert "ssw0rd" not in raw_at.error.traceback
    assert raw_at.error.message == "cannot connect to mysql://app:***@db.internal:3306/app"


# -- the context -----------------------------------------------------------------------


async def test_context_exposes_the_item(storage: MemoryStorage) -> None:
    seen: list[tuple[Any, ...]] = []

    async def gen(ctx: ItemContext) -> None:
        seen.append((ctx.batch_id, ctx.key, ctx.payload, ctx.attempt, ctx.position, ctx.metadata))

    runner = BatchRunner(storage, gen)
    batch = await runner.submit(
        [ItemSpec(key="a", payload={"n": 1}), "b"], metadata={"owner": "ada", "tier": 2}
    )
    await runner.run(batch.id)

    meta = {"owner": "ada", "tier": 2}
    assert seen == [(batch.id, "a", {"n": 1}, 1, 0, meta), (batch.id, "b", None, 1, 1, meta)]


# -- order and concurrency -------------------------------------------------------------


async def test_sequential_by_default_in_submission_order(storage: MemoryStorage) -> None:
    order: list[str] = []
    active = 0

    async def gen(ctx: ItemContext) -> None:
        nonlocal active
        active += 1
        assert active == 1
        order.append(ctx.key)
        for _ in range(3):
            await anyio.lowlevel.checkpoint()
        active -= 1

    runner = BatchRunner(storage, gen)
    keys = ["zeta", "alpha", "mid", "beta", "omega"]
    batch = await runner.submit(keys)

    final = await runner.run(batch.id)

    assert final.state is BatchState.COMPLETED
    assert order == keys


async def test_concurrency_runs_exactly_n_items_at_once(storage: MemoryStorage) -> None:
    active = 0
    peak = 0
    full = anyio.Event()

    async def gen(ctx: ItemContext) -> None:
        nonlocal active, peak
        active += 1
        peak = max(peak, active)
        if active == 4:
            full.set()
        await full.wait()  # only returns if four items really run at once
        for _ in range(5):  # give a fifth slot, if there were one, the time to start
            await anyio.lowlevel.checkpoint()
        active -= 1

    runner = BatchRunner(storage, gen, concurrency=4)
    batch = await runner.submit([f"k{i}" for i in range(10)])

    with anyio.fail_after(3):
        final = await runner.run(batch.id)

    assert final.state is BatchState.COMPLETED
    assert peak == 4
    assert active == 0


# -- sync generators and async detection -----------------------------------------------


async def test_sync_generator_runs_in_a_worker_thread_and_reports_progress(
    storage: MemoryStorage,
) -> None:
    loop_thread = threading.get_ident()
    threads: list[int] = []
    release = threading.Event()

    def gen(ctx: ItemContext) -> dict[str, int]:
        threads.append(threading.get_ident())
        ctx.progress_sync(0.25, "warming up")
        ctx.progress_sync(0.5, "half way")
        release.wait(5)
        return {"n": ctx.payload}

    runner = BatchRunner(storage, gen, progress_interval=0.02)
    batch = await runner.submit([ItemSpec(key="k", payload=7)])

    async def visible() -> bool:
        item = await runner.item(batch.id, "k")
        return item.progress == 0.5 and item.message == "half way"

    async with anyio.create_task_group() as tg:
        tg.start_soon(runner.run, batch.id)
        try:
            await wait_until(visible)
            assert (await runner.item(batch.id, "k")).state is ItemState.RUNNING
        finally:
            release.set()

    item = await runner.item(batch.id, "k")
    assert item.state is ItemState.SUCCEEDED
    assert item.result == {"n": 7}
    assert len(threads) == 1
    assert threads[0] != loop_thread


class AsyncCallable:
    def __init__(self) -> None:
        self.threads: list[int] = []

    async def __call__(self, ctx: ItemContext) -> str:
        self.threads.append(threading.get_ident())
        await anyio.lowlevel.checkpoint()
        return "object"


class SyncBridge:
    """A sync generator that holds an async function in ``.func`` (not a partial)."""

    def __init__(self) -> None:
        self.func = _tagged
        self.threads: list[int] = []

    def __call__(self, ctx: ItemContext) -> str:
        return anyio.from_thread.run(self.func, "bridge", self.threads, ctx)


async def _tagged(tag: str, threads: list[int], ctx: ItemContext) -> str:
    threads.append(threading.get_ident())
    await anyio.lowlevel.checkpoint()
    return tag


def _tagged_sync(tag: str, threads: list[int], ctx: ItemContext) -> str:
    threads.append(threading.get_ident())
    return tag


async def test_async_callables_are_detected_and_awaited(storage: MemoryStorage) -> None:
    loop_thread = threading.get_ident()
    obj = AsyncCallable()
    partial_threads: list[int] = []
    nested_threads: list[int] = []
    sync_threads: list[int] = []
    bridge = SyncBridge()
    cases: list[tuple[Any, str, list[int], bool]] = [
        (obj, "object", obj.threads, True),
        (bridge, "bridge", bridge.threads, True),  # its async part runs back on the loop
        (functools.partial(_tagged, "partial", partial_threads), "partial", partial_threads, True),
        (
            functools.partial(functools.partial(_tagged, "nested"), nested_threads),
            "nested",
            nested_threads,
            True,
        ),
        (functools.partial(_tagged_sync, "sync", sync_threads), "sync", sync_threads, False),
    ]
    for generator, expected, threads, on_loop in cases:
        runner = BatchRunner(storage, generator)
        batch = await runner.submit(["k"])

        final = await runner.run(batch.id)

        assert final.state is BatchState.COMPLETED, expected
        assert (await runner.item(batch.id, "k")).result == expected
        assert (threads == [loop_thread]) is on_loop, expected


async def test_sync_function_returning_a_coroutine_fails_without_warning(
    storage: MemoryStorage,
) -> None:
    async def real_work(ctx: ItemContext) -> str:
        return "never"

    def forgot_async(ctx: ItemContext) -> Any:
        return real_work(ctx)

    runner = BatchRunner(storage, forgot_async)
    batch = await runner.submit(["k"])

    final = await runner.run(batch.id)
    gc.collect()  # a "never awaited" RuntimeWarning would surface here, as an error

    assert final.state is BatchState.FAILED
    item = await runner.item(batch.id, "k")
    assert item.error is not None
    assert item.error.type == "InvalidResult"
    assert "async def" in item.error.message


# -- results ---------------------------------------------------------------------------


async def test_results_must_be_json_and_fit_the_limit(storage: MemoryStorage) -> None:
    results: dict[str, Any] = {
        "set": {1, 2},
        "nan": {"score": math.nan},
        "tuple": (1, 2),
        "big": "x" * 200,
        "fits": {"url": "https://cdn/x.mp4", "sizes": [1, 2.5, None, True], "ok": "é"},
    }

    async def gen(ctx: ItemContext) -> Any:
        return results[ctx.key]

    runner = BatchRunner(storage, gen, limits=Limits(max_result_bytes=100))
    batch = await runner.submit(list(results))

    final = await runner.run(batch.id)

    assert final.state is BatchState.COMPLETED_WITH_ERRORS
    by_key = {i.key: i for i in await all_items(runner, batch.id)}
    expected = {
        "set": "set is not a JSON type",
        "nan": "nan is not a JSON number at $.score",
        "tuple": "tuple is not a JSON type",
        "big": "over the limit of 100 bytes",
    }
    for key, needle in expected.items():
        error = by_key[key].error
        assert by_key[key].state is ItemState.FAILED
        assert error is not None
        assert error.type == "InvalidResult"
        assert "result" in error.message
        assert needle in error.message
    assert by_key["fits"].state is ItemState.SUCCEEDED
    assert by_key["fits"].result == results["fits"]


# -- progress --------------------------------------------------------------------------


async def test_progress_is_throttled_and_the_latest_report_shows_while_running() -> None:
    storage = CountingStorage()
    release = anyio.Event()

    async def gen(ctx: ItemContext) -> str:
        for i in range(10_000):
            await ctx.progress(i / 10_000, f"step {i}")
        await release.wait()
        return "done"

    runner = BatchRunner(storage, gen, progress_interval=0.5)
    batch = await runner.submit(["k"])

    async def latest_visible() -> bool:
        item = await storage.inner.get_item(batch.id, "k")
        return item.progress == 0.9999 and item.message == "step 9999"

    async with anyio.create_task_group() as tg:
        tg.start_soon(runner.run, batch.id)
        try:
            await wait_until(latest_visible)
            item = await storage.inner.get_item(batch.id, "k")
            assert item.state is ItemState.RUNNING
            status = await runner.status(batch.id)
            assert status.state is BatchState.RUNNING
            assert status.progress == pytest.approx(0.9999)
        finally:
            release.set()

    assert 1 <= storage.calls["record_progress"] < 20
    item = await runner.item(batch.id, "k")
    assert item.state is ItemState.SUCCEEDED
    assert item.progress == 1.0


def _noting(storage: CountingStorage) -> tuple[list[tuple[float, str | None]], anyio.Event]:
    """The progress ``storage`` is asked to write, and an event set at the first write."""
    written: list[tuple[float, str | None]] = []
    first = anyio.Event()

    async def note(lease: Any, progress: float, message: str | None, **kwargs: Any) -> None:
        written.append((progress, message))
        first.set()
        if message == "the store is away":
            raise StorageError("the store is away")

    storage.before["record_progress"] = note
    return written, first


async def test_an_item_that_fails_or_is_cancelled_shows_the_progress_it_reported_last() -> None:
    """Progress writes are throttled: the report made just before a failure or a cancel
    would never be written, and the item would show what it did before. It is written
    before the outcome."""
    storage = CountingStorage()
    written, first = _noting(storage)
    running = anyio.Event()

    async def gen(ctx: ItemContext) -> str:
        await ctx.progress(0.1, "rendering")
        await first.wait()
        await ctx.progress(0.7, f"uploading {ctx.key}")  # not due for a minute
        if ctx.key == "fails":
            raise ValueError("no")
        running.set()
        await anyio.sleep_forever()
        raise AssertionError("not reached")

    # A short lease: the running item hears of the cancel at its next heartbeat.
    runner = BatchRunner(storage, gen, progress_interval=60, lease_seconds=0.3)
    batch = await runner.submit(["fails", "cancelled"])
    async with anyio.create_task_group() as tg:
        tg.start_soon(runner.run, batch.id)
        await running.wait()
        await runner.cancel(batch.id)
    ended = {item.key: item for item in await runner.items(batch.id)}
    assert [(i.state, i.progress, i.message) for i in ended.values()] == [
        (ItemState.FAILED, 0.7, "uploading fails"),
        (ItemState.CANCELLED, 0.7, "uploading cancelled"),
    ]
    assert ended["fails"].error is not None
    assert ended["fails"].error.type == "ValueError"
    assert written[-3:] == [
        (0.7, "uploading fails"),
        (0.1, "rendering"),
        (0.7, "uploading cancelled"),
    ]


async def test_a_retried_attempt_leaves_its_last_report_unwritten() -> None:
    """A retry starts its progress anew: the failed attempt's unwritten report would be
    a write for nothing."""
    storage = CountingStorage()
    written, first = _noting(storage)

    async def gen(ctx: ItemContext) -> str:
        if ctx.attempt == 1:
            await ctx.progress(0.5, "first")
            await first.wait()
            await ctx.progress(0.6, "unwritten")
            raise ConnectionError("busy")
        return "ok"

    retry = RetryPolicy(max_attempts=2, backoff=0.001)
    runner = BatchRunner(storage, gen, retry=retry, progress_interval=60)
    batch = await runner.submit(["k"])
    assert (await runner.run(batch.id)).state is BatchState.COMPLETED
    assert written == [(0.5, "first")]


async def test_a_last_report_the_store_refuses_does_not_stop_the_outcome() -> None:
    storage = CountingStorage()
    written, first = _noting(storage)

    async def gen(ctx: ItemContext) -> str:
        await ctx.progress(0.2, "first")
        await first.wait()
        await ctx.progress(0.3, "the store is away")
        raise ValueError("no")

    runner = BatchRunner(storage, gen, progress_interval=60)
    batch = await runner.submit(["k"])
    assert (await runner.run(batch.id)).state is BatchState.FAILED
    item = await runner.item(batch.id, "k")
    assert (item.state, item.progress, item.message) == (ItemState.FAILED, 0.2, "first")
    assert written == [(0.2, "first"), (0.3, "the store is away")]


async def test_progress_rejects_values_outside_zero_to_one(storage: MemoryStorage) -> None:
    # A bad value is the generator's own bug: ctx.progress raises and, unless the
    # generator handles it, the item fails with that error like any other.
    rejected: list[tuple[Any, str]] = []

    async def gen(ctx: ItemContext) -> str:
        if ctx.key == "careless":
            await ctx.progress(1.5)
        for bad in (-0.1, 1.0000001, math.nan, math.inf, "0.5", True, None):
            try:
                await ctx.progress(bad)  # type: ignore[arg-type]
            except (ValueError, TypeError) as exc:
                rejected.append((bad, type(exc).__name__))
        await ctx.progress(0)
        await ctx.progress(1, "done")
        return "ok"

    runner = BatchRunner(storage, gen)
    batch = await runner.submit(["careful", "careless"])

    final = await runner.run(batch.id)

    assert final.state is BatchState.COMPLETED_WITH_ERRORS
    assert [name for _, name in rejected] == ["ValueError"] * 4 + ["TypeError"] * 3
    careful, careless = await all_items(runner, batch.id)
    assert careful.state is ItemState.SUCCEEDED
    assert careless.state is ItemState.FAILED
    assert careless.error is not None
    assert careless.error.type == "ValueError"
    assert "progress must be from 0 to 1" in careless.error.message


async def _message_while_running(
    runner: BatchRunner, batch_id: str, key: str, release: anyio.Event
) -> str | None:
    """Run the batch; once the item shows a progress message, read it and let it finish."""

    async def reported() -> bool:
        return (await runner.item(batch_id, key)).message is not None

    async with anyio.create_task_group() as tg:
        tg.start_soon(runner.run, batch_id)
        await wait_until(reported)
        message = (await runner.item(batch_id, key)).message
        release.set()
    return message


async def test_long_progress_messages_are_cut(storage: MemoryStorage) -> None:
    release = anyio.Event()

    async def gen(ctx: ItemContext) -> None:
        await ctx.progress(0.5, "m" * 1_000)
        await release.wait()

    runner = BatchRunner(storage, gen, limits=Limits(max_message_length=50))
    batch = await runner.submit(["k"])

    message = await _message_while_running(runner, batch.id, "k", release)

    assert message is not None
    assert len(message) == 50


async def test_text_no_store_can_hold_is_cleaned(storage: MemoryStorage) -> None:
    # NUL (PostgreSQL text refuses it) and lone surrogates (not UTF-8) in progress and
    # error messages are replaced before they reach any store.
    release = anyio.Event()

    async def gen(ctx: ItemContext) -> None:
        await ctx.progress(0.5, "step\x00one\ud800")
        await release.wait()
        raise ValueError("bad\x00value\udfff")

    runner = BatchRunner(storage, gen)
    batch = await runner.submit(["k"])

    message = await _message_while_running(runner, batch.id, "k", release)

    assert message == "step\ufffdone?"
    error = (await runner.item(batch.id, "k")).error
    assert error is not None
    assert error.message == "bad\ufffdvalue?"
    assert error.traceback is not None
    assert "\x00" not in error.traceback
    error.traceback.encode("utf-8")  # no lone surrogate left


# -- leases ----------------------------------------------------------------------------


async def test_heartbeats_keep_the_lease_of_a_long_item(storage: MemoryStorage) -> None:
    started = anyio.Event()
    done = anyio.Event()

    async def gen(ctx: ItemContext) -> str:
        started.set()
        await anyio.sleep(2.0)  # more than three lease lengths
        return "done"

    # Heartbeats every 0.2 s: a host that stalls for under 0.4 s cannot lose the lease.
    runner = BatchRunner(storage, gen, lease_seconds=0.6)
    batch = await runner.submit(["long"])
    stolen: list[Any] = []
    attempts = 0

    async def run() -> None:
        await runner.run(batch.id)
        done.set()

    async with anyio.create_task_group() as tg:
        tg.start_soon(run)
        await started.wait()
        request = ClaimRequest(lease_seconds=0.6, batch_ids=(batch.id,))
        while not done.is_set():
            attempts += 1
            claim = await storage.claim(request)
            if claim is not None:
                stolen.append(claim)
            with anyio.move_on_after(0.05):
                await done.wait()

    assert attempts >= 10
    assert stolen == []
    item = await runner.item(batch.id, "long")
    assert item.state is ItemState.SUCCEEDED
    assert item.attempt == 1


async def test_cancelling_run_releases_the_item_and_a_second_run_finishes() -> None:
    storage = MemoryStorage()
    started = anyio.Event()
    attempts: dict[str, list[int]] = {}

    async def gen(ctx: ItemContext) -> str:
        attempts.setdefault(ctx.key, []).append(ctx.attempt)
        if ctx.key == "b" and ctx.attempt == 1:
            await ctx.progress(0.3, "working")
            started.set()
            await anyio.sleep_forever()
        return ctx.key

    # Each outcome alone: "c" is not claimed ahead (see test_grouped_runs for that).
    runner = BatchRunner(storage, gen, progress_interval=0.01, group_commit=0)
    batch = await runner.submit(["a", "b", "c"])
    outcome: list[str] = []

    async def run() -> None:
        try:
            await runner.run(batch.id)
        except anyio.get_cancelled_exc_class():
            outcome.append("cancelled")
            raise
        outcome.append("returned")

    async with anyio.create_task_group() as tg:
        tg.start_soon(run)
        await started.wait()
        tg.cancel_scope.cancel()

    assert outcome == ["cancelled"]
    a, b, c = await all_items(runner, batch.id)
    assert a.state is ItemState.SUCCEEDED
    assert b.state is ItemState.QUEUED
    assert b.attempt == 1
    assert b.progress == 0.0
    assert c.state is ItemState.QUEUED
    assert (await runner.status(batch.id)).state is BatchState.RUNNING

    # The lease is gone: a fresh claim takes the item at once.
    claim = await storage.claim(ClaimRequest(lease_seconds=30, batch_ids=(batch.id,)))
    assert claim is not None
    assert (claim.lease.key, claim.lease.attempt) == ("b", 2)
    assert (await storage.finish(claim.lease, Outcome.released())).accepted

    with anyio.fail_after(2):
        final = await runner.run(batch.id)
    assert final.state is BatchState.COMPLETED
    assert attempts == {"a": [1], "b": [1, 3], "c": [1]}
    assert [i.result for i in await all_items(runner, batch.id)] == ["a", "b", "c"]


async def test_cancelling_run_while_it_records_an_outcome_keeps_the_outcome() -> None:
    storage = CountingStorage()
    in_finish = anyio.Event()

    async def slow_finish(lease: Any, outcome: Any, **kwargs: Any) -> None:
        if outcome.state is ItemState.SUCCEEDED:
            in_finish.set()
            for _ in range(5):  # a store's round trip, during which the runner is cancelled
                await anyio.lowlevel.checkpoint()

    storage.before["finish"] = slow_finish

    async def gen(ctx: ItemContext) -> str:
        await anyio.lowlevel.checkpoint()
        return ctx.key

    runner = BatchRunner(storage, gen, group_commit=0)  # the write of one outcome
    batch = await runner.submit(["a", "b"])

    async with anyio.create_task_group() as tg:
        tg.start_soon(runner.run, batch.id)
        await in_finish.wait()
        tg.cancel_scope.cancel()

    a, b = await all_items(runner, batch.id)
    assert a.state is ItemState.SUCCEEDED
    assert a.result == "a"
    assert b.state is ItemState.QUEUED  # claimed with the outcome, then released
    with anyio.fail_after(2):
        final = await runner.run(batch.id)
    assert final.state is BatchState.COMPLETED


# -- waiting for items held elsewhere ------------------------------------------------------


async def test_a_run_that_never_waits_opens_no_subscription() -> None:
    # A subscription costs a connection on some stores (PostgreSQL LISTEN) and a wake-up
    # per change: a run that works through its batch alone does without.
    storage = CountingStorage()
    runner = BatchRunner(storage, _noop, concurrency=2)
    batch = await runner.submit(["a", "b", "c"])
    final = await runner.run(batch.id)
    assert final.state is BatchState.COMPLETED
    assert storage.calls["subscribe"] == 0


async def test_a_run_waiting_for_an_item_held_elsewhere_wakes_on_its_change() -> None:
    storage = CountingStorage()
    batch = await BatchRunner(storage, _noop).submit(["held"])
    other = await storage.inner.claim(ClaimRequest(lease_seconds=60, batch_ids=(batch.id,)))
    assert other is not None
    # A poll interval far longer than the test: only the change itself can wake the run.
    runner = BatchRunner(storage, _noop, poll_interval=60)
    done: list[Any] = []

    async def run() -> None:
        done.append(await runner.run(batch.id))

    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            tg.start_soon(run)
            await wait_until(lambda: _true(storage.calls["subscribe"] == 1))
            await storage.inner.finish(other.lease, Outcome.succeeded('"elsewhere"'))
    assert done[0].state is BatchState.COMPLETED
    assert storage.calls["subscribe"] == 1


async def _noop(ctx: ItemContext) -> None:
    return None


async def _true(value: bool) -> bool:
    return value
