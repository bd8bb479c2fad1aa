"""OpenTelemetry spans (``opentelemetry-api``, the ``tracing`` extra): one per submit, one
per item attempt; nothing at all when the API is not installed or no tracer provider is
set.

A submit's span is made in the caller's context (an HTTP request's span, say), and its
context (W3C ``traceparent``/``tracestate``) is kept with the batch, under the metadata
key `TRACE_KEY`, which batchkit takes off again before the metadata reaches anyone
(`public_metadata`). Each attempt's span, in whichever process runs it, is a child of
the submit's: one trace goes from the request to every item run it caused.
"""

from __future__ import annotations

import logging
import sys
from contextlib import nullcontext
from typing import TYPE_CHECKING, Any

from .codec import dumps
from .models import LIMIT_CAPS

if TYPE_CHECKING:
    from collections.abc import Mapping

__all__ = [
    "TRACE_KEY",
    "attempt_span",
    "current_span",
    "end_attempt",
    "public_metadata",
    "submit_span",
    "tracer",
]

#: The metadata key a batch's trace context is kept under (``batchkit:`` keys are
#: batchkit's own: `BatchRunner.submit` refuses them).
TRACE_KEY = "batchkit:trace"
#: Metadata keys starting with this are batchkit's.
RESERVED_PREFIX = "batchkit:"
#: The most metadata a store holds (`LIMIT_CAPS`), the trace context included.
_METADATA_CAP = LIMIT_CAPS["max_metadata_bytes"][0]

logger = logging.getLogger("batchkit.runner")


def tracer() -> Any | None:
    """batchkit's tracer, or `None` when spans would go nowhere: the API is not installed,
    or no tracer provider is set (the API's default does nothing). Asked once per run, per
    worker and per submit, not per item."""
    try:
        from opentelemetry import trace
    except ImportError:
        return None
    provider = trace.get_tracer_provider()
    if isinstance(provider, trace.ProxyTracerProvider | trace.NoOpTracerProvider):
        return None
    version = getattr(sys.modules.get("batchkit"), "__version__", None)
    return provider.get_tracer("batchkit", version)


def public_metadata(metadata: dict[str, Any]) -> dict[str, Any]:
    """``metadata`` without batchkit's own keys (the trace context)."""
    if TRACE_KEY not in metadata:
        return metadata
    return {k: v for k, v in metadata.items() if k != TRACE_KEY}


def submit_span(
    tracing: Any, batch_id: str, total: int, parent_id: str | None, metadata: dict[str, Any]
) -> Any:
    """Start the span of a submit (end it with ``span.end()``); its context goes into
    ``metadata`` under `TRACE_KEY`."""
    from opentelemetry import propagate, trace

    attributes: dict[str, Any] = {"batchkit.batch.id": batch_id, "batchkit.batch.items": total}
    if parent_id is not None:
        attributes["batchkit.batch.parent_id"] = parent_id
    span = tracing.start_span(
        "batchkit submit", kind=trace.SpanKind.PRODUCER, attributes=attributes
    )
    carrier: dict[str, str] = {}
    propagate.inject(carrier, context=trace.set_span_in_context(span))
    if carrier:
        metadata[TRACE_KEY] = carrier
        size = len(dumps(metadata).encode())
        if size > _METADATA_CAP:
            # The caller's metadata fits, and every store holds it; with the context (and
            # its baggage) some store would not: the batch goes without it.
            del metadata[TRACE_KEY]
            logger.warning(
                "batch %s: its trace context is not kept (with it, its metadata would take "
                "%d bytes, over the %d a store holds): its items' spans will not be "
                "children of its submit's",
                batch_id,
                size,
                _METADATA_CAP,
                extra={"event": "trace_context_dropped", "batch_id": batch_id},
            )
    return span


def attempt_span(
    tracing: Any,
    metadata: Mapping[str, Any],
    batch_id: str,
    key: str,
    attempt: int,
    worker: str | None,
) -> Any:
    """Start the span of an item's attempt, a child of its batch's submit when the batch
    carries one's context."""
    from opentelemetry import propagate, trace

    carrier = metadata.get(TRACE_KEY)
    parent = None
    if isinstance(carrier, dict) and all(isinstance(v, str) for v in carrier.values()):
        parent = propagate.extract(carrier)
    attributes: dict[str, Any] = {
        "batchkit.batch.id": batch_id,
        "batchkit.item.key": key,
        "batchkit.item.attempt": attempt,
    }
    if worker is not None:
        attributes["batchkit.worker"] = worker
    return tracing.start_span(
        "batchkit item", context=parent, kind=trace.SpanKind.CONSUMER, attributes=attributes
    )


def end_attempt(span: Any, outcome: str, error: BaseException | None = None) -> None:
    """End an attempt's span with its outcome (``succeeded``, ``failed``, ``retrying``,
    ``cancelled``, ``released``, ``refused``); a failure sets its status to error."""
    from opentelemetry.trace import Status, StatusCode

    span.set_attribute("batchkit.item.outcome", outcome)
    if error is not None and outcome in ("failed", "retrying"):
        span.record_exception(error)
        span.set_status(Status(StatusCode.ERROR, f"{type(error).__name__}"))
    span.end()


def current_span(span: Any) -> Any:
    """A context manager making ``span`` the current one (the generator's own spans are
    its children); one that does nothing when ``span`` is `None`."""
    if span is None:
        return nullcontext()
    from opentelemetry import trace

    return trace.use_span(
        span, end_on_exit=False, record_exception=False, set_status_on_exception=False
    )
