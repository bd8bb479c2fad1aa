"""Storage adapters under test: every adapter fans out through the ``storage_factory`` fixture.

An adapter joins by adding one ``pytest.param`` to ``storage_factory`` and one
``<name>_storage_factory`` fixture returning a zero-argument callable that builds a new,
empty, not yet entered storage.
"""

from __future__ import annotations

import os
import secrets
import socket
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

import pytest

from batchkit import MemoryStorage

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator
    from pathlib import Path

    from batchkit.protocols import Storage

__all__: list[str] = []


@pytest.fixture
def anyio_backend() -> str:
    # Adapter tests run on asyncio; the core's tests cover trio.
    return "asyncio"


@pytest.fixture
def memory_storage_factory() -> Callable[[], Storage]:
    return MemoryStorage


POSTGRES_URL = os.environ.get(
    "BATCHKIT_TEST_POSTGRES_URL", "postgresql+asyncpg://postgres@127.0.0.1:5432/test"
)
MYSQL_URL = os.environ.get("BATCHKIT_TEST_MYSQL_URL", "mysql+asyncmy://root@127.0.0.1:3306/test")


def require_server(url: str, name: str) -> None:
    """Skip when the server is unreachable; with CI=true, fail: CI never passes by skipping."""
    parts = urlsplit(url)
    try:
        with socket.create_connection((parts.hostname or "127.0.0.1", parts.port or 0), 2):
            return
    except OSError as exc:
        reason = f"{name} is not reachable at {parts.hostname}:{parts.port} ({exc})"
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason}; CI=true requires it")
    pytest.skip(reason)


def _sql_factory(prefix: str, url: str) -> Callable[[], Storage]:
    """A factory of empty SQLStorages on the tables under ``prefix``.

    One test may make many (the state machine makes one per example): they share the
    tables, emptied when each storage opens. The tables are made once per test process
    (`_sql_tables`): creating and dropping four tables and their indexes for each of the
    contract's hundreds of tests cost more than the tests themselves.
    """
    from batchkit.storage.sql import SQLStorage

    class EmptySQLStorage(SQLStorage):
        async def open(self) -> None:
            await super().open()
            async with self.engine.begin() as conn:
                for table in (self.tables.items, self.tables.tags, self.tables.batches):
                    await conn.execute(table.delete())

    def make() -> Storage:
        return EmptySQLStorage(url, table_prefix=prefix)

    return make


@pytest.fixture(scope="session")
def _sql_tables() -> Iterator[dict[str, str]]:
    """Per server URL, the prefix of this test process's tables, dropped at its end."""
    made: dict[str, str] = {}
    yield made
    import anyio

    for url, prefix in made.items():
        anyio.run(_drop_tables, url, [prefix])


def _tables_prefix(made: dict[str, str], url: str) -> str:
    if url not in made:
        made[url] = f"t{secrets.token_hex(4)}_"
    return made[url]


async def _drop_tables(url: str, prefixes: list[str]) -> None:
    from sqlalchemy.ext.asyncio import create_async_engine

    from batchkit.storage.sql import metadata_for

    engine = create_async_engine(url)
    try:
        async with engine.begin() as conn:
            for prefix in prefixes:
                metadata, _ = metadata_for(prefix)
                await conn.run_sync(metadata.drop_all, checkfirst=True)
    finally:
        await engine.dispose()


@pytest.fixture
def sqlite_storage_factory(tmp_path: Path) -> Iterator[Callable[[], Storage]]:
    from batchkit.storage.sql import SQLStorage

    def make() -> Storage:
        return SQLStorage(f"sqlite+aiosqlite:///{tmp_path / secrets.token_hex(4)}.db")

    return make


@pytest.fixture
def postgres_storage_factory(_sql_tables: dict[str, str]) -> Callable[[], Storage]:
    require_server(POSTGRES_URL, "PostgreSQL")
    return _sql_factory(_tables_prefix(_sql_tables, POSTGRES_URL), POSTGRES_URL)


