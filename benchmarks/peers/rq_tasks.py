"""The RQ job function of the comparison (the queue and connection are the host's)."""

from __future__ import annotations

from marks import run_item

__all__ = ["QUEUE", "item"]

QUEUE = "peers"


def item(n: int, tag: str) -> None:
    """Run item ``n`` under ``tag``; every 10th raises."""
    run_item(n, tag)
