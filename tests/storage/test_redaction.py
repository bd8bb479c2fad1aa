"""No repr, str, log line or error message of batchkit shows a password, on any store.

`redact` hides secrets in free text (an error before it is stored, logged or raised);
`safe_url` is what a storage shows of its URL, built from its parts. The last section
builds instances of every public name and reads their repr and str: a name added to a
public ``__all__`` fails it until it is covered there too.

Tests that open a PostgreSQL, MariaDB or Redis server skip when it is unreachable (and
fail with CI=true), as the storage tests do.
"""

from __future__ import annotations

import logging
import sys
import traceback
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit, urlunsplit

import anyio
import anyio.from_thread
import anyio.to_thread
import pytest

import batchkit
import batchkit.storage
import batchkit.storage.redis
import batchkit.storage.sql
import batchkit.testing
from batchkit import (
    BatchkitError,
    BatchRunner,
    InvalidStorageURL,
    ItemContext,
    ItemSpec,
    ItemState,
    Limits,
    MemoryStorage,
    RetryPolicy,
    StorageError,
    SyncBatchRunner,
    Worker,
    open_storage,
)
from batchkit._secrets import redact, safe_url, url_secrets
from batchkit.storage.redis import RedisStorage
from batchkit.storage.sql import SQLStorage
from batchkit.testing import StorageContract, StorageStateMachine

from .conftest import (
    MYSQL_URL,
    POSTGRES_URL,
    drop_prefixes,
    redis_password_user,
    require_server,
    server_store,
)

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Iterator
    from pathlib import Path

pytestmark = pytest.mark.anyio

PASSWORD = "S3cretPW"
POSTGRES = f"postgresql+asyncpg://batchkit:{PASSWORD}@127.0.0.1:5432/test"
MYSQL = f"mysql+asyncmy://root:{PASSWORD}@127.0.0.1:3306/test"
REDIS = f"redis://:{PASSWORD}@127.0.0.1:6379/0"
#: Nothing listens on port 9 (discard): connecting is refused at once.
CLOSED_PORT = 9


def _sqlite(tmp_path: Path, name: str = "batchkit.db") -> str:
    """A SQLite URL with a password in its query string (SQLite ignores it)."""
    return f"sqlite+aiosqlite:///file:{tmp_path / name}?uri=true&password={PASSWORD}"


def _with_password(url: str, *, user: str | None = None) -> str:
    """``url`` with `PASSWORD` as its password, in place of any it has (and ``user``)."""
    parts = urlsplit(url)
    host = parts.netloc.rpartition("@")[2]
    user = (parts.username or "") if user is None else user
    return urlunsplit(parts._replace(netloc=f"{user}:{PASSWORD}@{host}"))


def _on_port(url: str, port: int) -> str:
    parts = urlsplit(url)
    userinfo, at, _ = parts.netloc.rpartition("@")
    return urlunsplit(parts._replace(netloc=f"{userinfo}{at}{parts.hostname}:{port}"))


def _shown(value: object) -> str:
    """Everything of an object a host may print or log: its repr and its str, and for an
    exception the traceback a logger writes (its causes included)."""
    texts = [repr(value), str(value)]
    if isinstance(value, BaseException):
        texts += traceback.format_exception(value)
    return "\n".join(texts)


def _chain(exc: BaseException) -> Iterator[BaseException]:
    """An exception and the ones it was raised from, as a traceback prints them."""
    current: BaseException | None = exc
    while current is not None:
        yield current
        current = current.__cause__ or (
            None if current.__suppress_context__ else current.__context__
        )


