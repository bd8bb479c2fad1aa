"""A worker's generator whose process sends its OpenTelemetry spans to a file: imported by
``python -m batchkit worker --generator tests.workers._traced:generate``, it sets the
process's tracer provider (the SDK's), which exports every span, as it ends, as one JSON
line of ``BATCHKIT_TEST_SPANS``."""

from __future__ import annotations

import json
import os
from typing import TYPE_CHECKING, Any

from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter, SpanExportResult

if TYPE_CHECKING:
    from collections.abc import Sequence

    from opentelemetry.sdk.trace import ReadableSpan

    from batchkit import ItemContext


class _ToFile(SpanExporter):
    def __init__(self, path: str) -> None:
        self.path = path

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        with open(self.path, "a", encoding="utf-8") as out:
            for span in spans:
                context = span.get_span_context()
                assert context is not None
                entry = {
                    "name": span.name,
                    "trace_id": f"{context.trace_id:032x}",
                    "span_id": f"{context.span_id:016x}",
                    "parent_id": None if span.parent is None else f"{span.parent.span_id:016x}",
                    "attributes": dict(span.attributes or {}),
                    "status": span.status.status_code.name,
                    "pid": os.getpid(),
                }
                out.write(json.dumps(entry) + "\n")
        return SpanExportResult.SUCCESS


_provider = TracerProvider()
_provider.add_span_processor(SimpleSpanProcessor(_ToFile(os.environ["BATCHKIT_TEST_SPANS"])))
trace.set_tracer_provider(_provider)
_tracer = trace.get_tracer("tests.workers._traced")


async def generate(ctx: ItemContext) -> dict[str, Any]:
    """A span of the host's own inside each attempt; items whose key starts with ``bad``
    fail every attempt."""
    with _tracer.start_as_current_span("render"):
        if ctx.key.startswith("bad"):
            raise ValueError(f"{ctx.key}: no picture")
    return {"attempt": ctx.attempt}
