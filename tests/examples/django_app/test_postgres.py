"""This directory's tests again, on PostgreSQL, in a process of their own.

Django is configured once per process (here on SQLite, by ``conftest.py``): the
PostgreSQL run is a second pytest, with ``BATCHKIT_TEST_DJANGO_DB=postgres``, on a test
database Django creates and drops (``test_batchkit_django_<random>``).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.storage.conftest import require_server

from .conftest import ON_POSTGRES, POSTGRES_URL, ROOT

HERE = Path(__file__).parent


def test_contrib_and_views_on_postgresql() -> None:
    assert not ON_POSTGRES, "the PostgreSQL run does not start another"
    require_server(POSTGRES_URL, "PostgreSQL")
    tests = [str(HERE / "test_contrib.py"), str(HERE / "test_views.py")]
    done = subprocess.run(
        [sys.executable, "-m", "pytest", *tests, "-q", "-p", "no:cacheprovider", "-n", "0"],
        cwd=ROOT,
        env={**os.environ, "BATCHKIT_TEST_DJANGO_DB": "postgres"},
        capture_output=True,
        text=True,
        timeout=110,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-3000:]
    assert " passed" in done.stdout
    assert "skipped" not in done.stdout
