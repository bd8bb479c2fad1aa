"""RedisStorage on a Redis Cluster of the module's own (three masters, three replicas).

* The contract suite, on a ``redis+cluster://`` storage.
* Cluster URLs: what ``open_storage`` and `RedisStorage` make of them, without a server.
* A ``redis://`` URL (or a host's client of one server) on a cluster node is refused when
  the storage opens, naming the ``redis+cluster://`` URL to use; ``redis+cluster://`` on
  a server without cluster mode names the ``redis://`` one.
* Errors keep the server's word (MOVED, CLUSTERDOWN, TRYAGAIN...): a redirection a client
  of one server cannot follow is not retried, a cluster settling is.

A master killed under two worker processes: ``tests/workers/test_redis_cluster_workers.py``.
"""

from __future__ import annotations

import logging
import re
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import anyio
import pytest
from hypothesis import HealthCheck, settings
from redis import exceptions as redis_errors
from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster

from batchkit import (
    BatchRunner,
    BatchState,
    InvalidStorageURL,
    ItemState,
    StorageError,
    open_storage,
)
from batchkit._secrets import safe_url
from batchkit.storage.redis import RedisStorage
from batchkit.storage.redis import _wire as wire
from batchkit.testing import StorageContract

from ._redis_cluster import LocalCluster, drop_cluster_keys, local_cluster, new_prefix
from .conftest import REDIS_URL, require_server

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

    from batchkit import ItemContext
    from batchkit.protocols import Storage

pytestmark = pytest.mark.anyio


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    yield from local_cluster(tmp_path_factory.mktemp("cluster"))


@pytest.fixture
def prefix(cluster: LocalCluster) -> Iterator[str]:
    name = new_prefix("rc")
    yield name
    drop_cluster_keys(cluster, name)


async def _noop(ctx: ItemContext) -> dict[str, str]:
    return {"key": ctx.key}


# -- the contract ------------------------------------------------------------------------


class TestClusterContract(StorageContract):
    """The contract's test functions on a ``redis+cluster://`` storage."""

    @pytest.fixture
    def storage_factory(self, cluster: LocalCluster) -> Iterator[Callable[[], Storage]]:
        # Each storage under a prefix of its own is empty from the start.
        tag = new_prefix("k")
        made = 0

        def make() -> Storage:
            nonlocal made
            made += 1
            return RedisStorage(cluster.url, prefix=f"{tag}_{made}")

        yield make
        drop_cluster_keys(cluster, f"{tag}_*")

    @pytest.fixture
    def state_machine_settings(self) -> settings:
        # Each example opens a cluster client: fewer than on one server.
        return settings(
            max_examples=15,
            stateful_step_count=20,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow],
        )


# -- URLs ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        pytest.param(
            "redis+cluster://app:s3cr3t@cache:7000/0",
            "RedisStorage('redis+cluster://app:***@cache:7000/0', prefix='p')",
            id="password",
        ),
        pytest.param(
            "rediss+cluster://cache:7000?ssl_cert_reqs=none&socket_timeout=2",
            "RedisStorage('rediss+cluster://cache:7000?ssl_cert_reqs=none&socket_timeout=2', "
            "prefix='p')",
            id="tls-options",
        ),
        pytest.param(
            "REDIS+CLUSTER://cache:7000/0?password=s3cr3t&require_full_coverage=no",
            "RedisStorage('REDIS+CLUSTER://cache:7000/0?password=***&require_full_coverage=no', "
            "prefix='p')",
            id="query-password",
        ),
    ],
)
def test_a_cluster_url_opens_a_redis_storage(url: str, shown: str) -> None:
    storage = open_storage(url, prefix="p")
    assert isinstance(storage, RedisStorage)
    assert repr(storage) == shown
    assert "s3cr3t" not in repr(storage)


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("redis+cluster://cache:7000/3", "database '3': a Redis Cluster has database 0 only"),
        ("redis+cluster://cache:7000/0?db=2", "a Redis Cluster has database 0 only"),
        ("redis+cluster:///0", "names no host"),
        ("redis+cluster://cache:7000/0?colour=blue", "takes no option 'colour'; it takes "),
        ("redis+cluster://cache:7000/0?ssl_certfile=c.pem", "ssl_certfile needs rediss+cluster://"),
        ("redis+cluster://cache:7000/0?socket_timeout=soon", "'socket_timeout' must be a number"),
        ("redis+cluster://cache:7000/0?max_connections=0", "'max_connections' must be a whole"),
        ("redis+cluster://cache:7000/0?socket_keepalive=maybe", "must be true or false"),
        ("rediss+cluster://c:7000/0?ssl_cert_reqs=some", "'none', 'optional' or 'required'"),
        ("redis+cluster://app:p/ss@cache:7000/0", "percent-encode a password"),
    ],
)
def test_a_cluster_url_with_a_mistake_is_refused_at_once(url: str, says: str) -> None:
    for build in (open_storage, RedisStorage):
        with pytest.raises(InvalidStorageURL) as info:
            build(url)
        assert says in str(info.value)
        assert "ss@" not in str(info.value)
        # Nothing chained: a traceback would show no driver's error under it.
        assert info.value.__cause__ is None
        assert info.value.__context__ is None or info.value.__suppress_context__


