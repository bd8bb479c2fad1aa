"""The stores of the one-process benchmarks (calls, listing, wake): each run under a fresh prefix.

The servers' URLs, how a storage is opened and how its tables or keys are dropped are the
scale-out and storage benchmarks' own (run as a script, this folder is importable).
"""

from __future__ import annotations

import secrets
import sys
import tempfile
from contextlib import contextmanager
from typing import TYPE_CHECKING

import anyio

from scale_out import URLS, _reachable
from storages import _drop
from storages import _open as open_store

if TYPE_CHECKING:
    from collections.abc import Iterator

__all__ = ["fresh_store", "open_store", "unreachable"]


def unreachable(store: str) -> bool:
    """Whether ``store`` is a server that does not answer (then skipped, with a line saying so)."""
    if store == "sqlite" or _reachable(URLS[store]):
        return False
    print(f"{store}: not reachable at {URLS[store]}, skipped", file=sys.stderr)
    return True


@contextmanager
def fresh_store(store: str, tag: str, name: str) -> Iterator[tuple[str, str]]:
    """The URL and a fresh prefix (``tag`` and a random part) for one run on ``store``.

    SQLite is a file ``<name>.db`` in a temporary folder, deleted after; on a server, the
    run's tables or keys are dropped after.
    """
    prefix = f"{tag}{secrets.token_hex(3)}" + ("" if store == "redis" else "_")
    with tempfile.TemporaryDirectory() as tmp:
        url = f"sqlite+aiosqlite:///{tmp}/{name}.db" if store == "sqlite" else URLS[store]
        try:
            yield url, prefix
        finally:
            if store != "sqlite":
                anyio.run(_drop, "redis" if store == "redis" else "sql", url, prefix)
