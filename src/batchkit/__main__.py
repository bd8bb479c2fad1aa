"""``python -m batchkit worker ...``: run a worker (see ``python -m batchkit worker --help``)."""

from __future__ import annotations

from .cli import main

__all__: list[str] = []

if __name__ == "__main__":
    raise SystemExit(main())