# -- redact ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param(
            "cannot connect to postgresql://user:secret@host/db: timeout",
            "cannot connect to postgresql://user:***@host/db: timeout",
            id="url",
        ),
        pytest.param("redis://:secret@h:6379/0", "redis://:***@h:6379/0", id="no-user"),
        pytest.param("mysql://app:p@ss@db:3306/app", "mysql://app:***@db:3306/app", id="raw-at"),
        pytest.param("pg://u:pa/ss@h/db", "pg://u:***@h/db", id="raw-slash"),
        pytest.param("pg://u:pa?ss@h/db", "pg://u:***@h/db", id="raw-question-mark"),
        pytest.param("pg://u:pa#ss@h/db", "pg://u:***@h/db", id="raw-hash"),
        pytest.param("pg://u:a/b?c#d@e@h/db", "pg://u:***@h/db", id="raw-all"),
        pytest.param("pg://me@corp:secret@h/db", "pg://me@corp:***@h/db", id="at-in-user"),
        pytest.param(
            "from a://u:one@h to b://v:two@k", "from a://u:***@h to b://v:***@k", id="two-urls"
        ),
        pytest.param("redis://h/0?password=secret", "redis://h/0?password=***", id="query"),
        pytest.param(
            "redis://h/0?db=1&PASSWORD=secret&ssl=true",
            "redis://h/0?db=1&PASSWORD=***&ssl=true",
            id="query-case-and-neighbours",
        ),
        pytest.param(
            "h?pass=a&passwd=b&pwd=c&secret=d&token=e&api_key=f&apikey=g&access_token=h",
            "h?pass=***&passwd=***&pwd=***&secret=***&token=***&api_key=***&apikey=***"
            "&access_token=***",
            id="query-names",
        ),
        pytest.param(
            "h?client_secret=a&X-Api-Key=b&sslpassword=c&Api-Key=d",
            "h?client_secret=***&X-Api-Key=***&sslpassword=***&Api-Key=***",
            id="query-names-in-longer-names",
        ),
        pytest.param("h?password=ab&cd x", "h?password=*** x", id="query-raw-ampersand"),
        pytest.param("host=h password=secret dbname=x", "host=h password=*** dbname=x", id="libpq"),
        pytest.param(
            "host=h password = 'se cret\\' x' dbname=x",
            "host=h password = '***' dbname=x",
            id="libpq-quoted",
        ),
        pytest.param(
            "connect(host='h', password='secret')",
            "connect(host='h', password='***')",
            id="keyword-argument",
        ),
        pytest.param(
            "{'password': 'secret', 'user': 'u'}", "{'password': '***', 'user': 'u'}", id="dict"
        ),
        pytest.param('{"token": "secret", "n": 1}', '{"token": "***", "n": 1}', id="json"),
        pytest.param("run --password=secret now", "run --password=*** now", id="option"),
    ],
)
def test_redact_hides_secrets(text: str, expected: str) -> None:
    assert redact(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "Access denied for user 'root'@'127.0.0.1' (using password: YES)",
        'password authentication failed for user "batchkit"',
        "see https://example.com/a?page=2 or write to ops@example.com",
        "sqlite+aiosqlite:///data/user@host.db",
        "worker w-1 started: concurrency 4, lease 30 s",
        "key=item-1 attempt=2 delay=0.5",
        # Hidden already: the quote and the comma after the mask stay.
        "RedisStorage('redis://h?password=***', prefix='batchkit')",
        "connect(host='h', password=***, port=1)",
    ],
)
def test_redact_leaves_text_without_secrets_alone(text: str) -> None:
    assert redact(text) == text


def test_redact_hides_known_secrets_and_their_pieces_anywhere() -> None:
    # SQLAlchemy reads "u:p@ss1234@h" as password "p", host "ss1234@h": MariaDB's error
    # then names the host, with the password's tail in it.
    known = url_secrets("mysql+asyncmy://root:p@ss1234@127.0.0.1:3306/test")
    said = "Can't connect to MySQL server on 'ss1234@127.0.0.1' (Name or service not known)"
    assert redact(said, known) == (
        "Can't connect to MySQL server on '***@127.0.0.1' (Name or service not known)"
    )
    assert redact(f"the password was {PASSWORD}", {PASSWORD}) == "the password was ***"


