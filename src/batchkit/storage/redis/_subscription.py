"""RedisStorage's subscriptions: a batch's pub/sub channel, polling when it fails; and
the storage's channel of new work, relayed to an idle worker's `Flag`.

On a Redis Cluster the channel is subscribed to on the node that serves its slot (the
batch's, through its hash tag); a message published on any node reaches every node.
Before redis-py 8 a cluster client has no pub/sub: a `watch` then polls.
"""

from __future__ import annotations

import logging
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

import anyio
import anyio.abc
import anyio.lowlevel
from redis import exceptions as redis_errors

from .._bell import Flag
from .._polling import PollingSubscription
from ._wire import SETTLING, TRANSIENT

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Callable

    from redis.asyncio import Redis
    from redis.asyncio.cluster import RedisCluster

    from ...protocols import Subscription

__all__ = ["PubSubSubscription", "subscribe", "work_flag"]

logger = logging.getLogger("batchkit.storage.redis")

#: What may fail a subscription that polling outlives: an outage, a cluster settling.
_FAILED = (*TRANSIENT, *SETTLING, redis_errors.RedisClusterException)


@asynccontextmanager
async def subscribe(
    client: Redis | RedisCluster, channel: str, poll_interval: float
) -> AsyncIterator[Subscription]:
    """Wait for the messages of ``channel``; poll every ``poll_interval`` if it fails."""
    if not hasattr(client, "pubsub"):  # a cluster client before redis-py 8
        yield PollingSubscription(poll_interval)
        return
    pubsub: Any = client.pubsub()
    subscription: PubSubSubscription | PollingSubscription
    try:
        await pubsub.subscribe(channel)
        with anyio.fail_after(5):
            while True:  # confirmed: no change made from now on is missed
                message = await pubsub.get_message(timeout=1.0)
                if message is not None and message.get("type") in ("subscribe", b"subscribe"):
                    break
        subscription = PubSubSubscription(pubsub, poll_interval)
    except (*_FAILED, TimeoutError):
        logger.warning("could not subscribe to a batch's changes: polling", exc_info=True)
        subscription = PollingSubscription(poll_interval)
    try:
        yield subscription
    finally:
        with anyio.CancelScope(shield=True):
            # redis-py types `aclose` from 8.2 on; through a typed name, the same
            # code checks against the older, untyped releases too.
            close: Callable[[], Awaitable[None]] = pubsub.aclose
            try:
                await close()
            except _FAILED:
                logger.debug("could not close a subscription", exc_info=True)


class PubSubSubscription:
    """Wakes its reader on a message of the channel; polls once the channel failed."""

    def __init__(self, pubsub: Any, poll_interval: float) -> None:
        self._pubsub = pubsub
        self._poll_interval = poll_interval
        self._broken = False

    @property
    def broken(self) -> bool:
        """Whether the channel failed (the subscription polls from then on)."""
        return self._broken

    async def wait(self, timeout: float) -> None:
        if self._broken:
            await anyio.sleep(min(timeout, self._poll_interval))
            return
        await self.message(timeout)

    async def message(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for a message: whether one came (`False` too
        when the channel fails, which makes it `broken`)."""
        came = False
        try:
            with anyio.move_on_after(timeout):
                while True:
                    message = await self._pubsub.get_message(
                        ignore_subscribe_messages=True, timeout=timeout
                    )
                    if message is not None:
                        came = True
                        break
                    await anyio.lowlevel.checkpoint()
            # Several changes may be waiting: one wake-up covers them all.
            while await self._pubsub.get_message(ignore_subscribe_messages=True, timeout=0.0):
                pass
        except _FAILED:
            logger.warning("a change channel failed: polling", exc_info=True)
            self._broken = True
            return False
        return came


@asynccontextmanager
async def work_flag(
    client: Redis | RedisCluster, channel: str, poll_interval: float
) -> AsyncIterator[Flag]:
    """A `Flag` rung at every message of ``channel`` (new work) while the block runs."""
    flag = Flag()
    async with anyio.create_task_group() as tg:
        # Subscribed before the waiter's first claim: nothing published after it is missed.
        await tg.start(_relay, client, channel, flag, poll_interval)
        try:
            yield flag
        finally:
            tg.cancel_scope.cancel()


async def _relay(
    client: Redis | RedisCluster,
    channel: str,
    flag: Flag,
    poll_interval: float,
    *,
    task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
) -> None:
    if not hasattr(client, "pubsub"):
        # A cluster client before redis-py 8 has no pub/sub: the waiter's timeout finds work.
        task_status.started()
        return
    pause = poll_interval
    started = False
    while True:
        async with subscribe(client, channel, poll_interval) as sub:
            if isinstance(sub, PubSubSubscription):
                pause = poll_interval
                if started:
                    flag.ring()  # what came while nobody listened is looked for now
            if not started:
                started = True
                task_status.started()
            while isinstance(sub, PubSubSubscription) and not sub.broken:
                if await sub.message(60.0):
                    flag.ring()
        # The server is away: subscribe again, less and less often.
        await anyio.sleep(pause)
        pause = min(pause * 2, 30.0)
