"""The studio's JSON API, through httpx, with the app and its worker in this process."""

from __future__ import annotations

import json
import re
import signal
import time
from typing import TYPE_CHECKING, Any

import anyio
import anyio.to_thread
import httpx
import pytest

from examples.fastapi_app import owners
from examples.fastapi_app.catalog import catalog
from examples.fastapi_app.main import MAX_PRODUCTS, create_app

from .conftest import Studio

if TYPE_CHECKING:
    from collections.abc import AsyncIterator
    from pathlib import Path

pytestmark = pytest.mark.anyio

USABLE = [p.id for p in catalog() if p.usable]
UNUSABLE = [p.id for p in catalog() if not p.usable]


@pytest.fixture
async def app(studio_env: dict[str, str]) -> AsyncIterator[Any]:
    studio = create_app()
    async with studio.router.lifespan_context(studio):
        yield studio


def _client(app: Any, owner: str | None = "ada") -> httpx.AsyncClient:
    cookies = {} if owner is None else {owners.COOKIE: owners.sign(owner)}
    return httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://studio", cookies=cookies
    )


@pytest.fixture
async def ada(app: Any) -> AsyncIterator[httpx.AsyncClient]:
    async with _client(app) as client:
        yield client


async def _until_terminal(client: httpx.AsyncClient, batch_id: str) -> dict[str, Any]:
    with anyio.fail_after(30):
        while True:
            answer = await client.get(f"/api/v1/products/batch/{batch_id}/status")
            assert answer.status_code == 200, answer.text
            body: dict[str, Any] = answer.json()
            if body["is_terminal"]:
                return body
            await anyio.sleep(0.1)


async def test_a_batch_is_submitted_at_once_and_each_product_ends_on_its_own(
    ada: httpx.AsyncClient,
) -> None:
    chosen = [USABLE[0], UNUSABLE[0], USABLE[1], UNUSABLE[1]]
    started = time.monotonic()
    answer = await ada.post("/api/v1/products/batch-generate", json={"product_ids": chosen})
    # Submitted, not run: the four items take seconds, and the batch is not over yet.
    assert time.monotonic() - started < 5.0
    assert answer.status_code == 202
    created = answer.json()
    assert set(created) >= {"batch_id", "total"}
    assert created["total"] == 4

    first = (await ada.get(f"/api/v1/products/batch/{created['batch_id']}/status")).json()
    assert first["state"] in ("queued", "running")
    final = await _until_terminal(ada, created["batch_id"])
    assert final["state"] == "completed_with_errors"
    assert final["counts"] == {
        "queued": 0,
        "running": 0,
        "succeeded": 2,
        "failed": 2,
        "cancelled": 0,
    }
    assert (final["total"], final["progress"]) == (4, 1.0)
    products = {p["product_id"]: p for p in final["products"]}
    assert list(products) == chosen  # submission order
    for product_id in USABLE[:2]:
        done = products[product_id]
        assert (done["state"], done["progress"], done["error"]) == ("succeeded", 1.0, None)
        video = await ada.get(done["result_url"])
        assert video.status_code == 200
        assert video.content[:6] == b"GIF89a"
    for product_id in UNUSABLE[:2]:
        failed = products[product_id]
        assert failed["state"] == "failed"
        assert failed["result_url"] is None
        assert product_id in failed["error"]
        assert "no image" in failed["error"] or "no price" in failed["error"]