def test_a_host_cluster_client_password_is_hidden_from_errors() -> None:
    client = RedisCluster(host="127.0.0.1", port=7000, password="s3cr3t-pw")  # no I/O yet
    assert wire.client_secrets(client) == frozenset({"s3cr3t-pw"})
    assert repr(RedisStorage(client)) == "RedisStorage(<a host's client>, prefix='batchkit')"


# -- which kind of server --------------------------------------------------------------------


async def test_a_cluster_url_runs_a_batch_and_a_host_cluster_client_stays_open(
    cluster: LocalCluster, prefix: str
) -> None:
    async with open_storage(cluster.url, prefix=prefix) as storage:
        runner = BatchRunner(storage, _noop, concurrency=4)
        batch = await runner.submit([f"k{n}" for n in range(50)], metadata={"owner": "ada"})
        final = await runner.run(batch.id)
        assert (final.state, final.counts[ItemState.SUCCEEDED]) == (BatchState.COMPLETED, 50)
        assert [b.batch_id for b in await runner.batches(metadata={"owner": "ada"})] == [batch.id]
    client = RedisCluster.from_url(cluster.node_url(cluster.live()[-1]))
    try:
        async with RedisStorage(client, prefix=prefix) as storage:
            assert (await storage.get_batch(batch.id)).counts == final.counts
        assert await client.ping()  # the host's client is left open
    finally:
        await client.aclose()


async def test_redis_url_on_a_cluster_node_is_refused_naming_the_cluster_url(
    cluster: LocalCluster, prefix: str
) -> None:
    port = cluster.live()[0]
    for storage in (
        open_storage(f"redis://127.0.0.1:{port}/0", prefix=prefix),
        RedisStorage(f"redis://127.0.0.1:{port}/0?socket_timeout=5", prefix=prefix),
    ):
        with pytest.raises(InvalidStorageURL) as info:
            async with storage:
                pass
        assert f"open 'redis+cluster://127.0.0.1:{port}/0" in str(info.value)
        assert "node of a Redis Cluster" in str(info.value)
    client = Redis.from_url(cluster.node_url(port))
    try:
        with pytest.raises(StorageError, match=r"RedisCluster client") as refused:
            async with RedisStorage(client, prefix=prefix):
                pass
        assert not refused.value.transient
        assert await client.ping()  # the host's client is not closed
    finally:
        await client.aclose()


async def test_cluster_url_on_a_server_without_cluster_mode_names_the_redis_url() -> None:
    require_server(REDIS_URL, "Redis")
    parts = urlsplit(REDIS_URL)
    with pytest.raises(StorageError, match="Cluster mode is not enabled") as info:
        async with RedisStorage(f"{parts.scheme}+cluster://{parts.netloc}/0", prefix="rc"):
            pass
    assert f"opened with {safe_url(f'{parts.scheme}://{parts.netloc}/0')!r}" in str(info.value)
    assert not info.value.transient


# -- what errors say ---------------------------------------------------------------------------


async def test_moved_on_a_client_of_one_server_is_named_and_not_retried(
    cluster: LocalCluster, prefix: str, monkeypatch: pytest.MonkeyPatch, caplog: Any
) -> None:
    # As if the check at open could not tell (a server that does not answer INFO).
    monkeypatch.setattr("batchkit.storage.redis._cluster.is_cluster_node", _not_a_cluster_node)
    index = f"{prefix}:batches"
    elsewhere = next(p for p in cluster.masters() if p != cluster.master_of(index))
    async with RedisStorage(cluster.node_url(elsewhere), prefix=prefix) as storage:
        with (
            caplog.at_level(logging.WARNING, "batchkit.storage.redis"),
            pytest.raises(StorageError) as info,
        ):
            await storage.list_batches()
    said = str(info.value)
    # MovedError from redis-py 8; a ResponseError with the word kept before.
    assert re.match(r"(Moved|Response)Error: MOVED \d+ 127\.0\.0\.1:\d+;", said), said
    assert f"open 'redis+cluster://127.0.0.1:{elsewhere}/0' instead" in said
    assert not info.value.transient
    assert "retrying" not in caplog.text


async def _not_a_cluster_node(client: object) -> bool:
    return False


async def test_clusterdown_is_named_and_retried(
    cluster: LocalCluster, monkeypatch: pytest.MonkeyPatch, caplog: Any
) -> None:
    # A cluster-mode node that joined no cluster serves no slot: CLUSTERDOWN for any key.
    lone = cluster.lone_node()
    monkeypatch.setattr("batchkit.storage.redis._cluster.is_cluster_node", _not_a_cluster_node)
    storage = RedisStorage(cluster.node_url(lone), prefix=new_prefix("rc"), retries=2)
    async with storage:
        with (
            caplog.at_level(logging.WARNING, "batchkit.storage.redis"),
            pytest.raises(StorageError) as info,
        ):
            await storage.list_batches()
    assert re.match(r"(ClusterDown|Response)Error: CLUSTERDOWN ", str(info.value))
    assert info.value.transient
    assert caplog.text.count("transient Redis fault, retrying") == 2


