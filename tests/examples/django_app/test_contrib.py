"""``batchkit.contrib.django``: the storage URL of a Django database, the runner from
settings, the migration of batchkit's tables, and ``manage.py batchkit_worker``."""

from __future__ import annotations

import secrets
import signal
import subprocess
import sys
import threading
import time
from types import SimpleNamespace
from typing import Any

import anyio
import pytest
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.core.management import CommandError, call_command
from django.db import connection
from django.test import override_settings
from sqlalchemy.engine import make_url

from batchkit import BatchRunner, BatchState, ItemState, SchemaVersionMismatch
from batchkit.contrib.django import get_runner, storage_url, table_prefix
from batchkit.contrib.django._schema import _dialect
from batchkit.contrib.django._settings import database_url
from batchkit.storage.sql import SCHEMA_VERSION, SQLStorage, schema_version

from .conftest import PROJECT, project_env

SECRET = "p@ss:w/rd%?#"


# -- the URL ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("database", "expected"),
    [
        (
            {"ENGINE": "django.db.backends.sqlite3", "NAME": "/srv/app/db.sqlite3"},
            "sqlite+aiosqlite:////srv/app/db.sqlite3",
        ),
        (
            {"ENGINE": "django.db.backends.sqlite3", "NAME": "db.sqlite3"},
            "sqlite+aiosqlite:///db.sqlite3",
        ),
        (
            {
                "ENGINE": "django.db.backends.postgresql",
                "NAME": "shop",
                "USER": "app",
                "HOST": "db.internal",
                "PORT": 5433,
            },
            "postgresql+asyncpg://app@db.internal:5433/shop",
        ),
        (
            {"ENGINE": "django.db.backends.postgresql", "NAME": "shop", "HOST": "/run/pg"},
            "postgresql+asyncpg:///shop?host=%2Frun%2Fpg",
        ),
        (
            {"ENGINE": "django.db.backends.postgresql", "NAME": "shop", "HOST": "::1"},
            "postgresql+asyncpg://[::1]/shop",
        ),
        (
            {
                "ENGINE": "django.db.backends.mysql",
                "NAME": "shop",
                "USER": "root",
                "HOST": "127.0.0.1",
                "PORT": "3306",
            },
            "mysql+asyncmy://root@127.0.0.1:3306/shop",
        ),
    ],
)
def test_database_url_per_vendor(database: dict[str, Any], expected: str) -> None:
    assert database_url("default", database) == expected


@pytest.mark.parametrize(
    ("engine", "scheme"),
    [
        ("django.db.backends.postgresql", "postgresql+asyncpg"),
        ("django.db.backends.mysql", "mysql+asyncmy"),
    ],
)
def test_database_url_quotes_user_and_password(engine: str, scheme: str) -> None:
    database = {"ENGINE": engine, "NAME": "shop", "USER": "a@b", "PASSWORD": SECRET, "HOST": "h"}
    url = database_url("default", database)
    assert url.startswith(f"{scheme}://")
    assert SECRET not in url
    parsed = make_url(url)
    assert (parsed.username, parsed.password, parsed.host, parsed.database) == (
        "a@b",
        SECRET,
        "h",
        "shop",
    )
    # What batchkit shows of the storage never holds the password.
    shown = repr(SQLStorage(url))
    assert SECRET not in shown
    assert "p@ss" not in shown


@pytest.mark.parametrize(
    ("database", "says"),
    [
        (
            {"ENGINE": "django.db.backends.oracle", "NAME": "x", "PASSWORD": SECRET},
            "no async driver",
        ),
        ({"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"}, "in memory"),
        (
            {"ENGINE": "django.db.backends.sqlite3", "NAME": "file:x?mode=memory&cache=shared"},
            "in memory",
        ),
    ],
)
def test_database_url_refuses_what_batchkit_cannot_use(database: dict[str, Any], says: str) -> None:
    with pytest.raises(ImproperlyConfigured, match=says) as caught:
        database_url("legacy", database)
    assert SECRET not in str(caught.value)
    assert "'legacy'" in str(caught.value)


