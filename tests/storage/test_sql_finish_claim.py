"""PostgreSQL's one-statement finish-and-claim leaves the store as the storage's steps do.

On PostgreSQL, ``finish(lease, outcome, then_claim=...)`` of the runner's steady state
(an item ends, the next of the same batch is claimed) is ONE statement of its own
(`PostgresDialect.finish_and_claim`); every other database, and every other finish, runs
the storage's steps (`SQLStorage._finish`, then `SQLStorage._claim`). Each scenario here
runs twice on PostgreSQL, once each way, and both must answer the same and leave the same
items and counters behind, on both drivers.

Where they differ on purpose: the one statement passes over a running item of a cancelled
batch whose lease lapsed, which the steps end (cancelled) on the spot; the next plain
claim ends it (`SQLStorage.claim`). No scenario here cancels.
"""

from __future__ import annotations

import secrets
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import anyio
import pytest

from batchkit.history import History
from batchkit.models import ItemError
from batchkit.protocols import ClaimRequest, FinishResult, Lease, Outcome
from batchkit.storage.sql import SQLStorage
from batchkit.testing.contract import all_items, new_batch

from .conftest import POSTGRES_URL, _drop_tables, require_server

if TYPE_CHECKING:
    from collections.abc import Iterator

pytestmark = pytest.mark.anyio

DRIVERS = {
    "asyncpg": POSTGRES_URL,
    "psycopg": POSTGRES_URL.replace("+asyncpg", "+psycopg"),
}

Script = Callable[[SQLStorage, str], Awaitable[list[Any]]]


@pytest.fixture(params=sorted(DRIVERS))
def postgres_url(request: pytest.FixtureRequest) -> Iterator[str]:
    require_server(POSTGRES_URL, "PostgreSQL")
    url = DRIVERS[request.param]
    prefixes: list[str] = []
    request.node.prefixes = prefixes
    yield url
    anyio.run(_drop_tables, url, prefixes)


def _failure(message: str) -> ItemError:
    return ItemError(type="ValueError", message=message, attempt=1)


def _history(message: str) -> str:
    return History().with_failure(_failure(message), keep=3).encode()


def _claim(result: FinishResult) -> Any:
    claim = result.claim
    if claim is None:
        return None
    return (claim.lease.key, claim.lease.attempt, claim.position, claim.payload, claim.history)


def _answer(result: FinishResult) -> tuple[bool, Any]:
    return result.accepted, _claim(result)


async def _state(storage: SQLStorage, batch_id: str) -> dict[str, Any]:
    """The batch and its items, without the times (the two runs differ in those), but
    with whether each time is set."""
    record = await storage.get_batch(batch_id)
    items = await all_items(storage, batch_id)
    return {
        "counts": record.counts,
        "started": record.started_at is not None,
        "finished": record.finished_at is not None,
        "items": [
            (
                item.key,
                item.state,
                item.attempt,
                item.progress,
                item.message,
                item.result,
                item.error,
                item.errors,
                item.started_at is not None,
                item.finished_at is not None,
                item.lease_expires_at is not None,
            )
            for item in items
        ],
    }


async def _run(url: str, prefixes: list[str], script: Script, *, fused: bool) -> list[Any]:
    prefix = f"t{secrets.token_hex(4)}_"
    prefixes.append(prefix)
    async with SQLStorage(url, table_prefix=prefix) as storage:
        dialect: Any = storage._dialect
        assert type(dialect).__name__ in ("PostgresDialect", "AsyncpgDialect")
        used = 0
        one_statement = dialect._finish_and_claim

        async def counted(*args: Any) -> Any:
            nonlocal used
            used += 1
            return await one_statement(*args)

        dialect._finish_and_claim = counted
        if not fused:
            dialect.finish_and_claim = lambda *args: None  # the storage's steps, always
        record, _ = await storage.create_batch(new_batch(4))
        seen = await script(storage, record.id)
        seen.append(await _state(storage, record.id))
        # Each way was the way it says.
        assert (used > 0) == fused, used
    return seen


