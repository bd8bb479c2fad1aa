"""``python -m batchkit dashboard``: the dashboard served alone, on the app's storage."""

from __future__ import annotations

import argparse
import ipaddress
import logging
import sys
import traceback
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

import anyio

from ._argtypes import EXIT_FAILED, EXIT_OK, EXIT_USAGE, positive_int, storage_options
from ._operate import _missing_sqlite_file
from ._secrets import redact, url_secrets
from .exceptions import BatchkitError, SchemaVersionMismatch

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

__all__ = ["add_dashboard_command", "run_dashboard_command"]

_DESCRIPTION = """\
Serve the dashboard on the app's storage: every batch, its items and their errors, live,
with cancel, retry-failed and delete (unless --read-only).

It listens on 127.0.0.1 unless told otherwise, and has no sign-in of its own: to serve it
beyond this machine, add --read-only, or mount batchkit.dashboard in your app with an
authorize hook (see the operations guide)."""


def add_dashboard_command(commands: Any) -> None:
    """Add ``dashboard`` to ``python -m batchkit``'s subparsers."""
    parser = commands.add_parser(
        "dashboard",
        help="serve the dashboard (pip install 'batchkit[dashboard]')",
        description=_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    group = parser.add_argument_group("storage and server")
    storage_options(group, "the app's storage")
    group.add_argument(
        "--host", default="127.0.0.1", help="the address to listen on (default: 127.0.0.1)"
    )
    group.add_argument(
        "--port",
        type=_port,
        default=8321,
        help="the port to listen on (default: 8321)",
    )
    group.add_argument(
        "--read-only", action="store_true", help="show, never act (no cancel, retry or delete)"
    )
    group.add_argument("--title", default="batchkit", help="the name in the pages' header")


def _port(text: str) -> int:
    value = positive_int(text)
    if value > 65_535:
        raise argparse.ArgumentTypeError(f"not a port: {value}")
    return value


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


async def _reachable(url: str, prefix: str | None, options: dict[str, Any]) -> str | None:
    """Open the storage once, before serving: what is wrong with it, in one line, or
    `None`. (The server opens it again, on its own event loop.)"""
    from .storage import open_storage

    try:
        async with open_storage(url, prefix=prefix, **options):
            return None
    except SchemaVersionMismatch as exc:
        if "is missing" in str(exc):
            shown = "the default one" if prefix is None else repr(prefix)
            return f"no batchkit tables here with the prefix {shown}: give --prefix the app's own"
        return str(exc)
    except BatchkitError as exc:
        return str(exc)
    except Exception as exc:  # a driver's own error (a refused connection, a bad option)
        return f"{type(exc).__name__}: {exc}"


def _log_config(secrets: frozenset[str]) -> dict[str, Any]:
    """The server's log: warnings and errors only, each line without the storage's secrets."""
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "filters": {"redact": {"()": _Redact, "secrets": secrets}},
        "formatters": {"plain": {"format": "%(levelname)s: %(message)s"}},
        "handlers": {
            "stderr": {
                "class": "logging.StreamHandler",
                "stream": "ext://sys.stderr",
                "formatter": "plain",
                "filters": ["redact"],
            }
        },
        "loggers": {
            "uvicorn": {"handlers": ["stderr"], "level": "WARNING", "propagate": False},
            "uvicorn.error": {"level": "WARNING"},
        },
    }


class _Redact(logging.Filter):
    """Takes the storage's secrets out of a record, its traceback included."""

    def __init__(self, secrets: frozenset[str]) -> None:
        super().__init__()
        self.secrets = secrets

    def filter(self, record: logging.LogRecord) -> bool:
        text = record.getMessage()
        if record.exc_info:
            text += "\n" + "".join(traceback.format_exception(*record.exc_info))
            record.exc_info = None
            record.exc_text = None
        record.msg, record.args = redact(text, self.secrets), ()
        return True


def run_dashboard_command(args: argparse.Namespace, prog: str) -> int:
    """Serve the dashboard until SIGTERM or SIGINT; return the exit status."""

    def fail(message: str, code: int = EXIT_FAILED) -> int:
        print(
            f"{prog} dashboard: {redact(message, url_secrets(args.storage or ''))}", file=sys.stderr
        )
        return code

    if not args.storage:
        return fail("error: give --storage URL or set BATCHKIT_STORAGE", EXIT_USAGE)
    if args.storage.startswith("memory:"):
        return fail(
            "error: memory:// lives in one process; give the storage the app uses", EXIT_USAGE
        )
    if not args.read_only and not _loopback(args.host):
        return fail(
            f"error: --host {args.host} serves cancel, retry and delete to anyone who reaches "
            "it: add --read-only, or mount batchkit.dashboard in your app with an authorize "
            "hook",
            EXIT_USAGE,
        )
    try:
        import uvicorn
        from starlette.applications import Starlette
        from starlette.routing import Mount

        from .dashboard import dashboard
    except ImportError as exc:
        return fail(f"needs the dashboard extra: pip install 'batchkit[dashboard]' ({exc})")
    from .storage import open_storage

    sql = not args.storage.lower().startswith(("redis", "unix"))
    missing = _missing_sqlite_file(args.storage)
    if missing is not None:
        return fail(f"no SQLite database at {missing}")
    # The dashboard shows what an app made: it never creates its tables (a mistyped
    # --prefix would make new, empty ones).
    options: dict[str, Any] = {"create_schema": False} if sql else {}
    try:
        problem = anyio.run(_reachable, args.storage, args.prefix, options)
        storage = open_storage(args.storage, prefix=args.prefix, **options)
    except (BatchkitError, ValueError) as exc:
        return fail(str(exc))
    if problem is not None:
        return fail(problem)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async with storage:
            yield

    inner = dashboard(storage, authorize=None, read_only=args.read_only, title=args.title)
    app = Starlette(routes=[Mount("", app=inner)], lifespan=lifespan)
    shown = f"[{args.host}]" if ":" in args.host else args.host
    print(
        f"{prog} dashboard: http://{shown}:{args.port}/"
        + (" (read-only)" if args.read_only else ""),
        file=sys.stderr,
        flush=True,
    )
    secrets = url_secrets(args.storage)
    config = uvicorn.Config(
        app,
        host=args.host,
        port=args.port,
        lifespan="on",
        access_log=False,
        log_config=_log_config(secrets),
    )
    server = uvicorn.Server(config)
    try:
        server.run()
    except KeyboardInterrupt:
        return EXIT_OK
    except SystemExit as exc:  # uvicorn's own exit: a port taken, a failed start
        return EXIT_FAILED if exc.code not in (0, None) else EXIT_OK
    return EXIT_OK if server.started else EXIT_FAILED
