"""A PgBouncer of the tests' own, in front of the PostgreSQL under test.

It runs the machine's ``pgbouncer`` (Debian's package) on a free loopback port, in the pool
mode and with the pool size a test asks for, and stops with the test. Without the
binary the test skips, and fails with CI=true (CI installs it: see ``.ci/run``).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pytest

__all__ = ["PgBouncer", "pgbouncer_binary"]


def pgbouncer_binary() -> str:
    """The ``pgbouncer`` binary; skips (fails with CI=true) when it is not installed."""
    found = shutil.which("pgbouncer") or next(
        (p for p in ("/usr/sbin/pgbouncer", "/usr/bin/pgbouncer") if os.path.exists(p)), None
    )
    if found is None:
        reason = "pgbouncer is not installed (Debian: apt-get install pgbouncer)"
        if os.environ.get("CI") == "true":
            pytest.fail(f"{reason}; CI=true requires it")
        pytest.skip(reason)
    return found


class PgBouncer:
    """One PgBouncer in ``mode`` with ``pool_size`` server connections to ``server_url``.

    Its files are in a directory of its own under the system's temporary directory, which
    the ``postgres`` user it runs as (when the tests run as root) can reach.
    """

    def __init__(self, binary: str, server_url: str, mode: str, pool_size: int) -> None:
        self.binary = binary
        self.server = urlsplit(server_url)
        self.mode = mode
        self.pool_size = pool_size
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = int(sock.getsockname()[1])
        self.workdir = Path(tempfile.mkdtemp(prefix="batchkit-pgbouncer-"))
        self.process: subprocess.Popen[bytes] | None = None

    def url(self, scheme: str | None = None) -> str:
        """The server's URL with the pooler's port instead of the server's."""
        netloc = f"{self.server.username or 'postgres'}@127.0.0.1:{self.port}"
        return urlunsplit((scheme or self.server.scheme, netloc, self.server.path, "", ""))

    @property
    def log(self) -> Path:
        return self.workdir / "pgbouncer.log"

    def start(self) -> None:
        database = self.server.path.lstrip("/")
        user = self.server.username or "postgres"
        (self.workdir / "users.txt").write_text(f'"{user}" ""\n')
        config = self.workdir / "pgbouncer.ini"
        config.write_text(
            "[databases]\n"
            f"{database} = host={self.server.hostname} port={self.server.port} "
            f"dbname={database}\n"
            "[pgbouncer]\n"
            "listen_addr = 127.0.0.1\n"
            f"listen_port = {self.port}\n"
            "unix_socket_dir =\n"
            "auth_type = trust\n"
            f"auth_file = {self.workdir / 'users.txt'}\n"
            f"pool_mode = {self.mode}\n"
            f"default_pool_size = {self.pool_size}\n"
            "max_client_conn = 500\n"
            f"logfile = {self.log}\n"
        )
        command = [self.binary, str(config)]
        if os.geteuid() == 0:
            # PgBouncer refuses to run as root: as the database's own user instead.
            self.workdir.chmod(0o777)
            for path in self.workdir.iterdir():
                path.chmod(0o666)
            command[1:1] = ["-u", "postgres"]
        self.process = subprocess.Popen(
            command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        deadline = time.monotonic() + 20
        while True:
            if self.process.poll() is not None:
                said = self.log.read_text(errors="replace") if self.log.exists() else ""
                raise RuntimeError(f"pgbouncer exited at start:\n{said}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), 0.5):
                    return
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError("pgbouncer did not start listening in 20 s") from None
                time.sleep(0.05)

    def kill(self) -> None:
        """SIGKILL the pooler: every client connection through it drops at once."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        shutil.rmtree(self.workdir, ignore_errors=True)
