"""RedisStorage: batches and items in Redis or Valkey, every transition one Lua script."""

from __future__ import annotations

import hashlib
import logging
import math
import time
from contextlib import asynccontextmanager
from functools import partial
from typing import TYPE_CHECKING, Any, TypeVar, cast

import anyio
from redis import exceptions as redis_errors
from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster

from ..._collector import collector_paused
from ..._secrets import safe_url, unparsable, url_secrets
from ...codec import dumps, loads
from ...exceptions import BatchNotFound, InvalidStorageURL, ItemNotFound, StorageError
from ...ids import is_batch_id, new_token
from ...models import ItemState
from ...protocols import (
    BatchInfo,
    BatchRecord,
    Claim,
    ClaimRequest,
    FinishedBatch,
    FinishResult,
    GroupResult,
    Lease,
    LeaseStatus,
    MetadataFilter,
    NewBatch,
    Outcome,
    Subscription,
)
from .._base import KEY_PREFIX, AsyncContext, check_group, retrying
from .._base import validate_prefix as _validate_prefix
from .._doubt import ClaimsInDoubt
from . import _cluster, _lua
from ._index import PAGE, IndexedBatches
from ._records import ITEM_FIELDS, matches, text, to_group, to_item, to_record
from ._subscription import subscribe, work_flag
from ._wire import Lanes, bulk, classify, client_secrets, evalsha

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Sequence

    from ...protocols import ItemRecord

__all__ = ["RedisStorage", "validate_prefix"]

logger = logging.getLogger("batchkit.storage.redis")

T = TypeVar("T")

#: The keys of one batch, in the order the scripts take them (see `_lua`).
BATCH_KEYS = (
    "meta",
    "keys",
    "items",
    "payloads",
    "ready",
    "delayed",
    "delaypos",
    "running",
    "succeeded",
    "failed",
    "cancelled",
)
#: Seconds between two repairs of the finished-batch index (see `_repair_finished`).
_REPAIR_INTERVAL = 10.0


def validate_prefix(prefix: str) -> str:
    """Check a key prefix: letters, digits and ``_ . : -``, at most 64, no hash tag braces."""
    return _validate_prefix(prefix, KEY_PREFIX)


