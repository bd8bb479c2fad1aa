"""Migrations of the SQL tables: each schema version's changes, as the SQL a database runs.

The same statements serve three ways: `upgrade_schema` runs them (``python -m batchkit
schema upgrade``), ``--sql`` prints them, and a revision of the host's own Alembic history
executes them (`pending_statements` on Alembic's connection, `create_statements` for a
new install).

Every change knows whether the tables already have it, so an upgrade stopped half-way
(MySQL and MariaDB commit each ``ALTER TABLE`` on its own) runs again from where it
stopped, and tables that carry a change without its version (or no version at all) are
only stamped.
"""

from __future__ import annotations

import logging
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sqlalchemy import Column, Integer, MetaData, Table, Text, inspect, select, update
from sqlalchemy.engine import Dialect as SADialect
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError
from sqlalchemy.schema import CreateColumn as _CreateColumn
from sqlalchemy.schema import CreateIndex as _CreateIndex
from sqlalchemy.schema import CreateTable

from ..._secrets import redact
from ...exceptions import SchemaVersionMismatch, StorageError
from .schema import SCHEMA_VERSION, Tables, _LongText, build_tables
from .storage import SQLStorage

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable

    from sqlalchemy.engine import Connection
    from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
    from sqlalchemy.types import TypeEngine

#: Untyped in SQLAlchemy 2.0.38, the lowest release pyproject.toml allows.
CreateColumn: Any = _CreateColumn
CreateIndex: Any = _CreateIndex

__all__ = [
    "SchemaUpgrade",
    "create_statements",
    "pending_statements",
    "schema_version",
    "upgrade_schema",
    "upgrade_statements",
]

logger = logging.getLogger("batchkit.storage.sql")

#: The dialects batchkit's tables are written for, by SQLAlchemy's name.
_DIALECT_NAMES = ("sqlite", "postgresql", "mysql", "mariadb")
_VERSION_ROW = "schema_version"


@dataclass(frozen=True)
class _AddColumn:
    """A nullable column added to one of the tables (a change that needs no data moved)."""

    table: str  #: the `Tables` field: ``"batches"``, ``"items"``...
    name: str
    type: TypeEngine[Any]

    def applied(self, columns: Callable[[str], set[str]]) -> bool:
        return self.name in columns(self.table)

    def sql(self, tables: Tables, dialect: SADialect) -> str:
        target: Table = getattr(tables, self.table)
        # The column on a table of the same (qualified) name, so that the dialect renders
        # it as `create_all` renders it in a new install.
        column: Column[Any] = Column(self.name, self.type, nullable=True)
        Table(target.name, MetaData(schema=target.schema), column)
        preparer: Any = dialect.identifier_preparer  # untyped in SQLAlchemy 2.0.38
        table = preparer.format_table(target)
        return f"ALTER TABLE {table} ADD COLUMN {CreateColumn(column).compile(dialect=dialect)}"


#: The changes that lead to each version from the one before. The layout of version 1 is
#: the first release's; a change spells out its own columns, so that a later layout
#: changing them does not change what an old step does.
_STEPS: dict[int, tuple[_AddColumn, ...]] = {
    # An item's attempt history (`batchkit.history`); a batch's cancel reason and failure
    # limit. No index changed.
    2: (
        _AddColumn("batches", "cancel_reason", Text()),
        _AddColumn("batches", "max_failures", Integer()),
        _AddColumn("items", "history", _LongText),
    ),
}


@dataclass(frozen=True)
class SchemaUpgrade:
    """What an upgrade of batchkit's tables found, and what it ran (or would run).

    Attributes:
        table_prefix: the prefix of the tables.
        from_version: the version the tables had; `None` when none was recorded (the
            changes were looked for one by one).
        to_version: the version they have after the upgrade: this batchkit's
            `SCHEMA_VERSION`.
        statements: the SQL of the upgrade, in order; empty when the tables were current.
        applied: whether the statements ran (`False` for a dry run, or with nothing to do).
    """

    table_prefix: str
    from_version: int | None
    to_version: int
    statements: tuple[str, ...]
    applied: bool

    @property
    def needed(self) -> bool:
        """Whether the tables were not current."""
        return bool(self.statements)


# -- statements, without a database ------------------------------------------------------


