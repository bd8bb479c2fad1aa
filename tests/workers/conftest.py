"""Stores and worker processes for the worker tests.

A `Store` is one database (or Redis) under a table or key prefix of the test's own,
emptied afterwards. `Workers` starts real ``python -m batchkit worker`` processes on it
and reads back what their generator logged (see ``_generators.py``).
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
from collections import defaultdict
from contextlib import ExitStack
from dataclasses import dataclass, field
from itertools import pairwise
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio
import pytest

from tests.storage.conftest import (
    MYSQL_URL,
    POSTGRES_URL,
    REDIS_URL,
    _drop_tables,
    drop_redis_keys,
    require_server,
)

if TYPE_CHECKING:
    from collections.abc import Iterator

    from anyio.abc import Process

    from batchkit.protocols import Storage

__all__ = ["ROOT", "Run", "Store", "Workers"]

ROOT = Path(__file__).resolve().parents[2]
GENERATORS = "tests.workers._generators"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@dataclass
class Store:
    """One store under a prefix of the test's own."""

    name: str
    url: str
    prefix: str

    def storage(self) -> Storage:
        """A new storage on it (not yet entered)."""
        if self.name == "redis":
            from batchkit.storage.redis import RedisStorage

            return RedisStorage(self.url, prefix=self.prefix)
        from batchkit.storage.sql import SQLStorage

        return SQLStorage(self.url, table_prefix=self.prefix)

    def cli(self) -> list[str]:
        """The worker options that name it."""
        return ["--storage", self.url, "--prefix", self.prefix]

    async def kill_connections(self) -> int:
        """Drop every other client's connection to the server; how many were dropped."""
        if self.name == "postgres":
            from sqlalchemy import text
            from sqlalchemy.ext.asyncio import create_async_engine

            engine = create_async_engine(self.url, isolation_level="AUTOCOMMIT")
            try:
                async with engine.connect() as conn:
                    found = await conn.execute(
                        text(
                            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                            "WHERE datname = current_database() AND pid <> pg_backend_pid() "
                            "AND backend_type = 'client backend'"
                        )
                    )
                    return int(found.scalar() or 0)
            finally:
                await engine.dispose()
        if self.name == "mysql":
            from sqlalchemy import text
            from sqlalchemy.exc import DBAPIError
            from sqlalchemy.ext.asyncio import create_async_engine

            engine = create_async_engine(self.url, isolation_level="AUTOCOMMIT")
            killed = 0
            try:
                async with engine.connect() as conn:
                    ids = (
                        await conn.execute(
                            text(
                                "SELECT ID FROM information_schema.PROCESSLIST "
                                "WHERE ID <> CONNECTION_ID() AND DB = DATABASE()"
                            )
                        )
                    ).scalars()
                    for connection_id in list(ids):
                        try:
                            await conn.execute(text(f"KILL CONNECTION {int(connection_id):d}"))
                            killed += 1
                        except DBAPIError:
                            pass  # gone by itself meanwhile
            finally:
                await engine.dispose()
            return killed
        if self.name == "redis":
            from redis.asyncio import Redis

            client = Redis.from_url(self.url)
            try:
                return int(await client.client_kill_filter(_type="normal", skipme=True))
            finally:
                await client.aclose()
        raise ValueError(f"{self.name} has no connections to drop")


def _store(name: str, url: str) -> Iterator[Store]:
    store = Store(name, url, f"w{secrets.token_hex(4)}_")
    yield store
    if name == "redis":
        anyio.run(drop_redis_keys, url, store.prefix)
    elif name != "sqlite":
        anyio.run(_drop_tables, url, [store.prefix])


@pytest.fixture
def sqlite_store(tmp_path: Path) -> Iterator[Store]:
    yield from _store("sqlite", f"sqlite+aiosqlite:///{tmp_path / 'batchkit.db'}")


@pytest.fixture
def postgres_store() -> Iterator[Store]:
    require_server(POSTGRES_URL, "PostgreSQL")
    yield from _store("postgres", POSTGRES_URL)


@pytest.fixture
def mysql_store() -> Iterator[Store]:
    require_server(MYSQL_URL, "MariaDB/MySQL")
    yield from _store("mysql", MYSQL_URL)


@pytest.fixture
def redis_store() -> Iterator[Store]:
    require_server(REDIS_URL, "Redis")
    yield from _store("redis", REDIS_URL)


@pytest.fixture(params=["sqlite", "postgres", "mysql", "redis"])
def store(request: pytest.FixtureRequest) -> Store:
    """Every store a worker process can share: SQLite, PostgreSQL, MariaDB, Redis."""
    found: Store = request.getfixturevalue(f"{request.param}_store")
    return found


