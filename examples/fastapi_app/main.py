"""batchkit studio: pick products, generate a video of each, watch every one of them.

Run it with ``make web`` (or ``python -m examples.fastapi_app``, or ``uvicorn
examples.fastapi_app.main:app``); it serves http://127.0.0.1:8000 (``PORT`` changes the
port). It is built on batchkit's public API only:

* ``POST /api/v1/products/batch-generate`` submits one batch (one write) and answers at
  once; a `Worker` started in the app's lifespan runs the items, so a restarted server
  resumes its batches by itself;
* every read (status, list, the Server-Sent Events stream) goes through `BatchRunner`,
  whose state is derived from the items' counts;
* batches carry their owner in their metadata: a visitor sees their own batches only.

``BATCHKIT_STORAGE`` picks the storage (an SQLite file in the working directory by
default; PostgreSQL, MySQL/MariaDB or Redis URLs work the same), ``BATCHKIT_STORAGE_PREFIX``
its table or key prefix; ``BATCHKIT_STUDIO_CONCURRENCY`` the worker's slots (4),
``BATCHKIT_STUDIO_LEASE`` its lease in seconds (10), ``BATCHKIT_STUDIO_OUTPUT`` and
``BATCHKIT_STUDIO_SPEED`` where videos go and how fast they are made (see ``generator.py``),
``BATCHKIT_STUDIO_SECRET`` the key that signs the sign-in cookie (made and kept in
``BATCHKIT_STUDIO_SECRET_FILE`` when unset, see ``owners.py``).

What it refuses, as an app on the internet must: another visitor's batches and videos
(404, as for none), a request body over 1 MiB (413), a cross-site form or fetch that
would change something (403), and a ``request_id`` sent again with other products (409).
No error repeats what was sent.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from contextlib import asynccontextmanager
from functools import cache
from typing import TYPE_CHECKING, Annotated, Any
from urllib.parse import parse_qs, quote

from fastapi import Cookie, Depends, FastAPI, HTTPException, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import (
    FileResponse,
    HTMLResponse,
    JSONResponse,
    RedirectResponse,
    Response,
    StreamingResponse,
)
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, Field, field_validator
from starlette.datastructures import Headers

from batchkit import (
    BatchNotFound,
    BatchRunner,
    BatchStatus,
    InvalidBatch,
    ItemSpec,
    Worker,
    open_storage,
)

from . import art, owners, pages
from .catalog import by_id, catalog
from .generator import generate, output_dir

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from starlette.types import ASGIApp, Message, Receive, Scope, Send

    from batchkit import Item

__all__ = ["app", "create_app"]

logger = logging.getLogger("examples.fastapi_app")

#: The most products one batch may hold.
MAX_PRODUCTS = 200
#: Products shown per page of the catalog.
PAGE_SIZE = 24
#: The largest request body the app reads (the largest real one, 200 product ids, is
#: about 5 KB).
MAX_BODY_BYTES = 1024 * 1024
#: A video's file name: a product id and ``.gif``, nothing that could leave its folder.
_VIDEO = re.compile(r"\A[A-Za-z0-9_-]{1,64}\.gif\Z")
#: Methods that change something: refused when another site sends them.
_UNSAFE = frozenset({"POST", "PUT", "PATCH", "DELETE"})
STATIC = os.path.join(os.path.dirname(__file__), "static")


# -- the API's shapes (they are the OpenAPI schema) ---------------------------------------


class GenerateRequest(BaseModel):
    """Which products to make videos of."""

    product_ids: list[str] = Field(description="ids from the catalog, at most 200, no repeats")
    request_id: str | None = Field(
        default=None,
        max_length=100,
        description="a token of the client's own: the same token twice makes one batch "
        "(a double click, a retried request)",
    )

    @field_validator("product_ids")
    @classmethod
    def _check(cls, ids: list[str]) -> list[str]:
        if not ids:
            raise ValueError("choose at least one product")
        if len(ids) > MAX_PRODUCTS:
            raise ValueError(f"a batch holds at most {MAX_PRODUCTS} products, got {len(ids)}")
        unknown = [i for i in dict.fromkeys(ids) if i not in by_id()]
        if unknown:
            # Named, but short: an error never repeats a request's input whole.
            shown = ", ".join(i[:40] for i in unknown[:3])
            more = f" and {len(unknown) - 3} more" if len(unknown) > 3 else ""
            raise ValueError(f"unknown product ids: {shown}{more}")
        repeated = sorted({i for i in ids if ids.count(i) > 1})
        if repeated:
            raise ValueError(f"products chosen twice: {', '.join(repeated[:10])}")
        return ids


class GenerateResponse(BaseModel):
    batch_id: str
    total: int
    parent_id: str | None = None


class ProductStatus(BaseModel):
    """One product's video, as its item stands."""

    product_id: str
    title: str
    state: str = Field(description="queued, running, succeeded, failed or cancelled")
    progress: float = Field(description="0.0 to 1.0")
    message: str | None = Field(description="the current stage")
    error: str | None = Field(description="why it failed, once failed")
    attempt: int
    result_url: str | None = Field(description="the finished video, once succeeded")


