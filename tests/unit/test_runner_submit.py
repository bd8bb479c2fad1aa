"""BatchRunner: submitting and validating batches, reading items and batches back."""

from __future__ import annotations

import math
from typing import Any

import pytest

from batchkit import (
    BatchNotFound,
    BatchRunner,
    BatchState,
    InvalidBatch,
    ItemSpec,
    ItemState,
    Limits,
    MemoryStorage,
)
from batchkit.ids import new_batch_id

from .helpers import all_items

pytestmark = pytest.mark.anyio


async def noop(ctx: Any) -> None:
    return None


@pytest.fixture
def storage() -> MemoryStorage:
    return MemoryStorage()


@pytest.fixture
def runner(storage: MemoryStorage) -> BatchRunner:
    return BatchRunner(storage, noop)


# -- accepted forms -------------------------------------------------------------------


async def test_items_as_specs_mappings_and_strings_keep_submission_order(
    runner: BatchRunner,
) -> None:
    batch = await runner.submit(
        [
            ItemSpec(key="zeta", payload={"size": 3}),
            {"key": "alpha", "payload": [1, "two"]},
            {"key": "mid"},
            "plain",
        ],
        metadata={"owner": "ada"},
    )

    assert batch.total == 4
    assert batch.metadata == {"owner": "ada"}
    assert batch.parent_id is None
    items = await all_items(runner, batch.id)
    assert [(i.key, i.position, i.payload) for i in items] == [
        ("zeta", 0, {"size": 3}),
        ("alpha", 1, [1, "two"]),
        ("mid", 2, None),
        ("plain", 3, None),
    ]
    assert all(i.state is ItemState.QUEUED and i.attempt == 0 for i in items)
    status = await runner.status(batch.id)
    assert status.state is BatchState.QUEUED
    assert status.counts[ItemState.QUEUED] == 4


async def test_submit_accepts_any_iterable_and_runs_nothing(
    storage: MemoryStorage,
) -> None:
    calls: list[str] = []

    async def gen(ctx: Any) -> None:
        calls.append(ctx.key)

    runner = BatchRunner(storage, gen)
    batch = await runner.submit(f"k{i}" for i in range(3))

    assert [i.key for i in await all_items(runner, batch.id)] == ["k0", "k1", "k2"]
    assert calls == []


async def test_same_idempotency_key_returns_the_same_batch_and_writes_nothing(
    storage: MemoryStorage, runner: BatchRunner
) -> None:
    first = await runner.submit(["a", "b"], idempotency_key="order-42")
    second = await runner.submit(["c", "d", "e"], idempotency_key="order-42")

    assert second.id == first.id
    assert second.total == 2
    assert len(await storage.list_batches()) == 1
    assert [i.key for i in await all_items(runner, first.id)] == ["a", "b"]
    other = await runner.submit(["a"], idempotency_key="order-43")
    assert other.id != first.id


# -- refused batches: a clear InvalidBatch and nothing written --------------------------


class Opaque:
    pass


