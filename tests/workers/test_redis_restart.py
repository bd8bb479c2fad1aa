"""A worker on a Redis server that crashes and comes back: nothing may be lost.

The test runs a Redis server of its own (the machine's ``redis-server``, on a free port,
with an append-only file synced on every write), so that it can SIGKILL it and start it
again without touching the Redis the other tests share.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from typing import TYPE_CHECKING

import anyio
import pytest

from .conftest import Store, Workers
from .test_faults import _check_finished, _hooks_of, _submit

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

pytestmark = pytest.mark.anyio


class RedisServer:
    """``redis-server`` on a port and a directory of its own, AOF on, fsync always."""

    def __init__(self, binary: str, workdir: Path) -> None:
        self.binary = binary
        self.workdir = workdir
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = int(sock.getsockname()[1])
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        log = self.workdir / "redis.log"
        self.process = subprocess.Popen(
            [
                self.binary,
                *("--port", str(self.port), "--bind", "127.0.0.1"),
                *("--dir", str(self.workdir), "--save", ""),
                *("--appendonly", "yes", "--appendfsync", "always"),
                *("--logfile", str(log)),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 30
        while True:
            try:
                with socket.create_connection(("127.0.0.1", self.port), 0.5) as sock:
                    sock.sendall(b"PING\r\n")
                    if sock.recv(64).startswith(b"+PONG"):
                        return  # loading the append-only file answers -LOADING
            except OSError:
                pass
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"redis-server did not start\n{log.read_text()}")
            time.sleep(0.02)

    def crash(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=30)
        self.process = None

    def close(self) -> None:
        if self.process is not None:
            self.crash()


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[RedisServer]:
    binary = shutil.which("redis-server")
    if binary is None:
        reason = "redis-server is not installed: the restart test runs a server of its own"
        if os.environ.get("CI") == "true":
            pytest.fail(f"{reason}; CI=true requires it")
        pytest.skip(reason)
    (tmp_path / "redis").mkdir()
    server = RedisServer(binary, tmp_path / "redis")
    server.start()
    try:
        yield server
    finally:
        server.close()


@pytest.mark.parametrize(
    "down",
    [
        pytest.param(0.3, id="back-within-the-retries"),
        pytest.param(6.0, id="down-longer-than-the-retries"),
    ],
)
async def test_a_redis_crash_and_restart_loses_nothing(
    own_redis: RedisServer, tmp_path: Path, down: float
) -> None:
    store = Store("redis", own_redis.url, "restart")
    batch = await _submit(store, 600)  # about 2 s of work: both crashes meet it
    workers = Workers(store, tmp_path)
    try:
        # A lease far longer than the outage and the retries after it: no lease lapses.
        process = await workers.start(
            *(
                "--concurrency",
                "4",
                "--lease-seconds",
                "30",
                "--batch",
                batch.id,
                "--exit-when-idle",
            ),
            sleep=0.01,
        )
        with anyio.fail_after(60):
            while not workers.started_by(process.pid):  # noqa: ASYNC110 - a file, no event
                await anyio.sleep(0.05)
        for _ in range(2):
            await anyio.sleep(0.3)
            assert process.returncode is None, "the worker ended before the crash"
            own_redis.crash()
            await anyio.sleep(down)
            own_redis.start()
        assert await workers.wait(process, 120) == 0, workers.logs()
        logged = workers.log_of(0).read_text(errors="replace")
        assert "fault, retrying" in logged, "no step met the crash: the test proved nothing"
        runs = await _check_finished(store, batch, workers)
        # An item that ended while the server was down kept its outcome until the server
        # came back: no generator ran twice. A claim the server made just before it died,
        # whose answer never came, was handed to the worker's next claim: no item waited
        # for its lease to lapse.
        assert set(runs.values()) == {1}, {k: n for k, n in runs.items() if n > 1}
        assert "recovered" not in logged, "an item waited for its lease to lapse"
        assert _hooks_of(workers, batch) == ["completed"]
    finally:
        await workers.aclose()
