"""The Flask app: sign in, pick products, start a batch, watch it, retry what failed.

One `SyncBatchRunner` per app, made in `create_app` and kept in
``app.extensions["batchkit"]``. The web process only submits and reads: it has no
generator, and a worker (``python -m batchkit worker``) runs the items.

Environment:

- ``BATCHKIT_STORAGE``: the storage URL (``sqlite+aiosqlite:///batchkit-flask.db`` in the
  working directory by default);
- ``BATCHKIT_PREFIX``: the storage's table or key prefix (the storage's own by default);
  a worker is then started with the same ``--prefix``;
- ``BATCHKIT_FLASK_SECRET``: the key that signs the session cookie. Without it a random
  one is generated when the app is made: sessions then end when the server restarts, and
  only the processes forked from that one (gunicorn's ``--preload``) share it.
"""

from __future__ import annotations

import atexit
import hmac
import logging
import os
import re
import secrets
from typing import TYPE_CHECKING, Any

from flask import (
    Flask,
    abort,
    current_app,
    g,
    jsonify,
    redirect,
    render_template,
    request,
    session,
    url_for,
)
from werkzeug.exceptions import HTTPException

from batchkit import BatchNotFound, InvalidBatch, ItemState, SyncBatchRunner
from examples.fastapi_app.catalog import Product, catalog

if TYPE_CHECKING:
    from flask.typing import ResponseReturnValue
    from werkzeug.wrappers import Response

    from batchkit import BatchStatus, Item

__all__ = ["DEFAULT_STORAGE", "EXTENSION", "create_app", "products", "runner"]

logger = logging.getLogger(__name__)

DEFAULT_STORAGE = "sqlite+aiosqlite:///batchkit-flask.db"
#: Where the runner is kept: ``app.extensions[EXTENSION]``.
EXTENSION = "batchkit"
#: The items of one page of the JSON and of the batch page (a batch has at most 12).
_PAGE = 1_000
_NAME = re.compile(r"\A[A-Za-z0-9][A-Za-z0-9 _.-]{0,39}\Z")
_NONCE = re.compile(r"\A[A-Za-z0-9_-]{16,64}\Z")
#: The routes open to a visitor who has not signed in.
_PUBLIC = frozenset({"signin", "static"})
_CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)


def products() -> tuple[Product, ...]:
    """The products on offer: the first dozen of the bundled catalog (two of them,
    P-007 and P-012, cannot have a video)."""
    return catalog()[:12]


def create_app(
    storage: str | None = None, *, prefix: str | None = None, secret_key: str | None = None
) -> Flask:
    """Make the app and its one `SyncBatchRunner`.

    Args:
        storage: the storage URL; `None`: ``$BATCHKIT_STORAGE``, or a SQLite file
            ``batchkit-flask.db`` in the working directory.
        prefix: the storage's table or key prefix; `None`: ``$BATCHKIT_PREFIX``, or the
            storage's own.
        secret_key: the key that signs sessions; `None`: ``$BATCHKIT_FLASK_SECRET``, or
            a random one.
    """
    app = Flask(__name__)
    key = secret_key or os.environ.get("BATCHKIT_FLASK_SECRET")
    if not key:
        key = secrets.token_hex(32)
        logger.warning(
            "no BATCHKIT_FLASK_SECRET: generated a random session key; sessions end when "
            "the server restarts, and only processes forked from this one share it"
        )
    app.config.update(
        SECRET_KEY=key,
        SESSION_COOKIE_NAME="batchkit_flask",
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Lax",
        MAX_CONTENT_LENGTH=64 * 1024,
    )
    url = storage or os.environ.get("BATCHKIT_STORAGE") or DEFAULT_STORAGE
    # Nothing connects here: each process opens the storage on its first call, so the
    # runner made in gunicorn's master (--preload) serves every forked worker.
    batchkit = SyncBatchRunner(url, prefix=prefix or os.environ.get("BATCHKIT_PREFIX") or None)
    app.extensions[EXTENSION] = batchkit
    atexit.register(batchkit.close)

    app.before_request(_check_request)
    app.after_request(_secure_headers)
    app.register_error_handler(HTTPException, _http_error)
    _routes(app)
    return app


def runner() -> SyncBatchRunner:
    """The current app's runner."""
    found: SyncBatchRunner = current_app.extensions[EXTENSION]
    return found


# -- every request ---------------------------------------------------------------------------


def _csrf_token() -> str:
    """The session's CSRF token, made on first use."""
    token = session.get("csrf")
    if not isinstance(token, str):
        token = session["csrf"] = secrets.token_urlsafe(32)
    return token


def _check_request() -> ResponseReturnValue | None:
    """Refuse a POST without the session's CSRF token; send a stranger to sign in."""
    if request.method == "POST":
        sent = request.form.get("csrf_token", "")
        expected = session.get("csrf")
        if not isinstance(expected, str) or not hmac.compare_digest(sent, expected):
            abort(403, "This form has expired or did not come from this site: reload the page.")
    name = session.get("name")
    if isinstance(name, str) and _NAME.match(name):
        g.name = name
        return None
    if request.endpoint in _PUBLIC:
        return None
    if request.path.startswith("/api/"):
        abort(401, "Sign in first.")
    return redirect(url_for("signin"), 303)


