"""batchkit studio: pick products, generate a video of each, watch every one of them.

Run it with ``make web`` (or ``python -m examples.fastapi_app``, or ``uvicorn
examples.fastapi_app.main:app``); it serves http://127.0.0.1:8000 (``PORT`` changes the
port). It is built on batchkit's public API only:

* ``POST /api/v1/products/batch-generate`` submits one batch (one write) and answers at
  once; a `Worker` started in the app's lifespan runs the items, so a restarted server
  resumes its batches by itself;
* every read (status, list, the Server-Sent Events stream) goes through `BatchRunner`,
  whose state is derived from the items' counts;
* batches carry their owner in their metadata: a visitor sees their own batches only;
* a stopping server ends its open event streams at once (pages reconnect to the next one),
  and its worker hands back what it could not finish within its grace period.

``BATCHKIT_STORAGE`` picks the storage (an SQLite file in the working directory by
default; PostgreSQL, MySQL/MariaDB or Redis URLs work the same), ``BATCHKIT_STORAGE_PREFIX``
its table or key prefix; ``BATCHKIT_STUDIO_CONCURRENCY`` the worker's slots (4; 0 runs no worker in the app, for
deployments whose items run in ``python -m batchkit worker`` processes),
``BATCHKIT_STUDIO_LEASE`` its lease in seconds (10), ``BATCHKIT_STUDIO_OUTPUT`` and
``BATCHKIT_STUDIO_SPEED`` where videos go and how fast they are made (see ``generator.py``),
``BATCHKIT_STUDIO_SECRET`` the key that signs the sign-in cookie (made and kept in
``BATCHKIT_STUDIO_SECRET_FILE`` when unset, see ``owners.py``).

What it refuses, as an app on the internet must: another visitor's batches and videos
(404, as for none), a request body over 1 MiB (413), a cross-site form or fetch that
would change something (403), and a ``request_id`` sent again with other products (409).
No error repeats what was sent.

``/docs`` (Swagger UI) is served from the app's own files (those of the ``fastapi-offline``
package): it works offline and behind a strict firewall.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
import re
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from functools import cache
from typing import TYPE_CHECKING, Annotated, Any
from urllib.parse import parse_qs, quote

import anyio
from fastapi import Cookie, Depends, FastAPI, HTTPException, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import (
    FileResponse,
    HTMLResponse,
    JSONResponse,
    RedirectResponse,
    Response,
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
    from collections.abc import AsyncIterator, Awaitable, Callable, Sequence

    from starlette.types import ASGIApp, Message, Receive, Scope, Send

    from batchkit import Item

    #: How a producer of events sends one: its name and its data (made JSON).
    Emit = Callable[[str, Any], Awaitable[None]]

__all__ = ["EventStream", "app", "begin_shutdown", "create_app"]

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
#: How long past its lease's end a running item is shown as waiting for a worker (the
#: store's clock and this server's may differ a little).
LEASE_SLACK = timedelta(seconds=1)
#: How often an event stream looks again at a batch that has not changed.
RECHECK_SECONDS = 2.0
#: Swagger UI's colours that fail WCAG AA contrast, darkened.
_DOCS_CSS = (
    ".swagger-ui .info .title small{background:#4a5263}"
    ".swagger-ui .info .title small.version-stamp{background:#3b6e00}"
    ".swagger-ui .info .url,.swagger-ui .info a{color:#2456c7}"
    ".swagger-ui .opblock.opblock-get .opblock-summary-method{background:#1a5fa8}"
    ".swagger-ui .opblock.opblock-post .opblock-summary-method{background:#1c7044}"
    ".swagger-ui .json-schema-2020-12-expand-deep-button{color:#3d4454}"
    ".swagger-ui .btn.cancel{color:#b42318;border-color:#b42318}"
    ".swagger-ui .parameter__in,.swagger-ui .parameter__deprecated{color:#4a5263}"
    ".swagger-ui .btn.execute{background:#1a5fa8;border-color:#1a5fa8}"
    ".swagger-ui .response-undocumented i{color:#4a5263}"
    ".swagger-ui .download-contents{background:#4a5263}"
)


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
    stalled: bool = Field(
        description="running, but its worker stopped answering (its lease has lapsed): "
        "it waits for a worker to take it up again"
    )
    progress: float = Field(description="0.0 to 1.0")
    message: str | None = Field(description="the current stage, while queued or running")
    error: str | None = Field(description="why it failed, once failed")
    attempt: int
    result_url: str | None = Field(description="the finished video, once succeeded")


class BatchStatusResponse(BaseModel):
    """A batch's state, derived from its items' counts, and each product's own state."""

    batch_id: str
    name: str = Field(description="made from its products' titles")
    state: str = Field(
        description="queued, running, completed, completed_with_errors, failed or cancelled"
    )
    is_terminal: bool
    total: int
    counts: dict[str, int]
    stalled: int = Field(description="running items whose worker stopped answering")
    progress: float
    parent_id: str | None
    cancel_requested: bool
    created_at: str
    products: list[ProductStatus]


