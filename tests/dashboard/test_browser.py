"""The dashboard in Debian's Chromium, as an operator uses it: list and filter batches,
open one, read a failed item's traceback, watch a batch go live while a worker runs it,
cancel, retry failed, delete; read-only mode, a host's refusal, and reading without
JavaScript."""

from __future__ import annotations

import os
import subprocess
import sys
from typing import TYPE_CHECKING, Any

from batchkit import ItemSpec

from .conftest import ROOT, screenshot

if TYPE_CHECKING:
    from .conftest import Served


def _batch_link(tab: Any, batch_id: str) -> Any:
    return tab.locator(f'a[href$="/batches/{batch_id}"]')


def test_an_operator_finds_a_failing_item_and_retries_it(browser: Any, served: Served) -> None:
    failing = served.submit(
        ["mug", "poster", "bad-frame", "lamp"], metadata={"owner": "ada", "campaign": "spring"}
    )
    served.run(failing)
    waiting = served.submit([f"k{n}" for n in range(3)], metadata={"owner": "bob"})
    tab = served.page(browser)
    tab.goto("/")
    assert _batch_link(tab, failing.id).count() == 1
    assert _batch_link(tab, waiting.id).count() == 1
    screenshot(tab, "batches", docs=True)
    # Filter: the batches with errors, then by metadata.
    tab.check('input[name=state][value="completed_with_errors"]')
    tab.click("button:has-text('Filter')")
    tab.wait_for_url("**state=completed_with_errors**")
    assert _batch_link(tab, waiting.id).count() == 0
    tab.fill("input[name=where]", "owner=bob")
    tab.uncheck('input[name=state][value="completed_with_errors"]')
    tab.click("button:has-text('Filter')")
    tab.wait_for_url("**where=owner**")
    assert _batch_link(tab, failing.id).count() == 0
    assert _batch_link(tab, waiting.id).count() == 1
    tab.click("text=Clear")
    # Open the batch, show its failed items, open the traceback.
    _batch_link(tab, failing.id).click()
    tab.wait_for_url(f"**/batches/{failing.id}")
    assert tab.locator("[data-state]").inner_text() == "completed_with_errors"
    assert tab.locator('[data-count="failed"]').inner_text() == "1"
    tab.click("nav.tabs >> text=failed")
    tab.wait_for_url("**state=failed**")
    rows = tab.locator("tr[data-key]")
    assert rows.count() == 1
    assert rows.first.get_attribute("data-key") == "bad-frame"
    # (The docs' picture before the traceback opens: a traceback shows this machine's paths.)
    screenshot(tab, "batch-failed", docs=True)
    tab.click("details.error summary")
    trace = tab.locator("pre.traceback")
    assert trace.is_visible()
    assert "ValueError: bad-frame: the product has no picture" in trace.inner_text()
    # Retry the failed items: a new batch of exactly those.
    tab.click("button:has-text('Retry failed items')")
    tab.wait_for_url("**done=retried**")
    assert "retries the failed items" in tab.locator(".notice").inner_text()
    assert tab.locator("text=Retry of").count() == 1
    assert [r.get_attribute("data-key") for r in tab.locator("tr[data-key]").all()] == ["bad-frame"]
    tab.context.close()


def test_a_batch_page_goes_live_while_a_worker_runs_it(browser: Any, served: Served) -> None:
    batch = served.submit([f"frame-{n:02}" for n in range(24)])
    tab = served.page(browser)
    tab.goto(f"/batches/{batch.id}")
    assert tab.locator('[data-count="queued"]').inner_text() == "24"
    tab.evaluate("window.stillHere = true")
    worker = subprocess.Popen(
        [
            *(sys.executable, "-m", "batchkit", "worker", "--storage", served.storage_url),
            *("--generator", "tests.workers._generators:generate", "--batch", batch.id),
            *("--exit-when-idle", "--concurrency", "2", "--no-live", "--log-level", "WARNING"),
        ],
        cwd=ROOT,
        env={
            **os.environ,
            "PYTHONPATH": str(ROOT),
            "BATCHKIT_TEST_SLEEP": "0.15",
            "BATCHKIT_TEST_RUNLOG": str(served.tmp_path / "runs.jsonl"),
        },
    )
    try:
        # Counts move while it runs: some succeeded, some still queued, no reload.
        tab.wait_for_function(
            "() => { const n = +document.querySelector('[data-count=succeeded]').textContent;"
            " return n > 0 && n < 24; }"
        )
        screenshot(tab, "batch-live", docs=True)
        tab.wait_for_function(
            "() => document.querySelector('[data-state]').textContent === 'completed'",
            timeout=60_000,
        )
        assert worker.wait(timeout=60) == 0
    finally:
        worker.kill()
        worker.wait()
    assert tab.evaluate("window.stillHere") is True, "the page was reloaded"
    assert tab.locator('[data-count="succeeded"]').inner_text() == "24"
    assert tab.locator("[data-percent]").inner_text() == "100%"
    # The items table follows too, once the batch has finished.
    tab.wait_for_function(
        "() => [...document.querySelectorAll('tr[data-key] .state')]"
        ".every(cell => cell.textContent === 'succeeded')"
    )
    tab.context.close()


