"""The host's side of each system: set up a store, start a worker, submit, read, clean up.

Every system is driven through the same `System` methods, synchronous from the harness's
point of view (the asynchronous clients, batchkit's, arq's and procrastinate's, run on
an event loop of their own kept for the whole measurement). Each imports its library
only when it is measured, so that a library that is not installed only skips its row.

What a status read and a listing are, per system (the cheapest way its API offers to
learn how many items of the run are done and failed, and every item's state):

* batchkit: ``runner.status(batch_id)`` (counters kept with every transition: one read),
  and ``runner.items(batch_id, limit=1000, after=...)`` page by page.
* Celery: no aggregate exists; both read every task's result from the result backend
  with ``backend.get_many`` (one ``MGET`` of all the task ids, one pass, no cache), and
  the status read counts ``SUCCESS`` and ``FAILURE``. ``GroupResult.completed_count()``
  would read the results one round trip at a time.
* RQ: the queue's registries (``FinishedJobRegistry.count`` and
  ``FailedJobRegistry.count``, one ``ZCARD`` each, plus the queue's length and the
  started registry), scoped to the queue, so the warm-up job is counted too; the
  listing is ``Job.fetch_many`` (one pipeline of ``HGETALL``) and each job's status.
* arq: what ``ArqRedis.all_job_results()`` does (``KEYS arq:result:*``, then each job's
  ``Job.result_info()``), with 100 reads in flight rather than all at once (its pool
  would open a connection per read); arq has no per-batch view, so it reads every
  result in the database (the warm-up's too). The same reads serve as the listing.
* Dramatiq: the result backend, one ``get_result(message, block=False)`` per message
  (``ResultMissing``: not done; ``ResultFailure``: failed). ``group.completed_count``
  does the same and stops at the first failure, so it cannot count failures.
* procrastinate: ``job_manager.list_queues_async(queue=...)``, the counts of the queue's
  jobs by status (one ``GROUP BY`` over its jobs table), and
  ``job_manager.list_jobs_async(queue=...)`` for the listing; both see the warm-up job.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit, urlunsplit

if TYPE_CHECKING:
    from collections.abc import Awaitable, Sequence

__all__ = ["SYSTEMS", "Counts", "System", "make_system"]

HERE = Path(__file__).resolve().parent
BIN = Path(sys.executable).parent

POSTGRES_URL = os.environ.get(
    "BATCHKIT_BENCH_POSTGRES_URL", "postgresql+asyncpg://postgres@127.0.0.1:5432/test"
)
REDIS_URL = os.environ.get("BATCHKIT_BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")
#: The Redis database each peer uses on the server of ``REDIS_URL``; it must be empty
#: when the peer starts, and is emptied when it is done.
REDIS_DBS = {"celery": 11, "rq": 12, "rq-simple": 12, "arq": 13, "dramatiq": 14}


def redis_db_url(db: int) -> str:
    """``REDIS_URL`` pointed at database ``db``."""
    parts = urlsplit(REDIS_URL)
    return urlunsplit((parts.scheme, parts.netloc, f"/{db}", "", ""))


def plain_postgres_url() -> str:
    """``POSTGRES_URL`` without SQLAlchemy's driver suffix, for psycopg."""
    parts = urlsplit(POSTGRES_URL)
    return urlunsplit(("postgresql", parts.netloc, parts.path, parts.query, ""))


@dataclass(frozen=True)
class Counts:
    """What a status read tells: items succeeded, failed and not finished yet."""

    succeeded: int
    failed: int
    pending: int


