"""examples/lifespan_worker.py: a server restarted in the middle of a batch resumes it.

The app runs in a real uvicorn process on SQLite; the test kills it (SIGKILL, then
SIGTERM) while items are running and starts it again.
"""

from __future__ import annotations

import json
import signal
import sys
import time
import urllib.error
import urllib.request
from typing import TYPE_CHECKING, Any

import pytest

from ._servers import ServerProcess, free_port

if TYPE_CHECKING:
    from pathlib import Path

__all__: list[str] = []

pytest.importorskip("fastapi", reason="the examples extra is not installed")
pytest.importorskip("uvicorn", reason="the examples extra is not installed")


class Server(ServerProcess):
    """The example app under uvicorn, started and stopped at will."""

    def __init__(self, tmp_path: Path) -> None:
        port = free_port()
        command = [
            sys.executable,
            "-m",
            "uvicorn",
            "examples.lifespan_worker:app",
            "--port",
            str(port),
            "--log-level",
            "warning",
        ]
        env = {
            "BATCHKIT_STORAGE": f"sqlite+aiosqlite:///{tmp_path / 'app.db'}",
            "BATCHKIT_EXAMPLE_ITEM_SECONDS": "0.4",
            "BATCHKIT_EXAMPLE_LEASE": "1",
        }
        super().__init__(command, port, tmp_path, env)

    def get(self, path: str) -> Any:
        with urllib.request.urlopen(f"{self.url}{path}", timeout=5) as answer:
            return json.loads(answer.read())

    def post(self, path: str, body: Any) -> Any:
        request = urllib.request.Request(
            f"{self.url}{path}",
            data=json.dumps(body).encode(),
            headers={"content-type": "application/json"},
            method="POST",
        )
        with urllib.request.urlopen(request, timeout=5) as answer:
            return json.loads(answer.read())

    def wait_for(self, batch_id: str, done: Any, timeout: float = 30) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            status: dict[str, Any] = self.get(f"/batches/{batch_id}")
            if done(status):
                return status
            if time.monotonic() > deadline:
                raise AssertionError(f"gave up waiting: {status}\n{self.logs()}")
            time.sleep(0.05)


@pytest.fixture
def server(tmp_path: Path) -> Any:
    found = Server(tmp_path)
    try:
        yield found
    finally:
        found.close()


KEYS = [f"product-{n:02}" for n in range(16)]


def test_a_server_killed_mid_batch_resumes_it_when_it_starts_again(server: Server) -> None:
    server.start()
    batch = server.post("/batches", {"keys": KEYS})
    assert batch["total"] == len(KEYS)
    # Killed with items running and items still queued.
    server.wait_for(batch["batch_id"], lambda s: s["counts"]["succeeded"] >= 4)
    assert server.stop(signal.SIGKILL) == -signal.SIGKILL

    server.start()
    final = server.wait_for(batch["batch_id"], lambda s: s["state"] == "completed")
    assert final["counts"]["succeeded"] == len(KEYS)
    assert [i["key"] for i in final["items"]] == KEYS
    assert all(i["result"]["video"] == f"videos/{i['key']}.mp4" for i in final["items"])
    # The items that were running when the server died ran again, after their lease.
    assert any(i["attempt"] == 2 for i in final["items"]), final["items"]


def test_a_server_stopped_gracefully_hands_back_its_items(server: Server) -> None:
    server.start()
    batch = server.post("/batches", {"keys": KEYS})
    server.wait_for(batch["batch_id"], lambda s: s["counts"]["running"] >= 2)
    # uvicorn shuts the app down (its lifespan stops the worker), then re-raises the signal.
    assert server.stop(signal.SIGTERM) in (0, -signal.SIGTERM)
    # Read the file directly: no server runs now, and nothing may be left running.
    import anyio

    from batchkit import BatchRunner, open_storage

    async def counts() -> dict[str, int]:
        async with open_storage(server.env["BATCHKIT_STORAGE"]) as storage:
            status = await BatchRunner(storage, lambda ctx: None).status(batch["batch_id"])
        return {state.value: n for state, n in status.counts.items()}

    stopped = anyio.run(counts)
    assert stopped["running"] == 0
    assert stopped["succeeded"] + stopped["queued"] == len(KEYS)
    assert stopped["queued"] > 0

    server.start()
    final = server.wait_for(batch["batch_id"], lambda s: s["state"] == "completed")
    assert final["counts"]["succeeded"] == len(KEYS)


def _refusal(call: Any, *args: Any) -> tuple[int, str]:
    """The status and body of a request the app refuses."""
    with pytest.raises(urllib.error.HTTPError) as refused:
        call(*args)
    with refused.value as answer:
        return answer.code, answer.read().decode()


def test_bad_input_is_refused_and_an_unknown_batch_is_404(server: Server) -> None:
    server.start()
    assert _refusal(server.post, "/batches", {"keys": []})[0] == 422
    code, body = _refusal(server.post, "/batches", {"keys": ["a", "a"]})
    assert code == 422
    assert "duplicate" in body
    missing = _refusal(server.get, "/batches/01890000-0000-7000-8000-000000000000")
    assert missing[0] == 404
