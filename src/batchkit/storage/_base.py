"""What every storage adapter needs the same way: its plumbing, written once.

* `AsyncContext`: ``async with storage`` opens it on the way in, closes it on the way out.
* `retrying` and `backoff`: a call tried again after a transient fault, a write shielded
  from cancellation, and the `StorageError` (its secrets redacted) once it gives up.
* `validate_prefix` and its rules: what keeps one application's batches apart from
  another's in the same database (`KEY_PREFIX` for Redis, `TABLE_PREFIX` for SQL).
* `refuse_synchronous_driver`: a URL naming a synchronous driver, refused with the
  async spelling to use instead.
* `check_group`: the arguments of `GroupCommitter.finish_group`, checked alike.

Nothing here imports a driver: the adapters say, through a `Fault`, what their drivers'
errors mean.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final, NamedTuple, Self, TypeVar

import anyio

from .._secrets import redact, shows_secret
from ..exceptions import InvalidStorageURL, StorageError

if TYPE_CHECKING:
    import logging
    from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
    from types import TracebackType

    from ..protocols import Lease, Outcome

__all__ = [
    "BACKOFF_FIRST",
    "BACKOFF_MAX",
    "KEY_PREFIX",
    "SYNC_SPELLINGS",
    "TABLE_PREFIX",
    "AsyncContext",
    "Fault",
    "PrefixRule",
    "backoff",
    "chained",
    "check_group",
    "fault_of",
    "last_one",
    "refuse_synchronous_driver",
    "retrying",
    "validate_prefix",
]

T = TypeVar("T")
K = TypeVar("K")


def last_one(convert: Callable[[K], T]) -> tuple[dict[K, T], Callable[[K], T]]:
    """A memory of the last value converted: the dictionary to look in first (inline,
    ``seen.get(value) or made(value)``, where a call would cost more than the lookup), and
    the function that converts a value not there and keeps it in place of the last. A
    listing reads every item of a batch with the batch's creation time: it makes one
    `datetime`, not one an item."""
    seen: dict[K, T] = {}

    def made(value: K) -> T:
        result = convert(value)
        seen.clear()
        seen[value] = result
        return result

    return seen, made


# -- the async context manager ---------------------------------------------------------------


class AsyncContext:
    """Mixin: ``async with storage`` runs `open` on the way in and `aclose` on the way out.

    An adapter with a connection overrides both; one with nothing to connect (the memory
    store) inherits the `open` that does nothing.
    """

    __slots__ = ()

    async def open(self) -> None:
        """Nothing to connect."""

    async def aclose(self) -> None:
        """Nothing to release."""

    async def __aenter__(self) -> Self:
        await self.open()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()


# -- retries ---------------------------------------------------------------------------------

#: Seconds before the first retry, and the most any retry waits.
BACKOFF_FIRST: Final = 0.1
BACKOFF_MAX: Final = 2.0


def backoff(tries: int) -> float:
    """Seconds to wait before retry number ``tries`` (1 for the first): 0.1, 0.2, 0.4...

    Doubles from `BACKOFF_FIRST` up to `BACKOFF_MAX`, and stays there however many tries.
    """
    # The exponent is capped: past it the wait is BACKOFF_MAX anyway, and 2**tries of a
    # very large count would not fit in a float.
    return min(BACKOFF_MAX, BACKOFF_FIRST * 2.0 ** (min(tries, 32) - 1))


class Fault(NamedTuple):
    """What an adapter makes of an error one try raised (see `retrying`)."""

    #: Whether the same try, made again, may succeed (a dropped connection, a deadlock).
    transient: bool
    #: What the `StorageError` given up with says (the driver's own error, unwrapped).
    shown: BaseException
    #: What that `StorageError` is chained to; `None` to chain nothing (see `chained`).
    cause: BaseException | None


async def retrying(
    attempt: Callable[[], Awaitable[T]],
    *,
    classify: Callable[[Exception], Fault | None],
    fault: Callable[[BaseException], StorageError],
    retries: int,
    write: bool = True,
    logger: logging.Logger | None = None,
    message: str = "transient fault, retrying",
) -> T:
    """Run ``attempt``; after a transient fault, wait (`backoff`) and run it again.

    Args:
        attempt: one try; called anew for every try. A store whose writes queue behind
            each other (SQLite's single writer) wraps its try in that queue: the wrapper is
            the try, shielded with it.
        classify: what an error a try raised is: a `Fault`, or `None` for an error that
            is not the store's (a bug, a caller's mistake), which propagates as it is.
        fault: the `StorageError` raised in the end, built from `Fault.shown` (the
            adapter's, which redacts its secrets: see `fault_of`) and chained to
            `Fault.cause`. Raised at once for a fault that is not transient, and for a
            transient one after ``retries`` retries.
        retries: how many times a try hit by a transient fault is made again.
        write: the try writes: it is shielded from cancellation, for a write that landed
            must reach its caller (cancelled between the store's answer and the return, a
            claim would be lost until its lease lapsed). A cancellation is never swallowed:
            it arrives at the next checkpoint after the try, or during the wait between
            two tries. Reads are not shielded.
        logger: where each retry is logged, a WARNING with ``message`` and the ``attempt``
            and ``delay`` as extra fields; `None` logs nothing.
        message: the warning's text.
    """
    tries = 0
    while True:
        try:
            if not write:
                return await attempt()
            with anyio.CancelScope(shield=True):
                return await attempt()
        except Exception as exc:
            found = classify(exc)
            if found is None:
                raise
            if tries >= retries or not found.transient:
                raise fault(found.shown) from found.cause
        tries += 1
        delay = backoff(tries)
        if logger is not None:
            logger.warning(message, extra={"attempt": tries, "delay": delay})
        await anyio.sleep(delay)


def fault_of(exc: BaseException, secrets: Iterable[str] = ()) -> StorageError:
    """The `StorageError` for a driver's error: its type and message, secrets redacted."""
    return StorageError(redact(f"{type(exc).__name__}: {exc}", secrets))


def chained(exc: BaseException, secrets: Iterable[str] = ()) -> BaseException | None:
    """What a `StorageError` about ``exc`` may be chained to: ``exc``, or `None`.

    A driver's error that shows a secret is not chained: a logged traceback would print
    it (the `StorageError`'s own message says what it said, redacted).
    """
    return None if shows_secret(exc, secrets) else exc


# -- prefixes --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PrefixRule:
    """What a prefix may be: a pattern it must match whole, and the refusal's words."""

    pattern: re.Pattern[str]
    #: The start of the `ValueError`'s message; the refused value follows, as a repr.
    refusal: str


#: Redis key names: letters, digits and ``_ . : -``, at most 64, no hash tag braces.
KEY_PREFIX: Final = PrefixRule(
    re.compile(r"\A[A-Za-z0-9_][A-Za-z0-9_.:-]{0,63}\Z"),
    "prefix must be 1 to 64 letters, digits or '_.:-' (and not start with one of '.:-'), got ",
)
#: SQL table names: an identifier's start, short enough for every dialect's limits.
TABLE_PREFIX: Final = PrefixRule(
    re.compile(r"\A[A-Za-z_][A-Za-z0-9_]{0,30}\Z"),
    "table_prefix must be 1 to 31 letters, digits or underscores, not starting with a digit; got ",
)


def validate_prefix(prefix: str, rule: PrefixRule) -> str:
    """Return ``prefix`` if it follows ``rule``, else raise `ValueError` saying the rule."""
    if not isinstance(prefix, str) or rule.pattern.match(prefix) is None:
        raise ValueError(f"{rule.refusal}{prefix!r}")
    return prefix


# -- synchronous drivers ---------------------------------------------------------------------

#: Synchronous spellings people paste from elsewhere, and the async one to use instead.
SYNC_SPELLINGS: Final[Mapping[str, str]] = {
    "sqlite": "sqlite+aiosqlite",
    "postgres": "postgresql+asyncpg",
    "postgresql": "postgresql+asyncpg",
    "postgresql+psycopg2": "postgresql+asyncpg",
    "mysql": "mysql+asyncmy",
    "mysql+pymysql": "mysql+asyncmy",
    "mysql+mysqldb": "mysql+asyncmy",
    "mariadb": "mariadb+asyncmy",
}


def refuse_synchronous_driver(
    url: str,
    spellings: Mapping[str, str] = SYNC_SPELLINGS,
    *,
    error: type[ValueError] = InvalidStorageURL,
) -> None:
    """Raise ``error`` if ``url``'s scheme is one of ``spellings``: a synchronous driver.

    The message gives the URL with its async spelling, its password hidden (a host may
    log its exceptions).
    """
    scheme, _, rest = url.partition("://")
    scheme = scheme.lower()
    fixed = spellings.get(scheme)
    if fixed is not None:
        raise error(
            f"{scheme}:// names a synchronous driver; batchkit is async: use "
            f"{redact(f'{fixed}://{rest}')}"
        )


def check_group(batch_id: str, succeeded: Sequence[tuple[Lease, Outcome]], claim: int) -> None:
    """Refuse what `GroupCommitter.finish_group` does not take, before anything is written."""
    if type(claim) is not int or claim < 0:
        raise ValueError(f"claim must be an int of 0 or more, got {claim!r}")
    for lease, outcome in succeeded:
        if lease.batch_id != batch_id:
            raise ValueError(
                f"a lease of batch {lease.batch_id!r} in a group of batch {batch_id!r}"
            )
        if outcome.state.value != "succeeded" or outcome.result is None:
            raise ValueError(f"a group takes successes only, got {outcome.state.value!r}")