class System:
    """One system on one store; subclasses fill in each step."""

    key = ""
    name = ""
    store = ""
    package = ""
    #: A line under the table about how this system was run, when it needs one.
    footnote = ""

    def __init__(self, concurrency: int) -> None:
        self.concurrency = concurrency
        self._loop: asyncio.Runner | None = None

    # -- helpers -------------------------------------------------------------------------

    def _run(self, awaitable: Awaitable[Any]) -> Any:
        """Await ``awaitable`` on this system's event loop, kept between calls."""

        async def wait() -> Any:
            return await awaitable

        if self._loop is None:
            self._loop = asyncio.Runner()
        return self._loop.run(wait())

    def _close_loop(self) -> None:
        if self._loop is not None:
            self._loop.close()
            self._loop = None

    # -- what each system provides -------------------------------------------------------

    def unavailable(self) -> str | None:
        """Why this system cannot be measured here (not installed, store down), or None."""
        raise NotImplementedError

    def setup(self) -> None:
        """Create what the run needs on the store, and the host's client."""

    def worker_command(self) -> list[str]:
        """The command that starts one worker process, run in this folder."""
        raise NotImplementedError

    def worker_env(self) -> dict[str, str]:
        """Environment variables the worker needs, beyond the harness's."""
        return {}

    def worker_note(self) -> str:
        """How the worker runs, for the table."""
        raise NotImplementedError

    def submit(self, tag: str, count: int) -> None:
        """Enqueue items 0 to ``count - 1`` under ``tag``, the way the library offers."""
        raise NotImplementedError

    def submit_one(self, tag: str) -> None:
        """Enqueue one item (number 0, which does not fail) under ``tag``."""
        raise NotImplementedError

    def status(self) -> Counts:
        """How many items of the last `submit` are done and failed."""
        raise NotImplementedError

    def listing(self) -> int:
        """Read every item's state; the number of items listed."""
        raise NotImplementedError

    def server(self) -> str:
        """The store's server version."""
        raise NotImplementedError

    def cleanup(self) -> None:
        """Drop everything the run created; close the clients."""
        self._close_loop()


def _missing(*modules: str) -> str | None:
    import importlib

    for module in modules:
        try:
            importlib.import_module(module)
        except ImportError as exc:
            return f"cannot import {module} ({exc})"
    return None


def _unreachable(url: str) -> str | None:
    import socket

    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 0
    try:
        with socket.create_connection((host, port), 2):
            return None
    except OSError as exc:
        return f"{host}:{port} is not reachable ({exc})"


def _redis_version(url: str) -> str:
    from redis import Redis

    client = Redis.from_url(url)
    try:
        return f"Redis {client.info('server')['redis_version']}"
    finally:
        client.close()


def _postgres_version() -> str:
    import psycopg

    with psycopg.connect(plain_postgres_url()) as conn:
        row = conn.execute("SHOW server_version").fetchone()
    return f"PostgreSQL {row[0].split()[0] if row else '?'}"


# -- batchkit ---------------------------------------------------------------------------


