"""``python -m batchkit dashboard``: what it refuses before it serves anything."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from typing import TYPE_CHECKING

import anyio
import pytest

from batchkit import open_storage
from batchkit.cli import EXIT_FAILED, EXIT_USAGE

from .conftest import ROOT

if TYPE_CHECKING:
    from pathlib import Path


async def _create(url: str) -> None:
    async with open_storage(url):
        pass


def _dashboard(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("BATCHKIT_STORAGE", None)
    return subprocess.run(
        [sys.executable, "-m", "batchkit", "dashboard", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ([], "give --storage URL"),
        (["--storage", "memory://"], "lives in one process"),
        (["--storage", "sqlite+aiosqlite:///x.db", "--host", "0.0.0.0"], "add --read-only"),
        (["--storage", "sqlite+aiosqlite:///x.db", "--host", "192.168.1.5"], "authorize"),
        (["--storage", "sqlite+aiosqlite:///x.db", "--port", "70000"], "not a port"),
    ],
)
def test_what_it_refuses_exits_2_with_a_clear_message(args: list[str], message: str) -> None:
    done = _dashboard(*args)
    assert done.returncode == EXIT_USAGE, done.stderr
    assert message in done.stderr


def test_a_taken_port_or_an_unreachable_store_exits_1_and_no_password_is_printed(
    tmp_path: Path,
) -> None:
    sqlite = f"sqlite+aiosqlite:///{tmp_path / 'app.db'}"
    missing = _dashboard("--storage", sqlite)
    assert missing.returncode == EXIT_FAILED
    assert "no SQLite database at" in missing.stderr
    anyio.run(_create, sqlite)
    other_prefix = _dashboard("--storage", sqlite, "--prefix", "other_")
    assert other_prefix.returncode == EXIT_FAILED
    assert "no batchkit tables here with the prefix 'other_'" in other_prefix.stderr
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        busy = _dashboard("--storage", sqlite, "--port", str(port), "--read-only")
    assert busy.returncode == EXIT_FAILED, busy.stderr
    assert "address already in use" in busy.stderr.lower()
    unreachable = _dashboard(
        "--storage", "postgresql+asyncpg://app:S3cretPW@127.0.0.1:1/app", "--port", str(port)
    )
    assert unreachable.returncode == EXIT_FAILED, unreachable.stderr
    assert "S3cretPW" not in unreachable.stderr + unreachable.stdout
