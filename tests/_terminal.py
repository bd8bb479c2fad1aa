"""Run a program in a real pseudo-terminal, as a person at a terminal would see it."""

from __future__ import annotations

import os
import pty
import select
import subprocess
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pathlib import Path

__all__ = ["run_in_terminal"]


def run_in_terminal(
    command: list[str], *, cwd: Path, env: dict[str, str], timeout: float = 120
) -> tuple[int, str]:
    """Run ``command`` with a terminal as its stdin, stdout and stderr, until it exits.

    Returns its exit status and everything it wrote, escape sequences included.
    """
    leader, follower = pty.openpty()
    try:
        process = subprocess.Popen(
            command, cwd=cwd, env=env, stdin=follower, stdout=follower, stderr=follower
        )
    finally:
        os.close(follower)
    output = b""
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([leader], [], [], 0.2)
            if ready:
                try:
                    chunk = os.read(leader, 65536)
                except OSError:  # the other end closed: the program has exited
                    break
                if not chunk:
                    break
                output += chunk
            elif process.poll() is not None:
                break
        return process.wait(timeout=30), output.decode(errors="replace")
    finally:
        if process.poll() is None:
            process.kill()
        os.close(leader)
