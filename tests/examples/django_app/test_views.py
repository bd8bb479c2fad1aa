"""The example's pages through Django's test client: sign-in, a whole batch, owners,
CSRF, a form sent twice."""

from __future__ import annotations

import re
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.test import Client
from products.generator import render
from products.models import Product

from batchkit import SyncBatchRunner
from batchkit.contrib.django import get_runner, storage_url, table_prefix
from batchkit.ids import new_batch_id

from .conftest import PASSWORD

PICKED = ["Basalt Mug", "Cursed Lamp", "Juniper Candle"]


def _client(user: Any, **options: Any) -> Client:
    client = Client(**options)
    client.force_login(user)
    return client


def _form(client: Client) -> dict[str, Any]:
    """What the products page's form sends, with ``PICKED`` ticked."""
    page = client.get("/products/")
    assert page.status_code == 200
    html = page.content.decode()
    nonce = re.search(r'name="nonce" value="([^"]+)"', html)
    assert nonce is not None
    ids = [str(Product.objects.get(name=name).id) for name in PICKED]
    for product_id in ids:
        assert f'name="product" value="{product_id}"' in html
    return {"nonce": nonce.group(1), "product": ids}


def _start(client: Client) -> str:
    sent = client.post("/batches/", _form(client))
    assert sent.status_code == 302
    found = re.fullmatch(r"/batches/([^/]+)/", sent["Location"])
    assert found is not None, sent["Location"]
    return found.group(1)


def _run(batch_id: str) -> None:
    with SyncBatchRunner(storage_url(), render, prefix=table_prefix()) as runner:
        runner.run(batch_id)


def test_every_page_needs_a_signed_in_user() -> None:
    client = Client()
    batch_id = new_batch_id()
    for method, url in [
        ("get", "/products/"),
        ("get", "/batches/"),
        ("post", "/batches/"),
        ("get", f"/batches/{batch_id}/"),
        ("get", f"/batches/{batch_id}/status.json"),
        ("post", f"/batches/{batch_id}/retry/"),
    ]:
        answer = getattr(client, method)(url)
        assert answer.status_code == 302, url
        assert answer["Location"].startswith("/accounts/login/?next="), url


def test_a_demo_user_signs_in_with_the_form() -> None:
    client = Client(enforce_csrf_checks=True)
    page = client.get("/accounts/login/")
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page.content.decode())
    assert token is not None
    wrong = client.post(
        "/accounts/login/",
        {"username": "ada", "password": "wrong", "csrfmiddlewaretoken": token.group(1)},
    )
    assert wrong.status_code == 200
    assert "did not match" in wrong.content.decode()
    signed = client.post(
        "/accounts/login/",
        {"username": "ada", "password": PASSWORD, "csrfmiddlewaretoken": token.group(1)},
    )
    assert signed.status_code == 302
    assert signed["Location"] == "/products/"
    products = client.get("/products/").content.decode()
    assert products.count('type="checkbox" name="product"') == 12


def test_a_batch_from_start_to_retry(user: User) -> None:
    client = _client(user)
    batch_id = _start(client)
    # Server-rendered: every product, queued, before any script runs.
    page = client.get(f"/batches/{batch_id}/").content.decode()
    assert "queued" in page
    for name in PICKED:
        assert name in page
    assert re.search(r'<form id="retry"[^>]*hidden', page)

    _run(batch_id)

    data = client.get(f"/batches/{batch_id}/status.json").json()
    assert data["state"] == "completed_with_errors"
    assert data["is_terminal"] is True
    assert data["progress"] == 100
    assert data["counts"] == {"succeeded": 2, "failed": 1}
    states = {item["name"]: item["state"] for item in data["items"]}
    assert states == {
        "Basalt Mug": "succeeded",
        "Cursed Lamp": "failed",
        "Juniper Candle": "succeeded",
    }
    failed = next(item for item in data["items"] if item["state"] == "failed")
    assert "no light" in failed["error"]
    page = client.get(f"/batches/{batch_id}/").content.decode()
    assert "no light" in page
    assert not re.search(r'<form id="retry"[^>]*hidden', page)
    assert "<script>" not in page  # finished: nothing left to poll

    retried = client.post(f"/batches/{batch_id}/retry/")
    assert retried.status_code == 302
    child_id = retried["Location"].split("/")[2]
    assert child_id != batch_id
    child = client.get(f"/batches/{child_id}/status.json").json()
    assert child["parent_id"] == batch_id
    assert child["total"] == 1
    assert [item["key"] for item in child["items"]] == [failed["key"]]
    # Sent again (a double click), the same retry.
    assert client.post(f"/batches/{batch_id}/retry/")["Location"] == retried["Location"]

    listed = client.get("/batches/").content.decode()
    assert batch_id in listed
    assert child_id in listed