class Batchkit(System):
    """batchkit: one ``python -m batchkit worker``; a batch of N items in one submit."""

    package = "batchkit"
    name = "batchkit"

    def __init__(self, concurrency: int, store: str) -> None:
        super().__init__(concurrency)
        self.key = f"batchkit-{store}"
        self.store = {"sqlite": "SQLite", "postgres": "PostgreSQL", "redis": "Redis"}[store]
        self._kind = store
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        self._storage: Any = None
        self._runner: Any = None
        self._batch_id = ""
        if store == "redis":
            self.url = REDIS_URL
            self.prefix = f"bp{secrets.token_hex(3)}"
        else:
            self.url = POSTGRES_URL if store == "postgres" else ""
            self.prefix = f"bp{secrets.token_hex(3)}_"

    def unavailable(self) -> str | None:
        modules = {
            "sqlite": ["batchkit.storage.sql", "aiosqlite"],
            "postgres": ["batchkit.storage.sql", "asyncpg"],
            "redis": ["batchkit.storage.redis"],
        }[self._kind]
        return _missing("batchkit", *modules) or (
            None if self._kind == "sqlite" else _unreachable(self.url)
        )

    def setup(self) -> None:
        from batchkit_tasks import item

        from batchkit import BatchRunner

        if self._kind == "sqlite":
            self._tmp = tempfile.TemporaryDirectory(prefix="batchkit-peers-")
            self.url = f"sqlite+aiosqlite:///{self._tmp.name}/peers.db"
        if self._kind == "redis":
            from batchkit.storage.redis import RedisStorage

            self._storage = RedisStorage(self.url, prefix=self.prefix)
        else:
            from batchkit.storage.sql import SQLStorage

            self._storage = SQLStorage(self.url, table_prefix=self.prefix)
        self._run(self._storage.__aenter__())
        self._run(self._storage.list_batches(limit=1))  # the tables exist before the worker
        self._runner = BatchRunner(self._storage, item)

    def worker_command(self) -> list[str]:
        return [
            sys.executable,
            "-m",
            "batchkit",
            "worker",
            "--storage",
            self.url,
            "--prefix",
            self.prefix,
            "--generator",
            "batchkit_tasks:item",
            "--concurrency",
            str(self.concurrency),
            "--log-level",
            "WARNING",
            "--no-live",
        ]

    def worker_note(self) -> str:
        return f"1 process, `--concurrency {self.concurrency}`"

    def _specs(self, tag: str, count: int) -> list[dict[str, Any]]:
        return [{"key": f"{tag}-{n}", "payload": {"n": n, "tag": tag}} for n in range(count)]

    def submit(self, tag: str, count: int) -> None:
        batch = self._run(self._runner.submit(self._specs(tag, count)))
        self._batch_id = batch.id

    def submit_one(self, tag: str) -> None:
        self._run(self._runner.submit(self._specs(tag, 1)))

    def status(self) -> Counts:
        from batchkit import ItemState

        status = self._run(self._runner.status(self._batch_id))
        succeeded = status.counts[ItemState.SUCCEEDED]
        failed = status.counts[ItemState.FAILED]
        return Counts(succeeded, failed, sum(status.counts.values()) - succeeded - failed)

    def listing(self) -> int:
        async def read_all() -> int:
            count = 0
            after: int | None = None
            while page := await self._runner.items(self._batch_id, limit=1000, after=after):
                count += len([(item.key, item.state) for item in page])
                after = page[-1].position
            return count

        return int(self._run(read_all()))

    def server(self) -> str:
        if self._kind == "sqlite":
            import sqlite3

            return f"SQLite {sqlite3.sqlite_version}"
        if self._kind == "redis":
            return _redis_version(self.url)
        return _postgres_version()

    def cleanup(self) -> None:
        try:
            if self._storage is not None:
                self._run(self._drop())
        finally:
            self._close_loop()
            if self._tmp is not None:
                self._tmp.cleanup()

    async def _drop(self) -> None:
        storage, self._storage = self._storage, None
        try:
            if self._kind == "redis":
                from redis.asyncio import Redis

                client = Redis.from_url(self.url)
                try:
                    keys = [key async for key in client.scan_iter(match=f"{self.prefix}:*")]
                    for start in range(0, len(keys), 1_000):
                        await client.unlink(*keys[start : start + 1_000])
                finally:
                    await client.aclose()
            elif self._kind == "postgres":
                async with storage.engine.begin() as conn:
                    await conn.run_sync(storage.metadata.drop_all, checkfirst=True)
        finally:
            await storage.__aexit__(None, None, None)


# -- peers on Redis ---------------------------------------------------------------------


class RedisPeer(System):
    """A peer on a Redis database of its own: empty at the start, emptied at the end."""

    store = "Redis"
    modules: Sequence[str] = ()

    def __init__(self, concurrency: int) -> None:
        super().__init__(concurrency)
        self.url = redis_db_url(REDIS_DBS[self.key])

    def unavailable(self) -> str | None:
        why = _missing(*self.modules) or _unreachable(self.url)
        if why is not None:
            return why
        from redis import Redis

        client = Redis.from_url(self.url)
        try:
            size = client.dbsize()
        finally:
            client.close()
        if size:
            return f"Redis database {REDIS_DBS[self.key]} holds {size} keys; it must be empty"
        return None

    def server(self) -> str:
        return _redis_version(self.url)

    def cleanup(self) -> None:
        from redis import Redis

        try:
            client = Redis.from_url(self.url)
            try:
                client.flushdb()
            finally:
                client.close()
        finally:
            super().cleanup()


