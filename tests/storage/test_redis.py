"""RedisStorage against the real Redis: key layout, awkward keys, faults, processes, TTL.

The contract suite runs on Redis through ``storage_factory`` (test_contract.py); these are
the behaviours only a Redis store has.
"""

from __future__ import annotations

import contextlib
import secrets
from collections import Counter
from typing import TYPE_CHECKING, Any

import anyio
import anyio.lowlevel
import pytest
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError

from batchkit import BatchRunner, BatchState, ItemSpec, ItemState, open_storage
from batchkit.storage.redis import BATCH_KEYS, RedisStorage

from .conftest import REDIS_URL, drop_redis_keys, require_server
from .test_sql import (
    AWKWARD,
    _check_shared_run,
    _run_processes,
    _run_while_killing,
    check_claims_carry_their_batch,
    check_claims_in_doubt,
    check_lost_replies,
)

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
        assert {"meta", "keys", "items", "payloads"} <= names


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
            own = name.removeprefix(f"{prefix}:")  # the random prefix may hold "a:b" itself
            for key in keys:
                if len(key) > 2 and key not in (" a", "a ", "A", "a", "%", "_"):
                    assert key not in own, (key, name)


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
            await _run_while_killing(storage, kill, logger_name="batchkit.storage.redis")
    finally:
        await client.aclose()
        await admin.aclose()


@pytest.mark.serial  # flushes every script of the server, other tests' too
async def test_script_flush_during_a_run_is_survived(prefix: str) -> None:
    admin = Redis.from_url(REDIS_URL)

    async def flush() -> int:
        await admin.script_flush()
        return 1

    try:
        async with RedisStorage(REDIS_URL, prefix=prefix) as storage:
            await _run_while_killing(
                storage, flush, logger_name="batchkit.storage.redis", needs_retry=False
            )
    finally:
        await admin.aclose()


@pytest.mark.serial  # flushes every script of the server, other tests' too
async def test_scripts_flushed_again_and_again_fail_no_call(prefix: str) -> None:
    # Flushed in a loop, the scripts can be lost again between redis-py loading one and
    # running it: the storage runs it once more (it did not run), never a StorageError.
    admin = Redis.from_url(REDIS_URL)
    flushes = 0

    async def flush_forever() -> None:
        nonlocal flushes
        while True:
            await admin.script_flush()
            flushes += 1
            await anyio.sleep(0.002)

    try:
        async with RedisStorage(REDIS_URL, prefix=prefix) as storage:
            runner = BatchRunner(storage, _noop)
            async with anyio.create_task_group() as tg:
                tg.start_soon(flush_forever)
                for _ in range(20):
                    batch = await runner.submit([f"item-{n}" for n in range(20)])
                    assert (await runner.run(batch.id)).state is BatchState.COMPLETED
                tg.cancel_scope.cancel()
    finally:
        await admin.aclose()
    assert flushes > 20


async def test_two_runner_processes_share_one_batch(prefix: str, tmp_path: Path) -> None:
    keys = [f"item-{n}" for n in range(2_000)]
    async with RedisStorage(REDIS_URL, prefix=prefix) as storage:
        runner = BatchRunner(storage, _noop)
        batch = await runner.submit(keys)
        finals, logs = await _run_processes(2, REDIS_URL, prefix, batch.id, tmp_path)
        await _check_shared_run(storage, batch.id, keys, finals, logs)


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


