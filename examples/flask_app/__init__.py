"""batchkit from Flask: a synchronous app that submits batches through `SyncBatchRunner`.

``python -m examples.flask_app`` serves it for a quick try; ``gunicorn -w 2 --preload
'examples.flask_app:create_app()'`` is the production shape. A separate worker runs the
items: ``python -m batchkit worker --storage URL --generator
examples.flask_app.generator:render``.
"""

from __future__ import annotations

from .app import create_app

__all__ = ["create_app"]