@pytest.fixture
def mysql_storage_factory(_sql_tables: dict[str, str]) -> Callable[[], Storage]:
    require_server(MYSQL_URL, "MariaDB/MySQL")
    return _sql_factory(_tables_prefix(_sql_tables, MYSQL_URL), MYSQL_URL)


REDIS_URL = os.environ.get("BATCHKIT_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")

_REDIS_USERS: set[str] = set()


def redis_password_user(url: str, password: str) -> str:
    """A user of the Redis under test whose password is ``password`` (made when missing,
    removed when the test process exits), for a URL that carries a password.

    A Redis without ``requirepass`` lets its default user in whatever the password, but
    redis-py before 8.0 refuses to connect when it sends one the server does not want:
    a user of its own makes the password real on every redis-py.
    """
    import atexit

    import redis

    name = f"batchkit-test-{os.environ.get('PYTEST_XDIST_WORKER', 'main')}-{os.getpid()}"
    client = redis.Redis.from_url(url)
    try:
        client.execute_command("ACL", "SETUSER", name, "on", f">{password}", "~*", "&*", "+@all")
    finally:
        client.close()
    if name not in _REDIS_USERS:
        _REDIS_USERS.add(name)
        atexit.register(_drop_redis_user, url, name)
    return name


def _drop_redis_user(url: str, name: str) -> None:
    import redis

    client = redis.Redis.from_url(url)
    try:
        client.execute_command("ACL", "DELUSER", name)
    except redis.RedisError:
        pass  # the server is gone: so is the user
    finally:
        client.close()


async def drop_redis_keys(url: str, prefix: str) -> None:
    """Delete every key under ``prefix`` (a test's own)."""
    from redis.asyncio import Redis

    client = Redis.from_url(url)
    try:
        async for key in client.scan_iter(match=f"{prefix}:*", count=1_000):
            await client.unlink(key)
    finally:
        await client.aclose()


@pytest.fixture
def redis_storage_factory() -> Iterator[Callable[[], Storage]]:
    """Empty RedisStorages under a prefix of the test's own, whose keys are deleted after."""
    require_server(REDIS_URL, "Redis")
    from batchkit.storage.redis import RedisStorage

    prefix = f"t{secrets.token_hex(4)}"

    class EmptyRedisStorage(RedisStorage):
        async def open(self) -> None:
            await super().open()
            await drop_redis_keys(REDIS_URL, prefix)

    def make() -> Storage:
        return EmptyRedisStorage(REDIS_URL, prefix=prefix)

    yield make
    import anyio

    anyio.run(drop_redis_keys, REDIS_URL, prefix)


@pytest.fixture(
    params=[
        pytest.param("memory", id="memory"),
        pytest.param("sqlite", id="sqlite"),
        pytest.param("postgres", id="postgres"),
        pytest.param("mysql", id="mysql"),
        pytest.param("redis", id="redis"),
    ]
)
def storage_factory(request: pytest.FixtureRequest) -> Callable[[], Storage]:
    factory: Callable[[], Storage] = request.getfixturevalue(f"{request.param}_storage_factory")
    return factory


def server_store(name: str, tag: str) -> tuple[str, str]:
    """The URL of the ``postgres`` or ``redis`` server under test, and a new prefix of the
    test's own starting with ``tag``; skips (fails with CI=true) as `require_server`."""
    url = POSTGRES_URL if name == "postgres" else REDIS_URL
    require_server(url, name)
    return url, f"{tag}{secrets.token_hex(3)}" + ("_" if name == "postgres" else "")


async def drop_prefixes(url: str, prefixes: list[str]) -> None:
    """Delete what a test made under its prefixes: tables on SQL, keys on Redis."""
    if url.startswith("redis"):
        for prefix in prefixes:
            await drop_redis_keys(url, prefix)
    else:
        await _drop_tables(url, prefixes)
