"""Sync facade benchmark: what `SyncBatchRunner` adds to a call of the async runner.

Usage::

    python benchmarks/sync_calls.py                      # SQLite, PostgreSQL, Redis
    python benchmarks/sync_calls.py --stores postgres --calls 500

For each store, in one run, one call at a time (``--calls`` times, after 20 of warm-up),
the medians in milliseconds of:

* *async*: ``await runner.status()`` and ``await runner.submit()`` of a 1-item batch, on
  an event loop of the benchmark's own (the async API, as a FastAPI app calls it);
* *sync*: the same calls through ``SyncBatchRunner`` from a plain thread (as a Django or
  Flask view calls it): each call carried to the runner's loop and its answer carried
  back;
* *a loop per call*: ``asyncio.run()`` around opening the storage and one call, what a
  sync app does without the facade (the pattern that works at all: a storage opened at
  import and used from a new loop per request fails on asyncpg).

Each run uses tables or keys of its own, dropped after. Progress goes to standard error;
the Markdown table to standard output.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import statistics
import sys
import time
from typing import TYPE_CHECKING

import anyio

import batchkit
from _stores import fresh_store, open_store, unreachable
from batchkit import BatchRunner, SyncBatchRunner, open_storage

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

__all__ = ["main"]


def _median_ms(call: Callable[[], object], calls: int) -> float:
    for _ in range(20):
        call()
    times = []
    for _ in range(calls):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000


async def _async_median_ms(call: Callable[[], Awaitable[object]], calls: int) -> float:
    for _ in range(20):
        await call()
    times = []
    for _ in range(calls):
        start = time.perf_counter()
        await call()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000


async def _async_figures(store: str, url: str, prefix: str, calls: int) -> tuple[float, float]:
    async with open_store(store, url, prefix) as storage:
        runner = BatchRunner(storage, lambda ctx: None)
        batch = await runner.submit(["one"])
        return (
            await _async_median_ms(lambda: runner.status(batch.id), calls),
            await _async_median_ms(lambda: runner.submit(["one"]), calls),
        )


def _sync_figures(url: str, prefix: str, calls: int) -> tuple[float, float]:
    with SyncBatchRunner(url, prefix=prefix) as runner:
        batch = runner.submit(["one"])
        return (
            _median_ms(lambda: runner.status(batch.id), calls),
            _median_ms(lambda: runner.submit(["one"]), calls),
        )


def _loop_per_call_ms(url: str, prefix: str, batch_id: str, calls: int) -> float:
    async def request() -> None:
        async with open_storage(url, prefix=prefix) as storage:
            await BatchRunner(storage, lambda ctx: None).status(batch_id)

    return _median_ms(lambda: asyncio.run(request()), calls)


def measure(store: str, calls: int) -> list[float]:
    with fresh_store(store, "bs", "sync") as (url, prefix):
        async_status, async_submit = anyio.run(_async_figures, store, url, prefix, calls)
        sync_status, sync_submit = _sync_figures(url, prefix, calls)
        with SyncBatchRunner(url, prefix=prefix) as runner:
            batch_id = runner.submit(["one"]).id
        per_call = _loop_per_call_ms(url, prefix, batch_id, max(20, calls // 10))
    return [async_status, sync_status, async_submit, sync_submit, per_call]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--stores", default="sqlite,postgres,redis")
    parser.add_argument("--calls", type=int, default=500)
    args = parser.parse_args(argv)
    lines = [
        "| store | `status()` async (ms) | sync (ms) | sync over async | "
        "`submit()` async (ms) | sync (ms) | sync over async | "
        "`status()`, a loop and a storage per call (ms) |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for store in args.stores.split(","):
        if unreachable(store):
            continue
        a_status, s_status, a_submit, s_submit, per_call = measure(store, args.calls)
        print(f"{store}: {[a_status, s_status, a_submit, s_submit, per_call]}", file=sys.stderr)
        lines.append(
            f"| {store} | {a_status:.2f} | {s_status:.2f} | {s_status / a_status:.2f}x | "
            f"{a_submit:.2f} | {s_submit:.2f} | {s_submit / a_submit:.2f}x | {per_call:.1f} |"
        )
    print("\n".join(lines))
    print()
    print(
        f"Medians of {args.calls} calls, one at a time (a loop and a storage per call: "
        f"{max(20, args.calls // 10)}). batchkit {batchkit.__version__}, Python "
        f"{platform.python_version()}, {os.cpu_count()} CPU cores shared with the store."
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