#: Texts of a megabyte built to make a backtracking pattern take quadratic time or
#: worse; some end in a password, which must still be hidden.
HOSTILE = {
    "letters-then-scheme": "y" * 1_000_000 + "://",
    "schemes": "a://" * 250_000 + f"u:{PASSWORD}@h",
    "users": "a://a:" * 170_000,
    "colons-and-ats": "a://" + ":@" * 500_000,
    "spaces": " " * 1_000_000 + "://",
    "names": "a-" * 500_000 + f" password={PASSWORD}",
    "secret-names": "passwordx" * 110_000,
    "settings": "a=" * 500_000,
    "secret-settings": "password=" * 110_000,
    "query": "?password=" + "&a" * 500_000,
    "quotes": "password='" * 100_000,
    "quoted-names": "'password'" * 100_000,
    "double-quotes": '"' * 1_000_000,
    "escapes": "password='" + "\\" * 1_000_000,
    "ampersands": "?token=" + "&" * 1_000_000 + f" password={PASSWORD}",
}


# A pattern gone quadratic on a megabyte runs for hours, inside the regex engine where no
# signal is handled: the timeout's thread ends the run instead of letting it hang.
@pytest.mark.timeout(60, method="thread")
@pytest.mark.parametrize("text", list(HOSTILE.values()), ids=list(HOSTILE))
def test_redaction_takes_linear_time_on_hostile_text(text: str) -> None:
    hidden = redact(text, url_secrets(text[:200]))
    assert PASSWORD not in hidden
    assert PASSWORD not in safe_url(text)
    url_secrets(text)


# -- what a storage shows of its URL --------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("postgresql+asyncpg://u:PW@h/db", "postgresql+asyncpg://u:***@h/db"),
        ("postgresql+asyncpg://u@h:5432/db", "postgresql+asyncpg://u@h:5432/db"),
        ("redis://:PW@h:6379/0", "redis://:***@h:6379/0"),
        ("rediss://u:PW@h", "rediss://u:***@h"),
        ("redis://h?password=PW", "redis://h?password=***"),
        ("redis://h/0?db=1&Token=PW#frag", "redis://h/0?db=1&Token=***"),
        ("unix:///run/redis.sock?db=0&password=PW", "unix:///run/redis.sock?db=0&password=***"),
        ("mysql+asyncmy://u@corp:PW@h/db", "mysql+asyncmy://u@corp:***@h/db"),
        ("mysql+asyncmy://u:P@W@h/db", "mysql+asyncmy://u:***@h/db"),
        ("sqlite+aiosqlite:///:memory:", "sqlite+aiosqlite:///:memory:"),
        (
            "sqlite+aiosqlite:///a/b.db?mode=ro&uri=true",
            "sqlite+aiosqlite:///a/b.db?mode=ro&uri=true",
        ),
        # Not to be read for sure: the scheme only.
        ("postgresql+asyncpg://u:P/W@h/db", "postgresql+asyncpg://***"),
        ("postgresql+asyncpg://u:12/PW@h/db", "postgresql+asyncpg://***"),
        ("redis://:P#W@h", "redis://***"),
        ("redis://:P?W@h", "redis://***"),
        ("postgresql+asyncpg://u:PW@[::1/db", "postgresql+asyncpg://***"),
        ("redis://h:port", "redis://***"),
        ("u:PW@h://x", "***"),
        ("host=h password=PW", "***"),
    ],
)
def test_safe_url(url: str, shown: str) -> None:
    assert safe_url(url) == shown


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        pytest.param(
            "postgresql+asyncpg://u:PW@h/db",
            "SQLStorage('postgresql+asyncpg://u:***@h/db', table_prefix='batchkit_')",
            id="postgres",
        ),
        pytest.param(
            "postgresql+psycopg://u@h/db?password=PW&sslmode=require",
            "SQLStorage('postgresql+psycopg://u@h/db?password=***&sslmode=require', "
            "table_prefix='batchkit_')",
            id="postgres-query",
        ),
        pytest.param(
            "mysql+asyncmy://root:PW@h:3306/test",
            "SQLStorage('mysql+asyncmy://root:***@h:3306/test', table_prefix='batchkit_')",
            id="mysql",
        ),
        pytest.param(
            "postgresql+asyncpg://u:P/W@h/db",
            "SQLStorage('postgresql+asyncpg://***', table_prefix='batchkit_')",
            id="unreadable",
        ),
        pytest.param(
            "redis://:PW@h:6379/0",
            "RedisStorage('redis://:***@h:6379/0', prefix='batchkit')",
            id="redis",
        ),
        pytest.param(
            "rediss://u:PW@h", "RedisStorage('rediss://u:***@h', prefix='batchkit')", id="rediss"
        ),
        pytest.param(
            "redis://h?password=PW",
            "RedisStorage('redis://h?password=***', prefix='batchkit')",
            id="redis-query",
        ),
        pytest.param(
            "redis://:P#W@h",
            "RedisStorage('redis://***', prefix='batchkit')",
            id="redis-unreadable",
        ),
    ],
)
def test_a_storage_shows_its_url_without_the_password(url: str, shown: str) -> None:
    assert repr(open_storage(url)) == shown


