"""The command line: ``python -m batchkit worker --storage URL --generator module:attr``."""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import os
import signal
import sys
import traceback
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import anyio
import anyio.abc

from . import __version__
from ._argtypes import (
    EXIT_FAILED,
    EXIT_OK,
    EXIT_USAGE,
    Parser,
    address,
    batch_id,
    positive_int,
    seconds,
    storage_options,
    target,
    where,
)
from ._console import JSONFormatter, LiveSummary, TextFormatter
from ._dashboard_command import add_dashboard_command, run_dashboard_command
from ._operate import COMMANDS, add_commands, run_command
from ._schema_command import run_schema_command
from ._secrets import redact, url_secrets
from .exceptions import BatchkitError
from .retry import RetryPolicy
from .worker import Worker

if TYPE_CHECKING:
    from collections.abc import Iterator, Sequence

    from .metrics import PrometheusMetrics

__all__ = ["EXIT_FAILED", "EXIT_OK", "EXIT_USAGE", "build_parser", "console", "main"]

logger = logging.getLogger("batchkit.worker")


_DESCRIPTION = """\
Run a worker: it claims queued items of any batch (or of the batches you choose) from a
shared storage and runs your generator on each, until it receives SIGTERM or SIGINT.
Run as many as you like, on as many machines as share the storage.

On SIGTERM or SIGINT (Ctrl-C) it stops claiming, lets running items finish within the
grace period, then hands the rest back to `queued` for another worker. A second signal
hands them back at once."""

_EPILOG = """\
examples:
  python -m batchkit worker --storage postgresql+asyncpg://app@db/app \\
      --generator myapp.videos:render --concurrency 8
  BATCHKIT_STORAGE=redis://cache:6379/0 python -m batchkit worker \\
      --generator myapp.videos:render --max-attempts 3 --where queue=video

exit status: 0 stopped cleanly, 1 could not start (storage, generator), 2 bad options."""


class _Redacting(logging.Formatter):
    """Another formatter's lines with the storage's secrets hidden, whoever logged them."""

    def __init__(self, inner: logging.Formatter, known: frozenset[str], *, as_json: bool) -> None:
        super().__init__()
        self._inner = inner
        self._known = known
        self._as_json = as_json

    def format(self, record: logging.LogRecord) -> str:
        line = self._inner.format(record)
        if not self._as_json:
            return redact(line, self._known)
        # Each text of the object is redacted on its own, so that the line stays JSON.
        entry = json.loads(line)
        for key, value in entry.items():
            if isinstance(value, str):
                entry[key] = redact(value, self._known)
        return json.dumps(entry, ensure_ascii=False)


