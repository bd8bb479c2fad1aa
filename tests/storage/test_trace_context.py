"""A batch's trace context, kept with its metadata, on every store: whatever metadata the
limits let in is stored, the context with it where it fits."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from batchkit import BatchRunner, ItemState, Limits
from batchkit._tracing import TRACE_KEY
from batchkit.codec import dumps
from batchkit.models import LIMIT_CAPS

if TYPE_CHECKING:
    from collections.abc import Callable

    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from batchkit import ItemContext
    from batchkit.protocols import Storage

pytestmark = pytest.mark.anyio

CAP = LIMIT_CAPS["max_metadata_bytes"][0]


async def _key(ctx: ItemContext) -> str:
    return ctx.key


@pytest.mark.parametrize("spare", [0, 1_000], ids=["no-room", "room"])
async def test_metadata_at_the_cap_is_stored_with_tracing_on(
    storage_factory: Callable[[], Storage], exporter: InMemorySpanExporter, spare: int
) -> None:
    """With a tracer provider set, a batch whose metadata is as large as the limits allow
    is submitted, run and read back whole (MySQL's TEXT column refused it with the
    context added); the context is kept when there is room for it."""
    metadata = {"blob": "é" * ((CAP - spare - len(dumps({"blob": ""}))) // 2)}
    async with storage_factory() as storage:
        runner = BatchRunner(storage, _key, limits=Limits(max_metadata_bytes=CAP))
        batch = await runner.submit(["a"], metadata=metadata)
        await runner.run(batch.id)
        assert (await runner.status(batch.id)).metadata == metadata
        (item,) = await runner.items(batch.id)
        assert item.state is ItemState.SUCCEEDED
        kept = await storage.get_batch(batch.id)
        assert (TRACE_KEY in kept.metadata) is (spare > 0)
        assert len(dumps(kept.metadata).encode()) <= CAP
    assert {s.name for s in exporter.get_finished_spans()} == {"batchkit submit", "batchkit item"}
