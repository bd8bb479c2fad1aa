"""The Dramatiq broker and actor of the comparison: Redis broker, Redis result backend.

The Redis URL comes from ``PEERS_DRAMATIQ_URL``. The actor stores its results (and its
errors) so that the host can count them, and does not retry: Dramatiq retries a failed
message up to 20 times by default, the other systems not at all.
"""

from __future__ import annotations

import os

import dramatiq
from dramatiq.brokers.redis import RedisBroker
from dramatiq.results import Results
from dramatiq.results.backends.redis import RedisBackend
from marks import run_item

__all__ = ["QUEUE", "backend", "broker", "item"]

URL = os.environ.get("PEERS_DRAMATIQ_URL", "redis://127.0.0.1:6379/14")
QUEUE = "peers"

broker = RedisBroker(url=URL)
backend = RedisBackend(url=URL)
broker.add_middleware(Results(backend=backend))
dramatiq.set_broker(broker)


@dramatiq.actor(queue_name=QUEUE, max_retries=0, store_results=True)
def item(n: int, tag: str) -> None:
    """Run item ``n`` under ``tag``; every 10th raises."""
    run_item(n, tag)