async def test_a_sqlite_storage_shows_the_same_url_before_open_while_open_and_after_close(
    tmp_path: Path,
) -> None:
    storage = SQLStorage(_sqlite(tmp_path))
    before = repr(storage)
    async with storage:
        assert repr(storage) == before
    assert repr(storage) == before
    assert before == (
        f"SQLStorage('sqlite+aiosqlite:///file:{tmp_path / 'batchkit.db'}?uri=true&password=***',"
        " table_prefix='batchkit_')"
    )


async def test_a_storage_on_a_hosts_engine_shows_its_url_without_secrets() -> None:
    from sqlalchemy.ext.asyncio import create_async_engine

    engine = create_async_engine(f"{POSTGRES}?ssl=prefer&password={PASSWORD}")
    try:
        # SQLAlchemy hides the password of the URL's user part; its query string it shows.
        assert f":{PASSWORD}@" not in repr(engine.sync_engine)
        assert repr(SQLStorage(engine)) == (
            "SQLStorage(<AsyncEngine 'postgresql+asyncpg://batchkit:***@127.0.0.1:5432/test"
            "?password=***&ssl=prefer'>, table_prefix='batchkit_')"
        )
    finally:
        await engine.dispose()


async def test_a_storage_on_a_hosts_redis_client_shows_nothing_of_its_settings() -> None:
    from redis.asyncio import Redis
    from redis.asyncio.retry import Retry
    from redis.backoff import NoBackoff

    client = Redis(
        host="127.0.0.1",
        port=CLOSED_PORT,
        username="app",
        password=PASSWORD,
        retry=Retry(NoBackoff(), 0),
    )
    try:
        storage = RedisStorage(client)
        assert repr(storage) == "RedisStorage(<a host's client>, prefix='batchkit')"
        with pytest.raises(StorageError) as info:
            await storage.open()
        for exc in _chain(info.value):
            assert PASSWORD not in _shown(exc)
    finally:
        await client.aclose()


# -- errors on opening ----------------------------------------------------------------------


def _assert_hidden(exc: BaseException, *secrets: str) -> None:
    """Neither the error nor what it was raised from shows any of ``secrets``."""
    for link in _chain(exc):
        for secret in secrets:
            assert secret not in _shown(link), f"{secret!r} in {type(link).__name__}: {link}"


