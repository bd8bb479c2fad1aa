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

__all__ = [
    "BATCH_LABELS",
    "ITEM_LABELS",
    "batch",
    "batches",
    "counts_line",
    "item_state",
    "login",
    "not_found",
    "products",
]

#: What a person reads for each item state (the page's script reads this table too).
ITEM_LABELS = {
    "queued": "Queued",
    "running": "In progress",
    "waiting": "Waiting for a worker",
    "succeeded": "Done",
    "failed": "Failed",
    "cancelled": "Cancelled",
}
#: What a person reads for each batch state.
BATCH_LABELS = {
    "queued": "Queued",
    "running": "In progress",
    "completed": "Done",
    "completed_with_errors": "Done, with errors",
    "failed": "Failed",
    "cancelled": "Cancelled",
}
#: How the counts line names each state, in the order it shows them.
COUNT_WORDS = {
    "succeeded": "done",
    "failed": "failed",
    "cancelled": "cancelled",
    "running": "in progress",
    "waiting": "waiting for a worker",
    "queued": "queued",
}


def item_state(p: dict[str, Any]) -> str:
    """The state a product's card shows: its item's, or "waiting" for a running item whose
    worker stopped answering."""
    state = str(p["state"])
    if state == "running" and p.get("stalled"):
        return "waiting"
    return state if state in ITEM_LABELS else "queued"


def counts_line(status: dict[str, Any]) -> str:
    """ "3 done · 1 failed · 2 in progress of 6", running items split from those waiting
    for a worker."""
    counts = dict(status["counts"])
    stalled = int(status.get("stalled", 0))
    counts["running"] = counts.get("running", 0) - stalled
    counts["waiting"] = stalled
    parts = [f"{counts[s]} {word}" for s, word in COUNT_WORDS.items() if counts.get(s)]
    return f"{' · '.join(parts) or 'nothing yet'} of {status['total']}"


def _layout(title: str, body: str, *, owner: str | None, script: str | None = None) -> str:
    who = ""
    if owner is not None:
        who = (
            f'<span class="who"><span class="wide-only">Signed in as </span><b>{escape(owner)}</b></span>'
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
<a class="skip" href="#main">Skip to the content</a>
<header class="top">
  <a class="brand" href="/products">batchkit studio</a>
  <nav aria-label="Main"><a href="/products">Products</a><a href="/batches">Your batches</a></nav>
  <div class="account">{who}</div>
</header>
<main id="main" tabindex="-1">
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
    <button type="submit" class="primary">Sign in</button>
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
        f'<a href="/products?page={n}"'
        + (' class="current" aria-current="page"' if n == page else "")
        + f' aria-label="Page {n}">{n}</a>'
        for n in range(1, pages + 1)
    )
    body = f"""
<section>
  <div class="toolbar">
    <h1>Products</h1>
    <button type="button" id="select-page">Select all on page</button>
    <button type="button" id="clear">Clear</button>
    <nav class="pages" aria-label="Catalog pages">Page {links}</nav>
  </div>
  <div class="grid" id="products">
{"".join(cards)}
  </div>
</section>
<div class="selection-bar" id="selection-bar" hidden>
  <span id="selection-count" aria-live="polite">0 selected</span>
  <span class="bar-error" id="selection-error" role="alert"></span>
  <button type="button" id="generate" class="primary">Generate 0 Videos</button>
</div>"""
    return _layout("Products", body, owner=owner, script="products.js")


def _product_card(p: dict[str, Any]) -> str:
    state = item_state(p)
    title = escape(p["title"])
    percent = round(100 * float(p["progress"]))
    video = ""
    if p["result_url"]:
        video = f'<img class="video" src="{escape(p["result_url"])}" alt="Video of {title}">'
    error = escape(p["error"] or "")
    return f"""<article class="card item" data-product-id="{escape(p["product_id"])}" data-state="{state}">
  <div class="row"><h2>{title}</h2><span class="badge {state}">{ITEM_LABELS[state]}</span></div>
  <div class="progress" role="progressbar" aria-label="Progress of {title}" aria-valuemin="0" aria-valuemax="100" aria-valuenow="{percent}"><span style="width:{percent}%"></span></div>
  <p class="message">{escape(p["message"] or "")}</p>
  <p class="error"{"" if error else " hidden"}>{error}</p>
  <div class="media">{video}</div>
</article>"""