def build_parser(prog: str = "python -m batchkit") -> argparse.ArgumentParser:
    """The ``python -m batchkit`` argument parser."""
    parser = Parser(prog=prog, description="batchkit's command line.")
    parser.add_argument("--version", action="version", version=f"batchkit {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    worker = commands.add_parser(
        "worker",
        help="run a worker that executes queued items from a shared storage",
        description=_DESCRIPTION,
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    scope = worker.add_argument_group("what to run")
    storage_options(scope, "the shared storage")
    scope.add_argument(
        "--generator",
        metavar="MODULE:ATTR",
        type=target,
        required=True,
        help="the generator to run on each item, e.g. myapp.videos:render (the current "
        "directory is importable)",
    )
    scope.add_argument(
        "--batch",
        metavar="ID",
        dest="batch_ids",
        type=batch_id,
        action="append",
        help="only items of this batch (repeat for several); default: any batch",
    )
    scope.add_argument(
        "--where",
        metavar="KEY=VALUE",
        type=where,
        action="append",
        help="only batches whose metadata has KEY equal to VALUE (VALUE is read as JSON "
        "when it parses, as text otherwise: --where owner=ada --where priority=1); repeat "
        "to require several",
    )
    how = worker.add_argument_group("how to run it")
    how.add_argument(
        "--concurrency",
        metavar="N",
        type=positive_int,
        default=1,
        help="items run at once by this worker (default: 1)",
    )
    how.add_argument(
        "--lease-seconds",
        "--lease",
        dest="lease_seconds",
        metavar="SECONDS",
        type=seconds(),
        default=30.0,
        help="how long a claim holds without a heartbeat; heartbeats renew it every third "
        "of this, and an item whose worker died runs again after it (default: 30; "
        "--lease for short)",
    )
    how.add_argument(
        "--item-timeout",
        metavar="SECONDS",
        type=seconds(),
        default=None,
        help="fail an attempt that runs longer than this (default: no limit)",
    )
    how.add_argument(
        "--group-commit",
        metavar="SECONDS",
        type=seconds(zero=True),
        default=0.005,
        help="when items are quick, write several successes and claim the next items in "
        "one step; a success waits at most this long to be written (default: 0.005; 0 "
        "writes each alone)",
    )
    how.add_argument(
        "--max-attempts",
        metavar="N",
        type=positive_int,
        default=1,
        help="attempts per item, retries included: a failed attempt with attempts left "
        "goes back to queued after a backoff (default: 1, no retries)",
    )
    how.add_argument(
        "--backoff",
        metavar="SECONDS",
        type=seconds(zero=True),
        default=1.0,
        help="wait before the first retry, doubled after each further failure (default: 1)",
    )
    how.add_argument(
        "--max-backoff",
        metavar="SECONDS",
        type=seconds(zero=True),
        default=300.0,
        help="the longest wait between two attempts (default: 300)",
    )
    how.add_argument(
        "--on-batch-finished",
        metavar="MODULE:ATTR",
        type=target,
        default=None,
        help="a function called once per batch when it finishes, with its BatchStatus "
        "(sync or async), whichever worker finished it",
    )
    life = worker.add_argument_group("starting and stopping")
    life.add_argument(
        "--grace",
        metavar="SECONDS",
        type=seconds(zero=True),
        default=30.0,
        help="on SIGTERM/SIGINT, how long running items may take to finish before they "
        "are handed back to queued (default: 30)",
    )
    life.add_argument(
        "--poll-interval",
        metavar="SECONDS",
        type=seconds(),
        default=1.0,
        help="the longest an idle worker waits before it looks for work by itself; new "
        "batches and items handed back wake it at once (default: 1)",
    )
    life.add_argument(
        "--exit-when-idle",
        action="store_true",
        help="exit once nothing is left to claim (with --batch: once those batches are finished)",
    )
    life.add_argument("--name", help="the worker's name in the log (default: host:pid:xxxx)")
    out_metrics = worker.add_argument_group("metrics")
    out_metrics.add_argument(
        "--metrics-port",
        metavar="[HOST:]PORT",
        type=address,
        help="serve Prometheus metrics on http://HOST:PORT/metrics (HOST: 127.0.0.1 unless "
        "given; 0.0.0.0:PORT for every interface; port 0: any free port, logged); needs "
        "pip install 'batchkit[metrics]'",
    )
    out = worker.add_argument_group("output")
    out.add_argument(
        "--log-level",
        default="INFO",
        type=str.upper,
        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
        help="the least severe log lines shown (default: INFO: one line per item transition)",
    )
    out.add_argument(
        "--log-format",
        default="text",
        choices=["text", "json"],
        help="text lines with key=value fields, or one JSON object per line (default: text)",
    )
    live = out.add_mutually_exclusive_group()
    live.add_argument(
        "--live",
        dest="live",
        action="store_true",
        default=None,
        help="keep a live summary line at the bottom (default: when stderr is a terminal)",
    )
    live.add_argument("--no-live", dest="live", action="store_false", help="no live summary")
    add_commands(commands)
    add_dashboard_command(commands)
    return parser


def load(target: str) -> Any:
    """Import ``module:attr`` (``attr`` may be dotted); the current directory is importable."""
    module_name, _, attr = target.partition(":")
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        value: Any = importlib.import_module(module_name)
    except ImportError as exc:
        raise BatchkitError(f"cannot import {module_name!r} (from {target!r}): {exc}") from exc
    for part in attr.split("."):
        try:
            value = getattr(value, part)
        except AttributeError:
            raise BatchkitError(f"{module_name!r} has no attribute {attr!r}") from None
    return value


def main(argv: Sequence[str] | None = None, *, prog: str = "python -m batchkit") -> int:
    """Run the command line; return the exit status."""
    parser = build_parser(prog)
    args = parser.parse_args(argv)
    if args.command in COMMANDS:
        return run_command(args, prog)
    if args.command == "schema":
        return run_schema_command(args, prog)
    if args.command == "dashboard":
        return run_dashboard_command(args, prog)
    if args.command != "worker":
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    if not args.storage:
        parser.exit(
            EXIT_USAGE,
            "python -m batchkit worker: error: give --storage URL or set BATCHKIT_STORAGE\n",
        )
    if args.storage.startswith("memory:"):
        parser.exit(
            EXIT_USAGE,
            "python -m batchkit worker: error: memory:// lives in one process; a worker "
            "needs a storage it shares with the app (SQLite, PostgreSQL, MySQL, Redis)\n",
        )
    try:
        return anyio.run(_run_worker, args)
    except (KeyboardInterrupt, SystemExit):
        # Ctrl-C before the signal handlers were in place, or raised by a generator (its
        # attempt was written as failed and logged): a supervisor restarts the worker.
        return EXIT_FAILED
    except Exception:
        # What Python would print, without the storage's secrets: a driver's error in the
        # traceback may repeat its URL, or a piece of its password.
        print(redact(traceback.format_exc(), url_secrets(args.storage)), end="", file=sys.stderr)
        return EXIT_FAILED


async def _run_worker(args: argparse.Namespace) -> int:
    from .storage import open_storage

    secrets = url_secrets(args.storage)
    try:
        generator = load(args.generator)
        hook = None if args.on_batch_finished is None else load(args.on_batch_finished)
        if not callable(generator):
            raise BatchkitError(f"{args.generator!r} is not callable: {generator!r}")
        if hook is not None and not callable(hook):
            raise BatchkitError(f"{args.on_batch_finished!r} is not callable: {hook!r}")
        storage = open_storage(args.storage, prefix=args.prefix)
    except (BatchkitError, ValueError) as exc:
        print(f"python -m batchkit worker: {redact(str(exc), secrets)}", file=sys.stderr)
        return EXIT_FAILED
    metrics = None
    if args.metrics_port is not None:
        try:
            from .metrics import PrometheusMetrics

            metrics = PrometheusMetrics()
        except ImportError as exc:
            print(f"python -m batchkit worker: --metrics-port: {exc}", file=sys.stderr)
            return EXIT_FAILED
    retry = None
    if args.max_attempts > 1:
        retry = RetryPolicy(
            max_attempts=args.max_attempts, backoff=args.backoff, max_backoff=args.max_backoff
        )
    try:
        async with storage:
            worker = Worker(
                storage,
                generator,
                concurrency=args.concurrency,
                lease_seconds=args.lease_seconds,
                batch_ids=args.batch_ids,
                metadata=dict(args.where) if args.where else None,
                retry=retry,
                item_timeout=args.item_timeout,
                grace_period=args.grace,
                poll_interval=args.poll_interval,
                group_commit=args.group_commit,
                on_batch_finished=hook,
                exit_when_idle=args.exit_when_idle,
                name=args.name,
                metrics=metrics,
            )
            await _serve(worker, args, metrics)
    except BatchkitError as exc:
        print(f"python -m batchkit worker: {redact(str(exc), secrets)}", file=sys.stderr)
        return EXIT_FAILED
    return EXIT_OK


@contextmanager
def _metrics_server(
    metrics: PrometheusMetrics | None, where: tuple[str, int] | None
) -> Iterator[None]:
    """Serve ``metrics`` on ``where`` (a thread of prometheus_client's) while the block runs."""
    if metrics is None or where is None:
        yield
        return
    from prometheus_client import start_http_server

    host, port = where
    try:
        server, thread = start_http_server(port, addr=host, registry=metrics.registry)
    except OSError as exc:
        raise BatchkitError(
            f"cannot serve metrics on {host}:{port}: {exc.strerror or exc}"
        ) from None
    bound = server.server_address[1]
    shown = f"[{host}]" if ":" in host else host
    logger.info(
        "metrics on http://%s:%d/metrics",
        shown,
        bound,
        extra={"event": "metrics_served", "host": host, "port": bound},
    )
    try:
        yield
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


async def _serve(
    worker: Worker, args: argparse.Namespace, metrics: PrometheusMetrics | None
) -> None:
    live = sys.stderr.isatty() if args.live is None else args.live
    handler: logging.Handler
    handler = LiveSummary(worker) if live else logging.StreamHandler(sys.stderr)
    json_lines = args.log_format == "json"
    formatter = JSONFormatter() if json_lines else TextFormatter()
    handler.setFormatter(_Redacting(formatter, url_secrets(args.storage), as_json=json_lines))
    root = logging.getLogger("batchkit")
    root.addHandler(handler)
    root.setLevel(args.log_level)
    root.propagate = False
    refused: BatchkitError | None = None
    try:
        with _metrics_server(metrics, args.metrics_port):
            refused = await _until_stopped(worker, handler)
    finally:
        root.removeHandler(handler)
        root.propagate = True
    if refused is not None:
        raise refused


async def _until_stopped(worker: Worker, handler: logging.Handler) -> BatchkitError | None:
    """Run the worker until it stops by itself or a signal stops it; the error of a store
    that refuses for good, if that stopped it."""
    refused: BatchkitError | None = None
    async with anyio.create_task_group() as tg:
        # Started (its handlers in place) before the worker says it started: a signal
        # sent right after that line stops the worker, it does not kill the process.
        await tg.start(_on_signals, worker)
        if isinstance(handler, LiveSummary):
            tg.start_soon(handler.run)
        try:
            await worker.run()
        except BatchkitError as exc:
            # A store that refuses for good stopped the worker (--exit-when-idle);
            # raised out of the group, it is one line, not an exception group.
            refused = exc
        tg.cancel_scope.cancel()
    return refused


async def _on_signals(
    worker: Worker, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
) -> None:
    with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        task_status.started()
        async for signum in signals:
            name = signal.Signals(signum).name
            if not worker.stopping:
                logger.info(
                    "%s received: stopping (send it again to hand running items back now)",
                    name,
                    extra={"event": "signal", "signal": name, "worker": worker.name},
                )
                worker.stop()
            else:
                logger.warning(
                    "%s received again: handing running items back now",
                    name,
                    extra={"event": "signal", "signal": name, "worker": worker.name},
                )
                worker.stop(grace_period=0)


def console() -> int:
    """The ``batchkit`` command (the console script): `main` under that name."""
    return main(prog="batchkit")
