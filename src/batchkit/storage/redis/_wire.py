"""RedisStorage's connection plumbing: faults, the wire format, connections kept aside."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from redis import exceptions as redis_errors

from .._base import Fault

if TYPE_CHECKING:
    from collections.abc import Iterable

__all__ = ["LANES", "TRANSIENT", "Lanes", "bulk", "classify", "client_secrets", "evalsha"]

#: Errors after which the same call may succeed (OSError covers ConnectionError).
TRANSIENT = (redis_errors.ConnectionError, redis_errors.TimeoutError, OSError)
# NOSCRIPT: the server lost its scripts (a restart, a failover, a SCRIPT FLUSH) again
# between redis-py loading one and running it; it did not run, so running it again is safe.
_RETRIED = (*TRANSIENT, redis_errors.NoScriptError)
#: Connections a storage keeps for its hot path between calls.
LANES = 4


def classify(exc: Exception) -> Fault | None:
    """What an error of one call is to `retrying`: a fault, retried or not, or a bug."""
    if isinstance(exc, _RETRIED):
        return Fault(transient=True, shown=exc, cause=exc)
    if isinstance(exc, redis_errors.ResponseError):
        return Fault(transient=False, shown=exc, cause=exc)
    return None


def client_secrets(client: Any) -> frozenset[str]:
    """The password of a host's client, to hide it should a driver error repeat it."""
    settings = getattr(getattr(client, "connection_pool", None), "connection_kwargs", None)
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
