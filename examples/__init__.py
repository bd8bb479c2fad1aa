"""Examples of batchkit in use; each runs as ``python -m examples.<name>``."""

from __future__ import annotations

__all__: list[str] = []