@pytest.mark.parametrize(
    ("items", "kwargs", "needles"),
    [
        pytest.param([], {}, ["at least one item"], id="empty"),
        pytest.param(iter(()), {}, ["at least one item"], id="empty-iterator"),
        pytest.param(
            ["a", "b", "c", "b"], {}, ["#3", "'b'", "duplicate of item #1"], id="duplicate-key"
        ),
        pytest.param(
            ["ok", {"key": "k", "payload": {"x": math.nan}}],
            {},
            ["#1", "'k'", "nan", "$.x"],
            id="payload-nan",
        ),
        pytest.param(
            [ItemSpec(key="s", payload={1, 2})], {}, ["#0", "'s'", "set"], id="payload-set"
        ),
        pytest.param(
            ["a", "b", {"key": "obj", "payload": Opaque()}],
            {},
            ["#2", "'obj'", "Opaque"],
            id="payload-object",
        ),
        pytest.param(
            [{"key": "d", "payload": {1: "one"}}],
            {},
            ["#0", "'d'", "key 1 is not a string"],
            id="payload-int-dict-key",
        ),
        pytest.param(["x" * 513], {}, ["#0", "1 to 512 characters"], id="key-too-long"),
        pytest.param(["a", "b\x00c"], {}, ["#1", "NUL"], id="key-with-nul"),
        pytest.param([""], {}, ["#0", "1 to 512"], id="key-empty"),
        pytest.param([{"key": 7}], {}, ["#0", "key must be a string"], id="key-not-str"),
        pytest.param([{"payload": 1}], {}, ["#0", "no 'key'"], id="mapping-without-key"),
        pytest.param(
            [{"key": "a", "payload": 1, "extra": 2}],
            {},
            ["#0", "unknown fields ['extra']"],
            id="mapping-unknown-field",
        ),
        pytest.param(["a", 5], {}, ["#1", "int is not an item"], id="item-not-an-item"),
        pytest.param("abc", {}, ["single str"], id="single-string"),
        pytest.param({"key": "a"}, {}, ["single dict"], id="single-mapping"),
        pytest.param(["a"], {"metadata": {"x": math.inf}}, ["metadata", "inf"], id="meta-inf"),
        pytest.param(["a"], {"metadata": {"x": {1, 2}}}, ["metadata", "set"], id="meta-set"),
        pytest.param(
            ["a"], {"metadata": ["owner"]}, ["metadata must be a mapping"], id="meta-list"
        ),
        pytest.param(
            ["a"],
            {"metadata": {"blob": "x" * 20_000}},
            ["metadata", "over the limit"],
            id="meta-big",
        ),
        pytest.param(["a"], {"idempotency_key": ""}, ["idempotency_key"], id="idem-empty"),
        pytest.param(["a"], {"idempotency_key": 42}, ["idempotency_key"], id="idem-not-str"),
        pytest.param(["a"], {"idempotency_key": "k" * 256}, ["idempotency_key"], id="idem-long"),
        pytest.param(["a"], {"idempotency_key": "a\x00b"}, ["idempotency_key"], id="idem-nul"),
    ],
)
async def test_invalid_batch_is_refused_and_nothing_written(
    storage: MemoryStorage, runner: BatchRunner, items: Any, kwargs: Any, needles: list[str]
) -> None:
    with pytest.raises(InvalidBatch) as info:
        await runner.submit(items, **kwargs)

    message = str(info.value)
    for needle in needles:
        assert needle in message, message
    assert await storage.list_batches() == []


async def test_payload_over_the_size_limit_is_refused(storage: MemoryStorage) -> None:
    runner = BatchRunner(storage, noop, limits=Limits(max_payload_bytes=100))
    await runner.submit([ItemSpec(key="fits", payload="x" * 90)])
    before = await storage.list_batches()

    with pytest.raises(InvalidBatch, match=r"item #1 \(key 'big'\).*over the limit of 100 bytes"):
        await runner.submit([ItemSpec(key="ok", payload=1), ItemSpec(key="big", payload="é" * 60)])

    assert await storage.list_batches() == before


async def test_too_many_items_are_refused(storage: MemoryStorage) -> None:
    runner = BatchRunner(storage, noop, limits=Limits(max_items=3))

    with pytest.raises(InvalidBatch, match="at most 3 items"):
        await runner.submit(["a", "b", "c", "d"])

    assert await storage.list_batches() == []


# -- reading items and batches ---------------------------------------------------------


async def test_items_filter_by_state_in_every_spelling(storage: MemoryStorage) -> None:
    async def gen(ctx: Any) -> int:
        if ctx.position % 3 == 0:
            raise RuntimeError("no")
        return int(ctx.position)

    runner = BatchRunner(storage, gen)
    batch = await runner.submit([f"k{i}" for i in range(7)])
    await runner.run(batch.id)

    failed = ["k0", "k3", "k6"]
    succeeded = ["k1", "k2", "k4", "k5"]
    for state in ("failed", ItemState.FAILED, ["failed"], {ItemState.FAILED}):
        assert [i.key for i in await runner.items(batch.id, state=state)] == failed
    assert [i.key for i in await runner.items(batch.id, state="succeeded")] == succeeded
    both = await runner.items(batch.id, state=("failed", ItemState.SUCCEEDED))
    assert [i.key for i in both] == [f"k{i}" for i in range(7)]
    assert await runner.items(batch.id, state=ItemState.QUEUED) == []
    with pytest.raises(ValueError, match="done"):
        await runner.items(batch.id, state="done")


