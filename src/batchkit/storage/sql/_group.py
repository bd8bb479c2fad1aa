"""Group commit on SQL: several successes of one batch and its next claims, one transaction
(`batchkit.protocols.GroupCommitter`).

A transaction of successes and claims costs five statements whatever their number: a
SELECT of the successes' items (whose leases are current) and one UPDATE ending them all,
a SELECT and an UPDATE for all the claims, and one UPDATE of the batch's counters. Where a
runner writing each item alone pays four statements and a commit per item, a group of 16
pays a third of one.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ...codec import loads
from ...protocols import Claim, GroupResult, Lease
from ._statements import Q

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
    accepted = [False] * len(succeeded)
    if succeeded:
        keys = [lease.key for lease, _ in succeeded]
        rows = (yield sql.group_held(), {"b_id": batch_id, "g_keys": keys}).rows
        current = {(row.key, row.token) for row in rows}
        ending: list[tuple[Lease, Outcome]] = []
        for n, (lease, outcome) in enumerate(succeeded):
            if (lease.key, lease.token) in current:
                current.discard((lease.key, lease.token))  # (a lease given twice ends once)
                accepted[n] = True
                ending.append((lease, outcome))
        if ending:
            params: dict[str, Any] = {"b_id": batch_id, "f_now": now}
            for j, (lease, outcome) in enumerate(ending):
                params[f"g_k{j}"] = lease.key
                params[f"g_r{j}"] = outcome.result
                params[f"g_h{j}"] = outcome.history
            yield sql.group_finish(len(ending)), params
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
