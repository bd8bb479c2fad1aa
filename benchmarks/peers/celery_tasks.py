"""The Celery app of the comparison: Redis as broker and result backend.

The Redis URL comes from ``PEERS_CELERY_URL`` (a database of its own, emptied after the
run). Results are kept (``task_ignore_result`` off), so the host can count them.
"""

from __future__ import annotations

import os

from celery import Celery
from marks import run_item

__all__ = ["app", "item"]

URL = os.environ.get("PEERS_CELERY_URL", "redis://127.0.0.1:6379/11")

app = Celery("peers", broker=URL, backend=URL)
app.conf.update(
    task_ignore_result=False,
    broker_connection_retry_on_startup=True,
    worker_redirect_stdouts=False,
)


@app.task(name="peers.item")
def item(n: int, tag: str) -> None:
    """Run item ``n`` under ``tag``; every 10th raises."""
    run_item(n, tag)
