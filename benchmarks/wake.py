"""Wake-up benchmark: how long a 1-item batch waits for an idle worker.

Usage::

    python benchmarks/wake.py                        # SQLite, PostgreSQL, Redis
    python benchmarks/wake.py --stores sqlite --rounds 100

For each store it starts one ``python -m batchkit worker`` at its default settings (and,
on SQLite, one `Worker` in this process too, beside the submitter), lets it go idle, then
submits ``--rounds`` batches of one item, one at a time, each after a random pause of
50-250 ms (so that the submits do not fall in step with any poll interval). The generator
returns the time it was called; the latency of a round is that time less the time just
before ``runner.submit`` was called: the submit itself counts.

It also reports the worker process's CPU time while it was idle for ``--idle`` seconds
(5 by default), as a share of one core: a worker that polls shows up there.

The servers come from ``BATCHKIT_BENCH_POSTGRES_URL`` and ``BATCHKIT_BENCH_REDIS_URL``
(by default the local test servers); one that is not reachable is skipped with a line
saying so. Each run uses tables or keys of its own, dropped after. Progress goes to
standard error; the Markdown table to standard output.
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import anyio

import batchkit
from _stores import fresh_store, open_store, unreachable
from batchkit import BatchRunner, ItemState, Worker
from first_call import called_at
from scale_out import URLS, worker_process

if TYPE_CHECKING:
    from batchkit.protocols import Storage

__all__ = ["main"]

HERE = Path(__file__).resolve().parent


@dataclass
class Result:
    store: str
    where: str
    latencies: list[float]
    idle_cpu: float | None

    def row(self) -> str:
        ms = sorted(x * 1000 for x in self.latencies)
        p99 = ms[min(len(ms) - 1, round(0.99 * (len(ms) - 1)))]
        cpu = "" if self.idle_cpu is None else f"{self.idle_cpu * 100:.2f} %"
        return (
            f"| {self.store} | {self.where} | {len(ms)} | {statistics.median(ms):.1f} | "
            f"{p99:.1f} | {max(ms):.1f} | {cpu} |"
        )


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def _rounds(storage: Storage, rounds: int) -> list[float]:
    runner = BatchRunner(storage, called_at)
    latencies: list[float] = []
    for n in range(rounds):
        await anyio.sleep(random.uniform(0.05, 0.25))
        before = time.time()
        batch = await runner.submit([f"round-{n}"])
        async for status in runner.watch(batch.id, poll_interval=0.01):
            if status.is_terminal:
                break
        (item,) = await runner.items(batch.id)
        if item.state is not ItemState.SUCCEEDED or not isinstance(item.result, float):
            raise SystemExit(f"round {n}: the item ended {item.state.value}: {item.error}")
        latencies.append(item.result - before)
    return latencies


async def _in_process(store: str, url: str, prefix: str, rounds: int) -> list[float]:
    # The worker has a storage of its own, as a host's worker task would.
    async with (
        open_store(store, url, prefix) as storage,
        open_store(store, url, prefix) as own,
        Worker(own, called_at),
    ):
        await anyio.sleep(0.5)
        return await _rounds(storage, rounds)


async def _separate(store: str, url: str, prefix: str, rounds: int, idle: float) -> Result:
    command, env = worker_process(url, prefix, "first_call:called_at", "--log-level", "INFO")
    async with open_store(store, url, prefix) as storage:
        await storage.list_batches(limit=1)  # the tables exist before the worker starts
        async with await anyio.open_process(
            command, cwd=HERE, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        ) as worker:
            try:
                assert worker.stderr is not None
                said = b""
                with anyio.fail_after(60):
                    while b" started" not in said:
                        said += await worker.stderr.receive()
                await anyio.sleep(0.5)  # idle
                before = _cpu_seconds(worker.pid)
                await anyio.sleep(idle)
                idle_cpu = (_cpu_seconds(worker.pid) - before) / idle
                latencies = await _rounds(storage, rounds)
            finally:
                worker.terminate()
                await worker.wait()
    return Result(store, "worker process", latencies, idle_cpu)


def measure(store: str, rounds: int, idle: float) -> list[Result]:
    results: list[Result] = []
    with fresh_store(store, "bw", "wake") as (url, prefix):
        results.append(anyio.run(_separate, store, url, prefix, rounds, idle))
        if store == "sqlite":
            latencies = anyio.run(_in_process, store, url, prefix, rounds)
            results.append(Result(store, "same process", latencies, None))
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--stores", default="sqlite,postgres,redis", help="comma-separated")
    parser.add_argument("--rounds", type=int, default=60, help="1-item batches per store")
    parser.add_argument("--idle", type=float, default=5.0, help="seconds of idle CPU measured")
    args = parser.parse_args(argv)
    results: list[Result] = []
    for store in args.stores.split(","):
        if store != "sqlite" and store not in URLS:
            parser.error(f"unknown store {store!r}; known: sqlite, {', '.join(URLS)}")
        if unreachable(store):
            continue
        for result in measure(store, args.rounds, args.idle):
            print(
                f"{store}, {result.where}: median "
                f"{statistics.median(result.latencies) * 1000:.1f} ms",
                file=sys.stderr,
                flush=True,
            )
            results.append(result)
    print("| store | worker | rounds | median (ms) | p99 (ms) | max (ms) | idle CPU, one core |")
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: |")
    for result in results:
        print(result.row())
    print()
    print(
        f"Submit to the generator's first call of a 1-item batch, an idle worker at its "
        f"default settings. batchkit {batchkit.__version__}, Python "
        f"{platform.python_version()}, {os.cpu_count()} CPU cores shared with the store."
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