class BatchSummary(BaseModel):
    batch_id: str
    name: str = Field(description="made from its products' titles")
    thumbnails: list[str] = Field(description="pictures of its first products")
    state: str
    is_terminal: bool
    total: int
    counts: dict[str, int]
    progress: float
    parent_id: str | None
    cancel_requested: bool
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
        "cancel_requested": status.cancel_requested,
        "created_at": status.created_at.isoformat(),
    }


def _title(item: Item) -> str:
    payload = item.payload if isinstance(item.payload, dict) else {}
    return str(payload.get("title") or item.key)


def batch_name(titles: Sequence[str], total: int) -> str:
    """A batch's name, from its first products' titles: "Lamp", "Lamp and Chair",
    "Lamp, Chair and 3 more"."""
    if total <= 1 or len(titles) < 2:
        return titles[0] if titles else "An empty batch"
    if total == 2:
        return f"{titles[0]} and {titles[1]}"
    return f"{titles[0]}, {titles[1]} and {total - 2} more"


def _stalled(item: Item, now: datetime) -> bool:
    """Running, but past its lease: its worker died or lost the store, and the item waits
    for a worker to claim it again."""
    lapsed = item.lease_expires_at
    return item.state.value == "running" and lapsed is not None and lapsed + LEASE_SLACK < now


def _product(item: Item, now: datetime) -> dict[str, Any]:
    result = item.result if isinstance(item.result, dict) else {}
    state = item.state.value
    done = state == "succeeded"
    return {
        "product_id": item.key,
        "title": _title(item),
        "state": state,
        "stalled": _stalled(item, now),
        "progress": round(item.progress, 4),
        # The stage while there is one: a failed or cancelled card shows why it ended,
        # not the stage it was at; a finished one says so.
        "message": "video ready" if done else item.message if state in _ACTIVE else None,
        "error": None if item.error is None or state != "failed" else item.error.message,
        "attempt": item.attempt,
        "result_url": result.get("video") if done else None,
    }


