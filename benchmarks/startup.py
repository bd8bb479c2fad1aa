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

Next to them, two floors, each a process started the same way that opens one connection,
has one query answered and prints the time:

* the *driver's floor*: Python, ``asyncio`` and the store's driver, nothing else;
* the *libraries' floor*: through the libraries batchkit is built on as well: anyio
  imported, one pydantic model defined and one value validated, and the connection is
  SQLAlchemy's async engine's on SQL stores, redis-py's asyncio client's on Redis. A
  worker of any library built on them takes this long.

What a worker takes above the libraries' floor is batchkit's own part (its imports, the
storage's checks, the claim).

Last, *in a running process*: a process that has imported batchkit and opened the storage
(as a host does when it starts) starts a `Worker` on the waiting batch; the span is from
``Worker.run()`` to the first call of its generator.

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
from first_call import called_at
from scale_out import worker_process

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


#: What every library built on pydantic does at least once: define a model and use it.
_MODEL = """
import anyio, pydantic
class Row(pydantic.BaseModel):
    key: str
    progress: float = 0.0
Row.model_validate({"key": "a"})
"""
_SQLALCHEMY_FLOOR = (
    _MODEL
    + """
import asyncio, sys, time
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine
async def main():
    engine = create_async_engine(sys.argv[1])
    async with engine.connect() as conn:
        await conn.execute(text("select 1"))
    await engine.dispose()
asyncio.run(main())
print(time.time())
"""
)
#: The libraries' floor: as `_FLOORS`, through the libraries batchkit is built on.
_LIBRARY_FLOORS = {
    "sqlite": _SQLALCHEMY_FLOOR,
    "postgres": _SQLALCHEMY_FLOOR,
    "redis": _MODEL + _FLOORS["redis"],
}

#: A process that has imported batchkit and opened the storage starts a worker; it prints
#: the time ``Worker.run()`` was called (the generator returns the time of its call).
_IN_PROCESS = """
import sys, time, anyio, batchkit
from first_call import called_at
async def main(store, url, prefix):
    from storages import _open
    async with _open(store, url, prefix) as storage:
        worker = batchkit.Worker(storage, called_at, exit_when_idle=True)
        began = time.time()
        await worker.run()
    print(began)
anyio.run(main, *sys.argv[1:])
"""


def _floor_seconds(store: str, url: str, *, libraries: bool = False) -> float:
    """From a process's start to its one query answered, with nothing of batchkit: through
    the driver alone, or through the libraries batchkit is built on."""
    if libraries and store != "redis":
        target = url
    elif store == "sqlite":
        target = url.split(":///", 1)[1]
    elif store == "postgres":
        target = url.replace("postgresql+asyncpg://", "postgresql://", 1)
    else:
        target = url
    script = (_LIBRARY_FLOORS if libraries else _FLOORS)[store]
    began = time.time()
    done = subprocess.run(
        [sys.executable, "-c", script, target],
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
            url, prefix, "first_call:called_at", "--exit-when-idle", "--log-level", "INFO"
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


async def _in_process(store: str, url: str, prefix: str, n: int) -> float:
    """Seconds from ``Worker.run()``, in a process that has imported batchkit and opened
    the storage, to the first call of its generator."""
    async with open_store(store, url, prefix) as storage:
        runner = BatchRunner(storage, called_at)
        batch = await runner.submit([f"in-process-{n}"])
        _, env = worker_process(url, prefix, "first_call:called_at")
        done = await anyio.run_process(
            [sys.executable, "-c", _IN_PROCESS, store, url, prefix], cwd=HERE, env=env
        )
        began = float(done.stdout)
        (item,) = await runner.items(batch.id)
        if item.state is not ItemState.SUCCEEDED or not isinstance(item.result, float):
            raise SystemExit(f"{store}: the in-process worker's item ended {item.state.value}")
        return item.result - began


#: Each round's figures, in seconds, by column.
Figures = dict[str, list[float]]


def measure(store: str, rounds: int) -> Figures:
    """Each round's floors, the worker's "started" and first call, and the in-process
    worker's first call, in seconds."""
    figures: Figures = {
        name: [] for name in ("floor", "libraries", "started", "first", "in_process")
    }
    with fresh_store(store, "bu", "startup") as (url, prefix):
        for n in range(rounds):
            figures["floor"].append(_floor_seconds(store, url))
            figures["libraries"].append(_floor_seconds(store, url, libraries=True))
            start, first = anyio.run(_one, store, url, prefix, n)
            figures["started"].append(start)
            figures["first"].append(first)
            figures["in_process"].append(anyio.run(_in_process, store, url, prefix, n))
            print(
                f"{store}: "
                + ", ".join(
                    f"{name} {values[-1] * 1000:.0f} ms" for name, values in figures.items()
                ),
                file=sys.stderr,
            )
    return figures


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
        got = measure(store, args.rounds)
        between = [f - s for s, f in zip(got["started"], got["first"], strict=True)]
        own = [f - b for b, f in zip(got["libraries"], got["first"], strict=True)]
        rows.append(
            f"| {store} | {args.rounds} | {ms(got['floor'])} | {ms(got['libraries'])} | "
            f"{ms(got['started'])} | {ms(got['first'])} | {ms(between)} | {ms(own)} | "
            f"{ms(got['in_process'])} |"
        )
    print(
        "| store | worker starts | driver's floor (ms) | libraries' floor (ms) | "
        "started (ms) | first call (ms) | between (ms) | first call over the libraries' "
        "floor (ms) | in a running process: `Worker.run()` to the first call (ms) |"
    )
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    print("\n".join(rows))
    print(
        f"\nMedians, from the worker process's start (the last column: from `Worker.run()`). `import batchkit` alone: "
        f"{statistics.median(imports) * 1000:.0f} ms (median of {args.rounds}). "
        f"batchkit {batchkit.__version__}, Python {platform.python_version()}, "
        f"{os.cpu_count()} CPU cores shared with the store."
    )


if __name__ == "__main__":
    main()
