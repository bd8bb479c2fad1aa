"""Metrics of runners and workers: what they ran, how long it took, what failed.

Give a `Metrics` to `BatchRunner` or `Worker` (``metrics=``) and it hears of every item's
events in that process. `PrometheusMetrics` (the ``metrics`` extra: ``pip install
'batchkit[metrics]'``) counts them for Prometheus::

    from batchkit.metrics import PrometheusMetrics

    metrics = PrometheusMetrics()  # in prometheus_client's default registry
    worker = Worker(storage, render, metrics=metrics)

``python -m batchkit worker --metrics-port 9100`` serves them on ``/metrics``; a web app
that runs batches itself serves them on its own route (``prometheus_client.make_asgi_app()``
mounted at ``/metrics``). The names, their labels and what each counts are in
the operations guide. Labels take a few fixed values each (a state, an outcome, a kind of
error, the worker's name): no batch id or item key is ever a label.

`Metrics` itself does nothing: subclass it to send the same events elsewhere.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any

from .exceptions import StorageError

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Iterator

__all__ = ["DURATION_BUCKETS", "ITEM_EVENTS", "Metrics", "PrometheusMetrics", "error_kind"]

#: The events `Metrics.item` hears: an attempt started; ended as succeeded, failed (for
#: good), retrying (failed, to be tried again), cancelled; released (handed back
#: unfinished: a worker stopping); refused (its outcome was refused: another runner had
#: taken the item over); handed_back (claimed, then handed back before it ran).
ITEM_EVENTS = (
    "started",
    "succeeded",
    "failed",
    "retrying",
    "cancelled",
    "released",
    "refused",
    "handed_back",
)
#: The kinds `error_kind` sorts a storage error into.
ERROR_KINDS = ("unavailable", "refused", "timeout", "connection", "other")
#: Seconds: from a quick call to a long render.
DURATION_BUCKETS = (
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
    120.0,
    300.0,
    600.0,
    1800.0,
)


def error_kind(error: BaseException) -> str:
    """Which of `ERROR_KINDS` a storage error is: ``unavailable`` (the store could not be
    reached or answered past the adapter's retries), ``refused`` (it refused for a reason
    that lasts: a missing permission, a server of the wrong kind), ``timeout``,
    ``connection`` (a socket's error) or ``other``."""
    if isinstance(error, StorageError):
        return "unavailable" if error.transient else "refused"
    if isinstance(error, TimeoutError):
        return "timeout"
    if isinstance(error, OSError):
        return "connection"
    return "other"


class Metrics:
    """What a runner or worker tells of its work. Every method does nothing here.

    The methods are called on the event loop, in the middle of an item's work: they must
    be quick and must not raise.
    """

    def item(self, event: str, seconds: float | None = None) -> None:
        """An item's event (one of `ITEM_EVENTS`); ``seconds``: how long the attempt
        ran, for an attempt that ended (`None` when not known)."""

    def storage_error(self, error: BaseException) -> None:
        """The store failed a step that the runner or worker outlived (it waits and goes
        on): see `error_kind`."""

    def track(self, name: str, running: Callable[[], int]) -> Callable[[], None]:
        """Read how many items ``name`` (a worker's name) runs, whenever the metrics are
        read, until the returned function is called."""
        return _nothing


def _nothing() -> None:
    return None


class PrometheusMetrics(Metrics):
    """`Metrics` counted with ``prometheus_client``, in ``registry``.

    Args:
        registry: where the metrics are registered: prometheus_client's default registry
            (what ``start_http_server`` and ``make_asgi_app`` serve unless told
            otherwise), or one of your own. One `PrometheusMetrics` per registry: give the
            same one to every runner and worker of the process.
        namespace: the first part of every name.
        buckets: the upper bounds, in seconds, of the item duration histogram.

    Raises:
        ImportError: prometheus_client is not installed.
        ValueError: ``namespace`` is not a metric name's start, or a name is taken in
            ``registry`` (a second `PrometheusMetrics` in it).
    """

    def __init__(
        self,
        registry: Any = None,
        *,
        namespace: str = "batchkit",
        buckets: Iterable[float] = DURATION_BUCKETS,
    ) -> None:
        try:
            import prometheus_client
        except ImportError as exc:
            raise ImportError(
                "PrometheusMetrics needs prometheus_client: pip install 'batchkit[metrics]'"
            ) from exc
        from prometheus_client import Counter, Histogram

        if not namespace.isidentifier() or namespace.startswith("__"):
            raise ValueError(f"namespace must be a metric name's start, got {namespace!r}")
        if registry is None:
            registry = prometheus_client.REGISTRY
        self.registry = registry
        common: dict[str, Any] = {"namespace": namespace, "registry": registry}
        self.attempts = Counter("item_attempts", "Attempts started.", **common)
        self.claims = Counter(
            "claims", "Items claimed from the store (started, or handed back unrun).", **common
        )
        self.finished = Counter(
            "items_finished", "Items ended for good, by state.", ["state"], **common
        )
        self.retries = Counter(
            "item_retries", "Failed attempts put back to queued for another try.", **common
        )
        self.released = Counter(
            "items_released",
            "Items handed back to queued unfinished or unrun (a worker stopping).",
            **common,
        )
        self.lease_losses = Counter(
            "lease_losses",
            "Outcomes refused because another runner had taken the item over.",
            **common,
        )
        self.storage_errors = Counter(
            "storage_errors", "Store failures outlived, by kind.", ["kind"], **common
        )
        self.duration = Histogram(
            "item_duration_seconds",
            "How long attempts ran, by outcome.",
            ["outcome"],
            buckets=tuple(buckets),
            **common,
        )
        # Every label value shows from the start, at 0: a rate needs the series to exist.
        self._finished = {
            state: self.finished.labels(state) for state in ("succeeded", "failed", "cancelled")
        }
        for kind in ERROR_KINDS:
            self.storage_errors.labels(kind)
        self._duration = {
            outcome: self.duration.labels(outcome)
            for outcome in ("succeeded", "failed", "retrying", "cancelled")
        }
        self._running = _Running(f"{namespace}_running_items")
        registry.register(self._running)

    def item(self, event: str, seconds: float | None = None) -> None:
        if event == "started":
            self.attempts.inc()
            self.claims.inc()
            return
        duration = self._duration.get(event)
        if duration is not None:
            if event == "retrying":
                self.retries.inc()
            else:
                self._finished[event].inc()
            if seconds is not None:
                duration.observe(seconds)
        elif event == "released":
            self.released.inc()
        elif event == "refused":
            self.lease_losses.inc()
        elif event == "handed_back":
            self.claims.inc()
            self.released.inc()

    def storage_error(self, error: BaseException) -> None:
        self.storage_errors.labels(error_kind(error)).inc()

    def track(self, name: str, running: Callable[[], int]) -> Callable[[], None]:
        return self._running.add(name, running)


class _Running:
    """The gauge of running items per worker, read from each when the metrics are read."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._lock = threading.Lock()
        self._sources: dict[int, tuple[str, Callable[[], int]]] = {}
        self._next = 0

    def add(self, name: str, running: Callable[[], int]) -> Callable[[], None]:
        with self._lock:
            token = self._next
            self._next += 1
            self._sources[token] = (name, running)

        def remove() -> None:
            with self._lock:
                self._sources.pop(token, None)

        return remove

    def describe(self) -> Iterator[Any]:
        from prometheus_client.core import GaugeMetricFamily

        yield GaugeMetricFamily(self.name, _RUNNING_HELP, labels=["worker"])

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import GaugeMetricFamily

        family = GaugeMetricFamily(self.name, _RUNNING_HELP, labels=["worker"])
        with self._lock:
            sources = list(self._sources.values())
        totals: dict[str, int] = {}
        for name, running in sources:
            try:
                totals[name] = totals.get(name, 0) + int(running())
            except Exception:  # a scrape must not fail for one source
                continue
        for name, total in sorted(totals.items()):
            family.add_metric([name], total)
        yield family


_RUNNING_HELP = "Items running now, per worker (in-process runners: in-process)."
