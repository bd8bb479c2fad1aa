"""The ``BATCHKIT`` setting, and the storage URL of a Django database."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any
from urllib.parse import quote, urlencode

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured

if TYPE_CHECKING:
    from collections.abc import Mapping

__all__ = ["database_alias", "storage_url", "table_prefix"]

DEFAULT_PREFIX = "batchkit_"
_KNOWN = frozenset({"DATABASE", "TABLE_PREFIX", "STORAGE"})

#: A Django engine's vendor -> the async driver's URL scheme batchkit uses for it.
_SCHEMES = {
    "django.db.backends.sqlite3": "sqlite+aiosqlite",
    "django.db.backends.postgresql": "postgresql+asyncpg",
    "django.contrib.gis.db.backends.postgis": "postgresql+asyncpg",
    "django.db.backends.mysql": "mysql+asyncmy",
    "django.contrib.gis.db.backends.mysql": "mysql+asyncmy",
}


def _options() -> Mapping[str, Any]:
    found = getattr(settings, "BATCHKIT", None) or {}
    if not isinstance(found, dict):
        raise ImproperlyConfigured(f"settings.BATCHKIT must be a dict, not {type(found).__name__}")
    unknown = sorted(set(found) - _KNOWN)
    if unknown:
        raise ImproperlyConfigured(
            f"settings.BATCHKIT has unknown keys {unknown}; known: {sorted(_KNOWN)}"
        )
    return found


def database_alias() -> str:
    """The alias of the database that holds batchkit's tables: ``BATCHKIT["DATABASE"]``,
    or ``"default"``.

    Raises:
        ImproperlyConfigured: the alias is not one of ``settings.DATABASES``.
    """
    alias = _options().get("DATABASE", "default")
    if not isinstance(alias, str) or alias not in settings.DATABASES:
        raise ImproperlyConfigured(
            f"settings.BATCHKIT['DATABASE'] is {alias!r}, which is not a database of "
            f"settings.DATABASES ({sorted(settings.DATABASES)})"
        )
    return alias


def table_prefix() -> str:
    """The prefix of batchkit's tables: ``BATCHKIT["TABLE_PREFIX"]``, or ``"batchkit_"``.

    Raises:
        ImproperlyConfigured: the prefix is not a text.
    """
    prefix = _options().get("TABLE_PREFIX", DEFAULT_PREFIX)
    if not isinstance(prefix, str) or not prefix:
        raise ImproperlyConfigured(
            f"settings.BATCHKIT['TABLE_PREFIX'] must be a non-empty text, not {prefix!r}"
        )
    return prefix


def storage_url(alias: str | None = None) -> str:
    """The async storage URL of a Django database, for `SyncBatchRunner`, `open_storage`
    or ``python -m batchkit``.

    ``sqlite3`` gives ``sqlite+aiosqlite:///NAME``, ``postgresql``
    ``postgresql+asyncpg://USER:PASSWORD@HOST:PORT/NAME`` and ``mysql``
    ``mysql+asyncmy://...``, the user and password quoted for a URL. ``BATCHKIT["STORAGE"]``,
    when set, is the URL instead (for the database of ``BATCHKIT["DATABASE"]``).

    Args:
        alias: a database of ``settings.DATABASES``; `None`: the one that holds batchkit's
            tables (`database_alias`).

    Returns:
        The URL. It holds the database's password: log it with care.

    Raises:
        ImproperlyConfigured: no such database, an engine batchkit has no driver for, or
            a SQLite database only in memory (a worker could not share it).
    """
    if alias is None:
        configured = _options().get("STORAGE")
        if configured is not None:
            if not isinstance(configured, str) or "://" not in configured:
                raise ImproperlyConfigured("settings.BATCHKIT['STORAGE'] must be a storage URL")
            return configured
        alias = database_alias()
    if alias not in settings.DATABASES:
        raise ImproperlyConfigured(
            f"no database {alias!r} in settings.DATABASES ({sorted(settings.DATABASES)})"
        )
    return database_url(alias, settings.DATABASES[alias])


def database_url(alias: str, database: Mapping[str, Any]) -> str:
    """The async storage URL of one entry of ``settings.DATABASES`` (see `storage_url`)."""
    engine = database.get("ENGINE", "")
    scheme = _SCHEMES.get(engine)
    if scheme is None:
        raise ImproperlyConfigured(
            f"batchkit has no async driver for the database {alias!r} (ENGINE {engine!r}); "
            "batchkit stores in SQLite, PostgreSQL and MySQL/MariaDB: set "
            "settings.BATCHKIT['STORAGE'] to a storage URL"
        )
    name = str(database.get("NAME") or "")
    if scheme.startswith("sqlite"):
        if not name or name == ":memory:" or "mode=memory" in name:
            raise ImproperlyConfigured(
                f"the database {alias!r} is a SQLite database in memory: batchkit's workers "
                "cannot share it; give it a file (NAME)"
            )
        return f"{scheme}:///{name}"
    user = quote(str(database.get("USER") or ""), safe="")
    password = quote(str(database.get("PASSWORD") or ""), safe="")
    host = str(database.get("HOST") or "")
    port = str(database.get("PORT") or "")
    query: dict[str, str] = {}
    if host.startswith("/"):  # a Unix socket's directory
        query["host"] = host
        host = ""
    elif ":" in host:  # an IPv6 address
        host = f"[{host}]"
    credentials = ""
    if user or password:
        credentials = user + (f":{password}" if password else "") + "@"
    where = host + (f":{port}" if port else "")
    options = database.get("OPTIONS") or {}
    if scheme.startswith("postgresql") and options.get("sslmode"):
        query["ssl"] = str(options["sslmode"])
    if scheme.startswith("mysql") and options.get("charset"):
        query["charset"] = str(options["charset"])
    tail = f"?{urlencode(query)}" if query else ""
    return f"{scheme}://{credentials}{where}/{quote(name, safe='')}{tail}"
