"""An example web app served by a real process, started, stopped and restarted by a test."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import IO, TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Sequence

__all__ = ["ROOT", "ServerProcess", "free_port"]

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    """A TCP port of the loopback interface that nothing listens on now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class ServerProcess:
    """``command`` (it serves on ``port``), run in ``workdir`` with ``env`` added.

    Each start writes its output to ``<workdir>/server-<n>.log``; `start` returns once
    the app answers ``ready`` (``/openapi.json``: a FastAPI app's).
    """

    def __init__(
        self,
        command: Sequence[str],
        port: int,
        workdir: Path,
        env: dict[str, str],
        *,
        ready: str = "/openapi.json",
    ) -> None:
        self.command = list(command)
        self.ready = ready
        self.port = port
        self.workdir = workdir
        self.env = {**os.environ, "PYTHONPATH": str(ROOT), **env}
        self.process: subprocess.Popen[bytes] | None = None
        self.starts = 0
        self._logs: list[IO[bytes]] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        self.starts += 1
        log = (self.workdir / f"server-{self.starts}.log").open("wb")
        self._logs.append(log)
        self.process = subprocess.Popen(
            self.command, cwd=self.workdir, env=self.env, stdout=log, stderr=log
        )
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(f"{self.url}{self.ready}", timeout=2):
                    pass
                if self.process.poll() is None:
                    return  # it answers, and it is ours: a process that could not bind ended
                raise AssertionError(f"the server ended at its start\n{self.logs()}")
            except OSError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError(f"the server did not start\n{self.logs()}") from None
                time.sleep(0.05)

    def stop(self, how: signal.Signals = signal.SIGTERM) -> int:
        """Send ``how`` and wait for the process to end; its exit status."""
        assert self.process is not None
        self.process.send_signal(how)
        code = self.process.wait(timeout=30)
        self.process = None
        return code

    def logs(self) -> str:
        return "\n".join(
            path.read_text(errors="replace") for path in sorted(self.workdir.glob("server-*.log"))
        )

    def close(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.wait()
        for log in self._logs:
            log.close()
