"""Every page of the studio, in real Chromium: at a phone's width and a desktop's, by
keyboard alone, checked by axe-core, and across a server's stop and restart."""

from __future__ import annotations

import signal
import time
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

import pytest
from axe_playwright_python.sync_playwright import Axe

from examples.fastapi_app.catalog import catalog

from .conftest import Studio, new_page, screenshot

if TYPE_CHECKING:
    from collections.abc import Iterator

USABLE = [p.id for p in catalog() if p.usable]
UNUSABLE = [p.id for p in catalog() if not p.usable]
#: A phone (an iPhone 12 to 15's CSS width) and a desktop window.
WIDTHS = {"phone": (390, 844), "desktop": (1280, 900)}
#: The axe-core impacts that fail a page.
BLOCKING = ("serious", "critical")


def _fits(tab: Any, width: int) -> None:
    """Nothing wider than the window (no sideways scrolling), and a header of at most two
    lines."""
    scroll = tab.evaluate("() => document.documentElement.scrollWidth")
    assert scroll <= width, f"{tab.url} is {scroll} px wide in a {width} px window"
    wide = tab.evaluate(
        """(width) => [...document.querySelectorAll('body *')]
            .filter(e => e.getBoundingClientRect().right > width + 1
                         && getComputedStyle(e).position !== 'fixed')
            .map(e => e.tagName + '.' + e.className).slice(0, 5)""",
        width,
    )
    assert not wide, (tab.url, wide)
    header = tab.locator("header.top").bounding_box()
    assert header["height"] <= 90, f"the header of {tab.url} is {header['height']} px high"


def _accessible(tab: Any) -> None:
    """axe-core (packaged, injected into the page) finds nothing serious or critical."""
    results = Axe().run(tab)
    blocking = [v for v in results.response["violations"] if v["impact"] in BLOCKING]
    assert not blocking, f"{tab.url}\n{results.generate_report()}"


def _check(tab: Any, name: str, form: str, width: int, *, full_page: bool = True) -> None:
    _fits(tab, width)
    _accessible(tab)
    screenshot(tab, f"{name}-{form}", full_page=full_page, docs=True)


def _generate(tab: Any, product_ids: list[str]) -> str:
    for product_id in product_ids:
        tab.check(f'article.product[data-product-id="{product_id}"] input.select')
    tab.click("#generate")
    tab.wait_for_url("**/batch-generate?batch_id=*")
    return str(tab.url.split("batch_id=")[1])


def _terminal(tab: Any, timeout: float = 60_000) -> None:
    tab.wait_for_function(
        "() => ['completed', 'completed_with_errors', 'failed', 'cancelled']"
        ".includes(document.getElementById('overall-state').dataset.state)",
        timeout=timeout,
    )


@pytest.fixture
def contexts() -> Iterator[list[Any]]:
    """Pages opened by a test, closed after it."""
    opened: list[Any] = []
    yield opened
    for tab in opened:
        tab.context.close()


@pytest.mark.parametrize("form", list(WIDTHS))
def test_every_page_fits_the_window_and_passes_axe(
    browser: Any, studio: Studio, contexts: list[Any], form: str
) -> None:
    width, height = WIDTHS[form]
    visitor = new_page(browser, studio, width=width, height=height, owner=None)
    contexts.append(visitor)
    visitor.goto("/login")
    _check(visitor, "login", form, width)

    tab = new_page(browser, studio, width=width, height=height)
    contexts.append(tab)
    tab.goto("/batches")
    _check(tab, "batches-empty", form, width)
    tab.goto("/products")
    for product_id in USABLE[:5] + UNUSABLE[:1]:
        tab.check(f'article.product[data-product-id="{product_id}"] input.select')
    tab.evaluate("() => window.scrollTo(0, 0)")
    # The window, not the whole page: the selection bar sticks to the window's bottom.
    _check(tab, "products-selected", form, width, full_page=False)
    tab.click("#generate")
    tab.wait_for_url("**/batch-generate?batch_id=*")
    tab.wait_for_selector('.item[data-state="running"]')
    _check(tab, "batch-running", form, width)
    _terminal(tab)
    tab.locator("#retry").wait_for()
    _check(tab, "batch-finished", form, width)
    tab.goto("/batches")
    assert tab.locator(".batch-row").count() == 1
    _check(tab, "batches", form, width)
    tab.goto("/batch-generate?batch_id=00000000-0000-0000-0000-000000000000")
    _check(tab, "not-found", form, width)
    tab.goto("/docs")
    tab.locator(".opblock").first.wait_for()
    tab.locator(".models").wait_for()
    # Swagger UI's own page: it fits, and as loaded it passes axe too (its colours are
    # darkened where they were too faint); its header is its own.
    assert tab.evaluate("() => document.documentElement.scrollWidth") <= width
    _accessible(tab)
    screenshot(tab, f"docs-{form}", docs=True)


