"""A Redis Cluster of the tests' own: three masters and three replicas on free loopback ports.

The machine's ``redis-server`` and ``redis-cli`` run it, each node in a directory of its
own, without persistence; ``redis-cli --cluster create`` joins them. A test may SIGKILL a
master (its replica takes over) and start it again (it comes back as a replica). Missing
binaries skip the tests that need it, and fail them when ``CI=true``.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import time
from contextlib import ExitStack
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

__all__ = ["LocalCluster", "drop_cluster_keys", "local_cluster", "new_prefix"]

#: Milliseconds after which a node that does not answer is taken for dead: a failover
#: takes about two of them.
NODE_TIMEOUT_MS = 1000


def _free_ports(count: int) -> list[int]:
    """Ports free on the loopback, each with its cluster bus port (+10000) free too."""
    ports: list[int] = []
    with ExitStack() as held:
        while len(ports) < count:
            sock = held.enter_context(socket.socket())
            sock.bind(("127.0.0.1", 0))
            port = int(sock.getsockname()[1])
            if port + 10_000 > 65_535:
                continue
            bus = held.enter_context(socket.socket())
            try:
                bus.bind(("127.0.0.1", port + 10_000))
            except OSError:
                continue
            ports.append(port)
    return ports


def _fields(text: str) -> dict[str, str]:
    return dict(
        line.strip().split(":", 1) for line in text.splitlines() if ":" in line and line[0] != "#"
    )


class LocalCluster:
    """Six ``redis-server`` nodes in cluster mode, joined into three masters, three replicas."""

    def __init__(self, server: str, cli: str, workdir: Path) -> None:
        self.server = server
        self.cli = cli
        self.workdir = workdir
        self.ports = _free_ports(6)
        self.processes: dict[int, subprocess.Popen[bytes]] = {}
        self._lone: int | None = None

    def ask(self, port: int, *command: str) -> str:
        """One command to one node, through redis-cli; its answer ("" if it failed)."""
        try:
            done = subprocess.run(
                [self.cli, "-h", "127.0.0.1", "-p", str(port), *command],
                capture_output=True,
                timeout=1.0,
                check=False,
            )
        except subprocess.TimeoutExpired:
            return ""
        return done.stdout.decode(errors="replace") if done.returncode == 0 else ""

    # -- addresses -----------------------------------------------------------------------

    @property
    def url(self) -> str:
        """The cluster URL, naming the first node that runs (any node will do)."""
        return f"redis+cluster://127.0.0.1:{self.live()[0]}/0"

    def node_url(self, port: int) -> str:
        """A plain ``redis://`` URL of one node."""
        return f"redis://127.0.0.1:{port}/0"

    def live(self) -> list[int]:
        """The cluster's nodes running now."""
        return [p for p in self.ports if p in self.processes]

    def masters(self) -> list[int]:
        """The nodes running now that are masters."""
        return [
            p
            for p in self.live()
            if _fields(self.ask(p, "INFO", "replication")).get("role") == "master"
        ]

    def master_of(self, key: str) -> int:
        """The port of the master serving ``key``'s slot now."""
        port = self.live()[0]
        slot = int(self.ask(port, "CLUSTER", "KEYSLOT", key).strip())
        for master in self.masters():
            nodes = self.ask(master, "CLUSTER", "NODES")
            for line in nodes.splitlines():
                fields = line.split()
                if "myself" not in fields[2]:
                    continue
                for span in fields[8:]:
                    if span.startswith("["):
                        continue  # a slot being moved
                    low, _, high = span.partition("-")
                    if int(low) <= slot <= int(high or low):
                        return master
        raise AssertionError(f"no master serves slot {slot}")

    # -- running ---------------------------------------------------------------------------

    def start(self) -> None:
        for port in self.ports:
            self._start_node(port)
        created = subprocess.run(
            [
                self.cli,
                "--cluster",
                "create",
                *(f"127.0.0.1:{port}" for port in self.ports),
                "--cluster-replicas",
                "1",
                "--cluster-yes",
            ],
            capture_output=True,
            timeout=60,
            check=False,
        )
        if created.returncode != 0:
            raise AssertionError(f"redis-cli --cluster create failed:\n{created.stdout!r}")
        self.wait_ok()

    def _start_node(self, port: int) -> None:
        directory = self.workdir / str(port)
        directory.mkdir(exist_ok=True)
        self.processes[port] = subprocess.Popen(
            [
                self.server,
                *("--port", str(port), "--bind", "127.0.0.1"),
                *("--cluster-enabled", "yes", "--cluster-config-file", f"nodes-{port}.conf"),
                *("--cluster-node-timeout", str(NODE_TIMEOUT_MS)),
                *("--save", "", "--appendonly", "no"),
                # A replica's first sync starts at once, not after the default 5 s.
                *("--repl-diskless-sync-delay", "0"),
                *("--dir", str(directory), "--logfile", str(directory / "redis.log")),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 30
        while self.ask(port, "PING").strip() != "PONG":
            if self.processes[port].poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"redis-server on port {port} did not start")
            time.sleep(0.02)

    def wait_ok(self, timeout: float = 30.0) -> None:
        """Wait until every running node says the cluster is ok, every slot served, every
        replica in step with its master."""
        deadline = time.monotonic() + timeout
        while True:
            infos = [_fields(self.ask(p, "CLUSTER", "INFO")) for p in self.live()]
            links = [_fields(self.ask(p, "INFO", "replication")) for p in self.live()]
            if all(
                info.get("cluster_state") == "ok"
                and info.get("cluster_slots_ok") == "16384"
                and int(info.get("cluster_known_nodes", 0)) >= len(self.ports)
                for info in infos
            ) and all(
                link.get("role") == "master" or link.get("master_link_status") == "up"
                for link in links
            ):
                return
            if time.monotonic() > deadline:
                raise AssertionError(f"the cluster did not settle: {infos}")
            time.sleep(0.05)

    def lone_node(self) -> int:
        """The port of a node in cluster mode that joined no cluster (it serves no slot),
        started on the first call."""
        if self._lone is None:
            self._lone = _free_ports(1)[0]
            self._start_node(self._lone)
        return self._lone

    def kill(self, port: int) -> None:
        """SIGKILL one node."""
        process = self.processes.pop(port)
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)

    def restart(self, port: int) -> None:
        """Start a killed node again: it rejoins the cluster (as a replica, if it was a
        master that a replica replaced)."""
        self._start_node(port)
        self.wait_ok()

    def close(self) -> None:
        for port in list(self.processes):
            self.kill(port)


def local_cluster(workdir: Path) -> Iterator[LocalCluster]:
    """Run a `LocalCluster` for the life of a fixture (skipped without the binaries)."""
    server, cli = shutil.which("redis-server"), shutil.which("redis-cli")
    if server is None or cli is None:
        reason = (
            "redis-server and redis-cli are needed: the cluster tests run a cluster of their own"
        )
        if os.environ.get("CI") == "true":
            pytest.fail(f"{reason}; CI=true requires them")
        pytest.skip(reason)
    cluster = LocalCluster(server, cli, workdir)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.close()


def drop_cluster_keys(cluster: LocalCluster, prefix: str) -> None:
    """Delete every key under ``prefix`` on every master."""
    from redis import Redis

    for port in cluster.live():
        with Redis(host="127.0.0.1", port=port) as client:
            if client.info("replication")["role"] != "master":
                continue
            for key in client.scan_iter(match=f"{prefix}:*", count=1_000):
                client.unlink(key)


def new_prefix(tag: str) -> str:
    """A key prefix of a test's own, starting with ``tag``."""
    return f"{tag}{secrets.token_hex(4)}"
