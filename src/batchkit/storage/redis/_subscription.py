"""RedisStorage's subscriptions: a batch's pub/sub channel, polling when it fails."""

from __future__ import annotations

import logging
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

import anyio
import anyio.lowlevel

from .._polling import PollingSubscription
from ._wire import TRANSIENT

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Callable

    from redis.asyncio import Redis

    from ...protocols import Subscription

__all__ = ["PubSubSubscription", "subscribe"]

logger = logging.getLogger("batchkit.storage.redis")


@asynccontextmanager
async def subscribe(
    client: Redis, channel: str, poll_interval: float
) -> AsyncIterator[Subscription]:
    """Wait for the messages of ``channel``; poll every ``poll_interval`` if it fails."""
    pubsub = client.pubsub()
    subscription: PubSubSubscription | PollingSubscription
    try:
        await pubsub.subscribe(channel)
        with anyio.fail_after(5):
            while True:  # confirmed: no change made from now on is missed
                message = await pubsub.get_message(timeout=1.0)
                if message is not None and message.get("type") in ("subscribe", b"subscribe"):
                    break
        subscription = PubSubSubscription(pubsub, poll_interval)
    except (*TRANSIENT, TimeoutError):
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
            except TRANSIENT:
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
        except TRANSIENT:
            logger.warning("a batch's change channel failed: polling", exc_info=True)
            self._broken = True
