"""The studio under test: in process (httpx over ASGI) and as a real uvicorn server.

The browser tests drive Debian's Chromium (``/usr/bin/chromium``, installed by
``.ci/run``; ``BATCHKIT_TEST_CHROMIUM`` names another) through Playwright. Without it they
skip, and fail when ``CI=true``: CI never passes by skipping.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from .._servers import ServerProcess, free_port

if TYPE_CHECKING:
    from collections.abc import Iterator

__all__ = ["ARTIFACTS", "Studio", "new_page", "screenshot"]

ROOT = Path(__file__).resolve().parents[3]
#: Screenshots and logs of the browser tests (kept after the run; CI can collect them).
ARTIFACTS = Path(os.environ.get("BATCHKIT_TEST_ARTIFACTS", ROOT / "test-artifacts"))
CHROMIUM = os.environ.get("BATCHKIT_TEST_CHROMIUM", "/usr/bin/chromium")
#: How each pause of the generator is scaled: items take about 1.2 s.
SPEED = "0.6"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def studio_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """The studio's settings for one test: its own database and output folder."""
    env = {
        "BATCHKIT_STORAGE": f"sqlite+aiosqlite:///{tmp_path / 'studio.db'}",
        "BATCHKIT_STUDIO_OUTPUT": str(tmp_path / "output"),
        "BATCHKIT_STUDIO_SPEED": SPEED,
        "BATCHKIT_STUDIO_CONCURRENCY": "2",
        "BATCHKIT_STUDIO_LEASE": "2",
        "BATCHKIT_STUDIO_SECRET_FILE": str(tmp_path / "studio.secret"),
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return env


class Studio(ServerProcess):
    """``python -m examples.fastapi_app`` (what ``make web`` runs) on a free port."""

    def __init__(self, env: dict[str, str], tmp_path: Path) -> None:
        port = free_port()
        command = [sys.executable, "-m", "examples.fastapi_app"]
        super().__init__(command, port, tmp_path, {**env, "PORT": str(port)})


@pytest.fixture
def studio(studio_env: dict[str, str], tmp_path: Path) -> Iterator[Studio]:
    server = Studio(studio_env, tmp_path)
    server.start()
    try:
        yield server
    finally:
        server.close()


def _require_chromium() -> None:
    if Path(CHROMIUM).exists() or shutil.which(CHROMIUM):
        return
    reason = f"Chromium is not installed at {CHROMIUM} (apt-get install chromium)"
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason}; CI=true requires it")
    pytest.skip(reason)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """Debian's Chromium, headless, driven by Playwright.

    Module-scoped, not session-scoped: Playwright's synchronous API keeps an event loop
    running in this thread while it is open, and the async tests of other modules need
    the thread to themselves.
    """
    _require_chromium()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(
            executable_path=CHROMIUM,
            headless=True,
            # This machine's network is closed: Chromium must not try to reach out.
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
            ],
        )
        try:
            yield chromium
        finally:
            chromium.close()


def new_page(
    browser: Any, studio: Studio, *, width: int = 1280, height: int = 900, owner: str | None = "ada"
) -> Any:
    """A page in a browser context of its own, with a window of ``width`` x ``height``,
    signed in to the studio as ``owner`` (through the sign-in form) unless that is `None`.
    Closing its context is the caller's."""
    context = browser.new_context(viewport={"width": width, "height": height}, base_url=studio.url)
    tab = context.new_page()
    tab.set_default_timeout(20_000)
    if owner is not None:
        tab.goto("/products")
        tab.fill("input[name=name]", owner)
        tab.click("button[type=submit]")
        tab.wait_for_url("**/products")
    return tab


@pytest.fixture
def page(browser: Any, studio: Studio) -> Iterator[Any]:
    """A new browser page, signed in to the studio as "ada"."""
    tab = new_page(browser, studio)
    try:
        yield tab
    finally:
        tab.context.close()


#: ``BATCHKIT_SCREENSHOTS=docs`` (``make screenshots``) writes the pages' screenshots into
#: docs/images as well, where the docs show them.
DOCS_IMAGES = ROOT / "docs" / "images"


def screenshot(tab: Any, name: str, *, full_page: bool = True, docs: bool = False) -> Path:
    """Save a screenshot (of the whole page, or of the window) among the test artifacts,
    and as ``docs/images/studio-<name>.png`` when ``docs`` and ``BATCHKIT_SCREENSHOTS=docs``."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    tab.wait_for_timeout(400)  # the progress bars' transitions end
    tab.screenshot(path=str(path), full_page=full_page)
    if docs and os.environ.get("BATCHKIT_SCREENSHOTS") == "docs":
        DOCS_IMAGES.mkdir(parents=True, exist_ok=True)
        (DOCS_IMAGES / f"studio-{name}.png").write_bytes(path.read_bytes())
    return path
