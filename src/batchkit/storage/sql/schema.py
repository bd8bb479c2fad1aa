"""The SQL schema of batchkit, as a public `MetaData` the host can put in its migrations."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

from sqlalchemy import (
    Boolean,
    Column,
    Double,
    Index,
    Integer,
    MetaData,
    PrimaryKeyConstraint,
    SmallInteger,
    String,
    Table,
    Text,
    UniqueConstraint,
    select,
)
from sqlalchemy.exc import IntegrityError
from sqlalchemy.types import TypeDecorator

from ...exceptions import SchemaVersionMismatch
from .. import _base

if TYPE_CHECKING:
    from sqlalchemy.engine import Dialect
    from sqlalchemy.ext.asyncio import AsyncConnection
    from sqlalchemy.types import TypeEngine

__all__ = [
    "SCHEMA_NAME",
    "SCHEMA_VERSION",
    "ExactString",
    "LongText",
    "Tables",
    "build_tables",
    "metadata_for",
    "stamp_or_check",
    "validate_prefix",
    "validate_schema",
]

#: The layout version written in the ``<prefix>meta`` table; a store written by a
#: different layout is refused with `SchemaVersionMismatch` instead of being misread.
SCHEMA_VERSION = 2


def _mysql_type(name: str, *args: Any) -> TypeEngine[Any]:
    """A type of SQLAlchemy's MySQL dialect, which is imported only where it is used."""
    from sqlalchemy.dialects import mysql

    made: TypeEngine[Any] = getattr(mysql, name)(*args)
    return made


class LongText(TypeDecorator[str]):
    """Text of any length: ``LONGTEXT`` on MySQL and MariaDB, whose ``TEXT`` holds only
    64 KiB (payloads and results may be larger: `Limits` are configurable), plain ``TEXT``
    elsewhere."""

    impl = Text
    cache_ok = True

    def load_dialect_impl(self, dialect: Dialect) -> TypeEngine[Any]:
        if dialect.name in ("mysql", "mariadb"):
            return dialect.type_descriptor(_mysql_type("LONGTEXT"))
        return super().load_dialect_impl(dialect)


_LongText = LongText()


class ExactString(TypeDecorator[str]):
    """Text compared byte for byte in every dialect.

    MySQL and MariaDB compare ``VARCHAR`` by collation: case-insensitively, and ignoring
    trailing spaces, so the keys ``"a"`` and ``"A "`` would collide. There the column is
    ``VARBINARY`` holding UTF-8; elsewhere a plain ``VARCHAR`` already compares exactly.
    """

    impl = String
    cache_ok = True

    def __init__(self, length: int) -> None:
        super().__init__(length)
        self.length = length

    def load_dialect_impl(self, dialect: Dialect) -> TypeEngine[Any]:
        if dialect.name in ("mysql", "mariadb"):
            return dialect.type_descriptor(_mysql_type("VARBINARY", self.length * 4))
        return dialect.type_descriptor(String(self.length))

    def process_bind_param(self, value: str | None, dialect: Dialect) -> Any:
        if value is not None and dialect.name in ("mysql", "mariadb"):
            return value.encode("utf-8")
        return value

    def process_result_value(self, value: Any, dialect: Dialect) -> str | None:
        if isinstance(value, bytes | bytearray):
            return bytes(value).decode("utf-8")
        return value  # type: ignore[no-any-return]


def validate_prefix(prefix: str) -> str:
    """Return ``prefix`` if it is a safe SQL identifier prefix, else raise ValueError."""
    return _base.validate_prefix(prefix, _base.TABLE_PREFIX)


#: A schema's name (a database's on MySQL/MariaDB): an identifier that needs no quoting
#: rules of its own, short enough for PostgreSQL (63 bytes) and MySQL (64 characters).
SCHEMA_NAME: Final = _base.PrefixRule(
    re.compile(r"\A[A-Za-z_][A-Za-z0-9_]{0,62}\Z"),
    "schema must be 1 to 63 letters, digits or underscores, not starting with a digit; got ",
)


def validate_schema(schema: str) -> str:
    """Return ``schema`` if it is a safe schema (MySQL: database) name, else raise ValueError."""
    return _base.validate_prefix(schema, SCHEMA_NAME)


@dataclass(frozen=True)
class Tables:
    """The tables of one prefix."""

    meta: Table
    batches: Table
    tags: Table
    items: Table