def _dialect(dialect: str | SADialect) -> SADialect:
    name = dialect.name if isinstance(dialect, SADialect) else dialect
    if name not in _DIALECT_NAMES:
        raise ValueError(
            f"batchkit has no tables for the dialect {name!r}, only for {', '.join(_DIALECT_NAMES)}"
        )
    return dialect if isinstance(dialect, SADialect) else make_url(f"{name}://").get_dialect()()


def _tables(table_prefix: str, schema: str | None) -> Tables:
    return build_tables(MetaData(), table_prefix, schema)


def _compiled(statement: Any, dialect: SADialect) -> str:
    return str(statement.compile(dialect=dialect, compile_kwargs={"literal_binds": True})).strip()


def _stamp(tables: Tables, dialect: SADialect, *, insert: bool) -> str:
    meta = tables.meta
    value = str(SCHEMA_VERSION)
    if insert:
        statement: Any = meta.insert().values(name=_VERSION_ROW, value=value)
    else:
        statement = update(meta).where(meta.c.name == _VERSION_ROW).values(value=value)
    return _compiled(statement, dialect)


def create_statements(
    dialect: str | SADialect, table_prefix: str = "batchkit_", *, schema: str | None = None
) -> list[str]:
    """The SQL that creates batchkit's tables and records their version, for a new install.

    The tables of this batchkit's layout (`SCHEMA_VERSION`), their indexes, and the row of
    ``<prefix>meta`` that says which layout they have: what `SQLStorage` does on its own
    with ``create_schema=True``, for a host whose migrations create the tables instead.

    Args:
        dialect: ``"sqlite"``, ``"postgresql"``, ``"mysql"`` or ``"mariadb"``, or a
            SQLAlchemy dialect (Alembic's ``op.get_context().dialect``).
        table_prefix: the prefix of the tables' names.
        schema: the PostgreSQL schema (MySQL/MariaDB database) that holds the tables, or
            `None` for the connection's own.

    Returns:
        The statements, in order, without a trailing semicolon.

    Raises:
        ValueError: a dialect batchkit has no tables for, or a prefix that is not one.
    """
    sa_dialect = _dialect(dialect)
    tables = _tables(table_prefix, schema)
    found: list[str] = []
    for table in (tables.meta, tables.batches, tables.tags, tables.items):
        found.append(_compiled(CreateTable(table), sa_dialect))
        for index in sorted(table.indexes, key=lambda ix: str(ix.name)):
            found.append(_compiled(CreateIndex(index), sa_dialect))
    found.append(_stamp(tables, sa_dialect, insert=True))
    return found


def upgrade_statements(
    dialect: str | SADialect,
    table_prefix: str = "batchkit_",
    *,
    from_version: int,
    schema: str | None = None,
) -> list[str]:
    """The SQL that takes batchkit's tables from ``from_version`` to `SCHEMA_VERSION`.

    Every change between the two versions, then the update of the version row. Written
    without looking at the database: the statements assume the tables have exactly the
    layout of ``from_version`` (`pending_statements` and `upgrade_schema` look, and leave
    out what is already there).

    Args:
        dialect: ``"sqlite"``, ``"postgresql"``, ``"mysql"`` or ``"mariadb"``, or a
            SQLAlchemy dialect.
        table_prefix: the prefix of the tables' names.
        from_version: the version the tables have (``python -m batchkit schema version``
            prints it).
        schema: the PostgreSQL schema (MySQL/MariaDB database) that holds the tables, or
            `None` for the connection's own.

    Returns:
        The statements, in order, without a trailing semicolon; none when
        ``from_version`` is `SCHEMA_VERSION`.

    Raises:
        SchemaVersionMismatch: ``from_version`` is newer than this batchkit's.
        ValueError: ``from_version`` is not a version, or the dialect or the prefix is
            not one batchkit has tables for.
    """
    sa_dialect = _dialect(dialect)
    tables = _tables(table_prefix, schema)
    _check_known(from_version, table_prefix)
    return _upgrade(tables, sa_dialect, from_version, stored=True, columns=None)


def _check_known(version: int, table_prefix: str) -> None:
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise ValueError(f"not a schema version: {version!r} (versions count from 1)")
    if version > SCHEMA_VERSION:
        raise SchemaVersionMismatch(
            f"the tables with prefix {table_prefix!r} have schema version {version}, newer "
            f"than this batchkit's ({SCHEMA_VERSION}): install the batchkit that wrote "
            "them, or a later one; no batchkit takes tables back to an older version"
        )