def test_retry_before_the_end_makes_nothing(user: User) -> None:
    client = _client(user)
    batch_id = _start(client)
    answer = client.post(f"/batches/{batch_id}/retry/", follow=True)
    assert answer.redirect_chain == [(f"/batches/{batch_id}/", 302)]
    assert "still queued" in answer.content.decode()
    assert len(get_runner().batches(metadata={"owner": user.username})) == 1


def test_another_users_batch_is_not_found(user: User) -> None:
    owner = _client(user)
    batch_id = _start(owner)
    _run(batch_id)
    other = User.objects.create(username=f"{user.username}-other")
    intruder = _client(other)
    assert intruder.get(f"/batches/{batch_id}/").status_code == 404
    assert intruder.get(f"/batches/{batch_id}/status.json").status_code == 404
    assert intruder.post(f"/batches/{batch_id}/retry/").status_code == 404
    assert batch_id not in intruder.get("/batches/").content.decode()
    # Nothing was retried for the intruder, nor in the owner's name.
    assert len(get_runner().batches(metadata={"owner": user.username})) == 1
    # An unknown batch and ids that are none look the same.
    for batch in [new_batch_id(), "nope", "..%2F..%2Fetc", "b" * 300]:
        assert owner.get(f"/batches/{batch}/").status_code == 404, batch
        assert owner.get(f"/batches/{batch}/status.json").status_code == 404, batch
        assert owner.post(f"/batches/{batch}/retry/").status_code == 404, batch


def test_posts_need_the_csrf_token(user: User) -> None:
    client = _client(user, enforce_csrf_checks=True)
    form = _form(client)
    assert client.post("/batches/", form).status_code == 403
    assert get_runner().batches(metadata={"owner": user.username}) == []
    page = client.get("/products/").content.decode()
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page)
    assert token is not None
    sent = client.post("/batches/", {**form, "csrfmiddlewaretoken": token.group(1)})
    assert sent.status_code == 302
    batch_id = sent["Location"].split("/")[2]
    _run(batch_id)
    assert client.post(f"/batches/{batch_id}/retry/").status_code == 403
    assert len(get_runner().batches(metadata={"owner": user.username})) == 1


def test_one_form_sent_twice_makes_one_batch(user: User) -> None:
    client = _client(user)
    form = _form(client)
    first = client.post("/batches/", form)
    second = client.post("/batches/", form)
    assert first.status_code == second.status_code == 302
    assert first["Location"] == second["Location"]
    assert len(get_runner().batches(metadata={"owner": user.username})) == 1
    # A new form (a new nonce) is a new batch.
    client.post("/batches/", _form(client))
    assert len(get_runner().batches(metadata={"owner": user.username})) == 2


@pytest.mark.parametrize(
    ("form", "status"),
    [({"product": ["1"]}, 400), ({"nonce": "x" * 22, "product": []}, 302)],
)
def test_an_incomplete_form_makes_no_batch(user: User, form: dict[str, Any], status: int) -> None:
    client = _client(user)
    assert client.post("/batches/", form).status_code == status
    assert get_runner().batches(metadata={"owner": user.username}) == []
