"""Peers benchmark: batchkit beside Celery, RQ, arq, procrastinate and Dramatiq, one workload.

Set up once and run, from the repository's root (the peers live in a virtual environment
of their own, with batchkit installed into it in development mode)::

    python -m venv .venv-peers
    .venv-peers/bin/pip install -r benchmarks/peers/requirements.txt -e .
    .venv-peers/bin/python benchmarks/peers/run.py                # 10,000 items, 50 rounds
    .venv-peers/bin/python benchmarks/peers/run.py --quick        # 2,000 items, 20 rounds
    .venv-peers/bin/python benchmarks/peers/run.py --systems batchkit-redis,celery,rq

Or ``make bench-peers`` (``ARGS="--quick"`` for the short run), which makes the
environment first. Run it on a machine doing nothing else: every figure is a time.

The workload, the same for every system: ``--items`` no-op items (10,000 by default),
of which every 10th raises an exception (`marks.run_item`); no retries anywhere. For
each system, on its store, it:

1. starts ONE worker process (``--concurrency`` items at once, 1 by default: see the
   table's worker column for what that means for each), runs one warm-up item through
   it, and lets it sit idle for a second;
2. **submit**: enqueues the N items the way the library offers for many (batchkit: one
   ``submit``; Celery: a ``group``; RQ: ``enqueue_many``; arq: ``enqueue_job`` calls,
   100 in flight at a time; Dramatiq: a ``group``; procrastinate: ``batch_defer_async``),
   timed on the host;
3. **run**: items per second from the first item's start to the last item's end, as the
   items themselves recorded them (wall-clock times appended to a file by each task);
   the worker may start on the items while the submit is still going (the table
   gives the share that did: near 100 %, the submit bounds the run);
4. **status read**: once the system reports every item finished, the median of
   ``--status-reads`` reads of how many are done and failed, the cheapest way each API
   offers (see `systems` for what each one calls, and why);
5. **listing**: the median of 3 reads of every item's state;
6. **idle latency**: ``--rounds`` rounds, each after a random pause of 50-250 ms, of
   enqueuing one item to the idle worker; the latency is the item's start, as it wrote
   it, less the time just before the enqueue: the enqueue itself counts;
7. **worker RSS**: ``VmRSS`` from ``/proc/<pid>/status`` after all that, summed over the
   worker's process group (a supervisor and its children count together).

Stores: batchkit on SQLite (a temporary file), PostgreSQL and Redis; Celery, RQ, arq and
Dramatiq on Redis, each on a database number of its own (11 to 14; it must be empty, and
is emptied after); procrastinate on PostgreSQL, in a schema of its own, dropped after.
The servers come from ``BATCHKIT_BENCH_POSTGRES_URL`` and ``BATCHKIT_BENCH_REDIS_URL`` (by
default ``postgresql+asyncpg://postgres@127.0.0.1:5432/test`` and
``redis://127.0.0.1:6379/0``). A system whose library cannot be imported or whose store
cannot be reached is skipped with a line saying so. Workers are stopped (SIGTERM to their
process group, SIGKILL after 20 s) whatever happens, Ctrl-C included.

Progress goes to standard error; the Markdown table to standard output, with each
figure's ratio to batchkit's on the same store in the same run.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import os
import platform
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from marks import MarkReader, fails
from systems import SYSTEMS, Counts, System, make_system

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

__all__ = ["Result", "main", "measure"]

HERE = Path(__file__).resolve().parent
LISTINGS = 3
#: How long a worker may take to stop after SIGTERM before it is killed.
STOP_GRACE_S = 20.0
WARM_UP_TIMEOUT_S = 120.0
IDLE_BEFORE_SUBMIT_S = 1.0
SETTLE_TIMEOUT_S = 120.0
PACKAGES = (
    "batchkit",
    "celery",
    "kombu",
    "rq",
    "arq",
    "dramatiq",
    "procrastinate",
    "redis",
    "hiredis",
    "psycopg",
    "asyncpg",
    "SQLAlchemy",
    "aiosqlite",
)

_STARTED = time.perf_counter()


def log(message: str) -> None:
    """A progress line on standard error, stamped with the time since start."""
    print(f"[{time.perf_counter() - _STARTED:7.1f}s] {message}", file=sys.stderr, flush=True)


@dataclass
class Result:
    """What was measured for one system (or why it was skipped)."""

    key: str
    name: str
    store: str
    worker: str = ""
    server: str = ""
    submit_s: float = 0.0
    items_per_s: float = 0.0
    during_submit: float = 0.0
    status_ms: float = 0.0
    list_ms: float = 0.0
    idle_ms: list[float] = field(default_factory=list)
    rss_mb: float = 0.0
    processes: int = 0
    counts: Counts | None = None
    note: str = ""
    footnote: str = ""
    skipped: str | None = None

    @property
    def idle_median(self) -> float:
        return statistics.median(self.idle_ms)

    @property
    def idle_p99(self) -> float:
        ms = sorted(self.idle_ms)
        return ms[min(len(ms) - 1, round(0.99 * (len(ms) - 1)))]


# -- the worker process ------------------------------------------------------------------


def _group_pids(pgid: int) -> list[int]:
    """The live processes of process group ``pgid``."""
    pids: list[int] = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            pids.append(int(entry.name))
    return pids


def group_rss_mb(pgid: int) -> tuple[float, int]:
    """The summed ``VmRSS`` of the processes of group ``pgid`` (MB), and how many there are."""
    total_kb = 0
    count = 0
    for pid in _group_pids(pgid):
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total_kb += int(line.split()[1])
                    count += 1
                    break
        except OSError:
            continue
    return total_kb / 1024, count


def _stop(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM to the worker's process group; SIGKILL to what is left after the grace."""
    pgid = process.pid
    if process.poll() is None:
        with suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGTERM)
        try:
            process.wait(timeout=STOP_GRACE_S)
        except subprocess.TimeoutExpired:
            log(f"worker {pgid} did not stop within {STOP_GRACE_S:g} s: killed")
    deadline = time.monotonic() + 5
    while (left := _group_pids(pgid)) and time.monotonic() < deadline:
        time.sleep(0.1)
    for pid in _group_pids(pgid):
        with suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    if left:
        log(f"killed what was left of worker group {pgid}: {left}")
    if process.poll() is None:
        process.wait(timeout=10)


