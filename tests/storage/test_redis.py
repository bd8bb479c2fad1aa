"""RedisStorage against the real Redis: key layout, awkward keys, faults, processes, TTL.

The contract suite runs on Redis through ``storage_factory`` (test_contract.py); these are
the behaviours only a Redis store has.
"""

from __future__ import annotations

import contextlib
import json
import logging
import secrets
from collections import Counter
from itertools import pairwise
from typing import TYPE_CHECKING, Any

import anyio
import pytest
from redis.asyncio import Redis

from batchkit import BatchRunner, BatchState, ItemSpec, ItemState, open_storage
from batchkit.storage.redis import BATCH_KEYS, RedisStorage
from batchkit.testing.contract import all_items

from .conftest import REDIS_URL, drop_redis_keys, require_server
from .test_sql import AWKWARD, _check_accounting, _run_processes

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Callable
    from pathlib import Path

    from batchkit import ItemContext

pytestmark = pytest.mark.anyio


@pytest.fixture
async def prefix() -> AsyncIterator[str]:
    require_server(REDIS_URL, "Redis")
    name = f"t{secrets.token_hex(4)}"
    yield name
    await drop_redis_keys(REDIS_URL, name)


async def _noop(ctx: ItemContext) -> None:
    return None


async def _keys(prefix: str) -> list[str]:
    client = Redis.from_url(REDIS_URL, decode_responses=True)
    try:
        return [key async for key in client.scan_iter(match=f"{prefix}:*", count=1_000)]
    finally:
        await client.aclose()


async def test_every_key_of_a_batch_carries_its_hash_tag(prefix: str) -> None:
    async with RedisStorage(REDIS_URL, prefix=prefix) as storage:
        attempts: Counter[str] = Counter()

        async def mixed(ctx: ItemContext) -> str:
            attempts[ctx.key] += 1
            if ctx.key == "fails":
                raise ValueError("no")
            return ctx.key

        runner = BatchRunner(storage, mixed)
        first = await runner.submit(["ok", "fails", "later"], idempotency_key="ik")
        await runner.run(first.id)
        second = await runner.submit(["a", "b"])
        await runner.cancel(second.id)  # cancelled items, a cancel request
        ids = {first.id, second.id}
        for key in await _keys(prefix):
            rest = key[len(prefix) + 1 :]
            if rest in ("batches", "active", "hooks", "done") or rest.startswith("idem:"):
                continue  # the indexes shared by all batches
            tags = [batch_id for batch_id in ids if f"{{{batch_id}}}" in key]
            assert len(tags) == 1, key
            assert key in storage.batch_keys(tags[0]), key
            assert key.count("{") == key.count("}") == 1, key
        names = {key.rsplit(":", 1)[1] for key in await _keys(prefix) if "{" in key}
        assert names <= set(BATCH_KEYS)
        assert {"meta", "keys", "items", "payloads", "results"} <= names


async def test_awkward_keys_and_payloads_round_trip_and_never_name_a_key(prefix: str) -> None:
    awkward = [
        *AWKWARD,
        "{",
        "}",
        "{tag}",
        "}{",
        "a:b",
        "*",
        "?",
        "[ab]",
        "with space",
        "new\nline",
        "ünïcödé {}",
    ]
    keys = list(dict.fromkeys(awkward))

    async def echo(ctx: ItemContext) -> Any:
        return ctx.payload

    async with RedisStorage(REDIS_URL, prefix=prefix) as storage:
        runner = BatchRunner(storage, echo)
        batches = []
        for copy in range(2):  # two batches with the same keys must not meet
            specs = [ItemSpec(key=key, payload={"key": key, "copy": copy}) for key in keys]
            batches.append(await runner.submit(specs, metadata={"name": "{x}:*"}))
        for copy, batch in enumerate(batches):
            final = await runner.run(batch.id)
            assert final.counts[ItemState.SUCCEEDED] == len(keys)
            for key in keys:
                item = await runner.item(batch.id, key)
                assert item.key == key
                assert item.payload == {"key": key, "copy": copy}
                assert item.result == {"key": key, "copy": copy}
        listed = await runner.batches(metadata={"name": "{x}:*"})
        assert {b.batch_id for b in listed} == {b.id for b in batches}
        for name in await _keys(prefix):
            for key in keys:
                if len(key) > 2 and key not in (" a", "a ", "A", "a", "%", "_"):
                    assert key not in name, (key, name)


