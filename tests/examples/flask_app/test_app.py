"""The Flask example through Flask's test client, on SQLite and on PostgreSQL: sign-in,
the whole flow from products to a retried batch, owners, CSRF, double submits."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pytest

from batchkit import SyncBatchRunner
from examples.flask_app.generator import render

from .conftest import Visitor, hidden_fields

if TYPE_CHECKING:
    from flask import Flask

    from .conftest import Store

#: A valid batch id that no batch has.
UNKNOWN_ID = "01a25166-4a37-7363-b87e-fbc0d866b526"


def _batches(store: Store, owner: str | None = None) -> list[Any]:
    with SyncBatchRunner(store.url, prefix=store.prefix) as reader:
        return reader.batches(metadata={"owner": owner} if owner else None, limit=1000)


def test_every_page_but_sign_in_requires_a_name(app: Flask) -> None:
    client = app.test_client()
    for path in ("/", "/batches", f"/batches/{UNKNOWN_ID}"):
        response = client.get(path)
        assert response.status_code == 303, path
        assert response.headers["Location"] == "/signin"
    api = client.get(f"/api/batches/{UNKNOWN_ID}")
    assert api.status_code == 401
    assert api.json == {"error": "Sign in first."}
    assert client.get("/signin").status_code == 200


def test_sign_in_refuses_a_bad_name_and_sets_a_strict_cookie(app: Flask) -> None:
    client = app.test_client()
    form = hidden_fields(client.get("/signin").text)
    refused = client.post("/signin", data={**form, "name": "<script>"})
    assert refused.status_code == 400
    assert "<script>" not in refused.text
    assert client.get("/").status_code == 303  # still not signed in

    signed = client.post("/signin", data={**form, "name": "ada"})
    assert signed.status_code == 303
    cookie = signed.headers["Set-Cookie"]
    assert "HttpOnly" in cookie
    assert "SameSite=Lax" in cookie
    assert client.get("/").status_code == 200


def test_the_whole_flow(app: Flask, store: Store) -> None:
    ada = Visitor(app, "ada")
    products = ada.client.get("/")
    assert products.text.count('type="checkbox" name="product"') == 12

    batch_id = ada.start("P-001", "P-007", "P-003")
    page = ada.client.get(f"/batches/{batch_id}")
    assert page.status_code == 200
    assert page.text.count("<tr data-key=") == 3
    before = ada.client.get(f"/api/batches/{batch_id}").json
    assert before is not None
    assert before["state"] == "queued"
    assert [item["key"] for item in before["items"]] == ["P-001", "P-007", "P-003"]

    # The web process has no generator: a worker runs the items.
    with SyncBatchRunner(store.url, render, prefix=store.prefix) as worker:
        assert worker.status(batch_id).metadata == {"owner": "ada"}
        worker.run(batch_id)

    after = ada.client.get(f"/api/batches/{batch_id}").json
    assert after is not None
    assert after["state"] == "completed_with_errors"
    assert after["is_terminal"] is True
    items = {item["key"]: item for item in after["items"]}
    assert set(items["P-001"]) == {"key", "state", "progress", "message", "error", "result"}
    for key in ("P-001", "P-003"):
        assert items[key]["state"] == "succeeded"
        assert items[key]["progress"] == 1.0
        assert items[key]["result"] == {"video": f"{key}.mp4", "steps": 4}
        assert items[key]["error"] is None
    assert items["P-007"]["state"] == "failed"
    assert items["P-007"]["error"] == {
        "type": "UnusableProduct",
        "message": "Steel bottle (P-007) has no picture",
    }
    assert items["P-007"]["result"] is None

    finished = ada.client.get(f"/batches/{batch_id}").text
    assert "UnusableProduct: Steel bottle (P-007) has no picture" in finished
    assert "Retry failed (1)" in finished

    retried = ada.client.post(f"/batches/{batch_id}/retry", data=ada.form(f"/batches/{batch_id}"))
    assert retried.status_code == 303
    child_id = retried.headers["Location"].removeprefix("/batches/")
    assert child_id != batch_id
    child = ada.client.get(f"/api/batches/{child_id}").json
    assert child is not None
    assert child["parent_id"] == batch_id
    assert [(item["key"], item["state"]) for item in child["items"]] == [("P-007", "queued")]
    # A second click makes no second retry.
    again = ada.client.post(f"/batches/{batch_id}/retry", data=ada.form(f"/batches/{batch_id}"))
    assert again.headers["Location"] == f"/batches/{child_id}"

    listing = ada.client.get("/batches").text
    assert batch_id in listing
    assert child_id in listing
    assert {b.batch_id for b in _batches(store, "ada")} == {batch_id, child_id}


def test_another_visitor_gets_404_as_for_an_unknown_batch(app: Flask, store: Store) -> None:
    ada, bob = Visitor(app, "ada"), Visitor(app, "bob")
    batch_id = ada.start("P-007")
    with SyncBatchRunner(store.url, render, prefix=store.prefix) as worker:
        worker.run(batch_id)  # it failed: a retry would be possible, for its owner

    form = bob.form()
    for target in (batch_id, UNKNOWN_ID):
        page = bob.client.get(f"/batches/{target}")
        api = bob.client.get(f"/api/batches/{target}")
        retry = bob.client.post(f"/batches/{target}/retry", data=form)
        assert (page.status_code, api.status_code, retry.status_code) == (404, 404, 404)
        assert api.json == {"error": "No such batch."}
        assert batch_id not in page.text
    assert batch_id not in bob.client.get("/batches").text
    assert [b.batch_id for b in _batches(store)] == [batch_id]  # bob's retry made nothing


@pytest.mark.parametrize(
    "bad_id", ["nope", "1", "01A25166-4A37-7363-B87E-FBC0D866B526", "x" * 300, "%00", "..%2F.."]
)
def test_a_bad_id_is_404(app: Flask, bad_id: str) -> None:
    ada = Visitor(app, "ada")
    assert ada.client.get(f"/batches/{bad_id}").status_code == 404
    assert ada.client.get(f"/api/batches/{bad_id}").status_code == 404
    assert ada.client.post(f"/batches/{bad_id}/retry", data=ada.form()).status_code == 404


def test_a_post_without_the_csrf_token_is_refused_and_writes_nothing(
    app: Flask, store: Store
) -> None:
    ada, bob = Visitor(app, "ada"), Visitor(app, "bob")
    form = ada.form()
    batch_id = ada.start("P-007")
    with SyncBatchRunner(store.url, render, prefix=store.prefix) as worker:
        worker.run(batch_id)

    forged = [
        {"nonce": form["nonce"]},  # no token
        {**form, "csrf_token": ""},
        {**form, "csrf_token": form["csrf_token"][:-2] + "xx"},
        {**form, "csrf_token": bob.form()["csrf_token"]},  # another session's token
    ]
    for data in forged:
        submit = ada.client.post("/batches", data={**data, "product": ["P-001"]})
        retry = ada.client.post(f"/batches/{batch_id}/retry", data=data)
        assert (submit.status_code, retry.status_code) == (403, 403), data
        assert "expired" in submit.text
    # A new session (a cross-site form sends the victim's cookie, never its token).
    stranger = app.test_client()
    assert stranger.post("/signin", data={"name": "mallory"}).status_code == 403
    assert [b.batch_id for b in _batches(store)] == [batch_id]


def test_a_double_submit_makes_one_batch(app: Flask, store: Store) -> None:
    ada = Visitor(app, "ada")
    form = ada.form()
    first = ada.submit("P-001", "P-002", form=form)
    second = ada.submit("P-001", "P-002", form=form)
    assert first.status_code == second.status_code == 303
    assert first.headers["Location"] == second.headers["Location"]
    assert len(_batches(store, "ada")) == 1

    # Another visitor sending the same nonce gets a batch of their own.
    bob = Visitor(app, "bob")
    theirs = bob.submit("P-001", "P-002", form={**bob.form(), "nonce": form["nonce"]})
    assert theirs.headers["Location"] != first.headers["Location"]
    # A new form is a new batch.
    ada.start("P-001", "P-002")
    assert len(_batches(store, "ada")) == 2


def test_a_bad_form_is_refused_and_writes_nothing(app: Flask, store: Store) -> None:
    ada = Visitor(app, "ada")
    form = ada.form()
    nothing = ada.submit(form=form)
    assert nothing.status_code == 400
    assert "Choose at least one product." in nothing.text
    assert ada.submit("P-001", "P-999", form=form).status_code == 400
    assert ada.submit("P-001", form={**form, "nonce": "short"}).status_code == 400
    assert ada.submit("P-001", form={"csrf_token": form["csrf_token"]}).status_code == 400
    assert _batches(store) == []