def test_cancel_and_delete_ask_first_and_then_act(browser: Any, served: Served) -> None:
    batch = served.submit(["a", "b", "c"])
    tab = served.page(browser)
    tab.goto(f"/batches/{batch.id}")
    answers = iter([False, True, True])
    tab.on("dialog", lambda dialog: dialog.accept() if next(answers) else dialog.dismiss())
    tab.click("button:has-text('Cancel')")  # dismissed: nothing happens
    tab.wait_for_timeout(300)
    assert tab.locator("[data-state]").inner_text() == "queued"
    tab.click("button:has-text('Cancel')")
    tab.wait_for_url("**done=cancelled**")
    tab.wait_for_function(
        "() => document.querySelector('[data-state]').textContent === 'cancelled'"
    )
    assert tab.locator('[data-count="cancelled"]').inner_text() == "3"
    tab.click("button:has-text('Delete')")
    tab.wait_for_url("**done=deleted**")
    assert "was deleted" in tab.locator(".notice").inner_text()
    assert _batch_link(tab, batch.id).count() == 0
    tab.goto(f"/batches/{batch.id}")
    assert "No such batch" in tab.locator("h1").inner_text()
    tab.context.close()


def test_read_only_mode_shows_no_action_and_refuses_a_forged_one(
    browser: Any, read_only: Served
) -> None:
    batch = read_only.submit(["a", "b"])
    tab = read_only.page(browser)
    tab.goto(f"/batches/{batch.id}")
    assert tab.locator("form[method=post]").count() == 0
    token = next(c["value"] for c in tab.context.cookies() if c["name"] == "batchkit_csrf")
    reply = tab.request.post(f"/batches/{batch.id}/cancel", form={"csrf": token})
    assert reply.status == 403
    assert "read-only" in reply.text()
    tab.reload()
    assert tab.locator("[data-state]").inner_text() == "queued"
    tab.context.close()


def test_the_host_decides_who_sees_and_who_acts(browser: Any, hosted: Served) -> None:
    batch = hosted.submit(["a"])
    stranger = hosted.page(browser)
    reply = stranger.goto(f"/ops/batchkit/batches/{batch.id}")
    assert reply is not None
    assert reply.status == 403
    assert "not allowed" in stranger.locator(".message").inner_text()
    stranger.context.close()
    viewer = hosted.page(browser, cookies={"role": "viewer"})
    viewer.goto("/ops/batchkit/")
    assert viewer.locator("header .home").inner_text() == "Ops"
    _batch_link(viewer, batch.id).click()
    viewer.wait_for_url(f"**/ops/batchkit/batches/{batch.id}")
    assert viewer.locator("form[method=post]").count() == 0
    token = next(c["value"] for c in viewer.context.cookies() if c["name"] == "batchkit_csrf")
    forged = viewer.request.post(f"/ops/batchkit/batches/{batch.id}/cancel", form={"csrf": token})
    assert forged.status == 403
    viewer.context.close()
    admin = hosted.page(browser, cookies={"role": "admin"})
    admin.goto(f"/ops/batchkit/batches/{batch.id}")
    admin.on("dialog", lambda dialog: dialog.accept())
    admin.click("button:has-text('Cancel')")
    admin.wait_for_url(f"**/ops/batchkit/batches/{batch.id}?done=cancelled")
    admin.wait_for_function(
        "() => document.querySelector('[data-state]').textContent === 'cancelled'"
    )
    admin.context.close()


def test_every_page_reads_without_javascript(browser: Any, served: Served) -> None:
    done = served.submit([ItemSpec(key="mug"), ItemSpec(key="bad-mug")], metadata={"owner": "ada"})
    served.run(done)
    tab = served.page(browser, javascript=False)
    tab.goto("/")
    tab.check('input[name=state][value="completed_with_errors"]')
    tab.click("button:has-text('Filter')")
    tab.wait_for_url("**state=completed_with_errors**")
    _batch_link(tab, done.id).click()
    tab.wait_for_url(f"**/batches/{done.id}")
    assert tab.locator('[data-count="succeeded"]').inner_text() == "1"
    tab.click("nav.tabs >> text=failed")
    tab.wait_for_url("**state=failed**")
    tab.click("details.error summary")
    assert "the product has no picture" in tab.locator("pre.traceback").inner_text()
    tab.context.close()
