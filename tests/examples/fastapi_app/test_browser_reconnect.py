"""The batch page's way back to its live stream, step by step.

The page runs in Chromium against a real studio, but its ``EventSource``, its ``/status``
polls and its timers are in the test's hands: each race the network can produce is played
in one order, the same every run.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import pytest

from examples.fastapi_app.catalog import catalog

from .conftest import Studio, new_page

if TYPE_CHECKING:
    from collections.abc import Iterator

USABLE = [p.id for p in catalog() if p.usable]

#: The page's clock (ms since the epoch) when it loads, and a time it has surely not
#: reached by the time the test pauses it there.
_START = 1_800_000_000_000
_LOADED_WITHIN = 600_000

#: Stands in for the browser's EventSource and for fetch() of /status before the page's
#: script runs; other requests go to the server.
_FAKE_NETWORK = """
window.__streams = [];
window.__polls = [];
window.EventSource = class extends EventTarget {
  constructor(url) { super(); this.url = url; this.closed = false; window.__streams.push(this); }
  close() { this.closed = true; }
};
const realFetch = window.fetch.bind(window);
window.fetch = (url, options) => String(url).endsWith("/status")
  ? new Promise((resolve, reject) => window.__polls.push({resolve, reject}))
  : realFetch(url, options);
window.__answer = (index, body) => window.__polls[index].resolve(
  new Response(JSON.stringify(body), {status: 200, headers: {"content-type": "application/json"}}));
window.__unreachable = (index) => window.__polls[index].reject(new TypeError("Failed to fetch"));
window.__fire = (index, name) => window.__streams[index].dispatchEvent(new Event(name));
"""


@pytest.fixture
def idle_studio(studio_env: dict[str, str], tmp_path: Any) -> Iterator[Studio]:
    """A studio without a worker: a batch stays queued, never ends under the test."""
    server = Studio({**studio_env, "BATCHKIT_STUDIO_CONCURRENCY": "0"}, tmp_path)
    server.start()
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
def tab(browser: Any, idle_studio: Studio) -> Iterator[Any]:
    """A batch's page whose network and clock the test drives."""
    page = new_page(browser, idle_studio)
    try:
        page.goto("/products")
        page.check(f'article.product[data-product-id="{USABLE[0]}"] input.select')
        page.click("#generate")
        page.wait_for_url("**/batch-generate?batch_id=*")
        page.add_init_script(_FAKE_NETWORK)
        page.clock.install(time=_START)
        page.reload()
        page.wait_for_function("() => window.__streams.length === 1")
        # An installed clock still moves with real time: paused, only the test moves it,
        # however slowly the test's steps run on a loaded machine.
        page.clock.pause_at(_START + _LOADED_WITHIN)
        yield page
    finally:
        page.context.close()


def _live(tab: Any) -> str:
    return str(tab.locator("#live").text_content())


def _status(tab: Any) -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(str(tab.locator("#initial-status").text_content()))
    return loaded


def _count(tab: Any, what: str) -> int:
    return int(tab.evaluate(f"() => window.__{what}.length"))


def _settle(tab: Any) -> None:
    """Let the page's promise callbacks run (they are not timers: the clock does not hold them)."""
    tab.evaluate("() => new Promise((done) => queueMicrotask(done))")
    tab.evaluate("() => new Promise((done) => queueMicrotask(done))")


def test_a_poll_answering_after_the_stream_is_back_leaves_it_live(tab: Any) -> None:
    tab.evaluate("() => window.__fire(0, 'open')")
    assert _live(tab) == "Live."
    tab.evaluate("() => window.__fire(0, 'error')")  # a restart ends the stream
    assert _live(tab) == "Connection lost; reconnecting…"
    assert _count(tab, "polls") == 1  # polling starts at once: that poll is slow

    tab.clock.run_for(1_000)  # the first try again comes after one second
    assert _count(tab, "streams") == 2
    tab.evaluate("() => window.__fire(1, 'open')")
    assert _live(tab) == "Live."

    tab.evaluate("(body) => window.__answer(0, body)", _status(tab))  # the slow poll answers now
    _settle(tab)
    assert _live(tab) == "Live."
    tab.clock.run_for(10_000)
    assert _count(tab, "polls") == 1  # and polling stopped with the stream back


class _Polls:
    """Answers the page's polls as they come: the server is down, or it answers."""

    def __init__(self, tab: Any) -> None:
        self.tab = tab
        self.handled = 0

    def fail(self) -> None:
        while self.handled < _count(self.tab, "polls"):
            self.tab.evaluate("(i) => window.__unreachable(i)", self.handled)
            self.handled += 1
        _settle(self.tab)

    def answer(self) -> None:
        while self.handled < _count(self.tab, "polls"):
            self.tab.evaluate(
                "([i, body]) => window.__answer(i, body)", [self.handled, _status(self.tab)]
            )
            self.handled += 1
        _settle(self.tab)


def _latest(tab: Any) -> int:
    return _count(tab, "streams") - 1


def test_after_a_long_outage_the_first_poll_that_answers_brings_the_stream_back(
    tab: Any,
) -> None:
    polls = _Polls(tab)
    tab.evaluate("() => window.__fire(0, 'open')")
    tab.evaluate("() => window.__fire(0, 'error')")
    waited = []
    for _ in range(5):  # the server stays down: every try fails, and the page waits longer
        started = _count(tab, "streams")
        elapsed = 0
        while _count(tab, "streams") == started:
            tab.clock.run_for(500)
            elapsed += 500
            polls.fail()
        waited.append(elapsed)
        tab.evaluate(f"() => window.__fire({_latest(tab)}, 'error')")
    assert waited == [1_000, 2_000, 4_000, 8_000, 16_000]
    assert "Cannot reach the studio" in _live(tab)

    # The server is back: the next poll answers, and the page goes live at once rather
    # than after the 30 s its back-off has reached.
    before = _count(tab, "streams")
    tab.clock.run_for(2_000)
    polls.answer()
    assert _count(tab, "streams") == before + 1
    assert _live(tab) == "Updating every 2 s; reconnecting to live updates…"
    tab.evaluate(f"() => window.__fire({_latest(tab)}, 'open')")
    assert _live(tab) == "Live."


def test_a_stream_refused_while_polls_answer_backs_off(tab: Any) -> None:
    """A proxy that refuses /events and passes /status: the page keeps polling and tries
    the stream less and less often, not at every poll that answers."""
    polls = _Polls(tab)
    tab.evaluate("() => window.__fire(0, 'open')")
    tab.evaluate("() => window.__fire(0, 'error')")
    polls.answer()  # the server answers: one try at once
    assert _count(tab, "streams") == 2
    for wait in (2_000, 4_000, 8_000):
        tab.evaluate(f"() => window.__fire({_latest(tab)}, 'error')")  # refused
        before = _count(tab, "streams")
        for _ in range(wait // 500 - 1):
            tab.clock.run_for(500)
            polls.answer()
            assert _count(tab, "streams") == before
        tab.clock.run_for(500)
        assert _count(tab, "streams") == before + 1
    assert _live(tab) == "Updating every 2 s; reconnecting to live updates…"
