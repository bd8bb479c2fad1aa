"""The Flask example under test: in process (Flask's test client) on SQLite and on
PostgreSQL, and served by real processes (gunicorn, Flask's development server).

PostgreSQL and Chromium tests skip when those are missing, and fail when ``CI=true``.
"""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass
from typing import TYPE_CHECKING

import anyio
import pytest

# Debian's Chromium, driven by Playwright: the studio's browser fixture.
from tests.examples.fastapi_app.conftest import browser
from tests.storage.conftest import POSTGRES_URL, _drop_tables, require_server

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

    from flask import Flask
    from flask.testing import FlaskClient
    from werkzeug.test import TestResponse

__all__ = ["ITEM_SECONDS", "Store", "Visitor", "browser", "hidden_fields"]

#: How long the generator takes per item in the tests.
ITEM_SECONDS = "0.05"


@dataclass(frozen=True)
class Store:
    """A storage of the test's own: its URL, and the table prefix that keeps it apart."""

    url: str
    prefix: str | None


@pytest.fixture(autouse=True)
def _fast_items(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BATCHKIT_FLASK_ITEM_SECONDS", ITEM_SECONDS)


@pytest.fixture
def sqlite_store(tmp_path: Path) -> Store:
    return Store(f"sqlite+aiosqlite:///{tmp_path / 'flask.db'}", None)


@pytest.fixture
def postgres_store() -> Iterator[Store]:
    """PostgreSQL, on tables of the test's own, dropped after it."""
    require_server(POSTGRES_URL, "PostgreSQL")
    prefix = f"t{secrets.token_hex(4)}_"
    yield Store(POSTGRES_URL, prefix)
    anyio.run(_drop_tables, POSTGRES_URL, [prefix])


@pytest.fixture(params=["sqlite", "postgres"])
def store(request: pytest.FixtureRequest) -> Store:
    found: Store = request.getfixturevalue(f"{request.param}_store")
    return found


@pytest.fixture
def app(store: Store) -> Iterator[Flask]:
    """The app on the test's storage; its runner closed after the test."""
    from examples.flask_app import create_app

    made = create_app(store.url, prefix=store.prefix, secret_key=secrets.token_hex(16))
    made.config["TESTING"] = True
    try:
        yield made
    finally:
        made.extensions["batchkit"].close()


_HIDDEN = re.compile(r'<input type="hidden" name="(\w+)" value="([^"]*)">')


def hidden_fields(html: str) -> dict[str, str]:
    """The hidden fields of the first form of a page that has them (a form's token and
    nonce), as a browser would send them."""
    return dict(_HIDDEN.findall(html))


class Visitor:
    """A browser's worth of cookies in Flask's test client, signed in as ``name``."""

    def __init__(self, app: Flask, name: str) -> None:
        self.name = name
        self.client: FlaskClient = app.test_client()
        page = self.client.get("/signin")
        signed = self.client.post("/signin", data={"name": name, **hidden_fields(page.text)})
        assert signed.status_code == 303, signed.text

    def form(self, path: str = "/") -> dict[str, str]:
        """The hidden fields of the form on ``path``."""
        page = self.client.get(path)
        assert page.status_code == 200, page.text
        return hidden_fields(page.text)

    def submit(self, *products: str, form: dict[str, str] | None = None) -> TestResponse:
        """Tick ``products`` on the products page and send its form."""
        data = {**(form or self.form()), "product": list(products)}
        return self.client.post("/batches", data=data)

    def start(self, *products: str) -> str:
        """Submit a batch of ``products``; its id."""
        response = self.submit(*products)
        assert response.status_code == 303, response.text
        location = response.headers["Location"]
        assert location.startswith("/batches/")
        return location.removeprefix("/batches/")
