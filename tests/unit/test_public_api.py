"""The public surface: what `import batchkit` exports, and what it does not drag in."""

from __future__ import annotations

import importlib.metadata
import importlib.resources
import inspect
import json
import subprocess
import sys
import types
from typing import TYPE_CHECKING

import pytest

import batchkit

if TYPE_CHECKING:
    from pathlib import Path

# What we mean to export. A change here is a change of the public API: make it on purpose.
EXPORTED = [
    "Batch",
    "BatchNotFound",
    "BatchRunner",
    "BatchState",
    "BatchStatus",
    "BatchkitError",
    "Generator",
    "InvalidBatch",
    "InvalidStorageURL",
    "Item",
    "ItemContext",
    "ItemError",
    "ItemNotFound",
    "ItemSpec",
    "ItemState",
    "Limits",
    "MemoryStorage",
    "MissingDependency",
    "RedisStorage",
    "RetryPolicy",
    "SQLStorage",
    "SchemaVersionMismatch",
    "Storage",
    "StorageError",
    "SyncBatchRunner",
    "SyncGenerator",
    "Worker",
    "WorkerStats",
    "__version__",
    "open_storage",
]

# The entry points the design promises to users of `import batchkit`.
PROMISED = [
    "BatchRunner",
    "ItemContext",
    "ItemSpec",
    "Batch",
    "Item",
    "BatchStatus",
    "ItemState",
    "BatchState",
    "BatchkitError",
    "BatchNotFound",
    "InvalidBatch",
    "StorageError",
    "MissingDependency",
    "MemoryStorage",
    "open_storage",
]


def test_all_is_pinned() -> None:
    assert sorted(EXPORTED) == EXPORTED
    assert batchkit.__all__ == EXPORTED


def test_every_exported_name_is_importable() -> None:
    for name in batchkit.__all__:
        assert getattr(batchkit, name) is not None, name
    namespace: dict[str, object] = {}
    exec("from batchkit import *", namespace)
    assert set(batchkit.__all__) <= set(namespace)


def test_nothing_public_is_left_out_of_all() -> None:
    # A name reachable as batchkit.X that is not in __all__ is an accident waiting to be used.
    public = {
        name
        for name, value in vars(batchkit).items()
        if not name.startswith("_")
        and not isinstance(value, types.ModuleType)
        and name != "annotations"  # the `from __future__` import
    }
    assert public <= set(batchkit.__all__)


@pytest.mark.parametrize("name", PROMISED)
def test_promised_names_are_exported(name: str) -> None:
    assert name in batchkit.__all__
    assert hasattr(batchkit, name)


def test_exported_classes_live_in_the_package() -> None:
    for name in batchkit.__all__:
        value = getattr(batchkit, name)
        if inspect.isclass(value) or inspect.isfunction(value):
            assert value.__module__.startswith("batchkit."), name


def test_version_matches_the_distribution() -> None:
    assert batchkit.__version__ == importlib.metadata.version("batchkit")


def test_py_typed_ships() -> None:
    assert importlib.resources.files("batchkit").joinpath("py.typed").is_file()


def _modules_after(code: str) -> set[str]:
    """The modules loaded in a fresh interpreter once ``code`` has run."""
    code += "import json, sys\nprint(json.dumps(sorted(sys.modules)))\n"
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    return set(json.loads(done.stdout))


def test_import_loads_no_driver_and_no_test_tool() -> None:
    heavy = ["sqlalchemy", "redis", "asyncpg", "asyncmy", "aiosqlite", "pytest", "hypothesis"]
    modules = _modules_after(
        "import batchkit, batchkit.storage\nbatchkit.open_storage('memory://')\n"
    )
    loaded = {name.split(".")[0] for name in modules}
    assert "batchkit" in loaded
    assert loaded.isdisjoint(heavy), sorted(loaded & set(heavy))


_DRIVERS = {"sqlalchemy", "redis", "asyncpg", "asyncmy", "aiosqlite", "pymysql", "psycopg"}
_SQL_DIALECTS = {f"sqlalchemy.dialects.{name}" for name in ("sqlite", "postgresql", "mysql")}


