"""The Django example under test, in this process, on a test database of Django's own.

Django is configured once per process, when pytest imports this file: with the
example's settings (``examples/django_app/project/settings.py``) on a SQLite file of this
process, or, with ``BATCHKIT_TEST_DJANGO_DB=postgres``, on PostgreSQL. ``test_postgres.py``
runs this directory's tests again that way, in a process of their own: a process cannot
configure Django twice, and each xdist worker is a process of its own.
"""

from __future__ import annotations

import atexit
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from collections.abc import Iterator

__all__ = ["PROJECT", "manage", "project_env"]

ROOT = Path(__file__).resolve().parents[3]
#: The example project's directory (where ``manage.py`` is).
PROJECT = ROOT / "examples" / "django_app"
#: The server PostgreSQL tests use (its ``test`` database is only where Django connects
#: to create the test database).
POSTGRES_URL = os.environ.get(
    "BATCHKIT_TEST_DJANGO_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test"
)
ON_POSTGRES = os.environ.get("BATCHKIT_TEST_DJANGO_DB", "sqlite") == "postgres"
#: The demo users' password in the tests.
PASSWORD = "a-test-password"

_WORKDIR = Path(tempfile.mkdtemp(prefix="batchkit-django-"))
# Removed at exit: a process that imports this file may run none of its tests (xdist's).
atexit.register(shutil.rmtree, _WORKDIR, ignore_errors=True)


def _configure() -> None:
    if ON_POSTGRES:
        base = POSTGRES_URL.rsplit("/", 1)[0]
        os.environ["DATABASE_URL"] = f"{base}/test"
    else:
        os.environ["DATABASE_URL"] = f"sqlite:///{_WORKDIR / 'app.sqlite3'}"
    os.environ["DJANGO_SETTINGS_MODULE"] = "project.settings"
    os.environ["DEMO_PASSWORD"] = PASSWORD
    os.environ["PRODUCTS_RENDER_DELAY"] = "0.01"
    if str(PROJECT) not in sys.path:
        sys.path.insert(0, str(PROJECT))
    import django
    from django.conf import settings

    django.setup()
    # Django's advice for tests: a fast hasher (the demo users' passwords are hashed
    # when the test database is migrated, and again at each sign-in).
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
    # Django's test database: test_<name> on PostgreSQL (a name of this process's, so
    # that parallel runs do not meet), a file on SQLite (shared with the workers this
    # process starts; Django's default is a database in memory).
    test = settings.DATABASES["default"].setdefault("TEST", {})
    if ON_POSTGRES:
        test["NAME"] = f"test_batchkit_django_{secrets.token_hex(4)}"
    else:
        test["NAME"] = str(_WORKDIR / "test.sqlite3")


_configure()


@pytest.fixture(scope="session", autouse=True)
def django_database() -> Iterator[None]:
    """Django's test database, migrated (the example's tables, the demo data, batchkit's
    tables), for the whole session; dropped after."""
    from django.db import connection, connections

    from batchkit.contrib.django import get_runner

    old_name = connection.creation.create_test_db(verbosity=0, autoclobber=True, serialize=False)
    try:
        yield
    finally:
        get_runner().close()
        connections.close_all()
        connection.creation.destroy_test_db(old_name, verbosity=0)


def project_env(**extra: str) -> dict[str, str]:
    """The environment of a ``manage.py`` process on this process's test database."""
    from django.conf import settings

    database = settings.DATABASES["default"]
    if database["ENGINE"].endswith("sqlite3"):
        url = f"sqlite:///{database['NAME']}"
    else:
        url = f"{POSTGRES_URL.rsplit('/', 1)[0]}/{database['NAME']}"
    return {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "DATABASE_URL": url,
        "DJANGO_SETTINGS_MODULE": "project.settings",
        **extra,
    }


def manage(*args: str, timeout: float = 60, **extra: str) -> subprocess.CompletedProcess[str]:
    """Run ``python manage.py ARGS`` of the example on this process's test database."""
    return subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=PROJECT,
        env=project_env(**extra),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


@pytest.fixture
def user() -> Any:
    """A user of this test alone (its batches are its own), without a password."""
    from django.contrib.auth.models import User

    made = User(username=f"user-{secrets.token_hex(4)}")
    made.set_unusable_password()
    made.save()
    return made
