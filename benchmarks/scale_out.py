"""Scale-out benchmark: 1, 2 and 4 worker processes on one batch, on a shared store.

Usage::

    python benchmarks/scale_out.py                      # PostgreSQL and Redis
    python benchmarks/scale_out.py --stores postgres,mysql,redis --items 20000
    python benchmarks/scale_out.py --quick              # 4,000 items
    python benchmarks/scale_out.py --split              # and the items in one batch a worker

For each store and each number of workers it submits one batch of ``--items`` items
(20,000 by default) whose generator sleeps ``--sleep`` seconds (5 ms: work that waits, as
a model call or an upload does), starts that many ``python -m batchkit worker`` processes
on the batch (``--concurrency`` slots each, 1 by default), and waits for them to finish
it. Throughput is the batch's size over the time from its first claim to its last item's
end, both read from the store (`BatchStatus.started_at`, `finished_at`), so the workers'
start-up does not count. The scaling ratio is the throughput of N workers over that of
one: ideally N, while the store is not the bottleneck. After a store's runs, its ceiling
(what one connection does per second with nothing of batchkit in the way: pgbench,
redis-benchmark or a bare driver loop, see ``_ceilings``) is measured, and each run's
items per second are shown over it too; ``--no-ceilings`` leaves it out. ``--split``
runs each number of workers N above one a second time, on the same items split into N
batches (each worker has the run of them all, so no two share a batch's rows by design),
and shows the one batch's throughput over that.

The servers come from ``BATCHKIT_BENCH_POSTGRES_URL``, ``BATCHKIT_BENCH_MYSQL_URL`` and
``BATCHKIT_BENCH_REDIS_URL`` (by default the local test servers); one that is not reachable
is skipped with a line saying so. Each run uses tables or keys of its own, dropped after.
Progress goes to standard error; the Markdown table to standard output.
"""

from __future__ import annotations

import argparse
import os
import platform
import secrets
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

import anyio

import batchkit
from _ceilings import Ceiling, measure_ceiling
from batchkit import BatchRunner, ItemState

# The storage benchmark's clean-up: run as a script, its folder is importable.
from storages import _drop as drop_prefix

if TYPE_CHECKING:
    from batchkit import ItemContext
    from batchkit.protocols import Storage

__all__ = ["generate", "main"]

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
URLS = {
    "postgres": os.environ.get(
        "BATCHKIT_BENCH_POSTGRES_URL", "postgresql+asyncpg://postgres@127.0.0.1:5432/test"
    ),
    "mysql": os.environ.get("BATCHKIT_BENCH_MYSQL_URL", "mysql+asyncmy://root@127.0.0.1:3306/test"),
    "redis": os.environ.get("BATCHKIT_BENCH_REDIS_URL", "redis://127.0.0.1:6379/0"),
}
_SLEEP = float(os.environ.get("BATCHKIT_BENCH_SLEEP", "0.005"))


async def generate(ctx: ItemContext) -> None:
    """The benchmark's generator (run by the worker processes): it only waits."""
    await anyio.sleep(_SLEEP)


@dataclass
class Result:
    store: str
    workers: int
    items: int
    seconds: float
    batches: int = 1

    @property
    def rate(self) -> float:
        return self.items / self.seconds


def _reachable(url: str) -> bool:
    parts = urlsplit(url)
    try:
        with socket.create_connection((parts.hostname or "127.0.0.1", parts.port or 0), 2):
            return True
    except OSError:
        return False


def _storage(store: str, prefix: str) -> Storage:
    if store == "redis":
        from batchkit.storage.redis import RedisStorage

        return RedisStorage(URLS[store], prefix=prefix)
    from batchkit.storage.sql import SQLStorage

    return SQLStorage(URLS[store], table_prefix=prefix)


async def _nothing(ctx: object) -> None:
    return None


