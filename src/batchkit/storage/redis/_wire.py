"""RedisStorage's connection plumbing: faults, the wire format, connections kept aside."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from redis import exceptions as redis_errors

from .._base import Fault

if TYPE_CHECKING:
    from collections.abc import Iterable

__all__ = [
    "LANES",
    "REDIRECTS",
    "SETTLING",
    "TRANSIENT",
    "Lanes",
    "bulk",
    "classify",
    "client_secrets",
    "describe",
    "error_word",
    "evalsha",
]

#: Errors after which the same call may succeed (OSError covers ConnectionError).
TRANSIENT = (redis_errors.ConnectionError, redis_errors.TimeoutError, OSError)
#: A Redis Cluster in the middle of a failover or of a slot's move: CLUSTERDOWN (and
#: MASTERDOWN), TRYAGAIN, a slot no node serves yet, redis-py's redirections run out.
#: The same call succeeds once the cluster has settled.
SETTLING = (
    redis_errors.ClusterDownError,
    redis_errors.TryAgainError,
    redis_errors.ClusterError,
    redis_errors.SlotNotCoveredError,
)
# NOSCRIPT: the server lost its scripts (a restart, a failover, a SCRIPT FLUSH) again
# between redis-py loading one and running it; it did not run, so running it again is safe.
_RETRIED = (*TRANSIENT, *SETTLING, redis_errors.NoScriptError)
_UNREACHABLE: tuple[type[BaseException], ...] = (
    *TRANSIENT,
    *filter(None, [getattr(redis_errors, "RedisClusterUnreachableError", None)]),
)
#: Connections a storage keeps for its hot path between calls.
LANES = 4

#: The word of the server's error that redis-py strips from the message of these (a
#: client of one server before redis-py 8 raises a `ResponseError` with the word kept).
_WORDS = (
    (redis_errors.MasterDownError, "MASTERDOWN"),
    (redis_errors.ClusterDownError, "CLUSTERDOWN"),
    (redis_errors.MovedError, "MOVED"),
    (redis_errors.AskError, "ASK"),
    (redis_errors.TryAgainError, "TRYAGAIN"),
    (redis_errors.ClusterCrossSlotError, "CROSSSLOT"),
    (redis_errors.ReadOnlyError, "READONLY"),
    (redis_errors.NoScriptError, "NOSCRIPT"),
    (redis_errors.OutOfMemoryError, "OOM"),
    (redis_errors.ExecAbortError, "EXECABORT"),
    (redis_errors.NoPermissionError, "NOPERM"),
)
_KNOWN_WORDS = frozenset(word for _, word in _WORDS)
#: A cluster settling (see `SETTLING`), and a redirection to another node.
_SETTLING_WORDS = frozenset({"CLUSTERDOWN", "MASTERDOWN", "TRYAGAIN"})
REDIRECTS = frozenset({"MOVED", "ASK"})


def classify(exc: Exception, *, cluster: bool = False) -> Fault | None:
    """What an error of one call is to `retrying`: a fault, retried or not, or a bug.

    A redirection (MOVED, ASK) is retried on a cluster client (the slots are moving, and
    it follows them); a client of one server cannot follow it, so it is not retried.
    """
    if isinstance(exc, _RETRIED):
        return Fault(transient=True, shown=exc, cause=exc)
    if isinstance(exc, redis_errors.ResponseError):
        word = error_word(exc)
        transient = word in _SETTLING_WORDS or (cluster and word in REDIRECTS)
        return Fault(transient=transient, shown=exc, cause=exc)
    if isinstance(exc, redis_errors.RedisClusterException):
        # No node reachable is an outage; the others (cross-slot, a server without
        # cluster mode) say what is wrong, and stay so.
        return Fault(transient=_unreachable(exc), shown=exc, cause=exc)
    return None


def _unreachable(exc: BaseException) -> bool:
    # redis-py 8 says so with a type of its own; before, the cause is a connection's error.
    seen: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and current not in seen and len(seen) < 8:
        if isinstance(current, _UNREACHABLE):
            return True
        seen.append(current)
        current = current.__cause__ or current.__context__
    return False


def error_word(exc: BaseException) -> str | None:
    """The server's word for an error (MOVED, CLUSTERDOWN...), which redis-py strips."""
    for kind, word in _WORDS:
        if isinstance(exc, kind):
            return word
    code = getattr(exc, "status_code", None)  # redis-py 8 keeps it
    if isinstance(code, str) and code:
        return code
    first = _answer(str(exc)).partition(" ")[0]
    return first if first in _KNOWN_WORDS else None


