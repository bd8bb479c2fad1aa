"""Ceilings for the storage benchmark: how fast one connection can commit on each store.

A sequential run (``concurrency=1``) waits for every step of an item before the next, so
one connection's round trip and commit bound it. This module measures that bound on each
store, with nothing of batchkit in the way, so that the benchmark can say how much of it
a run reaches (items per second over the store's operations per second):

* PostgreSQL: the commit rate of a one-row ``UPDATE t SET n = n + 1 WHERE id = 1`` on one
  connection, in autocommit. ``pgbench`` runs it when it is on ``PATH`` (a custom script,
  1 client, 1 thread, its ``tps`` without the initial connection time); otherwise a bare
  asyncpg loop of the same statement.
* MySQL/MariaDB: the same ``UPDATE`` in a bare asyncmy loop, autocommit (the server
  commits each statement).
* SQLite: the same ``UPDATE`` in a bare aiosqlite loop, autocommit, on a file of its own
  with the pragmas `SQLStorage` sets (WAL, ``synchronous=NORMAL``).
* Redis: the round trip of a small script, ``EVAL "return 1" 0``, from one client:
  ``redis-benchmark`` when it is on ``PATH`` (``-c 1 -P 1``), otherwise a bare redis-py
  asyncio loop. batchkit's hot path is one script call per item.

Each SQL ceiling runs on a table of its own (``<prefix>ceiling``), created before and
dropped after; on SQLite the file is deleted too. The Redis script touches no key.
"""

from __future__ import annotations

import os
import re
import shutil
import sqlite3
import tempfile
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import anyio

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

__all__ = ["CEILING_SECONDS", "REDIS_REQUESTS", "Ceiling", "measure_ceiling"]

#: How long each SQL ceiling runs (pgbench's ``-T`` takes whole seconds).
CEILING_SECONDS = 3
#: Requests redis-benchmark sends (about 3 s here); the redis-py loop runs CEILING_SECONDS.
REDIS_REQUESTS = 100_000
#: Statements run before the timed loop: connection and statement caches warm.
WARMUP = 200

_PGBENCH_TPS = re.compile(
    r"tps = ([0-9.]+) \((?:without initial connection time|excluding connections establishing)\)"
)
_REDIS_RPS = re.compile(r"([0-9.]+) requests per second")


@dataclass
class Ceiling:
    """One connection's ceiling on a store: operations per second, and what they were."""

    ops_per_s: float
    #: The operation timed, e.g. "one-row UPDATE, autocommit".
    operation: str
    #: What ran it: "pgbench", "asyncpg loop", "redis-benchmark", "redis-py loop"...
    tool: str
    #: The server, as the benchmark's table names it ("PostgreSQL 15.20").
    server: str
    #: Why a bare driver loop stood in for pgbench or redis-benchmark, when it did.
    fallback: str | None = None

    @property
    def what(self) -> str:
        """The tool and the operation, for a table cell."""
        instead = "" if self.fallback is None else f" ({self.fallback})"
        return f"{self.tool}{instead}, 1 connection: {self.operation}"


def _update(table: str, quote: str = '"') -> str:
    return f"UPDATE {quote}{table}{quote} SET n = n + 1 WHERE id = 1"


async def _timed_loop(step: Callable[[], Awaitable[object]], seconds: float) -> float:
    """Operations per second of ``step`` awaited back to back for ``seconds``."""
    for _ in range(WARMUP):
        await step()
    count = 0
    start = time.perf_counter()
    deadline = start + seconds
    while True:
        await step()
        count += 1
        now = time.perf_counter()
        if now >= deadline:
            return count / (now - start)


async def measure_ceiling(
    dialect: str, url: str, prefix: str, *, seconds: int = CEILING_SECONDS
) -> Ceiling:
    """Measure ``dialect``'s ceiling at ``url``, on a table named ``<prefix>ceiling``."""
    table = f"{prefix}ceiling"
    if dialect == "postgres":
        return await _postgres(url, table, seconds)
    if dialect == "mysql":
        return await _mysql(url, table, seconds)
    if dialect == "sqlite":
        return await _sqlite(url, table, seconds)
    if dialect == "redis":
        return await _redis(url, seconds)
    raise ValueError(f"no ceiling for {dialect!r}")


# -- PostgreSQL ------------------------------------------------------------------------------


def _pg_params(url: str) -> dict[str, Any]:
    from sqlalchemy.engine import make_url

    parsed = make_url(url)
    params = {
        "host": parsed.host,
        "port": parsed.port,
        "user": parsed.username,
        "password": parsed.password,
        "database": parsed.database,
    }
    return {key: value for key, value in params.items() if value is not None}


