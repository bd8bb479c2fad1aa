"""The pages: pick products, start a batch, watch it, retry what failed.

Every view needs a signed-in user, and a batch is its owner's alone: another user's
batch is a 404, as an unknown one is. The batches live in batchkit's tables of the same
database, through the process's `SyncBatchRunner` (`get_runner`); workers run the items
(``python manage.py batchkit_worker --generator products.generator:render``).
"""

from __future__ import annotations

import re
import secrets
from typing import TYPE_CHECKING, Any

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import Http404, HttpResponseBadRequest, JsonResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from batchkit import BatchNotFound, InvalidBatch, ItemState
from batchkit.contrib.django import get_runner
from batchkit.ids import is_batch_id

from .models import Product

if TYPE_CHECKING:
    from django.http import HttpRequest, HttpResponse

    from batchkit import BatchStatus, Item

__all__ = ["batch", "batch_json", "batches", "home", "products", "retry_failed"]

#: A form's nonce, as `secrets.token_urlsafe(16)` writes it.
_NONCE = re.compile(r"[A-Za-z0-9_-]{16,64}")


def _owned(request: HttpRequest, batch_id: str) -> BatchStatus:
    """The batch's status, if the signed-in user owns it; a 404 otherwise."""
    if not is_batch_id(batch_id):
        raise Http404("no such batch")
    try:
        status = get_runner().status(batch_id)
    except BatchNotFound:
        raise Http404("no such batch") from None
    if status.metadata.get("owner") != request.user.get_username():
        raise Http404("no such batch")
    return status


def _items(batch_id: str) -> list[dict[str, Any]]:
    found: list[Item] = get_runner().items(batch_id, limit=100)
    return [
        {
            "key": item.key,
            "name": (item.payload or {}).get("name", item.key),
            "state": str(item.state),
            "progress": round(item.progress * 100),
            "message": item.message,
            "error": item.error.message if item.error is not None else None,
        }
        for item in found
    ]


def _summary(status: BatchStatus) -> dict[str, Any]:
    return {
        "batch_id": status.batch_id,
        "state": str(status.state),
        "is_terminal": status.is_terminal,
        "progress": round(status.progress * 100),
        "total": status.total,
        "counts": {str(state): count for state, count in status.counts.items() if count},
        "failed": status.counts.get(ItemState.FAILED, 0),
        "parent_id": status.parent_id,
    }


@login_required
def home(request: HttpRequest) -> HttpResponse:
    return redirect("products")


@login_required
@require_GET
def products(request: HttpRequest) -> HttpResponse:
    """The catalogue, with a checkbox per product and the button that starts a batch."""
    return render(
        request,
        "products/products.html",
        {"products": Product.objects.all(), "nonce": secrets.token_urlsafe(16)},
    )


@login_required
@require_http_methods(["GET", "POST"])
def batches(request: HttpRequest) -> HttpResponse:
    """GET: the user's batches, newest first. POST: start a batch of the ticked products.

    The form's nonce is the batch's idempotency key: the same form sent twice (a double
    click, a reload) makes one batch.
    """
    owner = request.user.get_username()
    if request.method == "GET":
        found = get_runner().batches(metadata={"owner": owner}, limit=50)
        return render(request, "products/batches.html", {"batches": found})
    nonce = request.POST.get("nonce", "")
    if not _NONCE.fullmatch(nonce):
        return HttpResponseBadRequest("the form is incomplete: reload the products page")
    ids = [value for value in request.POST.getlist("product") if value.isdigit()]
    chosen = list(Product.objects.filter(id__in=ids))
    if not chosen:
        messages.error(request, "Tick at least one product.")
        return redirect("products")
    made = get_runner().submit(
        [{"key": str(p.id), "payload": {"name": p.name, "price": str(p.price)}} for p in chosen],
        metadata={"owner": owner},
        idempotency_key=f"products:{owner}:{nonce}",
    )
    return redirect("batch", batch_id=made.id)


@login_required
@require_GET
def batch(request: HttpRequest, batch_id: str) -> HttpResponse:
    """A batch and its items as they are now; a script keeps them current."""
    status = _owned(request, batch_id)
    return render(
        request,
        "products/batch.html",
        {"status": _summary(status), "items": _items(batch_id)},
    )


@login_required
@require_GET
def batch_json(request: HttpRequest, batch_id: str) -> JsonResponse:
    """The batch's state and its items' (what the batch page's script polls)."""
    status = _owned(request, batch_id)
    return JsonResponse({**_summary(status), "items": _items(batch_id)})


@login_required
@require_POST
def retry_failed(request: HttpRequest, batch_id: str) -> HttpResponse:
    """Start a batch of the batch's failed items, and show it. Sent twice, the same one."""
    _owned(request, batch_id)
    try:
        child = get_runner().retry_failed(batch_id)
    except InvalidBatch as exc:  # still running, or nothing failed
        messages.error(request, str(exc))
        return redirect("batch", batch_id=batch_id)
    return redirect("batch", batch_id=child.id)
