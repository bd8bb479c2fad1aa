"""RetryPolicy: how many attempts an item gets, how long it waits between them, which errors
are worth another try."""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TypeAlias, cast

from ._options import positive_int, seconds

__all__ = ["ErrorMatcher", "RetryPolicy"]

#: Which errors a rule applies to: an exception class, a tuple of them, or a predicate.
ErrorMatcher: TypeAlias = (
    type[BaseException] | tuple[type[BaseException], ...] | Callable[[BaseException], bool]
)


def _matcher(value: ErrorMatcher, name: str) -> Callable[[BaseException], bool]:
    if isinstance(value, type) and issubclass(value, BaseException):
        return lambda exc: isinstance(exc, value)
    if isinstance(value, tuple):
        for kind in value:
            if not (isinstance(kind, type) and issubclass(kind, BaseException)):
                raise TypeError(f"{name} must hold exception classes, got {kind!r}")
        return lambda exc: isinstance(exc, value)
    if callable(value):
        return cast("Callable[[BaseException], bool]", value)
    raise TypeError(f"{name} must be an exception class, a tuple of them or a predicate")


@dataclass(frozen=True)
class RetryPolicy:
    """Automatic retries of failed items, inside the same batch.

    Each item has a budget of its own (one bad item cannot use up the others'): an
    attempt that fails while the item has attempts left puts it back to `queued`, to be
    claimed again after a backoff; the failure of its last attempt makes it `failed`.
    Every failed attempt's error is kept on the item (`Item.errors`).

    An attempt lost with its runner (the process died, or stopped heartbeating until its
    lease expired) counts as a failed attempt too, so an item that crashes every worker
    that runs it ends `failed` instead of crashing them forever. Attempts handed back
    unfinished (a worker shutting down, a cancelled run) do not count.

    Args:
        max_attempts: attempts an item gets in all, the first included (1: no retry).
        backoff: seconds to wait before the next attempt: a number is the first wait,
            doubled after each further failure (``1.0`` waits 1, 2, 4, 8... seconds); a
            sequence gives each wait in turn (its last repeats); a callable takes the
            number of failed attempts so far and returns the wait.
        max_backoff: the longest wait, whatever ``backoff`` says.
        jitter: each wait is moved at random by up to this fraction of it (0.1: ±10%),
            so that items that failed together do not all come back at once.
        retry_on: which errors are retried: an exception class, a tuple of them, or a
            predicate taking the exception. An item timeout is a `TimeoutError`. By
            default every error the generator raises, `BaseException`s such as
            `SystemExit` included, so that an item that raises one on every run ends
            `failed` after ``max_attempts`` attempts like any other.
        give_up_on: errors never retried, even when ``retry_on`` matches them.

    A result that is not JSON is a bug of the generator, not bad luck: it is never retried.
    """

    max_attempts: int = 3
    backoff: float | Sequence[float] | Callable[[int], float] = 1.0
    max_backoff: float = 300.0
    jitter: float = 0.1
    retry_on: ErrorMatcher = (BaseException,)
    give_up_on: ErrorMatcher = ()
    _retry_on: Callable[[BaseException], bool] = field(init=False, repr=False, compare=False)
    _give_up_on: Callable[[BaseException], bool] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        positive_int("max_attempts", self.max_attempts)
        backoff = self.backoff
        if isinstance(backoff, Sequence) and not isinstance(backoff, str | bytes):
            if not backoff:
                raise ValueError("backoff must hold at least one delay")
            object.__setattr__(
                self,
                "backoff",
                tuple(seconds("each backoff delay", d, allow_zero=True) for d in backoff),
            )
        elif not callable(backoff):
            object.__setattr__(self, "backoff", seconds("backoff", backoff, allow_zero=True))
        object.__setattr__(
            self, "max_backoff", seconds("max_backoff", self.max_backoff, allow_zero=True)
        )
        jitter = seconds("jitter", self.jitter, allow_zero=True)
        if jitter > 1:
            raise ValueError(f"jitter must be a fraction from 0 to 1, got {self.jitter!r}")
        object.__setattr__(self, "jitter", jitter)
        object.__setattr__(self, "_retry_on", _matcher(self.retry_on, "retry_on"))
        object.__setattr__(self, "_give_up_on", _matcher(self.give_up_on, "give_up_on"))

    def retries(self, exc: BaseException) -> bool:
        """Whether an attempt that failed with ``exc`` deserves another one (budget aside)."""
        return bool(self._retry_on(exc)) and not self._give_up_on(exc)

    def delay(self, failures: int) -> float:
        """Seconds to wait before the next attempt, after ``failures`` failed attempts."""
        backoff = self.backoff
        if isinstance(backoff, tuple):
            base = float(backoff[min(failures, len(backoff)) - 1])
        elif callable(backoff):
            base = seconds("the backoff callable's delay", backoff(failures), allow_zero=True)
        else:
            assert isinstance(backoff, float)
            base = backoff * 2.0 ** min(failures - 1, 64)
        wait = min(base, self.max_backoff)
        if self.jitter and wait:
            wait *= 1.0 + random.uniform(-self.jitter, self.jitter)
        return max(0.0, min(wait, self.max_backoff))
