"""SQLStorage: SQLite (the embedded default), PostgreSQL and MySQL/MariaDB.

Needs the ``sql`` extra (``pip install 'batchkit[sql]'``), plus ``postgres`` or ``mysql``
for those servers.
"""

from __future__ import annotations

from .._url import require

require("sqlalchemy", "sql")

from .schema import SCHEMA_VERSION as SCHEMA_VERSION  # noqa: E402
from .schema import metadata_for as metadata_for  # noqa: E402
from .storage import SQLStorage as SQLStorage  # noqa: E402

__all__ = ["SCHEMA_VERSION", "SQLStorage", "metadata_for"]