async def _same_both_ways(request: pytest.FixtureRequest, url: str, script: Script) -> None:
    prefixes: list[str] = request.node.prefixes
    fused = await _run(url, prefixes, script, fused=True)
    steps = await _run(url, prefixes, script, fused=False)
    assert fused == steps


def _request(batch_id: str, lease_seconds: float = 60) -> ClaimRequest:
    return ClaimRequest(lease_seconds=lease_seconds, batch_ids=(batch_id,))


OUTCOMES: dict[str, Callable[[int], Outcome]] = {
    "succeeded": lambda n: Outcome.succeeded(f'{{"n": {n}}}'),
    "succeeded-with-history": lambda n: Outcome.succeeded(f"{n}", history=_history(f"e{n}")),
    "failed": lambda n: Outcome.failed(_failure(f"bad {n}"), history=_history(f"bad {n}")),
    "failed-without-history": lambda n: Outcome.failed(_failure(f"bad {n}")),
    "cancelled": lambda n: Outcome.cancelled(_failure(f"stop {n}")),
    "cancelled-bare": lambda n: Outcome.cancelled(),
}


@pytest.mark.parametrize("outcome", sorted(OUTCOMES))
async def test_a_batch_run_to_its_end(
    request: pytest.FixtureRequest, postgres_url: str, outcome: str
) -> None:
    """Each item ends and the next is claimed, until none is left: the last finish claims
    nothing, and the batch is finished by it."""
    make = OUTCOMES[outcome]

    async def script(storage: SQLStorage, batch_id: str) -> list[Any]:
        seen: list[Any] = []
        claim = await storage.claim(_request(batch_id))
        assert claim is not None
        for n in range(5):
            result = await storage.finish(claim.lease, make(n), then_claim=_request(batch_id))
            seen.append(_answer(result))
            seen.append(await _state(storage, batch_id))
            if result.claim is None:
                break
            claim = result.claim
        assert seen[-2] == (True, None)
        return seen

    await _same_both_ways(request, postgres_url, script)


async def test_a_stale_lease_is_refused_and_the_next_item_still_claimed(
    request: pytest.FixtureRequest, postgres_url: str
) -> None:
    async def script(storage: SQLStorage, batch_id: str) -> list[Any]:
        claim = await storage.claim(_request(batch_id))
        assert claim is not None
        stale = Lease(batch_id, claim.lease.key, "not-the-token", claim.lease.attempt)
        refused = await storage.finish(stale, Outcome.succeeded("1"), then_claim=_request(batch_id))
        assert not refused.accepted
        other = Lease(batch_id, "item-3", "no-such-lease", 1)  # a queued item, not leased
        also = await storage.finish(
            other, Outcome.failed(_failure("x")), then_claim=_request(batch_id)
        )
        return [_answer(refused), _answer(also), await _state(storage, batch_id)]

    await _same_both_ways(request, postgres_url, script)


async def test_an_item_whose_lease_lapsed_is_claimed_again(
    request: pytest.FixtureRequest, postgres_url: str
) -> None:
    """The next item may be a running one whose lease lapsed (its runner died): claimed
    again in its next attempt, without counting it as started twice."""

    async def script(storage: SQLStorage, batch_id: str) -> list[Any]:
        first = await storage.claim(_request(batch_id))
        second = await storage.claim(_request(batch_id, lease_seconds=0.05))
        assert first is not None
        assert second is not None
        await anyio.sleep(0.2)  # the second item's lease lapses
        result = await storage.finish(
            first.lease, Outcome.succeeded("1"), then_claim=_request(batch_id)
        )
        assert _claim(result)[:2] == ("item-1", 2)
        return [_answer(result), await _state(storage, batch_id)]

    await _same_both_ways(request, postgres_url, script)


