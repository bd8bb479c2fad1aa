"""The generator of the wake-up and start-up benchmarks, in a module of its own: a worker
that runs it imports nothing of the benchmarks but this."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from batchkit import ItemContext

__all__ = ["called_at"]


async def called_at(ctx: ItemContext) -> float:
    """The benchmarks' generator: the time it was called."""
    return time.time()
