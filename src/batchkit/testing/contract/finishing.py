"""Contract tests for finishing items: outcomes, fencing of stale leases, terminal states."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from ...codec import dumps
from ...models import BatchState, Item, ItemError
from ...protocols import ItemRecord, Lease, Outcome
from ...status import empty_counts, status_from_record
from ._helpers import (
    _C,
    _F,
    _Q,
    _R,
    _S,
    LONG,
    _assert_consistent,
    _claim,
    _create,
    _error,
    _item,
    _request,
    _state,
    counts_of,
)

if TYPE_CHECKING:
    from ...protocols import BatchRecord, Storage

__all__ = ["FinishingContract"]


class FinishingContract:
    """Finishing: each outcome, refusal of stale or forged leases, and items that stay final."""

    async def _superseded(self, storage: Storage) -> tuple[BatchRecord, Lease, Item]:
        record = await _create(storage, 1)
        old = await _claim(storage, record.id, lease_seconds=0)
        new = await _claim(storage, record.id)
        await storage.record_progress(new.lease, 0.4, "new runner")
        return record, old.lease, await _item(storage, record.id, "item-0")

    async def test_stale_lease_heartbeat_is_refused(self, storage: Storage) -> None:
        record, stale, before = await self._superseded(storage)
        assert not (await storage.heartbeat(stale, lease_seconds=0)).held
        assert await storage.claim(_request(record.id)) is None  # the new lease still holds
        assert await _item(storage, record.id, "item-0") == before

    async def test_stale_lease_progress_is_refused(self, storage: Storage) -> None:
        record, stale, before = await self._superseded(storage)
        assert not (await storage.record_progress(stale, 0.9, "old runner")).held
        assert await _item(storage, record.id, "item-0") == before

    @pytest.mark.parametrize(
        "outcome",
        [
            pytest.param(Outcome.succeeded('"old"'), id="succeeded"),
            pytest.param(Outcome.failed(_error()), id="failed"),
            pytest.param(Outcome.released(), id="released"),
            pytest.param(Outcome.cancelled(), id="cancelled"),
        ],
    )
    async def test_stale_lease_finish_is_refused(self, storage: Storage, outcome: Outcome) -> None:
        record, stale, before = await self._superseded(storage)
        counts = counts_of(await storage.get_batch(record.id))
        assert not (await storage.finish(stale, outcome)).accepted
        assert await _item(storage, record.id, "item-0") == before
        assert counts_of(await storage.get_batch(record.id)) == counts

    async def test_forged_token_is_refused(self, storage: Storage) -> None:
        record = await _create(storage, 1)
        claim = await _claim(storage, record.id)
        forged = Lease(record.id, "item-0", "not-the-token", claim.lease.attempt)
        assert not (await storage.heartbeat(forged, lease_seconds=LONG)).held
        assert not (await storage.finish(forged, Outcome.succeeded("1"))).accepted
        assert await _state(storage, record.id, "item-0") == _R

    async def test_expired_lease_not_yet_reclaimed_can_finish(self, storage: Storage) -> None:
        record = await _create(storage, 1)
        claim = await _claim(storage, record.id, lease_seconds=0)
        assert (await storage.finish(claim.lease, Outcome.succeeded("1"))).accepted
        assert await _state(storage, record.id, "item-0") == _S

    # -- finishing -------------------------------------------------------------------------

    async def test_finish_succeeded(self, storage: Storage) -> None:
        record = await _create(storage, 2)
        claim = await _claim(storage, record.id)
        await storage.record_progress(claim.lease, 0.5, "half")
        result = await storage.finish(claim.lease, Outcome.succeeded(dumps({"ok": [1]})))
        assert result.accepted
        assert result.claim is None
        item = await _item(storage, record.id, "item-0")
        assert (item.state, item.result, item.progress, item.error) == (_S, {"ok": [1]}, 1.0, None)
        assert item.finished_at is not None
        counts = counts_of(await storage.get_batch(record.id))
        assert counts == {**empty_counts(), _Q: 1, _S: 1}

    async def test_succeeded_clears_an_earlier_error(self, storage: Storage) -> None:
        record = await _create(storage, 1)
        first = await _claim(storage, record.id)
        await storage.finish(first.lease, Outcome.released(error=_error()))
        second = await _claim(storage, record.id)
        await storage.finish(second.lease, Outcome.succeeded("true"))
        assert (await _item(storage, record.id, "item-0")).error is None

    async def test_finish_failed_keeps_the_error(self, storage: Storage) -> None:
        record = await _create(storage, 1)
        claim = await _claim(storage, record.id)
        error = _error(attempt=1, message="boom ✓ {x}:*\nsecond line")
        assert (await storage.finish(claim.lease, Outcome.failed(error))).accepted
        item = await _item(storage, record.id, "item-0")
        assert (item.state, item.error, item.result) == (_F, error, None)
        assert item.finished_at is not None

    async def test_item_record_keeps_the_error_as_json_text(self, storage: Storage) -> None:
        record = await _create(storage, 2)
        error = _error(attempt=1, message='boom ✓ 漢字 {x}:*\n"quoted" \\ back')
        failed = await _claim(storage, record.id)
        assert (await storage.finish(failed.lease, Outcome.failed(error))).accepted
        retried = await _claim(storage, record.id)
        waiting = _error(attempt=1, message="again")
        await storage.finish(retried.lease, Outcome.released(delay=LONG, error=waiting))
        for key, state, expected in [("item-0", _F, error), ("item-1", _Q, waiting)]:
            got = await storage.get_item(record.id, key)
            assert isinstance(got, ItemRecord)
            assert got.state is state
            assert isinstance(got.error, str)
            parsed = ItemError.model_validate_json(got.error)
            assert (parsed.type, parsed.message) == ("ValueError", expected.message)
            assert parsed == expected
        listed = await storage.list_items(record.id)
        assert [r.error for r in listed] == [
            (await storage.get_item(record.id, r.key)).error for r in listed
        ]

    async def test_finish_cancelled(self, storage: Storage) -> None:
        record = await _create(storage, 1)
        claim = await _claim(storage, record.id)
        assert (await storage.finish(claim.lease, Outcome.cancelled())).accepted
        assert await _state(storage, record.id, "item-0") == _C
        assert status_from_record(await storage.get_batch(record.id)).state is BatchState.CANCELLED

    @pytest.mark.parametrize(
        "outcome",
        [
            pytest.param(Outcome.failed(_error()), id="failed"),
            pytest.param(Outcome.cancelled(), id="cancelled"),
        ],
    )
    async def test_a_final_failure_keeps_the_last_progress(
        self, storage: Storage, outcome: Outcome
    ) -> None:
        """An item that ends failed or cancelled shows how far it got and what it was
        doing: its last progress and message stay."""
        record = await _create(storage, 1)
        claim = await _claim(storage, record.id)
        await storage.record_progress(claim.lease, 0.6, "uploading")
        assert (await storage.finish(claim.lease, outcome)).accepted
        item = await _item(storage, record.id, "item-0")
        assert (item.state, item.progress, item.message) == (outcome.state, 0.6, "uploading")

    async def test_release_requeues_and_resets_progress(self, storage: Storage) -> None:
        record = await _create(storage, 1)
        claim = await _claim(storage, record.id)
        await storage.record_progress(claim.lease, 0.6, "busy")
        assert (await storage.finish(claim.lease, Outcome.released())).accepted
        item = await _item(storage, record.id, "item-0")
        assert (item.state, item.progress, item.message, item.attempt) == (_Q, 0.0, None, 1)
        assert item.finished_at is None
        assert (await _claim(storage, record.id)).lease.attempt == 2

    async def test_release_keeps_the_error(self, storage: Storage) -> None:
        record = await _create(storage, 1)
        claim = await _claim(storage, record.id)
        await storage.finish(claim.lease, Outcome.released(delay=LONG, error=_error()))
        assert (await _item(storage, record.id, "item-0")).error == _error()

    async def test_release_with_delay_waits(self, storage: Storage) -> None:
        record = await _create(storage, 2)
        claim = await _claim(storage, record.id)
        await storage.finish(claim.lease, Outcome.released(delay=LONG))
        assert (await _claim(storage, record.id)).lease.key == "item-1"
        assert await storage.claim(_request(record.id)) is None
        assert await _state(storage, record.id, "item-0") == _Q

    async def test_release_without_delay_is_claimable_at_once(self, storage: Storage) -> None:
        record = await _create(storage, 2)
        claim = await _claim(storage, record.id)
        await storage.finish(claim.lease, Outcome.released(delay=0))
        again = await _claim(storage, record.id)
        assert (again.lease.key, again.lease.attempt) == ("item-0", 2)

    @pytest.mark.parametrize(
        "outcome",
        [
            pytest.param(Outcome.succeeded('"again"'), id="succeeded"),
            pytest.param(Outcome.failed(_error(message="again")), id="failed"),
            pytest.param(Outcome.released(), id="released"),
            pytest.param(Outcome.cancelled(), id="cancelled"),
        ],
    )
    async def test_terminal_item_never_changes(self, storage: Storage, outcome: Outcome) -> None:
        record = await _create(storage, 1)
        claim = await _claim(storage, record.id)
        await storage.finish(claim.lease, Outcome.failed(_error()))
        before = await _item(storage, record.id, "item-0")
        assert not (await storage.heartbeat(claim.lease, lease_seconds=LONG)).held
        assert not (await storage.record_progress(claim.lease, 0.5, "late")).held
        assert not (await storage.finish(claim.lease, outcome)).accepted
        assert await storage.claim(_request(record.id)) is None
        assert await _item(storage, record.id, "item-0") == before

    async def test_counts_sum_to_total_through_every_transition(self, storage: Storage) -> None:
        record = await _create(storage, 5)
        outcomes = [
            Outcome.succeeded("1"),
            Outcome.failed(_error()),
            Outcome.released(),
            Outcome.cancelled(),
        ]
        for outcome in outcomes:
            claim = await _claim(storage, record.id)
            await _assert_consistent(storage, record.id)
            await storage.finish(claim.lease, outcome)
            await _assert_consistent(storage, record.id)
        await storage.cancel_batch(record.id)
        final = await _assert_consistent(storage, record.id)
        assert counts_of(final) == {**empty_counts(), _S: 1, _F: 1, _C: 3}

    async def test_finished_at_set_when_last_active_item_ends(self, storage: Storage) -> None:
        record = await _create(storage, 2)
        first = await _claim(storage, record.id)
        second = await _claim(storage, record.id)
        await storage.finish(first.lease, Outcome.succeeded("1"))
        assert (await storage.get_batch(record.id)).finished_at is None
        await storage.finish(second.lease, Outcome.failed(_error()))
        final = await storage.get_batch(record.id)
        assert final.finished_at is not None
        assert status_from_record(final).state is BatchState.COMPLETED_WITH_ERRORS

    async def test_finish_then_claim_returns_the_next_claim(self, storage: Storage) -> None:
        record = await _create(storage, 2)
        claim = await _claim(storage, record.id)
        result = await storage.finish(
            claim.lease, Outcome.succeeded("1"), then_claim=_request(record.id)
        )
        assert result.accepted
        assert result.claim is not None
        assert (result.claim.lease.key, result.claim.lease.attempt) == ("item-1", 1)
        assert await _state(storage, record.id, "item-1") == _R
        last = await storage.finish(
            result.claim.lease, Outcome.succeeded("2"), then_claim=_request(record.id)
        )
        assert (last.accepted, last.claim) == (True, None)

    async def test_finish_then_claim_honours_its_request(self, storage: Storage) -> None:
        other = await _create(storage, 1)
        record = await _create(storage, 1)
        claim = await _claim(storage, record.id)
        result = await storage.finish(
            claim.lease, Outcome.succeeded("1"), then_claim=_request(record.id)
        )
        assert (result.accepted, result.claim) == (True, None)
        assert await _state(storage, other.id, "item-0") == _Q

    async def test_a_finish_that_claims_keeps_every_batch_exact(self, storage: Storage) -> None:
        # A storage may move the finish's counters and the claim's together: whether the
        # claim lands in the same batch, in another, or nowhere (the batch's end), both
        # batches' counters equal a recount, and each ends when its last item does.
        first = await _create(storage, 2)
        second = await _create(storage, 2)
        claim = await _claim(storage, first.id)
        steps = [
            (Outcome.succeeded("1"), _request(second.id), second.id),  # into another batch
            (Outcome.failed(_error()), _request(second.id), second.id),  # the same batch
            (Outcome.cancelled(), _request(second.id), None),  # nothing left: its end
        ]
        for outcome, then_claim, lands_in in steps:
            result = await storage.finish(claim.lease, outcome, then_claim=then_claim)
            assert result.accepted
            assert (None if result.claim is None else result.claim.lease.batch_id) == lands_in
            for record in (first, second):
                await _assert_consistent(storage, record.id)
            if result.claim is not None:
                claim = result.claim
        ended = await storage.get_batch(second.id)
        assert counts_of(ended)[_F] == counts_of(ended)[_C] == 1
        assert ended.started_at is not None
        assert ended.finished_at is not None
        last = await _claim(storage, first.id)
        result = await storage.finish(
            last.lease, Outcome.succeeded("2"), then_claim=_request(first.id)
        )
        assert (result.accepted, result.claim) == (True, None)
        done = await _assert_consistent(storage, first.id)
        assert counts_of(done)[_S] == 2
        assert done.finished_at is not None

    async def test_refused_finish_still_claims_the_next(self, storage: Storage) -> None:
        record = await _create(storage, 2)
        old = await _claim(storage, record.id, lease_seconds=0)
        await _claim(storage, record.id)  # takes item-0 over
        result = await storage.finish(
            old.lease, Outcome.succeeded("1"), then_claim=_request(record.id)
        )
        assert not result.accepted
        assert result.claim is not None
        assert result.claim.lease.key == "item-1"