class BatchStatusResponse(BaseModel):
    """A batch's state, derived from its items' counts, and each product's own state."""

    batch_id: str
    state: str = Field(
        description="queued, running, completed, completed_with_errors, failed or cancelled"
    )
    is_terminal: bool
    total: int
    counts: dict[str, int]
    progress: float
    parent_id: str | None
    created_at: str
    products: list[ProductStatus]


class BatchSummary(BaseModel):
    batch_id: str
    state: str
    is_terminal: bool
    total: int
    counts: dict[str, int]
    progress: float
    parent_id: str | None
    created_at: str


def _summary(status: BatchStatus) -> dict[str, Any]:
    return {
        "batch_id": status.batch_id,
        "state": status.state.value,
        "is_terminal": status.is_terminal,
        "total": status.total,
        "counts": {state.value: n for state, n in status.counts.items()},
        "progress": round(status.progress, 4),
        "parent_id": status.parent_id,
        "created_at": status.created_at.isoformat(),
    }


def _product(item: Item) -> dict[str, Any]:
    result = item.result if isinstance(item.result, dict) else {}
    done = item.state.value == "succeeded"
    return {
        "product_id": item.key,
        "title": (item.payload or {}).get("title", item.key),
        "state": item.state.value,
        "progress": round(item.progress, 4),
        # A failed item keeps the stage it failed at; a finished video says so.
        "message": "video ready" if done else item.message,
        "error": None if item.error is None else item.error.message,
        "attempt": item.attempt,
        "result_url": result.get("video") if done else None,
    }


# -- the app -------------------------------------------------------------------------------


def _runner(request: Request) -> BatchRunner:
    found: BatchRunner = request.app.state.runner
    return found


def _owner(studio_owner: Annotated[str | None, Cookie()] = None) -> str:
    name = owners.read(studio_owner)
    if name is None:
        raise HTTPException(status_code=401, detail="sign in first: POST /login")
    return name


# Module-level, so that FastAPI can resolve them from the handlers' annotations.
Runner = Annotated[BatchRunner, Depends(_runner)]
Owner = Annotated[str, Depends(_owner)]


