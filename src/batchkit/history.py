"""An item's attempt history: how its earlier attempts ended, as the core records it.

The core writes the history with an attempt's outcome (`Outcome.history`) and reads it
back with the item's next claim (`Claim.history`); a storage keeps the text unread. From
the history and the claim's attempt number the core also tells how many attempts were
lost with a runner that died: they began (``attempt - 1`` began before this one) but no
runner recorded how they ended.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from typing import Any

from pydantic import ValidationError

from .codec import dumps, loads
from .models import ItemError

__all__ = ["History", "errors_of"]

logger = logging.getLogger("batchkit.runner")

#: Characters of traceback kept on each error of the history (the item's own ``error``
#: keeps the whole of the last one).
_TRACEBACK_KEPT = 2_000


@dataclass(frozen=True, slots=True)
class History:
    """How an item's earlier attempts ended."""

    #: Attempts handed back unfinished (a worker shutting down, a cancelled run).
    released: int = 0
    #: Attempts that failed: the generator's errors and attempts lost with their runner.
    failures: int = 0
    #: The errors of the latest failed attempts, oldest first.
    errors: tuple[ItemError, ...] = ()

    def lost(self, attempt: int) -> int:
        """How many attempts before ``attempt`` ended without a recorded outcome."""
        return max(0, attempt - 1 - self.released - self.failures)

    def with_failure(self, error: ItemError, *, keep: int) -> History:
        """This history after one more failed attempt (``keep``: errors kept at most)."""
        if error.traceback is not None and len(error.traceback) > _TRACEBACK_KEPT:
            error = error.model_copy(
                update={"traceback": "…" + error.traceback[-(_TRACEBACK_KEPT - 1) :]}
            )
        errors = (*self.errors, error)[-keep:]
        return replace(self, failures=self.failures + 1, errors=errors)

    def with_release(self) -> History:
        """This history after one more attempt handed back unfinished."""
        return replace(self, released=self.released + 1)

    def encode(self) -> str:
        """The history as JSON text, for `Outcome.history`."""
        return dumps(
            {
                "released": self.released,
                "failures": self.failures,
                "errors": [e.model_dump(exclude_none=True) for e in self.errors],
            }
        )

    @classmethod
    def decode(cls, text: str | None) -> History:
        """Read a stored history; `None` (never written) is an empty one.

        Text that is not a history (a store someone else wrote to) reads as an empty
        history, with a warning: it must not stop the item from running.
        """
        if text is None:
            return _EMPTY
        try:
            data: Any = loads(text)
            released, failures = data["released"], data["failures"]
            if type(released) is not int or type(failures) is not int:
                raise TypeError("counts must be integers")
            errors = tuple(ItemError.model_validate(e) for e in data["errors"])
        except (ValueError, TypeError, KeyError, ValidationError) as exc:
            logger.warning("an item's stored attempt history is unreadable: %s", exc)
            return _EMPTY
        return cls(released=max(0, released), failures=max(0, failures), errors=errors)


_EMPTY = History()


def errors_of(text: str | None) -> list[ItemError]:
    """The errors of a stored history, oldest first (what `Item.errors` shows)."""
    if text is None:
        return []
    return list(History.decode(text).errors)
