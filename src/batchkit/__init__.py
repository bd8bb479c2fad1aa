"""batchkit: durable batch generation with per-item progress, errors and retries.

A host app submits a batch of items, a generator runs on each, and every item's state,
progress, error and result is kept in the store the host already has.
"""

from __future__ import annotations

import logging

from .context import ItemContext as ItemContext
from .exceptions import BatchkitError as BatchkitError
from .exceptions import BatchNotFound as BatchNotFound
from .exceptions import InvalidBatch as InvalidBatch
from .exceptions import InvalidStorageURL as InvalidStorageURL
from .exceptions import ItemNotFound as ItemNotFound
from .exceptions import MissingDependency as MissingDependency
from .exceptions import SchemaVersionMismatch as SchemaVersionMismatch
from .exceptions import StorageError as StorageError
from .models import Batch as Batch
from .models import BatchState as BatchState
from .models import BatchStatus as BatchStatus
from .models import Item as Item
from .models import ItemError as ItemError
from .models import ItemSpec as ItemSpec
from .models import ItemState as ItemState
from .models import Limits as Limits
from .protocols import Generator as Generator
from .protocols import Storage as Storage
from .protocols import SyncGenerator as SyncGenerator
from .retry import RetryPolicy as RetryPolicy
from .runner import BatchRunner as BatchRunner
from .storage import MemoryStorage as MemoryStorage
from .storage import open_storage as open_storage
from .sync import SyncBatchRunner as SyncBatchRunner
from .worker import Worker as Worker
from .worker import WorkerStats as WorkerStats

__version__ = "0.1.0"

# A library leaves logging to its host. Without a handler of its own, a record that no
# handler takes (an item that failed, in a host that configured no logging) would reach
# logging's last resort and be printed on the host's stderr.
logging.getLogger("batchkit").addHandler(logging.NullHandler())


def __getattr__(name: str) -> object:
    # Adapters with optional dependencies load on first use, so that `import batchkit`
    # needs neither SQLAlchemy nor redis.
    if name == "SQLStorage":
        from .storage.sql import SQLStorage

        return SQLStorage
    if name == "RedisStorage":
        from .storage.redis import RedisStorage

        return RedisStorage
    raise AttributeError(f"module 'batchkit' has no attribute {name!r}")


__all__ = [
    "Batch",
    "BatchNotFound",
    "BatchRunner",
    "BatchState",
    "BatchStatus",
    "BatchkitError",
    "Generator",
    "InvalidBatch",
    "InvalidStorageURL",
    "Item",
    "ItemContext",
    "ItemError",
    "ItemNotFound",
    "ItemSpec",
    "ItemState",
    "Limits",
    "MemoryStorage",
    "MissingDependency",
    "RedisStorage",
    "RetryPolicy",
    "SQLStorage",
    "SchemaVersionMismatch",
    "Storage",
    "StorageError",
    "SyncBatchRunner",
    "SyncGenerator",
    "Worker",
    "WorkerStats",
    "__version__",
    "open_storage",
]
