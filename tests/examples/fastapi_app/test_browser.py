"""The studio in a real browser: Debian's Chromium, driven by Playwright, on a real server."""

from __future__ import annotations

import signal
import time
from typing import Any

from examples.fastapi_app.catalog import catalog

from .conftest import Studio, screenshot

USABLE = [p.id for p in catalog() if p.usable]
UNUSABLE = [p.id for p in catalog() if not p.usable]
TERMINAL = ("succeeded", "failed", "cancelled")

#: Records, in the page, every state each card shows: the test reads the history back.
_RECORD_STATES = """() => {
  window.__states = {};
  const seen = (card) => {
    const id = card.dataset.productId, state = card.dataset.state;
    const list = window.__states[id] || (window.__states[id] = []);
    if (list[list.length - 1] !== state) { list.push(state); }
  };
  document.querySelectorAll(".item").forEach(seen);
  new MutationObserver((changes) => changes.forEach((c) => seen(c.target)))
    .observe(document.getElementById("items"), {attributes: true, subtree: true, attributeFilter: ["data-state"]});
}"""


def _select(page: Any, product_ids: list[str]) -> None:
    for product_id in product_ids:
        page.check(f'article.product[data-product-id="{product_id}"] input.select')


def _card_states(page: Any) -> dict[str, str]:
    return page.eval_on_selector_all(
        ".item",
        "cards => Object.fromEntries(cards.map(c => [c.dataset.productId, c.dataset.state]))",
    )


def _wait_terminal(page: Any, timeout: float = 60_000) -> None:
    page.wait_for_function(
        "() => ['completed', 'completed_with_errors', 'failed', 'cancelled']"
        ".includes(document.getElementById('overall-state').dataset.state)",
        timeout=timeout,
    )


def _overall(page: Any) -> tuple[str, str]:
    """The batch's state, and the words its badge shows for it."""
    badge = page.locator("#overall-state")
    return str(badge.get_attribute("data-state")), str(badge.text_content())


def _generate(page: Any, product_ids: list[str]) -> str:
    _select(page, product_ids)
    page.click("#generate")
    page.wait_for_url("**/batch-generate?batch_id=*")
    return str(page.url.split("batch_id=")[1])


def test_checkboxes_are_always_visible_and_the_bar_follows_the_selection(
    page: Any, studio: Studio
) -> None:
    # `make web` runs `python -m examples.fastapi_app`, which says where it serves.
    assert f"batchkit studio: http://127.0.0.1:{studio.port}/products" in studio.logs()
    cards = page.locator("article.product")
    assert cards.count() == 24
    page.mouse.move(0, 0)  # nothing hovered
    for n in range(cards.count()):
        card = cards.nth(n)
        box = card.locator("input.select")
        assert box.is_visible()
        card_box, check_box = card.bounding_box(), box.bounding_box()
        # In the card's top-left corner.
        assert 0 <= check_box["x"] - card_box["x"] <= 40
        assert 0 <= check_box["y"] - card_box["y"] <= 40
    bar = page.locator("#selection-bar")
    assert not bar.is_visible()

    _select(page, [USABLE[0], USABLE[1], UNUSABLE[0]])
    assert bar.is_visible()
    assert page.text_content("#selection-count") == "3 selected"
    assert page.text_content("#generate") == "Generate 3 Videos"
    screenshot(page, "products", full_page=False, docs=True)  # the window and its sticky bar
    page.uncheck(f'article.product[data-product-id="{USABLE[1]}"] input.select')
    assert page.text_content("#generate") == "Generate 2 Videos"
    page.uncheck(f'article.product[data-product-id="{UNUSABLE[0]}"] input.select')
    assert page.text_content("#generate") == "Generate 1 Video"
    # The bar stays at the bottom of the window while the page scrolls.
    page.mouse.wheel(0, 2_000)
    page.wait_for_timeout(200)
    bar_box = bar.bounding_box()
    assert abs(bar_box["y"] + bar_box["height"] - 900) <= 2

    page.click("#select-page")
    assert page.text_content("#selection-count") == "24 selected"
    page.click('.pages a[href="/products?page=2"]')  # the second page keeps the selection
    page.wait_for_url("**/products?page=2")
    assert page.text_content("#selection-count") == "24 selected"
    page.click("#select-page")
    assert page.text_content("#generate") == f"Generate {len(catalog())} Videos"
    page.click("#clear")
    assert not page.locator("#selection-bar").is_visible()
    assert page.locator("input.select:checked").count() == 0


