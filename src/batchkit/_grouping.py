"""Group commit and claim-ahead: what one slot owes the store, and what it holds ahead.

When items are quick, a slot writes several successes in one step and claims the next
few items with them (`batchkit.protocols.GroupCommitter`): one commit for several items
instead of one each. Both are bounded by the runner's ``group_commit`` window: an outcome
waits at most that long to be written (`Keeper` writes it when the item after it runs
longer), and the items claimed ahead are as many as the slot runs in that time, so none
shows `running` for longer than the window before it starts.
"""

from __future__ import annotations

import logging
import math
from collections import deque
from typing import TYPE_CHECKING

import anyio

from ._secrets import redact
from .protocols import FinishResult, GroupCommitter

if TYPE_CHECKING:
    from ._execution import Executor
    from .protocols import Claim, ClaimRequest, Lease, Outcome

__all__ = [
    "LEADING",
    "MAX_GROUP",
    "TAKEN",
    "WAITING",
    "WRITTEN",
    "Group",
    "Joining",
    "Joint",
    "write_shared",
]

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


#: The states of a `Joining`: waiting for the write in flight, told to write the next
#: joint step (the one in flight ended), taken into a step in flight, written.
WAITING, LEADING, TAKEN, WRITTEN = range(4)


class Joining:
    """One slot's success, with its next claim, on its way into a `Joint`'s next step."""

    __slots__ = ("error", "lease", "outcome", "request", "result", "state", "woken")

    def __init__(self, lease: Lease, outcome: Outcome, request: ClaimRequest) -> None:
        self.lease = lease
        self.outcome = outcome
        self.request = request
        self.state = WAITING
        #: Set once: when the slot must lead the next step, or when its success is written.
        self.woken = anyio.Event()
        self.result: FinishResult | None = None
        self.error: BaseException | None = None


class Joint:
    """Successes of one batch that the slots of one executor write one step at a time.

    The first success writes itself (with its next claim, as a success alone is written);
    those that end while it is in flight wait, and go together in the next step
    (`GroupCommitter.finish_group`, claiming one item for each). Nothing waits for a
    window: a success waits for one step in flight at most, and the more slots end
    together (a store slow to answer), the more items one commit carries.
    """

    __slots__ = ("busy", "queue")

    def __init__(self) -> None:
        #: Whether a step is in flight (or its successor is about to start).
        self.busy = False
        #: The successes waiting for the next step, in the order they ended.
        self.queue: list[Joining] = []


# -- slots that share writes (`Executor.work`) ------------------------------------------


async def write_shared(
    executor: Executor,
    joints: dict[str, Joint],
    lease: Lease,
    outcome: Outcome,
    request: ClaimRequest,
) -> FinishResult:
    """Write a success and claim the slot's next item, in its batch's `Joint`: alone
    when no write of the batch is in flight, else with the others that wait for it."""
    batch_id = lease.batch_id
    joint = joints.get(batch_id)
    if joint is None:
        joint = joints[batch_id] = Joint()
    if not joint.busy:
        joint.busy = True
        try:
            return await executor._write(lease, outcome, request)
        finally:
            _pass_on(joints, joint, batch_id)
    me = Joining(lease, outcome, request)
    joint.queue.append(me)
    try:
        await me.woken.wait()
    except BaseException:
        with anyio.CancelScope(shield=True):
            await _leave(executor, joints, joint, me)
        raise
    if me.state == LEADING:
        await _lead(executor, joints, joint, batch_id)
    if me.result is not None:
        return me.result
    # The joint step failed: each of its successes is written alone (fenced: one the
    # step did write is refused, then recognised).
    result = await executor._write(lease, outcome, request)
    if not result.accepted and await executor._landed(lease, outcome):
        result = FinishResult(accepted=True, claim=result.claim)
    return result


async def _lead(executor: Executor, joints: dict[str, Joint], joint: Joint, batch_id: str) -> None:
    """Write every success waiting in ``joint`` in one step, claiming one item for each.

    Shielded: the slots whose successes it carries wait for it."""
    members, joint.queue = joint.queue, []
    for member in members:
        member.state = TAKEN
    storage = executor.storage
    assert isinstance(storage, GroupCommitter)  # see group_commit
    try:
        with anyio.CancelScope(shield=True):
            try:
                if len(members) == 1:
                    one = members[0]
                    one.result = await storage.finish(
                        one.lease, one.outcome, then_claim=one.request
                    )
                else:
                    done = await storage.finish_group(
                        batch_id,
                        [(m.lease, m.outcome) for m in members],
                        claim=len(members),
                        lease_seconds=members[0].request.lease_seconds,
                    )
                    claims = iter(done.claims)
                    for member, accepted in zip(members, done.accepted, strict=True):
                        member.result = FinishResult(accepted, next(claims, None))
            except Exception as exc:  # each member writes its success alone
                if executor.metrics is not None:
                    executor.metrics.storage_error(exc)
                executor._log(
                    logging.WARNING,
                    "outcome_pending",
                    members[0].lease,
                    says=f"could not write {len(members)} successes together, writing "
                    f"each alone: {redact(str(exc))}",
                )
    finally:
        _pass_on(joints, joint, batch_id)
        for member in members:
            member.state = WRITTEN
            member.woken.set()


def _pass_on(joints: dict[str, Joint], joint: Joint, batch_id: str) -> None:
    """A step of ``joint`` ended: the first success waiting leads the next."""
    if joint.queue:
        first = joint.queue[0]
        first.state = LEADING
        first.woken.set()
    else:
        joint.busy = False
        if joints.get(batch_id) is joint:
            del joints[batch_id]


async def _leave(executor: Executor, joints: dict[str, Joint], joint: Joint, me: Joining) -> None:
    """A slot waiting in ``joint`` is cancelled: its success is left to be written alone
    (`work`), or, when a step already carries it, that step ends first and the item it
    claimed for the slot goes back."""
    if me.state == WAITING:
        joint.queue.remove(me)
        return
    if me.state == LEADING:
        await _lead(executor, joints, joint, me.lease.batch_id)
    elif me.state == TAKEN:
        await me.woken.wait()
    if me.result is not None and me.result.claim is not None:
        await executor.hand_back(me.result.claim)
