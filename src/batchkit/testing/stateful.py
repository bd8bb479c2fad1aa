"""A hypothesis state machine that drives a Storage and a plain model side by side.

Each rule applies one operation to the storage (through an anyio blocking portal, so
that any adapter and either backend can be driven from hypothesis's synchronous loop)
and to a small Python model of what the contract says must happen. After every step
the storage is read back in full and compared with the model.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import anyio.from_thread
import hypothesis
import hypothesis.strategies as st
from hypothesis import HealthCheck
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from ..codec import dumps, loads
from ..history import History, errors_of
from ..ids import new_batch_id
from ..models import TERMINAL_ITEM_STATES, ItemError, ItemState
from ..protocols import ClaimRequest, GroupCommitter, NewBatch, NewItem, Outcome
from ..status import derive_state, item_from_record, recount, status_from_record
from ._shared import LONG, all_items, counts_of

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from anyio.from_thread import BlockingPortal

    from ..models import Item
    from ..protocols import BatchRecord, Claim, Lease, Storage

__all__ = ["StorageStateMachine", "run_state_machine"]

_Q, _R = ItemState.QUEUED, ItemState.RUNNING
_S, _F, _C = ItemState.SUCCEEDED, ItemState.FAILED, ItemState.CANCELLED

_TEXT = st.characters(codec="utf-8")  # no lone surrogates: they are not JSON batchkit accepts
_KEYS = st.one_of(
    st.sampled_from(["a", "{b}", "c:d", "*", "two words", "line\nbreak", "ü✓"]),
    st.text(st.characters(codec="utf-8", exclude_characters="\x00"), min_size=1, max_size=6),
)
_JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**53), 2**53) | st.text(_TEXT, max_size=8),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(_TEXT, max_size=4), inner, max_size=3)
    ),
    max_leaves=6,
)
_LEASES = st.sampled_from([0.0, LONG])  # expired at once, or held for the whole run


@dataclass
class _ModelItem:
    key: str
    payload: Any
    state: ItemState = _Q
    attempt: int = 0
    token: str | None = None
    #: Running: its lease's deadline has passed, so a claim may take it over.
    expired: bool = False
    #: Queued: released with a retry time an hour away.
    waiting: bool = False
    progress: float = 0.0
    message: str | None = None
    result: Any = None
    error: ItemError | None = None
    #: Whether the contract pins ``error`` (after a failure, a success, a release with one).
    error_known: bool = True
    #: The history text the last accepted outcome wrote (a claim hands it back).
    history: str | None = None


@dataclass
class _ModelBatch:
    id: str
    metadata: dict[str, Any]
    parent_id: str | None
    items: list[_ModelItem]
    started: bool = False
    cancel_requested: bool = False
    cancel_reason: str | None = None
    max_failures: int | None = None

    def counts(self) -> dict[ItemState, int]:
        return recount(item.state for item in self.items)

    @property
    def finished(self) -> bool:
        return all(item.state in TERMINAL_ITEM_STATES for item in self.items)

    def item(self, key: str) -> _ModelItem:
        return next(item for item in self.items if item.key == key)


async def _open(factory: Callable[[], Storage]) -> Storage:
    return await factory().__aenter__()


async def _read_all(
    storage: Storage, batch_ids: Sequence[str]
) -> tuple[list[str], dict[str, tuple[BatchRecord, list[Item]]]]:
    listed = [record.id for record in await storage.list_batches(limit=10_000)]
    found = {b: (await storage.get_batch(b), await all_items(storage, b)) for b in batch_ids}
    return listed, found


async def _read_one(storage: Storage, batch_id: str, key: str) -> tuple[BatchRecord, Item]:
    return await storage.get_batch(batch_id), item_from_record(
        await storage.get_item(batch_id, key)
    )


async def _states(storage: Storage, slots: Sequence[tuple[str, str]]) -> list[ItemState]:
    return [(await storage.get_item(batch_id, key)).state for batch_id, key in slots]


class StorageStateMachine(RuleBasedStateMachine):
    """Random operations on one storage, checked against a model after every step.

    Build it with `run_state_machine`, which gives each example a fresh storage. Time
    never passes: leases are taken for an hour or expire at once (``lease_seconds=0``),
    and a released item waits either not at all or an hour.

    Args:
        portal: the portal whose event loop runs the storage.
        storage_factory: returns a new, empty storage that has not been entered.
    """

    def __init__(self, portal: BlockingPortal, storage_factory: Callable[[], Storage]) -> None:
        super().__init__()
        self._portal = portal
        self.storage = portal.call(_open, storage_factory)
        self.batches: dict[str, _ModelBatch] = {}
        self.leases: list[Lease] = []
        self.idempotency: dict[str, str] = {}
        self.terminal: dict[tuple[str, str], dict[str, Any]] = {}
        self.attempts: dict[tuple[str, str], int] = {}
        self.cancels = 0

    def teardown(self) -> None:
        """Close this example's storage."""
        self._portal.call(self.storage.__aexit__, None, None, None)

    # -- the model -----------------------------------------------------------------------

    def _current(self) -> list[Lease]:
        return [lease for lease in self.leases if self._is_current(lease)]

    def _stale(self) -> list[Lease]:
        return [lease for lease in self.leases if not self._is_current(lease)]

    def _is_current(self, lease: Lease) -> bool:
        item = self.batches[lease.batch_id].item(lease.key)
        return item.state is _R and item.token == lease.token

    def _retryable(self) -> list[str]:
        return [
            b.id
            for b in self.batches.values()
            if b.finished and any(i.state is _F for i in b.items)
        ]

    def _predict(self, request: ClaimRequest) -> tuple[str, str] | None:
        for batch_id in sorted(self.batches):  # ids sort by creation: oldest first
            if request.batch_ids is not None and batch_id not in request.batch_ids:
                continue
            batch = self.batches[batch_id]
            if batch.cancel_requested or batch.finished:
                continue
            wanted = request.metadata or {}
            if any(batch.metadata.get(k) != v for k, v in wanted.items()):
                continue
            for item in batch.items:
                if (item.state is _Q and not item.waiting) or (item.state is _R and item.expired):
                    return batch_id, item.key
        return None

    def _check_claim(self, request: ClaimRequest, claim: Claim | None) -> None:
        expected = self._predict(request)
        assert (None if claim is None else (claim.lease.batch_id, claim.lease.key)) == expected
        if claim is not None:
            batch = self.batches[claim.lease.batch_id]
            item = batch.item(claim.lease.key)
            item.attempt += 1
            assert claim.lease.attempt == item.attempt
            assert (claim.position, claim.payload) == (batch.items.index(item), item.payload)
            assert claim.history == item.history
            item.state, item.token = _R, claim.lease.token
            item.expired, item.waiting = request.lease_seconds <= 0, False
            item.progress, item.message, item.error_known = 0.0, None, False
            batch.started = True
            self.leases.append(claim.lease)
        self._absorb_reaped()

    def _absorb_reaped(self) -> None:
        # A claim that meets an expired item of a cancel-requested batch cancels it; which
        # batches a claim looks at is the adapter's business, so read what happened.
        suspects = [
            (batch, item)
            for batch in self.batches.values()
            if batch.cancel_requested
            for item in batch.items
            if item.state is _R and item.expired
        ]
        if not suspects:
            return
        slots = [(batch.id, item.key) for batch, item in suspects]
        for (_, item), state in zip(
            suspects, self._portal.call(_states, self.storage, slots), strict=True
        ):
            assert state in (_R, _C)
            if state is _C:
                item.state, item.token, item.error_known = _C, None, False

    def _end(self, batch: _ModelBatch, item: _ModelItem, outcome: Outcome) -> None:
        item.token = None
        state = outcome.state
        if state is _Q and batch.cancel_requested:
            state = _C
        if outcome.history is not None:
            item.history = outcome.history
        if outcome.error is not None:
            item.error, item.error_known = outcome.error, True
        else:
            item.error_known = state is _S
        if state is _S:
            item.result = None if outcome.result is None else loads(outcome.result)
            item.progress, item.error = 1.0, None
        elif state is _Q:
            item.progress, item.message, item.waiting = 0.0, None, outcome.delay > 0
        item.state = state

    # -- rules ---------------------------------------------------------------------------

    @initialize(data=st.data(), group=st.sampled_from(["a", "b"]))
    def first_batch(self, data: st.DataObject, group: str) -> None:
        """Every run starts with a batch, so that the other rules have work to do."""
        self._create(*_draw_items(data), {"group": group}, None, None, None)

    @rule(
        data=st.data(),
        group=st.sampled_from(["a", "b"]),
        idempotency=st.sampled_from(["none", "none", "fresh", "reused"]),
        max_failures=st.none() | st.integers(0, 3),
    )
    def create_batch(
        self, data: st.DataObject, group: str, idempotency: str, max_failures: int | None
    ) -> None:
        """Submit a batch of 1 to 6 items, maybe with a fresh or an already used key."""
        keys, payloads = _draw_items(data)
        key = None
        if idempotency == "fresh" or (idempotency == "reused" and not self.idempotency):
            key = f"submission-{len(self.idempotency)}"
        elif idempotency == "reused":
            key = data.draw(st.sampled_from(sorted(self.idempotency)), label="reused key")
        self._create(keys, payloads, {"group": group}, None, key, max_failures)

    @precondition(lambda self: bool(self._retryable()))
    @rule(data=st.data())
    def retry_failed(self, data: st.DataObject) -> None:
        """Submit the failed items of a finished batch as a new batch that names it."""
        parent = self.batches[data.draw(st.sampled_from(self._retryable()), label="parent")]
        failed = [item for item in parent.items if item.state is _F]
        keys, payloads = [i.key for i in failed], [i.payload for i in failed]
        self._create(keys, payloads, parent.metadata, parent.id, None, None)

    def _create(
        self,
        keys: list[str],
        payloads: list[Any],
        metadata: dict[str, Any],
        parent_id: str | None,
        idempotency_key: str | None,
        max_failures: int | None,
    ) -> None:
        new = NewBatch(
            id=new_batch_id(),
            items=[NewItem(k, dumps(p)) for k, p in zip(keys, payloads, strict=True)],
            metadata=metadata,
            parent_id=parent_id,
            idempotency_key=idempotency_key,
            max_failures=max_failures,
        )
        record, created = self._portal.call(self.storage.create_batch, new)
        existing = self.idempotency.get(idempotency_key) if idempotency_key else None
        if existing is not None:
            assert (created, record.id) == (False, existing)
            return
        assert created
        assert (record.id, record.total, record.parent_id) == (new.id, len(keys), parent_id)
        assert record.max_failures == max_failures
        items = [_ModelItem(k, p) for k, p in zip(keys, payloads, strict=True)]
        self.batches[new.id] = _ModelBatch(
            new.id, metadata, parent_id, items, max_failures=max_failures
        )
        if idempotency_key is not None:
            self.idempotency[idempotency_key] = new.id

    @precondition(lambda self: bool(self.batches))
    @rule(data=st.data(), lease_seconds=_LEASES, group=st.none() | st.sampled_from(["a", "b"]))
    def claim(self, data: st.DataObject, lease_seconds: float, group: str | None) -> None:
        """Claim from any batch or from one or two batches, maybe filtered by metadata."""
        batch_ids: list[str] | None = None
        if self.batches:
            some = st.lists(
                st.sampled_from(sorted(self.batches)), min_size=1, max_size=2, unique=True
            )
            batch_ids = data.draw(st.none() | some, label="batch_ids")
        request = ClaimRequest(
            lease_seconds=lease_seconds,
            batch_ids=None if batch_ids is None else tuple(batch_ids),
            metadata=None if group is None else {"group": group},
        )
        self._check_claim(request, self._portal.call(self.storage.claim, request))

    @precondition(lambda self: bool(self._current()))
    @rule(
        data=st.data(),
        progress=st.floats(0.0, 1.0),
        message=st.none() | st.text(st.characters(codec="utf-8", exclude_characters="\x00")),
        lease_seconds=st.none() | _LEASES,
    )
    def record_progress(
        self,
        data: st.DataObject,
        progress: float,
        message: str | None,
        lease_seconds: float | None,
    ) -> None:
        """Record a running item's progress, maybe extending or expiring its lease."""
        lease = data.draw(st.sampled_from(self._current()), label="lease")
        status = self._portal.call(
            lambda: self.storage.record_progress(
                lease, progress, message, lease_seconds=lease_seconds
            )
        )
        batch = self.batches[lease.batch_id]
        assert (status.held, status.cancel_requested) == (True, batch.cancel_requested)
        item = batch.item(lease.key)
        item.progress, item.message = progress, message
        if lease_seconds is not None:
            item.expired = lease_seconds <= 0

    @precondition(lambda self: bool(self._current()))
    @rule(data=st.data(), lease_seconds=_LEASES)
    def heartbeat(self, data: st.DataObject, lease_seconds: float) -> None:
        """Extend a current lease for an hour, or let it expire at once."""
        lease = data.draw(st.sampled_from(self._current()), label="lease")
        status = self._portal.call(
            lambda: self.storage.heartbeat(lease, lease_seconds=lease_seconds)
        )
        batch = self.batches[lease.batch_id]
        assert (status.held, status.cancel_requested) == (True, batch.cancel_requested)
        batch.item(lease.key).expired = lease_seconds <= 0

    @precondition(lambda self: bool(self._current()))
    @rule(
        data=st.data(),
        kind=st.sampled_from(["succeeded", "failed", "released", "cancelled"]),
        result=_JSON,
        delay=st.sampled_from([0.0, LONG]),
        with_error=st.booleans(),
        then_claim=st.none() | _LEASES,
        with_history=st.booleans(),
    )
    def finish(
        self,
        data: st.DataObject,
        kind: str,
        result: Any,
        delay: float,
        with_error: bool,
        then_claim: float | None,
        with_history: bool,
    ) -> None:
        """End a current attempt, and maybe claim the next item of its batch."""
        lease = data.draw(st.sampled_from(self._current()), label="lease")
        outcome = _outcome(kind, lease, result, delay, with_error, with_history)
        request = None
        if then_claim is not None:
            request = ClaimRequest(lease_seconds=then_claim, batch_ids=(lease.batch_id,))
        answer = self._portal.call(lambda: self.storage.finish(lease, outcome, then_claim=request))
        assert answer.accepted
        batch = self.batches[lease.batch_id]
        self._end(batch, batch.item(lease.key), outcome)
        if request is not None:
            self._check_claim(request, answer.claim)
        else:
            assert answer.claim is None

    @precondition(lambda self: isinstance(self.storage, GroupCommitter) and bool(self.batches))
    @rule(
        data=st.data(),
        results=st.lists(_JSON, max_size=4),
        claim=st.integers(0, 3),
        lease_seconds=_LEASES,
        with_history=st.booleans(),
    )
    def finish_group(
        self,
        data: st.DataObject,
        results: list[Any],
        claim: int,
        lease_seconds: float,
        with_history: bool,
    ) -> None:
        """End some current attempts of one batch as succeeded (maybe with a stale lease
        among them), then claim up to ``claim`` of its items, in one step."""
        batch_id = data.draw(st.sampled_from(sorted(self.batches)), label="batch")
        current = [lease for lease in self._current() if lease.batch_id == batch_id]
        stale = [lease for lease in self._stale() if lease.batch_id == batch_id]
        leases = data.draw(
            st.lists(st.sampled_from(current + stale), unique=True, max_size=len(results))
            if current or stale
            else st.just([]),
            label="leases",
        )
        outcomes = [
            _outcome("succeeded", lease, result, 0.0, False, with_history)
            for lease, result in zip(leases, results, strict=False)
        ]
        storage: Any = self.storage
        done = self._portal.call(
            lambda: storage.finish_group(
                batch_id,
                list(zip(leases, outcomes, strict=False)),
                claim=claim,
                lease_seconds=lease_seconds,
            )
        )
        batch = self.batches[batch_id]
        for lease, outcome, accepted in zip(leases, outcomes, done.accepted, strict=True):
            assert accepted == self._is_current(lease), (lease, accepted)
            if accepted:
                self._end(batch, batch.item(lease.key), outcome)
        assert len(done.claims) <= claim
        request = ClaimRequest(lease_seconds=lease_seconds, batch_ids=(batch_id,))
        held = []
        for n in range(claim):
            self._check_claim(request, done.claims[n] if n < len(done.claims) else None)
            if n >= len(done.claims):
                break
            # Within the group, an item claimed is not claimable again, lapsed or not.
            held.append(batch.item(done.claims[n].lease.key))
            held[-1].expired = False
        for item in held:
            item.expired = lease_seconds <= 0

    @precondition(lambda self: bool(self._stale()))
    @rule(
        data=st.data(),
        op=st.sampled_from(["heartbeat", "progress", "finish"]),
        kind=st.sampled_from(["succeeded", "failed", "released", "cancelled"]),
    )
    def stale_lease(self, data: st.DataObject, op: str, kind: str) -> None:
        """A heartbeat, progress or finish under a lease that is no longer current."""
        lease = data.draw(st.sampled_from(self._stale()), label="stale lease")
        before = self._portal.call(_read_one, self.storage, lease.batch_id, lease.key)
        if op == "heartbeat":
            beat = self._portal.call(lambda: self.storage.heartbeat(lease, lease_seconds=0))
            assert not beat.held
        elif op == "progress":
            status = self._portal.call(
                lambda: self.storage.record_progress(lease, 0.5, "stale", lease_seconds=0)
            )
            assert not status.held
        else:
            outcome = _outcome(kind, lease, "stale", 0.0, True, True)
            answer = self._portal.call(self.storage.finish, lease, outcome)
            assert (answer.accepted, answer.claim) == (False, None)
        after = self._portal.call(_read_one, self.storage, lease.batch_id, lease.key)
        assert after == before, "a transition under a stale lease changed something"

    # A cancel ends a batch's claims for good: two per run leave the other rules work.
    @precondition(lambda self: self.cancels < 2)
    @rule(data=st.data(), reason=st.none() | st.sampled_from(["stop", "limit ✓ {x}:*\n2"]))
    def cancel_batch(self, data: st.DataObject, reason: str | None) -> None:
        """Request a batch's cancel (a finished batch stays as it is)."""
        self.cancels += 1
        batch = self.batches[data.draw(st.sampled_from(sorted(self.batches)), label="batch")]
        record = self._portal.call(lambda: self.storage.cancel_batch(batch.id, reason=reason))
        if not batch.finished:
            if not batch.cancel_requested:
                batch.cancel_reason = reason
            batch.cancel_requested = True
            for item in batch.items:
                if item.state is _Q or (item.state is _R and item.expired):
                    item.state, item.token, item.error_known = _C, None, False
        assert counts_of(record) == batch.counts()

    # -- checks after every step ---------------------------------------------------------

    @invariant()
    def storage_matches_model(self) -> None:
        """Counts, derived state and every item agree with the model and with each other."""
        listed, found = self._portal.call(_read_all, self.storage, list(self.batches))
        assert sorted(listed, reverse=True) == listed
        assert set(listed) == set(self.batches)
        for batch_id, (record, items) in found.items():
            model = self.batches[batch_id]
            counts = counts_of(record)
            assert sum(counts.values()) == record.total == len(model.items)
            assert counts == recount(item.state for item in items) == model.counts()
            assert status_from_record(record).state is derive_state(
                recount(item.state for item in items),
                started=model.started,
                cancel_requested=model.cancel_requested,
            )
            assert (record.finished_at is not None) is model.finished
            assert (record.cancel_requested_at is not None) is model.cancel_requested
            assert record.parent_id == model.parent_id
            assert record.cancel_reason == model.cancel_reason
            assert record.max_failures == model.max_failures
            running = math.fsum(i.progress for i in model.items if i.state is _R)
            assert math.isclose(record.running_progress, running, abs_tol=1e-9)
            for item, expected in zip(items, model.items, strict=True):
                self._check_item(batch_id, item, expected)

    def _check_item(self, batch_id: str, item: Item, expected: _ModelItem) -> None:
        slot = (batch_id, item.key)
        assert (item.key, item.payload) == (expected.key, expected.payload)
        assert (item.state, item.attempt) == (expected.state, expected.attempt), slot
        assert item.attempt >= self.attempts.get(slot, 0), "attempt decreased"
        self.attempts[slot] = item.attempt
        if item.state in TERMINAL_ITEM_STATES:
            snapshot = item.model_dump()
            assert self.terminal.setdefault(slot, snapshot) == snapshot, "a final item changed"
        if item.state in (_Q, _R):
            assert math.isclose(item.progress, expected.progress, abs_tol=1e-9)
            assert item.message == expected.message
        if item.state is _S:
            assert (item.result, item.progress) == (expected.result, 1.0)
        if expected.error_known:
            assert item.error == expected.error
        assert item.errors == errors_of(expected.history)


