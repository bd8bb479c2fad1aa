"""MemoryStorage: the contract suite on trio, and what only memory does."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from batchkit import MemoryStorage
from batchkit.protocols import ClaimRequest, Outcome
from batchkit.status import item_from_record
from batchkit.testing import StorageContract
from batchkit.testing.contract import new_batch

if TYPE_CHECKING:
    from collections.abc import Callable

    from batchkit.protocols import Storage

pytestmark = pytest.mark.anyio


class TestMemoryOnTrio(StorageContract):
    """The reference adapter on trio too: it is the test double of trio hosts."""

    @pytest.fixture
    def anyio_backend(self) -> str:
        return "trio"

    @pytest.fixture
    def storage_factory(self) -> Callable[[], Storage]:
        return MemoryStorage


class FakeClock:
    """A wall clock that moves only when told."""

    def __init__(self) -> None:
        self.now = 1_700_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


async def test_lease_expires_when_the_clock_passes_its_deadline(clock: FakeClock) -> None:
    storage = MemoryStorage(clock=clock)
    batch = new_batch(1)
    await storage.create_batch(batch)
    request = ClaimRequest(lease_seconds=30, batch_ids=(batch.id,))
    first = await storage.claim(request)
    assert first is not None
    clock.now += 29.9
    assert await storage.claim(request) is None
    clock.now += 0.1
    second = await storage.claim(request)
    assert second is not None
    assert second.lease.attempt == 2
    assert not (await storage.heartbeat(first.lease, lease_seconds=30)).held


async def test_heartbeat_moves_the_deadline_from_now(clock: FakeClock) -> None:
    storage = MemoryStorage(clock=clock)
    batch = new_batch(1)
    await storage.create_batch(batch)
    request = ClaimRequest(lease_seconds=30, batch_ids=(batch.id,))
    claim = await storage.claim(request)
    assert claim is not None
    clock.now += 20
    await storage.heartbeat(claim.lease, lease_seconds=30)
    clock.now += 20  # 40 s after the claim, 20 s after the heartbeat
    assert await storage.claim(request) is None


async def test_released_item_waits_for_its_retry_time(clock: FakeClock) -> None:
    storage = MemoryStorage(clock=clock)
    batch = new_batch(1)
    await storage.create_batch(batch)
    request = ClaimRequest(lease_seconds=30, batch_ids=(batch.id,))
    claim = await storage.claim(request)
    assert claim is not None
    await storage.finish(claim.lease, Outcome.released(delay=10))
    clock.now += 9.9
    assert await storage.claim(request) is None
    clock.now += 0.1
    again = await storage.claim(request)
    assert again is not None
    assert again.lease.attempt == 2


async def test_timestamps_come_from_the_clock(clock: FakeClock) -> None:
    storage = MemoryStorage(clock=clock)
    batch = new_batch(1)
    record, _ = await storage.create_batch(batch)
    assert record.created_at.timestamp() == clock.now
    clock.now += 5
    claim = await storage.claim(ClaimRequest(lease_seconds=30))
    assert claim is not None
    started = await storage.get_batch(batch.id)
    assert started.started_at is not None
    assert started.started_at.timestamp() == clock.now


async def test_delete_finished_batches_measures_age_with_the_clock(clock: FakeClock) -> None:
    storage = MemoryStorage(clock=clock)
    batch = new_batch(1)
    await storage.create_batch(batch)
    await storage.cancel_batch(batch.id)
    clock.now += 60
    assert await storage.delete_finished_batches(older_than=61) == 0
    assert await storage.delete_finished_batches(older_than=60) == 1


async def test_repr_counts_batches() -> None:
    storage = MemoryStorage()
    assert repr(storage) == "MemoryStorage(batches=0)"
    await storage.create_batch(new_batch(2))
    assert repr(storage) == "MemoryStorage(batches=1)"


async def test_usable_without_async_with() -> None:
    storage = MemoryStorage()
    batch = new_batch(1)
    await storage.create_batch(batch)
    claim = await storage.claim(ClaimRequest(lease_seconds=30))
    assert claim is not None
    assert (await storage.finish(claim.lease, Outcome.succeeded("1"))).accepted
    await storage.aclose()
    assert item_from_record(await storage.get_item(batch.id, "item-0")).result == 1