class RedisStorage(IndexedBatches, AsyncContext):
    """Batches and items in Redis (or Valkey), through redis-py's asyncio client.

    Every transition is one Lua script run atomically by the server: an item and its
    batch's counters change together, so a status is a read of one hash. The keys of one
    batch all carry the batch's hash tag (``{<batch id>}``), so they live in one slot of a
    Redis Cluster; a few index keys list the batches. Nothing a user supplies (item keys,
    payloads, metadata, idempotency keys) ever becomes part of a key name unhashed.

    A Redis Cluster is opened with ``redis+cluster://host:port/0`` (``rediss+cluster://``
    over TLS), any node of it, or with a `redis.asyncio.cluster.RedisCluster` client; a
    ``redis://`` URL that reaches a cluster node is refused when the storage opens.

    Args:
        url_or_client: a ``redis://``, ``rediss://``, ``redis+cluster://`` or
            ``rediss+cluster://`` URL, or a `redis.asyncio.Redis` or
            `redis.asyncio.cluster.RedisCluster` client the host owns (left open by
            `aclose`).
        prefix: the start of every key name (letters, digits and ``_ . : -``).
        finished_ttl: seconds a finished batch is kept, every key of it, before Redis
            expires it; `None` keeps batches until they are deleted.
        poll_interval: how often a `watch` looks again when the change channel fails.
        retries: how many times a call hit by a dropped connection is tried again.
        chunk_size: items per script call when a batch is created.
    """

    def __init__(
        self,
        url_or_client: str | Redis | RedisCluster,
        *,
        prefix: str = "batchkit",
        finished_ttl: float | None = None,
        poll_interval: float = 0.5,
        retries: int = 6,
        chunk_size: int = 2_000,
    ) -> None:
        self.prefix = validate_prefix(prefix)
        if finished_ttl is not None and finished_ttl <= 0:
            raise ValueError(f"finished_ttl must be positive seconds or None, got {finished_ttl!r}")
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be at least 1, got {chunk_size!r}")
        if isinstance(url_or_client, str):
            scheme = url_or_client.partition("://")[0].lower()
            if scheme not in ("redis", "rediss", "unix", *_cluster.CLUSTER_SCHEMES):
                raise ValueError(
                    "RedisStorage takes a redis://, rediss://, redis+cluster:// or "
                    f"rediss+cluster:// URL, got {scheme!r}"
                )
            self._cluster = scheme in _cluster.CLUSTER_SCHEMES
            if self._cluster:  # a mistake in the URL is told now, not at open
                _cluster.parse_cluster_url(url_or_client)
            self._url: str | None = url_or_client
            self._client: Redis | RedisCluster | None = None
            self._owns_client = True
            # What the storage shows of its URL is built once from its parts, the same
            # before open, while open and after close; the password is never part of it.
            self._shown = repr(safe_url(url_or_client))
            self._secrets = url_secrets(url_or_client)
        else:
            self._cluster = isinstance(url_or_client, RedisCluster)
            self._url = None
            self._client = url_or_client
            self._owns_client = False
            # Nothing of the client's connection settings is shown: they hold its password.
            self._shown = "<a host's client>"
            self._secrets = client_secrets(url_or_client)
        self._classify = partial(classify, cluster=self._cluster)
        self.finished_ttl = finished_ttl
        self.poll_interval = poll_interval
        self.retries = retries
        self.chunk_size = chunk_size
        self._scripts: dict[str, Any] = {}
        self._metadata: dict[str, dict[str, Any]] = {}
        # The tokens of claims that may have run as the server went away past the retries.
        self._doubtful: ClaimsInDoubt[str] = ClaimsInDoubt()
        self._heads: dict[str, tuple[list[str], bytes]] = {}
        # Connections kept out of the pool for the hot path (see `_hot`).
        self._lanes = Lanes()
        self._repair_due = -math.inf

    @classmethod
    def from_url(cls, url: str, **options: Any) -> RedisStorage:
        """A storage for ``url`` that owns (and on close closes) its client."""
        return cls(url, **options)

    def __repr__(self) -> str:
        return f"RedisStorage({self._shown}, prefix={self.prefix!r})"

    @property
    def client(self) -> Redis | RedisCluster:
        """The client (created on open when the storage was built from a URL)."""
        if self._client is None:
            raise StorageError("the storage is not open: use `async with RedisStorage(...)`")
        return self._client

    # -- lifecycle -------------------------------------------------------------------

    async def open(self) -> None:
        """Connect and load the scripts (reloaded by themselves if the server forgets them).

        Raises:
            InvalidStorageURL: the URL cannot be read, or it is a ``redis://`` URL and
                the server is a node of a Redis Cluster (the message names the
                ``redis+cluster://`` URL to use).
            StorageError: the server cannot be reached, or a host's client of one server
                is connected to a cluster node.
        """
        if self._client is None and self._cluster:
            assert self._url is not None
            self._client = _cluster.cluster_client(self._url)
        elif self._client is None:
            assert self._url is not None
            try:
                self._client = Redis.from_url(self._url)
            except ValueError as exc:
                # redis-py's message may quote a piece of the password (as a "port").
                raise InvalidStorageURL(
                    f"cannot open {self!r}: its URL cannot be parsed: "
                    f"{unparsable(self._url, exc, self._secrets)}"
                ) from None
        if not self._scripts:
            # (redis-py before 6 types register_script for the single-server client only.)
            client: Any = self._client
            for name, script in _lua.SCRIPTS.items():
                self._scripts[name] = client.register_script(script)
        refused = await _cluster.check_server(
            self._client, shown=repr(self), url=self._url, secrets=self._secrets
        )
        if refused is not None:
            if self._owns_client:
                await self.aclose()
            raise refused
        if self._cluster and not hasattr(self._client, "pubsub"):
            logger.info("redis-py before 8 has no pub/sub on a cluster: watch() polls")

    async def aclose(self) -> None:
        """Close the client if this storage created it; a host's client stays open."""
        await self._close_lanes()
        if self._client is not None and self._owns_client:
            await self._client.aclose()
            self._client = None
            self._scripts.clear()

    # -- keys ------------------------------------------------------------------------

    def batch_keys(self, batch_id: str) -> list[str]:
        """Every key one batch may use, in the scripts' order (all in one hash slot)."""
        return [f"{self.prefix}:{{{batch_id}}}:{name}" for name in BATCH_KEYS]

    def _channel(self, batch_id: str) -> str:
        return f"{self.prefix}:{{{batch_id}}}:changes"

    def _idempotency_key(self, key: str) -> str:
        digest = hashlib.sha256(key.encode("utf-8")).hexdigest()
        return f"{self.prefix}:idem:{digest}"

    def _ttl(self) -> str:
        return "0" if self.finished_ttl is None else str(max(1, round(self.finished_ttl)))

    def _head(self, batch_id: str) -> tuple[list[str], bytes]:
        """A batch's keys, channel and time to live: as arguments, and packed for the wire."""
        head = self._heads.get(batch_id)
        if head is None:
            if len(self._heads) >= 1_000:
                self._heads.clear()
            keys = self.batch_keys(batch_id)
            packed = b"".join(bulk(arg) for arg in [*keys, self._channel(batch_id), self._ttl()])
            head = self._heads[batch_id] = (keys, packed)
        return head

    async def _script(self, name: str, batch_id: str, *args: Any, client: Any = None) -> Any:
        keys, _ = self._head(batch_id)
        return await self._scripts[name](
            keys=keys, args=[self._channel(batch_id), self._ttl(), *args], client=client
        )

    async def _hot(self, name: str, batch_id: str, *args: str) -> Any:
        """Call a script of the runner's hot path straight on a kept connection.

        redis-py's command layer (encoding every one of the 11 keys anew, a pool checkout)
        costs more than the script; here the command's constant part is packed once per
        batch and the connection stays out of the pool between calls. Anything unusual
        (a host's single-connection or cluster client, a script the server forgot) goes
        the ordinary way.
        """
        pool = getattr(self.client, "connection_pool", None)
        if type(self.client) is not Redis or self.client.connection is not None or pool is None:
            return await self._script(name, batch_id, *args)
        _, head = self._head(batch_id)
        packed = evalsha(self._scripts[name].sha, len(BATCH_KEYS), head, args)
        try:
            return await self._lanes.send(pool, packed)
        except redis_errors.NoScriptError:
            return await self._script(name, batch_id, *args)  # loads it, then calls

    async def _close_lanes(self, *, disconnect: bool = False) -> None:
        pool = None if self._client is None else getattr(self._client, "connection_pool", None)
        await self._lanes.close(pool, disconnect=disconnect)

    # -- calls -------------------------------------------------------------------------

    async def _call(self, work: Callable[[], Awaitable[T]], *, write: bool = True) -> T:
        """Run ``work``, again after a dropped connection; writes shielded from cancellation."""
        if self._client is None:
            await self.open()
        return await retrying(
            work,
            classify=self._classify,
            fault=self._fault,
            retries=self.retries,
            write=write,
            logger=logger,
            message="transient Redis fault, retrying",
        )

    def _fault(self, exc: BaseException) -> StorageError:
        """The `StorageError` for a driver's error, without the storage's secrets."""
        return _cluster.fault(exc, cluster=self._cluster, url=self._url, secrets=self._secrets)

    # -- creating and reading --------------------------------------------------------

    async def create_batch(self, batch: NewBatch) -> tuple[BatchRecord, bool]:
        """Create a batch with all its items (see `Storage.create_batch`).

        The items are written in chunks, then one script makes the batch visible with its
        counters: a reader sees all of it or none of it.
        """
        if batch.idempotency_key is not None:
            existing = await self._claim_idempotency(batch.idempotency_key, batch.id)
            if existing is not None:
                return existing, False
        size = self.chunk_size
        chunks: list[list[Any]] = []
        for start in range(0, len(batch.items), size):
            args: list[Any] = [start]
            for key, payload in batch.items[start : start + size]:
                args.append(key)
                args.append(payload)
            chunks.append(args)
        commit = (
            batch.id,
            len(batch.items),
            dumps(batch.metadata),
            batch.parent_id or "",
            batch.idempotency_key or "",
            "" if batch.max_failures is None else str(batch.max_failures),
        )
        if len(chunks) == 1 and not self._cluster:
            # A small batch (a submit from a web request): its items and its commit in one
            # round trip (both scripts are idempotent: a retry sends both again).
            reply = await self._call(lambda: self._chunk_and_commit(batch.id, chunks[0], commit))
        else:
            for args in chunks:
                await self._call(partial(self._script, "CHUNK", batch.id, *args))
            reply = await self._call(lambda: self._script("COMMIT", batch.id, *commit))
        record = to_record(reply[1], self._metadata)
        await self._call(lambda: self._index_new(batch.id, record, bool(reply[2])))
        # Created now, or by our own earlier attempt whose answer a dropped connection lost.
        return record, True

    async def _chunk_and_commit(
        self, batch_id: str, chunk: list[Any], commit: tuple[Any, ...]
    ) -> Any:
        pipe = self.client.pipeline(transaction=False)
        await self._script("CHUNK", batch_id, *chunk, client=pipe)
        await self._script("COMMIT", batch_id, *commit, client=pipe)
        return (await pipe.execute())[-1]

    async def _claim_idempotency(self, key: str, batch_id: str) -> BatchRecord | None:
        """Take the idempotency key for ``batch_id``; the existing batch if it is taken."""
        name = self._idempotency_key(key)
        deadline = time.monotonic() + 10.0
        while True:
            taken = await self._call(lambda: self.client.set(name, batch_id, nx=True))
            if taken:
                return None
            owner = text(await self._call(lambda: self.client.get(name), write=False))
            if owner is None:
                continue  # released meanwhile: try again
            if owner == batch_id:
                return None  # our own earlier attempt
            try:
                return await self.get_batch(owner)
            except BatchNotFound:
                pass
            # Its submitter is still writing the items, or died doing so.
            if time.monotonic() >= deadline:
                raise StorageError(
                    f"a batch with idempotency key {key!r} ({owner}) is still being created, "
                    "or its submitter died while creating it"
                )
            await anyio.sleep(0.05)

    async def get_batch(self, batch_id: str) -> BatchRecord:
        """Read a batch and its counts: one script reading one hash (see `Storage.get_batch`)."""
        if not is_batch_id(batch_id):
            raise BatchNotFound(batch_id)
        reply = await self._call(lambda: self._script("RECORD", batch_id), write=False)
        if not reply:
            raise BatchNotFound(batch_id)
        return to_record(reply, self._metadata)

    async def get_item(self, batch_id: str, key: str) -> ItemRecord:
        """Read one item (see `Storage.get_item`)."""
        if not is_batch_id(batch_id):
            raise BatchNotFound(batch_id)
        reply = await self._call(lambda: self._script("ITEM", batch_id, key), write=False)
        if reply[0] == 0:
            raise BatchNotFound(batch_id)
        if reply[0] == 1:
            raise ItemNotFound(batch_id, key)
        return to_item(batch_id, reply[1:])

    async def list_items(
        self,
        batch_id: str,
        *,
        states: Collection[ItemState] | None = None,
        after: int | None = None,
        limit: int = 100,
    ) -> list[ItemRecord]:
        """List items in position order, from sorted sets (see `Storage.list_items`)."""
        if not is_batch_id(batch_id):
            raise BatchNotFound(batch_id)
        wanted: list[str] = []
        if states is not None:
            wanted = sorted({ItemState(state).value for state in states})
            if not wanted:
                await self.get_batch(batch_id)  # still an error for an unknown batch
                return []
        start = -1 if after is None else max(-1, int(after))
        if limit <= 0:
            await self.get_batch(batch_id)
            return []
        reply = await self._call(
            lambda: self._script("ITEMS", batch_id, start, int(limit), *wanted), write=False
        )
        if reply[0] == 0:
            raise BatchNotFound(batch_id)
        with collector_paused():
            return [
                to_item(batch_id, reply[at : at + ITEM_FIELDS])
                for at in range(1, len(reply), ITEM_FIELDS)
            ]

    async def list_batches(
        self,
        *,
        metadata: MetadataFilter | None = None,
        parent_id: str | None = None,
        before: str | None = None,
        limit: int = 100,
    ) -> list[BatchRecord]:
        """List batches newest first (see `Storage.list_batches`).

        The batch index is read newest first, a page at a time; filters are applied to
        the records read (Redis has no secondary index over metadata).
        """
        page: list[BatchRecord] = []
        upper = "+" if before is None else f"({before}"
        while len(page) < limit:
            ids = await self._page("batches", upper, newest_first=True)
            if not ids:
                break
            records = await self._records(ids)
            gone = []
            for batch_id, record in zip(ids, records, strict=True):
                if record is None:
                    gone.append(batch_id)
                    continue
                if parent_id is not None and record.parent_id != parent_id:
                    continue
                if metadata and not matches(record.metadata, metadata):
                    continue
                page.append(record)
                if len(page) >= limit:
                    break
            if gone:  # expired (finished_ttl) or deleted: forget them
                await self._call(partial(self._forget, gone))
            upper = f"({ids[-1]}"
        return page

    # -- claiming and finishing ------------------------------------------------------

    async def claim(self, request: ClaimRequest) -> Claim | None:
        """Claim the oldest claimable item (see `Storage.claim`)."""
        for batch_id in self._doubtful.batches(request):
            claim = await self._claim_in(batch_id, request)
            if claim is not None:
                return claim
        if request.batch_ids is not None:
            for batch_id in sorted({b for b in request.batch_ids if is_batch_id(b)}):
                claim = await self._claim_in(batch_id, request)
                if claim is not None:
                    return claim
            return None
        lower = "-"
        while True:
            ids = await self._page("active", lower)
            if not ids:
                return None
            for batch_id in ids:
                claim = await self._claim_in(batch_id, request)
                if claim is not None:
                    return claim
            lower = f"({ids[-1]}"

    async def _claim_in(self, batch_id: str, request: ClaimRequest) -> Claim | None:
        if request.metadata:
            try:
                record = await self.get_batch(batch_id)
            except BatchNotFound:
                return None
            if not matches(record.metadata, request.metadata):
                return None
        token = self._doubtful.take(batch_id)
        tries = 0 if token is None else 1  # a claim in doubt is asked for first
        if token is None:
            token = new_token()

        def claim() -> Awaitable[Any]:
            # Every try sends the same token; a retry asks for an earlier try's claim first.
            nonlocal tries
            again, tries = "1" if tries else "", tries + 1
            return self._hot("CLAIM", batch_id, repr(float(request.lease_seconds)), token, again)

        try:
            reply = await self._call(claim)
        except StorageError:
            self._doubtful.remember(batch_id, token)
            raise
        return await self._settle_claim(batch_id, token, reply[:-1], bool(reply[-1]))

    async def _settle_claim(
        self, batch_id: str, token: str, claim: list[Any], finished: bool
    ) -> Claim | None:
        code = claim[0]
        if finished or code == 3:
            await self._call(lambda: self._finished(batch_id))
        elif code == 2:
            await self._call(lambda: self._forget([batch_id]))
        if code != 1:
            return None
        _, key, position, payload, attempt, history = claim[:6]
        batch = None
        if len(claim) > 7 and claim[6] is not None:
            # The batch's metadata and failure limit, read by CLAIM (not by FINISH's claim).
            metadata = self._metadata.get(batch_id)
            if metadata is None:
                metadata = cast("dict[str, Any]", loads(text(claim[6])))
            limit = claim[7]
            batch = BatchInfo(metadata, None if limit is None else int(limit))
        return Claim(
            lease=Lease(batch_id, text(key), token, int(attempt)),
            position=int(position),
            payload=loads(text(payload)),
            history=None if history is None else text(history),
            batch=batch,
        )

    async def heartbeat(self, lease: Lease, *, lease_seconds: float) -> LeaseStatus:
        """Extend a current lease (see `Storage.heartbeat`)."""
        return await self._extend(lease, repr(float(lease_seconds)), "", None)

    async def record_progress(
        self,
        lease: Lease,
        progress: float,
        message: str | None,
        *,
        lease_seconds: float | None = None,
    ) -> LeaseStatus:
        """Record progress of a running item: one script (see `Storage.record_progress`)."""
        seconds = "" if lease_seconds is None else repr(float(lease_seconds))
        return await self._extend(lease, seconds, repr(float(progress)), message)

    async def _extend(
        self, lease: Lease, seconds: str, progress: str, message: str | None
    ) -> LeaseStatus:
        if not is_batch_id(lease.batch_id):
            return LeaseStatus(held=False)
        held, cancel = await self._call(
            lambda: self._hot(
                "EXTEND",
                lease.batch_id,
                lease.key,
                lease.token,
                seconds,
                progress,
                message or "",
                "0" if message is None else "1",
            )
        )
        return LeaseStatus(held=bool(held), cancel_requested=bool(held) and bool(cancel))

    async def finish(
        self,
        lease: Lease,
        outcome: Outcome,
        *,
        then_claim: ClaimRequest | None = None,
    ) -> FinishResult:
        """End a leased attempt and claim the next item of the batch: ONE script."""
        same_batch = (
            then_claim is not None
            and then_claim.batch_ids == (lease.batch_id,)
            and not then_claim.metadata
        )
        token = new_token()
        lease_arg = repr(float(then_claim.lease_seconds)) if same_batch and then_claim else ""
        accepted = False
        claim: Claim | None = None
        tries = 0

        def finish() -> Awaitable[Any]:
            # A retry names the leased attempt: what an earlier try did is recognised.
            nonlocal tries
            again, tries = str(lease.attempt) if tries else "", tries + 1
            return self._hot(
                "FINISH",
                lease.batch_id,
                lease.key,
                lease.token,
                outcome.state.value,
                outcome.result or "",
                "" if outcome.error is None else outcome.error.model_dump_json(),
                repr(max(0.0, float(outcome.delay))),
                lease_arg,
                token,
                outcome.history or "",
                again,
            )

        if is_batch_id(lease.batch_id):
            try:
                reply = await self._call(finish)
            except StorageError:
                if same_batch:
                    self._doubtful.remember(lease.batch_id, token)
                raise
            found = reply[0]
            if isinstance(found, list):  # tried again: did an earlier try land?
                accepted = outcome.landed(lease, text(found[0]), int(found[1]))
            else:
                accepted = bool(found)
            if bool(reply[1]):
                await self._call(lambda: self._finished(lease.batch_id))
            if same_batch:
                claim = await self._settle_claim(lease.batch_id, token, reply[2:], False)
        if then_claim is not None and not same_batch:
            claim = await self.claim(then_claim)
        return FinishResult(accepted=accepted, claim=claim)

    async def finish_group(
        self,
        batch_id: str,
        succeeded: Sequence[tuple[Lease, Outcome]],
        *,
        claim: int,
        lease_seconds: float,
    ) -> GroupResult:
        """End several attempts and claim the batch's next items: ONE script (see
        `GroupCommitter.finish_group`)."""
        check_group(batch_id, succeeded, claim)
        if not is_batch_id(batch_id) or not (succeeded or claim):
            return GroupResult(accepted=[False] * len(succeeded), claims=[])
        token = new_token()
        args = [repr(float(lease_seconds)), token, str(claim)]
        for lease, outcome in succeeded:
            args += (lease.key, lease.token, outcome.result or "", outcome.history or "")
        tries = 0

        def call() -> Awaitable[Any]:
            nonlocal tries
            again, tries = "1" if tries else "", tries + 1
            return self._hot("FINISH_GROUP", batch_id, *args[:3], again, *args[3:])

        reply = await self._call(call)
        if reply[0] or reply[1] == 3:  # finished now, or found finished
            await self._call(lambda: self._finished(batch_id))
        return to_group(batch_id, token, succeeded, reply)

    async def cancel_batch(self, batch_id: str, *, reason: str | None = None) -> BatchRecord:
        """Request a batch's cancel (see `Storage.cancel_batch`)."""
        if not is_batch_id(batch_id):
            raise BatchNotFound(batch_id)
        found, finished = await self._call(lambda: self._script("CANCEL", batch_id, reason or ""))
        if not found:
            raise BatchNotFound(batch_id)
        if finished:
            await self._call(lambda: self._finished(batch_id))
        return await self.get_batch(batch_id)

    # -- completion hooks, notification, retention -------------------------------------

    async def claim_finished_batch(
        self, *, lease_seconds: float, batch_id: str | None = None
    ) -> FinishedBatch | None:
        """Claim a finished batch whose hook is due (see `Storage.claim_finished_batch`)."""
        if batch_id is not None:
            if not is_batch_id(batch_id):
                raise BatchNotFound(batch_id)
            found = await self._claim_hook(batch_id, lease_seconds)
            if found == "gone":
                raise BatchNotFound(batch_id)
            return found if isinstance(found, FinishedBatch) else None
        now = time.monotonic()
        if now >= self._repair_due:
            # Workers look for due hooks every second or so; the repair reads every active
            # batch, so it runs at most once per interval.
            self._repair_due = now + _REPAIR_INTERVAL
            await self._repair_finished()
        lower = "-"
        while True:
            ids = await self._page("hooks", lower)
            if not ids:
                return None
            for candidate in ids:
                found = await self._claim_hook(candidate, lease_seconds)
                if isinstance(found, FinishedBatch):
                    return found
                if found in ("gone", "done"):
                    await self._call(partial(self.client.zrem, self._index("hooks"), candidate))
            lower = f"({ids[-1]}"

    async def _claim_hook(self, batch_id: str, lease_seconds: float) -> FinishedBatch | str:
        token = new_token()
        reply = await self._call(
            lambda: self._script("HOOK_CLAIM", batch_id, repr(float(lease_seconds)), token)
        )
        code = reply[0]
        if code == 1:
            return FinishedBatch(record=to_record(reply[1], self._metadata), token=token)
        return {0: "not due", 2: "gone", 3: "done"}[code]

    async def _repair_finished(self) -> None:
        # A runner that died between finishing a batch's last item and indexing the
        # batch as finished left it among the active ones: index it now, so its hook fires.
        lower = "-"
        while True:
            ids = await self._page("active", lower)
            if not ids:
                return
            records = await self._records(ids)
            for batch_id, record in zip(ids, records, strict=True):
                if record is None:
                    await self._call(partial(self._forget, [batch_id]))
                elif record.finished_at is not None:
                    await self._call(partial(self._finished, batch_id))
            lower = f"({ids[-1]}"

    async def ack_finished_batch(self, batch_id: str, token: str) -> bool:
        """Record that a batch's hook ran (see `Storage.ack_finished_batch`)."""
        if not is_batch_id(batch_id):
            return False
        done = await self._call(lambda: self._script("HOOK_ACK", batch_id, token))
        if done:
            await self._call(lambda: self.client.zrem(self._index("hooks"), batch_id))
        return bool(done)

    @asynccontextmanager
    async def subscribe_work(self) -> AsyncIterator[Subscription]:
        """Wait for new work (see `WorkAnnouncer.subscribe_work`): the scripts announce
        every new batch and every item handed back on the channel ``<prefix>:work``."""
        if self._client is None:
            await self.open()
        async with work_flag(self.client, self._index("work"), self.poll_interval) as flag:
            yield flag

    @asynccontextmanager
    async def subscribe(self, batch_id: str) -> AsyncIterator[Subscription]:
        """Wait for changes of one batch, through the batch's pub/sub channel."""
        if self._client is None:
            await self.open()
        async with subscribe(
            self.client, self._channel(batch_id), self.poll_interval
        ) as subscription:
            yield subscription

    async def delete_batch(self, batch_id: str) -> bool:
        """Delete a batch, every key of it (see `Storage.delete_batch`)."""
        if not is_batch_id(batch_id):
            return False
        keys = self.batch_keys(batch_id)

        async def delete() -> bool:
            # Typed across redis-py releases (5.x types the reply as maybe not awaitable).
            idem = await cast("Awaitable[object]", self.client.hget(keys[0], "idem"))
            existed = bool(await self.client.unlink(*keys))
            if idem is not None:
                await self._scripts["RELEASE_KEY"](
                    keys=[self._idempotency_key(text(idem))], args=[batch_id]
                )
            await self._forget([batch_id])
            # Through the command: before redis-py 8, a cluster client has no `publish`.
            await self.client.execute_command("PUBLISH", self._channel(batch_id), "1")
            return existed

        return await self._call(delete)

    async def delete_finished_batches(self, *, older_than: float) -> int:
        """Delete batches finished more than ``older_than`` seconds ago (retention)."""
        seconds, micros = await self._call(lambda: self.client.time(), write=False)
        cutoff = float(seconds) + float(micros) / 1e6 - older_than
        deleted = 0
        while True:
            ids = [
                text(found)
                for found in await self._call(
                    lambda: self.client.zrangebyscore(
                        self._index("done"), "-inf", cutoff, start=0, num=PAGE
                    ),
                    write=False,
                )
            ]
            if not ids:
                return deleted
            for batch_id in ids:
                deleted += await self.delete_batch(batch_id)
