"""SQLStorage: SQLite (the embedded default), PostgreSQL and MySQL/MariaDB.

Needs the ``sql`` extra (``pip install 'batchkit[sql]'``), plus ``postgres`` or ``mysql``
for those servers.
"""

from __future__ import annotations

from .._url import require

require("sqlalchemy", "sql")

from ._migrations import SchemaUpgrade as SchemaUpgrade  # noqa: E402
from ._migrations import create_statements as create_statements  # noqa: E402
from ._migrations import pending_statements as pending_statements  # noqa: E402
from ._migrations import schema_version as schema_version  # noqa: E402
from ._migrations import upgrade_schema as upgrade_schema  # noqa: E402
from ._migrations import upgrade_statements as upgrade_statements  # noqa: E402
from .schema import SCHEMA_VERSION as SCHEMA_VERSION  # noqa: E402
from .schema import metadata_for as metadata_for  # noqa: E402
from .storage import SQLStorage as SQLStorage  # noqa: E402

__all__ = [
    "SCHEMA_VERSION",
    "SQLStorage",
    "SchemaUpgrade",
    "create_statements",
    "metadata_for",
    "pending_statements",
    "schema_version",
    "upgrade_schema",
    "upgrade_statements",
]
