"""`SyncBatchRunner` on every durable store, as a WSGI app uses it: one runner made at
import, shared by many threads, carried through forks."""

from __future__ import annotations

import os
import secrets
import threading
from typing import TYPE_CHECKING

import anyio
import pytest

from batchkit import BatchState, ItemContext, SyncBatchRunner
from tests._forking import in_child

from .conftest import MYSQL_URL, POSTGRES_URL, REDIS_URL, drop_prefixes, require_server

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path


@pytest.fixture(params=["sqlite", "postgres", "mysql", "redis"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[str, str]]:
    """A storage URL and a prefix of the test's own, emptied after."""
    name = request.param
    if name == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp_path / 'app.db'}", "app_"
        return
    url = {"postgres": POSTGRES_URL, "mysql": MYSQL_URL, "redis": REDIS_URL}[name]
    require_server(url, name)
    prefix = f"s{secrets.token_hex(3)}" + ("" if name == "redis" else "_")
    yield url, prefix
    anyio.run(drop_prefixes, url, [prefix])


def _render(ctx: ItemContext) -> dict[str, str]:
    if ctx.key.startswith("bad"):
        raise ValueError("no")
    return {"video": f"{ctx.key}.mp4"}


def test_many_threads_submit_and_read_through_one_runner(store: tuple[str, str]) -> None:
    # What a threaded WSGI server does. On asyncpg, a storage made at import and driven
    # by a fresh event loop per request fails every request after the first; here every
    # call goes to the one loop that opened it.
    url, prefix = store
    errors: list[BaseException] = []
    made: list[str] = []
    with SyncBatchRunner(url, prefix=prefix) as runner:

        def requests(n: int) -> None:
            try:
                for k in range(25):
                    batch = runner.submit([f"r{n}-{k}-a", f"r{n}-{k}-b"], metadata={"n": n})
                    status = runner.status(batch.id)
                    assert (status.total, status.state) == (2, BatchState.QUEUED)
                    made.append(batch.id)
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=requests, args=(n,)) for n in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=120)
        assert errors == []
        assert len(set(made)) == 200
        assert len(runner.batches(metadata={"n": 3}, limit=100)) == 25


def test_the_whole_flow_on_the_store(store: tuple[str, str]) -> None:
    url, prefix = store
    with SyncBatchRunner(url, _render, prefix=prefix, concurrency=2) as runner:
        batch = runner.submit(["a", "bad-b", "c"])
        ran = threading.Thread(target=runner.run, args=(batch.id,))
        ran.start()
        seen = list(runner.watch(batch.id, poll_interval=0.05))
        ran.join(timeout=60)
        assert seen[-1].state is BatchState.COMPLETED_WITH_ERRORS
        assert runner.item(batch.id, "a").result == {"video": "a.mp4"}
        retry = runner.retry_failed(batch.id)
        assert [i.key for i in runner.items(retry.id)] == ["bad-b"]
        assert runner.cancel(retry.id).state is BatchState.CANCELLED
        assert runner.delete(batch.id) is True


@pytest.mark.skipif(not hasattr(os, "fork"), reason="os.fork is POSIX only")
def test_forked_children_get_a_runner_of_their_own(store: tuple[str, str]) -> None:
    # gunicorn --preload: the app is imported, and may have used its runner, before the
    # workers are forked. Each child opens its own connections on its first call; the
    # parent's stay the parent's, and it goes on using them.
    url, prefix = store
    with SyncBatchRunner(url, prefix=prefix) as runner:
        first = runner.submit(["parent"])

        def child() -> None:
            for k in range(10):
                batch = runner.submit([f"child-{os.getpid()}-{k}"])
                assert runner.status(batch.id).total == 1
            assert runner.status(first.id).total == 1

        pids: list[int] = []
        for _ in range(2):
            pids.append(in_child(child))
        assert pids == [0, 0]
        # The parent's connections were not closed by the children.
        for k in range(5):
            assert runner.status(runner.submit([f"after-{k}"]).id).total == 1
        assert len(runner.batches(limit=100)) == 1 + 2 * 10 + 5


@pytest.mark.skipif(not hasattr(os, "fork"), reason="os.fork is POSIX only")
def test_a_child_that_lets_go_of_what_it_inherited_leaves_the_parent_working(
    store: tuple[str, str],
) -> None:
    # A forked child that exits normally finalizes what it inherited: the parent's
    # connections and event loop, whose polling set the child shares. Finalized, an
    # inherited connection must not take the parent's sockets out of that set (the
    # parent's next call would wait forever), nor close them.
    import gc

    import batchkit.sync

    url, prefix = store
    with SyncBatchRunner(url, prefix=prefix) as runner:
        batch = runner.submit(["parent"])

        def child() -> None:
            assert runner.status(batch.id).total == 1  # starts afresh
            runner.close()
            batchkit.sync._inherited.clear()
            gc.collect()

        assert in_child(child) == 0
        for _ in range(3):
            assert runner.status(batch.id).total == 1
        assert runner.submit(["after"]).total == 1