def _in_pipeline(error: Exception) -> Exception:
    # What redis-py makes of an error answer to a pipeline's command.
    error.args = (f"Command # 1 (ZADD p:batches 0 b) of pipeline caused error: {error}",)
    return error


@pytest.mark.parametrize(
    ("error", "cluster", "says", "transient"),
    [
        (redis_errors.MovedError("3999 10.0.0.2:7001"), True, "MOVED 3999 10.0.0.2:7001", True),
        (redis_errors.MovedError("3999 10.0.0.2:7001"), False, "MOVED 3999", False),
        (redis_errors.AskError("3999 10.0.0.2:7001"), True, "AskError: ASK 3999", True),
        (redis_errors.TryAgainError("Multiple keys request"), True, "TRYAGAIN Multiple", True),
        (redis_errors.TryAgainError("Multiple keys request"), False, "TRYAGAIN Multiple", True),
        (redis_errors.ClusterDownError("The cluster is down"), False, "CLUSTERDOWN The", True),
        (redis_errors.MasterDownError("Link with MASTER is down"), True, "MASTERDOWN Link", True),
        (redis_errors.ClusterCrossSlotError("Keys in request"), True, "CROSSSLOT Keys", False),
        (
            redis_errors.ResponseError("WRONGTYPE Operation"),
            True,
            "ResponseError: WRONGTYPE",
            False,
        ),
        (_in_pipeline(redis_errors.MovedError("12 h:1")), False, "error: MOVED 12 h:1", False),
        # A client of one server before redis-py 8: the word is kept, the type is not.
        (redis_errors.ResponseError("MOVED 12 h:1"), True, "ResponseError: MOVED 12 h:1", True),
        (redis_errors.ResponseError("MOVED 12 h:1"), False, "ResponseError: MOVED 12 h:1", False),
        (redis_errors.ResponseError("CLUSTERDOWN Hash slot"), False, ": CLUSTERDOWN Hash", True),
    ],
    ids=lambda value: value if isinstance(value, str) else None,
)
def test_an_error_keeps_its_word_and_a_redirection_is_retried_on_a_cluster_only(
    error: Exception, cluster: bool, says: str, transient: bool
) -> None:
    assert says in wire.describe(error)
    found = wire.classify(error, cluster=cluster)
    assert found is not None
    assert found.transient is transient


def test_a_cluster_out_of_reach_is_retried_and_a_cluster_mistake_is_not() -> None:
    unreachable = redis_errors.RedisClusterException("Redis Cluster cannot be connected")
    unreachable.__cause__ = redis_errors.ConnectionError("Error 111 connecting")
    mistake = redis_errors.RedisClusterException("Cluster mode is not enabled on this node")
    assert wire.classify(unreachable, cluster=True) == (True, unreachable, unreachable)
    assert wire.classify(mistake, cluster=True) == (False, mistake, mistake)


# -- scripts and pub/sub ---------------------------------------------------------------------


async def test_scripts_flushed_on_every_node_are_loaded_again(
    cluster: LocalCluster, prefix: str
) -> None:
    async with RedisStorage(cluster.url, prefix=prefix) as storage:
        runner = BatchRunner(storage, _noop)
        batches = [await runner.submit([f"a{n}", f"b{n}"]) for n in range(6)]
        for port in cluster.live():
            node = Redis.from_url(cluster.node_url(port))
            try:
                await node.script_flush()
            finally:
                await node.aclose()
        assert len(await runner.batches()) == 6  # every batch's record, read in one pipeline
        for batch in batches:
            assert (await runner.run(batch.id)).state is BatchState.COMPLETED


async def test_watch_on_a_cluster_is_woken_by_the_batch_channel(
    cluster: LocalCluster, prefix: str
) -> None:
    # A poll interval longer than the test: only the channel can wake the watch in time.
    async with RedisStorage(cluster.url, prefix=prefix, poll_interval=30) as storage:
        if not hasattr(storage.client, "pubsub"):
            pytest.skip("this redis-py has no pub/sub on a cluster client: watch polls")
        runner = BatchRunner(storage, _noop)
        batch = await runner.submit([f"k{n}" for n in range(5)])
        seen: list[BatchState] = []
        with anyio.fail_after(10):
            async with anyio.create_task_group() as tg:

                async def watch() -> None:
                    async for status in runner.watch(batch.id):
                        seen.append(status.state)

                tg.start_soon(watch)
                await anyio.wait_all_tasks_blocked()
                await runner.run(batch.id)
        assert seen[0] is BatchState.QUEUED
        assert seen[-1] is BatchState.COMPLETED