async def _postgres(url: str, table: str, seconds: int) -> Ceiling:
    """pgbench's commit rate of the one-row UPDATE, or an asyncpg loop's without pgbench.

    Both send the statement as a simple query outside any transaction block: one round
    trip and one commit (``fsync`` of the WAL, with the server's own durability settings)
    each.
    """
    import asyncpg

    params = _pg_params(url)
    statement = _update(table)
    conn = await asyncpg.connect(**params)
    try:
        version = str(await conn.fetchval("SELECT version()"))
        server = " ".join(version.split()[:2])
        await conn.execute(f'CREATE TABLE "{table}" (id integer PRIMARY KEY, n bigint NOT NULL)')
        await conn.execute(f'INSERT INTO "{table}" VALUES (1, 0)')
        operation = f"one-row UPDATE, autocommit, {seconds} s"
        pgbench = shutil.which("pgbench")
        why_not = "pgbench is not on PATH"
        if pgbench is not None:
            tps, why_not = await _pgbench(pgbench, params, statement, seconds)
            if tps is not None:
                return Ceiling(tps, operation, "pgbench", server)
        ops = await _timed_loop(lambda: conn.execute(statement), seconds)
        return Ceiling(ops, operation, "asyncpg loop", server, fallback=why_not)
    finally:
        try:
            await conn.execute(f'DROP TABLE IF EXISTS "{table}"')
        finally:
            await conn.close()


def _pgbench_script(statement: str) -> tuple[str, str]:
    """A pgbench script of ``statement`` in a new folder: (the folder, the script)."""
    scripts = tempfile.mkdtemp(prefix="batchkit-ceiling-")
    script = os.path.join(scripts, "update.sql")
    with open(script, "w") as out:
        out.write(statement + ";\n")
    return scripts, script


async def _pgbench(
    pgbench: str, params: dict[str, Any], statement: str, seconds: int
) -> tuple[float | None, str]:
    """pgbench's tps for ``statement`` (1 client, 1 thread), or None and why not."""
    scripts, script = _pgbench_script(statement)
    try:
        command = [pgbench, "-n", "-f", script, "-c", "1", "-j", "1", "-T", str(seconds)]
        for flag, key in (("-h", "host"), ("-p", "port"), ("-U", "user")):
            if key in params:
                command += [flag, str(params[key])]
        if "database" in params:
            command.append(params["database"])
        env = dict(os.environ)
        if "password" in params:
            env["PGPASSWORD"] = params["password"]
        with anyio.fail_after(seconds + 60):
            done = await anyio.run_process(command, check=False, env=env)
    finally:
        shutil.rmtree(scripts, ignore_errors=True)
    output = done.stdout.decode(errors="replace")
    found = _PGBENCH_TPS.search(output)
    if done.returncode != 0 or found is None:
        lines = (done.stderr.decode(errors="replace") or output).strip().splitlines()
        return None, f"pgbench failed: {lines[-1] if lines else f'exit {done.returncode}'}"
    return float(found.group(1)), ""


# -- MySQL/MariaDB ---------------------------------------------------------------------------


async def _mysql(url: str, table: str, seconds: int) -> Ceiling:
    """An asyncmy loop of the one-row UPDATE in autocommit: one round trip and one commit
    (``innodb_flush_log_at_trx_commit`` as the server has it) each."""
    import asyncmy
    from sqlalchemy.engine import make_url

    parsed = make_url(url)
    conn = await asyncmy.connect(
        host=parsed.host or "127.0.0.1",
        port=parsed.port or 3306,
        user=parsed.username,
        password=parsed.password or "",
        database=parsed.database,
        autocommit=True,
    )
    try:
        async with conn.cursor() as cursor:
            await cursor.execute("SELECT version()")
            server = str((await cursor.fetchone())[0])
            await cursor.execute(
                f"CREATE TABLE `{table}` (id INT PRIMARY KEY, n BIGINT NOT NULL) ENGINE=InnoDB"
            )
            try:
                await cursor.execute(f"INSERT INTO `{table}` VALUES (1, 0)")
                statement = _update(table, "`")
                ops = await _timed_loop(lambda: cursor.execute(statement), seconds)
            finally:
                await cursor.execute(f"DROP TABLE IF EXISTS `{table}`")
    finally:
        conn.close()
    return Ceiling(ops, f"one-row UPDATE, autocommit, {seconds} s", "asyncmy loop", server)


