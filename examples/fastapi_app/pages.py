"""The studio's pages: plain HTML rendered on the server, with a little JavaScript.

Every value that comes from data is escaped (`html.escape`); the state a page needs at
load time is embedded as JSON in a ``<script type="application/json">`` block, which the
page's script reads, so a page shows the current state even before its script has run.
"""

from __future__ import annotations

import json
from html import escape
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Sequence

    from .catalog import Product

__all__ = ["batch", "batches", "login", "not_found", "products"]

_STATES = {
    "queued": "queued",
    "running": "running",
    "succeeded": "succeeded",
    "failed": "failed",
    "cancelled": "cancelled",
}


def _layout(title: str, body: str, *, owner: str | None, script: str | None = None) -> str:
    who = ""
    if owner is not None:
        who = (
            f'<span class="who">Signed in as <b>{escape(owner)}</b></span>'
            '<form method="post" action="/logout"><button class="link">Sign out</button></form>'
        )
    tail = "" if script is None else f'<script src="/static/{script}"></script>'
    return f"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{escape(title)} · batchkit studio</title>
<link rel="stylesheet" href="/static/studio.css">
</head>
<body>
<header class="top">
  <a class="brand" href="/products">batchkit studio</a>
  <nav><a href="/products">Products</a><a href="/batches">Your batches</a></nav>
  <div class="account">{who}</div>
</header>
<main>
{body}
</main>
{tail}
</body>
</html>
"""


def _data(name: str, value: Any) -> str:
    # "</" cannot close the script block from inside the JSON.
    text = json.dumps(value).replace("</", "<\\/")
    return f'<script type="application/json" id="{name}">{text}</script>'


def login(*, next: str, error: str | None = None) -> str:
    """The sign-in form: a name is all it asks."""
    problem = "" if error is None else f'<p class="error" role="alert">{escape(error)}</p>'
    body = f"""
<section class="narrow">
  <h1>Sign in</h1>
  <p>Pick a name: your batches are kept under it, and only you see them.</p>
  {problem}
  <form method="post" action="/login" class="login">
    <input type="hidden" name="next" value="{escape(next)}">
    <label>Name <input name="name" required maxlength="40" autofocus></label>
    <button type="submit">Sign in</button>
  </form>
</section>"""
    return _layout("Sign in", body, owner=None)


def products(shown: Sequence[Product], *, page: int, pages: int, owner: str) -> str:
    """The catalog page: a card per product with its checkbox, and the selection bar."""
    cards = []
    for p in shown:
        title = escape(p.title)
        flags = []
        if p.image is None:
            flags.append("no image")
        if p.price <= 0:
            flags.append("no price")
        warning = f'<p class="warn">{escape(", ".join(flags))}</p>' if flags else ""
        cards.append(
            f"""<article class="card product" data-product-id="{escape(p.id)}">
  <label class="pick" title="Select {title}">
    <input type="checkbox" class="select" value="{escape(p.id)}" aria-label="Select {title}">
  </label>
  <img src="/api/v1/products/{escape(p.id)}/image.png" alt="" width="160" height="160">
  <h2>{title}</h2>
  <p class="meta"><span class="price">${p.price:,.2f}</span>
    <span class="swatch" style="background:{escape(p.colour)}"></span>{escape(p.colour)}</p>
  <p class="id">{escape(p.id)}</p>
  {warning}
</article>"""
        )
    links = " ".join(
        f'<a href="/products?page={n}"{" class=current" if n == page else ""}>{n}</a>'
        for n in range(1, pages + 1)
    )
    body = f"""
<section>
  <div class="toolbar">
    <h1>Products</h1>
    <button type="button" id="select-page">Select all on page</button>
    <button type="button" id="clear">Clear</button>
    <span class="pages">Page {links}</span>
  </div>
  <div class="grid" id="products">
{"".join(cards)}
  </div>
</section>
<div class="selection-bar" id="selection-bar" hidden>
  <span id="selection-count">0 selected</span>
  <span class="bar-error" id="selection-error" role="alert"></span>
  <button type="button" id="generate" class="primary">Generate 0 Videos</button>
