"""The SQLite fast path reaches into aiosqlite's private attributes: pinned here.

`batchkit.storage.sql._aiosqlite_fast` runs a whole transaction in one call to aiosqlite's
thread through ``aiosqlite.Connection._execute`` and ``_conn``, which aiosqlite may change
in any release. It is checked against the version in ``uv.lock``: an upgrade of aiosqlite
fails here until the wrapper is checked against the new version and the lock updated.
"""

from __future__ import annotations

import inspect
import threading
import tomllib
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from batchkit.storage.sql import _aiosqlite_fast

if TYPE_CHECKING:
    import sqlite3

aiosqlite = pytest.importorskip("aiosqlite")

LOCK = Path(__file__).resolve().parents[2] / "uv.lock"


def _locked_version(name: str) -> str:
    lock = tomllib.loads(LOCK.read_text(encoding="utf-8"))
    versions = {str(p["version"]) for p in lock["package"] if p["name"] == name}
    assert len(versions) == 1, versions
    return versions.pop()


def test_the_installed_aiosqlite_is_the_locked_one() -> None:
    locked = _locked_version("aiosqlite")
    assert aiosqlite.__version__ == locked, (
        f"aiosqlite {aiosqlite.__version__} is installed, uv.lock has {locked}: check "
        "batchkit.storage.sql._aiosqlite_fast against it, then update this lock"
    )


def test_the_private_attributes_the_wrapper_uses_are_there() -> None:
    assert _aiosqlite_fast.PRIVATE == ("_execute", "_conn")
    execute = aiosqlite.Connection._execute
    assert inspect.iscoroutinefunction(execute)
    # The wrapper calls _execute(fn, *args): the function and its arguments, positionally.
    parameters = list(inspect.signature(execute).parameters.values())
    assert [p.name for p in parameters[:2]] == ["self", "fn"]
    assert parameters[2].kind is inspect.Parameter.VAR_POSITIONAL
    assert isinstance(inspect.getattr_static(aiosqlite.Connection, "_conn"), property)
    assert _aiosqlite_fast.available()


@pytest.mark.anyio
async def test_the_wrapper_runs_a_function_in_the_connection_thread(tmp_path: Path) -> None:
    async with aiosqlite.connect(tmp_path / "pin.db") as driver:

        def work(db: sqlite3.Connection, value: int) -> tuple[int, str]:
            row = db.execute("SELECT ?", (value,)).fetchone()
            return row[0], threading.current_thread().name

        value, thread = await _aiosqlite_fast.run_in_thread(driver, work, 42)
    assert value == 42
    assert thread != threading.current_thread().name
