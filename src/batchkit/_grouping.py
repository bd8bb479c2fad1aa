"""Group commit and claim-ahead: what one slot owes the store, and what it holds ahead.

When items are quick, a slot writes several successes in one step and claims the next
few items with them (`batchkit.protocols.GroupCommitter`): one commit for several items
instead of one each. Both are bounded by the runner's ``group_commit`` window: an outcome
waits at most that long to be written (`Keeper` writes it when the item after it runs
longer), and the items claimed ahead are as many as the slot runs in that time, so none
shows `running` for longer than the window before it starts.
"""

from __future__ import annotations

import math
from collections import deque
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .protocols import Claim, Lease, Outcome

__all__ = ["MAX_GROUP", "Group"]

#: At most this many items in one group (outcomes written, or items claimed ahead).
MAX_GROUP = 16


class Group:
    """One slot's outcomes not written yet and items claimed ahead, of one batch.

    Args:
        window: seconds an outcome may wait to be written, and the time the items claimed
            ahead may wait to start, together.
    """

    __slots__ = ("ahead", "mean", "owed", "since", "window")

    def __init__(self, window: float) -> None:
        self.window = window
        #: Successes not written yet: lease, outcome, seconds the attempt took.
        self.owed: list[tuple[Lease, Outcome, float]] = []
        #: Items claimed ahead, in the order they run.
        self.ahead: deque[Claim] = deque()
        #: When (anyio clock) the oldest outcome in ``owed`` was made.
        self.since = math.inf
        #: Seconds an item of this slot takes, a moving average (`inf`: none ran yet).
        self.mean = math.inf

    def note(self, seconds: float) -> None:
        """An item took ``seconds``: the size of the next groups follows it."""
        self.mean = seconds if self.mean == math.inf else 0.75 * self.mean + 0.25 * seconds

    def size(self) -> int:
        """How many items to claim at once: as many as run within the window (1: no group)."""
        if self.mean >= self.window / 2:
            return 1
        return min(MAX_GROUP, int(self.window / max(self.mean, 1e-6)))

    def pending(self) -> bool:
        """Whether the slot owes outcomes or holds items claimed ahead."""
        return bool(self.owed or self.ahead)

    def owe(self, lease: Lease, outcome: Outcome, seconds: float, now: float) -> None:
        if not self.owed:
            self.since = now
        self.owed.append((lease, outcome, seconds))

    def full(self, now: float) -> bool:
        """Whether the outcomes owed must be written now (too many, or waited too long)."""
        return len(self.owed) >= MAX_GROUP or now - self.since >= self.window

    def take_owed(self) -> list[tuple[Lease, Outcome, float]]:
        owed, self.owed, self.since = self.owed, [], math.inf
        return owed

    def take_ahead(self) -> list[Claim]:
        ahead = list(self.ahead)
        self.ahead.clear()
        return ahead
