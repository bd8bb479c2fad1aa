"""The dashboard's pages, as HTML text: every value escaped, nothing inline that runs.

Pages are whole documents that read without JavaScript (filters and paging are links and
GET forms; actions are POST forms); ``dashboard.js`` only makes a batch's page live.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from html import escape
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode

from .._tables import age, clean
from ..models import TERMINAL_ITEM_STATES, BatchState, ItemState

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping

    from ..models import BatchStatus, Item, ItemError

__all__ = ["Page", "batch_page", "batches_page", "items_table", "message_page"]

#: The states in the order the pages show them.
STATES = (
    ItemState.QUEUED,
    ItemState.RUNNING,
    ItemState.SUCCEEDED,
    ItemState.FAILED,
    ItemState.CANCELLED,
)
#: The most characters of a result shown in a listing.
PREVIEW = 160


def e(value: object) -> str:
    """``value`` as text safe inside HTML, an attribute's quotes included."""
    return escape(str(value), quote=True)


def _line(value: object) -> str:
    """One printable line (control characters and runs of spaces become one space)."""
    return e(clean(value))


def _when(moment: datetime | None) -> str:
    if moment is None:
        return ""
    text = moment.astimezone(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
    return f'<time datetime="{e(text)}">{e(text)}</time>'


def _compact(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"), sort_keys=True)


def _preview(value: Any) -> str:
    text = clean(_compact(value))
    return text if len(text) <= PREVIEW else text[: PREVIEW - 1] + "…"


class Page:
    """Where the dashboard is mounted, and what a page may offer."""

    def __init__(self, root: str, title: str, csrf: str, actions: frozenset[str]) -> None:
        self.root = root.rstrip("/")
        self.title = title
        self.csrf = csrf
        #: The actions this request may take (none when read-only).
        self.actions = actions

    def url(self, path: str, **query: Any) -> str:
        """``path`` under the mount point, with the query's non-empty values."""
        pairs = [(k, v) for k, v in query.items() if v not in (None, "", [])]
        flat: list[tuple[str, Any]] = []
        for key, value in pairs:
            if isinstance(value, list | tuple):
                flat.extend((key, v) for v in value)
            else:
                flat.append((key, value))
        return self.root + path + (f"?{urlencode(flat)}" if flat else "")

    def document(self, heading: str, body: str, *, live: str | None = None) -> str:
        """A whole page; ``live``: the URL of the events that keep it live."""
        script = f'<script src="{e(self.url("/static/dashboard.js"))}" defer></script>'
        data = f' data-events="{e(live)}"' if live else ""
        return (
            "<!doctype html>\n"
            '<html lang="en"><head><meta charset="utf-8">'
            '<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{e(heading)} · {e(self.title)}</title>"
            f'<link rel="icon" href="{e(self.url("/static/favicon.svg"))}" type="image/svg+xml">'
            f'<link rel="stylesheet" href="{e(self.url("/static/dashboard.css"))}">'
            f"{script}</head>"
            f'<body{data}><header><a class="home" href="{e(self.url("/"))}">{e(self.title)}</a>'
            "</header>"
            f"<main>{body}</main></body></html>\n"
        )

    def form(self, path: str, action: str, label: str, *, confirm: str | None = None) -> str:
        """A POST form of one button for ``action``, or nothing when it is not allowed."""
        if action not in self.actions:
            return ""
        ask = f' data-confirm="{e(confirm)}"' if confirm else ""
        return (
            f'<form method="post" action="{e(self.url(path))}" class="action"{ask}>'
            f'<input type="hidden" name="csrf" value="{e(self.csrf)}">'
            f'<button type="submit" name="action" value="{e(action)}">{e(label)}</button></form>'
        )


def _counts(status: BatchStatus) -> str:
    cells = "".join(
        f'<li class="count {e(state.value)}"><span class="n" data-count="{e(state.value)}">'
        f"{status.counts.get(state, 0)}</span> {e(state.value)}</li>"
        for state in STATES
    )
    return f'<ul class="counts">{cells}</ul>'


def _progress(status: BatchStatus) -> str:
    percent = round(100 * status.progress)
    return (
        f'<progress max="100" value="{percent}" data-progress>{percent}%</progress>'
        f' <span class="percent" data-percent>{percent}%</span>'
    )


def _state(state: BatchState | ItemState, *, data: bool = False) -> str:
    attr = " data-state" if data else ""
    return f'<span class="state {e(state.value)}"{attr}>{e(state.value)}</span>'


def message_page(page: Page, heading: str, text: str, *, status: int) -> str:
    return page.document(
        heading,
        f'<h1>{e(heading)}</h1><p class="message">{e(text)}</p>'
        f'<p><a href="{e(page.url("/"))}">Every batch</a></p>',
    )


def batches_page(
    page: Page,
    statuses: list[BatchStatus],
    *,
    states: Iterable[str],
    where: str,
    next_before: str | None,
    notice: str | None = None,
) -> str:
    chosen = set(states)
    options = "".join(
        f'<label><input type="checkbox" name="state" value="{e(s.value)}"'
        f"{' checked' if s.value in chosen else ''}> {e(s.value)}</label>"
        for s in BatchState
    )
    filters = (
        f'<form method="get" action="{e(page.url("/"))}" class="filters" role="search">'
        f"<fieldset><legend>State</legend>{options}</fieldset>"
        '<label>Metadata <input type="text" name="where" placeholder="owner=ada" '
        f'value="{e(where)}"></label> <button type="submit">Filter</button>'
        f' <a href="{e(page.url("/"))}">Clear</a></form>'
    )
    rows = []
    for s in statuses:
        finished = sum(n for st, n in s.counts.items() if st in TERMINAL_ITEM_STATES)
        link = page.url(f"/batches/{s.batch_id}")
        rows.append(
            "<tr>"
            f'<td><a href="{e(link)}"><code>{e(s.batch_id)}</code></a></td>'
            f"<td>{_state(s.state)}</td>"
            f'<td class="num">{finished}/{s.total}</td>'
            f'<td class="num">{s.counts.get(ItemState.FAILED, 0)}</td>'
            f'<td><progress max="100" value="{round(100 * s.progress)}">'
            f"{round(100 * s.progress)}%</progress></td>"
            f'<td class="num" title="{e(s.created_at.isoformat())}">{e(age(s.created_at))}</td>'
            f'<td class="meta">{_line(_compact(s.metadata)) if s.metadata else ""}</td>'
            "</tr>"
        )
    table = (
        '<table class="batches"><thead><tr><th>Batch</th><th>State</th><th>Done</th>'
        "<th>Failed</th><th>Progress</th><th>Age</th><th>Metadata</th></tr></thead>"
        f"<tbody>{''.join(rows)}</tbody></table>"
        if rows
        else '<p class="empty">No batches.</p>'
    )
    more = ""
    if next_before is not None:
        more = (
            f'<p class="paging"><a rel="next" href="'
            f'{e(page.url("/", state=sorted(chosen), where=where, before=next_before))}">'
            "Older batches</a></p>"
        )
    note = f'<p class="notice" role="status">{e(notice)}</p>' if notice else ""
    return page.document("Batches", f"<h1>Batches</h1>{note}{filters}{table}{more}")


def _error(error: ItemError, *, label: str) -> str:
    trace = ""
    if error.traceback:
        trace = f'<pre class="traceback">{e(error.traceback)}</pre>'
    return (
        f'<details class="error"><summary>{e(label)}<code>{_line(error.type)}</code>: '
        f"{_line(error.message)}</summary>{trace}</details>"
    )


def items_table(
    page: Page,
    batch_id: str,
    items: list[Item],
    *,
    state: str | None,
    next_after: int | None,
) -> str:
    rows = []
    for item in items:
        notes = []
        if item.error is not None and item.state is not ItemState.SUCCEEDED:
            notes.append(_error(item.error, label=""))
        earlier = [err for err in item.errors if err != item.error]
        for err in earlier:
            which = "" if err.attempt is None else f"attempt {err.attempt}: "
            notes.append(_error(err, label=which))
        if item.message and item.state is ItemState.RUNNING:
            notes.append(f'<span class="message">{_line(item.message)}</span>')
        result = ""
        if item.state is ItemState.SUCCEEDED and item.result is not None:
            result = f'<code class="result">{e(_preview(item.result))}</code>'
        rows.append(
            f'<tr data-key="{e(item.key)}">'
            f'<td class="num">{item.position}</td>'
            f"<td><code>{_line(item.key)}</code></td>"
            f"<td>{_state(item.state)}</td>"
            f'<td class="num">{item.attempt}</td>'
            f'<td class="num">{round(100 * item.progress)}%</td>'
            f"<td>{''.join(notes)}{result}</td>"
            "</tr>"
        )
    tabs = [("every", None)] + [(s.value, s.value) for s in STATES]
    current = ' aria-current="page"'
    links = " ".join(
        f'<a href="{e(page.url(f"/batches/{batch_id}", state=value))}"'
        f"{current if value == state else ''}>{e(name)}</a>"
        for name, value in tabs
    )
    table = (
        '<table class="items"><thead><tr><th>#</th><th>Key</th><th>State</th><th>Attempt</th>'
        "<th>Progress</th><th>Error, message or result</th></tr></thead>"
        f"<tbody>{''.join(rows)}</tbody></table>"
        if rows
        else '<p class="empty">No items.</p>'
    )
    more = ""
    if next_after is not None:
        more = (
            f'<p class="paging"><a rel="next" href="'
            f'{e(page.url(f"/batches/{batch_id}", state=state, after=next_after))}">'
            "Next items</a></p>"
        )
    return (
        f'<section id="items"><h2>Items</h2><nav class="tabs">{links}</nav>{table}{more}</section>'
    )


def batch_page(
    page: Page,
    status: BatchStatus,
    items: str,
    *,
    notice: str | None = None,
) -> str:
    batch_id = status.batch_id
    facts: list[tuple[str, str]] = [
        ("Created", _when(status.created_at)),
        ("Started", _when(status.started_at)),
        ("Finished", _when(status.finished_at)),
    ]
    if status.parent_id:
        parent = page.url(f"/batches/{status.parent_id}")
        facts.append(("Retry of", f'<a href="{e(parent)}"><code>{e(status.parent_id)}</code></a>'))
    if status.cancel_reason:
        facts.append(("Cancelled", _line(status.cancel_reason)))
    if status.max_failures is not None:
        facts.append(("Max failures", e(status.max_failures)))
    if status.metadata:
        facts.append(("Metadata", f"<code>{_line(_compact(status.metadata))}</code>"))
    dl = "".join(f"<dt>{e(k)}</dt><dd>{v}</dd>" for k, v in facts)
    path = f"/batches/{batch_id}"
    actions = ""
    if not status.is_terminal:
        actions += page.form(f"{path}/cancel", "cancel", "Cancel", confirm="Cancel this batch?")
    if status.counts.get(ItemState.FAILED, 0) and status.is_terminal:
        actions += page.form(f"{path}/retry-failed", "retry_failed", "Retry failed items")
    actions += page.form(
        f"{path}/delete",
        "delete",
        "Delete",
        confirm="Delete this batch and its items for good?",
    )
    note = f'<p class="notice" role="status">{e(notice)}</p>' if notice else ""
    summary = (
        f'<section class="summary" data-batch="{e(batch_id)}">'
        f"<h1>Batch <code>{e(batch_id)}</code></h1>{note}"
        f"<p>{_state(status.state, data=True)} <span data-total>{status.total}</span> items</p>"
        f"<p>{_progress(status)}</p>{_counts(status)}<dl>{dl}</dl>"
        f'<div class="actions">{actions}</div></section>'
    )
    # A finished batch does not change any more: its page need not follow it.
    live = None if status.is_terminal else page.url(f"{path}/events")
    return page.document(f"Batch {batch_id}", summary + items, live=live)


def status_event(status: BatchStatus) -> str:
    """One server-sent event carrying a batch's status, as the page shows it."""
    body: Mapping[str, Any] = {
        "state": status.state.value,
        "is_terminal": status.is_terminal,
        "total": status.total,
        "progress": round(100 * status.progress),
        "counts": {s.value: status.counts.get(s, 0) for s in STATES},
    }
    return f"event: status\ndata: {json.dumps(body)}\n\n"
