"""RedisStorage's subscriptions: a batch's pub/sub channel, polling when it fails.

On a Redis Cluster the channel is subscribed to on the node that serves its slot (the
batch's, through its hash tag); a message published on any node reaches every node.
Before redis-py 8 a cluster client has no pub/sub: a `watch` then polls.
"""

from __future__ import annotations

import logging
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

import anyio
import anyio.lowlevel
from redis import exceptions as redis_errors

from .._polling import PollingSubscription
from ._wire import SETTLING, TRANSIENT

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Callable

    from redis.asyncio import Redis
    from redis.asyncio.cluster import RedisCluster

    from ...protocols import Subscription

__all__ = ["PubSubSubscription", "subscribe"]

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

    async def wait(self, timeout: float) -> None:
        if self._broken:
            await anyio.sleep(min(timeout, self._poll_interval))
            return
        try:
            with anyio.move_on_after(timeout):
                while True:
                    message = await self._pubsub.get_message(
                        ignore_subscribe_messages=True, timeout=timeout
                    )
                    if message is not None:
                        break
                    await anyio.lowlevel.checkpoint()
            # Several changes may be waiting: one wake-up covers them all.
            while await self._pubsub.get_message(ignore_subscribe_messages=True, timeout=0.0):
                pass
        except _FAILED:
            logger.warning("a batch's change channel failed: polling", exc_info=True)
            self._broken = True