@contextmanager
def worker(system: System, marks: Path, logfile: Path) -> Iterator[subprocess.Popen[bytes]]:
    """One worker process of ``system``, in a process group of its own; always stopped."""
    env = {
        **os.environ,
        **system.worker_env(),
        "PEERS_MARKS": str(marks),
        "PYTHONPATH": os.pathsep.join(filter(None, [str(HERE), os.environ.get("PYTHONPATH")])),
    }
    with logfile.open("wb") as out:
        process = subprocess.Popen(
            system.worker_command(),
            cwd=HERE,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        yield process
    finally:
        _stop(process)


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


# -- one system ----------------------------------------------------------------------------


def _timed_ms(call: Callable[[], object], times: int) -> float:
    samples = []
    for _ in range(times):
        start = time.perf_counter()
        call()
        samples.append((time.perf_counter() - start) * 1000)
    return statistics.median(samples)


def _settle(system: System, items: int) -> Counts:
    """Read the status until the system reports every item of the run finished."""
    deadline = time.monotonic() + SETTLE_TIMEOUT_S
    while True:
        counts = system.status()
        if counts.pending == 0 and counts.succeeded + counts.failed >= items:
            return counts
        if time.monotonic() > deadline:
            raise TimeoutError(f"not every item finished: {counts}")
        time.sleep(0.02)


def _check(counts: Counts, items: int) -> str:
    """An empty string when the counts are the run's, else what is off."""
    failed = sum(1 for n in range(items) if fails(n))
    # A status scoped to a queue (RQ, arq, procrastinate) counts the warm-up item too.
    if counts.failed == failed and counts.succeeded - (items - failed) in (0, 1):
        return ""
    return f"status read {counts}, expected {items - failed} succeeded and {failed} failed"


def measure(system: System, items: int, rounds: int, status_reads: int, seed: int) -> Result:
    """Run the whole workload on ``system``; its worker is stopped and its store cleaned."""
    result = Result(system.key, system.name, system.store, footnote=system.footnote)
    why = system.unavailable()
    if why is not None:
        result.skipped = why
        log(f"{system.name} on {system.store} skipped: {why}")
        return result
    with tempfile.TemporaryDirectory(prefix="batchkit-peers-") as tmp:
        marks_path, logfile = Path(tmp) / "marks", Path(tmp) / "worker.log"
        reader = MarkReader(marks_path)
        try:
            system.setup()
            result.server = system.server()
            result.worker = system.worker_note()
            log(f"{system.name} on {result.server}: starting a worker ({result.worker})")
            with worker(system, marks_path, logfile) as process:
                system.submit_one("warmup")
                try:
                    reader.wait("warmup", 1, WARM_UP_TIMEOUT_S, interval=0.05)
                except TimeoutError:
                    code = process.poll()
                    raise RuntimeError(
                        f"the worker did not run the warm-up item (exit status {code}); "
                        f"its log ends:\n{_tail(logfile)}"
                    ) from None
                time.sleep(IDLE_BEFORE_SUBMIT_S)

                start = time.perf_counter()
                system.submit("run", items)
                result.submit_s = time.perf_counter() - start
                submitted_at = time.time()
                log(f"  submitted {items:,} items in {result.submit_s:.2f} s")
                marks = reader.wait("run", items, max(300.0, items / 20), interval=0.02)
                first = min(mark.start for mark in marks)
                last = max(mark.end for mark in marks)
                result.items_per_s = items / (last - first)
                early = sum(1 for mark in marks if mark.start < submitted_at)
                result.during_submit = early / items
                log(
                    f"  ran them at {result.items_per_s:,.0f} items/s ({last - first:.2f} s; "
                    f"{early:,} started before the submit returned)"
                )

                result.counts = _settle(system, items)
                result.note = _check(result.counts, items)
                if result.note:
                    log(f"  {result.note}")
                result.status_ms = _timed_ms(system.status, status_reads)
                log(f"  status read: median {result.status_ms:.2f} ms ({result.counts})")
                listed: list[int] = []
                result.list_ms = _timed_ms(lambda: listed.append(system.listing()), LISTINGS)
                log(f"  listing: median {result.list_ms:,.0f} ms ({listed[-1]:,} items)")
                if listed[-1] < items:
                    raise RuntimeError(f"the listing read {listed[-1]} of {items} items")

                pauses = random.Random(seed)
                for n in range(rounds):
                    time.sleep(pauses.uniform(0.05, 0.25))
                    tag = f"idle{n}"
                    before = time.time()
                    system.submit_one(tag)
                    (mark,) = reader.wait(tag, 1, 60.0, interval=0.001)
                    result.idle_ms.append((mark.start - before) * 1000)
                log(
                    f"  idle latency over {rounds} rounds: median {result.idle_median:.1f} ms, "
                    f"p99 {result.idle_p99:.1f} ms"
                )
                result.rss_mb, result.processes = group_rss_mb(process.pid)
                log(f"  worker RSS {result.rss_mb:.0f} MB in {result.processes} process(es)")
        finally:
            try:
                system.cleanup()
                log(f"  {system.name}: stopped, store cleaned")
            except Exception as exc:
                log(f"  {system.name}: cleaning up failed: {exc!r}")
    return result


# -- the report ----------------------------------------------------------------------------


def _cell(value: float, base: float | None, spec: str, suffix: str = "") -> str:
    text = format(value, spec) + suffix
    if base is None or base <= 0:
        return text
    return f"{text} ({value / base:.2f}×)"  # noqa: RUF001


def _versions() -> str:
    found = []
    for package in PACKAGES:
        try:
            found.append(f"{package} {importlib.metadata.version(package)}")
        except importlib.metadata.PackageNotFoundError:
            continue
    return ", ".join(found)


def report(results: list[Result], *, items: int, rounds: int, status_reads: int) -> str:
    """The Markdown table, its legend and the versions line."""
    measured = [r for r in results if r.skipped is None]
    base = {r.store: r for r in measured if r.key.startswith("batchkit-")}
    lines = [
        f"| system | store | worker | submit {items:,} (s) | run (items/s) | started during "
        f"the submit | status read (ms) | list {items:,} (ms) | idle median (ms) "
        "| idle p99 (ms) | worker RSS (MB) |",
        "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in measured:
        b = base.get(r.store) if not r.key.startswith("batchkit-") else None
        rss = _cell(r.rss_mb, b.rss_mb if b else None, ".0f")
        lines.append(
            f"| {r.name} | {r.store} | {r.worker} "
            f"| {_cell(r.submit_s, b.submit_s if b else None, '.2f')} "
            f"| {_cell(r.items_per_s, b.items_per_s if b else None, ',.0f')} "
            f"| {r.during_submit:.0%} "
            f"| {_cell(r.status_ms, b.status_ms if b else None, ',.2f')} "
            f"| {_cell(r.list_ms, b.list_ms if b else None, ',.0f')} "
            f"| {_cell(r.idle_median, b.idle_median if b else None, '.1f')} "
            f"| {_cell(r.idle_p99, b.idle_p99 if b else None, '.1f')} "
            f"| {rss}{'' if r.processes == 1 else f', {r.processes} processes'} |"
        )
    servers = sorted({r.server for r in measured})
    lines += [
        "",
        f"{items:,} no-op items, every 10th raising, submitted to one idle worker process; "
        f"status read: median of {status_reads}, listing: median of {LISTINGS}, idle "
        f"latency: {rounds} one-item rounds. In brackets: the figure over batchkit's on the "
        "same store in this run (above 1: more time or memory; for items/s, more "
        "throughput). *Started during the submit*: the share of the items that started "
        "before the submit returned; near 100 %, the run's rate is bounded by the submit's.",
        "",
        f"Python {platform.python_version()}, {os.cpu_count()} CPUs "
        f"({platform.system()} {platform.machine()}), shared by the workers, the host and "
        f"the stores; {_versions()}; {', '.join(servers)}.",
    ]
    footnotes = [r.footnote for r in measured if r.footnote]
    if footnotes:
        lines += ["", *(f"- {line}" for line in footnotes)]
    for r in results:
        if r.skipped is not None:
            lines.append(f"\n{r.name} on {r.store} skipped: {r.skipped}")
        elif r.note:
            lines.append(f"\n{r.name} on {r.store}: {r.note}")
    return "\n".join(lines)


def _terminate(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None) -> int:
    """Measure every system asked for and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument(
        "--systems",
        default=",".join(SYSTEMS),
        help=f"comma-separated, from {', '.join(SYSTEMS)} (all by default)",
    )
    parser.add_argument("--items", type=int, default=10_000, help="items of the run (10,000)")
    parser.add_argument("--rounds", type=int, default=50, help="idle-latency rounds (50)")
    parser.add_argument("--concurrency", type=int, default=1, help="items a worker runs at once")
    parser.add_argument("--status-reads", type=int, default=5, help="status reads timed (5)")
    parser.add_argument("--seed", type=int, default=1, help="seed of the idle rounds' pauses")
    parser.add_argument("--quick", action="store_true", help="2,000 items and 20 idle rounds")
    args = parser.parse_args(argv)
    keys = [key.strip() for key in args.systems.split(",") if key.strip()]
    unknown = sorted(set(keys) - set(SYSTEMS))
    if unknown or not keys:
        parser.error(f"--systems takes {', '.join(SYSTEMS)}; got {args.systems!r}")
    items, rounds = (2_000, 20) if args.quick else (args.items, args.rounds)
    if items < 10 or rounds < 1 or args.concurrency < 1 or args.status_reads < 1:
        parser.error("--items must be at least 10, the others at least 1")

    signal.signal(signal.SIGTERM, _terminate)
    results: list[Result] = []
    for key in sorted(keys, key=SYSTEMS.index):
        system = make_system(key, args.concurrency)
        try:
            results.append(measure(system, items, rounds, args.status_reads, args.seed))
        except Exception as exc:
            log(f"{system.name} on {system.store} failed: {exc}")
            results.append(Result(key, system.name, system.store, skipped=f"failed: {exc}"))
    print(report(results, items=items, rounds=rounds, status_reads=args.status_reads))
    return 0


if __name__ == "__main__":
    sys.exit(main())