@pytest.fixture(params=["postgres", "redis"])
async def server_app(
    request: pytest.FixtureRequest, studio_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[Any]:
    """The studio on PostgreSQL or Redis (``BATCHKIT_STORAGE``), under a prefix of its own."""
    from tests.storage.conftest import drop_prefixes, server_store

    url, prefix = server_store(request.param, "studio")
    monkeypatch.setenv("BATCHKIT_STORAGE", url)
    monkeypatch.setenv("BATCHKIT_STORAGE_PREFIX", prefix)
    studio = create_app()
    try:
        async with studio.router.lifespan_context(studio):
            yield studio
    finally:
        await drop_prefixes(url, [prefix])


async def test_the_storage_can_be_postgres_or_redis(server_app: Any) -> None:
    async with _client(server_app) as ada:
        chosen = [USABLE[0], UNUSABLE[0]]
        answer = await ada.post("/api/v1/products/batch-generate", json={"product_ids": chosen})
        assert answer.status_code == 202
        final = await _until_terminal(ada, answer.json()["batch_id"])
        assert final["state"] == "completed_with_errors"
        assert [p["state"] for p in final["products"]] == ["succeeded", "failed"]
        assert [b["batch_id"] for b in (await ada.get("/api/v1/batches")).json()] == [
            final["batch_id"]
        ]


async def test_retry_failed_makes_a_batch_of_exactly_the_failed_products(
    ada: httpx.AsyncClient,
) -> None:
    chosen = [USABLE[2], UNUSABLE[2], UNUSABLE[3]]
    batch = (await ada.post("/api/v1/products/batch-generate", json={"product_ids": chosen})).json()
    too_soon = await ada.post(f"/api/v1/products/batch/{batch['batch_id']}/retry-failed")
    if too_soon.status_code != 202:  # still running: refused with the reason
        assert too_soon.status_code == 409
        assert "still" in too_soon.json()["detail"]
    await _until_terminal(ada, batch["batch_id"])
    answer = await ada.post(f"/api/v1/products/batch/{batch['batch_id']}/retry-failed")
    assert answer.status_code == 202
    again = answer.json()
    assert (again["total"], again["parent_id"]) == (2, batch["batch_id"])
    twice = await ada.post(f"/api/v1/products/batch/{batch['batch_id']}/retry-failed")
    assert twice.json()["batch_id"] == again["batch_id"]  # a double click: one retry
    retried = (await ada.get(f"/api/v1/products/batch/{again['batch_id']}/status")).json()
    assert [p["product_id"] for p in retried["products"]] == chosen[1:]
    final = await _until_terminal(ada, again["batch_id"])
    assert final["state"] == "failed"  # still unusable
    none_failed = await ada.post(f"/api/v1/products/batch/{again['batch_id']}/retry-failed")
    assert none_failed.status_code == 202  # its products failed again: a further retry
    ok = (
        await ada.post("/api/v1/products/batch-generate", json={"product_ids": USABLE[:1]})
    ).json()
    await _until_terminal(ada, ok["batch_id"])
    nothing = await ada.post(f"/api/v1/products/batch/{ok['batch_id']}/retry-failed")
    assert nothing.status_code == 409
    assert "no failed items" in nothing.json()["detail"]


async def test_a_request_id_cannot_take_another_owners_retry(app: Any) -> None:
    # An owner named like batchkit's namespace, sending the request id retry_failed's
    # key would end with, makes a batch of their own and leaves the victim's retry alone.
    async with _client(app, "ada") as ada, _client(app, "batchkit") as mallory:
        victim = (
            await ada.post("/api/v1/products/batch-generate", json={"product_ids": UNUSABLE[:1]})
        ).json()
        await _until_terminal(ada, victim["batch_id"])
        taken = await mallory.post(
            "/api/v1/products/batch-generate",
            json={"product_ids": USABLE[:1], "request_id": f"retry-failed:{victim['batch_id']}"},
        )
        assert taken.status_code == 202
        retry = await ada.post(f"/api/v1/products/batch/{victim['batch_id']}/retry-failed")
        assert retry.status_code == 202
        assert retry.json()["parent_id"] == victim["batch_id"]
        assert retry.json()["batch_id"] != taken.json()["batch_id"]


async def test_each_owner_sees_their_own_batches_only(app: Any, ada: httpx.AsyncClient) -> None:
    mine = (
        await ada.post("/api/v1/products/batch-generate", json={"product_ids": USABLE[:2]})
    ).json()
    async with _client(app, "bob") as bob:
        theirs = (
            await bob.post("/api/v1/products/batch-generate", json={"product_ids": USABLE[3:4]})
        ).json()
        for path in ("status", "events"):
            assert (
                await bob.get(f"/api/v1/products/batch/{mine['batch_id']}/{path}")
            ).status_code == 404
        assert (
            await bob.post(f"/api/v1/products/batch/{mine['batch_id']}/retry-failed")
        ).status_code == 404
        listed = (await bob.get("/api/v1/batches")).json()
        assert [b["batch_id"] for b in listed] == [theirs["batch_id"]]
    listed = (await ada.get("/api/v1/batches")).json()
    assert [b["batch_id"] for b in listed] == [mine["batch_id"]]
    assert set(listed[0]) >= {"batch_id", "state", "counts", "total", "progress", "created_at"}
    unknown = "01890000-0000-7000-8000-000000000000"
    assert (await ada.get(f"/api/v1/products/batch/{unknown}/status")).status_code == 404
    assert (await ada.get("/api/v1/products/batch/not-an-id/status")).status_code == 404


async def test_the_api_needs_a_signed_in_owner(app: Any) -> None:
    async with _client(app, None) as anonymous:
        answer = await anonymous.post(
            "/api/v1/products/batch-generate", json={"product_ids": USABLE[:1]}
        )
        assert answer.status_code == 401
        assert (await anonymous.get("/api/v1/batches")).status_code == 401
        page = await anonymous.get("/products")
        assert page.status_code == 303
        assert page.headers["location"].startswith("/login")
    forged = httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app),
        base_url="http://studio",
        cookies={owners.COOKIE: "ada|" + "0" * 32},
    )
    async with forged:
        assert (await forged.get("/api/v1/batches")).status_code == 401


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"product_ids": []}, "choose at least one product"),
        ({"product_ids": ["P-001", "NOPE-1", "NOPE-2"]}, "unknown product ids: NOPE-1, NOPE-2"),
        ({"product_ids": [f"P-{n:03d}" for n in range(1, MAX_PRODUCTS + 2)]}, "at most 200"),
        ({"product_ids": ["P-001", "P-001"]}, "chosen twice: P-001"),
        ({"products": ["P-001"]}, "Field required"),
        ({"product_ids": "P-001"}, "valid list"),
    ],
)
async def test_bad_input_is_a_422_with_a_clear_message(
    ada: httpx.AsyncClient, body: dict[str, Any], message: str
) -> None:
    answer = await ada.post("/api/v1/products/batch-generate", json=body)
    assert answer.status_code == 422
    assert message in answer.text
    assert (await ada.get("/api/v1/batches")).json() == []  # nothing was written