def _upgrade(
    tables: Tables,
    dialect: SADialect,
    from_version: int,
    *,
    stored: bool,
    columns: Callable[[str], set[str]] | None,
) -> list[str]:
    """The statements from ``from_version`` on: all of them, or (given the ``columns`` of
    each table) those whose change the tables do not have yet; the version row is
    updated, or inserted when none was ``stored``."""
    if from_version == SCHEMA_VERSION and stored:
        return []
    found: list[str] = []
    for version in range(from_version + 1, SCHEMA_VERSION + 1):
        for step in _STEPS[version]:
            if columns is None or not step.applied(columns):
                found.append(step.sql(tables, dialect))
    found.append(_stamp(tables, dialect, insert=not stored))
    return found


# -- statements, from what the database has ---------------------------------------------


@dataclass(frozen=True)
class _Found:
    stored: int | None
    statements: list[str]


def _read_version(connection: Connection, tables: Tables, table_prefix: str) -> int | None:
    """The version recorded in the tables, `None` when none is; raises when the tables
    are missing or their version is unknown here."""
    checker = inspect(connection)
    every = (tables.meta, tables.batches, tables.tags, tables.items)
    missing = [t.fullname for t in every if not checker.has_table(t.name, schema=t.schema)]
    if len(missing) == len(every):
        raise SchemaVersionMismatch(
            f"no batchkit tables with the prefix {table_prefix!r} here (no table "
            f"{tables.meta.fullname!r}); an upgrade creates none: is the prefix the app's own?"
        )
    if missing:
        raise SchemaVersionMismatch(
            f"batchkit's tables with the prefix {table_prefix!r} are incomplete (missing: "
            f"{', '.join(missing)}); an upgrade creates no table"
        )
    meta = tables.meta
    value = connection.execute(select(meta.c.value).where(meta.c.name == _VERSION_ROW)).scalar()
    if value is None:
        return None
    text = str(value)
    if not (text.isascii() and text.isdigit()) or int(text) < 1:
        raise SchemaVersionMismatch(
            f"the tables with prefix {table_prefix!r} have schema version {text!r}, which "
            "no batchkit wrote"
        )
    version = int(text)
    _check_known(version, table_prefix)
    return version


def _pending(connection: Connection, tables: Tables, table_prefix: str) -> _Found:
    stored = _read_version(connection, tables, table_prefix)
    if stored == SCHEMA_VERSION:
        return _Found(stored, [])
    checker = inspect(connection)
    seen: dict[str, set[str]] = {}

    def columns(field: str) -> set[str]:
        if field not in seen:
            table: Table = getattr(tables, field)
            seen[field] = {c["name"] for c in checker.get_columns(table.name, schema=table.schema)}
        return seen[field]

    # No version recorded: the tables were made by migrations that wrote no row. Each
    # change is looked for from the first layout on, and the row is written.
    start = 1 if stored is None else stored
    statements = _upgrade(
        tables, connection.dialect, start, stored=stored is not None, columns=columns
    )
    return _Found(stored, statements)


def pending_statements(
    connection: Connection, table_prefix: str = "batchkit_", *, schema: str | None = None
) -> list[str]:
    """The SQL that brings batchkit's tables on ``connection`` to `SCHEMA_VERSION`, from
    the version they have and the changes they already have.

    For a revision of an Alembic history, on its connection (``op.get_bind()``): run
    each with ``op.execute``. Tables already current need none, so the same revision
    also does nothing on a database whose tables a later batchkit created.

    Args:
        connection: a synchronous SQLAlchemy connection (Alembic's, or one from
            ``AsyncConnection.run_sync``).
        table_prefix: the prefix of the tables' names.
        schema: the PostgreSQL schema (MySQL/MariaDB database) that holds the tables, or
            `None` for the connection's own.

    Returns:
        The statements still to run, in order; none when the tables are current.

    Raises:
        SchemaVersionMismatch: the tables are missing, or have a version newer than this
            batchkit's, or one no batchkit wrote.
    """
    return _pending(connection, _tables(table_prefix, schema), table_prefix).statements


# -- on a database -----------------------------------------------------------------------


class _Opened(SQLStorage):
    """A storage's engine, dialect and connection settings, opened without reading the
    tables' version (an upgrade reads it, under the schema lock)."""

    async def _setup_schema(self) -> None:
        return None