def test_storage_url_reads_the_settings() -> None:
    database = settings.DATABASES["default"]
    assert storage_url() == database_url("default", database)
    assert storage_url("default") == storage_url()
    with override_settings(BATCHKIT={"STORAGE": "redis://cache:6379/0"}):
        assert storage_url() == "redis://cache:6379/0"
        assert storage_url("default") == database_url("default", database)
    with pytest.raises(ImproperlyConfigured, match="no database 'other'"):
        storage_url("other")
    with override_settings(BATCHKIT={"DATABASE": "other"}), pytest.raises(ImproperlyConfigured):
        storage_url()
    with (
        override_settings(BATCHKIT={"TABLEPREFIX": "x_"}),
        pytest.raises(ImproperlyConfigured, match="unknown keys"),
    ):
        table_prefix()


def test_get_runner_is_one_per_process_and_shared_by_threads() -> None:
    found: list[object] = []
    threads = [threading.Thread(target=lambda: found.append(get_runner())) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len({id(runner) for runner in found}) == 1
    runner = get_runner()
    made = runner.submit(["a", "b"], metadata={"owner": "nobody"})
    assert runner.status(made.id).total == 2


def test_an_unsupported_database_is_refused_clearly() -> None:
    oracle = SimpleNamespace(vendor="oracle", alias="legacy")
    with pytest.raises(ImproperlyConfigured, match=r"no tables for the 'oracle' database 'legacy'"):
        _dialect(oracle)


# -- the migration -----------------------------------------------------------------------


def _tables(prefix: str) -> set[str]:
    with connection.cursor() as cursor:
        names = connection.introspection.table_names(cursor)
    return {name.removeprefix(prefix) for name in names if name.startswith(prefix)}


async def _one_batch(url: str, prefix: str, *, create_schema: bool) -> Any:
    async def double(ctx: Any) -> int:
        return int(ctx.payload) * 2

    async with SQLStorage(url, table_prefix=prefix, create_schema=create_schema) as storage:
        runner = BatchRunner(storage, double)
        made = await runner.submit([{"key": "one", "payload": 21}])
        status = await runner.run(made.id)
        return status, await runner.item(made.id, "one")


def test_migrate_made_the_tables_a_storage_opens_as_they_are() -> None:
    assert _tables("batchkit_") == {"meta", "batches", "tags", "items"}
    url = storage_url()
    assert anyio.run(lambda: schema_version(url)) == SCHEMA_VERSION
    for create_schema in (False, True):
        status, item = anyio.run(
            lambda c=create_schema: _one_batch(url, "batchkit_", create_schema=c)
        )
        assert status.state is BatchState.COMPLETED
        assert item.result == 42


def test_migrate_backwards_drops_the_tables_of_the_prefix() -> None:
    prefix = f"bk{secrets.token_hex(3)}_"
    with override_settings(BATCHKIT={"TABLE_PREFIX": prefix}):
        call_command("migrate", "batchkit", "zero", verbosity=0)
        assert _tables(prefix) == set()
        call_command("migrate", "batchkit", verbosity=0)
        assert _tables(prefix) == {"meta", "batches", "tags", "items"}
        status, _ = anyio.run(lambda: _one_batch(storage_url(), prefix, create_schema=False))
        assert status.state is BatchState.COMPLETED
        call_command("migrate", "batchkit", "zero", verbosity=0)
        assert _tables(prefix) == set()
    # The migration is unapplied now; the default prefix's tables, never dropped, are
    # taken as they are when it is applied again (as tables a SQLStorage made would be).
    assert _tables("batchkit_") == {"meta", "batches", "tags", "items"}
    made = get_runner().submit(["kept"], metadata={"owner": "nobody"})
    call_command("migrate", "batchkit", verbosity=0)
    assert get_runner().status(made.id).total == 1


def _set_version(prefix: str, value: str) -> None:
    meta = connection.ops.quote_name(prefix + "meta")
    with connection.cursor() as cursor:
        cursor.execute(f"UPDATE {meta} SET value = %s WHERE name = 'schema_version'", [value])


def test_migrate_upgrades_older_tables_and_refuses_newer_ones() -> None:
    """What a later batchkit's migration meets: tables of an earlier layout are brought
    to this one (and a SQLStorage opens them after); tables newer than this batchkit are
    left alone with a clear error."""
    prefix = f"bk{secrets.token_hex(3)}_"
    quote = connection.ops.quote_name
    with override_settings(BATCHKIT={"TABLE_PREFIX": prefix}):
        call_command("migrate", "batchkit", "zero", verbosity=0)
        call_command("migrate", "batchkit", verbosity=0)
        try:
            # Version 1's layout: version 2 added these three columns.
            with connection.cursor() as cursor:
                for table, column in [
                    ("batches", "cancel_reason"),
                    ("batches", "max_failures"),
                    ("items", "history"),
                ]:
                    cursor.execute(f"ALTER TABLE {quote(prefix + table)} DROP COLUMN {column}")
            _set_version(prefix, "1")
            with pytest.raises(SchemaVersionMismatch, match="python -m batchkit schema upgrade"):
                anyio.run(lambda: _one_batch(storage_url(), prefix, create_schema=False))
            call_command("migrate", "batchkit", "zero", fake=True, verbosity=0)
            call_command("migrate", "batchkit", verbosity=0)  # takes them to this layout
            assert anyio.run(lambda: schema_version(storage_url(), table_prefix=prefix)) == 2
            status, _ = anyio.run(lambda: _one_batch(storage_url(), prefix, create_schema=False))
            assert status.state is BatchState.COMPLETED

            _set_version(prefix, str(SCHEMA_VERSION + 1))
            call_command("migrate", "batchkit", "zero", fake=True, verbosity=0)
            with pytest.raises(SchemaVersionMismatch, match="newer than this batchkit"):
                call_command("migrate", "batchkit", verbosity=0)
            _set_version(prefix, str(SCHEMA_VERSION))
        finally:
            call_command("migrate", "batchkit", "zero", fake=True, verbosity=0)
            call_command("migrate", "batchkit", verbosity=0)
            call_command("migrate", "batchkit", "zero", verbosity=0)
    assert _tables(prefix) == set()
    call_command("migrate", "batchkit", verbosity=0)


# -- the worker command --------------------------------------------------------------------


def _products_batch(owner: str) -> str:
    from products.models import Product

    chosen = Product.objects.filter(name__in=["Basalt Mug", "Cursed Lamp", "Juniper Candle"])
    made = get_runner().submit(
        [{"key": str(p.id), "payload": {"name": p.name, "price": str(p.price)}} for p in chosen],
        metadata={"owner": owner},
    )
    return made.id


def test_worker_command_runs_the_items_and_stops_on_sigterm() -> None:
    """The command runs the batch's items on the project's database, and SIGTERM stops
    it cleanly (exit status 0), as it stops ``python -m batchkit worker``."""
    batch_id = _products_batch("worker-test")
    command = ["manage.py", "batchkit_worker", "--generator", "products.generator:render"]
    process = subprocess.Popen(
        [sys.executable, *command, "--no-live", "--poll-interval", "0.2"],
        cwd=PROJECT,
        env=project_env(),
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 30
        while not get_runner().status(batch_id).is_terminal:
            assert process.poll() is None, process.communicate()[1]
            assert time.monotonic() < deadline, "the worker did not finish the batch"
            time.sleep(0.05)
        process.send_signal(signal.SIGTERM)
        _, log = process.communicate(timeout=30)
        assert process.returncode == 0, log
        assert "SIGTERM received" in log
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    status = get_runner().status(batch_id)
    assert status.state is BatchState.COMPLETED_WITH_ERRORS
    assert status.counts[ItemState.SUCCEEDED] == 2
    assert status.counts[ItemState.FAILED] == 1
    failed = get_runner().items(batch_id, state="failed")[0]
    assert failed.payload["name"] == "Cursed Lamp"
    assert failed.error is not None
    assert "no light" in failed.error.message


def test_worker_command_takes_the_storage_from_the_settings_only() -> None:
    with pytest.raises(CommandError, match="the storage comes from the settings"):
        call_command(
            "batchkit_worker", "--generator", "products.generator:render", "--storage", "x"
        )
    # The values are the worker's to check: the same words, the same exit status.
    with pytest.raises(CommandError, match="exit status 2"):
        call_command(
            "batchkit_worker", "--generator", "products.generator:render", "--concurrency", "0"
        )
    with pytest.raises(CommandError, match="exit status 2"):
        call_command("batchkit_worker", "--exit-when-idle")  # no --generator