def _draw_items(data: st.DataObject) -> tuple[list[str], list[Any]]:
    keys = data.draw(st.lists(_KEYS, min_size=1, max_size=6, unique=True), label="keys")
    return keys, data.draw(
        st.lists(_JSON, min_size=len(keys), max_size=len(keys)), label="payloads"
    )


def _outcome(
    kind: str, lease: Lease, result: Any, delay: float, with_error: bool, with_history: bool
) -> Outcome:
    error = ItemError(
        type="RuntimeError", message=f"attempt {lease.attempt}", attempt=lease.attempt
    )
    history = None
    if with_history:
        history = History(released=lease.attempt).with_failure(error, keep=3).encode()
    if kind == "succeeded":
        return Outcome.succeeded(dumps(result), history=history)
    if kind == "failed":
        return Outcome.failed(error, history=history)
    if kind == "released":
        return Outcome.released(delay=delay, error=error if with_error else None, history=history)
    return Outcome.cancelled(history=history)


def run_state_machine(
    storage_factory: Callable[[], Storage],
    *,
    backend: str = "asyncio",
    backend_options: dict[str, Any] | None = None,
    settings: hypothesis.settings | None = None,
) -> None:
    """Run `StorageStateMachine` on fresh storages from ``storage_factory``.

    Args:
        storage_factory: returns a new, empty storage that has not been entered; it is
            called once per example, inside the portal's event loop.
        backend: the anyio backend the storage runs on (``"asyncio"`` or ``"trio"``).
        backend_options: options for that backend, as `anyio.run` takes them.
        settings: hypothesis settings; by default the loaded profile's with 30 steps
            per example and no deadline (a step may wait on a database).

    Raises:
        AssertionError: the storage broke a rule; hypothesis reports the shortest
            sequence of steps it found.
    """
    if settings is None:
        settings = _default_settings()
    with anyio.from_thread.start_blocking_portal(backend, backend_options) as portal:

        class _Machine(StorageStateMachine):
            def __init__(self) -> None:
                super().__init__(portal, storage_factory)

        _Machine.__name__ = _Machine.__qualname__ = "StorageStateMachine"
        # hypothesis annotates this function only in its later releases; through a typed
        # name, the module checks against every release that pyproject.toml allows.
        run: Callable[..., None] = run_state_machine_as_test
        run(_Machine, settings=settings)


def _default_settings() -> hypothesis.settings:
    return hypothesis.settings(
        stateful_step_count=30, deadline=None, suppress_health_check=[HealthCheck.too_slow]
    )
