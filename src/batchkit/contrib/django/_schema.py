"""What batchkit's migrations do: create, upgrade and drop its tables on Django's connection.

The statements are batchkit's own (`create_statements`, `upgrade_statements`): a
migration written with them never drifts from what `SQLStorage` reads. The tables are
made on the database of ``BATCHKIT["DATABASE"]`` only; ``migrate`` on another alias
records the migration and does nothing.
"""

from __future__ import annotations

import logging
from typing import Any

from django.core.exceptions import ImproperlyConfigured

from ...exceptions import SchemaVersionMismatch
from ...storage.sql import SCHEMA_VERSION, create_statements, upgrade_statements
from ._settings import database_alias, table_prefix

__all__ = ["create_tables", "drop_tables", "upgrade_tables"]

logger = logging.getLogger(__name__)

#: batchkit's tables by suffix, in the order they can be dropped.
_TABLES = ("items", "tags", "batches", "meta")


def _dialect(connection: Any) -> str:
    vendor = connection.vendor
    if vendor == "mysql":
        return "mariadb" if getattr(connection, "mysql_is_mariadb", False) else "mysql"
    if vendor in ("sqlite", "postgresql"):
        return str(vendor)
    raise ImproperlyConfigured(
        f"batchkit has no tables for the {vendor!r} database {connection.alias!r}: it stores "
        "in SQLite, PostgreSQL and MySQL/MariaDB (set settings.BATCHKIT['DATABASE'] to one)"
    )


def _ours(schema_editor: Any) -> bool:
    return bool(schema_editor.connection.alias == database_alias())


def _execute(schema_editor: Any, statements: list[str]) -> None:
    for statement in statements:
        # No parameters: the statements carry their values, and a "%" in one stays as it is.
        schema_editor.execute(statement, None)


def _stored_version(schema_editor: Any, prefix: str) -> tuple[bool, int | None]:
    """Whether the tables exist, and the version in ``<prefix>meta`` (`None` when they
    have none); raises when only some of them exist."""
    connection = schema_editor.connection
    with connection.cursor() as cursor:
        present = set(connection.introspection.table_names(cursor))
        names = [prefix + suffix for suffix in _TABLES]
        found = [name for name in names if name in present]
        if not found:
            return False, None
        if len(found) < len(names):
            missing = sorted(set(names) - set(found))
            raise SchemaVersionMismatch(
                f"batchkit's tables with the prefix {prefix!r} are incomplete (missing: "
                f"{', '.join(missing)}); drop the others or create these, then migrate again"
            )
        meta = schema_editor.quote_name(prefix + "meta")
        cursor.execute(f"SELECT value FROM {meta} WHERE name = 'schema_version'")
        row = cursor.fetchone()
    if row is None:
        return True, None
    text = str(row[0])
    if not (text.isascii() and text.isdigit()):
        raise SchemaVersionMismatch(
            f"the tables with prefix {prefix!r} have schema version {text!r}, which no "
            "batchkit wrote"
        )
    return True, int(text)


def create_tables(apps: Any, schema_editor: Any) -> None:
    """Create batchkit's tables at this batchkit's layout (`SCHEMA_VERSION`); tables
    already there (made by a `SQLStorage` before the app was installed) are kept and
    brought to it.

    Raises:
        ImproperlyConfigured: a database batchkit has no tables for (Oracle...), or a
            bad ``BATCHKIT`` setting.
        SchemaVersionMismatch: the tables are incomplete, or newer than this batchkit.
    """
    if not _ours(schema_editor):
        return
    dialect = _dialect(schema_editor.connection)
    prefix = table_prefix()
    try:
        statements = create_statements(dialect, prefix)
    except ValueError as exc:
        raise ImproperlyConfigured(f"settings.BATCHKIT['TABLE_PREFIX']: {exc}") from None
    exists, stored = _stored_version(schema_editor, prefix)
    if not exists:
        _execute(schema_editor, statements)
        return
    _upgrade(schema_editor, dialect, prefix, stored)


def upgrade_tables(apps: Any, schema_editor: Any) -> None:
    """Bring batchkit's tables to this batchkit's layout: nothing when they have it.

    What the migration of a later batchkit's schema version runs: on tables made by an
    earlier ``0001_initial`` it adds what that version adds; on tables ``0001_initial``
    made at the new layout it does nothing.

    Raises:
        SchemaVersionMismatch: the tables are missing or incomplete, or newer than this
            batchkit.
    """
    if not _ours(schema_editor):
        return
    dialect = _dialect(schema_editor.connection)
    prefix = table_prefix()
    exists, stored = _stored_version(schema_editor, prefix)
    if not exists:
        raise SchemaVersionMismatch(
            f"no batchkit tables with the prefix {prefix!r} to upgrade: migrate from "
            "batchkit's 0001_initial"
        )
    _upgrade(schema_editor, dialect, prefix, stored)


def _upgrade(schema_editor: Any, dialect: str, prefix: str, stored: int | None) -> None:
    if stored == SCHEMA_VERSION:
        return
    if stored is None:
        raise SchemaVersionMismatch(
            f"batchkit's tables with the prefix {prefix!r} record no schema version: "
            "bring them up to date with python -m batchkit schema upgrade, then migrate"
        )
    statements = upgrade_statements(dialect, prefix, from_version=stored)
    _execute(schema_editor, statements)
    logger.info(
        "batchkit's tables %r upgraded from schema version %s to %s",
        prefix,
        stored,
        SCHEMA_VERSION,
    )


def drop_tables(apps: Any, schema_editor: Any) -> None:
    """Drop batchkit's tables of the configured prefix, their rows with them."""
    if not _ours(schema_editor):
        return
    _dialect(schema_editor.connection)
    prefix = table_prefix()
    for suffix in _TABLES:
        schema_editor.execute(f"DROP TABLE IF EXISTS {schema_editor.quote_name(prefix + suffix)}")