_ACTIVE = frozenset({"queued", "running"})


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
    slots = int(os.environ.get("BATCHKIT_STUDIO_CONCURRENCY", "4"))
    if concurrency is not None:
        slots = concurrency
    if slots < 0:
        raise ValueError(f"the worker's concurrency is 0 (no worker) or more, not {slots}")
    lease_seconds = float(os.environ.get("BATCHKIT_STUDIO_LEASE", "10"))

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        output_dir().mkdir(parents=True, exist_ok=True)
        stopping = anyio.Event()
        # Set by `begin_shutdown`, from the server's signal handler: it may run between
        # any two steps of the event loop, so it only schedules the event's setting.
        loop = asyncio.get_running_loop()
        app.state.stopping = stopping
        app.state.begin_shutdown = lambda: loop.call_soon_threadsafe(stopping.set)
        async with open_storage(url, prefix=prefix) as storage, contextlib.AsyncExitStack() as work:
            app.state.runner = BatchRunner(storage, generate)
            if slots:
                # The work runs here, not in the requests: a restarted server's worker
                # claims what is left, and a stopped one hands its running items back.
                worker = Worker(
                    storage,
                    generate,
                    concurrency=slots,
                    lease_seconds=lease_seconds,
                    grace_period=5,
                )
                await work.enter_async_context(worker)
            try:
                yield
            finally:
                stopping.set()  # a server that did not say it was stopping

    app = FastAPI(
        title="batchkit studio",
        description="Batch generation of product videos, with each product's own progress.",
        version="1.0",
        lifespan=lifespan,
        docs_url=None,  # served below, from packaged files
        redoc_url=None,
    )
    # Swagger UI's files as the fastapi-offline package ships them, not from a CDN.
    docs_files = StaticFiles(packages=[("fastapi_offline", "static")])
    app.mount("/static/docs", docs_files, name="docs-static")
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
        items = await run.items(status.batch_id, limit=MAX_PRODUCTS)
        now = datetime.now(UTC)
        products = [_product(i, now) for i in items]
        return {
            **_summary(status),
            "name": batch_name([p["title"] for p in products[:2]], status.total),
            "stalled": sum(p["stalled"] for p in products),
            "products": products,
        }

    async def previewed(run: BatchRunner, status: BatchStatus) -> dict[str, Any]:
        """The batch's summary, named and shown by its first products (one short read)."""
        first = await run.items(status.batch_id, limit=3)
        return {
            **_summary(status),
            "name": batch_name([_title(i) for i in first[:2]], status.total),
            "thumbnails": [
                f"/api/v1/products/{quote(i.key, safe='')}/image.png"
                for i in first
                if i.key in by_id()
            ],
        }

    async def summaries(run: BatchRunner, name: str, limit: int) -> list[dict[str, Any]]:
        """The owner's batches, newest first, previewed side by side."""
        listed = await run.batches(metadata={"owner": name}, limit=limit)
        shown: list[dict[str, Any]] = [{} for _ in listed]

        async def preview(n: int) -> None:
            shown[n] = await previewed(run, listed[n])

        async with anyio.create_task_group() as group:
            for n in range(len(listed)):
                group.start_soon(preview, n)
        return shown

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

    @app.post(
        "/api/v1/products/batch/{batch_id}/cancel",
        response_model=BatchSummary,
        tags=["batches"],
    )
    async def cancel(batch_id: str, run: Runner, name: Owner) -> Any:
        """Cancel the batch: products not started end cancelled at once, those being made
        at their next stage. A finished batch stays as it is."""
        await owned(run, batch_id, name)
        return await previewed(run, await run.cancel(batch_id, reason=f"cancelled by {name}"))

    @app.get("/api/v1/batches", response_model=list[BatchSummary], tags=["batches"])
    async def list_batches(
        run: Runner, name: Owner, limit: Annotated[int, Query(ge=1, le=100)] = 20
    ) -> Any:
        """The caller's batches, newest first, with a name and pictures of each."""
        return await summaries(run, name, limit)

    @app.get(
        "/api/v1/products/batch/{batch_id}/events",
        tags=["batches"],
        response_class=EventStream,
        responses={200: {"content": {"text/event-stream": {}}}},
    )
    async def batch_events(batch_id: str, request: Request, run: Runner, name: Owner) -> Any:
        """Server-Sent Events: a ``status`` event (the body of ``/status``) now and after
        every change, then ``end`` once the batch has finished (``gone`` if it is deleted
        meanwhile). A stopping server ends the stream early, without either: connect
        again, to the next server."""
        await owned(run, batch_id, name)

        async def produce(emit: Emit) -> None:
            lock = anyio.Lock()
            last: dict[str, Any] | None = None

            async def show() -> None:
                # Read afresh under the lock, so that no event is older than the one
                # before it, whichever task sends it.
                nonlocal last
                async with lock:
                    current = await body(run, await run.status(batch_id))
                    if current != last:
                        await emit("status", current)
                        last = current

            async def recheck() -> None:
                # A worker that died changes nothing until another one takes its items
                # up: a look every few seconds, while some are running, shows them as
                # waiting for a worker.
                while True:
                    await anyio.sleep(RECHECK_SECONDS)
                    if last is None or last["counts"].get("running"):
                        await show()

            ending = "end"
            try:
                async with anyio.create_task_group() as group:
                    group.start_soon(recheck)
                    async for _ in run.watch(batch_id, poll_interval=0.5):
                        await show()
                    group.cancel_scope.cancel()
            except* BatchNotFound:
                ending = "gone"  # deleted while watched: nothing more will come
            await emit(ending, {})

        return EventStream(produce, request.app.state.stopping)

    # -- pages -------------------------------------------------------------------------

    def signed_in(studio_owner: str | None) -> str | None:
        return owners.read(studio_owner)

    def to_login(request: Request) -> RedirectResponse:
        target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        return RedirectResponse(f"/login?next={_quote(target)}", status_code=303)

    @app.get("/docs", include_in_schema=False)
    async def api_docs() -> HTMLResponse:
        """Swagger UI, from this server only; its language said and its colours darkened
        where they were too faint to read (axe-core's contrast check)."""
        page = get_swagger_ui_html(
            openapi_url=app.openapi_url or "/openapi.json",
            title="batchkit studio: the API",
            swagger_js_url="/static/docs/swagger-ui-bundle.js",
            swagger_css_url="/static/docs/swagger-ui.css",
            swagger_favicon_url="/static/docs/favicon.png",
            # Without deep links, an operation's summary holds no link inside its button.
            swagger_ui_parameters={"deepLinking": False},
        )
        html = bytes(page.body).decode()
        html = html.replace("<html>", '<html lang="en">', 1)
        html = html.replace("</head>", f"<style>{_DOCS_CSS}</style>\n</head>", 1)
        return HTMLResponse(html)

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
        return HTMLResponse(pages.batches(await summaries(run, name, 50), owner=name))

    return app