async def test_malformed_json_is_a_422(ada: httpx.AsyncClient) -> None:
    answer = await ada.post(
        "/api/v1/products/batch-generate",
        content=b'{"product_ids": ["P-001"',
        headers={"content-type": "application/json"},
    )
    assert answer.status_code == 422
    assert "JSON" in answer.text


async def test_the_same_request_id_makes_one_batch(ada: httpx.AsyncClient) -> None:
    body = {"product_ids": USABLE[:2], "request_id": "click-1"}
    first = (await ada.post("/api/v1/products/batch-generate", json=body)).json()
    second = (await ada.post("/api/v1/products/batch-generate", json=body)).json()
    assert first["batch_id"] == second["batch_id"]
    assert len((await ada.get("/api/v1/batches")).json()) == 1


async def test_events_stream_each_change_and_end_with_the_batch(ada: httpx.AsyncClient) -> None:
    batch = (
        await ada.post("/api/v1/products/batch-generate", json={"product_ids": USABLE[:2]})
    ).json()
    answer = await ada.get(f"/api/v1/products/batch/{batch['batch_id']}/events")
    assert answer.status_code == 200
    assert answer.headers["content-type"].startswith("text/event-stream")
    events = [block for block in answer.text.split("\n\n") if block.strip()]
    kinds = [block.splitlines()[0] for block in events]
    assert kinds[-1] == "event: end"
    assert set(kinds[:-1]) == {"event: status"}
    statuses = [json.loads(block.splitlines()[1].removeprefix("data: ")) for block in events[:-1]]
    assert len(statuses) >= 3  # several changes were streamed, not just the end
    assert statuses[-1]["state"] == "completed"
    progress = [s["progress"] for s in statuses]
    assert progress == sorted(progress)
    assert all(len(s["products"]) == 2 for s in statuses)


