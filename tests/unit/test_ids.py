"""Identifiers: time-ordered UUIDv7 batch ids and random lease tokens."""

from __future__ import annotations

import itertools
import threading
import time
import uuid
from typing import Any

import pytest

from batchkit.ids import is_batch_id, new_batch_id, new_token


def test_batch_id_is_a_uuid7() -> None:
    batch_id = new_batch_id()
    parsed = uuid.UUID(batch_id)
    assert parsed.version == 7
    assert parsed.variant == uuid.RFC_4122
    # The canonical text form: lowercase, hyphenated, as stores and URLs will show it.
    assert str(parsed) == batch_id
    assert is_batch_id(batch_id)


def test_batch_id_carries_the_time_in_milliseconds() -> None:
    before = time.time_ns() // 1_000_000
    batch_id = new_batch_id()
    after = time.time_ns() // 1_000_000
    stamp = uuid.UUID(batch_id).int >> 80
    # A burst of ids may overflow the 12-bit counter and nudge the clock a little forward.
    assert before <= stamp <= after + 1_000


def test_batch_ids_strictly_increase_and_are_unique() -> None:
    ids = [new_batch_id() for _ in range(10_000)]
    assert all(a < b for a, b in itertools.pairwise(ids))
    assert len(set(ids)) == len(ids)
    # Text order is UUID order: a store can sort either.
    assert [uuid.UUID(i).int for i in ids] == sorted(uuid.UUID(i).int for i in ids)
    assert all(uuid.UUID(i).version == 7 for i in ids)


def test_batch_ids_are_unique_across_threads() -> None:
    results: list[list[str]] = [[] for _ in range(4)]

    def make(out: list[str]) -> None:
        out.extend(new_batch_id() for _ in range(2_000))

    threads = [threading.Thread(target=make, args=(out,)) for out in results]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    every = [batch_id for out in results for batch_id in out]
    assert len(set(every)) == len(every)
    for out in results:
        assert out == sorted(out)


@pytest.mark.parametrize(
    "value",
    [
        pytest.param(str(uuid.uuid4()), id="uuid4"),
        pytest.param(str(uuid.uuid1()), id="uuid1"),
        pytest.param("", id="empty"),
        pytest.param("not-a-uuid", id="garbage"),
        pytest.param("0190a0b0-0000-7000-0000-000000000001", id="wrong-variant"),
        pytest.param("0190a0b0000070008000000000000001", id="no-hyphens"),
        pytest.param("{0190a0b0-0000-7000-8000-000000000001}", id="braces"),
        pytest.param("0190a0b0-0000-7000-8000-000000000001\n", id="trailing-newline"),
        pytest.param(" 0190a0b0-0000-7000-8000-000000000001", id="leading-space"),
        pytest.param(None, id="none"),
        pytest.param(7, id="int"),
        pytest.param(b"0190a0b0-0000-7000-8000-000000000001", id="bytes"),
        pytest.param(uuid.UUID("0190a0b0-0000-7000-8000-000000000001"), id="uuid-object"),
    ],
)
def test_is_batch_id_rejects(value: Any) -> None:
    assert is_batch_id(value) is False


def test_is_batch_id_rejects_uppercase() -> None:
    batch_id = new_batch_id()
    assert is_batch_id(batch_id) is True
    assert is_batch_id(batch_id.upper()) is False


def test_is_batch_id_accepts_a_hand_written_uuid7() -> None:
    assert is_batch_id("0190a0b0-0000-7000-8000-000000000001") is True
    assert is_batch_id("0190a0b0-0000-7fff-bfff-ffffffffffff") is True


def test_tokens_are_long_random_hex() -> None:
    tokens = [new_token() for _ in range(1_000)]
    assert len(set(tokens)) == len(tokens)
    for token in tokens:
        assert len(token) >= 32
        int(token, 16)
        assert token == token.lower()
