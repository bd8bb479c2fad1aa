"""``python -m batchkit worker --metrics-port``: Prometheus metrics scraped from a real
worker process during a real run, and parsed with prometheus_client's own parser."""

from __future__ import annotations

import re
import signal
import socket
import urllib.request
from typing import TYPE_CHECKING

import anyio
import pytest
from prometheus_client.parser import text_string_to_metric_families

from batchkit import BatchRunner, BatchState, ItemSpec

if TYPE_CHECKING:
    from anyio.abc import Process

    from .conftest import Store, Workers

pytestmark = pytest.mark.anyio


async def _nothing(ctx: object) -> None:
    return None


async def _port_of(workers: Workers, n: int, process: Process) -> int:
    """The port the worker logged that it serves its metrics on."""
    with anyio.fail_after(30):
        while True:
            found = re.search(
                r"metrics on http://127\.0\.0\.1:(\d+)/metrics",
                workers.log_of(n).read_text(errors="replace"),
            )
            if found:
                return int(found.group(1))
            assert process.returncode is None, workers.logs()
            await anyio.sleep(0.05)


def _scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample on the worker's /metrics, by name and labels."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as reply:
        assert reply.status == 200
        assert reply.headers["Content-Type"].startswith("text/plain")
        text = reply.read().decode()
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def _value(
    samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str
) -> float:
    return samples[(name, tuple(sorted(labels.items())))]


@pytest.mark.parametrize("store", ["sqlite", "postgres", "redis"], indirect=True)
async def test_a_worker_serves_its_metrics_while_it_runs(store: Store, workers: Workers) -> None:
    plain = [ItemSpec(key=f"plain-{n:02}") for n in range(20)]
    flaky = [ItemSpec(key=f"flaky-{n}", payload={"flaky": True}) for n in range(5)]
    failing = [ItemSpec(key=f"fail-{n}", payload={"fail": True}) for n in range(3)]
    async with store.storage() as storage:
        runner = BatchRunner(storage, _nothing)
        batch = await runner.submit(plain + flaky + failing)
        process = await workers.start(
            *("--concurrency", "4", "--max-attempts", "2", "--backoff", "0"),
            *("--metrics-port", "0", "--poll-interval", "0.05"),
            generator="metered",
            sleep=0.2,
        )
        port = await _port_of(workers, 0, process)
        # During the run: items are running on this worker, and nothing is labelled by
        # batch or item.
        with anyio.fail_after(30):
            while True:
                during = await anyio.to_thread.run_sync(_scrape, port)
                # (No series until the worker has started: it shows from then on.)
                running = ("batchkit_running_items", (("worker", "worker-0"),))
                if during.get(running, 0.0) > 0:
                    break
                await anyio.sleep(0.02)
        assert _value(during, "batchkit_running_items", worker="worker-0") <= 4
        labels = {value for _, pairs in during for _, value in pairs}
        assert not any(batch.id in value or "plain-" in value for value in labels), labels
        with anyio.fail_after(60):
            while not (await runner.status(batch.id)).is_terminal:  # noqa: ASYNC110
                await anyio.sleep(0.05)
        status = await runner.status(batch.id)
    assert status.state is BatchState.COMPLETED_WITH_ERRORS
    after = await anyio.to_thread.run_sync(_scrape, port)
    process.send_signal(signal.SIGTERM)
    assert await workers.wait(process, 30) == 0, workers.logs()

    # 20 + 5 items succeeded (the 5 at their second attempt), 3 failed twice.
    assert _value(after, "batchkit_item_attempts_total") == 20 + 5 * 2 + 3 * 2
    assert _value(after, "batchkit_claims_total") == 36
    assert _value(after, "batchkit_items_finished_total", state="succeeded") == 25
    assert _value(after, "batchkit_items_finished_total", state="failed") == 3
    assert _value(after, "batchkit_items_finished_total", state="cancelled") == 0
    assert _value(after, "batchkit_item_retries_total") == 5 + 3
    assert _value(after, "batchkit_lease_losses_total") == 0
    assert _value(after, "batchkit_item_duration_seconds_count", outcome="succeeded") == 25
    assert _value(after, "batchkit_item_duration_seconds_count", outcome="retrying") == 8
    assert _value(after, "batchkit_item_duration_seconds_count", outcome="failed") == 3
    # Each success slept 0.2 s: the histogram saw it.
    assert _value(after, "batchkit_item_duration_seconds_sum", outcome="succeeded") >= 25 * 0.2
    assert (
        _value(after, "batchkit_item_duration_seconds_bucket", outcome="succeeded", le="0.1") == 0
    )
    assert (
        _value(after, "batchkit_item_duration_seconds_bucket", outcome="succeeded", le="+Inf") == 25
    )
    assert _value(after, "batchkit_running_items", worker="worker-0") == 0
    for kind in ("unavailable", "refused", "timeout", "connection", "other"):
        assert _value(after, "batchkit_storage_errors_total", kind=kind) == 0


@pytest.mark.parametrize("store", ["sqlite"], indirect=True)  # the store plays no part
async def test_a_taken_metrics_port_stops_the_worker_with_a_clear_error(
    store: Store, workers: Workers
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        process = await workers.start("--metrics-port", f"127.0.0.1:{port}")
        code = await workers.wait(process, 30)
    logged = workers.log_of(0).read_text(errors="replace")
    assert code == 1, logged
    assert f"cannot serve metrics on 127.0.0.1:{port}" in logged
    assert "Traceback" not in logged