def begin_shutdown(app: FastAPI) -> None:
    """Tell the app its server has begun to stop: its open event streams end now, and
    the pages that hold them connect to the next server. Safe to call from a signal
    handler; the studio's ``__main__`` calls it on SIGTERM and SIGINT."""
    started = getattr(app.state, "begin_shutdown", None)
    if started is not None:
        with contextlib.suppress(RuntimeError):  # the loop has closed: nothing is open
            started()


class EventStream(Response):
    """A Server-Sent Events response: ``produce`` sends events through the ``emit`` it is
    given; the response ends cleanly when ``produce`` returns, when the client goes, or
    when ``stopping`` is set (the server is shutting down).

    Starlette's `StreamingResponse` stops for the first two only, so a server that waits
    for its open connections before it stops would wait for the longest batch.
    """

    media_type = "text/event-stream"

    def __init__(
        self,
        produce: Callable[[Emit], Awaitable[None]],
        stopping: anyio.Event,
        status_code: int = 200,
    ) -> None:
        super().__init__(
            status_code=status_code,
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )
        self.produce = produce
        self.stopping = stopping

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        # No content-length: the body is as long as the stream lasts.
        headers = [(k, v) for k, v in self.raw_headers if k != b"content-length"]
        await send({"type": "http.response.start", "status": self.status_code, "headers": headers})

        async def emit(event: str, data: Any) -> None:
            chunk = f"event: {event}\ndata: {json.dumps(data)}\n\n".encode()
            await send({"type": "http.response.body", "body": chunk, "more_body": True})

        async with anyio.create_task_group() as group:

            async def events() -> None:
                await self.produce(emit)
                group.cancel_scope.cancel()

            async def until_stopping() -> None:
                await self.stopping.wait()
                group.cancel_scope.cancel()

            async def until_gone() -> None:
                while (await receive())["type"] != "http.disconnect":
                    pass
                group.cancel_scope.cancel()

            group.start_soon(events)
            group.start_soon(until_stopping)
            group.start_soon(until_gone)
        # The client may be gone already: nothing more to tell it then.
        with anyio.CancelScope(shield=True), contextlib.suppress(OSError):
            await send({"type": "http.response.body", "body": b"", "more_body": False})


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
            forbidden = JSONResponse({"detail": "cross-site request refused"}, status_code=403)
            await forbidden(scope, receive, send)
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
