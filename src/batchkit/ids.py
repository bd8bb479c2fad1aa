"""Identifiers batchkit generates: time-ordered batch ids and random lease tokens."""

from __future__ import annotations

import os
import re
import secrets
import threading
import time
import uuid

__all__ = ["is_batch_id", "new_batch_id", "new_token"]

_BATCH_ID = re.compile(r"\A[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}\Z")
_lock = threading.Lock()
_last = (0, 0)  # (milliseconds, counter) of the last id made by this process


def new_batch_id() -> str:
    """A new UUIDv7 (RFC 9562) as text: ids made later sort later.

    Within one process ids are strictly increasing even in the same millisecond (a
    12-bit counter, then the clock is nudged forward); across processes they are ordered
    to the millisecond.
    """
    global _last
    with _lock:
        ms = time.time_ns() // 1_000_000
        last_ms, counter = _last
        if ms <= last_ms:
            ms, counter = last_ms, counter + 1
            if counter > 0xFFF:
                ms, counter = last_ms + 1, 0
        else:
            counter = int.from_bytes(os.urandom(2)) & 0x7FF  # leave headroom to count up
        _last = (ms, counter)
    rand_b = int.from_bytes(os.urandom(8)) & ((1 << 62) - 1)
    value = (ms << 80) | (0x7 << 76) | (counter << 64) | (0b10 << 62) | rand_b
    return str(uuid.UUID(int=value))


def is_batch_id(value: object) -> bool:
    """Whether ``value`` is a batch id as `new_batch_id` makes them."""
    return isinstance(value, str) and _BATCH_ID.match(value) is not None


def new_token() -> str:
    """A random, unguessable lease token."""
    return secrets.token_hex(16)
