"""A dashboard for operators: every batch, its items, their errors, live (the ``dashboard``
extra: ``pip install 'batchkit[dashboard]'``).

`dashboard` builds an ASGI app (Starlette) on a storage the host opened. Mount it in the
host's app::

    from batchkit.dashboard import dashboard

    app.mount("/batchkit", dashboard(storage, authorize=is_staff))

or serve it alone: ``python -m batchkit dashboard --storage URL``. Pages read without
JavaScript; with it, a batch's page follows the batch live (server-sent events). Every
asset is packaged: the pages load nothing from elsewhere.
"""

from __future__ import annotations

import inspect
import json
import secrets
from importlib import resources
from typing import TYPE_CHECKING, Any, Literal

import anyio

from .._options import seconds
from .._secrets import redact
from ..exceptions import BatchkitError, BatchNotFound, InvalidBatch, StorageError
from ..ids import is_batch_id
from ..models import BatchState, ItemState
from ..runner import BatchRunner
from ._html import Page, batch_page, batches_page, items_table, message_page, status_event

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Callable

    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import Response

    from ..protocols import Storage

__all__ = ["ACTIONS", "Action", "dashboard"]

#: What a request may do: read pages, or one of the actions.
Action = Literal["view", "cancel", "retry_failed", "delete"]
#: The actions, which ``read_only=True`` refuses.
ACTIONS: tuple[Action, ...] = ("cancel", "retry_failed", "delete")

_PAGE = 50
_CSRF_COOKIE = "batchkit_csrf"
_ASSETS = {
    "dashboard.css": "text/css; charset=utf-8",
    "dashboard.js": "text/javascript; charset=utf-8",
    "favicon.svg": "image/svg+xml",
}
_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
        "connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'self'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}


async def _never_run(ctx: object) -> None:  # the dashboard's runner never runs an item
    raise RuntimeError("the dashboard does not run items")


def dashboard(
    storage: Storage,
    *,
    authorize: Callable[[Request, Action, str | None], bool | Awaitable[bool]] | None,
    read_only: bool = False,
    title: str = "batchkit",
    heartbeat: float = 15.0,
) -> Starlette:
    """The dashboard's ASGI app, on ``storage`` (opened and closed by the host).

    Args:
        storage: the app's storage.
        authorize: asked before every page and action, with the request, the action
            (``"view"``, ``"cancel"``, ``"retry_failed"``, ``"delete"``) and the batch's
            id (`None` for the list of batches); a false answer refuses it with 403. It
            is where the host checks its own session or roles. `None` lets anyone who
            reaches the app do anything it allows: give it explicitly, so that the
            choice is made.
        read_only: refuse every action (403), and show none.
        title: the name in the pages' header.
        heartbeat: seconds between keep-alive comments of a live page's event stream.

    Returns:
        A Starlette app: mount it under any path (links follow the mount point).
    """
    try:
        from starlette.applications import Starlette
        from starlette.routing import Route
    except ImportError as exc:  # pragma: no cover - the extra is the way in
        raise ImportError(
            "batchkit.dashboard needs Starlette: pip install 'batchkit[dashboard]'"
        ) from exc
    if authorize is not None and not callable(authorize):
        raise TypeError(f"authorize must be callable or None, got {authorize!r}")
    heartbeat = seconds("heartbeat", heartbeat)
    app_state = _Dashboard(storage, authorize, bool(read_only), title, heartbeat)
    routes = [
        Route("/", app_state.batches, methods=["GET", "HEAD"]),
        Route("/batches/{batch_id}", app_state.batch, methods=["GET", "HEAD"]),
        Route("/batches/{batch_id}/events", app_state.events, methods=["GET"]),
        Route("/batches/{batch_id}/cancel", app_state.cancel, methods=["POST"]),
        Route("/batches/{batch_id}/retry-failed", app_state.retry_failed, methods=["POST"]),
        Route("/batches/{batch_id}/delete", app_state.delete, methods=["POST"]),
        Route("/static/{name}", app_state.asset, methods=["GET", "HEAD"]),
    ]
    # Each kind of error has a handler of its own: one for `Exception` alone would be
    # Starlette's last resort, which answers and then raises the error again.
    handled = (_Refused, BatchNotFound, StorageError, OSError, BatchkitError, ValueError)
    handlers: dict[Any, Any] = dict.fromkeys(handled, app_state.failed)
    handlers[Exception] = app_state.failed
    return Starlette(routes=routes, exception_handlers=handlers)


class _Refused(Exception):
    def __init__(self, status: int, heading: str, text: str) -> None:
        super().__init__(text)
        self.status = status
        self.heading = heading
        self.text = text