@asynccontextmanager
async def _connection(
    url_or_engine: str | AsyncEngine, table_prefix: str, schema: str | None
) -> AsyncIterator[tuple[_Opened, AsyncConnection]]:
    """A storage's connection to the database (its URL's options, its dialect, its
    tables: in the schema of ``schema`` or of the URL's ``?schema=``); a driver's error
    raised as a `StorageError` without the URL's secrets."""
    opened = _Opened(url_or_engine, table_prefix=table_prefix, schema=schema, create_schema=False)
    try:  # closed also when it fails to open: the engine may hold a connection by then
        await opened.open()
        async with opened.engine.connect() as conn:
            yield opened, conn
    except (DBAPIError, OSError) as exc:
        shown = exc.orig if isinstance(exc, DBAPIError) and exc.orig is not None else exc
        said = redact(f"{type(shown).__name__}: {shown}", opened._connector.secrets)
        raise StorageError(f"{opened!r}: {said}") from exc
    finally:
        await opened.aclose()


async def schema_version(
    url_or_engine: str | AsyncEngine,
    *,
    table_prefix: str = "batchkit_",
    schema: str | None = None,
) -> int | None:
    """The schema version recorded in batchkit's tables (`SCHEMA_VERSION` is this
    batchkit's).

    Args:
        url_or_engine: a database URL (as `SQLStorage` takes it), or an `AsyncEngine`
            the host owns (left open).
        table_prefix: the prefix of the tables' names.
        schema: the PostgreSQL schema (MySQL/MariaDB database) that holds the tables;
            `None`: the URL's ``?schema=``, or else the connection's own.

    Returns:
        The version, or `None` when the tables exist without one.

    Raises:
        SchemaVersionMismatch: the tables are missing, or their version is newer than
            this batchkit's, or one no batchkit wrote.
        StorageError: the database cannot be reached or refused a statement.
    """
    async with _connection(url_or_engine, table_prefix, schema) as (opened, conn):
        return await conn.run_sync(_read_version, opened.tables, table_prefix)


async def upgrade_schema(
    url_or_engine: str | AsyncEngine,
    *,
    table_prefix: str = "batchkit_",
    schema: str | None = None,
    dry_run: bool = False,
) -> SchemaUpgrade:
    """Bring batchkit's tables to this batchkit's layout (`SCHEMA_VERSION`), data and all.

    Under the lock a storage holds while it creates the tables, so that two upgrades (or
    an upgrade and a storage creating the tables) never race. On PostgreSQL and SQLite
    the whole upgrade is one transaction: it happens entirely or not at all. MySQL and
    MariaDB commit each ``ALTER TABLE`` on its own: an upgrade stopped half-way leaves
    the old version recorded, and, run again, makes only the changes still missing.
    Creates no table: the tables must exist, with any version up to this one.

    Args:
        url_or_engine: a database URL (as `SQLStorage` takes it), or an `AsyncEngine`
            the host owns (left open).
        table_prefix: the prefix of the tables' names.
        schema: the PostgreSQL schema (MySQL/MariaDB database) that holds the tables;
            `None`: the URL's ``?schema=``, or else the connection's own.
        dry_run: find the statements, and run none.

    Returns:
        What was found and run (`SchemaUpgrade.needed` is `False` when the tables were
        current already).

    Raises:
        SchemaVersionMismatch: the tables are missing, or have a version newer than this
            batchkit's, or one no batchkit wrote; nothing was changed.
        StorageError: the database cannot be reached or refused a statement.
    """
    async with _connection(url_or_engine, table_prefix, schema) as (opened, conn):
        if dry_run:  # only reads; the connection's transaction is rolled back
            found = await conn.run_sync(_pending, opened.tables, table_prefix)
            return _result(table_prefix, found, applied=False)
        async with conn.begin(), opened._dialect.schema_lock(conn):
            found = await conn.run_sync(_pending, opened.tables, table_prefix)
            for statement in found.statements:
                await conn.exec_driver_sql(statement)
    if found.statements:
        logger.info(
            "batchkit's tables %r upgraded from schema version %s to %s",
            table_prefix,
            found.stored,
            SCHEMA_VERSION,
        )
    return _result(table_prefix, found, applied=bool(found.statements))


def _result(table_prefix: str, found: _Found, *, applied: bool) -> SchemaUpgrade:
    return SchemaUpgrade(
        table_prefix=table_prefix,
        from_version=found.stored,
        to_version=SCHEMA_VERSION,
        statements=tuple(found.statements),
        applied=applied,
    )