async def _submit(store: str, prefix: str, items: int, batches: int) -> list[str]:
    """Submit ``items`` items, split into ``batches`` batches; their ids."""
    ids = []
    async with _storage(store, prefix) as storage:
        runner = BatchRunner(storage, _nothing)
        for part in range(batches):
            keys = [f"item-{n}" for n in range(part, items, batches)]
            ids.append((await runner.submit(keys)).id)
    return ids


async def _elapsed(store: str, prefix: str, batch_ids: list[str]) -> tuple[float, dict[str, int]]:
    """From the first claim of any of the batches to the last item's end; their counts."""
    async with _storage(store, prefix) as storage:
        runner = BatchRunner(storage, _nothing)
        statuses = [await runner.status(batch_id) for batch_id in batch_ids]
    counts: dict[str, int] = {}
    for status in statuses:
        assert status.started_at is not None, status
        assert status.finished_at is not None, status
        for state, n in status.counts.items():
            if n:
                counts[state.value] = counts.get(state.value, 0) + n
    first = min(s.started_at for s in statuses if s.started_at is not None)
    last = max(s.finished_at for s in statuses if s.finished_at is not None)
    return (last - first).total_seconds(), counts


async def _drop(store: str, prefix: str) -> None:
    await drop_prefix("redis" if store == "redis" else "sql", URLS[store], prefix)


def worker_process(
    url: str, prefix: str, generator: str, *options: str, **environ: str
) -> tuple[list[str], dict[str, str]]:
    """The command and environment of a ``python -m batchkit worker`` on ``url`` under
    ``prefix``, running ``generator`` (``module:function`` of this folder: start it with
    this folder as its working directory), with ``options`` and the variables ``environ``."""
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
        **environ,
    }
    command = [
        *(sys.executable, "-m", "batchkit", "worker", "--storage", url, "--prefix", prefix),
        *("--generator", generator, *options, "--no-live"),
    ]
    return command, env


#: Options given to every worker (``--group-commit``); none: the library's defaults.
WORKER_OPTIONS: list[str] = []


def measure(
    store: str, workers: int, items: int, concurrency: int, sleep: float, batches: int = 1
) -> Result:
    """``items`` items in ``batches`` batches, run by ``workers`` worker processes."""
    prefix = f"bs{secrets.token_hex(3)}" + ("" if store == "redis" else "_")
    batch_ids = anyio.run(_submit, store, prefix, items, batches)
    command, env = worker_process(
        URLS[store],
        prefix,
        "scale_out:generate",
        *(option for batch_id in batch_ids for option in ("--batch", batch_id)),
        *("--exit-when-idle", "--concurrency", str(concurrency)),
        *("--poll-interval", "0.05", "--log-level", "WARNING"),
        *WORKER_OPTIONS,
        BATCHKIT_BENCH_SLEEP=repr(sleep),
    )
    try:
        processes = [
            subprocess.Popen(command, cwd=HERE, env=env, stdout=subprocess.DEVNULL)
            for _ in range(workers)
        ]
        codes = [p.wait(timeout=3_600) for p in processes]
        if codes != [0] * workers:
            raise SystemExit(f"a worker failed: exit codes {codes}")
        seconds, counts = anyio.run(_elapsed, store, prefix, batch_ids)
        if counts != {ItemState.SUCCEEDED.value: items}:
            raise SystemExit(f"the batches did not complete: {counts}")
    finally:
        anyio.run(_drop, store, prefix)
    return Result(store, workers, items, seconds, batches)


def ceiling_of(store: str) -> Ceiling | None:
    """``store``'s ceiling, measured under a fresh prefix (`None`, said on standard error,
    when it cannot be measured)."""
    prefix = f"bc{secrets.token_hex(3)}_"
    print(f"{store}: measuring one connection's ceiling", file=sys.stderr, flush=True)
    try:
        return anyio.run(measure_ceiling, store, URLS[store], prefix)
    except Exception as exc:  # a benchmark reports what it could not measure
        print(f"{store}: ceiling not measured: {type(exc).__name__}: {exc}", file=sys.stderr)
        return None


