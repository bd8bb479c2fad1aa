"""``python manage.py batchkit_worker``: ``python -m batchkit worker`` on the project's
database, with the project's settings."""

from __future__ import annotations

import argparse
from typing import Any, ClassVar

from django.core.management.base import BaseCommand, CommandError

from ..... import cli
from ..._settings import storage_url, table_prefix

__all__ = ["Command"]

#: The worker's options the settings give.
_FROM_SETTINGS = frozenset({"help", "storage", "prefix"})


def _worker_options() -> list[argparse.Action]:
    """The options of ``python -m batchkit worker``, but those the settings give."""
    parser = cli.build_parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    worker = commands.choices["worker"]
    return [a for a in worker._actions if a.option_strings and a.dest not in _FROM_SETTINGS]


def _command_line(options: dict[str, Any]) -> list[str]:
    """The worker's options given to this command, as ``python -m batchkit worker``
    reads them (it checks their values)."""
    argv: list[str] = []
    for action in _worker_options():
        if action.dest not in options:
            continue
        value = options[action.dest]
        option = action.option_strings[0]
        if isinstance(action, argparse._StoreConstAction):  # flags, --live/--no-live
            if value == action.const:
                argv.append(option)
        elif isinstance(action, argparse._AppendAction):
            for one in value:
                argv += [option, str(one)]
        else:
            argv += [option, str(value)]
    return argv


class Command(BaseCommand):  # type: ignore[misc]  # Django is untyped here
    """Run a batchkit worker on the database and table prefix of the project's settings.

    It takes the options of ``python -m batchkit worker`` (``--generator`` and the
    others) but ``--storage`` and ``--prefix``, which come from the settings
    (`storage_url`, ``BATCHKIT["TABLE_PREFIX"]``). SIGTERM and SIGINT stop it as they
    stop that command: running items finish within ``--grace``.
    """

    help = (
        "Run a batchkit worker on this project's database: it runs queued items with "
        "--generator MODULE:FUNCTION until SIGTERM or SIGINT (or, with --exit-when-idle, "
        "until nothing is left). The options are those of python -m batchkit worker; the "
        "storage and its prefix come from the settings."
    )
    # The generator and the storage check what they need; Django's checks would only
    # delay a worker's start.
    requires_system_checks: ClassVar[list[str]] = []

    def add_arguments(self, parser: Any) -> None:
        for action in _worker_options():
            # Read as text, without a default: the worker's own parser checks the values
            # and supplies the defaults, so the two never disagree.
            kwargs: dict[str, Any] = {"dest": action.dest, "default": argparse.SUPPRESS}
            kwargs["help"] = action.help
            if isinstance(action, argparse._StoreConstAction):
                kwargs.update(action="store_const", const=action.const)
            else:
                kwargs.update(metavar=action.metavar, choices=None)
                if isinstance(action, argparse._AppendAction):
                    kwargs["action"] = "append"
            parser.add_argument(*action.option_strings, **kwargs)
        for name in ("storage", "prefix"):
            parser.add_argument(f"--{name}", dest=f"refused_{name}", help=argparse.SUPPRESS)

    def handle(self, *args: Any, **options: Any) -> None:
        refused = [f"--{n}" for n in ("storage", "prefix") if options.get(f"refused_{n}")]
        if refused:
            raise CommandError(
                f"{', '.join(refused)}: the storage comes from the settings (DATABASES or "
                "BATCHKIT['STORAGE'], and BATCHKIT['TABLE_PREFIX'])"
            )
        argv = ["worker", "--storage", storage_url(), "--prefix", table_prefix()]
        argv += _command_line(options)
        try:
            status = cli.main(argv, prog="python manage.py batchkit_worker")
        except SystemExit as exc:  # a bad value, said by the worker's parser on stderr
            status = exc.code if isinstance(exc.code, int) else cli.EXIT_USAGE
        if status != cli.EXIT_OK:
            raise CommandError(f"the worker stopped with exit status {status}", returncode=status)