async def test_a_finish_after_its_own_lease_lapsed(
    request: pytest.FixtureRequest, postgres_url: str
) -> None:
    """The leased item's lease lapsed, and nobody claimed it meanwhile: its finish is
    accepted, and the claim that comes with it takes the next item, never the one ending
    (claimable as the statement began)."""

    async def script(storage: SQLStorage, batch_id: str) -> list[Any]:
        claim = await storage.claim(_request(batch_id, lease_seconds=0.05))
        assert claim is not None
        await anyio.sleep(0.2)
        result = await storage.finish(
            claim.lease, Outcome.succeeded("1"), then_claim=_request(batch_id)
        )
        assert result.accepted
        assert _claim(result)[:2] == ("item-1", 1)
        return [_answer(result), await _state(storage, batch_id)]

    await _same_both_ways(request, postgres_url, script)


async def test_the_first_claim_of_a_batch_by_a_finish_starts_it(
    request: pytest.FixtureRequest, postgres_url: str
) -> None:
    """A finish refused (its lease is not this batch's) still claims, here the batch's
    first item: the batch is started by it."""

    async def script(storage: SQLStorage, batch_id: str) -> list[Any]:
        before = await _state(storage, batch_id)
        assert not before["started"]
        nobody = Lease(batch_id, "item-2", "no-such-lease", 1)
        result = await storage.finish(
            nobody, Outcome.failed(_failure("x")), then_claim=_request(batch_id)
        )
        assert not result.accepted
        assert _claim(result)[:2] == ("item-0", 1)
        return [before, _answer(result), await _state(storage, batch_id)]

    await _same_both_ways(request, postgres_url, script)


async def test_items_waiting_for_their_retry_are_passed_over(
    request: pytest.FixtureRequest, postgres_url: str
) -> None:
    """A released item waiting for its retry time is not claimable yet; one whose time has
    come is, with the history its release wrote."""

    async def script(storage: SQLStorage, batch_id: str) -> list[Any]:
        seen: list[Any] = []
        first = await storage.claim(_request(batch_id))
        assert first is not None
        later = Outcome.released(delay=3600, error=_failure("later"), history=_history("later"))
        seen.append(_answer(await storage.finish(first.lease, later)))
        second = await storage.claim(_request(batch_id))
        assert second is not None
        seen.append(_answer(await storage.finish(second.lease, Outcome.released())))
        third = await storage.claim(_request(batch_id))  # item-1 again: its retry is due
        assert third is not None
        for _ in range(4):
            result = await storage.finish(
                third.lease, Outcome.succeeded("1"), then_claim=_request(batch_id)
            )
            seen.append(_answer(result))
            seen.append(await _state(storage, batch_id))
            if result.claim is None:
                break
            third = result.claim
        return seen

    await _same_both_ways(request, postgres_url, script)


async def test_other_finishes_take_the_storage_steps(postgres_url: str) -> None:
    """Only the runner's steady state is one statement: a release, a finish alone, a claim
    of other batches or by metadata run the storage's steps."""
    prefix = f"t{secrets.token_hex(4)}_"
    try:
        async with SQLStorage(postgres_url, table_prefix=prefix) as storage:
            dialect = storage._dialect
            lease = Lease("b", "k", "t", 1)
            one = _request("b")
            assert (
                dialect.finish_and_claim(lease, Outcome.succeeded("1"), one, _pending()) is not None
            )
            for outcome, then_claim in [
                (Outcome.released(), one),
                (Outcome.succeeded("1"), None),
                (Outcome.succeeded("1"), _request("other")),
                (Outcome.succeeded("1"), ClaimRequest(lease_seconds=60)),
                (Outcome.succeeded("1"), ClaimRequest(60, batch_ids=("b",), metadata={"a": 1})),
            ]:
                assert dialect.finish_and_claim(lease, outcome, then_claim, _pending()) is None
    finally:
        await _drop_tables(postgres_url, [prefix])


def _pending() -> Any:
    from batchkit.storage.sql._statements import PendingClaim

    return PendingClaim()
