"""The SQLite fast path reaches into aiosqlite's private attributes: pinned here, and checked
at runtime everywhere else.

`batchkit.storage.sql._aiosqlite_fast` runs a whole transaction in one call to aiosqlite's
thread through ``aiosqlite.Connection._execute`` and ``_conn``, which aiosqlite may change
in any release. They are checked against the version in ``uv.lock``: an upgrade of the lock
fails here until the wrapper is checked against the new version. Any other installed
version (``make test-lowest``, ``make test-latest``) skips that pin; there, the check the
storage makes when it opens decides, and without the attributes SQLite runs through
SQLAlchemy: the last tests here take them away and run a batch to its end.
"""

from __future__ import annotations

import inspect
import logging
import sys
import threading
import tomllib
import types
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import pytest

from batchkit import BatchState, open_storage
from batchkit.protocols import ClaimRequest, Outcome
from batchkit.status import status_from_record
from batchkit.storage.sql import SQLStorage, _aiosqlite_fast
from batchkit.storage.sql._sqlite import SQLiteDialect, SQLiteLanesDialect
from batchkit.testing.contract import new_batch

if TYPE_CHECKING:
    import sqlite3

aiosqlite = pytest.importorskip("aiosqlite")

LOCK = Path(__file__).resolve().parents[2] / "uv.lock"


def _locked_version(name: str) -> str:
    lock = tomllib.loads(LOCK.read_text(encoding="utf-8"))
    versions = {str(p["version"]) for p in lock["package"] if p["name"] == name}
    assert len(versions) == 1, versions
    return versions.pop()


LOCKED = _locked_version("aiosqlite")
INSTALLED = aiosqlite.__version__

#: Skips a pin where another aiosqlite than the locked one is installed: the lowest or
#: latest versions allowed (``make test-lowest`` / ``make test-latest``), or a user's own.
only_the_locked_version = pytest.mark.skipif(
    INSTALLED != LOCKED,
    reason=(
        f"aiosqlite {INSTALLED} is installed, uv.lock has {LOCKED}: the pin of the fast "
        "path's private attributes holds for the locked version only; on this one the "
        "storage checks them when it opens and falls back to SQLAlchemy without them"
    ),
)


@only_the_locked_version
def test_the_locked_aiosqlite_has_the_private_attributes_the_wrapper_uses() -> None:
    assert _aiosqlite_fast.PRIVATE == ("_execute", "_conn")
    execute = aiosqlite.Connection._execute
    assert inspect.iscoroutinefunction(execute)
    # The wrapper calls _execute(fn, *args, **kwargs): the function and its arguments.
    parameters = list(inspect.signature(execute).parameters.values())
    assert [p.name for p in parameters[:2]] == ["self", "fn"]
    assert parameters[2].kind is inspect.Parameter.VAR_POSITIONAL
    assert parameters[3].kind is inspect.Parameter.VAR_KEYWORD
    assert isinstance(inspect.getattr_static(aiosqlite.Connection, "_conn"), property)
    # ... and the runtime check agrees: on the locked version, the fast path is taken.
    assert _aiosqlite_fast.missing() is None
    assert _aiosqlite_fast.available()


@pytest.mark.anyio
async def test_the_wrapper_runs_a_function_in_the_connection_thread(tmp_path: Path) -> None:
    if reason := _aiosqlite_fast.missing():
        pytest.skip(f"aiosqlite {INSTALLED} has no fast path to run: {reason}")
    async with aiosqlite.connect(tmp_path / "pin.db") as driver:

        def work(db: sqlite3.Connection, value: int) -> tuple[int, str]:
            row = db.execute("SELECT ?", (value,)).fetchone()
            return row[0], threading.current_thread().name

        value, thread = await _aiosqlite_fast.run_in_thread(driver, work, 42)
    assert value == 42
    assert thread != threading.current_thread().name


# -- without the private attributes: the generic path ----------------------------------


def _fake_aiosqlite(**attributes: Any) -> types.ModuleType:
    module = types.ModuleType("aiosqlite")
    module.Connection = type("Connection", (), attributes)  # type: ignore[attr-defined]
    return module


async def _execute(self: Any, fn: Any, *args: Any, **kwargs: Any) -> Any:
    raise NotImplementedError


async def _execute_without_kwargs(self: Any, fn: Any, *args: Any) -> Any:
    raise NotImplementedError


def _execute_not_a_coroutine(self: Any, fn: Any, *args: Any, **kwargs: Any) -> Any:
    raise NotImplementedError