class CeleryPeer(RedisPeer):
    """Celery: a worker with the solo pool (one process) for concurrency 1."""

    key = "celery"
    name = "Celery"
    package = "celery"
    modules = ("celery", "redis")
    footnote = (
        "Celery runs with `--pool solo` at concurrency 1 (tasks run in the worker process "
        "itself); its default pool, prefork, would add a child process and a hop through a "
        "pipe per task."
    )

    def worker_env(self) -> dict[str, str]:
        return {"PEERS_CELERY_URL": self.url}

    def setup(self) -> None:
        os.environ["PEERS_CELERY_URL"] = self.url
        import celery_tasks

        self._tasks = celery_tasks
        self._ids: list[str] = []

    def _pool(self) -> list[str]:
        return ["--pool", "solo"] if self.concurrency == 1 else ["--pool", "prefork"]

    def worker_command(self) -> list[str]:
        return [
            str(BIN / "celery"),
            "-A",
            "celery_tasks",
            "worker",
            *self._pool(),
            "--concurrency",
            str(self.concurrency),
            "--loglevel",
            "WARNING",
        ]

    def worker_note(self) -> str:
        return f"`{' '.join(self._pool())} --concurrency {self.concurrency}`"

    def submit(self, tag: str, count: int) -> None:
        from celery import group

        item = self._tasks.item
        result = group(item.s(n, tag) for n in range(count)).apply_async()
        self._ids = [child.id for child in result.results]

    def submit_one(self, tag: str) -> None:
        self._tasks.item.delay(0, tag)

    def _metas(self) -> list[tuple[str, dict[str, Any]]]:
        backend = self._tasks.app.backend
        return list(backend.get_many(self._ids, interval=0, max_iterations=1))

    def status(self) -> Counts:
        states = [meta["status"] for _, meta in self._metas()]
        succeeded, failed = states.count("SUCCESS"), states.count("FAILURE")
        return Counts(succeeded, failed, len(self._ids) - succeeded - failed)

    def listing(self) -> int:
        return len({task_id: meta["status"] for task_id, meta in self._metas()})


class RQPeer(RedisPeer):
    """RQ: ``rq worker``, which forks a work horse for every job (its default)."""

    key = "rq"
    name = "RQ"
    package = "rq"
    modules = ("rq",)
    worker_class = ""
    footnote = (
        "RQ's default worker forks a work horse for every job, which isolates jobs and "
        "costs a fork each; `SimpleWorker` runs them in the worker process."
    )

    def setup(self) -> None:
        import rq_tasks
        from redis import Redis
        from rq import Queue

        self._redis = Redis.from_url(self.url)
        self._queue = Queue(rq_tasks.QUEUE, connection=self._redis)
        self._item = rq_tasks.item
        self._ids: list[str] = []

    def worker_command(self) -> list[str]:
        from rq_tasks import QUEUE

        verb = ["worker"] if self.concurrency == 1 else ["worker-pool", "-n", str(self.concurrency)]
        klass = ["-w", self.worker_class] if self.worker_class else []
        return [
            str(BIN / "rq"),
            *verb,
            "--url",
            self.url,
            "--path",
            str(HERE),
            "--logging_level",
            "WARNING",
            *klass,
            QUEUE,
        ]

    def worker_note(self) -> str:
        what = "rq worker" if self.concurrency == 1 else f"rq worker-pool -n {self.concurrency}"
        if self.worker_class:
            return f"`{what} -w {self.worker_class}`, no fork"
        return f"`{what}`, a fork per job"

    def submit(self, tag: str, count: int) -> None:
        from rq import Queue

        jobs = self._queue.enqueue_many(
            [Queue.prepare_data(self._item, args=(n, tag)) for n in range(count)]
        )
        self._ids = [job.id for job in jobs]

    def submit_one(self, tag: str) -> None:
        self._queue.enqueue(self._item, 0, tag)

    def status(self) -> Counts:
        queue = self._queue
        succeeded = queue.finished_job_registry.count
        failed = queue.failed_job_registry.count
        return Counts(succeeded, failed, queue.count + queue.started_job_registry.count)

    def listing(self) -> int:
        from rq.job import Job

        jobs = Job.fetch_many(self._ids, connection=self._redis)
        return len([job.get_status(refresh=False) for job in jobs if job is not None])

    def cleanup(self) -> None:
        redis = getattr(self, "_redis", None)
        try:
            super().cleanup()
        finally:
            if redis is not None:
                redis.close()


class RQSimplePeer(RQPeer):
    """RQ with ``SimpleWorker``: jobs run in the worker process itself, no fork."""

    key = "rq-simple"
    name = "RQ (SimpleWorker)"
    worker_class = "rq.SimpleWorker"
    footnote = ""


