"""The ``schema`` commands: a SQL storage's schema version, and the upgrade of its tables.

``python -m batchkit schema version`` and ``schema upgrade [--sql]``, beside the operator's
commands (``_operate``), whose output and exit codes they share.
"""

from __future__ import annotations

import dataclasses
import sys
from typing import TYPE_CHECKING

import anyio

from ._argtypes import EXIT_FAILED, EXIT_OK, EXIT_USAGE
from ._operate import _missing_sqlite_file, _Output
from ._secrets import redact, url_secrets
from .exceptions import BatchkitError

if TYPE_CHECKING:
    import argparse
    from collections.abc import Callable

__all__ = ["run_schema_command"]


def run_schema_command(args: argparse.Namespace, prog: str) -> int:
    """Run ``schema version`` or ``schema upgrade``; return its exit status."""
    url: str | None = args.storage
    name = f"{prog} schema {args.schema_command}"
    if not url or not url.lower().startswith(("sqlite", "postgresql", "mysql", "mariadb")):
        wrong = "give --storage URL or set BATCHKIT_STORAGE" if not url else "not a SQL storage"
        print(f"{name}: error: {wrong} (only SQL storages have tables)", file=sys.stderr)
        return EXIT_USAGE
    secrets = url_secrets(url)

    def say(message: str) -> None:
        print(f"{name}: {redact(message, secrets)}", file=sys.stderr)

    missing = _missing_sqlite_file(url)
    if missing is not None:
        say(f"no SQLite database at {missing}")
        return EXIT_FAILED
    try:
        return anyio.run(_schema, args, _Output(args.json), say, prog)
    except KeyboardInterrupt:
        return 130


async def _schema(
    args: argparse.Namespace, out: _Output, say: Callable[[str], None], prog: str
) -> int:
    prefix = "batchkit_" if args.prefix is None else args.prefix
    try:
        from .storage.sql import SCHEMA_VERSION, schema_version, upgrade_schema

        if args.schema_command == "version":
            stored = await schema_version(args.storage, table_prefix=prefix)
        else:
            done = await upgrade_schema(args.storage, table_prefix=prefix, dry_run=args.sql)
    except (BatchkitError, ValueError) as exc:
        say(str(exc))
        return EXIT_FAILED
    except Exception as exc:  # a driver's own error (an option in the URL it refuses)
        say(f"{type(exc).__name__}: {exc}")
        return EXIT_FAILED
    tables = f"the tables with prefix {prefix!r}"
    if args.schema_command == "version" and out.json:
        versions = {"stored_version": stored, "current_version": SCHEMA_VERSION}
        out.obj({"table_prefix": prefix, **versions, "upgrade_needed": stored != SCHEMA_VERSION})
    elif args.schema_command == "version":
        had = "no schema version" if stored is None else f"schema version {stored}"
        out.line(f"{tables}: {had}; this batchkit's: {SCHEMA_VERSION}")
        if stored != SCHEMA_VERSION:
            out.line(f"upgrade them with {prog} schema upgrade (--sql prints its SQL)")
    elif out.json:
        out.obj({**dataclasses.asdict(done), "needed": done.needed})
    elif not done.needed:  # with --sql, a comment: what it prints stays SQL
        out.line(f"{'-- ' * args.sql}{tables} are current: schema version {done.to_version}")
    else:
        was = "none recorded" if done.from_version is None else done.from_version
        said = f"{tables} from schema version {was} to {done.to_version}"
        out.line(f"-- {said}" if args.sql else f"upgraded {said}")
        for statement in done.statements if args.sql else ():
            out.line(f"{statement};")
    return EXIT_OK
