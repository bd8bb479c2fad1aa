"""Start-up benchmark: how long a worker process takes to run the first item waiting for it.

Usage::

    python benchmarks/startup.py                     # SQLite, PostgreSQL, Redis
    python benchmarks/startup.py --stores sqlite --rounds 10

For each store, ``--rounds`` times: a 1-item batch is submitted, then one
``python -m batchkit worker --exit-when-idle`` is started on it. Its generator returns the
time it was called. Three spans, from the moment the process is started:

* *started*: until the worker logs that it started (the interpreter, the imports, the
  storage opened and its tables checked);
* *first call*: until the generator is called (the above, then the first claim);
* the difference of the two: what the worker does between its start and the first item.

Next to them, the *floor*: a process that does only what any asyncio worker on that store
must, started the same way: Python, ``asyncio`` and the store's driver imported, one
connection opened and one query answered, then the time printed. What a worker takes
above the floor is batchkit's own part (its imports, the storage's checks, the claim).

It also times ``import batchkit`` alone in a fresh interpreter. Python's bytecode cache
counts for much here: run the benchmark once before reading its figures (the first run
writes the cache), and not with ``PYTHONDONTWRITEBYTECODE`` set on a tree without one.

The servers come from ``BATCHKIT_BENCH_POSTGRES_URL`` and ``BATCHKIT_BENCH_REDIS_URL`` (by
default the local test servers); one that is not reachable is skipped with a line saying
so. Each run uses tables or keys of its own, dropped after. Progress goes to standard
error; the Markdown table to standard output.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import anyio

import batchkit
from _stores import fresh_store, open_store, unreachable
from batchkit import BatchRunner, ItemState
from scale_out import worker_process
from wake import called_at

__all__ = ["main"]

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent


def _import_seconds() -> float:
    """``import batchkit`` in a fresh interpreter."""
    code = "import time; t = time.perf_counter(); import batchkit; print(time.perf_counter() - t)"
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT
    )
    return float(done.stdout)


#: The floor of each store: Python, asyncio, the driver, a connection and one query.
_FLOORS = {
    "sqlite": """
import asyncio, sys, time, aiosqlite
async def main():
    async with aiosqlite.connect(sys.argv[1]) as db:
        await (await db.execute("select 1")).fetchall()
asyncio.run(main())
print(time.time())
""",
    "postgres": """
import asyncio, sys, time, asyncpg
async def main():
    conn = await asyncpg.connect(sys.argv[1])
    await conn.fetchval("select 1")
    await conn.close()
asyncio.run(main())
print(time.time())
""",
    "redis": """
import asyncio, sys, time, redis.asyncio
async def main():
    client = redis.asyncio.Redis.from_url(sys.argv[1])
    await client.ping()
    await client.aclose()
asyncio.run(main())
print(time.time())
""",
}


def _floor_seconds(store: str, url: str) -> float:
    """From a process's start to its one query answered, with nothing of batchkit."""
    if store == "sqlite":
        target = url.split(":///", 1)[1]
    elif store == "postgres":
        target = url.replace("postgresql+asyncpg://", "postgresql://", 1)
    else:
        target = url
    began = time.time()
    done = subprocess.run(
        [sys.executable, "-c", _FLOORS[store], target],
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
    )
    return float(done.stdout) - began


async def _one(store: str, url: str, prefix: str, n: int) -> tuple[float, float]:
    """Seconds from the worker process's start to its "started" line, and to the first
    call of its generator."""
    async with open_store(store, url, prefix) as storage:
        runner = BatchRunner(storage, called_at)
        batch = await runner.submit([f"round-{n}"])
        command, env = worker_process(
            url, prefix, "wake:called_at", "--exit-when-idle", "--log-level", "INFO"
        )
        began = time.time()
        started: float | None = None
        async with await anyio.open_process(
            command, cwd=HERE, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        ) as worker:
            assert worker.stderr is not None
            said = b""
            with anyio.fail_after(60):
                async for chunk in worker.stderr:
                    said += chunk
                    if started is None and b" started" in said:
                        started = time.time()
                await worker.wait()
        (item,) = await runner.items(batch.id)
        if item.state is not ItemState.SUCCEEDED or not isinstance(item.result, float):
            raise SystemExit(f"{store}: the item ended {item.state.value}: {said.decode()}")
        if started is None:
            raise SystemExit(f"{store}: the worker never said it started: {said.decode()}")
        return started - began, item.result - began


def measure(store: str, rounds: int) -> tuple[list[float], list[float], list[float]]:
    """Each round's floor, and the worker's "started" and first call, in seconds."""
    floors: list[float] = []
    starts: list[float] = []
    firsts: list[float] = []
    with fresh_store(store, "bu", "startup") as (url, prefix):
        for n in range(rounds):
            floor = _floor_seconds(store, url)
            start, first = anyio.run(_one, store, url, prefix, n)
            floors.append(floor)
            starts.append(start)
            firsts.append(first)
            print(
                f"{store}: floor {floor * 1000:.0f} ms, started {start * 1000:.0f} ms, "
                f"first call {first * 1000:.0f} ms",
                file=sys.stderr,
            )
    return floors, starts, firsts


def ms(seconds: list[float]) -> str:
    """The median, in whole milliseconds."""
    return f"{statistics.median(seconds) * 1000:.0f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--stores", default="sqlite,postgres,redis", help="comma-separated")
    parser.add_argument("--rounds", type=int, default=5, help="worker starts per store")
    args = parser.parse_args()
    imports = sorted(_import_seconds() for _ in range(args.rounds))
    rows = []
    for store in args.stores.split(","):
        if unreachable(store):
            continue
        floors, starts, firsts = measure(store, args.rounds)
        between = [f - s for s, f in zip(starts, firsts, strict=True)]
        own = [f - b for b, f in zip(floors, firsts, strict=True)]
        rows.append(
            f"| {store} | {args.rounds} | {ms(floors)} | {ms(starts)} | {ms(firsts)} | "
            f"{ms(between)} | {ms(own)} |"
        )
    print(
        "| store | worker starts | floor (ms) | started (ms) | first call (ms) | "
        "between (ms) | first call over the floor (ms) |"
    )
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    print("\n".join(rows))
    print(
        f"\nMedians, from the worker process's start. `import batchkit` alone: "
        f"{statistics.median(imports) * 1000:.0f} ms (median of {args.rounds}). "
        f"batchkit {batchkit.__version__}, Python {platform.python_version()}, "
        f"{os.cpu_count()} CPU cores shared with the store."
    )


if __name__ == "__main__":
    main()
