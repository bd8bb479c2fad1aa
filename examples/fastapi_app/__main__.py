"""``python -m examples.fastapi_app`` (``make web``): serve the studio on 127.0.0.1:$PORT.

On SIGTERM or Ctrl-C the server tells the app at once, so that open event streams end
(their pages reconnect to the next server) instead of holding the stop until their batch
has finished; the app's worker then finishes or hands back its running items within its
grace period. Served by ``uvicorn examples.fastapi_app.main:app`` instead, pass
``--timeout-graceful-shutdown 3`` to get the same bound.
"""

from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING

import uvicorn

if TYPE_CHECKING:
    from types import FrameType

    from fastapi import FastAPI

__all__: list[str] = []

#: The longest a stop waits for open requests before it cancels them (the event streams
#: end at once; this bounds anything else).
GRACEFUL_SECONDS = 3


class _Server(uvicorn.Server):
    """uvicorn's server, telling the app as soon as a stop begins."""

    def __init__(self, config: uvicorn.Config, app: FastAPI) -> None:
        super().__init__(config)
        self.app = app

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        from .main import begin_shutdown

        super().handle_exit(sig, frame)
        begin_shutdown(self.app)


def main() -> None:
    port = int(os.environ.get("PORT", "8000"))
    # batchkit's per-item log lines (logger "batchkit.items"), beside uvicorn's own.
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)-7s %(message)s")
    print(f"batchkit studio: http://127.0.0.1:{port}/products", flush=True)
    from .main import app  # after the logging set-up: the app logs where its key is

    config = uvicorn.Config(
        app,
        host="127.0.0.1",
        port=port,
        log_level="info",
        timeout_graceful_shutdown=GRACEFUL_SECONDS,
    )
    _Server(config, app).run()


if __name__ == "__main__":
    main()
