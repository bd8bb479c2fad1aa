"""Listing benchmark: reading every item of a batch back, page by page.

Usage::

    python benchmarks/listing.py                         # SQLite, PostgreSQL, MariaDB, Redis
    python benchmarks/listing.py --sizes 10000 --stores postgres

For each store and each size it submits one batch, runs every item (a generator that
returns a small result; every 10th raises), then reads the whole batch back through
``runner.items(batch_id, limit=1000, after=...)`` page by page, ``--rounds`` times. It
reports the median time of one whole read, and items per second. Each run uses tables
or keys of its own, dropped after. Progress goes to standard error; the Markdown table
to standard output.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time

import anyio

import batchkit
from _stores import fresh_store, open_store, unreachable
from batchkit import BatchRunner, ItemContext

__all__ = ["main"]


async def _generate(ctx: ItemContext) -> dict[str, int]:
    n = int(ctx.key.rsplit("-", 1)[1])
    if n % 10 == 0:
        raise ValueError(f"item {n} fails, as every 10th does")
    return {"n": n}


async def _read_all(runner: BatchRunner, batch_id: str) -> int:
    count = 0
    after: int | None = None
    while True:
        page = await runner.items(batch_id, limit=1000, after=after)
        if not page:
            return count
        count += len(page)
        after = page[-1].position


async def measure(store: str, url: str, prefix: str, size: int, rounds: int) -> list[float]:
    async with open_store(store, url, prefix) as storage:
        runner = BatchRunner(storage, _generate, concurrency=4)
        batch = await runner.submit([f"item-{n:07d}" for n in range(size)])
        await runner.run(batch.id)
        times = []
        for _ in range(rounds):
            start = time.perf_counter()
            count = await _read_all(runner, batch.id)
            times.append(time.perf_counter() - start)
            assert count == size, (count, size)
        return times


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--stores", default="sqlite,postgres,mysql,redis")
    parser.add_argument("--sizes", default="10000,100000")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args(argv)
    lines = [
        "| store | items | whole read, median (ms) | items/s |",
        "| --- | ---: | ---: | ---: |",
    ]
    for store in args.stores.split(","):
        if unreachable(store):
            continue
        for size in (int(n) for n in args.sizes.split(",")):
            with fresh_store(store, "bl", "listing") as (url, prefix):
                times = anyio.run(measure, store, url, prefix, size, args.rounds)
            median = statistics.median(times)
            print(f"{store}, {size:,} items: {median * 1000:.0f} ms", file=sys.stderr, flush=True)
            lines.append(f"| {store} | {size:,} | {median * 1000:,.0f} | {size / median:,.0f} |")
    print("\n".join(lines))
    print()
    print(
        f"Median of {args.rounds} whole reads, pages of 1,000. batchkit {batchkit.__version__}, "
        f"Python {platform.python_version()}, {os.cpu_count()} CPU cores shared with the store."
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