def build_tables(
    metadata: MetaData, prefix: str = "batchkit_", schema: str | None = None
) -> Tables:
    """Add batchkit's tables, named ``<prefix>...``, to ``metadata`` and return them.

    With ``schema``, the tables are in that schema (on MySQL/MariaDB: that database);
    without, in ``metadata``'s schema (by default the connection's own).
    """
    p = validate_prefix(prefix)
    if schema is not None:
        validate_schema(schema)
    meta = Table(
        f"{p}meta",
        metadata,
        Column("name", String(64), primary_key=True),
        Column("value", String(255), nullable=False),
        schema=schema,
    )
    batches = Table(
        f"{p}batches",
        metadata,
        Column("id", String(36), primary_key=True),
        Column("parent_id", String(36), nullable=True),
        Column("idempotency_key", ExactString(255), nullable=True),
        Column("metadata", Text, nullable=False),
        Column("total", Integer, nullable=False),
        Column("n_queued", Integer, nullable=False),
        Column("n_running", Integer, nullable=False),
        Column("n_succeeded", Integer, nullable=False),
        Column("n_failed", Integer, nullable=False),
        Column("n_cancelled", Integer, nullable=False),
        Column("created_at", Double, nullable=False),
        Column("updated_at", Double, nullable=False),
        Column("started_at", Double, nullable=True),
        Column("finished_at", Double, nullable=True),
        Column("cancel_requested_at", Double, nullable=True),
        Column("cancel_reason", Text, nullable=True),
        Column("max_failures", Integer, nullable=True),
        Column("hook_done", Boolean, nullable=False),
        Column("hook_token", String(32), nullable=True),
        Column("hook_deadline", Double, nullable=True),
        UniqueConstraint("idempotency_key", name=f"{p}uq_batches_idempotency"),
        Index(f"{p}ix_batches_parent", "parent_id"),
        Index(f"{p}ix_batches_hook", "hook_done", "finished_at"),
        schema=schema,
    )
    # One row per top-level scalar of a batch's metadata, so that listing "the batches of
    # this owner" is an index range scan in every dialect.
    tags = Table(
        f"{p}tags",
        metadata,
        Column("name", ExactString(191), nullable=False),
        Column("value", ExactString(191), nullable=False),
        Column("batch_id", String(36), nullable=False),
        PrimaryKeyConstraint("name", "value", "batch_id"),
        Index(f"{p}ix_tags_batch", "batch_id"),
        schema=schema,
    )
    items = Table(
        f"{p}items",
        metadata,
        Column("batch_id", String(36), nullable=False),
        Column("position", Integer, nullable=False),
        Column("key", ExactString(512), nullable=False),
        Column("payload", _LongText, nullable=False),
        Column("state", String(10), nullable=False),
        # 1 while queued or running, 0 once terminal: claims scan active items only.
        Column("active", SmallInteger, nullable=False),
        # When the item may be claimed: its retry time while queued, its lease deadline
        # while running; NULL once terminal.
        Column("claimable_at", Double, nullable=True),
        Column("cancel_requested", Boolean, nullable=False),
        Column("progress", Double, nullable=False),
        Column("message", Text, nullable=True),
        Column("attempt", Integer, nullable=False),
        Column("error", Text, nullable=True),
        Column("result", _LongText, nullable=True),
        # The core's record of earlier attempts (batchkit.history), stored unread.
        Column("history", _LongText, nullable=True),
        Column("token", String(32), nullable=True),
        Column("created_at", Double, nullable=False),
        Column("updated_at", Double, nullable=False),
        Column("started_at", Double, nullable=True),
        Column("finished_at", Double, nullable=True),
        PrimaryKeyConstraint("batch_id", "position"),
        UniqueConstraint("batch_id", "key", name=f"{p}uq_items_key"),
        Index(f"{p}ix_items_state", "batch_id", "state", "position"),
        Index(f"{p}ix_items_claim", "batch_id", "active", "position"),
        Index(f"{p}ix_items_claim_any", "active", "batch_id", "position"),
        schema=schema,
    )
    return Tables(meta=meta, batches=batches, tags=tags, items=items)


def metadata_for(prefix: str = "batchkit_", schema: str | None = None) -> tuple[MetaData, Tables]:
    """A new `MetaData` holding batchkit's tables, for ``alembic`` autogenerate.

    Args:
        prefix: the storage's ``table_prefix``.
        schema: the storage's ``schema`` (`None`: the connection's own).

    Example (in ``env.py``)::

        from batchkit.storage.sql.schema import metadata_for

        batchkit_metadata, _ = metadata_for("batchkit_", schema="batchkit")
        target_metadata = [app_metadata, batchkit_metadata]
    """
    metadata = MetaData()
    return metadata, build_tables(metadata, prefix, schema)


_UPGRADE = " (upgrade them with: python -m batchkit schema upgrade --storage URL)"


async def stamp_or_check(
    conn: AsyncConnection, tables: Tables, table_prefix: str, *, create: bool
) -> None:
    """Write the layout version into new tables (``create``), or check the tables' own.

    Raises:
        SchemaVersionMismatch: the tables are missing and may not be created, or were
            written by another layout (an older one's message says how to upgrade).
    """
    meta = tables.meta
    if not create:
        exists = await conn.run_sync(
            lambda sync: sync.dialect.has_table(sync, meta.name, schema=meta.schema)
        )
        if not exists:
            raise SchemaVersionMismatch(
                f"table {meta.fullname!r} is missing and create_schema=False: create "
                "batchkit's tables with your migrations (batchkit.storage.sql.schema)"
            )
    row = (await conn.execute(select(meta.c.value).where(meta.c.name == "schema_version"))).first()
    if row is None and create:
        try:
            async with conn.begin_nested():
                await conn.execute(
                    meta.insert().values(name="schema_version", value=str(SCHEMA_VERSION))
                )
        except IntegrityError:
            pass  # another process wrote it first
        return
    version = None if row is None else row[0]
    if version != str(SCHEMA_VERSION):
        older = str(version).isdigit() and int(str(version)) < SCHEMA_VERSION
        raise SchemaVersionMismatch(
            f"the tables with prefix {table_prefix!r} have schema version {version!r}; this "
            f"batchkit reads version {SCHEMA_VERSION}" + _UPGRADE * older
        )
