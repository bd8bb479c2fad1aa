"""Tests of the examples, the README and the code shown in the docs."""

from __future__ import annotations

__all__: list[str] = []
