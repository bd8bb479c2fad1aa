"""A worker whose store refuses, for good, what it asks: ``exit_when_idle`` stops it.

A `StorageError` that is not transient (`StorageError.transient` is `False`: a key of the
wrong type, a missing permission, a client of one server on a cluster node) cannot be
outlived by waiting; a worker that is to exit when idle would otherwise wait forever.
"""

from __future__ import annotations

from typing import Any

import anyio
import pytest

from batchkit import BatchRunner, ItemContext, ItemState, StorageError, Worker

from .helpers import CountingStorage

pytestmark = pytest.mark.anyio


async def _noop(ctx: ItemContext) -> None:
    return None


def _refusal() -> StorageError:
    error = StorageError("ResponseError: WRONGTYPE Operation against a key")
    error.transient = False
    return error


async def test_an_exit_when_idle_worker_stops_on_a_lasting_refusal() -> None:
    storage = CountingStorage()
    batch = await BatchRunner(storage, _noop).submit(["a", "b"])

    async def refuse(*args: Any, **kwargs: Any) -> None:
        raise _refusal()

    storage.before["claim"] = refuse
    worker = Worker(storage, _noop, concurrency=3, poll_interval=0.02, exit_when_idle=True)  # type: ignore[arg-type]
    with anyio.fail_after(5), pytest.raises(StorageError, match="WRONGTYPE") as info:
        await worker.run()
    assert not info.value.transient
    assert worker.stats.storage_errors >= 1
    assert (await storage.get_batch(batch.id)).counts[ItemState.QUEUED] == 2


async def test_a_worker_without_exit_when_idle_outlives_a_lasting_refusal() -> None:
    storage = CountingStorage()
    await BatchRunner(storage, _noop).submit(["a"])
    refusals = 3

    async def refuse(*args: Any, **kwargs: Any) -> None:
        nonlocal refusals
        if refusals:
            refusals -= 1
            raise _refusal()

    storage.before["claim"] = refuse
    worker = Worker(storage, _noop, poll_interval=0.02)  # type: ignore[arg-type]
    async with worker:
        with anyio.fail_after(5):
            while worker.stats.succeeded < 1:  # noqa: ASYNC110 - the stats have no event
                await anyio.sleep(0.01)
    assert worker.stats.storage_errors == 3


def test_a_storage_error_is_transient_unless_told() -> None:
    assert StorageError("the server went away").transient
    assert not _refusal().transient


async def test_a_worker_does_not_wait_out_a_lasting_refusal_of_an_outcome() -> None:
    # A worker outlasts an outage of the store to write an outcome (the work is done);
    # a refusal no retry changes is not an outage: the worker stops instead of waiting
    # forever, and the item's lease lapses as after any lost worker.
    storage = CountingStorage()
    batch = await BatchRunner(storage, _noop).submit(["a"])

    async def refuse(*args: Any, **kwargs: Any) -> None:
        raise _refusal()

    storage.before["finish"] = refuse
    worker = Worker(storage, _noop, poll_interval=0.02, exit_when_idle=True, group_commit=0)  # type: ignore[arg-type]
    with anyio.fail_after(5), pytest.raises(StorageError, match="WRONGTYPE"):
        await worker.run()
    assert (await storage.get_batch(batch.id)).counts[ItemState.RUNNING] == 1


async def test_a_worker_does_not_wait_out_a_lasting_refusal_of_a_group() -> None:
    # The same refusal of a group's write: each outcome is written alone once (the work
    # is done), the refusal stops the worker, and nothing stays held.
    storage = CountingStorage()
    batch = await BatchRunner(storage, _noop).submit(["a", "b", "c", "d"])

    async def refuse(*args: Any, **kwargs: Any) -> None:
        raise _refusal()

    storage.before["finish_group"] = refuse
    worker = Worker(storage, _noop, poll_interval=0.02, exit_when_idle=True)  # type: ignore[arg-type]
    with anyio.fail_after(5), pytest.raises(StorageError, match="WRONGTYPE"):
        await worker.run()
    assert storage.calls["finish_group"] >= 1
    counts = (await storage.get_batch(batch.id)).counts
    assert counts[ItemState.RUNNING] == 0, counts
    assert counts[ItemState.SUCCEEDED] + counts[ItemState.QUEUED] == 4
