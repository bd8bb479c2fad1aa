"""``python -m examples.cli``: the batchkit demo command line."""

from __future__ import annotations

from .app import main

__all__: list[str] = []

if __name__ == "__main__":
    main()
