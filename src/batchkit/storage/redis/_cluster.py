"""RedisStorage and Redis Cluster: its URLs and client, the server's kind checked at open,
and the `StorageError` for a driver's error (its word kept, a redirection explained)."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, unquote, urlsplit

from redis import cluster as redis_cluster
from redis import exceptions as redis_errors
from redis.asyncio.cluster import RedisCluster

from ..._secrets import redact, safe_url, unparsable, url_secrets
from ...exceptions import InvalidStorageURL, StorageError
from .._base import chained
from ._wire import REDIRECTS, TRANSIENT, classify, describe, error_word

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Sequence

__all__ = [
    "CLUSTER_SCHEMES",
    "SCRIPTS_IN_PIPELINES",
    "check_server",
    "cluster_client",
    "cluster_node_refused",
    "cluster_records",
    "cluster_url",
    "fault",
    "is_cluster_node",
    "not_a_cluster",
    "parse_cluster_url",
    "plain_url",
]

logger = logging.getLogger("batchkit.storage.redis")

#: The cluster schemes and the plain one redis-py is given (``rediss``: over TLS).
CLUSTER_SCHEMES = {"redis+cluster": "redis", "rediss+cluster": "rediss"}
#: Whether a cluster client's pipeline takes EVALSHA (redis-py 8 on; refused before).
SCRIPTS_IN_PIPELINES = "EVALSHA" not in getattr(redis_cluster, "PIPELINE_BLOCKED_COMMANDS", ())


def _flag(value: str) -> bool:
    word = value.strip().lower()
    if word not in ("1", "true", "yes", "on", "0", "false", "no", "off"):
        raise ValueError(value)
    return word in ("1", "true", "yes", "on")


def _seconds(value: str) -> float:
    number = float(value)
    if not 0 <= number < float("inf"):
        raise ValueError(value)
    return number


def _count(value: str) -> int:
    number = int(value)
    if number < 1:
        raise ValueError(value)
    return number


def _cert_reqs(value: str) -> str:
    if value not in ("none", "optional", "required"):
        raise ValueError(value)
    return value


_TEXT = (str, "text")
_FLAG = (_flag, "true or false")
_SECONDS = (_seconds, "a number of seconds, 0 or more")
_COUNT = (_count, "a whole number, 1 or more")

#: What a cluster URL's query string may set: option -> what reads its value, and what
#: the value must be.
_OPTIONS: dict[str, tuple[Callable[[str], Any], str]] = {
    "username": _TEXT,
    "password": _TEXT,
    "client_name": _TEXT,
    "socket_timeout": _SECONDS,
    "socket_connect_timeout": _SECONDS,
    "socket_keepalive": _FLAG,
    "health_check_interval": _SECONDS,
    "max_connections": _COUNT,
    "require_full_coverage": _FLAG,
    "reinitialize_steps": _COUNT,
}
#: Options of a ``rediss+cluster://`` URL only.
_TLS_OPTIONS: dict[str, tuple[Callable[[str], Any], str]] = {
    "ssl_cert_reqs": (_cert_reqs, "'none', 'optional' or 'required'"),
    "ssl_ca_certs": _TEXT,
    "ssl_certfile": _TEXT,
    "ssl_keyfile": _TEXT,
    "ssl_check_hostname": _FLAG,
}


def parse_cluster_url(url: str) -> tuple[str, dict[str, Any]]:
    """Read a ``redis+cluster://`` or ``rediss+cluster://`` URL.

    Returns:
        The plain ``redis://`` (``rediss://``) URL of the node to start from, without its
        query string, and the client's options that the query string sets.

    Raises:
        InvalidStorageURL: no host, a database other than 0, an option it does not know
            or a value it cannot read (the message shows the URL without its password).
    """
    scheme, _, rest = url.partition("://")
    scheme = scheme.lower()
    plain = CLUSTER_SCHEMES[scheme]
    shown = repr(safe_url(url))
    try:
        parts = urlsplit(f"{plain}://{rest}")
        parts.port  # noqa: B018 (raises on a port that is not a number)
    except ValueError as exc:
        hint = unparsable(url, exc, url_secrets(url))
        raise InvalidStorageURL(f"{shown} cannot be parsed: {hint}") from None
    if not parts.hostname:
        raise InvalidStorageURL(f"{shown} names no host: use e.g. '{scheme}://host:6379/0'")
    database = unquote(parts.path).strip("/")
    if database not in ("", "0"):
        raise InvalidStorageURL(
            f"{shown} names database {database!r}: a Redis Cluster has database 0 only"
        )
    known = {**_OPTIONS, **(_TLS_OPTIONS if plain == "rediss" else {})}
    options: dict[str, Any] = {}
    for name, value in parse_qsl(parts.query, keep_blank_values=True):
        if name == "db":
            if value != "0":
                raise InvalidStorageURL(f"{shown}: a Redis Cluster has database 0 only")
            continue
        if name not in known:
            hint = (
                f"{name} needs rediss+cluster:// (TLS)"
                if name in _TLS_OPTIONS
                else f"it takes {', '.join(sorted(known))}"
            )
            raise InvalidStorageURL(
                f"{shown}: {scheme}:// takes no option {redact(name)!r}; {hint}"
            )
        read, what = known[name]
        try:
            options[name] = read(value)
        except ValueError:
            raise InvalidStorageURL(
                f"{shown}: option {name!r} must be {what}, got {redact(value)!r}"
            ) from None
    return parts._replace(path="/0", query="", fragment="").geturl(), options


def cluster_client(url: str) -> RedisCluster:
    """A `RedisCluster` client for a cluster URL (see `parse_cluster_url`); no I/O yet."""
    plain, options = parse_cluster_url(url)
    try:
        client: RedisCluster = RedisCluster.from_url(plain, **options)
        return client
    except (ValueError, redis_errors.RedisClusterException) as exc:
        hint = unparsable(url, exc, url_secrets(url))
        raise InvalidStorageURL(f"{safe_url(url)!r} cannot be opened: {hint}") from None


def plain_url(url: str | None) -> str:
    """The ``redis://`` URL of a cluster URL's node, as it may be shown (no password)."""
    scheme, _, rest = safe_url(url or "").partition("://")
    return f"{scheme.partition('+')[0]}://{rest}" if rest else "redis://host:port/0"


