"""The Flask example in its production shape: ``gunicorn --preload -w 2``, on PostgreSQL,
under 200 concurrent submit-and-status pairs."""

from __future__ import annotations

import http.client
import json
import re
import secrets
import signal
import sys
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING

from batchkit import SyncBatchRunner
from tests.examples._servers import ServerProcess, free_port

from .conftest import hidden_fields

if TYPE_CHECKING:
    from pathlib import Path

    import pytest

    from .conftest import Store

THREADS = 20
PAIRS_PER_THREAD = 10
OWNER = "load"


class _Client:
    """One visitor over plain HTTP: a new connection per request, its session cookie kept."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.cookie = ""

    def request(self, method: str, path: str, form: str | None = None) -> tuple[int, str, str]:
        """``(status, Location, body)``."""
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        headers = {"Cookie": self.cookie} if self.cookie else {}
        if form is not None:
            headers["Content-Type"] = "application/x-www-form-urlencoded"
        try:
            connection.request(method, path, body=form, headers=headers)
            response = connection.getresponse()
            body = response.read().decode()
            if cookie := response.getheader("Set-Cookie"):
                self.cookie = cookie.split(";", 1)[0]
            return response.status, response.getheader("Location") or "", body
        finally:
            connection.close()


def _encode(fields: dict[str, str | list[str]]) -> str:
    from urllib.parse import urlencode

    return urlencode(fields, doseq=True)


def _visitor(port: int) -> tuple[_Client, str]:
    """A client signed in as `OWNER`, and its CSRF token."""
    client = _Client(port)
    status, _, body = client.request("GET", "/signin")
    assert status == 200, body
    status, _, body = client.request(
        "POST", "/signin", _encode({**hidden_fields(body), "name": OWNER})
    )
    assert status == 303, body
    status, _, body = client.request("GET", "/")
    assert status == 200, body
    return client, hidden_fields(body)["csrf_token"]


def _pairs(port: int) -> list[str]:
    """Sign in, then submit a batch and read its status, `PAIRS_PER_THREAD` times; the ids."""
    client, token = _visitor(port)
    made = []
    for n in range(PAIRS_PER_THREAD):
        form = {"csrf_token": token, "nonce": secrets.token_urlsafe(16)}
        products = [f"P-{1 + n % 12:03d}", f"P-{1 + (n + 5) % 12:03d}"]
        status, location, body = client.request(
            "POST", "/batches", _encode({**form, "product": products})
        )
        assert status == 303, body
        batch_id = location.removeprefix("/batches/")
        status, _, body = client.request("GET", f"/api/batches/{batch_id}")
        assert status == 200, body
        batch = json.loads(body)
        assert batch["id"] == batch_id
        assert [item["key"] for item in batch["items"]] == products
        made.append(batch_id)
    return made


def test_gunicorn_preload_serves_concurrent_visitors_from_two_workers(
    postgres_store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # No key given: the one generated in gunicorn's master (--preload) is the workers'.
    monkeypatch.delenv("BATCHKIT_FLASK_SECRET", raising=False)
    port = free_port()
    access = tmp_path / "access.log"
    command = [
        *(sys.executable, "-m", "gunicorn", "--preload", "-w", "2"),
        *("--bind", f"127.0.0.1:{port}", "--graceful-timeout", "10"),
        *("--access-logfile", str(access), "--access-logformat", "%(p)s %(s)s %(m)s %(U)s"),
        "examples.flask_app:create_app()",
    ]
    env = {"BATCHKIT_STORAGE": postgres_store.url, "BATCHKIT_PREFIX": postgres_store.prefix or ""}
    server = ServerProcess(command, port, tmp_path, env, ready="/signin")
    try:
        server.start()
        with ThreadPoolExecutor(THREADS) as pool:
            made = [i for ids in pool.map(_pairs, [port] * THREADS) for i in ids]
        assert server.stop(signal.SIGTERM) == 0, server.logs()
    finally:
        server.close()

    assert len(set(made)) == THREADS * PAIRS_PER_THREAD
    with SyncBatchRunner(postgres_store.url, prefix=postgres_store.prefix) as reader:
        stored = reader.batches(metadata={"owner": OWNER}, limit=1000)
    assert {status.batch_id for status in stored} == set(made)

    lines = access.read_text().splitlines()
    served = [re.fullmatch(r"<(\d+)> (\d{3}) (\w+) (\S+)", line) for line in lines]
    assert all(served), lines
    work = [m for m in served if m and m[4].startswith(("/batches", "/api/batches"))]
    assert len(work) == 2 * THREADS * PAIRS_PER_THREAD
    assert all(m[2] in {"200", "303"} for m in work)
    assert len({m[1] for m in work}) == 2  # both workers served
    logs = server.logs()
    assert "Traceback" not in logs
    # Made once, in the master, before the fork: both workers accept the same cookies.
    assert logs.count("generated a random session key") == 1, logs
