"""RedisStorage: batches and items in Redis or Valkey, transitions in Lua scripts.

Needs the ``redis`` extra (``pip install 'batchkit[redis]'``).
"""

from __future__ import annotations

from .._url import require

require("redis", "redis")

from .storage import BATCH_KEYS as BATCH_KEYS  # noqa: E402
from .storage import RedisStorage as RedisStorage  # noqa: E402

__all__ = ["BATCH_KEYS", "RedisStorage"]
