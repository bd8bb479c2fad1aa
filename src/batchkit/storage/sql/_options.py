"""batchkit's own options in a SQL storage URL's query string, taken out before SQLAlchemy
reads the URL (a driver would refuse them, or pass them to the server as settings)."""

from __future__ import annotations

from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Final

from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from ..._secrets import redact, url_secrets
from ...exceptions import InvalidStorageURL
from .schema import SCHEMA_NAME, validate_schema

if TYPE_CHECKING:
    from collections.abc import Callable, Collection, Iterator, Mapping

    from sqlalchemy.ext.asyncio import AsyncEngine

    from ._dialect import Dialect

__all__ = [
    "URL_OPTIONS",
    "asyncpg_query",
    "driver_options",
    "schema_of",
    "schema_option",
    "split_url_options",
    "unnamed",
]

#: The query keys of a storage URL that are batchkit's, not the driver's.
URL_OPTIONS: Final = ("schema", "pooler", "max_connections", "pool_timeout", "listen_url")


def split_url_options(url: str) -> tuple[str, dict[str, str]]:
    """``url`` without batchkit's own query keys (`URL_OPTIONS`), and their raw values.

    A URL that holds none of them is returned as it is, character for character; one that
    does is rebuilt by SQLAlchemy from its parts (so the rest reads exactly as SQLAlchemy
    read it). A URL SQLAlchemy cannot parse is returned as it is, with no options: opening
    the storage says what is wrong with it.

    Raises:
        InvalidStorageURL: one of batchkit's keys is given more than once.
    """
    try:
        parsed = make_url(url)
    except (ArgumentError, ValueError):
        return url, {}
    options: dict[str, str] = {}
    for key in URL_OPTIONS:
        value = parsed.query.get(key)
        if value is None:
            continue
        if not isinstance(value, str):
            raise InvalidStorageURL(f"the storage URL gives the option {key!r} more than once")
        options[key] = value
    if not options:
        return url, options
    stripped = parsed.difference_update_query(options)
    return stripped.render_as_string(hide_password=False), options


def schema_option(url: str, given: str | None, in_url: str | None) -> str | None:
    """The storage's schema: the ``schema=`` keyword or the URL's ``?schema=``, checked.

    Args:
        url: the URL as the host gave it (its secrets are kept out of every message).
        given: the ``schema=`` keyword.
        in_url: the URL's ``?schema=`` (see `split_url_options`).

    Raises:
        InvalidStorageURL: the URL's ``?schema=`` is not a schema name, or differs from
            the keyword.
    """
    if in_url is None:
        return given
    if SCHEMA_NAME.pattern.match(in_url) is None:
        shown = redact(repr(in_url), url_secrets(url))
        raise InvalidStorageURL(
            "the storage URL's option ?schema= must be 1 to 63 letters, digits or "
            f"underscores, not starting with a digit; got {shown}"
        )
    if given is not None and given != in_url:
        raise InvalidStorageURL(
            f"the storage URL says ?schema={in_url} and the schema= keyword {given!r}: "
            "give one of them"
        )
    return in_url


def schema_of(
    url_or_engine: str | AsyncEngine,
    schema: str | None,
    url_options: Mapping[str, str],
    dialects: Mapping[str, type[Dialect]],
) -> str | None:
    """The storage's schema: the ``schema=`` keyword or the URL's ``?schema=``, checked,
    and refused on a database that has none (SQLite)."""
    if schema is not None:
        validate_schema(schema)
    if isinstance(url_or_engine, str):
        schema = schema_option(url_or_engine, schema, url_options.get("schema"))
        name = url_or_engine.partition("://")[0].partition("+")[0].lower()
    else:
        name = getattr(getattr(url_or_engine, "dialect", None), "name", "")
    family = dialects.get(name)
    if schema is not None and family is not None and not family.has_schemas:
        raise ValueError(
            f"schema={schema!r}: {name} has no schemas; keep each store's tables apart "
            "with a database file or a table_prefix of its own"
        )
    return schema