@pytest.mark.parametrize(
    ("module", "reason"),
    [
        pytest.param(None, "aiosqlite is not installed", id="not-installed"),
        pytest.param(_fake_aiosqlite(), "_execute is not a coroutine", id="no-attributes"),
        pytest.param(_fake_aiosqlite(_execute=_execute), "_conn is not a property", id="no-_conn"),
        pytest.param(
            _fake_aiosqlite(_execute=_execute, _conn=None),
            "_conn is not a property",
            id="_conn-not-a-property",
        ),
        pytest.param(
            _fake_aiosqlite(_execute=_execute_not_a_coroutine, _conn=property(id)),
            "_execute is not a coroutine",
            id="_execute-not-a-coroutine",
        ),
        pytest.param(
            _fake_aiosqlite(_execute=_execute_without_kwargs, _conn=property(id)),
            "does not take (self, fn, *args, **kwargs)",
            id="_execute-without-kwargs",
        ),
    ],
)
def test_an_aiosqlite_without_the_attributes_is_not_used_and_says_why_once(
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    module: types.ModuleType | None,
    reason: str,
) -> None:
    monkeypatch.setitem(sys.modules, "aiosqlite", module)
    monkeypatch.setattr(_aiosqlite_fast, "_logged", set())
    assert reason in (_aiosqlite_fast.missing() or "")
    with caplog.at_level(logging.DEBUG, logger="batchkit.storage"):
        assert not _aiosqlite_fast.available()
        assert not _aiosqlite_fast.available()
    said = [r for r in caplog.records if r.name == "batchkit.storage"]
    assert len(said) == 1
    assert said[0].levelno == logging.DEBUG
    assert reason in said[0].getMessage()


def test_a_fake_aiosqlite_of_the_right_shape_is_taken() -> None:
    # The check is of shape, not of names only: its own fakes above fail for their reason.
    module = _fake_aiosqlite(_execute=_execute, _conn=property(id))
    with pytest.MonkeyPatch.context() as patch:
        patch.setitem(sys.modules, "aiosqlite", module)
        assert _aiosqlite_fast.missing() is None


def _take_away(monkeypatch: pytest.MonkeyPatch, how: str) -> None:
    """Change aiosqlite's private attributes the way another release could, keeping
    aiosqlite itself (and SQLAlchemy's adapter, which uses them too) working."""
    connection = aiosqlite.Connection
    execute = connection._execute
    conn = inspect.getattr_static(connection, "_conn")
    if how == "missing":
        # Gone from the class: found on a connection only through __getattr__, as a
        # release that renamed them would have them only under their new names.
        monkeypatch.delattr(connection, "_execute")
        monkeypatch.delattr(connection, "_conn")

        def __getattr__(self: Any, name: str) -> Any:
            if name == "_execute":
                return types.MethodType(execute, self)
            if name == "_conn":
                return conn.__get__(self, type(self))
            raise AttributeError(name)

        monkeypatch.setattr(connection, "__getattr__", __getattr__, raising=False)
    elif how == "_execute-not-a-coroutine":

        def not_a_coroutine(self: Any, fn: Any, *args: Any, **kwargs: Any) -> Any:
            return execute(self, fn, *args, **kwargs)  # an awaitable, still

        monkeypatch.setattr(connection, "_execute", not_a_coroutine)
    elif how == "_conn-not-a-property":

        class Descriptor:
            def __get__(self, obj: Any, owner: type) -> Any:
                return self if obj is None else conn.__get__(obj, owner)

        monkeypatch.setattr(connection, "_conn", Descriptor())
    else:
        raise AssertionError(how)


@pytest.mark.anyio
@pytest.mark.parametrize("how", ["missing", "_execute-not-a-coroutine", "_conn-not-a-property"])
async def test_without_the_attributes_sqlite_runs_through_sqlalchemy(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, how: str
) -> None:
    """A batch is created, claimed, finished and read on a SQLite file, on the generic
    path; the fast path, taken by mistake, fails the test."""
    _take_away(monkeypatch, how)
    assert _aiosqlite_fast.missing() is not None

    async def fast_path(*_args: Any, **_kwargs: Any) -> Any:
        raise AssertionError("the fast path ran without aiosqlite's private attributes")

    monkeypatch.setattr(_aiosqlite_fast, "run_in_thread", fast_path)

    async with open_storage(f"sqlite+aiosqlite:///{tmp_path / 'fallback.db'}") as opened:
        storage = cast("SQLStorage", opened)
        assert type(storage._dialect) is SQLiteDialect
        record, created = await storage.create_batch(new_batch(["a"]))
        assert created
        claim = await storage.claim(ClaimRequest(lease_seconds=30, batch_ids=(record.id,)))
        assert claim is not None
        assert claim.lease.key == "a"
        result = await storage.finish(claim.lease, Outcome.succeeded('"done"'))
        assert result.accepted
        status = status_from_record(await storage.get_batch(record.id))
    assert status.state is BatchState.COMPLETED
    assert status.is_terminal
    assert status.total == 1


@pytest.mark.anyio
async def test_with_the_attributes_sqlite_takes_the_fast_path(tmp_path: Path) -> None:
    if reason := _aiosqlite_fast.missing():
        pytest.skip(f"aiosqlite {INSTALLED} has no fast path to take: {reason}")
    async with open_storage(f"sqlite+aiosqlite:///{tmp_path / 'fast.db'}") as opened:
        storage = cast("SQLStorage", opened)
        assert type(storage._dialect) is SQLiteLanesDialect
