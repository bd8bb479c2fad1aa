"""The exceptions batchkit raises.

```
BatchkitError
├── BatchNotFound
├── InvalidBatch
├── InvalidStorageURL
├── ItemNotFound
├── MissingDependency        (also an ImportError)
├── SchemaVersionMismatch
└── StorageError
```

An item's failure is never an exception out of the runner: it is data on the item
(`Item.error`). These exceptions are for mistakes of the caller and for a store that
cannot be reached.
"""

from __future__ import annotations

from typing import Self

__all__ = [
    "BatchNotFound",
    "BatchkitError",
    "InvalidBatch",
    "InvalidStorageURL",
    "ItemNotFound",
    "MissingDependency",
    "SchemaVersionMismatch",
    "StorageError",
]


class BatchkitError(Exception):
    """A batchkit operation failed."""

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message if message is not None else (type(self).__doc__ or "").strip())


class BatchNotFound(BatchkitError, LookupError):
    """No batch has this id."""

    def __init__(self, batch_id: str) -> None:
        self.batch_id = batch_id
        super().__init__(f"no batch has the id {batch_id!r}")

    def __reduce__(self) -> tuple[type[Self], tuple[str]]:
        # Rebuild from the id, not the message, so the error survives pickling (processes).
        return (type(self), (self.batch_id,))


class InvalidBatch(BatchkitError, ValueError):
    """The batch or the request about it is not valid; nothing was written."""


class ItemNotFound(BatchkitError, LookupError):
    """The batch has no item with this key."""

    def __init__(self, batch_id: str, key: str) -> None:
        self.batch_id = batch_id
        self.key = key
        super().__init__(f"batch {batch_id!r} has no item with the key {key!r}")

    def __reduce__(self) -> tuple[type[Self], tuple[str, str]]:
        return (type(self), (self.batch_id, self.key))


class InvalidStorageURL(BatchkitError, ValueError):
    """The storage URL is not one batchkit can open."""


class MissingDependency(BatchkitError, ImportError):
    """An optional dependency is not installed."""

    def __init__(self, package: str, extra: str) -> None:
        self.package = package
        self.extra = extra
        super().__init__(
            f"{package!r} is not installed; it comes with the {extra!r} extra: "
            f"pip install 'batchkit[{extra}]'"
        )

    def __reduce__(self) -> tuple[type[Self], tuple[str, str]]:
        return (type(self), (self.package, self.extra))


class SchemaVersionMismatch(BatchkitError):
    """The store was written by a different, incompatible version of batchkit."""


class StorageError(BatchkitError):
    """The store failed and the operation could not be completed (the cause is attached)."""

    #: Whether the same operation may succeed later (the store was out of reach past the
    #: retries). `False` when the adapter knows that the store refused it for a reason
    #: that lasts: a server of the wrong kind, a missing permission, a key of the wrong
    #: type (`RedisStorage` tells them apart).
    transient: bool = True