@pytest.fixture(params=["postgres", "mysql", "redis"])
def server_store(request: pytest.FixtureRequest) -> Store:
    """The stores that workers on several machines share: PostgreSQL, MariaDB, Redis."""
    found: Store = request.getfixturevalue(f"{request.param}_store")
    return found


@dataclass
class Run:
    """One attempt of one item, as the generator logged it."""

    key: str
    pid: int
    attempt: int
    start: float
    end: float | None = None


@dataclass
class Workers:
    """Worker processes on one store, their generator's logs and their stderr."""

    store: Store
    tmp_path: Path
    processes: list[Process] = field(default_factory=list)
    _files: ExitStack = field(default_factory=ExitStack)

    @property
    def run_log(self) -> Path:
        return self.tmp_path / "runs.jsonl"

    @property
    def hook_log(self) -> Path:
        return self.tmp_path / "hooks.jsonl"

    async def start(
        self,
        *options: str,
        sleep: float = 0.0,
        generator: str = "generate",
        hook: str | None = "hook",
    ) -> Process:
        """Start ``python -m batchkit worker`` with ``options`` on the store."""
        n = len(self.processes)
        command = [
            sys.executable,
            "-m",
            "batchkit",
            "worker",
            *self.store.cli(),
            "--generator",
            generator if ":" in generator else f"{GENERATORS}:{generator}",
            "--no-live",
            "--name",
            f"worker-{n}",
            *options,
        ]
        if hook is not None:
            command += ["--on-batch-finished", f"{GENERATORS}:{hook}"]
        env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
            "BATCHKIT_TEST_RUNLOG": str(self.run_log),
            "BATCHKIT_TEST_HOOKLOG": str(self.hook_log),
            "BATCHKIT_TEST_SLEEP": repr(sleep),
        }
        env.pop("BATCHKIT_STORAGE", None)
        stderr = self._files.enter_context(self.log_of(n).open("wb"))
        process = await anyio.open_process(
            command, cwd=ROOT, env=env, stdin=subprocess.DEVNULL, stdout=stderr, stderr=stderr
        )
        self.processes.append(process)
        return process

    def log_of(self, n: int) -> Path:
        return self.tmp_path / f"worker-{n}.log"

    def logs(self) -> str:
        """Every worker's output, for an assertion's message."""
        return "\n".join(
            f"--- worker-{n} ---\n{self.log_of(n).read_text(errors='replace')[-12000:]}"
            for n in range(len(self.processes))
        )

    def runs(self) -> dict[str, list[Run]]:
        """Each item's attempts, in the order they started."""
        found: dict[tuple[str, int, int], Run] = {}
        if self.run_log.exists():
            for line in self.run_log.read_text().splitlines():
                entry = json.loads(line)
                slot = (entry["key"], entry["pid"], entry["attempt"])
                if entry["event"] == "start":
                    found[slot] = Run(entry["key"], entry["pid"], entry["attempt"], entry["t"])
                else:
                    found[slot].end = entry["t"]
        runs: dict[str, list[Run]] = defaultdict(list)
        for run in sorted(found.values(), key=lambda r: r.start):
            runs[run.key].append(run)
        return dict(runs)

    def started_by(self, pid: int) -> bool:
        """Whether the process with this pid has started an attempt."""
        if not self.run_log.exists():
            return False
        return f'"pid": {pid},' in self.run_log.read_text()

    def hooks(self) -> list[dict[str, Any]]:
        if not self.hook_log.exists():
            return []
        return [json.loads(line) for line in self.hook_log.read_text().splitlines()]

    async def wait(self, process: Process, timeout: float) -> int:
        """Wait for a process to exit; its exit status (fails the test after ``timeout``)."""
        try:
            with anyio.fail_after(timeout):
                return await process.wait()
        except TimeoutError:
            process.kill()
            await process.wait()
            raise AssertionError(f"a worker did not exit in {timeout} s\n{self.logs()}") from None

    async def aclose(self) -> None:
        for process in self.processes:
            if process.returncode is None:
                process.send_signal(signal.SIGKILL)
            await process.wait()
            await process.aclose()
        self._files.close()


@pytest.fixture
async def workers(tmp_path: Path, request: pytest.FixtureRequest) -> Any:
    store: Store = request.getfixturevalue(
        "store" if "store" in request.fixturenames else "server_store"
    )
    spawned = Workers(store, tmp_path)
    try:
        yield spawned
    finally:
        await spawned.aclose()


def assert_never_at_once(runs: dict[str, list[Run]]) -> None:
    """No item ran in two processes at the same time."""
    for key, attempts in runs.items():
        for a, b in pairwise(attempts):
            assert a.end is not None, f"{key}: attempt {a.attempt} in {a.pid} never ended"
            assert a.end <= b.start, f"{key} ran in {a.pid} and {b.pid} at the same time"
