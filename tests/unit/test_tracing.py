"""OpenTelemetry in one process: a span per submit and per attempt, the trace context kept
with the batch and never shown, nothing at all without a tracer provider. Across a
worker process: tests/workers/test_tracing.py."""

from __future__ import annotations

import logging
import subprocess
import sys
from collections import Counter
from typing import TYPE_CHECKING

import pytest

from batchkit import BatchRunner, Limits, MemoryStorage, RetryPolicy
from batchkit._tracing import TRACE_KEY, tracer
from batchkit.codec import dumps
from batchkit.exceptions import InvalidBatch
from batchkit.models import LIMIT_CAPS

if TYPE_CHECKING:
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from batchkit import ItemContext

pytestmark = pytest.mark.anyio


async def test_a_run_makes_one_span_per_attempt_under_its_submit(
    exporter: InMemorySpanExporter,
) -> None:
    seen: list[dict[str, object]] = []

    async def generate(ctx: ItemContext) -> str:
        seen.append(dict(ctx.metadata))
        if ctx.key == "bad" and ctx.attempt == 1:
            raise ConnectionError("busy")
        if ctx.key == "worse":
            raise ValueError("no")
        return ctx.key

    storage = MemoryStorage()
    runner = BatchRunner(storage, generate, retry=RetryPolicy(max_attempts=2, backoff=0.001))
    batch = await runner.submit(["a", "bad", "worse"], metadata={"owner": "ada"})
    await runner.run(batch.id)
    spans = exporter.get_finished_spans()
    submit = next(s for s in spans if s.name == "batchkit submit")
    attempts = [s for s in spans if s.name == "batchkit item"]
    assert len(attempts) == 5
    for span in attempts:
        assert span.parent is not None
        assert span.parent.span_id == submit.get_span_context().span_id
        assert span.get_span_context().trace_id == submit.get_span_context().trace_id
    outcomes = Counter(
        (s.attributes["batchkit.item.key"], s.attributes["batchkit.item.outcome"])  # type: ignore[index]
        for s in attempts
    )
    assert outcomes == {
        ("a", "succeeded"): 1,
        ("bad", "retrying"): 1,
        ("bad", "succeeded"): 1,
        ("worse", "retrying"): 1,
        ("worse", "failed"): 1,
    }
    # The context is kept with the batch, and shown to no one: not the generator, not a
    # status, not a listing.
    record = await storage.get_batch(batch.id)
    assert TRACE_KEY in record.metadata
    assert "traceparent" in record.metadata[TRACE_KEY]
    assert seen == [{"owner": "ada"}] * 5
    assert (await runner.status(batch.id)).metadata == {"owner": "ada"}
    assert [s.metadata for s in await runner.batches()] == [{"owner": "ada"}]
    # A retry of the failed items is a submit of its own, with a trace of its own.
    again = await runner.retry_failed(batch.id)
    assert again.metadata == {"owner": "ada"}
    retried = [s for s in exporter.get_finished_spans() if s.name == "batchkit submit"]
    assert len(retried) == 2
    assert retried[1].attributes["batchkit.batch.parent_id"] == batch.id  # type: ignore[index]


async def test_a_context_that_would_take_the_metadata_past_what_a_store_holds_is_left_out(
    exporter: InMemorySpanExporter, caplog: pytest.LogCaptureFixture
) -> None:
    """The limit is on the caller's metadata; the context comes on top. Where the two
    would not fit in a store (65,535 bytes: a MySQL TEXT column), the batch is submitted
    without the context, and the log says so; with room to spare, it keeps it."""
    cap = LIMIT_CAPS["max_metadata_bytes"][0]
    storage = MemoryStorage()
    runner = BatchRunner(storage, lambda ctx: None, limits=Limits(max_metadata_bytes=cap))
    full = {"blob": "x" * (cap - len(dumps({"blob": ""})))}
    assert len(dumps(full)) == cap
    roomy = {"blob": "x" * (cap - 1_000)}
    with caplog.at_level(logging.WARNING, "batchkit.runner"):
        dropped = await runner.submit(["a"], metadata=full)
        kept = await runner.submit(["b"], metadata=roomy)
    stored = (await storage.get_batch(dropped.id)).metadata
    assert stored == full
    assert TRACE_KEY in (await storage.get_batch(kept.id)).metadata
    assert len(dumps((await storage.get_batch(kept.id)).metadata).encode()) <= cap
    said = [r for r in caplog.records if getattr(r, "event", None) == "trace_context_dropped"]
    assert [r.batch_id for r in said] == [dropped.id]  # type: ignore[attr-defined]
    assert "children" in said[0].getMessage()
    # The batch runs all the same; its attempt's span starts a trace of its own.
    await runner.run(dropped.id)
    await runner.run(kept.id)
    spans = exporter.get_finished_spans()
    submits = {s.attributes["batchkit.batch.id"]: s for s in spans if s.name == "batchkit submit"}  # type: ignore[index]
    attempts = {s.attributes["batchkit.batch.id"]: s for s in spans if s.name == "batchkit item"}  # type: ignore[index]
    assert attempts[dropped.id].context.trace_id != submits[dropped.id].context.trace_id  # type: ignore[union-attr]
    assert attempts[kept.id].parent.span_id == submits[kept.id].context.span_id  # type: ignore[union-attr]


async def test_metadata_keys_of_batchkits_own_are_refused() -> None:
    runner = BatchRunner(MemoryStorage(), lambda ctx: None)
    for key in (TRACE_KEY, "batchkit:anything"):
        with pytest.raises(InvalidBatch, match="batchkit's own"):
            await runner.submit(["a"], metadata={key: {"traceparent": "x"}})
    batch = await runner.submit(["a"], metadata={"batchkit": 1, "my:batchkit:x": 2})
    assert batch.metadata == {"batchkit": 1, "my:batchkit:x": 2}


async def test_without_a_tracer_provider_nothing_is_traced_or_kept() -> None:
    assert tracer() is None  # the API's default provider: spans would go nowhere
    storage = MemoryStorage()
    runner = BatchRunner(storage, lambda ctx: None)
    batch = await runner.submit(["a"], metadata={"owner": "ada"})
    assert (await storage.get_batch(batch.id)).metadata == {"owner": "ada"}


def test_without_the_api_installed_batchkit_runs_and_traces_nothing() -> None:
    code = (
        "import sys; sys.modules['opentelemetry'] = None\n"
        "import anyio, batchkit\n"
        "from batchkit._tracing import tracer\n"
        "assert tracer() is None\n"
        "async def main():\n"
        "    r = batchkit.BatchRunner(batchkit.MemoryStorage(), lambda ctx: ctx.key)\n"
        "    b = await r.submit(['a'])\n"
        "    assert (await r.run(b.id)).state.value == 'completed'\n"
        "anyio.run(main)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