async def test_items_paging_with_after(runner: BatchRunner) -> None:
    batch = await runner.submit([f"k{i}" for i in range(7)])

    pages: list[list[str]] = []
    after: int | None = None
    while True:
        page = await runner.items(batch.id, limit=3, after=after)
        if not page:
            break
        pages.append([i.key for i in page])
        after = page[-1].position

    assert pages == [["k0", "k1", "k2"], ["k3", "k4", "k5"], ["k6"]]


@pytest.mark.parametrize("limit", [0, -1, 1001, 2.5, "10", True])
async def test_items_limit_out_of_bounds(runner: BatchRunner, limit: Any) -> None:
    batch = await runner.submit(["a"])

    with pytest.raises(ValueError, match="limit"):
        await runner.items(batch.id, limit=limit)


async def test_items_after_must_be_a_position(runner: BatchRunner) -> None:
    batch = await runner.submit(["a"])

    with pytest.raises(ValueError, match="after"):
        await runner.items(batch.id, after="a")  # type: ignore[arg-type]


async def test_batches_newest_first_filtered_and_paged(runner: BatchRunner) -> None:
    ids = []
    for n in range(5):
        owner = "ada" if n % 2 == 0 else "bob"
        ids.append((await runner.submit([f"k{n}"], metadata={"owner": owner})).id)

    assert [s.batch_id for s in await runner.batches()] == ids[::-1]
    ada = await runner.batches(metadata={"owner": "ada"})
    assert [s.batch_id for s in ada] == [ids[4], ids[2], ids[0]]
    assert all(s.metadata == {"owner": "ada"} and s.state is BatchState.QUEUED for s in ada)
    first = await runner.batches(limit=2)
    second = await runner.batches(limit=2, before=first[-1].batch_id)
    third = await runner.batches(limit=2, before=second[-1].batch_id)
    assert [s.batch_id for s in first + second + third] == ids[::-1]
    assert await runner.batches(metadata={"owner": "eve"}) == []
    with pytest.raises(ValueError, match="limit"):
        await runner.batches(limit=0)
    with pytest.raises(ValueError, match="before"):
        await runner.batches(before="yesterday")


# -- unknown batches -------------------------------------------------------------------


@pytest.mark.parametrize("batch_id", ["unknown", "malformed", "", "../../etc"])
async def test_unknown_or_malformed_batch_id_is_not_found(
    runner: BatchRunner, batch_id: str
) -> None:
    if batch_id == "unknown":
        await runner.submit(["a"])
        batch_id = new_batch_id()

    with pytest.raises(BatchNotFound):
        await runner.run(batch_id)
    with pytest.raises(BatchNotFound):
        await runner.status(batch_id)
    with pytest.raises(BatchNotFound):
        await runner.items(batch_id)
    with pytest.raises(BatchNotFound):
        await runner.cancel(batch_id)
    with pytest.raises(BatchNotFound):
        await runner.retry_failed(batch_id)
    with pytest.raises(BatchNotFound):
        async for _ in runner.watch(batch_id):
            pass


# -- constructor -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs",
    [
        {"concurrency": 0},
        {"concurrency": -2},
        {"concurrency": 1.5},
        {"concurrency": True},
        {"item_timeout": -1},
        {"item_timeout": 0},
        {"item_timeout": math.nan},
        {"lease_seconds": -0.5},
        {"lease_seconds": 0},
        {"progress_interval": -1},
        {"poll_interval": -1},
        {"poll_interval": math.inf},
    ],
)
def test_constructor_rejects_bad_options(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        BatchRunner(MemoryStorage(), noop, **kwargs)


def test_constructor_rejects_a_generator_that_is_not_callable() -> None:
    with pytest.raises(TypeError, match="generator must be callable"):
        BatchRunner(MemoryStorage(), "module:generate")  # type: ignore[arg-type]


@pytest.mark.parametrize("bad", [{"owner": ["a"]}, {"owner": {"a": 1}}, {1: "a"}])
async def test_batches_refuses_non_scalar_metadata_filters(bad: dict[Any, Any]) -> None:
    runner = BatchRunner(MemoryStorage(), noop)
    with pytest.raises(ValueError, match="metadata filters"):
        await runner.batches(metadata=bad)
