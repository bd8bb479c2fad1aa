"""OpenTelemetry across processes: a request's span in the app, the submit's span under
it, and every item attempt's span, made by a worker process, in the same trace under the
submit's. Spans are captured with the SDK's in-memory exporter here, and written to a file
by the worker (`tests.workers._traced`)."""

from __future__ import annotations

import json
from collections import Counter
from typing import TYPE_CHECKING

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

import batchkit.runner
from batchkit import BatchRunner, ItemSpec

if TYPE_CHECKING:
    from .conftest import Store, Workers

pytestmark = pytest.mark.anyio


async def _nothing(ctx: object) -> None:
    return None


@pytest.mark.parametrize("store", ["sqlite", "postgres", "redis"], indirect=True)
async def test_one_trace_from_the_request_to_every_item_attempt_in_a_worker(
    store: Store, workers: Workers, monkeypatch: pytest.MonkeyPatch
) -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("app")
    # This process's tracer provider, for batchkit alone (the global one is set once).
    monkeypatch.setattr(batchkit.runner, "tracer", lambda: provider.get_tracer("batchkit"))

    keys = ["mug", "poster", "lamp", "bad-frame"]
    with tracer.start_as_current_span("POST /batches") as request:
        async with store.storage() as storage:
            runner = BatchRunner(storage, _nothing)
            batch = await runner.submit([ItemSpec(key=k) for k in keys], metadata={"owner": "ada"})
            assert (await runner.status(batch.id)).metadata == {"owner": "ada"}
    assert batch.metadata == {"owner": "ada"}  # the trace context is batchkit's, unseen

    spans_file = workers.tmp_path / "spans.jsonl"
    monkeypatch.setenv("BATCHKIT_TEST_SPANS", str(spans_file))
    process = await workers.start(
        *("--batch", batch.id, "--exit-when-idle", "--max-attempts", "2", "--backoff", "0"),
        generator="tests.workers._traced:generate",
    )
    assert await workers.wait(process, 60) == 0, workers.logs()

    here = {span.name: span for span in exporter.get_finished_spans()}
    submit = here["batchkit submit"]
    trace_id = f"{request.get_span_context().trace_id:032x}"
    assert submit.parent is not None
    assert submit.parent.span_id == request.get_span_context().span_id
    assert submit.attributes is not None
    assert submit.attributes["batchkit.batch.id"] == batch.id
    assert submit.attributes["batchkit.batch.items"] == 4
    submit_id = f"{submit.get_span_context().span_id:016x}"

    there = [json.loads(line) for line in spans_file.read_text().splitlines()]
    attempts = [s for s in there if s["name"] == "batchkit item"]
    # One span per attempt: three items once, the bad one twice (a retry, then for good).
    assert len(attempts) == 5, there
    assert {s["trace_id"] for s in there} == {trace_id}
    assert {s["parent_id"] for s in attempts} == {submit_id}
    assert all(s["pid"] == process.pid for s in there)
    outcomes = Counter(
        (s["attributes"]["batchkit.item.key"], s["attributes"]["batchkit.item.outcome"])
        for s in attempts
    )
    assert outcomes == {
        ("mug", "succeeded"): 1,
        ("poster", "succeeded"): 1,
        ("lamp", "succeeded"): 1,
        ("bad-frame", "retrying"): 1,
        ("bad-frame", "failed"): 1,
    }
    failing = [s for s in attempts if s["attributes"]["batchkit.item.key"] == "bad-frame"]
    assert sorted(s["attributes"]["batchkit.item.attempt"] for s in failing) == [1, 2]
    assert {s["status"] for s in failing} == {"ERROR"}
    assert all(s["attributes"]["batchkit.batch.id"] == batch.id for s in attempts)
    # The generator's own spans are children of their attempt's.
    renders = [s for s in there if s["name"] == "render"]
    assert len(renders) == 5
    assert {s["parent_id"] for s in renders} == {s["span_id"] for s in attempts}