def _secure_headers(response: Response) -> Response:
    response.headers["Content-Security-Policy"] = _CSP
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Referrer-Policy"] = "same-origin"
    return response


def _http_error(error: HTTPException) -> ResponseReturnValue:
    code = error.code or 500
    if request.path.startswith("/api/"):
        return jsonify(error=error.description), code
    return render_template("error.html", error=error, code=code), code


def _owned(batch_id: str) -> BatchStatus:
    """The batch's status when it is the visitor's; otherwise 404, as for an unknown id
    (so ids cannot be probed)."""
    try:
        status = runner().status(batch_id)
    except BatchNotFound:
        abort(404, "No such batch.")
    if status.metadata.get("owner") != g.name:
        abort(404, "No such batch.")
    return status


def _items(batch_id: str) -> list[Item]:
    found: list[Item] = []
    while True:
        page = runner().items(batch_id, limit=_PAGE, after=found[-1].position if found else None)
        found += page
        if len(page) < _PAGE:
            return found


# -- pages -----------------------------------------------------------------------------------


def _routes(app: Flask) -> None:
    @app.context_processor
    def common() -> dict[str, Any]:
        return {"csrf_token": _csrf_token, "name": g.get("name")}

    @app.route("/signin", methods=["GET", "POST"])
    def signin() -> ResponseReturnValue:
        if request.method == "GET":
            return render_template("signin.html", error=None)
        name = request.form.get("name", "").strip()
        if not _NAME.match(name):
            error = "A name is 1 to 40 letters, digits, spaces, '.', '_' or '-'."
            return render_template("signin.html", error=error), 400
        session.clear()  # a new session, and a new CSRF token, for whoever signs in
        session["name"] = name
        return redirect(url_for("products_page"), 303)

    @app.post("/signout")
    def signout() -> ResponseReturnValue:
        session.clear()
        return redirect(url_for("signin"), 303)

    @app.get("/")
    def products_page() -> ResponseReturnValue:
        return _products_form(error=None)

    @app.post("/batches")
    def submit() -> ResponseReturnValue:
        nonce = request.form.get("nonce", "")
        if not _NONCE.match(nonce):
            abort(400, "The form is incomplete: reload the page.")
        offered = {product.id: product for product in products()}
        chosen = list(dict.fromkeys(request.form.getlist("product")))
        if not chosen:
            return _products_form(error="Choose at least one product."), 400
        if any(key not in offered for key in chosen):
            abort(400, "Unknown product.")
        batch = runner().submit(
            [{"key": key, "payload": offered[key].payload()} for key in chosen],
            metadata={"owner": g.name},
            # One form, one batch: a double submit returns the batch of the first.
            idempotency_key=f"flask-example:{g.name}:{nonce}",
        )
        return redirect(url_for("batch_page", batch_id=batch.id), 303)

    @app.get("/batches")
    def batches_page() -> ResponseReturnValue:
        mine = runner().batches(metadata={"owner": g.name}, limit=100)
        return render_template("batches.html", batches=mine)

    @app.get("/batches/<batch_id>")
    def batch_page(batch_id: str) -> ResponseReturnValue:
        status = _owned(batch_id)
        titles = {product.id: product.title for product in products()}
        return render_template("batch.html", status=status, items=_items(batch_id), titles=titles)

    @app.post("/batches/<batch_id>/retry")
    def retry(batch_id: str) -> ResponseReturnValue:
        _owned(batch_id)
        try:
            child = runner().retry_failed(batch_id)
        except InvalidBatch as exc:  # still running, or nothing failed
            abort(409, str(exc))
        return redirect(url_for("batch_page", batch_id=child.id), 303)

    @app.get("/api/batches/<batch_id>")
    def batch_json(batch_id: str) -> ResponseReturnValue:
        status = _owned(batch_id)
        return jsonify(
            id=status.batch_id,
            parent_id=status.parent_id,
            state=status.state.value,
            is_terminal=status.is_terminal,
            total=status.total,
            progress=status.progress,
            counts={state.value: count for state, count in status.counts.items()},
            items=[_item_json(item) for item in _items(batch_id)],
        )


def _products_form(error: str | None) -> str:
    return render_template(
        "products.html",
        products=products(),
        nonce=secrets.token_urlsafe(16),
        chosen=set(request.form.getlist("product")),
        error=error,
    )


def _item_json(item: Item) -> dict[str, Any]:
    error = None
    if item.error is not None:  # no traceback: that is for the operators' logs
        error = {"type": item.error.type, "message": item.error.message}
    return {
        "key": item.key,
        "state": item.state.value,
        "progress": item.progress,
        "message": item.message,
        "error": error,
        "result": item.result if item.state is ItemState.SUCCEEDED else None,
    }