@pytest.mark.parametrize(
    "url",
    [
        pytest.param(_on_port(POSTGRES, CLOSED_PORT), id="postgres"),
        pytest.param(
            f"postgresql+asyncpg://batchkit@127.0.0.1:{CLOSED_PORT}/test?password={PASSWORD}",
            id="postgres-query",
        ),
        pytest.param(
            f"postgresql+psycopg://batchkit@127.0.0.1:{CLOSED_PORT}/test?password={PASSWORD}",
            id="psycopg-query",
        ),
        pytest.param(_on_port(MYSQL, CLOSED_PORT), id="mysql"),
        pytest.param(_on_port(REDIS, CLOSED_PORT), id="redis"),
        pytest.param(f"redis://127.0.0.1:{CLOSED_PORT}/0?password={PASSWORD}", id="redis-query"),
    ],
)
async def test_an_unreachable_store_fails_without_showing_the_password(url: str) -> None:
    storage = open_storage(url, retries=0)
    with pytest.raises(StorageError, match="cannot open") as info:
        await storage.open()
    await storage.aclose()
    _assert_hidden(info.value, PASSWORD)
    assert info.value.__cause__ is not None  # a driver error without secrets stays chained


@pytest.mark.parametrize(
    ("url", "piece"),
    [
        # SQLAlchemy reads password "S3c", host "ret", port "PW99@127.0.0.1".
        pytest.param("postgresql+asyncpg://u:S3c@ret:PW99@127.0.0.1/db", "PW99", id="postgres"),
        # redis-py reads host "", port "S3cret".
        pytest.param("redis://:S3cret/PW@127.0.0.1:6379/0", "S3cret", id="redis-raw-slash"),
        pytest.param("redis://:S3cret#PW@127.0.0.1:6379/0", "S3cret", id="redis-raw-hash"),
    ],
)
async def test_a_url_a_driver_cannot_parse_fails_without_a_piece_of_the_password(
    url: str, piece: str
) -> None:
    # A parser that cut a raw password short quotes a piece of it as the port.
    storage = open_storage(url)
    with pytest.raises(InvalidStorageURL, match="cannot be parsed") as info:
        await storage.open()
    await storage.aclose()
    _assert_hidden(info.value, piece)


async def test_a_redis_url_with_a_bad_setting_says_which() -> None:
    storage = open_storage(f"redis://127.0.0.1:6379/0?password={PASSWORD}&db=zero")
    with pytest.raises(InvalidStorageURL, match="Invalid value for 'db'") as info:
        await storage.open()
    _assert_hidden(info.value, PASSWORD)


async def test_a_driver_error_that_repeats_a_piece_of_the_password_is_not_chained() -> None:
    # SQLAlchemy reads "root:p@ss1234@host" as password "p" on host "ss1234@host", which
    # MariaDB's error names: redacted in batchkit's message, and not chained, so that a
    # logged traceback does not print it.
    storage = open_storage("mysql+asyncmy://root:p@ss1234@127.0.0.1:3306/test", retries=0)
    with pytest.raises(StorageError, match="cannot open") as info:
        await storage.open()
    await storage.aclose()
    assert "ss1234" not in _shown(info.value)
    assert info.value.__cause__ is None
    assert "***@127.0.0.1" in str(info.value)


async def test_a_postgres_user_that_does_not_exist_fails_without_the_password() -> None:
    require_server(POSTGRES_URL, "PostgreSQL")
    storage = open_storage(_with_password(POSTGRES_URL, user="nobody_here"))
    with pytest.raises(StorageError, match="nobody_here") as info:
        await storage.open()
    await storage.aclose()
    _assert_hidden(info.value, PASSWORD)


async def test_a_mariadb_password_refused_fails_without_the_password() -> None:
    require_server(MYSQL_URL, "MariaDB/MySQL")
    storage = open_storage(_with_password(MYSQL_URL))
    with pytest.raises(StorageError, match="Access denied") as info:
        await storage.open()
    await storage.aclose()
    _assert_hidden(info.value, PASSWORD)