def batch(status: dict[str, Any], *, owner: str) -> str:
    """One batch's page: its name, state and counts (announced as they change), a Cancel
    button while it runs, a card per product, and "Retry N Failed" once it has ended."""
    counts = status["counts"]
    failed = counts.get("failed", 0)
    show_retry = status["is_terminal"] and failed > 0
    show_cancel = not status["is_terminal"] and not status["cancel_requested"]
    parent = ""
    if status["parent_id"]:
        parent = (
            f'<p class="parent">Retries the failed products of '
            f'<a href="/batch-generate?batch_id={escape(status["parent_id"])}">an earlier batch</a>.</p>'
        )
    percent = round(100 * float(status["progress"]))
    state = status["state"]
    created = escape(status["created_at"][:16].replace("T", " "))
    body = f"""
<section>
  <div class="toolbar">
    <h1 id="batch-name">{escape(status["name"])}</h1>
    <span class="badge big {escape(state)}" id="overall-state" data-state="{escape(state)}">{escape(BATCH_LABELS.get(state, state))}</span>
    <button type="button" id="cancel"{"" if show_cancel else " hidden"}>Cancel batch</button>
    <button type="button" id="retry" class="primary"{"" if show_retry else " hidden"}>Retry {failed} Failed</button>
  </div>
  <p class="sub">Started {created} UTC · batch <code>{escape(status["batch_id"])}</code></p>
  {parent}
  <p id="summary" aria-live="polite" aria-atomic="true"><span id="counts">{escape(counts_line(status))}</span></p>
  <p class="live" id="live" role="status"></p>
  <div class="progress overall" role="progressbar" aria-label="Progress of the batch" aria-valuemin="0" aria-valuemax="100" aria-valuenow="{percent}"><span id="overall-progress" style="width:{percent}%"></span></div>
  <p class="bar-error" id="action-error" role="alert"></p>
  <div class="grid" id="items">
{"".join(_product_card(p) for p in status["products"])}
  </div>
</section>
{_data("initial-status", status)}
{_data("labels", {"items": ITEM_LABELS, "batches": BATCH_LABELS, "counts": COUNT_WORDS})}"""
    return _layout(status["name"], body, owner=owner, script="batch.js")


def batches(listed: Sequence[dict[str, Any]], *, owner: str) -> str:
    """The visitor's batches, newest first: each named after its products, with their
    pictures, its state and its counts."""
    rows = []
    for b in listed:
        state = b["state"]
        pictures = "".join(
            f'<img src="{escape(url)}" alt="" width="40" height="40">' for url in b["thumbnails"]
        )
        retry = '<span class="tag">retry</span>' if b["parent_id"] else ""
        rows.append(
            f"""<li class="batch-row">
  <span class="thumbs">{pictures}</span>
  <span class="batch-main"><a href="/batch-generate?batch_id={escape(b["batch_id"])}">{escape(b["name"])}</a>{retry}
    <span class="batch-counts">{escape(counts_line({**b, "stalled": 0}))}</span></span>
  <span class="badge {escape(state)}">{escape(BATCH_LABELS.get(state, state))}</span>
  <time datetime="{escape(b["created_at"])}">{escape(b["created_at"][:16].replace("T", " "))}</time>
</li>"""
        )
    listing = (
        f'<ul class="batch-list">{"".join(rows)}</ul>'
        if rows
        else '<p>No batches yet: <a href="/products">pick some products</a>.</p>'
    )
    body = f'<section><h1>Your batches</h1><p class="sub">Newest first; times in UTC.</p>{listing}</section>'
    return _layout("Your batches", body, owner=owner)


def not_found(owner: str) -> str:
    """A batch that does not exist, or is someone else's (the same answer for both)."""
    body = '<section class="narrow"><h1>No such batch</h1><p><a href="/batches">Your batches</a></p></section>'
    return _layout("Not found", body, owner=owner)
