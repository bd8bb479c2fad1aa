"""``python -m examples.fastapi_app`` (``make web``): serve the studio on 127.0.0.1:$PORT."""

from __future__ import annotations

import logging
import os

import uvicorn

__all__: list[str] = []


def main() -> None:
    port = int(os.environ.get("PORT", "8000"))
    # batchkit's per-item log lines (logger "batchkit.items"), beside uvicorn's own.
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)-7s %(message)s")
    print(f"batchkit studio: http://127.0.0.1:{port}/products", flush=True)
    uvicorn.run("examples.fastapi_app.main:app", host="127.0.0.1", port=port, log_level="info")


if __name__ == "__main__":
    main()
