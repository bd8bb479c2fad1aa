"""The aggregator: a batch's state and progress derived from its items' counts."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from batchkit.history import History
from batchkit.models import (
    ACTIVE_ITEM_STATES,
    TERMINAL_BATCH_STATES,
    TERMINAL_ITEM_STATES,
    BatchState,
    BatchStatus,
    Item,
    ItemError,
    ItemState,
)
from batchkit.protocols import BatchRecord, ItemRecord
from batchkit.status import (
    batch_from_record,
    derive_progress,
    derive_state,
    empty_counts,
    item_from_record,
    recount,
    status_from_record,
)

Q, R, S, F, C = (
    ItemState.QUEUED,
    ItemState.RUNNING,
    ItemState.SUCCEEDED,
    ItemState.FAILED,
    ItemState.CANCELLED,
)

# Some states may be missing altogether: a store only reports the ones it has.
counts_st = st.dictionaries(st.sampled_from(list(ItemState)), st.integers(0, 1_000))
full_counts_st = st.fixed_dictionaries({state: st.integers(0, 1_000) for state in ItemState})
terminal_counts_st = st.fixed_dictionaries(
    {
        Q: st.just(0),
        R: st.just(0),
        S: st.integers(0, 50),
        F: st.integers(0, 50),
        C: st.integers(0, 50),
    }
)


def table(counts: dict[ItemState, int], *, started: bool, cancel_requested: bool) -> BatchState:
    """The table of the design, row by row, read off the counts."""
    n = {state: counts.get(state, 0) for state in ItemState}
    if n[Q] + n[R] > 0:
        if not started and not cancel_requested:
            return BatchState.QUEUED
        return BatchState.RUNNING
    if n[C] > 0:
        return BatchState.CANCELLED
    if n[F] == 0:
        return BatchState.COMPLETED
    if n[S] == 0:
        return BatchState.FAILED
    return BatchState.COMPLETED_WITH_ERRORS


def from_list(states: list[ItemState], *, started: bool, cancel_requested: bool) -> BatchState:
    """The same table, recomputed straight from the items, without counting."""
    if any(state in (Q, R) for state in states):
        return BatchState.RUNNING if started or cancel_requested else BatchState.QUEUED
    if any(state is C for state in states):
        return BatchState.CANCELLED
    if not any(state is F for state in states):
        return BatchState.COMPLETED
    if all(state is F for state in states):
        return BatchState.FAILED
    return BatchState.COMPLETED_WITH_ERRORS


# -- derive_state ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("counts", "started", "cancel_requested", "expected"),
    [
        pytest.param({Q: 3}, False, False, BatchState.QUEUED, id="fresh-batch"),
        pytest.param({Q: 2, S: 1}, True, False, BatchState.RUNNING, id="one-done"),
        pytest.param({R: 1}, True, False, BatchState.RUNNING, id="one-running"),
        pytest.param({Q: 3}, True, False, BatchState.RUNNING, id="released-back"),
        pytest.param({Q: 1, C: 2}, False, True, BatchState.RUNNING, id="cancel-pending"),
        pytest.param({S: 2, C: 1}, True, True, BatchState.CANCELLED, id="cancelled"),
        pytest.param({F: 2, C: 1}, True, True, BatchState.CANCELLED, id="cancel-beats-fail"),
        pytest.param({S: 3}, True, False, BatchState.COMPLETED, id="all-ok"),
        pytest.param({S: 3}, True, True, BatchState.COMPLETED, id="cancel-too-late"),
        pytest.param({F: 3}, True, False, BatchState.FAILED, id="all-failed"),
        pytest.param({S: 1, F: 2}, True, False, BatchState.COMPLETED_WITH_ERRORS, id="mixed"),
    ],
)
def test_derive_state_rows(
    counts: dict[ItemState, int], started: bool, cancel_requested: bool, expected: BatchState
) -> None:
    assert derive_state(counts, started=started, cancel_requested=cancel_requested) is expected


@given(counts=counts_st, started=st.booleans(), cancel_requested=st.booleans())
def test_derive_state_follows_the_table(
    counts: dict[ItemState, int], started: bool, cancel_requested: bool
) -> None:
    state = derive_state(counts, started=started, cancel_requested=cancel_requested)
    assert state is table(counts, started=started, cancel_requested=cancel_requested)
    # Same input, same answer; the input is not touched.
    before = dict(counts)
    assert derive_state(counts, started=started, cancel_requested=cancel_requested) is state
    assert counts == before


@given(counts=counts_st, started=st.booleans(), cancel_requested=st.booleans())
def test_queued_only_before_anything_started(
    counts: dict[ItemState, int], started: bool, cancel_requested: bool
) -> None:
    state = derive_state(counts, started=started, cancel_requested=cancel_requested)
    active = counts.get(Q, 0) + counts.get(R, 0)
    assert (state is BatchState.QUEUED) == (active > 0 and not started and not cancel_requested)
    assert (state is BatchState.RUNNING) == (active > 0 and (started or cancel_requested))


@given(counts=counts_st, started=st.booleans(), cancel_requested=st.booleans())
def test_terminal_iff_no_active_item(
    counts: dict[ItemState, int], started: bool, cancel_requested: bool
) -> None:
    state = derive_state(counts, started=started, cancel_requested=cancel_requested)
    no_active = all(counts.get(s, 0) == 0 for s in ACTIVE_ITEM_STATES)
    assert (state in TERMINAL_BATCH_STATES) == no_active


@given(counts=terminal_counts_st, cancel_requested=st.booleans())
def test_terminal_state_ignores_flags(counts: dict[ItemState, int], cancel_requested: bool) -> None:
    # Once every item is final, how the batch got there does not matter.
    states = {
        derive_state(counts, started=started, cancel_requested=cancel_requested)
        for started in (False, True)
    }
    assert len(states) == 1


@given(
    states=st.lists(st.sampled_from(list(ItemState)), min_size=1, max_size=60),
    started=st.booleans(),
    cancel_requested=st.booleans(),
)
def test_state_from_recount_matches_the_items(
    states: list[ItemState], started: bool, cancel_requested: bool
) -> None:
    counts = recount(states)
    assert derive_state(counts, started=started, cancel_requested=cancel_requested) is from_list(
        states, started=started, cancel_requested=cancel_requested
    )


# -- recount / empty_counts -----------------------------------------------------------------


def test_empty_counts_has_every_state_at_zero() -> None:
    counts = empty_counts()
    assert counts == dict.fromkeys(ItemState, 0)
    # A fresh dict each time: callers mutate it.
    counts[Q] = 5
    assert empty_counts()[Q] == 0


@given(states=st.lists(st.sampled_from(list(ItemState)), max_size=60))
def test_recount_counts_each_state(states: list[ItemState]) -> None:
    counts = recount(states)
    assert set(counts) == set(ItemState)
    assert sum(counts.values()) == len(states)
    for state in ItemState:
        assert counts[state] == states.count(state)


def test_recount_accepts_any_iterable() -> None:
    assert recount(iter([S, S, F]))[S] == 2


# -- derive_progress ------------------------------------------------------------------------


@given(
    counts=counts_st,
    extra=st.integers(0, 100),
    running_progress=st.floats(allow_nan=True, allow_infinity=True),
)
def test_progress_is_a_fraction(
    counts: dict[ItemState, int], extra: int, running_progress: float
) -> None:
    total = sum(counts.values()) + extra
    progress = derive_progress(counts, total, running_progress)
    assert 0.0 <= progress <= 1.0


@given(counts=terminal_counts_st)
def test_progress_is_one_when_every_item_is_final(counts: dict[ItemState, int]) -> None:
    assert derive_progress(counts, sum(counts.values())) == 1.0


@given(
    counts=full_counts_st.filter(lambda c: c[Q] > 0),
    finish_as=st.sampled_from(sorted(TERMINAL_ITEM_STATES)),
    running_progress=st.floats(0.0, 1.0),
)
def test_progress_grows_when_a_queued_item_finishes(
    counts: dict[ItemState, int], finish_as: ItemState, running_progress: float
) -> None:
    total = sum(counts.values())
    before = derive_progress(counts, total, running_progress * counts[R])
    after_counts = {**counts, Q: counts[Q] - 1, finish_as: counts[finish_as] + 1}
    after = derive_progress(after_counts, total, running_progress * counts[R])
    assert after > before


@given(
    counts=full_counts_st.filter(lambda c: c[R] > 0),
    finish_as=st.sampled_from(sorted(TERMINAL_ITEM_STATES)),
    others=st.floats(0.0, 1.0),
    own=st.floats(0.0, 1.0),
)
def test_progress_never_drops_when_a_running_item_finishes(
    counts: dict[ItemState, int], finish_as: ItemState, others: float, own: float
) -> None:
    total = sum(counts.values())
    # The finishing item had reported `own`; the other running items `others` each.
    rest = others * (counts[R] - 1)
    before = derive_progress(counts, total, rest + own)
    after_counts = {**counts, R: counts[R] - 1, finish_as: counts[finish_as] + 1}
    after = derive_progress(after_counts, total, rest)
    assert after >= before - 1e-12


def test_finished_items_count_whole_and_running_ones_by_their_progress() -> None:
    assert derive_progress({S: 1, F: 1, C: 1, Q: 5}, 8) == pytest.approx(3 / 8)
    assert derive_progress({S: 1, R: 1, Q: 2}, 4, 0.5) == pytest.approx(1.5 / 4)
    assert derive_progress({Q: 4}, 4) == 0.0


def test_progress_of_an_empty_batch_is_complete() -> None:
    assert derive_progress(empty_counts(), 0) == 1.0


# -- status_from_record / batch_from_record -------------------------------------------------

T0 = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)


def make_record(**changes: object) -> BatchRecord:
    fields: dict[str, object] = {
        "id": "0190a0b0-0000-7000-8000-000000000001",
        "total": 10,
        "counts": {Q: 3, R: 2, S: 3, F: 1, C: 1},
        "created_at": T0,
        "updated_at": T0 + timedelta(seconds=30),
        "metadata": {"owner": "ada", "tags": ["a", "b"]},
        "parent_id": "0190a0b0-0000-7000-8000-000000000000",
        "idempotency_key": "request-42",
        "running_progress": 1.0,
        "started_at": T0 + timedelta(seconds=1),
        "finished_at": None,
        "cancel_requested_at": None,
    }
    fields.update(changes)
    return BatchRecord(**fields)  # type: ignore[arg-type]


def test_status_from_record_maps_every_field() -> None:
    record = make_record()
    status = status_from_record(record)
    assert isinstance(status, BatchStatus)
    assert status.batch_id == record.id
    assert status.state is BatchState.RUNNING
    assert status.total == 10
    assert status.counts == {Q: 3, R: 2, S: 3, F: 1, C: 1}
    assert status.progress == pytest.approx((3 + 1 + 1 + 1.0) / 10)
    assert status.is_terminal is False
    assert status.parent_id == record.parent_id
    assert status.metadata == {"owner": "ada", "tags": ["a", "b"]}
    assert status.cancel_requested is False
    assert status.created_at == T0
    assert status.updated_at == T0 + timedelta(seconds=30)
    assert status.started_at == T0 + timedelta(seconds=1)
    assert status.finished_at is None


def test_status_from_record_of_a_finished_cancelled_batch() -> None:
    done = T0 + timedelta(minutes=2)
    record = make_record(
        total=4,
        counts={S: 2, C: 2},
        running_progress=0.0,
        cancel_requested_at=T0 + timedelta(minutes=1),
        finished_at=done,
    )
    status = status_from_record(record)
    assert status.state is BatchState.CANCELLED
    assert status.is_terminal is True
    assert status.cancel_requested is True
    assert status.progress == 1.0
    assert status.finished_at == done


def test_status_from_record_of_a_fresh_batch() -> None:
    record = make_record(counts={Q: 10}, running_progress=0.0, started_at=None, parent_id=None)
    status = status_from_record(record)
    assert status.state is BatchState.QUEUED
    assert status.progress == 0.0
    assert status.parent_id is None
    assert status.started_at is None


@given(counts=counts_st)
def test_status_counts_always_list_every_state(counts: dict[ItemState, int]) -> None:
    total = sum(counts.values())
    status = status_from_record(
        make_record(counts=counts, total=total, running_progress=0.0, started_at=None)
    )
    assert set(status.counts) == set(ItemState)
    assert all(isinstance(key, ItemState) for key in status.counts)
    assert sum(status.counts.values()) == total
    for state in ItemState:
        assert status.counts[state] == counts.get(state, 0)
    assert status.state is derive_state(counts, started=False, cancel_requested=False)
    assert status.is_terminal == (status.state in TERMINAL_BATCH_STATES)


def test_status_counts_keyed_by_plain_strings_are_read_as_states() -> None:
    # A store may hand back its counters keyed by the state's text.
    record = make_record(counts={"succeeded": 7, "failed": 3}, total=10, running_progress=0.0)
    status = status_from_record(record)
    assert status.counts == {Q: 0, R: 0, S: 7, F: 3, C: 0}
    assert all(type(key) is ItemState for key in status.counts)
    assert status.state is BatchState.COMPLETED_WITH_ERRORS


def test_status_does_not_share_the_record_counts() -> None:
    counts = {Q: 1}
    status = status_from_record(make_record(counts=counts, total=1))
    counts[Q] = 99
    assert status.counts[Q] == 1


def test_batch_from_record_maps_every_field() -> None:
    record = make_record()
    batch = batch_from_record(record)
    assert batch.id == record.id
    assert batch.parent_id == record.parent_id
    assert batch.metadata == record.metadata
    assert batch.idempotency_key == "request-42"
    assert batch.total == 10
    assert batch.created_at == T0


# -- item_from_record ---------------------------------------------------------------------


def make_item_record(**changes: object) -> ItemRecord:
    fields: dict[str, object] = {
        "batch_id": "0190a0b0-0000-7000-8000-000000000001",
        "key": "k",
        "position": 3,
        "payload": '{"name":"ünï ✓","nested":[1,2.5,null,{"a":"b"}]}',
        "state": S,
        "created_at": T0,
        "updated_at": T0 + timedelta(seconds=30),
        "progress": 1.0,
        "message": "done",
        "attempt": 2,
        "error": None,
        "history": None,
        "result": '{"ok":[1,true]}',
        "started_at": T0 + timedelta(seconds=10),
        "lease_expires_at": None,
        "finished_at": T0 + timedelta(seconds=30),
    }
    fields.update(changes)
    return ItemRecord(**fields)  # type: ignore[arg-type]


def test_item_from_record_maps_every_field() -> None:
    record = make_item_record()
    item = item_from_record(record)
    assert isinstance(item, Item)
    assert (item.batch_id, item.key, item.position) == (record.batch_id, "k", 3)
    assert item.payload == {"name": "ünï ✓", "nested": [1, 2.5, None, {"a": "b"}]}
    assert (item.state, item.progress, item.message, item.attempt) == (S, 1.0, "done", 2)
    assert item.result == {"ok": [1, True]}
    assert item.error is None
    assert item.errors == []
    assert (item.created_at, item.updated_at) == (T0, T0 + timedelta(seconds=30))
    assert item.started_at == T0 + timedelta(seconds=10)
    assert item.lease_expires_at is None
    assert item.finished_at == T0 + timedelta(seconds=30)


def test_item_from_record_of_a_new_item_leaves_absent_fields_empty() -> None:
    record = make_item_record(
        payload="null",
        state=Q,
        progress=0.0,
        message=None,
        attempt=0,
        result=None,
        started_at=None,
        finished_at=None,
    )
    item = item_from_record(record)
    assert item.payload is None
    assert item.result is item.error is item.message is None
    assert item.errors == []
    assert item.started_at is item.lease_expires_at is item.finished_at is None


def test_item_from_record_keeps_a_running_items_lease_deadline() -> None:
    deadline = T0 + timedelta(minutes=5)
    record = make_item_record(state=R, result=None, finished_at=None, lease_expires_at=deadline)
    assert item_from_record(record).lease_expires_at == deadline


def test_item_from_record_reads_the_error_and_the_errors_of_the_history() -> None:
    first = ItemError(type="ValueError", message="first ✓", traceback="tb", attempt=1)
    last = ItemError(type="KeyError", message="'x'", attempt=2)
    history = History().with_failure(first, keep=10).with_failure(last, keep=10).encode()
    record = make_item_record(state=F, result=None, error=last.model_dump_json(), history=history)
    item = item_from_record(record)
    assert item.error == last
    assert item.errors == [first, last]


def test_item_from_record_of_a_history_without_failures_has_no_errors() -> None:
    record = make_item_record(history=History().with_release().encode())
    assert item_from_record(record).errors == []


def test_item_from_record_reads_an_unreadable_history_as_no_errors(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level("WARNING", logger="batchkit.runner"):
        item = item_from_record(make_item_record(history="not a history"))
    assert item.errors == []
    assert "attempt history is unreadable" in caplog.text


@pytest.mark.parametrize("error", ["not json", '{"message":"no type"}', "[]"])
def test_item_from_record_refuses_an_error_that_is_not_an_item_error(error: str) -> None:
    # As the adapters did before they returned records: the error is validated, not guessed.
    with pytest.raises(ValidationError):
        item_from_record(make_item_record(state=F, result=None, error=error))
