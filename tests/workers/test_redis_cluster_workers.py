"""Worker processes on a Redis Cluster of the module's own (three masters, three replicas).

* Two workers share a batch by ``redis+cluster://`` URL; the master that serves the
  batch's slot is SIGKILLed half-way and its replica takes over: every item ends
  succeeded, once in the store's books, and a `watch` started before the failover ends
  with the batch.
* ``--storage redis://`` on a cluster node: the worker refuses to start, naming the
  ``redis+cluster://`` URL.
* A store that refuses, for good, what an ``--exit-when-idle`` worker asks: it exits
  non-zero at once, with one line that says why, instead of retrying forever.
"""

from __future__ import annotations

import secrets
import time
from typing import TYPE_CHECKING

import anyio
import pytest

from batchkit import BatchRunner, BatchState, ItemState

from ..storage._redis_cluster import LocalCluster, drop_cluster_keys, local_cluster
from .conftest import ROOT, Store, Workers
from .test_faults import _check_finished, _hooks_of, _submit

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

    from batchkit import BatchStatus

pytestmark = pytest.mark.anyio


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    yield from local_cluster(tmp_path_factory.mktemp("cluster"))


@pytest.fixture
def store(cluster: LocalCluster) -> Iterator[Store]:
    found = Store("redis", cluster.url, f"w{secrets.token_hex(4)}")
    yield found
    drop_cluster_keys(cluster, found.prefix)


async def _nothing(ctx: object) -> None:
    return None


async def test_a_master_killed_under_two_workers_loses_nothing(
    cluster: LocalCluster, store: Store, tmp_path: Path
) -> None:
    batch = await _submit(store, 360)
    victim = cluster.master_of(f"{{{batch.id}}}")
    # The node a URL names must answer when a storage opens (redis-py learns the others
    # from it): the checks after the failover open one on a node that stays up.
    survivor = next(port for port in cluster.live() if port != victim)
    store.url = f"redis+cluster://127.0.0.1:{survivor}/0"
    workers = Workers(store, tmp_path)
    watched: list[BatchStatus] = []
    options = ("--concurrency", "4", "--lease-seconds", "4", "--batch", batch.id)
    try:
        async with store.storage() as storage, anyio.create_task_group() as tg:

            async def watch() -> None:
                async for status in BatchRunner(storage, _nothing).watch(batch.id):
                    watched.append(status)

            tg.start_soon(watch)
            # 360 items of 0.05 s on 2 x 4 slots: about 2.3 s of work, the failover meets it.
            first = await workers.start(*options, "--exit-when-idle", sleep=0.05)
            second = await workers.start(*options, "--exit-when-idle", sleep=0.05)
            with anyio.fail_after(30):
                while not (workers.started_by(first.pid) and workers.started_by(second.pid)):  # noqa: ASYNC110 - a file, no event
                    await anyio.sleep(0.05)
            await anyio.sleep(0.5)
            assert first.returncode is None, "a worker ended before the failover"
            assert second.returncode is None, "a worker ended before the failover"
            killed_at = time.monotonic()
            await anyio.to_thread.run_sync(cluster.kill, victim)
            for process in (first, second):
                assert await workers.wait(process, 60) == 0, workers.logs()
            with anyio.fail_after(15):
                while not (watched and watched[-1].is_terminal):  # noqa: ASYNC110 - a list, no event
                    await anyio.sleep(0.05)
        await anyio.to_thread.run_sync(cluster.wait_ok)  # every slot served again
        assert cluster.master_of(f"{{{batch.id}}}") != victim
        runs = await _check_finished(store, batch, workers)
        # The run logs share the machine's monotonic clock with this test.
        starts = [run.start for attempts in workers.runs().values() for run in attempts]
        assert min(starts) < killed_at < max(starts), "the failover met no work"
        # Replication is asynchronous: a transition the old master acknowledged just before
        # it died may be lost, and that item runs again (it is still counted once). Only
        # items in flight then (2 workers x 4 slots), claimed or finished, may run twice.
        again = {key: n for key, n in runs.items() if n > 1}
        assert len(again) <= 16, again
        assert _hooks_of(workers, batch) == ["completed"]
        assert watched[-1].state is BatchState.COMPLETED
        assert watched[-1].counts[ItemState.SUCCEEDED] == batch.total
        logged = workers.logs()
        assert "Traceback" not in logged, logged
    finally:
        await workers.aclose()
        if victim not in cluster.live():
            await anyio.to_thread.run_sync(cluster.restart, victim)


async def test_a_worker_on_a_cluster_node_by_redis_url_refuses_to_start(
    cluster: LocalCluster, tmp_path: Path
) -> None:
    port = cluster.live()[0]
    store = Store("redis", f"redis://127.0.0.1:{port}/0", f"w{secrets.token_hex(4)}")
    workers = Workers(store, tmp_path)
    try:
        process = await workers.start("--exit-when-idle")
        assert await workers.wait(process, 30) == 1
        logged = workers.log_of(0).read_text()
        assert f"open 'redis+cluster://127.0.0.1:{port}/0' instead" in logged, logged
        assert "Traceback" not in logged, logged
    finally:
        await workers.aclose()


async def test_an_exit_when_idle_worker_stops_on_an_error_retrying_cannot_fix(
    cluster: LocalCluster, store: Store, tmp_path: Path
) -> None:
    batch = await _submit(store, 3)
    # The index of the batches with work left, overwritten with a string: every claim
    # is answered WRONGTYPE, whatever the worker does.
    async with store.storage() as storage:
        await storage.client.set(f"{store.prefix}:active", "not a sorted set")
    workers = Workers(store, tmp_path)
    try:
        process = await workers.start("--exit-when-idle", "--poll-interval", "0.1", hook=None)
        # Within 20 s (the wait fails the test after): it would otherwise retry forever.
        assert await workers.wait(process, 20) == 1
        logged = workers.log_of(0).read_text()
        refused = [line for line in logged.splitlines() if "WRONGTYPE" in line]
        assert len(refused) == 1, logged
        assert refused[0].startswith("python -m batchkit worker: ResponseError: WRONGTYPE")
        assert "retrying in" not in logged, logged
        assert "Traceback" not in logged, logged
        async with store.storage() as storage:
            status = await BatchRunner(storage, _nothing).status(batch.id)
        assert status.counts[ItemState.QUEUED] == 3
    finally:
        await workers.aclose()


def test_the_demo_command_line_runs_a_batch_on_the_cluster_by_url(
    cluster: LocalCluster, store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The examples take a storage URL as they are given one: a cluster URL included.
    from typer.testing import CliRunner

    from examples.cli.app import app

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("BATCHKIT_STUDIO_SPEED", "0.05")
    rows = (ROOT / "examples" / "cli" / "products.csv").read_text().splitlines()
    csv = tmp_path / "products.csv"
    csv.write_text("\n".join(rows[:4]) + "\n")
    where = ["--storage", store.url, "--prefix", store.prefix]
    done = CliRunner().invoke(
        app, ["generate", str(csv), *where, "--plain"], catch_exceptions=False
    )
    assert done.exit_code == 0, done.output
    listed = CliRunner().invoke(app, ["list", *where], catch_exceptions=False)
    assert listed.exit_code == 0, listed.output
    assert "completed" in listed.output
