"""`batchkit.metrics`: what a runner or worker tells a `Metrics`, and how
`PrometheusMetrics` counts it (a worker process serving them: tests/workers/test_metrics.py)."""

from __future__ import annotations

import subprocess
import sys
from collections import Counter
from typing import TYPE_CHECKING, Any

import anyio
import anyio.lowlevel
import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from batchkit import BatchRunner, MemoryStorage, RetryPolicy, Worker
from batchkit.exceptions import StorageError
from batchkit.metrics import Metrics, PrometheusMetrics, error_kind

from .helpers import CountingStorage

if TYPE_CHECKING:
    from collections.abc import Callable

    from batchkit import ItemContext

pytestmark = pytest.mark.anyio


class Recording(Metrics):
    """A `Metrics` of a host's own: it records what it hears."""

    def __init__(self) -> None:
        self.events: Counter[str] = Counter()
        self.seconds: dict[str, list[float]] = {}
        self.errors: list[str] = []
        self.running: dict[str, Callable[[], int]] = {}

    def item(self, event: str, seconds: float | None = None) -> None:
        self.events[event] += 1
        if seconds is not None:
            self.seconds.setdefault(event, []).append(seconds)

    def storage_error(self, error: BaseException) -> None:
        self.errors.append(error_kind(error))

    def track(self, name: str, running: Callable[[], int]) -> Callable[[], None]:
        self.running[name] = running
        return lambda: self.running.pop(name)


def _samples(registry: CollectorRegistry) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = generate_latest(registry).decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


async def _generate(ctx: ItemContext) -> str:
    if ctx.key.startswith("bad"):
        raise ValueError("no")
    if ctx.key.startswith("flaky") and ctx.attempt == 1:
        raise ConnectionError("busy")
    await anyio.sleep(0.001)
    return ctx.key


_KEYS = [*(f"ok{n}" for n in range(10)), "flaky1", "flaky2", "bad1"]
_RETRY = RetryPolicy(max_attempts=2, backoff=0.001, jitter=0)


@pytest.mark.parametrize("group_commit", [0.0, 0.005], ids=["alone", "grouped"])
async def test_a_run_tells_its_metrics_every_event(group_commit: float) -> None:
    metrics = Recording()
    runner = BatchRunner(
        MemoryStorage(),
        _generate,
        concurrency=2,
        retry=_RETRY,
        metrics=metrics,
        group_commit=group_commit,
    )
    batch = await runner.submit(_KEYS)
    seen_running: list[int] = []

    async def watch() -> None:
        while True:
            if "in-process" in metrics.running:
                seen_running.append(metrics.running["in-process"]())
            await anyio.lowlevel.checkpoint()

    async with anyio.create_task_group() as tg:
        tg.start_soon(watch)
        await runner.run(batch.id)
        tg.cancel_scope.cancel()
    # Grouped, a slot may hand back an item it claimed ahead (it runs later): a claim,
    # not an attempt.
    handed_back = metrics.events.pop("handed_back", 0)
    assert group_commit or not handed_back
    assert metrics.events == {
        "started": 10 + 2 * 2 + 2,
        "succeeded": 12,
        "retrying": 3,
        "failed": 1,
    }
    assert len(metrics.seconds["succeeded"]) == 12
    assert all(s >= 0 for s in metrics.seconds["succeeded"])
    assert metrics.running == {}, "the run stopped being tracked when it ended"
    assert max(seen_running) >= 1
    assert max(seen_running) <= 2


async def test_prometheus_counts_a_run_in_its_own_registry() -> None:
    registry = CollectorRegistry()
    metrics = PrometheusMetrics(registry)
    runner = BatchRunner(MemoryStorage(), _generate, retry=_RETRY, metrics=metrics)
    batch = await runner.submit(_KEYS)
    await runner.run(batch.id)
    samples = _samples(registry)

    def value(name: str, **labels: str) -> float:
        return samples[(name, tuple(sorted(labels.items())))]

    assert value("batchkit_item_attempts_total") == 16
    assert value("batchkit_items_finished_total", state="succeeded") == 12
    assert value("batchkit_items_finished_total", state="failed") == 1
    assert value("batchkit_item_retries_total") == 3
    finished = {
        dict(labels)["state"]
        for name, labels in samples
        if name.startswith("batchkit_items_finished_total")
    }
    assert finished == {"succeeded", "failed", "cancelled"}
    assert value("batchkit_item_duration_seconds_count", outcome="succeeded") == 12
    assert value("batchkit_storage_errors_total", kind="unavailable") == 0
    # No batch id, no key: a label takes a few fixed values.
    labels = {v for _, pairs in samples for _, v in pairs}
    assert not any(batch.id in v or v.startswith(("ok", "flaky", "bad")) for v in labels)
    # The run has ended: no worker shows as running.
    assert not any(name == "batchkit_running_items" for name, _ in samples)


async def test_a_worker_counts_the_store_failures_it_outlives() -> None:
    storage = CountingStorage()
    failures = 3

    async def down(*args: Any, **kwargs: Any) -> None:
        nonlocal failures
        if failures:
            failures -= 1
            raise StorageError("Error 111 connecting to 127.0.0.1:6379")

    batch = await BatchRunner(storage, _generate).submit(["a", "b"])  # type: ignore[arg-type]
    storage.before["finish"] = down
    storage.before["finish_group"] = down
    registry = CollectorRegistry()
    worker = Worker(
        storage,  # type: ignore[arg-type]
        _generate,
        lease_seconds=0.3,
        batch_ids=[batch.id],
        exit_when_idle=True,
        metrics=PrometheusMetrics(registry),
        name="w-1",
    )
    with anyio.fail_after(10):
        await worker.run()
    assert failures == 0, "the store never failed: the test proved nothing"
    samples = _samples(registry)
    assert samples[("batchkit_storage_errors_total", (("kind", "unavailable"),))] == 3
    assert samples[("batchkit_items_finished_total", (("state", "succeeded"),))] == 2


def test_error_kinds() -> None:
    assert error_kind(StorageError("down")) == "unavailable"
    refused = StorageError("no permission")
    refused.transient = False
    assert error_kind(refused) == "refused"
    assert error_kind(TimeoutError()) == "timeout"
    assert error_kind(ConnectionResetError()) == "connection"
    assert error_kind(ValueError()) == "other"


def test_one_prometheus_metrics_per_registry_and_a_valid_namespace() -> None:
    registry = CollectorRegistry()
    PrometheusMetrics(registry)
    with pytest.raises(ValueError, match="Duplicated"):
        PrometheusMetrics(registry)
    PrometheusMetrics(registry, namespace="render")  # another name: another set
    with pytest.raises(ValueError, match="namespace"):
        PrometheusMetrics(CollectorRegistry(), namespace="no spaces")


@pytest.mark.parametrize("build", [BatchRunner, Worker])
def test_metrics_must_be_metrics(build: type[Any]) -> None:
    with pytest.raises(TypeError, match="metrics must be"):
        build(MemoryStorage(), _generate, metrics="prometheus")


def test_importing_batchkit_metrics_loads_no_prometheus_client() -> None:
    code = (
        "import sys, batchkit, batchkit.metrics, batchkit.cli; "
        "assert 'prometheus_client' not in sys.modules, 'loaded'"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