@contextmanager
def driver_options(secrets: Collection[str], *, reading: bool = False) -> Iterator[None]:
    """A driver's refusal of an option of the URL's query (asyncmy's and psycopg's are
    theirs to read) as the `InvalidStorageURL` it is, not a driver's traceback; with
    ``reading``, also a value SQLAlchemy could not read as its option's type."""
    try:
        yield
    except TypeError as exc:
        if "unexpected keyword argument" not in str(exc):
            raise
        raise InvalidStorageURL(
            f"the storage URL has an option its driver does not take: {redact(str(exc), secrets)}"
        ) from None
    except ValueError as exc:
        if not reading or isinstance(exc, InvalidStorageURL):
            raise
        raise InvalidStorageURL(
            f"an option of the storage URL cannot be read: {redact(str(exc), secrets)}"
        ) from None


# -- asyncpg's options in a URL's query -----------------------------------------------------


#: asyncpg's options a URL's query may set, and the type each is read as (SQLAlchemy hands
#: the query to ``asyncpg.connect`` as strings, which asyncpg's numbers do not accept).
_ASYNCPG_QUERY: dict[str, Callable[[str], Any]] = {
    "statement_cache_size": int,
    "prepared_statement_cache_size": int,
    "max_cached_statement_lifetime": int,
    "max_cacheable_statement_size": int,
    "timeout": float,
    "command_timeout": float,
    "ssl": str,
    "direct_tls": lambda value: _flag("direct_tls", value),
    "target_session_attrs": str,
    "passfile": str,
    "krbsrvname": str,
    "gsslib": str,
}
#: The parts of a URL that its query may give instead (libpq's spelling: ``?host=a,b``).
_URL_PARTS = frozenset({"user", "password", "host", "port", "database"})
#: The ``ssl`` values asyncpg takes (libpq's ``sslmode`` values, which it also accepts).
_SSL_MODES = ("disable", "allow", "prefer", "require", "verify-ca", "verify-full")


def unnamed() -> str:
    """The name of every statement prepared behind a transaction pooler: none."""
    return ""


def _flag(name: str, value: str) -> bool:
    if value.lower() in ("1", "true", "yes", "on"):
        return True
    if value.lower() in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"{name} must be true or false")


def asyncpg_query(url: str) -> tuple[dict[str, Any], list[str]]:
    """The connect arguments of a ``postgresql+asyncpg`` URL's query, each read as the
    type asyncpg wants, and the query keys to take off the URL (read here instead).

    libpq's spellings that asyncpg lacks are translated: ``sslmode`` is ``ssl``,
    ``application_name`` and ``options``-free server settings go to ``server_settings``.

    Raises:
        InvalidStorageURL: an option asyncpg does not know, or a value of the wrong type
            (the message names the option and lists those it knows; no value is shown,
            it may be a secret).
    """
    args: dict[str, Any] = {}
    dropped: list[str] = []
    for key, raw in make_url(url).query.items():
        value = raw[-1] if isinstance(raw, tuple) else raw
        name = "ssl" if key == "sslmode" else key
        if key == "application_name":
            args.setdefault("server_settings", {})["application_name"] = value
            dropped.append(key)
            continue
        if key in _URL_PARTS:
            continue  # SQLAlchemy reads these itself (several hosts among them)
        read = _ASYNCPG_QUERY.get(name)
        if read is None:
            known = ", ".join(sorted({*_ASYNCPG_QUERY, *_URL_PARTS, "sslmode", "application_name"}))
            raise InvalidStorageURL(
                f"the storage URL's option {key!r} is not one asyncpg takes; it takes: "
                f"{known}; and batchkit's own: {', '.join(URL_OPTIONS)}"
            )
        try:
            args[name] = read(value)
        except ValueError:
            raise InvalidStorageURL(
                f"the storage URL's option {key!r} must be "
                f"{'a whole number' if read is int else 'a number' if read is float else 'true or false'}"
            ) from None
        if name == "ssl" and args[name] not in _SSL_MODES:
            raise InvalidStorageURL(
                f"the storage URL's option {key!r} must be one of {', '.join(_SSL_MODES)}"
            )
        dropped.append(key)
    return args, dropped
