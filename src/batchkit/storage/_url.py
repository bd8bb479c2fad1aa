"""open_storage(url): the storage a URL names, its adapter imported only when asked for."""

from __future__ import annotations

import importlib
import re
from typing import TYPE_CHECKING, Any, NamedTuple

from .._secrets import redact
from ..exceptions import InvalidStorageURL, MissingDependency
from ._base import refuse_synchronous_driver

if TYPE_CHECKING:
    from ..protocols import Storage

__all__ = ["open_storage", "require"]


_SCHEME = re.compile(r"[a-z][a-z0-9+.-]*")


class _Adapter(NamedTuple):
    module: str
    factory: str
    extra: str
    drivers: tuple[str, ...]
    prefix_option: str  # the keyword of the factory that `open_storage(prefix=)` sets


def _sql(extra: str, driver: str) -> _Adapter:
    return _Adapter(
        "batchkit.storage.sql", "SQLStorage", extra, ("sqlalchemy", driver), "table_prefix"
    )


_REDIS = _Adapter("batchkit.storage.redis", "RedisStorage", "redis", ("redis",), "prefix")

_ADAPTERS: dict[str, _Adapter] = {
    "sqlite+aiosqlite": _sql("sql", "aiosqlite"),
    "postgresql+asyncpg": _sql("postgres", "asyncpg"),
    "postgresql+psycopg": _sql("postgres", "psycopg"),
    "mysql+asyncmy": _sql("mysql", "asyncmy"),
    "mariadb+asyncmy": _sql("mysql", "asyncmy"),
    "redis": _REDIS,
    "rediss": _REDIS,
    "redis+cluster": _REDIS,
    "rediss+cluster": _REDIS,
}


def require(module: str, extra: str) -> None:
    """Import ``module`` or raise `MissingDependency` naming the extra that provides it.

    Only the ImportError of ``module`` itself is translated; an error inside an
    installed package propagates as it is.
    """
    try:
        importlib.import_module(module)
    except ImportError as exc:
        if exc.name is not None and exc.name.split(".")[0] == module.split(".")[0]:
            raise MissingDependency(module, extra) from exc
        raise


def open_storage(url: str, *, prefix: str | None = None, **options: Any) -> Storage:
    """Build the storage a URL names; use it as an async context manager.

    ``memory://`` gives a `MemoryStorage`. The SQL and Redis schemes
    (``sqlite+aiosqlite:///path.db``, ``postgresql+asyncpg://...``, ``mysql+asyncmy://...``,
    ``redis://...``) load their adapter only when asked for. A Redis Cluster is
    ``redis+cluster://host:port/0`` (``rediss+cluster://`` over TLS), any node of it; a
    ``redis://`` URL that reaches a cluster node is refused when the storage opens.

    Args:
        url: the storage URL.
        prefix: what keeps these batches apart from others in the same database,
            whatever the store: `SQLStorage`'s ``table_prefix``, `RedisStorage`'s key
            ``prefix``. A ``memory://`` store is private to its process and ignores it.
            `None`: the adapter's default.
        options: other keyword options of the adapter's class (``finished_ttl=`` of
            `RedisStorage`, ``engine_options=`` of `SQLStorage`...).

    Raises:
        InvalidStorageURL: the URL names no storage batchkit knows, or a synchronous
            driver (the message gives the async spelling to use), or options its adapter
            does not take (a ``redis+cluster://`` URL's query string).
        MissingDependency: the adapter's extra is not installed (the message gives the
            ``pip install`` line).
        ValueError: the adapter refuses the prefix (see its class).
    """
    if not isinstance(url, str) or "://" not in url:
        # Not a URL, but perhaps a keyword DSN ("host=db password=..."): redacted too.
        shown = repr(redact(url)) if isinstance(url, str) else redact(repr(url))
        raise InvalidStorageURL(f"{shown} is not a storage URL (expected e.g. 'memory://')")
    scheme, _, rest = url.partition("://")
    scheme = scheme.lower()
    if _SCHEME.fullmatch(scheme) is None:
        # Not shown: it may be "user:password@host" with the scheme forgotten.
        raise InvalidStorageURL(
            "not a storage URL: what comes before '://' is not a scheme "
            "(expected e.g. 'memory://' or 'postgresql+asyncpg://')"
        )
    if scheme == "memory":
        if rest.strip("/"):
            raise InvalidStorageURL(f"'memory://' takes no host or path, got {redact(url)!r}")
        from .memory import MemoryStorage

        return MemoryStorage(**options)
    # The password stays out of the message: a host may log its exceptions.
    refuse_synchronous_driver(url)
    adapter = _ADAPTERS.get(scheme)
    if adapter is None:
        known = ", ".join(["memory", *sorted(_ADAPTERS)])
        raise InvalidStorageURL(f"unknown storage scheme {scheme!r}; known schemes: {known}")
    for driver in adapter.drivers:
        require(driver, adapter.extra)
    try:
        module = importlib.import_module(adapter.module)
    except ModuleNotFoundError as exc:
        if exc.name != adapter.module:
            raise
        raise InvalidStorageURL(
            f"{scheme}:// needs {adapter.factory}, which this version of batchkit does not include"
        ) from None
    if prefix is not None:
        options[adapter.prefix_option] = prefix
    storage: Storage = getattr(module, adapter.factory).from_url(url, **options)
    return storage