async def test_the_openapi_schema_documents_the_api(ada: httpx.AsyncClient) -> None:
    schema = (await ada.get("/openapi.json")).json()
    paths = schema["paths"]
    for path, method in [
        ("/api/v1/products/batch-generate", "post"),
        ("/api/v1/products/batch/{batch_id}/status", "get"),
        ("/api/v1/products/batch/{batch_id}/retry-failed", "post"),
        ("/api/v1/batches", "get"),
        ("/api/v1/products/batch/{batch_id}/events", "get"),
    ]:
        assert method in paths[path], path
        assert paths[path][method].get("description") or paths[path][method].get("summary")
    status = schema["components"]["schemas"]["ProductStatus"]["properties"]
    assert set(status) >= {
        "product_id",
        "title",
        "state",
        "progress",
        "message",
        "error",
        "result_url",
    }


def test_the_catalog_has_forty_products_and_a_few_unusable_ones() -> None:
    products = catalog()
    assert len(products) >= 40
    assert len({p.id for p in products}) == len(products)
    assert any(p.image is None for p in products)
    assert any(p.price == 0 for p in products)
    assert 2 <= len(UNUSABLE) <= 8


# -- an app on the internet ------------------------------------------------------------------


async def test_a_video_is_served_to_its_batchs_owner_only(app: Any, ada: httpx.AsyncClient) -> None:
    batch = (
        await ada.post("/api/v1/products/batch-generate", json={"product_ids": USABLE[:1]})
    ).json()
    final = await _until_terminal(ada, batch["batch_id"])
    url = final["products"][0]["result_url"]
    assert (await ada.get(url)).status_code == 200
    async with _client(app, "grace") as grace, _client(app, None) as anonymous:
        assert (await grace.get(url)).status_code == 404  # as for no video at all
        assert (await anonymous.get(url)).status_code == 401
    for wrong in ("../../studio.db", "..%2F..%2Fstudio.db", "x.png", ".secret"):
        answer = await ada.get(f"/media/{batch['batch_id']}/{wrong}")
        assert answer.status_code == 404, wrong


async def test_without_a_secret_one_is_made_and_kept(
    studio_env: dict[str, str], monkeypatch: pytest.MonkeyPatch, tmp_path: Any
) -> None:
    # No key anyone can read: a random one, kept (a restart keeps its visitors signed in),
    # readable by its owner only, and a cookie signed with the old public default is
    # refused.
    monkeypatch.delenv("BATCHKIT_STUDIO_SECRET", raising=False)
    path = tmp_path / "studio.secret"
    cookie = owners.sign("ada")
    key = path.read_bytes()
    assert len(key) == 64
    assert path.stat().st_mode & 0o777 == 0o600
    assert owners.read(cookie) == "ada"
    import hashlib
    import hmac

    public = b"batchkit-studio-development-secret"
    forged = f"ada|{hmac.new(public, b'ada', hashlib.sha256).hexdigest()[:32]}"
    assert owners.read(forged) is None


async def test_a_request_body_is_capped_and_never_echoed(ada: httpx.AsyncClient) -> None:
    huge = "x" * (2 * 1024 * 1024)
    for path in ("/login", "/api/v1/products/batch-generate"):
        answer = await ada.post(path, content=huge.encode())
        assert answer.status_code == 413, path

    async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: counted as it comes
        for _ in range(40):
            yield b"y" * 65_536

    answer = await ada.post("/api/v1/products/batch-generate", content=chunks())
    assert answer.status_code == 413
    marker = "Z" * 50_000
    bad = await ada.post(
        "/api/v1/products/batch-generate", json={"product_ids": [marker], "request_id": marker}
    )
    assert bad.status_code == 422
    assert marker[:100] not in bad.text
    assert len(bad.content) < 2_000


