"""`Outcome.landed`: the one rule that tells a write whose answer was lost from a write
that never ran. The executor and every adapter ask it; a wrong answer either calls a
written outcome refused or takes a refused one for written."""

from __future__ import annotations

import pytest

from batchkit.models import ItemError, ItemState
from batchkit.protocols import Lease, Outcome

LEASE = Lease("b", "k", "token", 2)
ERROR = ItemError(type="ValueError", message="no")

OUTCOMES = {
    "succeeded": Outcome.succeeded('"ok"'),
    "failed": Outcome.failed(ERROR),
    "cancelled": Outcome.cancelled(),
    "released": Outcome.released(),
    "retried": Outcome.released(delay=5.0, error=ERROR),
}


@pytest.mark.parametrize(
    ("outcome", "found", "attempt", "landed"),
    [
        # Ended as asked, in the leased attempt: the earlier try did it.
        ("succeeded", "succeeded", 2, True),
        ("failed", "failed", 2, True),
        ("cancelled", "cancelled", 2, True),
        ("released", "queued", 2, True),
        ("retried", "queued", 2, True),
        # A release in a batch being cancelled ends the item cancelled: landed too.
        ("released", "cancelled", 2, True),
        ("retried", "cancelled", 2, True),
        # Another attempt's state: this write did not make it.
        ("succeeded", "succeeded", 1, False),
        ("succeeded", "succeeded", 3, False),
        ("released", "queued", 3, False),
        # Another state: something else ended the item.
        ("succeeded", "failed", 2, False),
        ("succeeded", "cancelled", 2, False),
        ("failed", "cancelled", 2, False),
        ("cancelled", "queued", 2, False),
        ("succeeded", "queued", 2, False),
        # Still running in this attempt: nothing was written.
        ("succeeded", "running", 2, False),
        ("released", "running", 2, False),
    ],
)
def test_a_lost_write_is_landed_when_the_item_ended_as_asked_in_its_attempt(
    outcome: str, found: str, attempt: int, landed: bool
) -> None:
    assert OUTCOMES[outcome].landed(LEASE, found, attempt) is landed
    assert OUTCOMES[outcome].landed(LEASE, ItemState(found), attempt) is landed


def test_a_state_that_is_not_one_is_an_error_not_a_guess() -> None:
    with pytest.raises(ValueError, match="bogus"):
        OUTCOMES["succeeded"].landed(LEASE, "bogus", 2)
