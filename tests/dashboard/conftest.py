"""The dashboard served by real processes (``python -m batchkit dashboard``, and a host app
under uvicorn) on a SQLite file, driven in Debian's Chromium.

Without Chromium the browser tests skip, and fail when ``CI=true``."""

from __future__ import annotations

import os
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

import anyio
import pytest

from batchkit import Batch, BatchRunner, ItemSpec, open_storage
from tests.examples._servers import ROOT, ServerProcess, free_port

# Debian's Chromium, driven by Playwright: the studio's browser fixture.
from tests.examples.fastapi_app.conftest import ARTIFACTS, browser

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Iterator
    from pathlib import Path

T = TypeVar("T")

__all__ = ["Served", "browser", "screenshot"]

DOCS_IMAGES = ROOT / "docs" / "images"


@dataclass
class Served:
    """A dashboard served on a SQLite file, and what the test made there."""

    server: ServerProcess
    url: str
    storage_url: str
    tmp_path: Path

    def submit(self, items: list[ItemSpec | str], **options: Any) -> Batch:
        async def submit() -> Batch:
            async with open_storage(self.storage_url) as storage:
                return await BatchRunner(storage, _generate).submit(items, **options)

        return _in_thread(submit)

    def run(self, batch: Batch) -> None:
        async def run() -> None:
            async with open_storage(self.storage_url) as storage:
                await BatchRunner(storage, _generate).run(batch.id)

        _in_thread(run)

    def page(
        self, browser: Any, *, javascript: bool = True, cookies: dict[str, str] | None = None
    ) -> Any:
        context = browser.new_context(
            viewport={"width": 1280, "height": 860},
            base_url=self.url,
            java_script_enabled=javascript,
        )
        if cookies:
            context.add_cookies(
                [{"name": k, "value": v, "url": self.url} for k, v in cookies.items()]
            )
        tab = context.new_page()
        tab.set_default_timeout(20_000)
        return tab


def _in_thread(work: Callable[[], Awaitable[T]]) -> T:
    """Run ``work`` in a thread of its own: Playwright's synchronous API keeps an event
    loop running in the test's thread."""
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(anyio.run, work).result(timeout=120)


async def _generate(ctx: Any) -> dict[str, str]:
    if ctx.key.startswith("bad"):
        raise ValueError(f"{ctx.key}: the product has no picture")
    return {"video": f"{ctx.key}.mp4"}


def _serve(tmp_path: Path, command: list[str], ready: str, env: dict[str, str]) -> Iterator[Served]:
    port = free_port()
    storage_url = env["BATCHKIT_STORAGE"]
    server = ServerProcess(
        [part.replace("{port}", str(port)) for part in command], port, tmp_path, env, ready=ready
    )
    try:
        server.start()
        yield Served(server, f"http://127.0.0.1:{port}", storage_url, tmp_path)
    finally:
        server.close()


def _storage_url(tmp_path: Path) -> str:
    return f"sqlite+aiosqlite:///{tmp_path / 'app.db'}"


def _create(url: str) -> None:
    async def create() -> None:
        async with open_storage(url):
            pass  # the tables: the dashboard's command never creates them

    _in_thread(create)


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Served]:
    """``python -m batchkit dashboard`` on a SQLite file of its own."""
    url = _storage_url(tmp_path)
    _create(url)
    command = [sys.executable, "-m", "batchkit", "dashboard", "--storage", url, "--port", "{port}"]
    yield from _serve(tmp_path, command, "/", {"BATCHKIT_STORAGE": url})


@pytest.fixture
def read_only(tmp_path: Path) -> Iterator[Served]:
    """The same, with ``--read-only``."""
    url = _storage_url(tmp_path)
    _create(url)
    command = [
        *(sys.executable, "-m", "batchkit", "dashboard", "--storage", url),
        *("--port", "{port}", "--read-only"),
    ]
    yield from _serve(tmp_path, command, "/", {"BATCHKIT_STORAGE": url})


@pytest.fixture
def hosted(tmp_path: Path) -> Iterator[Served]:
    """A host app (`tests.dashboard._host`) with the dashboard under /ops/batchkit."""
    url = _storage_url(tmp_path)
    _create(url)
    command = [
        *(sys.executable, "-m", "uvicorn", "tests.dashboard._host:app"),
        *("--host", "127.0.0.1", "--port", "{port}", "--log-level", "warning"),
    ]
    yield from _serve(tmp_path, command, "/", {"BATCHKIT_STORAGE": url})


def screenshot(tab: Any, name: str, *, docs: bool = False) -> Path:
    """Save a screenshot among the test artifacts, and as ``docs/images/dashboard-<name>.png``
    when ``docs`` and ``BATCHKIT_SCREENSHOTS=docs``."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"dashboard-{name}.png"
    tab.wait_for_timeout(300)
    tab.screenshot(path=str(path), full_page=True)
    if docs and os.environ.get("BATCHKIT_SCREENSHOTS") == "docs":
        DOCS_IMAGES.mkdir(parents=True, exist_ok=True)
        (DOCS_IMAGES / f"dashboard-{name}.png").write_bytes(path.read_bytes())
    return path
