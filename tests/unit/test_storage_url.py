"""open_storage(url) and require(): the right storage, or an error that says what to do."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any

import pytest

from batchkit import BatchkitError, InvalidStorageURL, MemoryStorage, MissingDependency
from batchkit.storage import open_storage
from batchkit.storage._url import require

if TYPE_CHECKING:
    from pathlib import Path


# -- memory:// ------------------------------------------------------------------------------


@pytest.mark.parametrize("url", ["memory://", "MEMORY://", "memory:///"])
def test_memory_url_gives_a_memory_storage(url: str) -> None:
    assert isinstance(open_storage(url), MemoryStorage)


def test_each_memory_url_is_a_new_store() -> None:
    assert open_storage("memory://") is not open_storage("memory://")


@pytest.mark.anyio
async def test_memory_storage_from_a_url_is_an_async_context_manager() -> None:
    async with open_storage("memory://") as storage:
        assert isinstance(storage, MemoryStorage)


# -- bad URLs -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "fragment"),
    [
        pytest.param("", "is not a storage URL", id="empty"),
        pytest.param("memory", "expected e.g. 'memory://'", id="no-scheme"),
        pytest.param("localhost:6379", "expected e.g. 'memory://'", id="host-port"),
        pytest.param("/var/data/batches.db", "is not a storage URL", id="path"),
        pytest.param("memory://host", "takes no host or path", id="memory-host"),
        pytest.param("memory:///some/path", "takes no host or path", id="memory-path"),
        pytest.param("ftp://example.com", "unknown storage scheme 'ftp'", id="unknown"),
        pytest.param("mongodb://localhost", "unknown storage scheme 'mongodb'", id="mongodb"),
    ],
)
def test_bad_urls_are_refused_helpfully(url: str, fragment: str) -> None:
    with pytest.raises(InvalidStorageURL) as info:
        open_storage(url)
    assert fragment in str(info.value)
    assert isinstance(info.value, BatchkitError)
    assert isinstance(info.value, ValueError)


def test_unknown_scheme_lists_the_known_ones() -> None:
    with pytest.raises(InvalidStorageURL) as info:
        open_storage("cassandra://db")
    message = str(info.value)
    for scheme in ("memory", "sqlite+aiosqlite", "postgresql+asyncpg", "mysql+asyncmy", "redis"):
        assert scheme in message


@pytest.mark.parametrize("url", [None, 42, b"memory://"])
def test_a_url_must_be_text(url: Any) -> None:
    with pytest.raises(InvalidStorageURL):
        open_storage(url)


@pytest.mark.parametrize(
    ("url", "fixed"),
    [
        ("postgresql://user:s3cret@db:5432/app", "postgresql+asyncpg://user:***@db:5432/app"),
        ("postgres://db/app", "postgresql+asyncpg://db/app"),
        ("postgresql+psycopg2://db/app", "postgresql+asyncpg://db/app"),
        ("sqlite:///x.db", "sqlite+aiosqlite:///x.db"),
        ("mysql://root@localhost/app", "mysql+asyncmy://root@localhost/app"),
        ("mysql+pymysql://db/app", "mysql+asyncmy://db/app"),
        ("mariadb://db/app", "mariadb+asyncmy://db/app"),
    ],
)
def test_sync_spellings_are_refused_with_the_async_one(url: str, fixed: str) -> None:
    with pytest.raises(InvalidStorageURL) as info:
        open_storage(url)
    message = str(info.value)
    assert "synchronous" in message
    assert fixed in message
    assert "s3cret" not in message


@pytest.mark.parametrize(
    "url",
    [
        "postgresql://app:s3cret@db/app",
        "postgresql://app@db/app?sslmode=require&password=s3cret",
        "mysql+pymysql://root:s3cret@db/app",
        "memory://app:s3cret@db/",
        "host=db user=app password=s3cret dbname=app",
        b"postgresql+asyncpg://app:s3cret@db/app",
    ],
)
def test_a_password_in_a_refused_url_stays_out_of_the_message(url: Any) -> None:
    # Hosts log exceptions: the message names the URL with its password hidden.
    with pytest.raises(InvalidStorageURL) as info:
        open_storage(url)
    assert "s3cret" not in str(info.value)
    assert "***" in str(info.value)


def test_what_comes_before_the_separator_is_shown_only_if_it_is_a_scheme() -> None:
    # A forgotten scheme leaves "user:password@host" where the scheme should be.
    with pytest.raises(InvalidStorageURL, match="not a scheme") as info:
        open_storage("app:s3cret@db://app")
    assert "s3cret" not in str(info.value)


def test_sql_storage_refuses_a_sync_url_without_showing_its_password() -> None:
    from batchkit.storage.sql import SQLStorage

    with pytest.raises(ValueError, match="synchronous") as info:
        SQLStorage("postgresql://app:s3cret@db/app")
    assert "s3cret" not in str(info.value)
    assert "postgresql+asyncpg://app:***@db/app" in str(info.value)


# -- missing extras -------------------------------------------------------------------------


def test_require_an_installed_module() -> None:
    require("json", "none")


def test_require_a_missing_module_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    # None in sys.modules makes `import redis` raise ImportError(name="redis").
    monkeypatch.setitem(sys.modules, "redis", None)
    with pytest.raises(MissingDependency) as info:
        require("redis", "redis")
    assert "pip install 'batchkit[redis]'" in str(info.value)
    assert "'redis' is not installed" in str(info.value)
    assert isinstance(info.value, ImportError)
    assert isinstance(info.value, BatchkitError)
    assert info.value.package == "redis"
    assert info.value.extra == "redis"
    assert isinstance(info.value.__cause__, ImportError)


def test_require_a_submodule_of_a_missing_package(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "redis", None)
    monkeypatch.setitem(sys.modules, "redis.asyncio", None)  # imported by an earlier test
    with pytest.raises(MissingDependency, match=r"pip install 'batchkit\[redis\]'"):
        require("redis.asyncio", "redis")


def test_missing_dependency_can_be_caught_as_import_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "redis", None)
    with pytest.raises(ImportError):
        require("redis", "redis")


def test_an_import_error_inside_an_installed_package_propagates(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    package = tmp_path / "batchkit_test_brokenpkg"
    package.mkdir()
    (package / "__init__.py").write_text("import batchkit_test_nonexistent_xyz\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ModuleNotFoundError) as info:
        require("batchkit_test_brokenpkg", "broken")
    # The package is there; what it needs is not: that is not ours to explain.
    assert not isinstance(info.value, MissingDependency)
    assert info.value.name == "batchkit_test_nonexistent_xyz"
    assert "batchkit_test_brokenpkg" not in sys.modules


def test_another_error_inside_an_installed_package_propagates(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    package = tmp_path / "batchkit_test_failingpkg"
    package.mkdir()
    (package / "__init__.py").write_text("raise RuntimeError('broken at import')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(RuntimeError, match="broken at import"):
        require("batchkit_test_failingpkg", "broken")


@pytest.mark.parametrize(
    ("url", "hidden", "extra"),
    [
        pytest.param("redis://localhost", "redis", "redis", id="redis"),
        pytest.param("rediss://localhost:6380/0", "redis", "redis", id="rediss"),
        pytest.param("sqlite+aiosqlite:///x.db", "sqlalchemy", "sql", id="sqlite-sqlalchemy"),
        pytest.param("sqlite+aiosqlite:///x.db", "aiosqlite", "sql", id="sqlite-aiosqlite"),
        pytest.param("postgresql+asyncpg://u@db/app", "asyncpg", "postgres", id="postgres"),
        pytest.param("mysql+asyncmy://root@db/app", "asyncmy", "mysql", id="mysql"),
        pytest.param("mariadb+asyncmy://root@db/app", "asyncmy", "mysql", id="mariadb"),
    ],
)
def test_open_storage_without_the_extra_says_how_to_install_it(
    monkeypatch: pytest.MonkeyPatch, url: str, hidden: str, extra: str
) -> None:
    monkeypatch.setitem(sys.modules, hidden, None)
    with pytest.raises(MissingDependency) as info:
        open_storage(url)
    assert f"pip install 'batchkit[{extra}]'" in str(info.value)
    assert info.value.extra == extra


# -- prefix= ---------------------------------------------------------------------------------


def test_one_prefix_option_names_each_stores_own(tmp_path: Path) -> None:
    # Hosts pass one prefix whatever the URL: the tables' on SQL, the keys' on Redis.
    sqlite = open_storage(f"sqlite+aiosqlite:///{tmp_path / 'x.db'}", prefix="app_")
    assert sqlite.table_prefix == "app_"  # type: ignore[attr-defined]
    redis = open_storage("redis://127.0.0.1:6379/0", prefix="app")
    assert redis.prefix == "app"  # type: ignore[attr-defined]
    assert isinstance(open_storage("memory://", prefix="app"), MemoryStorage)
    with pytest.raises(ValueError, match="table_prefix must be"):
        open_storage(f"sqlite+aiosqlite:///{tmp_path / 'x.db'}", prefix="no spaces")