def create_app(storage_url: str | None = None, *, concurrency: int | None = None) -> FastAPI:
    """The studio, on the storage ``storage_url`` (by default ``$BATCHKIT_STORAGE``)."""
    url = storage_url or os.environ.get(
        "BATCHKIT_STORAGE", "sqlite+aiosqlite:///batchkit-studio.db"
    )
    prefix = os.environ.get("BATCHKIT_STORAGE_PREFIX") or None
    slots = concurrency or int(os.environ.get("BATCHKIT_STUDIO_CONCURRENCY", "4"))
    lease = float(os.environ.get("BATCHKIT_STUDIO_LEASE", "10"))

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        output_dir().mkdir(parents=True, exist_ok=True)
        async with open_storage(url, prefix=prefix) as storage:
            app.state.runner = BatchRunner(storage, generate)
            # The work runs here, not in the requests: a restarted server's worker claims
            # what is left, and a stopped one hands its running items back.
            async with Worker(storage, generate, concurrency=slots, lease=lease, grace_period=5):
                yield

    app = FastAPI(
        title="batchkit studio",
        description="Batch generation of product videos, with each product's own progress.",
        version="1.0",
        lifespan=lifespan,
    )
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    output_dir().mkdir(parents=True, exist_ok=True)
    logger.info("sign-in cookies are signed with the key from %s", owners.secret_source())

    app.add_middleware(_Guard)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        # What was wrong and where, never the input itself: it could be anything, of any
        # size, and an error page that repeats it is a reflection for an attacker.
        errors = [
            {"loc": list(e.get("loc", ())), "msg": str(e.get("msg", "")), "type": e.get("type")}
            for e in exc.errors()
        ]
        return JSONResponse({"detail": errors}, status_code=422)

    async def owned(run: BatchRunner, batch_id: str, name: str) -> BatchStatus:
        """The batch's status, if it is this owner's; 404 otherwise (even if it exists)."""
        try:
            status = await run.status(batch_id)
        except BatchNotFound:
            status = None
        if status is None or status.metadata.get("owner") != name:
            raise HTTPException(status_code=404, detail="no such batch")
        return status

    async def body(run: BatchRunner, status: BatchStatus) -> dict[str, Any]:
        items = await run.items(status.batch_id, limit=1_000)
        return {**_summary(status), "products": [_product(i) for i in items]}

    # -- API ---------------------------------------------------------------------------

    @app.get("/media/{batch_id}/{filename}", include_in_schema=False)
    async def media(batch_id: str, filename: str, run: Runner, name: Owner) -> FileResponse:
        """A video, to the owner of its batch only."""
        await owned(run, batch_id, name)
        path = output_dir() / batch_id / filename
        if not _VIDEO.match(filename) or not path.is_file():
            raise HTTPException(status_code=404, detail="no such video")
        return FileResponse(path, media_type="image/gif")

    @app.get("/api/v1/products", tags=["products"])
    async def list_products() -> list[dict[str, Any]]:
        """The catalog."""
        return [
            {**p.payload(), "usable": p.usable, "image_url": f"/api/v1/products/{p.id}/image.png"}
            for p in catalog()
        ]

    @app.get("/api/v1/products/{product_id}/image.png", tags=["products"])
    async def product_image(product_id: str) -> Response:
        """A product's picture."""
        product = by_id().get(product_id)
        if product is None:
            raise HTTPException(status_code=404, detail="no such product")
        return Response(
            _thumbnail(product_id),
            media_type="image/png",
            headers={"Cache-Control": "max-age=3600"},
        )

    @app.post(
        "/api/v1/products/batch-generate",
        status_code=202,
        response_model=GenerateResponse,
        tags=["batches"],
    )
    async def batch_generate(request: GenerateRequest, run: Runner, name: Owner) -> Any:
        """Submit one batch: a video of each product. It answers at once; the work runs in
        the app's worker."""
        specs = [ItemSpec(key=i, payload=by_id()[i].payload()) for i in request.product_ids]
        # The client's token is scoped by its owner (a name holds no ":"), so that
        # nobody's token can name another owner's batch, nor batchkit's own keys.
        key = None if request.request_id is None else f"studio:{name}:{request.request_id}"
        # What was asked, kept with the batch: the same token with other products is a
        # mistake of the client's to report, not the first batch to hand back.
        asked = hashlib.sha256(json.dumps(request.product_ids).encode()).hexdigest()
        metadata = {"owner": name, "request": asked}
        try:
            batch = await run.submit(specs, metadata=metadata, idempotency_key=key)
        except InvalidBatch as exc:
            raise HTTPException(status_code=422, detail=str(exc)) from None
        if batch.metadata.get("request") != asked:
            raise HTTPException(
                status_code=409,
                detail="this request_id was already used for other products; send a new one",
            )
        return {"batch_id": batch.id, "total": batch.total}

    @app.get(
        "/api/v1/products/batch/{batch_id}/status",
        response_model=BatchStatusResponse,
        tags=["batches"],
    )
    async def batch_status(batch_id: str, run: Runner, name: Owner) -> Any:
        """The batch's derived state and counts, and every product's state, progress,
        stage, error and video."""
        return await body(run, await owned(run, batch_id, name))

    @app.post(
        "/api/v1/products/batch/{batch_id}/retry-failed",
        status_code=202,
        response_model=GenerateResponse,
        tags=["batches"],
    )
    async def retry_failed(batch_id: str, run: Runner, name: Owner) -> Any:
        """A new batch of exactly the failed products (twice: the same new batch)."""
        await owned(run, batch_id, name)
        try:
            again = await run.retry_failed(batch_id)
        except InvalidBatch as exc:
            raise HTTPException(status_code=409, detail=str(exc)) from None
        return {"batch_id": again.id, "total": again.total, "parent_id": again.parent_id}

    @app.get("/api/v1/batches", response_model=list[BatchSummary], tags=["batches"])
    async def list_batches(
        run: Runner, name: Owner, limit: Annotated[int, Query(ge=1, le=100)] = 20
    ) -> Any:
        """The caller's batches, newest first."""
        return [_summary(s) for s in await run.batches(metadata={"owner": name}, limit=limit)]

    @app.get(
        "/api/v1/products/batch/{batch_id}/events",
        tags=["batches"],
        response_class=StreamingResponse,
        responses={200: {"content": {"text/event-stream": {}}}},
    )
    async def batch_events(batch_id: str, run: Runner, name: Owner) -> StreamingResponse:
        """Server-Sent Events: a ``status`` event (the body of ``/status``) now and after
        every change, then ``end`` once the batch has finished."""
        await owned(run, batch_id, name)

        async def stream() -> AsyncIterator[str]:
            async for status in run.watch(batch_id, poll_interval=0.5):
                yield f"event: status\ndata: {json.dumps(await body(run, status))}\n\n"
            yield "event: end\ndata: {}\n\n"

        return StreamingResponse(
            stream(),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )

    # -- pages -------------------------------------------------------------------------

    def signed_in(studio_owner: str | None) -> str | None:
        return owners.read(studio_owner)

    def to_login(request: Request) -> RedirectResponse:
        target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        return RedirectResponse(f"/login?next={_quote(target)}", status_code=303)

    @app.get("/", include_in_schema=False)
    async def home() -> RedirectResponse:
        return RedirectResponse("/products", status_code=303)

    @app.get("/login", include_in_schema=False, response_class=HTMLResponse)
    async def login_form(next: str = "/products") -> str:
        return pages.login(next=_safe_next(next))

    @app.post("/login", include_in_schema=False)
    async def login(request: Request) -> Response:
        # A urlencoded form, read by hand: no form-parsing dependency for two fields.
        fields = parse_qs((await request.body()).decode("utf-8", "replace"))
        name = fields.get("name", [""])[0]
        target = _safe_next(fields.get("next", ["/products"])[0])
        clean = owners.check_name(name)
        if clean is None:
            error = "a name is 1 to 40 letters, digits, spaces, _ . or -"
            return HTMLResponse(pages.login(next=target, error=error), status_code=422)
        answer = RedirectResponse(target, status_code=303)
        answer.set_cookie(owners.COOKIE, owners.sign(clean), httponly=True, samesite="lax")
        return answer

    @app.post("/logout", include_in_schema=False)
    async def logout() -> Response:
        answer = RedirectResponse("/login", status_code=303)
        answer.delete_cookie(owners.COOKIE)
        return answer

    @app.get("/products", include_in_schema=False, response_model=None)
    async def products_page(
        request: Request,
        page: Annotated[int, Query(ge=1)] = 1,
        studio_owner: Annotated[str | None, Cookie()] = None,
    ) -> Response:
        name = signed_in(studio_owner)
        if name is None:
            return to_login(request)
        everything = catalog()
        count = max(1, -(-len(everything) // PAGE_SIZE))
        page = min(page, count)
        shown = everything[(page - 1) * PAGE_SIZE : page * PAGE_SIZE]
        return HTMLResponse(pages.products(shown, page=page, pages=count, owner=name))

    @app.get("/batch-generate", include_in_schema=False, response_model=None)
    async def batch_page(
        request: Request,
        run: Runner,
        batch_id: str = "",
        studio_owner: Annotated[str | None, Cookie()] = None,
    ) -> Response:
        name = signed_in(studio_owner)
        if name is None:
            return to_login(request)
        try:
            status = await owned(run, batch_id, name)
        except HTTPException:
            return HTMLResponse(pages.not_found(name), status_code=404)
        return HTMLResponse(pages.batch(await body(run, status), owner=name))

    @app.get("/batches", include_in_schema=False, response_model=None)
    async def batches_page(
        request: Request, run: Runner, studio_owner: Annotated[str | None, Cookie()] = None
    ) -> Response:
        name = signed_in(studio_owner)
        if name is None:
            return to_login(request)
        listed = [_summary(s) for s in await run.batches(metadata={"owner": name}, limit=50)]
        return HTMLResponse(pages.batches(listed, owner=name))

    return app


@cache
def _thumbnail(product_id: str) -> bytes:
    return art.thumbnail_png(by_id()[product_id])


def _quote(path: str) -> str:
    return quote(path, safe="")


class _Guard:
    """Refuses a cross-site request that would change something (403) and a body over
    `MAX_BODY_BYTES` (413), before the app reads a byte more of it."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        if scope["method"] in _UNSAFE and _cross_site(headers):
            refused = JSONResponse({"detail": "cross-site request refused"}, status_code=403)
            await refused(scope, receive, send)
            return
        too_large = JSONResponse({"detail": "request body too large"}, status_code=413)
        declared = headers.get("content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > MAX_BODY_BYTES):
            await too_large(scope, receive, send)
            return
        received = 0
        refused = False

        async def counted() -> Message:
            # A body without a length (chunked) is counted as it comes; past the limit the
            # client gets its 413 and the app sees the client go.
            nonlocal received, refused
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > MAX_BODY_BYTES and not refused:
                    refused = True
                    await too_large(scope, receive, send)
                    return {"type": "http.disconnect"}
            return message

        async def unless_refused(message: Message) -> None:
            if not refused:
                await send(message)

        await self.app(scope, counted, unless_refused)


def _cross_site(headers: Headers) -> bool:
    """Whether the browser says another site sent this request."""
    site = headers.get("sec-fetch-site")
    if site is not None:
        return site not in ("same-origin", "none")
    origin = headers.get("origin")
    if origin is None:
        return False  # not a browser's cross-site request (curl, a server, the tests)
    host = headers.get("host", "")
    return origin not in (f"http://{host}", f"https://{host}")


def _safe_next(target: str) -> str:
    # Only a path of this site: an absolute URL here would be an open redirect.
    if not target.startswith("/") or target.startswith("//") or "\\" in target:
        return "/products"
    return target


app = create_app()