class _Dashboard:
    """The dashboard's routes, on one storage."""

    def __init__(
        self,
        storage: Storage,
        authorize: Callable[[Request, Action, str | None], bool | Awaitable[bool]] | None,
        read_only: bool,
        title: str,
        heartbeat: float,
    ) -> None:
        self.runner = BatchRunner(storage, _never_run, poll_interval=1.0)
        self.authorize = authorize
        self.read_only = read_only
        self.title = title
        self.heartbeat = heartbeat

    # -- what every request goes through -----------------------------------------------

    async def _allowed(self, request: Request, action: Action, batch_id: str | None) -> bool:
        if action != "view" and self.read_only:
            return False
        if self.authorize is None:
            return True
        answer = self.authorize(request, action, batch_id)
        if inspect.isawaitable(answer):
            answer = await answer
        return answer is True

    async def _check(self, request: Request, action: Action, batch_id: str | None) -> None:
        if action != "view" and self.read_only:
            raise _Refused(403, "Read-only", "This dashboard is read-only: it takes no action.")
        if not await self._allowed(request, action, batch_id):
            raise _Refused(403, "Not allowed", "You are not allowed to do this.")

    async def _page(self, request: Request, batch_id: str | None) -> Page:
        actions = frozenset(
            [a for a in ACTIONS if await self._allowed(request, a, batch_id)]
            if not self.read_only
            else []
        )
        token = request.cookies.get(_CSRF_COOKIE) or ""
        if not _token_shape(token):
            token = secrets.token_urlsafe(24)
        root = request.scope.get("root_path", "")
        return Page(root, self.title, token, actions)

    def _html(self, request: Request, page: Page, body: str, status: int = 200) -> Response:
        from starlette.responses import HTMLResponse

        response = HTMLResponse(body, status_code=status, headers=_HEADERS)
        if request.cookies.get(_CSRF_COOKIE) != page.csrf:
            response.set_cookie(
                _CSRF_COOKIE,
                page.csrf,
                path=page.root or "/",
                httponly=True,
                samesite="strict",
                secure=request.url.scheme == "https",
            )
        return response

    @staticmethod
    def _batch_id(request: Request) -> str:
        batch_id = str(request.path_params["batch_id"])
        if not is_batch_id(batch_id):
            raise _Refused(404, "No such batch", "There is no batch with this id.")
        return batch_id

    async def failed(self, request: Request, exc: Exception) -> Response:
        """Every error ends in a page of its own: a refusal, an unknown batch, a store
        that does not answer (its message without secrets), or a bug (a plain 500)."""
        page = Page(request.scope.get("root_path", ""), self.title, "", frozenset())
        if isinstance(exc, _Refused):
            status, heading, text = exc.status, exc.heading, exc.text
        elif isinstance(exc, BatchNotFound):
            status, heading, text = 404, "No such batch", "There is no batch with this id."
        elif isinstance(exc, StorageError | OSError):
            status, heading = 503, "The store did not answer"
            text = f"The storage failed: {redact(str(exc))}. Try again in a moment."
        elif isinstance(exc, BatchkitError | ValueError):
            status, heading, text = 400, "Cannot do this", redact(str(exc))
        else:
            status, heading, text = 500, "Something went wrong", "The dashboard failed."
        from starlette.responses import HTMLResponse

        body = message_page(page, heading, text, status=status)
        return HTMLResponse(body, status_code=status, headers=_HEADERS)

    # -- pages ---------------------------------------------------------------------------

    async def batches(self, request: Request) -> Response:
        await self._check(request, "view", None)
        page = await self._page(request, None)
        query = request.query_params
        states = {s for s in query.getlist("state") if s in {b.value for b in BatchState}}
        where = query.get("where", "").strip()
        metadata = _metadata(where)
        before = query.get("before") or None
        if before is not None and not is_batch_id(before):
            raise _Refused(400, "Cannot do this", "before must be a batch id.")
        shown = []
        next_before = None
        cursor = before
        # Read pages until one page of the states asked for is full (or nothing is left).
        for _ in range(20):
            read = await self.runner.batches(
                metadata=metadata, limit=_PAGE if not states else 1_000, before=cursor
            )
            for status in read:
                if not states or status.state.value in states:
                    shown.append(status)
            if len(shown) >= _PAGE:
                shown = shown[:_PAGE]
                next_before = shown[-1].batch_id
                break
            if len(read) < (_PAGE if not states else 1_000):
                break
            cursor = read[-1].batch_id
        notice = _notice(query.get("done"))
        body = batches_page(
            page, shown, states=states, where=where, next_before=next_before, notice=notice
        )
        return self._html(request, page, body)

    async def batch(self, request: Request) -> Response:
        batch_id = self._batch_id(request)
        await self._check(request, "view", batch_id)
        page = await self._page(request, batch_id)
        query = request.query_params
        state = query.get("state") or None
        if state is not None and state not in {s.value for s in ItemState}:
            raise _Refused(400, "Cannot do this", f"Not an item state: {state[:40]}")
        after_text = query.get("after")
        after = None
        if after_text:
            if not after_text.isdigit() or len(after_text) > 12:
                raise _Refused(400, "Cannot do this", "after must be an item's position.")
            after = int(after_text)
        status = await self.runner.status(batch_id)
        items = await self.runner.items(batch_id, state=state, limit=_PAGE, after=after)
        next_after = items[-1].position if len(items) == _PAGE else None
        table = items_table(page, batch_id, items, state=state, next_after=next_after)
        body = batch_page(page, status, table, notice=_notice(query.get("done")))
        return self._html(request, page, body)

    async def events(self, request: Request) -> Response:
        """The batch's status now and after every change, as server-sent events, until
        it is terminal or the reader goes away."""
        from starlette.responses import StreamingResponse

        batch_id = self._batch_id(request)
        await self._check(request, "view", batch_id)
        await self.runner.status(batch_id)  # an unknown batch: 404, not an empty stream

        async def stream() -> AsyncIterator[str]:
            send, receive = anyio.create_memory_object_stream[str](16)

            async def follow() -> None:
                async with send:
                    try:
                        async for status in self.runner.watch(batch_id):
                            await send.send(status_event(status))
                    except BatchNotFound:
                        await send.send("event: gone\ndata: {}\n\n")

            async with anyio.create_task_group() as tg:
                tg.start_soon(follow)
                async with receive:
                    while True:
                        with anyio.move_on_after(self.heartbeat) as waited:
                            try:
                                yield await receive.receive()
                            except anyio.EndOfStream:
                                break
                        if waited.cancelled_caught:
                            yield ": keep-alive\n\n"
                tg.cancel_scope.cancel()

        headers = {**_HEADERS, "X-Accel-Buffering": "no"}
        return StreamingResponse(stream(), media_type="text/event-stream", headers=headers)

    # -- actions -------------------------------------------------------------------------

    async def _act(self, request: Request, action: Action) -> str:
        batch_id = self._batch_id(request)
        await self._check(request, action, batch_id)
        form = await request.form()
        token = request.cookies.get(_CSRF_COOKIE)
        sent = form.get("csrf")
        if not token or not isinstance(sent, str) or not secrets.compare_digest(sent, token):
            raise _Refused(
                403, "Not allowed", "The form is out of date: reload the page and try again."
            )
        return batch_id

    def _redirect(self, request: Request, path: str, done: str) -> Response:
        from starlette.responses import RedirectResponse

        root = request.scope.get("root_path", "").rstrip("/")
        return RedirectResponse(f"{root}{path}?done={done}", status_code=303, headers=_HEADERS)

    async def cancel(self, request: Request) -> Response:
        batch_id = await self._act(request, "cancel")
        await self.runner.cancel(batch_id, reason="cancelled from the dashboard")
        return self._redirect(request, f"/batches/{batch_id}", "cancelled")

    async def retry_failed(self, request: Request) -> Response:
        batch_id = await self._act(request, "retry_failed")
        try:
            again = await self.runner.retry_failed(batch_id)
        except InvalidBatch as exc:
            raise _Refused(409, "Cannot retry", str(exc)) from None
        return self._redirect(request, f"/batches/{again.id}", "retried")

    async def delete(self, request: Request) -> Response:
        batch_id = await self._act(request, "delete")
        if not await self.runner.delete(batch_id):
            raise BatchNotFound(batch_id)
        return self._redirect(request, "/", "deleted")

    # -- assets --------------------------------------------------------------------------

    async def asset(self, request: Request) -> Response:
        from starlette.responses import Response

        name = str(request.path_params["name"])
        kind = _ASSETS.get(name)
        if kind is None:
            raise _Refused(404, "Not found", "There is no such file.")
        body = resources.files(__package__).joinpath("static", name).read_bytes()
        headers = {**_HEADERS, "Cache-Control": "public, max-age=3600"}
        return Response(body, media_type=kind, headers=headers)


def _token_shape(token: str) -> bool:
    return 16 <= len(token) <= 64 and all(c.isalnum() or c in "-_" for c in token)


def _metadata(where: str) -> dict[str, Any] | None:
    """``key=value`` (the value read as JSON when it parses as a scalar) as a filter."""
    if not where:
        return None
    key, sep, value = where.partition("=")
    key = key.strip()
    if not sep or not key or len(where) > 500:
        raise _Refused(400, "Cannot do this", "A metadata filter is key=value (owner=ada).")
    try:
        parsed: Any = json.loads(value)
    except ValueError:
        parsed = value
    if isinstance(parsed, dict | list) or (isinstance(parsed, float) and parsed != parsed):
        parsed = value
    return {key: parsed}


def _notice(done: str | None) -> str | None:
    return {
        "cancelled": "Cancel requested: running items stop at their next step.",
        "retried": "A new batch retries the failed items.",
        "deleted": "The batch was deleted.",
    }.get(done or "")