def test_generate_watch_every_card_and_retry_the_failed_ones(page: Any, studio: Studio) -> None:
    chosen = [USABLE[0], UNUSABLE[0], USABLE[1], UNUSABLE[1], USABLE[2]]
    batch_id = _generate(page, chosen)
    page.evaluate(_RECORD_STATES)
    assert page.locator("#retry").is_hidden()  # not while the batch runs
    cards = page.locator(".item")
    assert [cards.nth(n).get_attribute("data-product-id") for n in range(cards.count())] == chosen

    # Leave mid-batch, come back: the page shows where the batch is, not a reset.
    page.wait_for_function(
        "() => [...document.querySelectorAll('.item')].some(c => c.dataset.state !== 'queued')"
    )
    before = _card_states(page)
    earlier = page.evaluate("() => window.__states")  # what this visit saw, kept for later
    page.goto("/products")
    page.goto(f"/batch-generate?batch_id={batch_id}")
    again = _card_states(page)
    order = {"queued": 0, "running": 1, "succeeded": 2, "failed": 2}
    assert any(state != "queued" for state in again.values()), again
    assert all(order[again[k]] >= order[before[k]] for k in chosen), (before, again)
    page.evaluate(_RECORD_STATES)
    screenshot(page, "batch-running")

    _wait_terminal(page)
    seen = page.evaluate("() => window.__states")
    final = _card_states(page)
    assert _overall(page) == ("completed_with_errors", "Done, with errors")
    for product_id in chosen:
        expected = "succeeded" if product_id in USABLE else "failed"
        assert final[product_id] == expected
        assert seen[product_id][-1] == expected
    # Each card moved on its own: two slots for five products, so some waited while
    # others ran, and not every card ended at the same moment.
    # Both visits count: a card may have gone from queued to running during either.
    both = {k: [*earlier.get(k, []), *seen.get(k, [])] for k in chosen}
    assert any("queued" in both[k] and "running" in both[k] for k in chosen), both
    for product_id in USABLE[:3]:
        card = page.locator(f'.item[data-product-id="{product_id}"]')
        video = card.locator("img.video")
        video.wait_for()
        assert page.evaluate(
            "(img) => img.complete && img.naturalWidth > 0", video.element_handle()
        )
        assert card.locator(".error").is_hidden()
    for product_id in UNUSABLE[:2]:
        error = page.locator(f'.item[data-product-id="{product_id}"] .error')
        assert error.is_visible()
        assert product_id in error.text_content()
    assert page.locator("#counts").text_content() == "3 done · 2 failed of 5"
    assert page.locator('.item[data-state="failed"] .badge').first.text_content() == "Failed"
    assert page.locator('.item[data-state="succeeded"] .badge').first.text_content() == "Done"
    # A failed card says why it failed, not the stage it had reached.
    assert page.locator('.item[data-state="failed"] .message').first.text_content() == ""
    titles = {p.id: p.title for p in catalog()}
    assert page.text_content("h1") == f"{titles[chosen[0]]}, {titles[chosen[1]]} and 3 more"
    retry = page.locator("#retry")
    assert retry.is_visible()
    assert retry.text_content() == "Retry 2 Failed"
    screenshot(page, "batch", docs=True)

    retry.click()
    page.wait_for_url(lambda url: "batch_id=" in url and batch_id not in url)
    retried = page.locator(".item")
    ids = [retried.nth(n).get_attribute("data-product-id") for n in range(retried.count())]
    assert ids == UNUSABLE[:2]  # exactly the failed products
    assert page.locator(".parent a").get_attribute("href") == f"/batch-generate?batch_id={batch_id}"
    _wait_terminal(page)
    assert _overall(page) == ("failed", "Failed")


def test_a_server_restart_in_the_middle_of_a_batch_loses_nothing(page: Any, studio: Studio) -> None:
    chosen = USABLE[3:9]
    _generate(page, chosen)
    page.wait_for_function(
        "() => document.querySelectorAll('.item[data-state=succeeded]').length >= 1"
    )
    studio.stop(signal.SIGKILL)  # a crash: its running items come back after their lease
    page.wait_for_function(
        "() => document.getElementById('live').textContent.includes('Cannot reach the studio')"
    )
    time.sleep(0.5)
    studio.start()
    _wait_terminal(page, timeout=90_000)
    assert _overall(page)[0] == "completed", studio.logs()
    assert set(_card_states(page).values()) == {"succeeded"}
    assert page.locator("img.video").count() == len(chosen)
    assert page.locator("#retry").is_hidden()  # ended without failures: nothing to retry