def _secret_url(url: str, *, query: bool) -> tuple[str, str]:
    """A URL of the server under test with a password in it, and that password.

    One configured with a password keeps it; otherwise one is added, which a server
    without authentication accepts (PostgreSQL's trust, Redis without ``requirepass``).
    """
    parts = urlsplit(url)
    if parts.password:
        return url, parts.password
    user = redis_password_user(url, PASSWORD) if url.startswith("redis") else None
    if query:
        joined = f"{parts.query}&" if parts.query else ""
        joined += f"username={user}&" if user else ""
        return urlunsplit(parts._replace(query=f"{joined}password={PASSWORD}")), PASSWORD
    return _with_password(url, user=user), PASSWORD


@pytest.mark.parametrize("query", [False, True], ids=["user-part", "query"])
@pytest.mark.parametrize("server", ["postgres", "redis"])
async def test_a_store_opened_with_a_password_never_shows_it(server: str, query: bool) -> None:
    base, prefix = server_store(server, "redact")
    url, password = _secret_url(base, query=query)
    storage = open_storage(url, prefix=prefix)
    before = repr(storage)
    try:
        async with storage:
            assert repr(storage) == before
            runner = repr(BatchRunner(storage, _nothing))
    finally:
        await drop_prefixes(base, [prefix])
    assert repr(storage) == before
    assert password not in before
    assert password not in runner


# -- runners, workers and their log ---------------------------------------------------------


async def _nothing(ctx: ItemContext) -> None:
    return None


class _LeakyStorage(MemoryStorage):
    """A host's own storage whose repr shows its URL whole."""

    def __repr__(self) -> str:
        return f"LeakyStorage({POSTGRES!r})"


@pytest.mark.parametrize(
    "make",
    [
        pytest.param(lambda: open_storage(POSTGRES), id="postgres"),
        pytest.param(lambda: open_storage(REDIS), id="redis"),
        pytest.param(lambda: open_storage(f"redis://h?password={PASSWORD}"), id="redis-query"),
        pytest.param(_LeakyStorage, id="hosts-own"),
    ],
)
def test_runner_and_worker_reprs_hide_the_storages_password(make: Callable[[], Any]) -> None:
    storage = make()
    for shown in (repr(BatchRunner(storage, _nothing)), repr(Worker(storage, _nothing))):
        assert PASSWORD not in shown
        assert "***" in shown


@pytest.mark.parametrize("leaky", [False, True], ids=["sql", "hosts-own"])
async def test_the_worker_started_line_hides_the_storages_password(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, leaky: bool
) -> None:
    storage = _LeakyStorage() if leaky else SQLStorage(_sqlite(tmp_path))
    caplog.set_level(logging.INFO, logger="batchkit")
    async with storage:
        await BatchRunner(storage, _nothing).submit(["a"])
        with anyio.fail_after(10):
            await Worker(storage, _nothing, exit_when_idle=True, poll_interval=0.05).run()
    started = [r for r in caplog.records if "started" in r.getMessage()]
    assert started, caplog.text
    assert "***" in started[0].getMessage()
    if not leaky:  # batchkit's own storage is shown as its repr says, whole
        assert started[0].getMessage().endswith(f"on {storage!r}")
    assert PASSWORD not in caplog.text


# -- every public object --------------------------------------------------------------------


async def _raised(action: Callable[..., Awaitable[object]], *args: Any, **kw: Any) -> BaseException:
    try:
        await action(*args, **kw)
    except BaseException as exc:
        return exc
    raise AssertionError("nothing was raised")


async def _open(url: str, **options: Any) -> None:
    storage = open_storage(url, **options)
    try:
        await storage.open()
    finally:
        await storage.aclose()


