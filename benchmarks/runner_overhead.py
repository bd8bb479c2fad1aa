"""Runner overhead: submit and run a no-op generator over many items on MemoryStorage.

Usage::

    python benchmarks/runner_overhead.py              # 100,000 items
    python benchmarks/runner_overhead.py --items 20000
    python benchmarks/runner_overhead.py --keys-only   # plain string keys, no payloads

It measures what batchkit itself costs per item, with a generator that does nothing:
submit time, run time and items per second for ``concurrency=1`` and ``concurrency=8``,
the median time of ``runner.status()`` on the large batch and on a 1,000-item batch (it
must not grow with the batch), and the growth of the peak resident memory. Each scenario
runs in a fresh interpreter so that its peak memory is its own. The table it prints is
Markdown.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from typing import Any

import anyio

import batchkit
from batchkit import BatchRunner, ItemContext, ItemState, MemoryStorage

__all__ = ["main", "measure"]

#: Targets of this benchmark: sequential throughput and memory for 100,000 items.
TARGET_ITEMS_PER_SECOND = 30_000
TARGET_RSS_MB = 300
SMALL_BATCH = 1_000


async def noop(ctx: ItemContext) -> None:
    """The cheapest generator: whatever is measured is batchkit's own cost."""


def _peak_rss_mb() -> float:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # Linux reports kilobytes, macOS bytes.
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024


async def _median_status_us(runner: BatchRunner, batch_id: str, reads: int) -> float:
    times: list[int] = []
    for _ in range(reads):
        start = time.perf_counter_ns()
        await runner.status(batch_id)
        times.append(time.perf_counter_ns() - start)
    return statistics.median(times) / 1_000


async def measure(
    items: int, concurrency: int, status_reads: int, keys_only: bool = False
) -> dict[str, Any]:
    """Submit and run one batch of ``items`` no-op items; return the measurements.

    Args:
        items: the batch size.
        concurrency: the runner's ``concurrency``.
        status_reads: how many ``runner.status()`` calls the medians are taken over
            (0 to skip the status measurements).
        keys_only: submit plain string keys instead of items with a small JSON payload.
    """
    specs: list[Any] = (
        [f"item-{n:07d}" for n in range(items)]
        if keys_only
        else [{"key": f"item-{n:07d}", "payload": {"n": n}} for n in range(items)]
    )
    rss_before = _peak_rss_mb()
    runner = BatchRunner(MemoryStorage(), noop, concurrency=concurrency)

    start = time.perf_counter()
    batch = await runner.submit(specs)
    submitted = time.perf_counter()
    final = await runner.run(batch.id)
    finished = time.perf_counter()
    rss_after = _peak_rss_mb()
    if final.state != "completed" or final.counts[ItemState.SUCCEEDED] != items:
        raise RuntimeError(f"the batch did not complete: {final}")

    result: dict[str, Any] = {
        "items": items,
        "concurrency": concurrency,
        "submit_s": submitted - start,
        "run_s": finished - submitted,
        "rss_growth_mb": rss_after - rss_before,
    }
    if status_reads:
        result["status_large_us"] = await _median_status_us(runner, batch.id, status_reads)
        small = await runner.submit([f"item-{n}" for n in range(SMALL_BATCH)])
        await runner.run(small.id)
        result["status_small_us"] = await _median_status_us(runner, small.id, status_reads)
    return result


def _scenario(items: int, concurrency: int, status_reads: int, keys_only: bool) -> dict[str, Any]:
    done = subprocess.run(
        [
            sys.executable,
            __file__,
            "--items",
            str(items),
            "--status-reads",
            str(status_reads),
            "--scenario",
            str(concurrency),
            *(["--keys-only"] if keys_only else []),
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    result: dict[str, Any] = json.loads(done.stdout)
    return result


def _report(items: int, runs: list[dict[str, Any]], keys_only: bool) -> str:
    shape = "plain string keys" if keys_only else 'a JSON payload ({"n": i})'
    lines = [
        f"batchkit {batchkit.__version__}, Python {platform.python_version()}, "
        f"{platform.system()} {platform.machine()}, {os.cpu_count()} CPUs; "
        f"MemoryStorage, no-op async generator, {items:,} items with {shape}",
        "",
        "| scenario | submit (s) | run (s) | items/s, submit + run | peak RSS growth (MB) |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for run in runs:
        total = run["submit_s"] + run["run_s"]
        name = "sequential" if run["concurrency"] == 1 else "concurrent"
        lines.append(
            f"| {name}, concurrency={run['concurrency']} | {run['submit_s']:.2f} | "
            f"{run['run_s']:.2f} | {items / total:,.0f} | {run['rss_growth_mb']:.0f} |"
        )
    status = runs[0]
    lines += [
        "",
        "| `runner.status()` on a finished batch of | median (µs) |",
        "| --- | ---: |",
        f"| {items:,} items | {status['status_large_us']:.1f} |",
        f"| {SMALL_BATCH:,} items | {status['status_small_us']:.1f} |",
        "",
    ]
    sequential = runs[0]
    rate = items / (sequential["submit_s"] + sequential["run_s"])
    rate_ok = "met" if rate >= TARGET_ITEMS_PER_SECOND else "MISSED"
    rss_ok = "met" if sequential["rss_growth_mb"] < TARGET_RSS_MB else "MISSED"
    lines.append(
        f"Targets (set for 100,000 items): >= {TARGET_ITEMS_PER_SECOND:,} items/s sequential "
        f"({rate_ok}: {rate:,.0f}), RSS growth < {TARGET_RSS_MB} MB "
        f"({rss_ok}: {sequential['rss_growth_mb']:.0f} MB)."
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Run both scenarios, each in its own interpreter, and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else None)
    parser.add_argument("--items", type=int, default=100_000, help="batch size (100,000)")
    parser.add_argument(
        "--status-reads", type=int, default=1_000, help="status() calls per median (1,000)"
    )
    parser.add_argument(
        "--keys-only", action="store_true", help="submit plain string keys, no payloads"
    )
    parser.add_argument("--scenario", type=int, help=argparse.SUPPRESS)  # internal: one run
    args = parser.parse_args(argv)
    if args.items < 1 or args.status_reads < 1:
        parser.error("--items and --status-reads must be at least 1")

    if args.scenario is not None:
        reads = args.status_reads if args.scenario == 1 else 0
        result = anyio.run(measure, args.items, args.scenario, reads, args.keys_only)
        print(json.dumps(result))
        return 0

    runs = [
        _scenario(args.items, concurrency, args.status_reads, args.keys_only)
        for concurrency in (1, 8)
    ]
    print(_report(args.items, runs, args.keys_only))
    return 0


if __name__ == "__main__":
    sys.exit(main())
