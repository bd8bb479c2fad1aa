"""The example in real Chromium: sign in, tick products, start a batch, watch it finish
while ``manage.py batchkit_worker`` runs it, retry what failed.

Served by ``manage.py runserver`` on a SQLite file of the test's own, migrated first.
"""

from __future__ import annotations

import re
import subprocess
import sys
from typing import TYPE_CHECKING, Any

from tests.examples._servers import ServerProcess, free_port
from tests.examples.fastapi_app.conftest import ARTIFACTS, browser

from .conftest import PASSWORD, PROJECT

if TYPE_CHECKING:
    from pathlib import Path

__all__ = ["browser"]  # the module-scoped Chromium fixture, used below


def _env(tmp_path: Path) -> dict[str, str]:
    return {
        "DATABASE_URL": f"sqlite:///{tmp_path / 'shop.sqlite3'}",
        "DJANGO_SETTINGS_MODULE": "project.settings",
        "DEMO_PASSWORD": PASSWORD,
        "PRODUCTS_RENDER_DELAY": "0.05",
    }


def test_a_batch_in_the_browser(browser: Any, tmp_path: Path) -> None:
    manage = [sys.executable, str(PROJECT / "manage.py")]
    server = ServerProcess(
        [*manage, "runserver", "--noreload", "--skip-checks", f"127.0.0.1:{(port := free_port())}"],
        port,
        tmp_path,
        _env(tmp_path),
        ready="/accounts/login/",
    )
    # Migrated while the server starts: its sign-in page, all the test waits for, reads
    # no table.
    migrate = subprocess.Popen(
        [*manage, "migrate", "--verbosity", "0"],
        cwd=tmp_path,
        env=server.env,
        stderr=subprocess.PIPE,
    )
    worker: subprocess.Popen[bytes] | None = None
    work = [*manage, "batchkit_worker", "--generator", "products.generator:render"]
    worker_log = (tmp_path / "worker.log").open("wb")
    context = browser.new_context(base_url=server.url)
    try:
        server.start()
        _, problems = migrate.communicate(timeout=60)
        assert migrate.returncode == 0, problems.decode()
        tab = context.new_page()
        tab.set_default_timeout(15_000)
        tab.goto("/products/")
        tab.wait_for_url("**/accounts/login/?next=/products/")
        tab.fill("input[name=username]", "ada")
        tab.fill("input[name=password]", PASSWORD)
        tab.click("button[type=submit]")
        tab.wait_for_url("**/products/")
        for name in ["Basalt Mug", "Cursed Lamp", "Juniper Candle"]:
            tab.get_by_label(name).check()
        tab.click("text=Render the ticked products")
        tab.wait_for_url(re.compile(r".*/batches/[^/]+/$"))
        first = tab.url
        assert tab.text_content("#batch-state") == "queued"

        worker = subprocess.Popen(
            [*work, "--exit-when-idle", "--no-live"],
            cwd=tmp_path,
            env=server.env,
            stdout=subprocess.DEVNULL,
            stderr=worker_log,
        )
        # The page follows the batch by itself (the script polls its JSON).
        tab.wait_for_function(
            "document.getElementById('batch-state').textContent === 'completed_with_errors'"
        )
        lamp = tab.locator("tr", has_text="Cursed Lamp")
        assert lamp.locator(".state").text_content() == "failed"
        assert "no light" in (lamp.locator(".message").text_content() or "")
        mug = tab.locator("tr", has_text="Basalt Mug")
        assert mug.locator(".state").text_content() == "succeeded"
        assert worker.wait(timeout=30) == 0

        tab.click("text=Retry failed")
        tab.wait_for_url(lambda url: url != first and "/batches/" in url)
        assert "Retry of" in (tab.text_content("body") or "")
        assert tab.locator("tbody tr").count() == 1
        assert "Cursed Lamp" in (tab.text_content("tbody") or "")
    except Exception:
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        if context.pages:
            context.pages[0].screenshot(path=str(ARTIFACTS / "django-batch.png"))
        raise
    finally:
        context.close()
        if worker is not None and worker.poll() is None:
            worker.kill()
            worker.wait()
        if migrate.poll() is None:
            migrate.kill()
            migrate.communicate()
        worker_log.close()
        server.close()