def _answer(text: str) -> str:
    # redis-py puts a pipeline's command before the server's answer.
    return text.rpartition(" caused error: ")[2]


def describe(exc: BaseException) -> str:
    """A driver's error as a `StorageError` says it: its type, and its message with the
    server's word put back (``MovedError: MOVED 3999 10.0.0.2:6379``)."""
    text = str(exc)
    word = error_word(exc)
    answer = _answer(text)
    if word is not None and not answer.startswith(word):
        text = f"{text[: len(text) - len(answer)]}{word} {answer}".rstrip()
    return f"{type(exc).__name__}: {text}"


def client_secrets(client: Any) -> frozenset[str]:
    """The password of a host's client, to hide it should a driver error repeat it."""
    settings = getattr(getattr(client, "connection_pool", None), "connection_kwargs", None)
    if settings is None:
        settings = getattr(client, "connection_kwargs", None)  # a cluster client
    password = settings.get("password") if isinstance(settings, dict) else None
    return frozenset({password}) if isinstance(password, str) and password else frozenset()


def bulk(value: str | bytes) -> bytes:
    """One argument of a command in the Redis protocol (RESP)."""
    data = value.encode("utf-8") if isinstance(value, str) else value
    return b"$%d\r\n%s\r\n" % (len(data), data)


def evalsha(sha: str, n_keys: int, head: bytes, args: Iterable[str]) -> bytes:
    """An EVALSHA command, packed: ``head`` holds its ``n_keys`` keys and first arguments
    (packed once per batch, see `bulk`); ``args`` follow."""
    rest = [bulk(arg) for arg in args]
    return b"".join(
        [
            b"*%d\r\n$7\r\nEVALSHA\r\n" % (5 + n_keys + len(rest)),
            bulk(sha),
            bulk(str(n_keys)),
            head,
            *rest,
        ]
    )


class Lanes:
    """Connections kept out of a client's pool between calls, at most `LANES`.

    A pool checkout per call costs more than a script of the hot path; a connection the
    server dropped takes the others kept beside it along (see `send`).
    """

    __slots__ = ("_kept",)

    def __init__(self) -> None:
        self._kept: list[Any] = []

    async def send(self, pool: Any, packed: bytes) -> Any:
        """Send one packed command on a kept connection (or one of ``pool``); its reply.

        An error answer (`ResponseError`, NOSCRIPT among them) leaves the connection
        fine, and kept; any other error drops it.
        """
        conn = self._kept.pop() if self._kept else await pool.get_connection()
        # The read keeps the connection's timeout; the write of a small command only fills
        # the socket's buffer, and timing it would cost a task per call.
        timeout, conn.socket_timeout = conn.socket_timeout, None
        try:
            try:
                await conn.send_packed_command(packed)
            finally:
                conn.socket_timeout = timeout
            reply = await conn.read_response(timeout=timeout)
        except redis_errors.ResponseError:
            await self._keep(pool, conn)  # an error answer: the connection is fine
            raise
        except BaseException as exc:
            await conn.disconnect()
            await pool.release(conn)
            if isinstance(exc, TRANSIENT):
                # The server dropped this connection (a restart, CLIENT KILL): the ones
                # kept beside it are most likely gone too, so the retry takes a new one.
                await self.close(pool, disconnect=True)
            raise
        await self._keep(pool, conn)
        return reply

    async def _keep(self, pool: Any, conn: Any) -> None:
        if len(self._kept) < LANES:
            self._kept.append(conn)
        else:
            await pool.release(conn)

    async def close(self, pool: Any | None, *, disconnect: bool = False) -> None:
        """Give every kept connection back to ``pool`` (`None`: forget them)."""
        kept, self._kept = self._kept, []
        if pool is not None:
            for conn in kept:
                if disconnect:
                    await conn.disconnect()
                await pool.release(conn)