def test_the_page_announces_state_and_counts_and_names_its_progress_bars(
    browser: Any, studio: Studio, contexts: list[Any]
) -> None:
    tab = new_page(browser, studio)
    contexts.append(tab)
    tab.goto("/products")
    _generate(tab, USABLE[:2] + UNUSABLE[:1])
    summary = tab.locator("#summary")
    assert summary.get_attribute("aria-live") == "polite"
    assert tab.locator("#live").get_attribute("role") == "status"
    # What the live region says, each time it changes.
    tab.evaluate(
        """() => { window.__said = [];
        new MutationObserver(() => window.__said.push(document.getElementById('summary').textContent))
          .observe(document.getElementById('summary'), {subtree: true, childList: true, characterData: true}); }"""
    )
    _terminal(tab)
    said = tab.evaluate("() => window.__said")
    assert said, "the live region never changed"
    assert said[-1] == "2 done · 1 failed of 3"
    bars = tab.get_by_role("progressbar")
    names = [bars.nth(n).get_attribute("aria-label") for n in range(bars.count())]
    titles = {p.id: p.title for p in catalog()}
    assert names == ["Progress of the batch"] + [
        f"Progress of {titles[k]}" for k in USABLE[:2] + UNUSABLE[:1]
    ]
    assert (
        tab.get_by_role("progressbar", name="Progress of the batch").get_attribute("aria-valuenow")
        == "100"
    )


def test_the_whole_flow_works_by_keyboard(
    browser: Any, studio: Studio, contexts: list[Any]
) -> None:
    tab = new_page(browser, studio, owner=None)
    contexts.append(tab)
    tab.goto("/login")
    tab.keyboard.type("kim")  # the name field has the focus
    tab.keyboard.press("Enter")
    tab.wait_for_url("**/products")

    def tab_to(selector: str, limit: int = 80) -> None:
        for _ in range(limit):
            tab.keyboard.press("Tab")
            if tab.evaluate("(s) => document.activeElement.matches(s)", selector):
                return
        raise AssertionError(f"Tab never reached {selector}")

    tab_to("a.skip")  # the first stop: past the header, to the content
    for product_id in USABLE[:6]:
        tab_to(f'input.select[value="{product_id}"]')
        tab.keyboard.press("Space")
    assert tab.text_content("#generate") == "Generate 6 Videos"
    tab_to("#generate")
    tab.keyboard.press("Enter")
    tab.wait_for_url("**/batch-generate?batch_id=*")
    tab.wait_for_selector('.item[data-state="running"]')
    tab_to("#cancel")
    tab.keyboard.press("Enter")
    _terminal(tab)
    state = tab.locator("#overall-state")
    assert (state.get_attribute("data-state"), state.text_content()) == ("cancelled", "Cancelled")
    cancelled = tab.locator('.item[data-state="cancelled"]')
    assert cancelled.count() >= 3
    assert cancelled.first.locator(".badge").text_content() == "Cancelled"
    assert cancelled.first.locator(".message").text_content() == ""
    assert tab.locator("#cancel").is_hidden()
    assert tab.locator("#retry").is_hidden()  # nothing failed


def test_generate_with_the_server_down_says_so_in_words(
    browser: Any, studio: Studio, contexts: list[Any]
) -> None:
    tab = new_page(browser, studio)
    contexts.append(tab)
    tab.goto("/products")
    tab.check(f'article.product[data-product-id="{USABLE[0]}"] input.select')
    studio.stop()
    tab.click("#generate")
    problem = tab.locator("#selection-error")
    problem.wait_for()
    tab.wait_for_function("() => document.getElementById('selection-error').textContent")
    assert problem.text_content() == "Cannot reach the studio: check your connection and try again."
    assert tab.locator("#generate").is_enabled()  # ready to try again


@pytest.mark.parametrize("store", ["sqlite", "postgres", "redis"])
def test_sigterm_with_two_pages_open_and_both_go_live_again(
    browser: Any,
    studio_env: dict[str, str],
    tmp_path: Any,
    contexts: list[Any],
    store: str,
) -> None:
    import anyio

    from tests.storage.conftest import drop_prefixes, server_store

    env = dict(studio_env)
    if store != "sqlite":
        url, prefix = server_store(store, "studio")
        env |= {"BATCHKIT_STORAGE": url, "BATCHKIT_STORAGE_PREFIX": prefix}
    server = Studio(env, tmp_path)
    server.start()
    try:
        first = new_page(browser, server)
        contexts.append(first)
        first.goto("/products")
        chosen = USABLE[:8]
        batch_id = _generate(first, chosen)
        second = new_page(browser, server, owner="ada")
        contexts.append(second)
        second.goto(f"/batch-generate?batch_id={batch_id}")
        for tab in (first, second):
            tab.wait_for_function("() => document.getElementById('live').textContent === 'Live.'")
        first.wait_for_selector('.item[data-state="running"]')

        assert server.process is not None
        started = time.monotonic()
        server.process.send_signal(signal.SIGTERM)
        server.process.wait(timeout=10)
        stopped = time.monotonic() - started
        server.process = None
        assert stopped < 3.0, server.logs()
        for tab in (first, second):
            tab.wait_for_function(
                "() => document.getElementById('live').textContent.includes('Cannot reach')"
                " || document.getElementById('live').textContent.includes('reconnecting')"
            )
        server.start()
        for tab in (first, second):
            # Back on the live stream, not left polling.
            tab.wait_for_function(
                "() => document.getElementById('live').textContent === 'Live.'", timeout=30_000
            )
        for tab in (first, second):
            _terminal(tab, timeout=90_000)
            assert tab.locator("#overall-state").get_attribute("data-state") == "completed"
            assert tab.locator("img.video").count() == len(chosen)
    finally:
        server.close()
        if store != "sqlite":
            # In a thread of its own: Playwright keeps an event loop running in this one.
            with ThreadPoolExecutor(1) as pool:
                url, prefix = env["BATCHKIT_STORAGE"], env["BATCHKIT_STORAGE_PREFIX"]
                pool.submit(anyio.run, drop_prefixes, url, [prefix]).result()
