"""RedisStorage's batch indexes: the sorted sets that list its batches.

* ``<prefix>:batches``: every batch (`list_batches` pages through it);
* ``<prefix>:active``: the batches with items to run (a claim of any batch walks it);
* ``<prefix>:hooks``: finished batches whose completion hook is due;
* ``<prefix>:done``: finished batches by the time they finished (retention).

Batch ids are sorted by themselves (each set scores every member 0 but ``done``): ids
begin with their time, so the order is the order of creation.
"""

from __future__ import annotations

import time
from functools import partial
from typing import TYPE_CHECKING, Any, TypeVar

from . import _cluster
from ._records import text, to_record

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Iterable
    from datetime import datetime

    from redis.asyncio import Redis
    from redis.asyncio.cluster import RedisCluster

    from ...protocols import BatchRecord

__all__ = ["PAGE", "IndexedBatches"]

T = TypeVar("T")

#: Batch ids read per page of an index.
PAGE = 200


class IndexedBatches:
    """The index half of `RedisStorage` (a mixin: the storage provides what is declared)."""

    if TYPE_CHECKING:
        prefix: str
        _cluster: bool
        _scripts: dict[str, Any]
        _metadata: dict[str, dict[str, Any]]

        @property
        def client(self) -> Redis | RedisCluster: ...

        async def _call(self, work: Callable[[], Awaitable[T]], *, write: bool = True) -> T: ...

        async def _script(
            self, name: str, batch_id: str, *args: Any, client: Any = None
        ) -> Any: ...

        def batch_keys(self, batch_id: str) -> list[str]: ...

        def _channel(self, batch_id: str) -> str: ...

        def _ttl(self) -> str: ...

    def _index(self, name: str) -> str:
        return f"{self.prefix}:{name}"

    async def _index_new(self, batch_id: str, record: BatchRecord, finished: bool) -> None:
        """Index a new batch; one with items to run is announced as new work once claims
        can find it (on the channel ``<prefix>:work``)."""
        pipe = self.client.pipeline(transaction=False)
        pipe.zadd(self._index("batches"), {batch_id: 0})
        finished = finished or record.finished_at is not None
        if finished:
            self._queue_finished(pipe, batch_id, record.finished_at)
        else:
            pipe.zadd(self._index("active"), {batch_id: 0})
            if not self._cluster:
                pipe.publish(self._index("work"), "1")
        await pipe.execute()
        if self._cluster and not finished:
            # A cluster's pipeline sends a command by its key: PUBLISH goes on its own.
            await self.client.execute_command("PUBLISH", self._index("work"), "1")

    def _queue_finished(self, pipe: Any, batch_id: str, finished_at: datetime | None) -> None:
        when = time.time() if finished_at is None else finished_at.timestamp()
        pipe.zadd(self._index("hooks"), {batch_id: 0})
        pipe.zadd(self._index("done"), {batch_id: when})
        pipe.zrem(self._index("active"), batch_id)

    async def _finished(self, batch_id: str) -> None:
        """Index a batch that just finished: its hook is due, retention counts from now."""
        pipe = self.client.pipeline(transaction=False)
        self._queue_finished(pipe, batch_id, None)
        await pipe.execute()

    async def _page(self, index: str, bound: str, *, newest_first: bool = False) -> list[str]:
        """One page of an index's batch ids, from ``bound`` (``-``/``+`` or ``(<id>``)."""
        name = self._index(index)
        if newest_first:
            found = await self._call(
                partial(self.client.zrevrangebylex, name, bound, "-", start=0, num=PAGE),
                write=False,
            )
        else:
            found = await self._call(
                partial(self.client.zrangebylex, name, bound, "+", start=0, num=PAGE),
                write=False,
            )
        return [text(batch_id) for batch_id in found]

    async def _records(self, batch_ids: list[str]) -> list[BatchRecord | None]:
        async def read() -> list[Any]:
            if self._cluster:
                calls = [(self.batch_keys(b), [self._channel(b), self._ttl()]) for b in batch_ids]
                return await _cluster.cluster_records(self.client, self._scripts["RECORD"], calls)
            pipe = self.client.pipeline(transaction=False)
            for batch_id in batch_ids:
                await self._script("RECORD", batch_id, client=pipe)
            return list(await pipe.execute())

        replies = await self._call(read, write=False)
        return [to_record(reply, self._metadata) if reply else None for reply in replies]

    async def _forget(self, batch_ids: Iterable[str]) -> None:
        ids = list(batch_ids)
        if not ids:
            return
        pipe = self.client.pipeline(transaction=False)
        for name in ("batches", "active", "hooks", "done"):
            pipe.zrem(self._index(name), *ids)
        await pipe.execute()
        for batch_id in ids:
            self._metadata.pop(batch_id, None)
