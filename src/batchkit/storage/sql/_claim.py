"""A claim on SQL as the storage's steps (`SQLStorage.claim`, and a finish's next claim)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ...codec import loads
from ...protocols import Claim, Lease
from ._statements import C, Q, R

if TYPE_CHECKING:
    from collections.abc import Callable

    from ...protocols import ClaimRequest
    from ._statements import Owed, PendingClaim, Statements, Steps

__all__ = ["claim_steps"]


def claim_steps(
    sql: Statements,
    now_of: Callable[[], float],
    request: ClaimRequest,
    pending: PendingClaim,
    owed: list[Owed],
) -> Steps[Claim | None]:
    """Claim the oldest claimable item of ``request`` at ``now_of()``: a claim in doubt
    first (``pending``), items of a cancelled batch ended on the way; the claim's move in
    its batch's counters goes with the finish ``owed`` before it (see `Owed`)."""
    if request.batch_ids is not None and not request.batch_ids:
        return None
    if pending.sent_in is not None:
        # An earlier try of this claim sent its UPDATE and then lost the connection: if
        # it committed, the item is this claim's, not a stray running until its lease
        # lapses (one lease of delay, and an attempt counted for nothing). It is the
        # batch's running item holding the claim's token.
        batch_id = pending.sent_in
        found = sql.claim_found()
        row = (yield (found, {"b_id": batch_id, "b_token": pending.token})).first()
        if row is not None:
            return Claim(
                lease=Lease(batch_id, row.key, pending.token, row.attempt),
                position=row.position,
                payload=loads(row.payload),
                history=row.history,
            )
        pending.sent_in = None
    query, params = sql.claim_query(request)
    update = sql.claim_update()
    for _ in range(64):
        now = now_of()
        row = (yield query, {**params, "b_now": now}).first()
        if row is None:
            return None
        batch_id, position = row.batch_id, row.position
        if row.cancel_requested:
            # A crashed runner's item in a cancelled batch: it ends cancelled.
            yield sql.terminal_at(C), {"b_id": batch_id, "b_pos": position, "b_now": now}
            yield from sql.bump(batch_id, R, C, now)
            continue
        token = pending.token
        attempt = row.attempt + 1
        pending.sent_in = batch_id
        yield (
            update,
            {
                "b_id": batch_id,
                "b_pos": position,
                "b_attempt": attempt,
                "b_token": token,
                "b_deadline": now + request.lease_seconds,
                "b_now": now,
            },
        )
        if row.state == Q:
            yield from sql.claimed(batch_id, now, owed)
        else:
            yield from sql.touch(batch_id, now)
        return Claim(
            lease=Lease(batch_id, row.key, token, attempt),
            position=position,
            payload=loads(row.payload),
            history=row.history,
        )
    return None