async def test_a_request_id_sent_again_with_other_products_is_a_conflict(
    ada: httpx.AsyncClient,
) -> None:
    first = await ada.post(
        "/api/v1/products/batch-generate",
        json={"product_ids": USABLE[:2], "request_id": "form-7"},
    )
    again = await ada.post(
        "/api/v1/products/batch-generate",
        json={"product_ids": USABLE[:2], "request_id": "form-7"},
    )
    other = await ada.post(
        "/api/v1/products/batch-generate",
        json={"product_ids": USABLE[2:4], "request_id": "form-7"},
    )
    assert (first.status_code, again.status_code) == (202, 202)
    assert again.json()["batch_id"] == first.json()["batch_id"]
    assert other.status_code == 409
    assert "already used" in other.json()["detail"]


@pytest.mark.parametrize(
    "headers",
    [
        {"Sec-Fetch-Site": "cross-site"},
        {"Sec-Fetch-Site": "same-site"},
        {"Origin": "https://evil.example"},
        {"Origin": "null"},
    ],
)
async def test_a_cross_site_request_cannot_change_anything(
    app: Any, ada: httpx.AsyncClient, headers: dict[str, str]
) -> None:
    login = await ada.post(
        "/login",
        content=b"name=mallory",
        headers={**headers, "Content-Type": "application/x-www-form-urlencoded"},
    )
    assert login.status_code == 403
    assert owners.COOKIE not in login.cookies
    assert (await ada.post("/logout", headers=headers)).status_code == 403
    made = await ada.post(
        "/api/v1/products/batch-generate", json={"product_ids": USABLE[:1]}, headers=headers
    )
    assert made.status_code == 403
    assert (await ada.get("/api/v1/batches")).json() == []
    # The same requests from the studio's own pages go through.
    own = {"Sec-Fetch-Site": "same-origin", "Origin": "http://studio"}
    made = await ada.post(
        "/api/v1/products/batch-generate", json={"product_ids": USABLE[:1]}, headers=own
    )
    assert made.status_code == 202


# -- cancel, names, honest states -------------------------------------------------------------


async def test_a_batch_can_be_cancelled_by_its_owner_only(app: Any, ada: httpx.AsyncClient) -> None:
    chosen = USABLE[:8]  # two slots: most of them are still queued when it is cancelled
    batch_id = (
        await ada.post("/api/v1/products/batch-generate", json={"product_ids": chosen})
    ).json()["batch_id"]
    async with _client(app, "grace") as grace, _client(app, None) as anonymous:
        assert (await grace.post(f"/api/v1/products/batch/{batch_id}/cancel")).status_code == 404
        assert (
            await anonymous.post(f"/api/v1/products/batch/{batch_id}/cancel")
        ).status_code == 401
    refused = await ada.post(
        f"/api/v1/products/batch/{batch_id}/cancel", headers={"Sec-Fetch-Site": "cross-site"}
    )
    assert refused.status_code == 403
    answer = await ada.post(f"/api/v1/products/batch/{batch_id}/cancel")
    assert answer.status_code == 200
    assert answer.json()["cancel_requested"] is True
    final = await _until_terminal(ada, batch_id)
    assert final["state"] == "cancelled"
    states = [p["state"] for p in final["products"]]
    assert states.count("cancelled") >= 5, states
    assert set(states) <= {"succeeded", "cancelled"}
    for product in final["products"]:
        if product["state"] == "cancelled":
            # A cancelled card shows no stage it will never finish, nor a video.
            assert product["message"] is None
            assert product["result_url"] is None
    # Cancelling a finished batch changes nothing.
    again = await ada.post(f"/api/v1/products/batch/{batch_id}/cancel")
    assert again.status_code == 200
    assert again.json()["counts"] == final["counts"]


