"""Group commit on SQL: several successes of one batch and its next claims, one transaction
(`batchkit.protocols.GroupCommitter`).

A transaction of k successes and n claims costs k UPDATEs of the items, one SELECT and one
UPDATE for all the claims, and one UPDATE of the batch's counters: where a runner writing
each item alone pays four statements and a commit per item, a group pays about one.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ...codec import loads
from ...protocols import Claim, GroupResult, Lease
from ._statements import Q, S

if TYPE_CHECKING:
    from collections.abc import Sequence

    from ...protocols import Outcome
    from ._statements import Statements, Steps

__all__ = ["group_steps"]


def group_steps(
    sql: Statements,
    batch_id: str,
    succeeded: Sequence[tuple[Lease, Outcome]],
    *,
    claim: int,
    lease_seconds: float,
    token: str,
    now: float,
    again: bool,
) -> Steps[GroupResult]:
    """The statements of one try of `SQLStorage.finish_group`.

    Every claim of the group holds ``token`` (each item's lease is its key and the
    token): a try made ``again`` after one whose reply was lost finds what that try did,
    since the group commits whole or not at all.
    """
    if again:
        found = yield sql.claim_found(), {"b_id": batch_id, "b_token": token}
        if found.rows:
            # The earlier try committed: its outcomes were written, its claims are these.
            held = [_claim_of(batch_id, token, row, row.attempt) for row in found.rows]
            held.sort(key=lambda c: c.position)
            landed = []
            for lease, outcome in succeeded:
                landed.append((yield from sql.landed(lease, outcome)))
            return GroupResult(accepted=landed, claims=held)
    accepted = []
    finish = sql.finish(S)
    for lease, outcome in succeeded:
        params = sql.lease_params(lease)
        params.update(f_now=now, f_result=outcome.result, f_error=None, f_history=outcome.history)
        accepted.append((yield finish, params).rowcount == 1)
    done = sum(accepted)
    if again and not all(accepted):
        # An earlier try without claims may have committed: its outcomes landed.
        for n, (lease, outcome) in enumerate(succeeded):
            if not accepted[n]:
                accepted[n] = yield from sql.landed(lease, outcome)
    claims: list[Claim] = []
    started = 0
    if claim:
        rows = (yield sql.group_claim_select(claim), {"b_id": batch_id, "b_now": now}).rows
        if rows:
            yield (
                sql.group_claim_update(),
                {
                    "b_id": batch_id,
                    "b_positions": [row.position for row in rows],
                    "b_token": token,
                    "b_deadline": now + lease_seconds,
                    "b_now": now,
                },
            )
            claims = [_claim_of(batch_id, token, row, row.attempt + 1) for row in rows]
            started = sum(1 for row in rows if row.state == Q)
    if done or claims:
        yield (
            sql.group_counters(batch_id, now, claimed=bool(claims)),
            {"c_id": batch_id, "c_done": done, "c_started": started, "c_now": now},
        )
    return GroupResult(accepted=accepted, claims=claims)


def _claim_of(batch_id: str, token: str, row: Any, attempt: int) -> Claim:
    return Claim(
        lease=Lease(batch_id, row.key, token, attempt),
        position=row.position,
        payload=loads(row.payload),
        history=row.history,
    )
