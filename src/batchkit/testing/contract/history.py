"""Contract tests for an item's attempt history: stored with an outcome, returned by a claim."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from ...history import History
from ...models import ItemError, ItemState
from ...protocols import ItemRecord, Outcome
from ._helpers import _C, _F, _S, LONG, _claim, _create, _item, _items, _request

if TYPE_CHECKING:
    from ...protocols import Storage

__all__ = ["HistoryContract"]


def _history(*messages: str, released: int = 0) -> History:
    history = History(released=released)
    for n, message in enumerate(messages, start=1):
        error = ItemError(type="ValueError", message=message, traceback="tb\nline", attempt=n)
        history = history.with_failure(error, keep=10)
    return history


class HistoryContract:
    """History: the text a finish writes comes back, unchanged, with the item's next claim."""

    async def test_a_new_item_has_no_history(self, storage: Storage) -> None:
        record = await _create(storage, 1)
        claim = await _claim(storage, record.id)
        assert claim.history is None
        assert (await _item(storage, record.id, "item-0")).errors == []

    async def test_history_of_a_release_comes_back_with_the_next_claim(
        self, storage: Storage
    ) -> None:
        record = await _create(storage, 1)
        first = await _claim(storage, record.id)
        written = _history("first ✓ {x}:*\n\"quoted\" 'single' \\ back").encode()
        await storage.finish(first.lease, Outcome.released(history=written))
        again = await _claim(storage, record.id)
        assert again.history == written
        item = await _item(storage, record.id, "item-0")
        assert item.errors == list(History.decode(written).errors)
        assert [e.message for e in item.errors] == ["first ✓ {x}:*\n\"quoted\" 'single' \\ back"]

    async def test_item_record_keeps_the_history_text_as_written(self, storage: Storage) -> None:
        record = await _create(storage, 1)
        assert (await storage.get_item(record.id, "item-0")).history is None
        first = await _claim(storage, record.id)
        written = _history('first ✓ 漢字 {x}:*\n"quoted" \\ back', released=2).encode()
        await storage.finish(first.lease, Outcome.released(history=written))
        got = await storage.get_item(record.id, "item-0")
        assert isinstance(got, ItemRecord)
        assert isinstance(got.history, str)
        assert got.history.encode("utf-8") == written.encode("utf-8")
        second = await _claim(storage, record.id)
        await storage.finish(second.lease, Outcome.succeeded("1"))  # no history: kept
        assert (await storage.get_item(record.id, "item-0")).history == written
        assert [r.history for r in await storage.list_items(record.id)] == [written]

    async def test_an_outcome_without_history_keeps_the_stored_one(self, storage: Storage) -> None:
        record = await _create(storage, 1)
        first = await _claim(storage, record.id)
        written = _history("kept").encode()
        await storage.finish(first.lease, Outcome.released(history=written))
        second = await _claim(storage, record.id)
        await storage.finish(second.lease, Outcome.released())
        assert (await _claim(storage, record.id)).history == written

    @pytest.mark.parametrize("state", [_S, _F, _C])
    async def test_history_is_kept_on_a_final_item(
        self, storage: Storage, state: ItemState
    ) -> None:
        record = await _create(storage, 1)
        claim = await _claim(storage, record.id)
        written = _history("one", "two").encode()
        error = ItemError(type="ValueError", message="two", attempt=1)
        outcome = {
            _S: Outcome.succeeded("1", history=written),
            _F: Outcome.failed(error, history=written),
            _C: Outcome.cancelled(history=written),
        }[state]
        assert (await storage.finish(claim.lease, outcome)).accepted
        item = await _item(storage, record.id, "item-0")
        assert item.state == state
        assert [e.message for e in item.errors] == ["one", "two"]
        listed = await _items(storage, record.id, states=[item.state])
        assert listed[0].errors == item.errors

    async def test_finish_then_claim_returns_the_next_items_history(self, storage: Storage) -> None:
        record = await _create(storage, 2)
        first = await _claim(storage, record.id)
        second = await _claim(storage, record.id)
        written = _history("retry me", released=1).encode()
        await storage.finish(first.lease, Outcome.released(history=written))
        done = await storage.finish(
            second.lease, Outcome.succeeded("1"), then_claim=_request(record.id)
        )
        assert done.claim is not None
        assert (done.claim.lease.key, done.claim.history) == ("item-0", written)

    async def test_a_refused_finish_writes_no_history(self, storage: Storage) -> None:
        record = await _create(storage, 1)
        old = await _claim(storage, record.id, lease_seconds=0)
        new = await _claim(storage, record.id, lease_seconds=LONG)
        refused = await storage.finish(old.lease, Outcome.released(history=_history("x").encode()))
        assert not refused.accepted
        await storage.finish(new.lease, Outcome.released())
        assert (await _claim(storage, record.id)).history is None