async def test_batches_are_named_after_their_products_with_pictures(
    ada: httpx.AsyncClient,
) -> None:
    titles = {p.id: p.title for p in catalog()}
    one = (
        await ada.post("/api/v1/products/batch-generate", json={"product_ids": USABLE[:1]})
    ).json()
    five = (
        await ada.post("/api/v1/products/batch-generate", json={"product_ids": USABLE[1:6]})
    ).json()
    listed = {b["batch_id"]: b for b in (await ada.get("/api/v1/batches")).json()}
    assert listed[one["batch_id"]]["name"] == titles[USABLE[0]]
    expected = f"{titles[USABLE[1]]}, {titles[USABLE[2]]} and 3 more"
    assert listed[five["batch_id"]]["name"] == expected
    assert listed[five["batch_id"]]["thumbnails"] == [
        f"/api/v1/products/{p}/image.png" for p in USABLE[1:4]
    ]
    status = (await ada.get(f"/api/v1/products/batch/{five['batch_id']}/status")).json()
    assert status["name"] == expected
    picture = await ada.get(listed[five["batch_id"]]["thumbnails"][0])
    assert picture.status_code == 200
    assert picture.headers["content-type"] == "image/png"
    page = (await ada.get("/batches")).text
    assert expected.replace("&", "&amp;") in page
    assert five["batch_id"] in page  # the link to it
    assert f'src="/api/v1/products/{USABLE[1]}/image.png"' in page


async def test_a_failed_product_shows_its_error_not_a_stale_stage(ada: httpx.AsyncClient) -> None:
    batch_id = (
        await ada.post("/api/v1/products/batch-generate", json={"product_ids": UNUSABLE[:1]})
    ).json()["batch_id"]
    final = await _until_terminal(ada, batch_id)
    (product,) = final["products"]
    assert product["state"] == "failed"
    assert product["message"] is None  # not "script: writing the script"
    assert product["error"]
    page = (await ada.get(f"/batch-generate?batch_id={batch_id}")).text
    assert "writing the script" not in page
    assert 'data-state="failed"' in page
    # Words for people, not FAILED: the batch's badge and the card's.
    assert 'id="overall-state" data-state="failed">Failed</span>' in page
    assert '<span class="badge failed">Failed</span>' in page


async def _events(client: httpx.AsyncClient, batch_id: str) -> AsyncIterator[dict[str, Any]]:
    """The status events of a batch's stream, as they come."""
    async with client.stream("GET", f"/api/v1/products/batch/{batch_id}/events") as events:
        async for line in events.aiter_lines():
            if line.startswith("data: "):
                yield json.loads(line.removeprefix("data: "))


def _served(server: Studio, owner: str = "ada") -> httpx.AsyncClient:
    """A client of the real server (the in-process transport holds a stream's whole body
    until the app ends it)."""
    return httpx.AsyncClient(
        base_url=server.url, cookies={owners.COOKIE: owners.sign(owner)}, timeout=10
    )


async def test_an_item_whose_worker_died_is_shown_waiting_for_a_worker(
    studio_env: dict[str, str], tmp_path: Path
) -> None:
    from batchkit import open_storage
    from batchkit.protocols import ClaimRequest

    # The app runs no worker: its items run in worker processes, one of which dies here.
    server = Studio({**studio_env, "BATCHKIT_STUDIO_CONCURRENCY": "0"}, tmp_path)
    server.start()
    try:
        async with _served(server) as ada, open_storage(studio_env["BATCHKIT_STORAGE"]) as store:
            chosen = USABLE[:2]
            batch_id = (
                await ada.post("/api/v1/products/batch-generate", json={"product_ids": chosen})
            ).json()["batch_id"]
            # A worker claims one item, with a short lease, and dies: no heartbeat, no end.
            claim = await store.claim(ClaimRequest(lease_seconds=0.2, batch_ids=(batch_id,)))
            assert claim is not None
            first = (await ada.get(f"/api/v1/products/batch/{batch_id}/status")).json()
            assert first["counts"]["running"] == 1
            assert first["stalled"] == 0
            assert [p["stalled"] for p in first["products"]] == [False, False]

            # The event stream says so too, though nothing in the store changes.
            with anyio.fail_after(10):
                async for event in _events(ada, batch_id):
                    if event["stalled"] == 1:
                        break
            status = (await ada.get(f"/api/v1/products/batch/{batch_id}/status")).json()
            assert status["counts"]["running"] == 1  # the store's count, as it is
            assert status["stalled"] == 1
            other = next(k for k in chosen if k != claim.lease.key)
            stalled = {p["product_id"]: p["stalled"] for p in status["products"]}
            assert stalled == {claim.lease.key: True, other: False}
            page = (await ada.get(f"/batch-generate?batch_id={batch_id}")).text
            assert "Waiting for a worker" in page
            assert "1 waiting for a worker · 1 queued of 2" in page
    finally:
        server.close()