# -- SQLite ----------------------------------------------------------------------------------


def _sqlite_path(database: str, table: str) -> str:
    """A file named after ``table`` beside the benchmark's ``database`` (or in the temporary
    folder when the benchmark's database is in memory)."""
    directory = os.path.dirname(os.path.abspath(database)) if database else tempfile.gettempdir()
    return os.path.join(directory, f"{table}.db")


def _remove_sqlite_files(path: str) -> None:
    """Delete the ceiling's database and whatever journal files it left."""
    for suffix in ("", "-wal", "-shm", "-journal"):
        if os.path.exists(path + suffix):
            os.remove(path + suffix)


async def _sqlite(url: str, table: str, seconds: int) -> Ceiling:
    """An aiosqlite loop of the one-row UPDATE in autocommit, in a file of its own beside
    the benchmark's, with `SQLStorage`'s pragmas. Each statement is one call to
    aiosqlite's thread, as a whole step of batchkit's is."""
    import aiosqlite
    from sqlalchemy.engine import make_url

    path = _sqlite_path(make_url(url).database or "", table)
    try:
        async with aiosqlite.connect(path, isolation_level=None) as db:
            for pragma in ("busy_timeout=30000", "journal_mode=WAL", "synchronous=NORMAL"):
                await db.execute(f"PRAGMA {pragma}")
            await db.execute(f'CREATE TABLE "{table}" (id INTEGER PRIMARY KEY, n INTEGER NOT NULL)')
            await db.execute(f'INSERT INTO "{table}" VALUES (1, 0)')
            statement = _update(table)
            ops = await _timed_loop(lambda: db.execute(statement), seconds)
    finally:
        _remove_sqlite_files(path)
    operation = f"one-row UPDATE, autocommit, WAL, synchronous=NORMAL, {seconds} s"
    return Ceiling(ops, operation, "aiosqlite loop", f"SQLite {sqlite3.sqlite_version}")


# -- Redis -----------------------------------------------------------------------------------


async def _redis(url: str, seconds: int) -> Ceiling:
    """redis-benchmark's rate of ``EVAL "return 1" 0`` from one client without pipelining,
    or a redis-py asyncio loop's without redis-benchmark (or on a TLS or socket URL)."""
    from redis.asyncio import Redis

    parts = urlsplit(url)
    plain = parts.scheme in ("redis", "redis+cluster")
    # A script of no keys runs on whichever node is asked, so a cluster's first node will do.
    client = Redis.from_url(url.replace("redis+cluster://", "redis://", 1) if plain else url)
    try:
        info = await client.info("server")
        server = f"Redis {info['redis_version']}"
        benchmark = shutil.which("redis-benchmark")
        why_not = "redis-benchmark is not on PATH" if plain else f"a {parts.scheme}:// URL"
        if benchmark is not None and plain:
            rps, why_not = await _redis_benchmark(benchmark, url)
            if rps is not None:
                operation = f'EVAL "return 1" 0, no pipelining, {REDIS_REQUESTS:,} calls'
                return Ceiling(rps, operation, "redis-benchmark", server)
        ops = await _timed_loop(lambda: client.eval("return 1", 0), seconds)
        operation = f'EVAL "return 1" 0, {seconds} s'
        return Ceiling(ops, operation, "redis-py loop", server, fallback=why_not)
    finally:
        await client.aclose()


async def _redis_benchmark(benchmark: str, url: str) -> tuple[float | None, str]:
    """redis-benchmark's requests per second for one client, or None and why not."""
    parts = urlsplit(url)
    command = [benchmark, "-h", parts.hostname or "127.0.0.1", "-p", str(parts.port or 6379)]
    if parts.password:
        command += ["-a", parts.password, "--no-auth-warning"]
        if parts.username:
            command += ["--user", parts.username]
    database = parts.path.strip("/")
    if database.isdigit():
        command += ["--dbnum", database]
    command += ["-c", "1", "-P", "1", "-n", str(REDIS_REQUESTS), "-q", "EVAL", "return 1", "0"]
    with anyio.fail_after(120):
        done = await anyio.run_process(command, check=False)
    # Progress lines end in \r; the last figure is the final one.
    found = _REDIS_RPS.findall(done.stdout.decode(errors="replace"))
    if done.returncode != 0 or not found:
        lines = done.stderr.decode(errors="replace").strip().splitlines()
        return None, f"redis-benchmark failed: {lines[-1] if lines else f'exit {done.returncode}'}"
    return float(found[-1]), ""