class ArqPeer(RedisPeer):
    """arq: ``arq arq_tasks.WorkerSettings`` at its default ``max_jobs`` (10) or more.

    arq's worker polls its queue every ``poll_delay`` (0.5 s) and, in each poll, starts
    jobs only while fewer than ``max_jobs`` run: at ``max_jobs=1`` it starts one job
    per poll, about 2 items/s, whatever the jobs cost. So it runs at its default of 10
    (or ``--concurrency`` when that is more), and the table says so.
    """

    key = "arq"
    name = "arq"
    package = "arq"
    modules = ("arq",)
    #: Enqueues in flight at once: arq enqueues one job per call (a WATCH/MULTI/EXEC).
    SUBMIT_IN_FLIGHT = 100

    DEFAULT_MAX_JOBS = 10
    footnote = (
        "arq runs at `max_jobs=10`, its default: at `max_jobs=1` its worker starts one job "
        "per poll of its queue (every 0.5 s), about 2 items/s however cheap the jobs are."
    )

    @property
    def max_jobs(self) -> int:
        """The jobs the worker runs at once."""
        return max(self.concurrency, self.DEFAULT_MAX_JOBS)

    def worker_env(self) -> dict[str, str]:
        return {"PEERS_ARQ_URL": self.url, "PEERS_CONCURRENCY": str(self.max_jobs)}

    def setup(self) -> None:
        from arq import create_pool
        from arq.connections import RedisSettings

        self._pool: Any = self._run(create_pool(RedisSettings.from_dsn(self.url)))

    def worker_command(self) -> list[str]:
        return [str(BIN / "arq"), "arq_tasks.WorkerSettings"]

    def worker_note(self) -> str:
        return f"`max_jobs={self.max_jobs}` (see below), default `poll_delay` (0.5 s)"

    def submit(self, tag: str, count: int) -> None:
        async def enqueue_all() -> None:
            step = self.SUBMIT_IN_FLIGHT
            for start in range(0, count, step):
                await asyncio.gather(
                    *(
                        self._pool.enqueue_job("item", n, tag)
                        for n in range(start, min(count, start + step))
                    )
                )

        self._run(enqueue_all())

    def submit_one(self, tag: str) -> None:
        self._run(self._pool.enqueue_job("item", 0, tag))

    def _results(self) -> list[Any]:
        # What ArqRedis.all_job_results() does (KEYS, then each result), with at most
        # SUBMIT_IN_FLIGHT reads in flight: all_job_results() starts one read per job at
        # once, and its pool opens a connection for each, thousands for a large run.
        from arq.constants import result_key_prefix
        from arq.jobs import Job

        async def read_all() -> list[Any]:
            keys = await self._pool.keys(result_key_prefix + "*")
            ids = [key.decode()[len(result_key_prefix) :] for key in keys]
            results: list[Any] = []
            step = self.SUBMIT_IN_FLIGHT
            for start in range(0, len(ids), step):
                jobs = [Job(job_id, self._pool) for job_id in ids[start : start + step]]
                results += await asyncio.gather(*(job.result_info() for job in jobs))
            return [r for r in results if r is not None]

        return list(self._run(read_all()))

    def status(self) -> Counts:
        results = self._results()
        succeeded = sum(1 for r in results if r.success)
        queued = self._run(self._pool.zcard("arq:queue"))
        return Counts(succeeded, len(results) - succeeded, int(queued))

    def listing(self) -> int:
        return len([(r.job_id, r.success) for r in self._results()])

    def cleanup(self) -> None:
        pool = getattr(self, "_pool", None)
        try:
            if pool is not None:
                self._run(pool.aclose())
        finally:
            super().cleanup()


class DramatiqPeer(RedisPeer):
    """Dramatiq: ``dramatiq dramatiq_tasks`` with one worker process."""

    key = "dramatiq"
    name = "Dramatiq"
    package = "dramatiq"
    modules = ("dramatiq", "redis")

    def worker_env(self) -> dict[str, str]:
        return {"PEERS_DRAMATIQ_URL": self.url}

    def setup(self) -> None:
        os.environ["PEERS_DRAMATIQ_URL"] = self.url
        import dramatiq_tasks

        self._tasks = dramatiq_tasks
        self._messages: list[Any] = []

    def worker_command(self) -> list[str]:
        return [
            str(BIN / "dramatiq"),
            "dramatiq_tasks",
            "--processes",
            "1",
            "--threads",
            str(self.concurrency),
            "--path",
            str(HERE),
        ]

    def worker_note(self) -> str:
        return f"`--processes 1 --threads {self.concurrency}` (and its parent)"

    def submit(self, tag: str, count: int) -> None:
        from dramatiq import group

        item = self._tasks.item
        self._messages = list(group(item.message(n, tag) for n in range(count)).run().children)

    def submit_one(self, tag: str) -> None:
        self._tasks.item.send(0, tag)

    def _states(self) -> list[str]:
        from dramatiq.results import ResultFailure, ResultMissing

        backend = self._tasks.backend
        states: list[str] = []
        for message in self._messages:
            try:
                backend.get_result(message, block=False)
                states.append("succeeded")
            except ResultMissing:
                states.append("pending")
            except ResultFailure:
                states.append("failed")
        return states

    def status(self) -> Counts:
        states = self._states()
        return Counts(states.count("succeeded"), states.count("failed"), states.count("pending"))

    def listing(self) -> int:
        return len(self._states())

    def cleanup(self) -> None:
        tasks = getattr(self, "_tasks", None)
        try:
            super().cleanup()
        finally:
            if tasks is not None:
                tasks.broker.close()


