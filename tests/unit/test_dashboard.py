"""`batchkit.dashboard` over HTTP (the ASGI app itself, on a real in-memory storage): its
pages, filters, paging, actions, refusals, and hostile text. In a browser:
tests/dashboard/test_browser.py."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.routing import Mount

from batchkit import BatchRunner, BatchState, ItemState, MemoryStorage
from batchkit.dashboard import dashboard
from batchkit.exceptions import StorageError

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from starlette.requests import Request

    from batchkit import ItemContext

pytestmark = pytest.mark.anyio

HOSTILE = '<script>alert("x")</script>'


async def _generate(ctx: ItemContext) -> dict[str, str]:
    if ctx.key.startswith("bad"):
        raise ValueError(f"no picture for {ctx.key} {HOSTILE}")
    return {"video": f"{ctx.key}.mp4"}


@pytest.fixture
async def storage() -> AsyncIterator[MemoryStorage]:
    async with MemoryStorage() as store:
        yield store


def _client(app: Any) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://ops")


def _csrf(page: str) -> str:
    found = re.search(r'name="csrf" value="([^"]+)"', page)
    assert found, "no form on the page"
    return found.group(1)


async def _finished_batch(storage: MemoryStorage, **options: Any) -> str:
    runner = BatchRunner(storage, _generate)
    batch = await runner.submit(["mug", "poster", "bad1", HOSTILE], **options)
    await runner.run(batch.id)
    return batch.id


async def test_pages_show_batches_and_items_and_escape_every_value(
    storage: MemoryStorage,
) -> None:
    batch_id = await _finished_batch(storage, metadata={"owner": HOSTILE})
    async with _client(dashboard(storage, authorize=None)) as client:
        listing = await client.get("/")
        page = await client.get(f"/batches/{batch_id}")
    for reply in (listing, page):
        assert reply.status_code == 200
        assert "<script>alert" not in reply.text
        assert "&lt;script&gt;alert" in reply.text
        policy = reply.headers["content-security-policy"]
        assert "script-src 'self'" in policy
        assert "default-src 'none'" in policy
        assert reply.headers["x-content-type-options"] == "nosniff"
        assert "<script>" not in reply.text.replace('<script src="/static/dashboard.js" defer>', "")
    assert batch_id in listing.text
    assert "completed_with_errors" in listing.text
    assert "ValueError" in page.text
    assert "Traceback" in page.text  # the failed item's traceback, folded in <details>
    assert "mug.mp4" in page.text  # a result's preview
    assert "data-events" not in page.text  # finished: nothing left to follow
    waiting = await BatchRunner(storage, _generate).submit(["a"])
    async with _client(dashboard(storage, authorize=None)) as client:
        live = await client.get(f"/batches/{waiting.id}")
    assert f'data-events="/batches/{waiting.id}/events"' in live.text


async def test_filters_and_paging(storage: MemoryStorage) -> None:
    runner = BatchRunner(storage, _generate)
    done = await _finished_batch(storage, metadata={"owner": "ada"})
    waiting = [
        (await runner.submit([f"k{n}"], metadata={"owner": "bob", "n": n})).id for n in range(55)
    ]
    async with _client(dashboard(storage, authorize=None)) as client:
        first = await client.get("/")
        assert first.text.count('href="/batches/') == 50
        older = re.search(r'rel="next" href="([^"]+)"', first.text)
        assert older is not None
        second = await client.get(older.group(1).replace("&amp;", "&"))
        assert second.text.count('href="/batches/') == 6
        assert done in second.text
        only_done = await client.get("/", params={"state": "completed_with_errors"})
        assert done in only_done.text
        assert not any(w in only_done.text for w in waiting)
        ada = await client.get("/", params={"where": "owner=ada"})
        assert done in ada.text
        assert waiting[0] not in ada.text
        numbered = await client.get("/", params={"where": "n=3"})  # read as JSON: 3
        assert numbered.text.count('href="/batches/') == 1
        assert waiting[3] in numbered.text
        for bad in ({"where": "owner"}, {"before": "not-an-id"}):
            assert (await client.get("/", params=bad)).status_code == 400
        # A batch's items: by state, and page by page.
        big = await runner.submit([f"item-{n}" for n in range(120)])
        items = await client.get(f"/batches/{big.id}")
        assert items.text.count("<tr data-key=") == 50
        nxt = re.search(r'rel="next" href="([^"]+)"', items.text)
        assert nxt is not None
        assert "after=49" in nxt.group(1)
        last = await client.get(f"/batches/{big.id}", params={"after": "99"})
        assert last.text.count("<tr data-key=") == 20
        failed = await client.get(f"/batches/{done}", params={"state": "failed"})
        assert failed.text.count("<tr data-key=") == 1
        for bad_query in ({"state": "nope"}, {"after": "-1"}, {"after": "x"}):
            reply = await client.get(f"/batches/{big.id}", params=bad_query)
            assert reply.status_code == 400


async def test_unknown_and_malformed_batch_ids_are_404(storage: MemoryStorage) -> None:
    async with _client(dashboard(storage, authorize=None)) as client:
        for path in (
            "/batches/01a2313a-c443-77ea-bef8-99f1385eba9b",
            "/batches/nope",
            "/batches/..%2F..%2Fetc",
            "/batches/01a2313a-c443-77ea-bef8-99f1385eba9b/events",
        ):
            reply = await client.get(path)
            assert reply.status_code == 404, path
            assert "No such batch" in reply.text or "Not Found" in reply.text
        for name in ("nope.js", "..%2F__init__.py", "_html.py"):
            assert (await client.get(f"/static/{name}")).status_code == 404
        css = await client.get("/static/dashboard.css")
        assert css.status_code == 200
        assert css.headers["content-type"].startswith("text/css")


async def test_actions_need_the_pages_token_and_do_what_they_say(storage: MemoryStorage) -> None:
    runner = BatchRunner(storage, _generate)
    done = await _finished_batch(storage)
    waiting = (await runner.submit(["a", "b"])).id
    async with _client(dashboard(storage, authorize=None)) as client:
        page = (await client.get(f"/batches/{waiting}")).text
        token = _csrf(page)
        # Without the token (a form posted from another site), or with another's: refused.
        assert (await client.post(f"/batches/{waiting}/cancel")).status_code == 403
        forged = await client.post(f"/batches/{waiting}/cancel", data={"csrf": "x" * 32})
        assert forged.status_code == 403
        assert not (await runner.status(waiting)).is_terminal
        cancelled = await client.post(f"/batches/{waiting}/cancel", data={"csrf": token})
        assert cancelled.status_code == 303
        assert cancelled.headers["location"] == f"/batches/{waiting}?done=cancelled"
        assert (await runner.status(waiting)).state is BatchState.CANCELLED
        retried = await client.post(f"/batches/{done}/retry-failed", data={"csrf": token})
        assert retried.status_code == 303
        again_id = retried.headers["location"].split("/")[2].split("?")[0]
        again = await runner.status(again_id)
        assert (again.parent_id, again.total) == (done, 1)
        # Retrying a batch with nothing failed says why.
        nothing = await client.post(f"/batches/{waiting}/retry-failed", data={"csrf": token})
        assert nothing.status_code == 409
        deleted = await client.post(f"/batches/{done}/delete", data={"csrf": token})
        assert deleted.status_code == 303
        assert deleted.headers["location"] == "/?done=deleted"
        assert (await client.get(f"/batches/{done}")).status_code == 404
        gone = await client.post(f"/batches/{done}/delete", data={"csrf": token})
        assert gone.status_code == 404


async def test_read_only_shows_no_action_and_refuses_every_one(storage: MemoryStorage) -> None:
    runner = BatchRunner(storage, _generate)
    waiting = (await runner.submit(["a"])).id
    async with _client(dashboard(storage, authorize=None, read_only=True)) as client:
        page = await client.get(f"/batches/{waiting}")
        assert page.status_code == 200
        assert '<form method="post"' not in page.text
        token = page.cookies.get("batchkit_csrf") or client.cookies.get("batchkit_csrf")
        assert token
        for action in ("cancel", "retry-failed", "delete"):
            reply = await client.post(f"/batches/{waiting}/{action}", data={"csrf": token})
            assert reply.status_code == 403
            assert "read-only" in reply.text
    status = await runner.status(waiting)
    assert status.state is BatchState.QUEUED
    assert not status.cancel_requested


async def test_the_hosts_authorize_hook_decides_each_page_and_action(
    storage: MemoryStorage,
) -> None:
    runner = BatchRunner(storage, _generate)
    waiting = (await runner.submit(["a"], metadata={"owner": "ada"})).id
    asked: list[tuple[str, str | None]] = []

    async def authorize(request: Request, action: str, batch_id: str | None) -> bool:
        asked.append((action, batch_id))
        user = request.headers.get("x-user")
        if user == "admin":
            return True
        return user == "viewer" and action == "view"

    app = dashboard(storage, authorize=authorize)
    async with _client(app) as client:
        for path in ("/", f"/batches/{waiting}", f"/batches/{waiting}/events"):
            reply = await client.get(path)
            assert reply.status_code == 403, path
            assert "not allowed" in reply.text
        viewer = {"x-user": "viewer"}
        page = await client.get(f"/batches/{waiting}", headers=viewer)
        assert page.status_code == 200
        assert '<form method="post"' not in page.text  # no action it may not take
        token = client.cookies.get("batchkit_csrf")
        refused = await client.post(
            f"/batches/{waiting}/cancel", data={"csrf": token}, headers=viewer
        )
        assert refused.status_code == 403
        assert not (await runner.status(waiting)).cancel_requested
        admin = await client.get(f"/batches/{waiting}", headers={"x-user": "admin"})
        assert 'value="cancel"' in admin.text
        assert 'value="delete"' in admin.text
    assert ("view", None) in asked
    assert ("cancel", waiting) in asked


async def test_links_and_cookies_follow_the_mount_point(storage: MemoryStorage) -> None:
    batch_id = await _finished_batch(storage)
    host = Starlette(routes=[Mount("/ops/batchkit", app=dashboard(storage, authorize=None))])
    async with _client(host) as client:
        listing = await client.get("/ops/batchkit/")
        assert f'href="/ops/batchkit/batches/{batch_id}"' in listing.text
        assert 'href="/ops/batchkit/static/dashboard.css"' in listing.text
        assert "Path=/ops/batchkit" in listing.headers["set-cookie"]
        page = await client.get(f"/ops/batchkit/batches/{batch_id}")
        waiting = await BatchRunner(storage, _generate).submit(["a"])
        live = await client.get(f"/ops/batchkit/batches/{waiting.id}")
        assert f'data-events="/ops/batchkit/batches/{waiting.id}/events"' in live.text
        token = _csrf(page.text)
        deleted = await client.post(
            f"/ops/batchkit/batches/{batch_id}/delete", data={"csrf": token}
        )
        assert deleted.headers["location"] == "/ops/batchkit/?done=deleted"


async def test_a_finished_batchs_events_say_its_status_and_end(storage: MemoryStorage) -> None:
    batch_id = await _finished_batch(storage)
    async with _client(dashboard(storage, authorize=None)) as client:
        reply = await client.get(f"/batches/{batch_id}/events")
    assert reply.status_code == 200
    assert reply.headers["content-type"].startswith("text/event-stream")
    assert reply.text.startswith("event: status\ndata: {")
    assert '"state": "completed_with_errors"' in reply.text
    assert '"succeeded": 3' in reply.text


async def test_a_store_that_fails_shows_a_page_without_its_secrets(
    storage: MemoryStorage,
) -> None:
    async def broken(*args: Any, **kwargs: Any) -> Any:
        raise StorageError("could not reach postgresql://app:S3cretPW@db/app")

    storage.list_batches = broken  # type: ignore[method-assign]
    async with _client(dashboard(storage, authorize=None)) as client:
        reply = await client.get("/")
    assert reply.status_code == 503
    assert "did not answer" in reply.text
    assert "S3cretPW" not in reply.text


def test_authorize_must_be_given_and_callable() -> None:
    storage = MemoryStorage()
    with pytest.raises(TypeError):
        dashboard(storage)  # type: ignore[call-arg]
    with pytest.raises(TypeError, match="authorize"):
        dashboard(storage, authorize="staff")  # type: ignore[arg-type]
    for bad in (0, -1, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="heartbeat"):
            dashboard(storage, authorize=None, heartbeat=bad)


async def test_item_states_show_as_the_pages_say(storage: MemoryStorage) -> None:
    runner = BatchRunner(storage, _generate)
    batch = await runner.submit(["a", "b"])
    async with _client(dashboard(storage, authorize=None)) as client:
        page = await client.get(f"/batches/{batch.id}")
    assert page.text.count(f'class="state {ItemState.QUEUED.value}"') >= 2
    assert 'data-count="queued">2<' in page.text