async def _storages(tmp_path: Path) -> list[object]:
    """Storages with a password in their URL, built and (SQLite) opened and closed."""
    from redis.asyncio import Redis
    from sqlalchemy.ext.asyncio import create_async_engine

    engine = create_async_engine(f"{POSTGRES}?password={PASSWORD}")
    client = Redis(password=PASSWORD)
    sqlite = SQLStorage(_sqlite(tmp_path, "storages.db"))
    found: list[object] = [
        sqlite,
        SQLStorage(POSTGRES),
        SQLStorage(MYSQL),
        SQLStorage(engine),
        SQLStorage(f"postgresql+asyncpg://u:{PASSWORD}/x@h/db"),
        RedisStorage(REDIS),
        RedisStorage(f"rediss://u:{PASSWORD}@127.0.0.1"),
        RedisStorage(f"redis://127.0.0.1?password={PASSWORD}"),
        RedisStorage(client),
        MemoryStorage(),
    ]
    async with sqlite:
        found.append(repr(sqlite))  # while open
    await engine.dispose()
    await client.aclose()
    return found


async def _run_a_batch(tmp_path: Path) -> dict[str, list[object]]:
    """The models a run makes, from a generator that fails naming a password."""
    seen: list[ItemContext] = []

    async def fails(ctx: ItemContext) -> None:
        seen.append(ctx)
        raise ConnectionError(f"cannot reach {POSTGRES} (password={PASSWORD})")

    storage = SQLStorage(_sqlite(tmp_path, "run.db"))
    async with storage:
        runner = BatchRunner(storage, fails, retry=RetryPolicy(max_attempts=1))
        batch = await runner.submit([ItemSpec(key="a", payload={"n": 1})])
        status = await runner.run(batch.id)
        items = await runner.items(batch.id)
        worker = Worker(storage, fails, exit_when_idle=True)
        stats = await worker.run()
    assert items[0].state is ItemState.FAILED
    return {
        "Batch": [batch],
        "BatchStatus": [status],
        "Item": items,
        "ItemError": [item.error for item in items],
        "ItemContext": list(seen),
        "BatchRunner": [runner],
        "Worker": [worker],
        "WorkerStats": [stats],
    }


async def _failures(tmp_path: Path) -> dict[str, list[object]]:
    """Each exception as batchkit raises it, from URLs with a password where one fits."""
    sqlite = _sqlite(tmp_path, "failures.db")
    runner = BatchRunner(MemoryStorage(), _nothing)
    batch = await runner.submit(["a"])
    invalid = [
        await _raised(_open, url)
        for url in (
            f"postgresql://batchkit:{PASSWORD}@127.0.0.1/test",
            f"host=127.0.0.1 password={PASSWORD}",
            f"batchkit:{PASSWORD}@127.0.0.1://test",
            f"memory://u:{PASSWORD}@h",
            f"ftp://u:{PASSWORD}@h",
            f"postgresql+asyncpg://u:{PASSWORD[:4]}/{PASSWORD[4:]}@127.0.0.1:5432/db:x",
            f"redis://:{PASSWORD[:4]}/{PASSWORD[4:]}@127.0.0.1:6379/0",
        )
    ]
    unreachable = [
        await _raised(_open, _on_port(url, CLOSED_PORT), retries=0)
        for url in (POSTGRES, MYSQL, REDIS)
    ]
    with pytest.MonkeyPatch.context() as patch:
        patch.setitem(sys.modules, "asyncpg", None)
        missing = await _raised(_open, POSTGRES)
    return {
        "BatchkitError": [BatchkitError()],
        "BatchNotFound": [await _raised(runner.status, "b" * 26)],
        "InvalidBatch": [await _raised(runner.submit, [])],
        "InvalidStorageURL": invalid,
        "ItemNotFound": [await _raised(runner.item, batch.id, "nope")],
        "MissingDependency": [missing],
        "SchemaVersionMismatch": [await _raised(_open, sqlite, create_schema=False)],
        "StorageError": unreachable,
    }


def _state_machine(tmp_path: Path) -> list[object]:
    with anyio.from_thread.start_blocking_portal("asyncio") as portal:
        machine = StorageStateMachine(portal, lambda: SQLStorage(_sqlite(tmp_path, "sm.db")))
        shown: list[object] = [machine, repr(machine.storage)]
        machine.teardown()
    return shown


