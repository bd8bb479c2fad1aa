"""`get_runner`: the process's `SyncBatchRunner` on the project's database."""

from __future__ import annotations

import threading

from ...sync import SyncBatchRunner
from ._settings import storage_url, table_prefix

__all__ = ["get_runner"]

_lock = threading.Lock()
_runner: SyncBatchRunner | None = None


def get_runner() -> SyncBatchRunner:
    """The process's `SyncBatchRunner` on batchkit's tables in the project's database.

    Made on the first call from the settings (`storage_url`, ``BATCHKIT["TABLE_PREFIX"]``)
    and shared by every thread after: a view calls ``get_runner().submit(...)``. It has no
    generator: ``python manage.py batchkit_worker`` runs the items. It connects on its
    first call, not when Django starts, and a process forked after that opens its own
    connections (see `SyncBatchRunner`).

    Raises:
        ImproperlyConfigured: the settings name no database batchkit can use.
        MissingDependency: the storage's extra is not installed.
    """
    global _runner
    with _lock:
        if _runner is None:
            _runner = SyncBatchRunner(storage_url(), prefix=table_prefix())
        return _runner
