"""The data models: state names, limits, item specs, and what survives JSON."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import BaseModel, ValidationError

from batchkit.codec import MAX_JSON_DEPTH
from batchkit.models import (
    ACTIVE_ITEM_STATES,
    LIMIT_CAPS,
    MAX_ERROR_TEXT_LENGTH,
    TERMINAL_BATCH_STATES,
    TERMINAL_ITEM_STATES,
    Batch,
    BatchState,
    BatchStatus,
    Item,
    ItemError,
    ItemSpec,
    ItemState,
    Limits,
)

NOW = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)


# -- states ---------------------------------------------------------------------------------


def test_item_state_values() -> None:
    assert [state.value for state in ItemState] == [
        "queued",
        "running",
        "succeeded",
        "failed",
        "cancelled",
    ]
    # A StrEnum: it hashes and compares as its text, and formats as it.
    assert {"failed": 1}[ItemState.FAILED] == 1
    assert f"{ItemState.RUNNING}" == "running"
    assert ItemState("cancelled") is ItemState.CANCELLED


def test_batch_state_values() -> None:
    assert [state.value for state in BatchState] == [
        "queued",
        "running",
        "completed",
        "completed_with_errors",
        "failed",
        "cancelled",
    ]
    assert str(BatchState.COMPLETED_WITH_ERRORS) == "completed_with_errors"


def test_item_state_sets() -> None:
    assert {ItemState.SUCCEEDED, ItemState.FAILED, ItemState.CANCELLED} == TERMINAL_ITEM_STATES
    assert {ItemState.QUEUED, ItemState.RUNNING} == ACTIVE_ITEM_STATES
    assert not TERMINAL_ITEM_STATES & ACTIVE_ITEM_STATES
    assert set(ItemState) == TERMINAL_ITEM_STATES | ACTIVE_ITEM_STATES


def test_terminal_batch_states() -> None:
    assert {
        BatchState.COMPLETED,
        BatchState.COMPLETED_WITH_ERRORS,
        BatchState.FAILED,
        BatchState.CANCELLED,
    } == TERMINAL_BATCH_STATES


def test_state_sets_cannot_be_changed() -> None:
    for states in (TERMINAL_ITEM_STATES, ACTIVE_ITEM_STATES, TERMINAL_BATCH_STATES):
        assert isinstance(states, frozenset)


# -- Limits ---------------------------------------------------------------------------------

LIMIT_FIELDS = sorted(Limits.model_fields)


def test_limits_defaults_are_positive_integers() -> None:
    limits = Limits()
    assert len(LIMIT_FIELDS) >= 10
    for name in LIMIT_FIELDS:
        value = getattr(limits, name)
        assert type(value) is int, name
        assert value > 0, name


def test_limits_defaults_fit_together() -> None:
    limits = Limits()
    # A result may be bigger than the payload that asked for it, never smaller by default.
    assert limits.max_result_bytes >= limits.max_payload_bytes
    assert limits.max_error_length <= limits.max_traceback_length


@pytest.mark.parametrize("name", LIMIT_FIELDS)
@pytest.mark.parametrize("bad", [0, -1])
def test_limits_reject_zero_and_negative(name: str, bad: int) -> None:
    with pytest.raises(ValidationError, match=name):
        Limits(**{name: bad})


@pytest.mark.parametrize("name", LIMIT_FIELDS)
def test_limits_accept_a_custom_value(name: str) -> None:
    limits = Limits(**{name: 7})
    assert getattr(limits, name) == 7
    # The others keep their defaults.
    for other in LIMIT_FIELDS:
        if other != name:
            assert getattr(limits, other) == getattr(Limits(), other)


def test_every_limit_has_a_hard_cap_above_its_default() -> None:
    assert set(LIMIT_CAPS) == set(LIMIT_FIELDS)
    for name, (cap, why) in LIMIT_CAPS.items():
        assert getattr(Limits(), name) <= cap, name
        assert why, name


# The error text fields share one budget: at its cap, one leaves the other a character.
_AT_CAP_OTHERS = {
    "max_error_length": {"max_traceback_length": 1},
    "max_traceback_length": {"max_error_length": 1},
}


@pytest.mark.parametrize("name", LIMIT_FIELDS)
def test_limits_accept_their_hard_cap_and_refuse_one_more(name: str) -> None:
    cap, why = LIMIT_CAPS[name]
    others = _AT_CAP_OTHERS.get(name, {})
    assert getattr(Limits(**{name: cap}, **others), name) == cap
    with pytest.raises(ValidationError) as info:
        Limits(**{name: cap + 1}, **others)
    assert isinstance(info.value, ValueError)
    assert f"{name} is at most {cap:,} ({why}); got {cap + 1:,}" in str(info.value)


def test_max_json_depth_past_the_cap_is_refused_not_a_recursion_error_later() -> None:
    assert LIMIT_CAPS["max_json_depth"][0] == MAX_JSON_DEPTH == 128
    with pytest.raises(ValueError, match="max_json_depth is at most 128"):
        Limits(max_json_depth=100_000)


def test_error_message_and_traceback_share_one_budget() -> None:
    assert Limits().max_error_length + Limits().max_traceback_length == MAX_ERROR_TEXT_LENGTH
    Limits(max_error_length=5_000, max_traceback_length=5_000)
    with pytest.raises(ValidationError, match="max_error_length \\+ max_traceback_length"):
        Limits(max_error_length=5_000)  # with the default traceback: 13,000


def test_limits_are_frozen_and_closed() -> None:
    limits = Limits()
    with pytest.raises(ValidationError):
        limits.max_items = 5  # type: ignore[misc]
    with pytest.raises(ValidationError, match="max_itemz"):
        Limits(max_itemz=5)  # type: ignore[call-arg]


# -- ItemSpec -------------------------------------------------------------------------------


def test_item_spec_key_and_payload() -> None:
    spec = ItemSpec(key="sku-1", payload={"color": "red"})
    assert spec.key == "sku-1"
    assert spec.payload == {"color": "red"}
    assert ItemSpec(key="sku-2").payload is None


def test_item_spec_from_a_mapping() -> None:
    spec = ItemSpec.model_validate({"key": "a", "payload": [1, 2]})
    assert spec == ItemSpec(key="a", payload=[1, 2])


@pytest.mark.parametrize("key", [1, 1.5, None, b"bytes", ["a"]])
def test_item_spec_key_must_be_text(key: Any) -> None:
    with pytest.raises(ValidationError, match="key"):
        ItemSpec(key=key)


def test_item_spec_requires_a_key() -> None:
    with pytest.raises(ValidationError, match="key"):
        ItemSpec(payload=1)  # type: ignore[call-arg]


def test_item_spec_forbids_unknown_fields() -> None:
    with pytest.raises(ValidationError, match="paylod"):
        ItemSpec(key="a", paylod=1)  # type: ignore[call-arg]


# -- frozen models --------------------------------------------------------------------------


def sample_models() -> list[BaseModel]:
    error = ItemError(type="ValueError", message="bad input", traceback="...", attempt=1)
    return [
        ItemSpec(key="a"),
        error,
        Item(
            batch_id="b",
            key="a",
            position=0,
            state=ItemState.FAILED,
            attempt=1,
            error=error,
            created_at=NOW,
            updated_at=NOW,
        ),
        Batch(id="b", total=1, created_at=NOW),
        make_status(),
    ]


def make_status(**changes: Any) -> BatchStatus:
    fields: dict[str, Any] = {
        "batch_id": "b",
        "state": BatchState.COMPLETED_WITH_ERRORS,
        "total": 3,
        "counts": {
            ItemState.QUEUED: 0,
            ItemState.RUNNING: 0,
            ItemState.SUCCEEDED: 2,
            ItemState.FAILED: 1,
            ItemState.CANCELLED: 0,
        },
        "progress": 1.0,
        "is_terminal": True,
        "parent_id": "a",
        "metadata": {"owner": "ada", "nested": {"list": [1, 2.5, None, True, "é"]}},
        "cancel_requested": False,
        "created_at": NOW,
        "updated_at": NOW,
        "started_at": NOW,
        "finished_at": NOW,
    }
    fields.update(changes)
    return BatchStatus(**fields)


@pytest.mark.parametrize("model", sample_models(), ids=lambda m: type(m).__name__)
def test_models_are_frozen(model: BaseModel) -> None:
    name = next(iter(type(model).model_fields))
    with pytest.raises(ValidationError):
        setattr(model, name, getattr(model, name))


@pytest.mark.parametrize("model", sample_models(), ids=lambda m: type(m).__name__)
def test_models_forbid_unknown_fields(model: BaseModel) -> None:
    data = model.model_dump()
    data["surprise"] = 1
    with pytest.raises(ValidationError, match="surprise"):
        type(model).model_validate(data)


@pytest.mark.parametrize("model", sample_models(), ids=lambda m: type(m).__name__)
def test_models_survive_json(model: BaseModel) -> None:
    again = type(model).model_validate_json(model.model_dump_json())
    assert again == model


def test_batch_status_json_round_trip_keeps_enums() -> None:
    status = make_status()
    text = status.model_dump_json()
    assert '"state":"completed_with_errors"' in text
    assert '"succeeded":2' in text
    again = BatchStatus.model_validate_json(text)
    assert again == status
    assert again.state is BatchState.COMPLETED_WITH_ERRORS
    assert all(type(key) is ItemState for key in again.counts)
    assert again.counts[ItemState.FAILED] == 1
    assert again.created_at == NOW


@given(
    counts=st.fixed_dictionaries({state: st.integers(0, 10**9) for state in ItemState}),
    state=st.sampled_from(list(BatchState)),
    progress=st.floats(0.0, 1.0),
    metadata=st.dictionaries(
        st.text(max_size=5), st.none() | st.booleans() | st.integers() | st.text(), max_size=4
    ),
    cancel_requested=st.booleans(),
)
def test_batch_status_json_round_trip(
    counts: dict[ItemState, int],
    state: BatchState,
    progress: float,
    metadata: dict[str, Any],
    cancel_requested: bool,
) -> None:
    status = make_status(
        counts=counts,
        total=sum(counts.values()),
        state=state,
        progress=progress,
        metadata=metadata,
        cancel_requested=cancel_requested,
        is_terminal=state in TERMINAL_BATCH_STATES,
        started_at=None,
        finished_at=None,
    )
    assert BatchStatus.model_validate_json(status.model_dump_json()) == status


def test_batch_status_rejects_an_unknown_state() -> None:
    with pytest.raises(ValidationError, match="state"):
        make_status(state="done")
    with pytest.raises(ValidationError, match="counts"):
        make_status(counts={"done": 3})