async def test_an_event_stream_ends_with_gone_when_its_batch_is_deleted(
    studio_env: dict[str, str], tmp_path: Path
) -> None:
    from batchkit import BatchRunner, open_storage
    from examples.fastapi_app.generator import generate

    server = Studio({**studio_env, "BATCHKIT_STUDIO_CONCURRENCY": "0"}, tmp_path)
    server.start()
    try:
        async with _served(server) as ada, open_storage(studio_env["BATCHKIT_STORAGE"]) as store:
            batch_id = (
                await ada.post("/api/v1/products/batch-generate", json={"product_ids": USABLE[:2]})
            ).json()["batch_id"]
            # A page that leaves mid-stream: the server lets it go without an error.
            async with ada.stream("GET", f"/api/v1/products/batch/{batch_id}/events") as left:
                async for line in left.aiter_lines():
                    if line.startswith("data: "):
                        break
            async with ada.stream("GET", f"/api/v1/products/batch/{batch_id}/events") as events:
                lines = events.aiter_lines()
                while not (await anext(lines)).startswith("data: "):
                    pass
                await BatchRunner(store, generate).delete(batch_id)
                with anyio.fail_after(10):
                    rest = [line async for line in lines]
            assert "event: gone" in rest
            assert "event: end" not in rest
            gone = await ada.get(f"/api/v1/products/batch/{batch_id}/status")
            assert gone.status_code == 404
        assert "Traceback" not in server.logs()
    finally:
        server.close()


async def test_sigterm_ends_open_event_streams_and_the_server_at_once(studio: Studio) -> None:
    async with _served(studio) as ada:
        batch_id = (
            await ada.post("/api/v1/products/batch-generate", json={"product_ids": USABLE[:8]})
        ).json()["batch_id"]
        streams = [_events(ada, batch_id), _events(ada, batch_id)]  # two pages open
        for stream in streams:
            with anyio.fail_after(10):
                while (await anext(stream))["counts"]["running"] == 0:
                    pass  # until items run: the worker's grace period has work to do
        started = time.monotonic()
        assert studio.process is not None
        studio.process.send_signal(signal.SIGTERM)
        ends: list[float] = []
        seen: list[dict[str, Any]] = []

        async def drain(stream: AsyncIterator[dict[str, Any]]) -> None:
            seen.extend([event async for event in stream])
            ends.append(time.monotonic() - started)

        with anyio.fail_after(10):
            async with anyio.create_task_group() as group:
                for stream in streams:
                    group.start_soon(drain, stream)
        code = await anyio.to_thread.run_sync(studio.process.wait)
        exited = time.monotonic() - started
        studio.process = None
    assert max(ends) < 1.5, ends
    assert exited < 3.0, studio.logs()
    # uvicorn ends by raising the signal it caught again, as a process stopped by it.
    assert code in (0, -signal.SIGTERM), studio.logs()
    assert "2 item(s) running" in studio.logs()
    assert not any(event["is_terminal"] for event in seen)  # they ended before the batch

    # Nothing was lost: the next server finishes the batch.
    studio.start()
    async with _served(studio) as ada:
        final = await _until_terminal(ada, batch_id)
    assert final["state"] == "completed"


async def test_the_api_docs_need_nothing_from_another_site(ada: httpx.AsyncClient) -> None:
    assert (await ada.get("/redoc")).status_code == 404  # one API page: /docs
    for path in ("/docs",):
        page = await ada.get(path)
        assert page.status_code == 200
        sources = re.findall(r'(?:src|href)="([^"]+)"', page.text) + re.findall(
            r"url: '([^']+)'", page.text
        )
        assert sources, page.text
        for source in sources:
            assert source.startswith("/"), (path, source)  # this site only
            assert (await ada.get(source)).status_code == 200, source
        assert "cdn" not in page.text.lower()
        assert "fonts.googleapis" not in page.text