def cluster_url(url: str | None) -> str:
    """The cluster URL to use instead of a plain one, as it may be shown (no password)."""
    if url is None:
        return "redis+cluster://host:port/0"
    scheme, _, rest = safe_url(url).partition("://")
    if scheme not in ("redis", "rediss"):
        return "redis+cluster://host:port/0"
    return f"{scheme}+cluster://{rest}"


def not_a_cluster(exc: BaseException) -> bool:
    """Whether a cluster client's error says that the server is not a cluster node."""
    seen: Iterable[BaseException | None] = (exc, exc.__cause__, exc.__context__)
    return any(e is not None and "cluster mode is not enabled" in str(e).lower() for e in seen)


async def is_cluster_node(client: Any) -> bool:
    """Whether a plain client's server is a node of a Redis Cluster (``INFO cluster``).

    Asked once, when a storage opens. A server that does not answer ``INFO`` (a proxy,
    a renamed command) is taken for what the URL says it is.
    """
    try:
        info = await client.info("cluster")
    except redis_errors.ResponseError:
        logger.debug("INFO cluster refused: cannot tell whether this is a cluster node")
        return False
    return str(info.get("cluster_enabled", 0)) == "1"


def fault(
    exc: BaseException, *, cluster: bool, url: str | None, secrets: Iterable[str]
) -> StorageError:
    """The `StorageError` for a driver's error, without the storage's secrets.

    It names the server's word for the error (MOVED, CLUSTERDOWN...), says what to do
    about a redirection that a client of one server cannot follow, and is not
    `StorageError.transient` when no retry would change the answer.
    """
    said = describe(exc)
    if not cluster and error_word(exc) in REDIRECTS:
        said += f"; the server is a node of a Redis Cluster: open {cluster_url(url)!r} instead"
    error = StorageError(redact(said, secrets))
    # An outage past the retries may end; an error answer that no retry changes lasts.
    found = classify(exc, cluster=cluster) if isinstance(exc, Exception) else None
    error.transient = found is None or found.transient
    return error


async def check_server(
    client: Any, *, shown: str, url: str | None, secrets: Iterable[str]
) -> InvalidStorageURL | StorageError | None:
    """Reach a storage's server, and check that it is the kind its client is for.

    Once per open, never on the hot path: a client of one server on a cluster node would
    fail only on the first key of another node (MOVED), half-way through a step.

    Args:
        client: the storage's client (of one server, or a `RedisCluster`).
        shown: the storage, as it shows itself.
        url: its URL, or `None` for a host's client.
        secrets: what to hide from the messages.

    Returns:
        The error to raise for a client of one server on a cluster node (the storage
        closes a client of its own first), or `None`.

    Raises:
        StorageError: the server cannot be reached, or a cluster URL names a server
            without cluster mode (the message names the ``redis://`` URL to use).
    """
    cluster = isinstance(client, RedisCluster)
    try:
        await client.ping()
        if cluster or not await is_cluster_node(client):
            return None
    except (*TRANSIENT, redis_errors.RedisClusterException) as exc:
        said = redact(str(exc), secrets)
        wrong_kind = cluster and not_a_cluster(exc)
        if wrong_kind:
            said += f"; a server without cluster mode is opened with {plain_url(url)!r}"
        error = StorageError(f"cannot open {shown}: {said}")
        error.transient = not wrong_kind
        # A driver's error that shows a secret is not chained (see `chained`).
        raise error from chained(exc, secrets)
    return cluster_node_refused(shown, url)


def cluster_node_refused(storage: str, url: str | None) -> InvalidStorageURL | StorageError:
    """The error for a storage whose client of one server reached a cluster node.

    Args:
        storage: the storage, as it shows itself.
        url: its URL (the cluster URL to use instead is named), or `None` for a host's
            client.
    """
    said = (
        f"cannot open {storage}: the server is a node of a Redis Cluster, whose keys live "
        "on several nodes"
    )
    if url is not None:
        return InvalidStorageURL(f"{said}: open {cluster_url(url)!r} instead")
    error = StorageError(
        f"{said}: pass a redis.asyncio.cluster.RedisCluster client, or open a "
        f"{cluster_url(None)!r} URL"
    )
    error.transient = False
    return error


async def cluster_records(
    client: Any, script: Any, calls: Sequence[tuple[list[str], list[str]]]
) -> list[Any]:
    """The replies of one script called with each ``(keys, args)``, on a cluster client.

    A cluster's pipeline sends each call to the node of its keys' slot. The call is queued
    by its SHA: the script object would load it through the pipeline, which cannot.
    """
    if not SCRIPTS_IN_PIPELINES:  # before redis-py 8: one round trip per call
        return [await script(keys=keys, args=args, client=client) for keys, args in calls]
    pipe = client.pipeline(transaction=False)
    for keys, args in calls:
        pipe.evalsha(script.sha, len(keys), *keys, *args)
    try:
        return list(await pipe.execute())
    except redis_errors.NoScriptError:
        # A node never saw it, or forgot it (a failover, a restart): load it on every
        # primary; `retrying` runs the pipeline again.
        await client.script_load(script.script)
        raise