@pytest.mark.serial  # counts the server's script calls: another test's would be counted
@pytest.mark.parametrize("grouped", [False, True], ids=["alone", "grouped"])
async def test_a_run_costs_one_script_call_per_item(
    prefix: str, monkeypatch: pytest.MonkeyPatch, grouped: bool
) -> None:
    """Finishing an item and claiming the next is ONE call, sent on the hot path (a
    kept connection, the command's constant part packed once), not through redis-py's
    command layer; grouped, one call finishes up to 16 items and claims as many."""
    admin = Redis.from_url(REDIS_URL, decode_responses=True)
    slow: Counter[str] = Counter()
    script = RedisStorage._script

    async def counted(self: RedisStorage, name: str, *args: Any, **kwargs: Any) -> Any:
        slow[name] += 1
        return await script(self, name, *args, **kwargs)

    try:
        async with RedisStorage(REDIS_URL, prefix=prefix) as storage:
            runner = BatchRunner(storage, _noop, group_commit=0.005 if grouped else 0)
            # A server whose scripts were flushed (by a test before this one) has the
            # first call of each script load it: a warm-up run, not counted.
            await runner.run((await runner.submit(["warm-up"])).id)
            batch = await runner.submit([f"item-{n}" for n in range(100)])
            monkeypatch.setattr(RedisStorage, "_script", counted)
            before = (await admin.info("commandstats"))["cmdstat_evalsha"]["calls"]
            final = await runner.run(batch.id)
            after = (await admin.info("commandstats"))["cmdstat_evalsha"]["calls"]
        assert final.counts[ItemState.SUCCEEDED] == 100
        assert slow["FINISH"] == slow["CLAIM"] == slow["FINISH_GROUP"] == 0, slow
        # 100 finish-and-claim calls and the first claim; reads of the batch around the
        # run add a few (another process using this Redis would add more: none in CI).
        # Grouped: measured 11 (the first item alone, then groups of up to 16); the
        # margin is for a slower machine, where a group holds fewer items.
        if grouped:
            assert 7 <= after - before <= 40, after - before
        else:
            assert 101 <= after - before <= 106, after - before
    finally:
        await admin.aclose()


async def test_a_batch_written_in_chunks_appears_whole_or_not_at_all(prefix: str) -> None:
    async with (
        RedisStorage(REDIS_URL, prefix=prefix, chunk_size=50) as writer,
        RedisStorage(REDIS_URL, prefix=prefix) as reader,
    ):
        runner = BatchRunner(writer, _noop)
        seen: list[int] = []
        batch_ids: list[str] = []
        polls = 0

        async def submit() -> None:
            batch_ids.append((await runner.submit([f"item-{n}" for n in range(3_000)])).id)

        async with anyio.create_task_group() as tg:
            tg.start_soon(submit)
            while not batch_ids:  # reading as a stranger would, while the batch is written
                polls += 1
                for record in await reader.list_batches():
                    seen.append(record.total)
                    items = await reader.list_items(record.id, after=2_990, limit=100)
                    assert [item.position for item in items] == list(range(2_991, 3_000))
                await anyio.lowlevel.checkpoint()
        assert polls >= 5, "the batch was written before anyone looked: the test proved nothing"
        assert set(seen) <= {3_000}
        assert (await reader.get_batch(batch_ids[0])).total == 3_000


async def test_watch_falls_back_to_polling_when_pubsub_fails(
    prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with RedisStorage(REDIS_URL, prefix=prefix, poll_interval=0.05) as storage:
        runner = BatchRunner(storage, _noop)
        batch = await runner.submit(["a", "b"])

        class BrokenPubSub:
            async def subscribe(self, *channels: str) -> None:
                raise RedisConnectionError("pub/sub is down")

            async def aclose(self) -> None:
                return None

        monkeypatch.setattr(storage.client, "pubsub", BrokenPubSub)
        states = []
        with anyio.fail_after(10):
            async with anyio.create_task_group() as tg:

                async def watch() -> None:
                    async for status in runner.watch(batch.id):
                        states.append(status.state)

                tg.start_soon(watch)
                await runner.run(batch.id)
        assert states[-1] is BatchState.COMPLETED


class LosesReplies(RedisStorage):
    """A RedisStorage whose next ``lose`` writes run on the server, and then lose their
    reply as if the connection had dropped at that moment."""

    lose = 0

    async def _call(self, work: Callable[[], Awaitable[Any]], *, write: bool = True) -> Any:
        async def ran_then_dropped() -> Any:
            result = await work()
            if write and self.lose:
                self.lose -= 1
                raise RedisConnectionError("the connection dropped before the reply came")
            return result

        return await super()._call(ran_then_dropped, write=write)


async def test_a_redis_claim_carries_its_batch(prefix: str) -> None:
    async with RedisStorage(REDIS_URL, prefix=prefix) as storage:
        await check_claims_carry_their_batch(storage)


async def test_a_claim_or_finish_whose_reply_was_lost_is_not_done_twice(prefix: str) -> None:
    async with LosesReplies(REDIS_URL, prefix=prefix) as storage:
        await check_lost_replies(storage)


async def test_a_claim_in_doubt_past_the_retries_is_taken_by_the_next_claim(
    prefix: str,
) -> None:
    async with LosesReplies(REDIS_URL, prefix=prefix) as storage:
        await check_claims_in_doubt(storage)
