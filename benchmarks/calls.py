"""Single-call benchmark: what one small call costs, per store.

Usage::

    python benchmarks/calls.py                       # SQLite, PostgreSQL, MariaDB, Redis
    python benchmarks/calls.py --stores postgres --calls 500

For each store it times, one call at a time, ``--calls`` times each (200 by default, after
20 calls of warm-up): ``runner.status()`` of a batch, ``runner.submit()`` of a 1-item
batch, ``runner.items()`` of a 1-item batch, and a 1-item batch submitted, claimed and
finished. It prints the median of each in milliseconds. Each run uses tables or keys of
its own, dropped after.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from typing import TYPE_CHECKING

import anyio

import batchkit
from _stores import fresh_store, open_store, unreachable
from batchkit import BatchRunner
from batchkit.protocols import ClaimRequest, Outcome

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

__all__ = ["main"]


async def _nothing(ctx: object) -> None:
    return None


async def _median_ms(call: Callable[[], Awaitable[object]], calls: int) -> float:
    for _ in range(20):
        await call()
    times = []
    for _ in range(calls):
        start = time.perf_counter()
        await call()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000


async def measure(store: str, url: str, prefix: str, calls: int) -> list[float]:
    async with open_store(store, url, prefix) as storage:
        runner = BatchRunner(storage, _nothing)
        batch = await runner.submit(["one"])

        async def claim_and_finish() -> None:
            new = await runner.submit(["one"])
            claim = await storage.claim(ClaimRequest(lease_seconds=30, batch_ids=(new.id,)))
            assert claim is not None
            await storage.finish(claim.lease, Outcome.succeeded("null"))

        return [
            await _median_ms(lambda: runner.status(batch.id), calls),
            await _median_ms(lambda: runner.submit(["one"]), calls),
            await _median_ms(lambda: runner.items(batch.id), calls),
            await _median_ms(claim_and_finish, calls),
        ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--stores", default="sqlite,postgres,mysql,redis")
    parser.add_argument("--calls", type=int, default=200)
    args = parser.parse_args(argv)
    lines = [
        "| store | `status()` (ms) | `submit()` of 1 item (ms) | `items()` (ms) | "
        "submit, claim and finish (ms) |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for store in args.stores.split(","):
        if unreachable(store):
            continue
        with fresh_store(store, "bc", "calls") as (url, prefix):
            figures = anyio.run(measure, store, url, prefix, args.calls)
        print(f"{store}: {figures}", file=sys.stderr, flush=True)
        lines.append(f"| {store} | " + " | ".join(f"{ms:.2f}" for ms in figures) + " |")
    print("\n".join(lines))
    print()
    print(
        f"Medians of {args.calls} calls, one at a time. batchkit {batchkit.__version__}, "
        f"Python {platform.python_version()}, {os.cpu_count()} CPU cores shared with the store."
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
