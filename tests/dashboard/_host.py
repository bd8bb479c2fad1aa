"""A host app that mounts the dashboard under ``/ops/batchkit`` behind its own check: the
``role`` cookie (``admin`` acts, ``viewer`` reads, anyone else is refused). Its storage is
``BATCHKIT_STORAGE``. Served by uvicorn in the browser tests."""

from __future__ import annotations

import os
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING

from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Mount, Route

from batchkit import open_storage
from batchkit.dashboard import dashboard

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from starlette.requests import Request

storage = open_storage(os.environ["BATCHKIT_STORAGE"])


def authorize(request: Request, action: str, batch_id: str | None) -> bool:
    role = request.cookies.get("role")
    return role == "admin" or (role == "viewer" and action == "view")


async def home(request: Request) -> PlainTextResponse:
    return PlainTextResponse("the host app")


@asynccontextmanager
async def lifespan(app: Starlette) -> AsyncIterator[None]:
    async with storage:
        yield


app = Starlette(
    routes=[
        Route("/", home),
        Mount("/ops/batchkit", app=dashboard(storage, authorize=authorize, title="Ops")),
    ],
    lifespan=lifespan,
)
