"""The procrastinate app and task of the comparison, in a PostgreSQL schema of its own.

The connection string comes from ``PEERS_PROCRASTINATE_DSN`` and the schema from
``PEERS_PROCRASTINATE_SCHEMA``: every connection of the app sets its ``search_path`` to
that schema only, so procrastinate's tables, types and functions live there and are
dropped with it.
"""

from __future__ import annotations

import os

from marks import run_item
from procrastinate import App, PsycopgConnector

__all__ = ["QUEUE", "app", "item"]

DSN = os.environ.get("PEERS_PROCRASTINATE_DSN", "postgresql://postgres@127.0.0.1:5432/test")
SCHEMA = os.environ.get("PEERS_PROCRASTINATE_SCHEMA", "peers_procrastinate")
QUEUE = "peers"

app = App(connector=PsycopgConnector(conninfo=DSN, kwargs={"options": f"-c search_path={SCHEMA}"}))


@app.task(name="peers.item", queue=QUEUE)
async def item(n: int, tag: str) -> None:
    """Run item ``n`` under ``tag``; every 10th raises."""
    run_item(n, tag)