# -- procrastinate on PostgreSQL --------------------------------------------------------


class ProcrastinatePeer(System):
    """procrastinate: ``procrastinate worker`` on a schema of its own, dropped after."""

    key = "procrastinate"
    name = "procrastinate"
    store = "PostgreSQL"
    package = "procrastinate"

    def __init__(self, concurrency: int) -> None:
        super().__init__(concurrency)
        self.dsn = plain_postgres_url()
        self.schema = f"peers_{secrets.token_hex(3)}"
        self._created = False

    def unavailable(self) -> str | None:
        return _missing("procrastinate", "psycopg") or _unreachable(self.dsn)

    def worker_env(self) -> dict[str, str]:
        return {"PEERS_PROCRASTINATE_DSN": self.dsn, "PEERS_PROCRASTINATE_SCHEMA": self.schema}

    def setup(self) -> None:
        import psycopg
        from psycopg import sql

        with psycopg.connect(self.dsn, autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(self.schema)))
        self._created = True
        os.environ.update(self.worker_env())
        import procrastinate_tasks

        self._tasks = procrastinate_tasks
        self._run(self._tasks.app.open_async())
        self._run(self._tasks.app.schema_manager.apply_schema_async())

    def worker_command(self) -> list[str]:
        return [
            str(BIN / "procrastinate"),
            "--app",
            "procrastinate_tasks.app",
            "--log-level",
            "warning",
            "worker",
            "--queues",
            self._tasks.QUEUE,
            "--concurrency",
            str(self.concurrency),
        ]

    def worker_note(self) -> str:
        return f"`--concurrency {self.concurrency}`, LISTEN/NOTIFY"

    def submit(self, tag: str, count: int) -> None:
        kwargs = [{"n": n, "tag": tag} for n in range(count)]
        self._run(self._tasks.item.batch_defer_async(*kwargs))

    def submit_one(self, tag: str) -> None:
        self._run(self._tasks.item.defer_async(n=0, tag=tag))

    def status(self) -> Counts:
        manager = self._tasks.app.job_manager
        (queue,) = self._run(manager.list_queues_async(queue=self._tasks.QUEUE))
        succeeded, failed = queue["succeeded"], queue["failed"]
        return Counts(succeeded, failed, queue["jobs_count"] - succeeded - failed)

    def listing(self) -> int:
        manager = self._tasks.app.job_manager
        jobs = self._run(manager.list_jobs_async(queue=self._tasks.QUEUE))
        return len([(job.id, job.status) for job in jobs])

    def server(self) -> str:
        return _postgres_version()

    def cleanup(self) -> None:
        import psycopg
        from psycopg import sql

        try:
            tasks = getattr(self, "_tasks", None)
            if tasks is not None:
                self._run(tasks.app.close_async())
        finally:
            self._close_loop()
            if self._created:
                with psycopg.connect(self.dsn, autocommit=True) as conn:
                    conn.execute(
                        sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(self.schema))
                    )


#: Every system, in the order they are measured (batchkit first on each store).
SYSTEMS = (
    "batchkit-sqlite",
    "batchkit-postgres",
    "procrastinate",
    "batchkit-redis",
    "celery",
    "rq",
    "rq-simple",
    "arq",
    "dramatiq",
)


def make_system(key: str, concurrency: int) -> System:
    """The system called ``key`` (one of `SYSTEMS`)."""
    if key.startswith("batchkit-"):
        return Batchkit(concurrency, key.removeprefix("batchkit-"))
    peers: dict[str, type[System]] = {
        "celery": CeleryPeer,
        "rq": RQPeer,
        "rq-simple": RQSimplePeer,
        "arq": ArqPeer,
        "dramatiq": DramatiqPeer,
        "procrastinate": ProcrastinatePeer,
    }
    return peers[key](concurrency)
