"""The Flask example in Debian's Chromium: served by ``python -m examples.flask_app``, its
items run by ``python -m batchkit worker``, the batch page followed live to its end and
its failed item retried."""

from __future__ import annotations

import subprocess
import sys
from typing import TYPE_CHECKING, Any

from tests.examples._servers import ServerProcess, free_port

if TYPE_CHECKING:
    from pathlib import Path

#: Slow enough for the page to show the items running between two polls.
ITEM_SECONDS = "2"
#: How long a check waits, in milliseconds: a worker process takes a while to start on a
#: busy machine.
WAIT = 20_000


def test_start_watch_and_retry_a_batch_in_chromium(browser: Any, tmp_path: Path) -> None:
    from playwright.sync_api import expect

    storage = f"sqlite+aiosqlite:///{tmp_path / 'flask.db'}"
    env = {"BATCHKIT_STORAGE": storage, "BATCHKIT_FLASK_ITEM_SECONDS": ITEM_SECONDS}
    port = free_port()
    server = ServerProcess(
        [sys.executable, "-m", "examples.flask_app"],
        port,
        tmp_path,
        {**env, "PORT": str(port)},
        ready="/signin",
    )
    worker: subprocess.Popen[bytes] | None = None
    context = browser.new_context(base_url=f"http://127.0.0.1:{port}")
    try:
        server.start()
        tab = context.new_page()
        tab.set_default_timeout(WAIT)
        # A script or a style the page's Content-Security-Policy blocks would show here.
        problems: list[str] = []
        tab.on("pageerror", lambda error: problems.append(str(error)))
        tab.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
        tab.goto("/")
        tab.wait_for_url("**/signin")
        tab.fill("input[name=name]", "ada")
        tab.click("button[type=submit]")
        tab.wait_for_url(f"http://127.0.0.1:{port}/")
        for product in ("P-001", "P-007", "P-003"):
            tab.check(f"input[value={product}]")
        tab.click("text=Make the videos")
        tab.wait_for_url("**/batches/*")
        batch_url = tab.url
        expect(tab.locator("#batch-state")).to_have_text("queued", timeout=WAIT)

        worker = subprocess.Popen(
            [
                *(sys.executable, "-m", "batchkit", "worker", "--storage", storage),
                *("--generator", "examples.flask_app.generator:render", "--concurrency", "3"),
                *("--exit-when-idle", "--no-live"),
            ],
            cwd=tmp_path,
            env={**server.env, **env},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        # The page follows the batch without a reload: running, then its end.
        expect(tab.locator("#batch-state")).to_have_text("running", timeout=WAIT)
        assert tab.url == batch_url
        expect(tab.locator("#batch-state")).to_have_text("completed_with_errors", timeout=WAIT)
        failed = tab.locator("tr[data-key=P-007]")
        expect(failed.locator(".state")).to_have_text("failed", timeout=WAIT)
        expect(failed.locator(".outcome")).to_contain_text(
            "Steel bottle (P-007) has no picture", timeout=WAIT
        )
        expect(tab.locator("tr[data-key=P-001] .outcome")).to_have_text("P-001.mp4", timeout=WAIT)
        assert worker.wait(timeout=30) == 0

        tab.click("#retry")
        tab.wait_for_url(lambda url: "/batches/" in url and url != batch_url)
        expect(tab.locator("main")).to_contain_text(
            f"A retry of {batch_url.rsplit('/', 1)[1]}", timeout=WAIT
        )
        expect(tab.locator("tbody tr")).to_have_count(1, timeout=WAIT)
        expect(tab.locator("tr[data-key=P-007] .state")).to_have_text("queued", timeout=WAIT)
        assert problems == []
    finally:
        context.close()
        if worker is not None and worker.poll() is None:
            worker.kill()
            worker.wait()
        server.close()
