"""``python -m examples.flask_app``: Flask's development server on 127.0.0.1:$PORT.

For a quick try only; in production, ``gunicorn -w 2 --preload
'examples.flask_app:create_app()'``. Either way the items are run by a worker started
beside it (``python -m batchkit worker``).
"""

from __future__ import annotations

import logging
import os

from .app import create_app

__all__: list[str] = []


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)-7s %(message)s")
    port = int(os.environ.get("PORT", "5000"))
    app = create_app()
    print(f"batchkit Flask example: http://127.0.0.1:{port}/", flush=True)
    app.run(host="127.0.0.1", port=port)


if __name__ == "__main__":
    main()