</div>"""
    return _layout("Products", body, owner=owner, script="products.js")


def _product_card(p: dict[str, Any]) -> str:
    state = _STATES.get(p["state"], "queued")
    percent = round(100 * float(p["progress"]))
    video = ""
    if p["result_url"]:
        video = f'<img class="video" src="{escape(p["result_url"])}" alt="video of {escape(p["title"])}">'
    error = escape(p["error"] or "")
    return f"""<article class="card item" data-product-id="{escape(p["product_id"])}" data-state="{state}">
  <div class="row"><h2>{escape(p["title"])}</h2><span class="badge {state}">{state}</span></div>
  <div class="progress" role="progressbar" aria-valuemin="0" aria-valuemax="100" aria-valuenow="{percent}"><span style="width:{percent}%"></span></div>
  <p class="message">{escape(p["message"] or "")}</p>
  <p class="error"{"" if error else " hidden"}>{error}</p>
  <div class="media">{video}</div>
</article>"""


def batch(status: dict[str, Any], *, owner: str) -> str:
    """One batch's page: its overall state and counts, a card per product."""
    counts = status["counts"]
    failed = counts.get("failed", 0)
    show_retry = status["is_terminal"] and failed > 0
    parent = ""
    if status["parent_id"]:
        parent = (
            f'<p class="parent">Retries the failed products of '
            f'<a href="/batch-generate?batch_id={escape(status["parent_id"])}">an earlier batch</a>.</p>'
        )
    summary = " · ".join(f"{n} {escape(state)}" for state, n in counts.items() if n)
    percent = round(100 * float(status["progress"]))
    body = f"""
<section>
  <div class="toolbar">
    <h1>Batch <code>{escape(status["batch_id"])}</code></h1>
    <span class="badge big {escape(status["state"])}" id="overall-state">{escape(status["state"])}</span>
    <button type="button" id="retry" class="primary"{"" if show_retry else " hidden"}>Retry {failed} Failed</button>
  </div>
  {parent}
  <p><span id="counts">{summary}</span> of <span id="total">{status["total"]}</span>
     <span class="live" id="live"></span></p>
  <div class="progress overall" role="progressbar" aria-valuemin="0" aria-valuemax="100" aria-valuenow="{percent}"><span id="overall-progress" style="width:{percent}%"></span></div>
  <p class="bar-error" id="retry-error" role="alert"></p>
  <div class="grid" id="items">
{"".join(_product_card(p) for p in status["products"])}
  </div>
</section>
{_data("initial-status", status)}"""
    return _layout("Batch", body, owner=owner, script="batch.js")


def batches(listed: Sequence[dict[str, Any]], *, owner: str) -> str:
    """The visitor's batches, newest first."""
    rows = "".join(
        f"""<tr><td><a href="/batch-generate?batch_id={escape(b["batch_id"])}"><code>{escape(b["batch_id"])}</code></a></td>
<td><span class="badge {escape(b["state"])}">{escape(b["state"])}</span></td>
<td>{b["counts"].get("succeeded", 0)} / {b["total"]}</td><td>{b["counts"].get("failed", 0)}</td>
<td>{escape(b["created_at"][:19].replace("T", " "))}</td></tr>"""
        for b in listed
    )
    table = (
        '<table class="batches"><thead><tr><th>Batch</th><th>State</th><th>Succeeded</th>'
        f"<th>Failed</th><th>Created (UTC)</th></tr></thead><tbody>{rows}</tbody></table>"
        if listed
        else '<p>No batches yet: <a href="/products">pick some products</a>.</p>'
    )
    return _layout("Your batches", f"<section><h1>Your batches</h1>{table}</section>", owner=owner)


def not_found(owner: str) -> str:
    """A batch that does not exist, or is someone else's (the same answer for both)."""
    body = '<section class="narrow"><h1>No such batch</h1><p><a href="/batches">Your batches</a></p></section>'
    return _layout("Not found", body, owner=owner)
