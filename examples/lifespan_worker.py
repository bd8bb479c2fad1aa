"""A web app whose batches run in a worker started in its lifespan: a restart resumes them.

Run it with ``uvicorn examples.lifespan_worker:app`` (``BATCHKIT_STORAGE`` picks the
storage; by default an SQLite file in the working directory). Then::

    curl -X POST localhost:8000/batches -H 'content-type: application/json' \\
         -d '{"keys": ["mug", "lamp", "poster"]}'
    curl localhost:8000/batches/<batch_id>

The request handler only *submits* the batch (one write) and answers at once; the worker,
started with the app and stopped with it, claims the items from the storage. Nothing runs
in ``BackgroundTasks`` or in a task tied to a request, so a server that is restarted in
the middle of a batch (a deploy, a crash, ``kill -9``) loses nothing: the new process's
worker claims what is left, and an item that was running when the old one died runs
again once its lease has lapsed.

The same app scales out unchanged: set ``BATCHKIT_IN_APP_WORKER=0`` and run
``python -m batchkit worker --storage URL --generator examples.lifespan_worker:generate``
on as many machines as you like, beside the web processes.
"""

from __future__ import annotations

import os
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

import anyio
from fastapi import FastAPI, HTTPException
from pydantic import BaseModel, Field

from batchkit import BatchNotFound, BatchRunner, InvalidBatch, ItemContext, Worker, open_storage

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

__all__ = ["app", "generate"]

STORAGE_URL = os.environ.get("BATCHKIT_STORAGE", "sqlite+aiosqlite:///batchkit-app.db")
#: Seconds each item takes (the tests make it long enough to restart the server mid-batch).
ITEM_SECONDS = float(os.environ.get("BATCHKIT_EXAMPLE_ITEM_SECONDS", "0.5"))
#: "0" when separate worker processes do the work.
IN_APP_WORKER = os.environ.get("BATCHKIT_IN_APP_WORKER", "1") != "0"
#: Seconds a claim holds without a heartbeat: how long an item of a crashed server waits.
LEASE = float(os.environ.get("BATCHKIT_EXAMPLE_LEASE", "10"))


async def generate(ctx: ItemContext) -> dict[str, Any]:
    """One item's work: a few stages, with progress."""
    for step, stage in enumerate(["script", "frames", "encode", "upload"]):
        await ctx.progress(step / 4, stage)
        await anyio.sleep(ITEM_SECONDS / 4)
    return {"video": f"videos/{ctx.key}.mp4", "attempt": ctx.attempt}


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    async with open_storage(STORAGE_URL) as storage:
        app.state.runner = BatchRunner(storage, generate)
        if not IN_APP_WORKER:
            yield
            return
        # Started with the app, stopped with it: leaving the block lets running items
        # finish for a few seconds, then hands the rest back to `queued`.
        async with Worker(storage, generate, concurrency=4, lease_seconds=LEASE, grace_period=5):
            yield


app = FastAPI(title="batchkit: a worker in the app's lifespan", lifespan=lifespan)


class NewBatch(BaseModel):
    keys: list[str] = Field(min_length=1, max_length=1_000)


def _runner() -> BatchRunner:
    runner: BatchRunner = app.state.runner
    return runner


@app.post("/batches", status_code=202)
async def submit(body: NewBatch) -> dict[str, Any]:
    """Submit a batch; it runs in the worker, not in this request."""
    try:
        batch = await _runner().submit(body.keys)
    except InvalidBatch as exc:
        raise HTTPException(status_code=422, detail=str(exc)) from None
    return {"batch_id": batch.id, "total": batch.total}


@app.get("/batches/{batch_id}")
async def status(batch_id: str) -> dict[str, Any]:
    """The batch's derived state and counts, and each item's state and attempt."""
    runner = _runner()
    try:
        current = await runner.status(batch_id)
        items = await runner.items(batch_id, limit=1_000)
    except BatchNotFound:
        raise HTTPException(status_code=404, detail="no such batch") from None
    return {
        "batch_id": current.batch_id,
        "state": current.state.value,
        "counts": {state.value: n for state, n in current.counts.items()},
        "progress": current.progress,
        "items": [
            {"key": i.key, "state": i.state.value, "attempt": i.attempt, "result": i.result}
            for i in items
        ],
    }
