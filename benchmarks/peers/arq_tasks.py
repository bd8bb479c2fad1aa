"""The arq function and worker settings of the comparison.

The Redis URL comes from ``PEERS_ARQ_URL`` and the number of jobs run at once from
``PEERS_CONCURRENCY``. arq logs a line at INFO for every job it starts and ends; the
worker's start-up hook raises its logger to WARNING, as the other workers are run.
"""

from __future__ import annotations

import logging
import os
from typing import Any, ClassVar

from arq.connections import RedisSettings
from marks import run_item

__all__ = ["WorkerSettings", "item"]

URL = os.environ.get("PEERS_ARQ_URL", "redis://127.0.0.1:6379/13")


async def item(ctx: dict[str, Any], n: int, tag: str) -> None:
    """Run item ``n`` under ``tag``; every 10th raises."""
    run_item(n, tag)


async def _quiet(ctx: dict[str, Any]) -> None:
    logging.getLogger("arq").setLevel(logging.WARNING)


class WorkerSettings:
    """What ``arq arq_tasks.WorkerSettings`` runs."""

    functions: ClassVar[list[Any]] = [item]
    redis_settings = RedisSettings.from_dsn(URL)
    max_jobs = int(os.environ.get("PEERS_CONCURRENCY", "1"))
    on_startup = _quiet
