"""Run a function in a forked child of the test process, as a pre-forking server does."""

from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Callable

__all__ = ["in_child"]


def in_child(work: Callable[[], object]) -> int:
    """Run ``work()`` in a child forked from this process; the child's exit status (0: it
    returned; 1: it raised, the error written on its stderr). The child leaves by
    ``os._exit``: nothing of the test process's own runs again in it."""
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        code = 1
        try:
            work()
            code = 0
        except BaseException as exc:
            sys.stderr.write(f"child failed: {exc!r}\n")
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)
