"""Storage adapters. Only `MemoryStorage` and `open_storage` live here; no driver is imported."""

from __future__ import annotations

from ._url import open_storage as open_storage
from .memory import MemoryStorage as MemoryStorage

__all__ = ["MemoryStorage", "open_storage"]