class _RetryCounter(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.count = 0

    def emit(self, record: logging.LogRecord) -> None:
        if record.getMessage().startswith("transient Redis fault"):
            self.count += 1


async def _run_under_fault(
    storage: RedisStorage, fault: Callable[[], Awaitable[int]], *, needs_retry: bool
) -> None:
    calls: Counter[str] = Counter()

    async def generate(ctx: ItemContext) -> dict[str, str]:
        calls[ctx.key] += 1
        await anyio.sleep(0.002)
        return {"key": ctx.key}

    runner = BatchRunner(storage, generate, lease_seconds=1.0, poll_interval=0.2)
    keys = [f"item-{n}" for n in range(300)]
    batch = await runner.submit(keys)
    retries = _RetryCounter()
    logger = logging.getLogger("batchkit.storage.redis")
    logger.addHandler(retries)
    hits = 0
    try:
        async with anyio.create_task_group() as tg:

            async def injector() -> None:
                nonlocal hits
                while (retries.count < 3 if needs_retry else hits < 5) and hits < 20:
                    await anyio.sleep(0.05)
                    hits += await fault()

            tg.start_soon(injector)
            with anyio.fail_after(60):
                final = await runner.run(batch.id)
            tg.cancel_scope.cancel()
    finally:
        logger.removeHandler(retries)
    assert hits >= 1
    if needs_retry:
        assert retries.count >= 1, "no call was hit: the test proved nothing"
    assert final.state is BatchState.COMPLETED
    items = await all_items(storage, batch.id, page=1_000)
    assert [item.key for item in items] == keys
    for item in items:
        assert item.state is ItemState.SUCCEEDED
        assert item.result == {"key": item.key}
        assert 1 <= calls[item.key] <= item.attempt
    _check_accounting(await runner.status(batch.id), items)


async def test_connections_killed_during_a_run_are_retried(prefix: str) -> None:
    name = f"bk-{prefix}"
    client = Redis.from_url(REDIS_URL, client_name=name)
    admin = Redis.from_url(REDIS_URL, decode_responses=True)

    async def kill() -> int:
        killed = 0
        for entry in await admin.client_list():
            if entry.get("name") == name:
                with contextlib.suppress(Exception):  # it may have closed by itself
                    killed += int(await admin.client_kill_filter(_id=entry["id"]))
        return killed

    try:
        async with RedisStorage(client, prefix=prefix) as storage:
            await _run_under_fault(storage, kill, needs_retry=True)
    finally:
        await client.aclose()
        await admin.aclose()


async def test_script_flush_during_a_run_is_survived(prefix: str) -> None:
    admin = Redis.from_url(REDIS_URL)

    async def flush() -> int:
        await admin.script_flush()
        return 1

    try:
        async with RedisStorage(REDIS_URL, prefix=prefix) as storage:
            await _run_under_fault(storage, flush, needs_retry=False)
    finally:
        await admin.aclose()


async def test_two_runner_processes_share_one_batch(prefix: str, tmp_path: Path) -> None:
    keys = [f"item-{n}" for n in range(2_000)]
    async with RedisStorage(REDIS_URL, prefix=prefix) as storage:
        runner = BatchRunner(storage, _noop)
        batch = await runner.submit(keys)
        finals, logs = await _run_processes(2, REDIS_URL, prefix, batch.id, tmp_path)
        assert [f["state"] for f in finals] == ["completed", "completed"]
        runs: dict[str, list[tuple[int, float, float]]] = {}
        for log in logs:
            for line in log.read_text(encoding="utf-8").splitlines():
                entry = json.loads(line)
                runs.setdefault(entry["key"], []).append(
                    (entry["pid"], entry["start"], entry["end"])
                )
        assert set(runs) == set(keys)
        for key, intervals in runs.items():
            intervals.sort(key=lambda run: run[1])
            for (pid_a, _, end_a), (pid_b, start_b, _) in pairwise(intervals):
                assert end_a <= start_b, f"{key} ran in {pid_a} and {pid_b} at the same time"
        assert all(len(intervals) == 1 for intervals in runs.values())
        per_process = Counter(intervals[0][0] for intervals in runs.values())
        assert set(per_process) == {f["pid"] for f in finals}, per_process
        items = await all_items(storage, batch.id, page=1_000)
        assert all(item.state is ItemState.SUCCEEDED and item.attempt == 1 for item in items)
        _check_accounting(await runner.status(batch.id), items)


async def test_finished_ttl_applies_to_every_key_of_the_batch(prefix: str) -> None:
    async with RedisStorage(REDIS_URL, prefix=prefix, finished_ttl=120) as storage:
        runner = BatchRunner(storage, _noop)
        running = await runner.submit(["x"])
        batch = await runner.submit(["a", "b", "c"])
        await runner.run(batch.id)
        client = storage.client
        for key in storage.batch_keys(batch.id):
            if await client.exists(key):
                assert 0 < await client.ttl(key) <= 120, key
        for key in storage.batch_keys(running.id):
            if await client.exists(key):
                assert await client.ttl(key) == -1, key  # not finished: kept


async def test_open_storage_and_a_host_client_left_open(prefix: str) -> None:
    storage = open_storage(REDIS_URL)
    assert isinstance(storage, RedisStorage)
    client = Redis.from_url(REDIS_URL)
    try:
        async with RedisStorage(client, prefix=prefix) as hosted:
            batch = await BatchRunner(hosted, _noop).submit(["a"])
        assert await client.ping()  # still the host's, still open
        async with RedisStorage(client, prefix=prefix) as again:
            assert (await again.get_batch(batch.id)).total == 1
    finally:
        await client.aclose()


@pytest.mark.parametrize("prefix_value", ["", "{tag}", "a b", "x" * 65, ":lead", "é"])
def test_an_invalid_prefix_is_refused(prefix_value: str) -> None:
    with pytest.raises(ValueError, match="prefix"):
        RedisStorage(REDIS_URL, prefix=prefix_value)