def _table(
    results: list[Result], concurrency: int, sleep: float, ceilings: dict[str, Ceiling | None]
) -> str:
    lines = [
        "| store | workers | batches | items | seconds | items/s | items/s over 1 worker "
        "(ideal) | one batch over split | items/s over ceiling |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    base: dict[str, float] = {}
    split = {(r.store, r.workers): r.rate for r in results if r.batches > 1}
    for r in results:
        if r.workers == 1 and r.batches == 1:
            base[r.store] = r.rate
        ratio = r.rate / base[r.store] if r.store in base else float("nan")
        ceiling = ceilings.get(r.store)
        over = "" if ceiling is None else f"{r.rate / ceiling.ops_per_s:.2f}"
        apart = split.get((r.store, r.workers)) if r.batches == 1 else None
        against = "" if apart is None else f"{r.rate / apart:.2f}"
        lines.append(
            f"| {r.store} | {r.workers} | {r.batches} | {r.items:,} | {r.seconds:.1f} | "
            f"{r.rate:,.0f} | {ratio:.2f} ({r.workers}) | {against} | {over} |"
        )
    cpus = os.cpu_count()
    lines.append("")
    for store, ceiling in ceilings.items():
        if ceiling is not None:
            lines.append(
                f"Ceiling, {store}: {ceiling.ops_per_s:,.0f} operations/s "
                f"({ceiling.what}; {ceiling.server})."
            )
    if any(ceilings.values()):
        lines.append("")
    lines.append(
        f"Each worker: `--concurrency {concurrency}`; the generator sleeps {sleep * 1000:g} ms. "
        f"batchkit {batchkit.__version__}, Python {platform.python_version()}, {cpus} CPU "
        f"cores shared by the workers and the store."
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--stores", default="postgres,redis", help="comma-separated stores")
    parser.add_argument("--workers", default="1,2,4", help="comma-separated worker counts")
    parser.add_argument("--items", type=int, default=20_000)
    parser.add_argument("--sleep", type=float, default=0.005, help="generator seconds")
    parser.add_argument("--concurrency", type=int, default=1, help="slots per worker")
    parser.add_argument("--quick", action="store_true", help="4,000 items")
    parser.add_argument("--no-ceilings", action="store_true", help="leave out each store's ceiling")
    parser.add_argument(
        "--split",
        action="store_true",
        help="also run N workers on the same items split into N batches",
    )
    parser.add_argument(
        "--group-commit",
        metavar="SECONDS",
        help="the workers' --group-commit (0: each outcome alone); their default if not given",
    )
    args = parser.parse_args(argv)
    if args.group_commit is not None:
        WORKER_OPTIONS.extend(["--group-commit", args.group_commit])
    items = 4_000 if args.quick else args.items
    counts = [int(n) for n in args.workers.split(",")]
    results: list[Result] = []
    ceilings: dict[str, Ceiling | None] = {}
    for store in args.stores.split(","):
        if store not in URLS:
            parser.error(f"unknown store {store!r}; known: {', '.join(URLS)}")
        if not _reachable(URLS[store]):
            print(f"{store}: not reachable at {URLS[store]}, skipped", file=sys.stderr)
            continue
        runs = [(n, 1) for n in counts]
        if args.split:
            runs += [(n, n) for n in counts if n > 1]
        for workers, batches in runs:
            started = time.monotonic()
            result = measure(store, workers, items, args.concurrency, args.sleep, batches)
            took = time.monotonic() - started
            print(
                f"{store}, {workers} worker(s), {batches} batch(es): {result.rate:,.0f} items/s "
                f"({result.seconds:.1f} s; {took:.0f} s with start-up and set-up)",
                file=sys.stderr,
                flush=True,
            )
            results.append(result)
        if not args.no_ceilings:
            ceilings[store] = ceiling_of(store)
    print(_table(results, args.concurrency, args.sleep, ceilings))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