async def _public_objects(tmp_path: Path) -> dict[str, list[object]]:
    ran = await _run_a_batch(tmp_path)
    failed = await _failures(tmp_path)
    storages = await _storages(tmp_path)
    return {
        **ran,
        **failed,
        "BatchState": list(batchkit.BatchState),
        "ItemSpec": [ItemSpec(key="a", payload={"url": "https://example.com"})],
        "ItemState": list(ItemState),
        "Limits": [Limits()],
        "MemoryStorage": [MemoryStorage()],
        "RedisStorage": [s for s in storages if isinstance(s, RedisStorage)],
        "RetryPolicy": [RetryPolicy(max_attempts=3, retry_on=(ConnectionError,))],
        "SQLStorage": [s for s in storages if isinstance(s, SQLStorage | str)],
        "open_storage": [open_storage(url) for url in (POSTGRES, MYSQL, REDIS, "memory://")],
        # Made, not opened: nothing connects before the first call.
        "SyncBatchRunner": [SyncBatchRunner(url) for url in (POSTGRES, MYSQL, REDIS)],
        "__version__": [batchkit.__version__],
        "StorageContract": [StorageContract()],
        "StorageStateMachine": await anyio.to_thread.run_sync(_state_machine, tmp_path),
        "SCHEMA_VERSION": [batchkit.storage.sql.SCHEMA_VERSION],
        "metadata_for": list(batchkit.storage.sql.metadata_for("batchkit_")),
        "BATCH_KEYS": [batchkit.storage.redis.BATCH_KEYS],
        **await _migrations(tmp_path),
    }


async def _migrations(tmp_path: Path) -> dict[str, list[object]]:
    """What the migration functions return, on a store whose URL holds the password."""
    from sqlalchemy import create_engine

    sql = batchkit.storage.sql
    url = _sqlite(tmp_path, "migrated.db")
    async with SQLStorage(url):
        pass
    upgraded = await sql.upgrade_schema(url)
    engine = create_engine(url.replace("+aiosqlite", ""))
    try:
        with engine.connect() as conn:
            pending = sql.pending_statements(conn)
    finally:
        engine.dispose()
    return {
        "SchemaUpgrade": [upgraded, await sql.upgrade_schema(url, dry_run=True)],
        "upgrade_schema": [upgraded],
        "schema_version": [await sql.schema_version(url)],
        "upgrade_statements": [sql.upgrade_statements("postgresql", from_version=1)],
        "create_statements": [sql.create_statements("sqlite")],
        "pending_statements": [pending],
    }


#: Public names with no instance of their own to look at, and why.
WITHOUT_INSTANCES = {
    "Generator": "a protocol the host's function meets",
    "SyncGenerator": "a protocol the host's function meets",
    "Storage": "a protocol: its implementations are looked at under their own names",
    "run_state_machine": "runs StorageStateMachine, looked at under its own name",
}

PUBLIC_MODULES = (
    batchkit,
    batchkit.storage,
    batchkit.storage.sql,
    batchkit.storage.redis,
    batchkit.testing,
)


def _public_names() -> set[str]:
    names: dict[str, object] = {}
    for module in PUBLIC_MODULES:
        for name in module.__all__:
            value = getattr(module, name)
            # One name, one object, whichever module it is taken from.
            assert names.setdefault(name, value) is value, name
    return set(names)


async def test_no_public_object_shows_a_password(tmp_path: Path) -> None:
    objects = await _public_objects(tmp_path)
    public = _public_names()
    assert not set(objects) & set(WITHOUT_INSTANCES)
    # A new public name fails here until it is built above (or said to have no instance).
    assert set(objects) | set(WITHOUT_INSTANCES) == public
    for name, instances in objects.items():
        assert instances, f"no instance of {name}"
        for instance in instances:
            assert PASSWORD not in _shown(instance), f"{name}: {_shown(instance)}"
            if isinstance(instance, BaseException):
                _assert_hidden(instance, PASSWORD)
