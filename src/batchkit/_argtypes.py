"""The command line's argument types and exit codes, shared by its commands."""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import TYPE_CHECKING, Any

from ._options import is_filter_value, is_positive_int, is_seconds
from ._secrets import redact
from .ids import is_batch_id

if TYPE_CHECKING:
    from collections.abc import Callable

__all__ = [
    "EXIT_CANCELLED",
    "EXIT_FAILED",
    "EXIT_FAILED_ITEMS",
    "EXIT_NOT_FOUND",
    "EXIT_OK",
    "EXIT_USAGE",
    "Parser",
    "batch_id",
    "positive_int",
    "seconds",
    "storage_options",
    "target",
    "where",
]

#: Exit codes. 0: done (a worker stopped cleanly; a watched batch completed). 1: could
#: not be done (the storage, a generator that cannot be loaded, an action refused). 2: bad
#: options. 3: the watched batch ended cancelled. 4: no such batch. 5: the watched batch
#: ended with failed items.
EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_CANCELLED, EXIT_NOT_FOUND, EXIT_FAILED_ITEMS = range(6)


class Parser(argparse.ArgumentParser):
    def error(self, message: str) -> Any:  # argparse's own, with our exit code
        self.print_usage(sys.stderr)
        # The message may quote an argument: a URL given where no option takes it.
        self.exit(EXIT_USAGE, f"{self.prog}: error: {redact(message)}\n")


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if not is_positive_int(value):
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def seconds(*, zero: bool = False) -> Callable[[str], float]:
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
        if not is_seconds(value, allow_zero=True):
            raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}")
        if value == 0 and not zero:
            raise argparse.ArgumentTypeError("must be more than 0 seconds")
        return value

    return parse


def batch_id(text: str) -> str:
    if not is_batch_id(text):
        raise argparse.ArgumentTypeError(f"not a batch id: {text!r}")
    return text


def where(text: str) -> tuple[str, Any]:
    key, sep, raw = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    try:
        value: Any = json.loads(raw)
    except RecursionError:
        value = []  # nested too deep to read: not a scalar either
    except ValueError:
        value = raw  # plain text
    if not is_filter_value(value):
        raise argparse.ArgumentTypeError(f"{key}: a filter value is a single JSON scalar")
    return key, value


def address(text: str) -> tuple[str, int]:
    """``[HOST:]PORT`` (``[::1]:9100`` for an IPv6 host): where to listen; the host is
    127.0.0.1 when not given."""
    host, sep, port = text.strip().rpartition(":")
    if not sep:
        host = "127.0.0.1"
    host = host.strip("[]")
    try:
        number = int(port)
    except ValueError:
        number = -1
    if not 0 <= number <= 65_535 or (sep and not host):
        raise argparse.ArgumentTypeError(
            f"expected [HOST:]PORT (9100, or 0.0.0.0:9100 for every interface), got {text!r}"
        )
    return host, number


def target(text: str) -> str:
    module, sep, attr = text.partition(":")
    if not sep or not module or not attr:
        raise argparse.ArgumentTypeError(f"expected MODULE:ATTRIBUTE, got {text!r}")
    return text


def storage_options(group: Any, what: str) -> None:
    """Add ``--storage`` and ``--prefix`` to an argument group (``what`` says whose)."""
    group.add_argument(
        "--storage",
        metavar="URL",
        default=os.environ.get("BATCHKIT_STORAGE"),
        help=f"{what}: sqlite+aiosqlite:///path.db, postgresql+asyncpg://..., "
        "mysql+asyncmy://..., redis://... (default: $BATCHKIT_STORAGE)",
    )
    group.add_argument(
        "--prefix",
        metavar="PREFIX",
        default=None,
        help="the storage's table prefix (SQL) or key prefix (Redis), when the app set one "
        "(default: the storage's own: batchkit_ / batchkit)",
    )