@pytest.mark.parametrize(
    ("url", "uses"),
    [
        (
            "sqlite+aiosqlite:///{tmp}/a.db",
            {"sqlalchemy", "aiosqlite", "sqlalchemy.dialects.sqlite"},
        ),
        (
            "postgresql+asyncpg://app@127.0.0.1:1/app",
            {"sqlalchemy", "asyncpg", "sqlalchemy.dialects.postgresql"},
        ),
        (
            "mysql+asyncmy://app@127.0.0.1:1/app",
            {"sqlalchemy", "asyncmy", "pymysql", "sqlalchemy.dialects.mysql"},
        ),
        ("redis://127.0.0.1:1/0", {"redis"}),
    ],
)
def test_a_storage_loads_its_own_driver_and_no_other(
    url: str, uses: set[str], tmp_path: Path
) -> None:
    # A worker on Redis does not pay for SQLAlchemy's import, nor one on SQLite for
    # asyncpg's or for SQLAlchemy's PostgreSQL and MySQL dialects: each storage object is
    # built (not connected) in a fresh interpreter.
    modules = _modules_after(
        f"import batchkit\nbatchkit.open_storage({url.format(tmp=tmp_path)!r})\n"
    )
    loaded = {name.split(".")[0] for name in modules} & _DRIVERS
    loaded |= modules & _SQL_DIALECTS
    assert loaded <= uses, sorted(loaded - uses)


def test_a_sqlite_storage_that_runs_a_batch_loads_no_other_databases_dialect(
    tmp_path: Path,
) -> None:
    # The same, through a whole run: opening, creating the tables, claiming and finishing.
    modules = _modules_after(
        "import anyio, batchkit\n"
        "async def generate(ctx):\n"
        "    return ctx.payload\n"
        "async def main():\n"
        f"    async with batchkit.open_storage('sqlite+aiosqlite:///{tmp_path}/a.db') as store:\n"
        "        runner = batchkit.BatchRunner(store, generate)\n"
        "        batch = await runner.submit(['a', 'b'])\n"
        "        await runner.run(batch.id)\n"
        "        assert (await runner.status(batch.id)).state == 'completed'\n"
        "anyio.run(main)\n"
    )
    assert "sqlalchemy.dialects.sqlite" in modules
    others = modules & (_SQL_DIALECTS - {"sqlalchemy.dialects.sqlite"})
    assert not others, sorted(others)
    assert not {name.split(".")[0] for name in modules} & {"asyncpg", "asyncmy", "redis"}


# -- the calls the design fixes -------------------------------------------------------------


def parameters(func: object) -> dict[str, inspect.Parameter]:
    return dict(inspect.signature(func).parameters)  # type: ignore[arg-type]


def test_runner_constructor() -> None:
    params = parameters(batchkit.BatchRunner)
    assert list(params)[:2] == ["storage", "generator"]
    assert params["concurrency"].default == 1
    assert params["item_timeout"].default is None


@pytest.mark.parametrize(
    ("method", "defaults"),
    [
        ("submit", {"metadata": None, "idempotency_key": None}),
        ("run", {}),
        ("status", {}),
        ("items", {"state": None, "limit": 100, "after": None}),
        ("retry_failed", {}),
        ("cancel", {}),
    ],
)
def test_runner_coroutines(method: str, defaults: dict[str, object]) -> None:
    func = getattr(batchkit.BatchRunner, method)
    assert inspect.iscoroutinefunction(func)
    params = parameters(func)
    for name, default in defaults.items():
        assert params[name].default == default, name


def test_runner_watch_is_an_async_iterator() -> None:
    assert inspect.isasyncgenfunction(batchkit.BatchRunner.watch) or hasattr(
        inspect.signature(batchkit.BatchRunner.watch).return_annotation, "__aiter__"
    )


def test_model_fields_the_design_names() -> None:
    item_fields = set(batchkit.Item.model_fields)
    assert {
        "key",
        "payload",
        "state",
        "progress",
        "message",
        "attempt",
        "error",
        "result",
    } <= item_fields
    assert {"type", "message"} <= set(batchkit.ItemError.model_fields)
    assert {
        "batch_id",
        "state",
        "total",
        "counts",
        "progress",
        "is_terminal",
        "parent_id",
        "metadata",
    } <= set(batchkit.BatchStatus.model_fields)
    assert {"id", "parent_id"} <= set(batchkit.Batch.model_fields)


def test_item_context_offers_what_a_generator_needs() -> None:
    names = set(dir(batchkit.ItemContext))
    assert {"batch_id", "key", "payload", "attempt", "progress"} <= names
    assert inspect.iscoroutinefunction(batchkit.ItemContext.progress)
