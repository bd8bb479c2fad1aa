"""``python -m batchkit worker``: its options, its errors, stopping on signals, its output."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from typing import TYPE_CHECKING
from urllib.parse import urlsplit, urlunsplit

import anyio
import pytest

from batchkit import BatchRunner, ItemState
from batchkit.cli import EXIT_FAILED, EXIT_OK, EXIT_USAGE, build_parser
from batchkit.testing.contract import all_items
from tests._terminal import run_in_terminal
from tests.storage.conftest import redis_password_user

from .conftest import GENERATORS, ROOT, Store, Workers

if TYPE_CHECKING:
    from pathlib import Path

    from batchkit import Batch

pytestmark = pytest.mark.anyio

#: A password given to a worker in its storage URL, which it must never print.
PASSWORD = "S3cretPW"


def _cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    full = {**os.environ, "PYTHONPATH": str(ROOT)}
    full.pop("BATCHKIT_STORAGE", None)
    full.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "batchkit", *args],
        cwd=ROOT,
        env=full,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


async def _nothing(ctx: object) -> None:
    return None


async def _submit(store: Store, keys: list[str], **options: object) -> Batch:
    async with store.storage() as storage:
        return await BatchRunner(storage, _nothing).submit(keys, **options)  # type: ignore[arg-type]


async def _states(store: Store, batch: Batch) -> list[tuple[ItemState, int]]:
    async with store.storage() as storage:
        return [(i.state, i.attempt) for i in await all_items(storage, batch.id)]


# -- options and errors --------------------------------------------------------------------


def test_help_documents_every_option() -> None:
    done = _cli("worker", "--help")
    assert done.returncode == 0
    parser = build_parser()
    worker = parser._subparsers._group_actions[0].choices["worker"]  # type: ignore[union-attr]
    options = [o for action in worker._actions for o in action.option_strings]
    assert len(options) > 15
    text = " ".join(done.stdout.split())
    for option in options:
        assert option in text, option
    for action in worker._actions:
        assert action.help, f"{action.option_strings} has no help"
    for phrase in ["SIGTERM", "grace period", "exit status", "BATCHKIT_STORAGE"]:
        assert phrase in text
    assert _cli("--version").stdout.startswith("batchkit ")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--concurrency", "0"], "must be at least 1"),
        (["--lease-seconds", "soon"], "not a number of seconds"),
        (["--lease-seconds", "0"], "more than 0"),
        (["--lease", "0"], "more than 0"),
        (["--grace", "-1"], "not a number of seconds"),
        (["--batch", "nope"], "not a batch id"),
        (["--where", "owner"], "KEY=VALUE"),
        (["--where", "tags=[1]"], "single JSON scalar"),
        (["--where", "tags=" + "[" * 50_000 + "]" * 50_000], "single JSON scalar"),
        (["--log-level", "loud"], "invalid choice"),
        (["--metrics-port", "nope"], "expected [HOST:]PORT"),
        (["--metrics-port", "70000"], "expected [HOST:]PORT"),
        (["--metrics-port", ":9100"], "expected [HOST:]PORT"),
        (["--metrics-port", "-1"], "expected [HOST:]PORT"),
    ],
)
def test_bad_options_exit_2_with_a_clear_message(args: list[str], message: str) -> None:
    done = _cli("worker", "--storage", "sqlite+aiosqlite:///x.db", "--generator", "m:g", *args)
    assert done.returncode == EXIT_USAGE
    assert message in done.stderr


@pytest.mark.parametrize(
    ("given", "where"),
    [
        ("9100", ("127.0.0.1", 9100)),
        ("0.0.0.0:9100", ("0.0.0.0", 9100)),
        ("[::1]:9100", ("::1", 9100)),
        ("0", ("127.0.0.1", 0)),
    ],
)
def test_the_metrics_port_listens_on_loopback_unless_told(
    given: str, where: tuple[str, int]
) -> None:
    parser = build_parser()
    assert parser.parse_args(["worker", "--generator", "m:g"]).metrics_port is None
    args = parser.parse_args(["worker", "--generator", "m:g", "--metrics-port", given])
    assert args.metrics_port == where


@pytest.mark.parametrize("option", ["--lease-seconds", "--lease"])
def test_the_lease_is_lease_seconds_and_lease_for_short(option: str) -> None:
    parser = build_parser()
    assert parser.parse_args(["worker", "--generator", "m:g"]).lease_seconds == 30.0
    args = parser.parse_args(["worker", "--generator", "m:g", option, "2.5"])
    assert args.lease_seconds == 2.5


def test_a_storage_is_required_and_memory_is_refused() -> None:
    missing = _cli("worker", "--generator", f"{GENERATORS}:generate")
    assert missing.returncode == EXIT_USAGE
    assert "BATCHKIT_STORAGE" in missing.stderr
    memory = _cli("worker", "--storage", "memory://", "--generator", f"{GENERATORS}:generate")
    assert memory.returncode == EXIT_USAGE
    assert "one process" in memory.stderr
    assert _cli("worker", "--storage", "x").returncode == EXIT_USAGE  # no --generator


def test_a_generator_that_cannot_be_loaded_exits_1(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'x.db'}"
    missing = _cli("worker", "--storage", url, "--generator", "no_such_module_here:run")
    assert missing.returncode == EXIT_FAILED
    assert "cannot import 'no_such_module_here'" in missing.stderr
    attr = _cli("worker", "--storage", url, "--generator", f"{GENERATORS}:nothing_here")
    assert attr.returncode == EXIT_FAILED
    assert "has no attribute 'nothing_here'" in attr.stderr
    value = _cli("worker", "--storage", url, "--generator", f"{GENERATORS}:not_callable")
    assert value.returncode == EXIT_FAILED
    assert "is not callable" in value.stderr


@pytest.mark.parametrize(
    ("url", "secret"),
    [
        pytest.param(
            "postgresql+asyncpg://app:s3cret-pw@127.0.0.1:9/app", "s3cret-pw", id="postgres"
        ),
        pytest.param(
            f"postgresql+asyncpg://app@127.0.0.1:9/app?password={PASSWORD}",
            PASSWORD,
            id="postgres-query",
        ),
        pytest.param(f"redis://:{PASSWORD}@127.0.0.1:9/0", PASSWORD, id="redis"),
        pytest.param(f"redis://127.0.0.1:9/0?password={PASSWORD}", PASSWORD, id="redis-query"),
        # redis-py reads the password's head as a port, and says so when it cannot parse it.
        pytest.param("redis://:S3cret/PW@127.0.0.1:9/0", "S3cret", id="redis-raw-slash"),
    ],
)
def test_an_unreachable_storage_exits_1_without_its_password(url: str, secret: str) -> None:
    done = _cli("worker", "--storage", url, "--generator", f"{GENERATORS}:generate")
    assert done.returncode == EXIT_FAILED
    assert "cannot open" in done.stderr
    assert "Traceback" not in done.stderr
    assert secret not in done.stderr + done.stdout


def test_a_refused_password_exits_1_without_it(mysql_store: Store) -> None:
    url = _with_secret(mysql_store.url, query=False, replace=True)
    done = _cli("worker", "--storage", url, "--generator", f"{GENERATORS}:generate")
    assert done.returncode == EXIT_FAILED
    assert "Access denied" in done.stderr
    assert PASSWORD not in done.stderr + done.stdout


def test_a_url_where_no_option_takes_it_is_not_echoed() -> None:
    url = f"postgresql+asyncpg://app:{PASSWORD}@db/app"
    done = _cli("worker", url, "--generator", f"{GENERATORS}:generate")
    assert done.returncode == EXIT_USAGE
    assert "unrecognized arguments" in done.stderr
    assert PASSWORD not in done.stderr + done.stdout
    helped = _cli("worker", "--help", env={"BATCHKIT_STORAGE": url})
    assert helped.returncode == EXIT_OK
    assert PASSWORD not in helped.stderr + helped.stdout


def _with_secret(url: str, *, query: bool, replace: bool = False) -> str:
    """``url`` of a store under test with `PASSWORD` in it (in the query string, or as the
    user's password); one that has its own password keeps it, unless ``replace``.

    SQLite ignores it; PostgreSQL with trust authentication and Redis without
    ``requirepass`` accept any.
    """
    parts = urlsplit(url)
    if parts.password and not replace:
        return url
    if url.startswith("sqlite"):
        # As a SQLite URI, whose parameters SQLite does not know it ignores.
        return f"sqlite+aiosqlite:///file:{url.partition(':///')[2]}?uri=true&password={PASSWORD}"
    user = parts.username or ""
    if url.startswith("redis"):
        user = redis_password_user(url, PASSWORD)
    if query:
        joined = f"{parts.query}&" if parts.query else ""
        joined += f"username={user}&" if url.startswith("redis") else ""
        return urlunsplit(parts._replace(query=f"{joined}password={PASSWORD}"))
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"{user}:{PASSWORD}@{host}"))


@pytest.mark.parametrize(
    ("name", "query"),
    [
        pytest.param("sqlite", True, id="sqlite-query"),
        pytest.param("postgres", False, id="postgres"),
        pytest.param("postgres", True, id="postgres-query"),
        pytest.param("redis", False, id="redis"),
        pytest.param("redis", True, id="redis-query"),
    ],
)
def test_a_worker_never_prints_its_storages_password(
    request: pytest.FixtureRequest, name: str, query: bool
) -> None:
    store: Store = request.getfixturevalue(f"{name}_store")
    url = _with_secret(store.url, query=query)
    secret = urlsplit(url).password or PASSWORD
    batch = anyio.run(_submit, store, ["a", "b"])
    for log_format in ("text", "json"):
        done = _cli(
            "worker",
            "--storage",
            url,
            "--prefix",
            store.prefix,
            "--generator",
            f"{GENERATORS}:generate",
            "--exit-when-idle",
            "--log-level",
            "DEBUG",
            "--log-format",
            log_format,
        )
        assert done.returncode == EXIT_OK, done.stderr
        assert "started" in done.stderr  # the line that names the storage
        assert secret not in done.stderr + done.stdout
        if log_format == "json":  # hidden inside each text: the lines stay JSON
            assert all(json.loads(line) for line in done.stderr.splitlines())
    assert anyio.run(_states, store, batch) == [(ItemState.SUCCEEDED, 1)] * 2


def test_the_storage_comes_from_the_environment_too(sqlite_store: Store) -> None:
    batch = anyio.run(_submit, sqlite_store, ["a", "b"])
    done = _cli(
        "worker",
        "--prefix",
        sqlite_store.prefix,
        "--generator",
        f"{GENERATORS}:generate",
        "--exit-when-idle",
        env={"BATCHKIT_STORAGE": sqlite_store.url},
    )
    assert done.returncode == EXIT_OK, done.stderr
    assert anyio.run(_states, sqlite_store, batch) == [(ItemState.SUCCEEDED, 1)] * 2


# -- running and stopping ------------------------------------------------------------------


async def test_sigterm_on_a_busy_worker_leaves_no_item_running(
    store: Store, workers: Workers
) -> None:
    batch = await _submit(store, [f"item-{n}" for n in range(6)])
    process = await workers.start("--concurrency", "3", "--grace", "0.5", sleep=60)
    with anyio.fail_after(30):
        while len(workers.runs()) < 3:  # noqa: ASYNC110 - a file, no event
            await anyio.sleep(0.05)
    process.send_signal(signal.SIGTERM)
    assert await workers.wait(process, 30) == EXIT_OK, workers.logs()
    states = await _states(store, batch)
    assert states == [(ItemState.QUEUED, 1)] * 3 + [(ItemState.QUEUED, 0)] * 3
    log = workers.logs()
    assert "SIGTERM received" in log
    assert "handing 3 running item(s) back to queued" in log


async def test_a_sigterm_right_after_the_started_line_stops_the_worker_cleanly(
    sqlite_store: Store, tmp_path: Path
) -> None:
    # A supervisor may stop a worker as soon as it says it started: its signal handlers
    # are in place by then.
    workers = Workers(sqlite_store, tmp_path)
    try:
        process = await workers.start()
        with anyio.fail_after(30):
            while " started" not in workers.logs():  # noqa: ASYNC110 - a file, no event
                await anyio.sleep(0.002)
        process.send_signal(signal.SIGTERM)
        assert await workers.wait(process, 30) == EXIT_OK, workers.logs()
    finally:
        await workers.aclose()
    assert "SIGTERM received" in workers.logs()


async def test_sigterm_lets_running_items_finish_within_the_grace_period(
    sqlite_store: Store, tmp_path: Path
) -> None:
    workers = Workers(sqlite_store, tmp_path)
    try:
        batch = await _submit(sqlite_store, [f"item-{n}" for n in range(6)])
        process = await workers.start("--concurrency", "2", "--grace", "30", sleep=1.0)
        with anyio.fail_after(30):
            while len(workers.runs()) < 2:  # noqa: ASYNC110 - a file, no event
                await anyio.sleep(0.05)
        process.send_signal(signal.SIGTERM)
        assert await workers.wait(process, 30) == EXIT_OK, workers.logs()
    finally:
        await workers.aclose()
    states = [state for state, _ in await _states(sqlite_store, batch)]
    assert states.count(ItemState.RUNNING) == 0
    assert states.count(ItemState.SUCCEEDED) == 2
    assert states.count(ItemState.QUEUED) == 4


async def test_a_second_sigint_hands_items_back_at_once(
    sqlite_store: Store, tmp_path: Path
) -> None:
    workers = Workers(sqlite_store, tmp_path)
    try:
        batch = await _submit(sqlite_store, ["a", "b"])
        process = await workers.start("--concurrency", "2", "--grace", "300", sleep=60)
        with anyio.fail_after(30):
            while len(workers.runs()) < 2:  # noqa: ASYNC110 - a file, no event
                await anyio.sleep(0.05)
        process.send_signal(signal.SIGINT)
        await anyio.sleep(0.3)
        process.send_signal(signal.SIGINT)
        assert await workers.wait(process, 20) == EXIT_OK, workers.logs()
    finally:
        await workers.aclose()
    assert await _states(sqlite_store, batch) == [(ItemState.QUEUED, 1)] * 2
    assert "SIGINT received again" in workers.logs()


async def test_retries_filters_and_json_logs(sqlite_store: Store, tmp_path: Path) -> None:
    workers = Workers(sqlite_store, tmp_path)
    try:
        mine = await _submit(sqlite_store, ["a", "b"], metadata={"owner": "ada", "n": 1})
        theirs = await _submit(sqlite_store, ["c"], metadata={"owner": "bob", "n": 1})
        process = await workers.start(
            "--where",
            "owner=ada",
            "--where",
            "n=1",
            "--max-attempts",
            "2",
            "--backoff",
            "0",
            "--exit-when-idle",
            "--log-format",
            "json",
            generator="flaky",
        )
        assert await workers.wait(process, 60) == EXIT_OK, workers.logs()
    finally:
        await workers.aclose()
    assert await _states(sqlite_store, mine) == [(ItemState.SUCCEEDED, 2)] * 2
    assert await _states(sqlite_store, theirs) == [(ItemState.QUEUED, 0)]
    lines = [json.loads(line) for line in workers.log_of(0).read_text().splitlines()]
    events = [(e.get("key"), e.get("event")) for e in lines if "key" in e]
    assert events.count(("a", "retrying")) == 1
    assert events.count(("a", "succeeded")) == 1
    retrying = next(e for e in lines if e.get("event") == "retrying")
    assert retrying["level"] == "WARNING"
    assert retrying["error_type"] == "ConnectionError"
    assert retrying["worker"] == "worker-0"
    assert {"time", "logger", "message", "batch_id", "attempt"} <= set(retrying)


def test_the_live_summary_in_a_terminal(sqlite_store: Store, tmp_path: Path) -> None:
    batch = anyio.run(_submit, sqlite_store, [f"item-{n}" for n in range(8)])
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "BATCHKIT_TEST_SLEEP": "0.15",
        "COLUMNS": "160",
    }
    code, text = run_in_terminal(
        [
            sys.executable,
            "-m",
            "batchkit",
            "worker",
            *sqlite_store.cli(),
            "--generator",
            f"{GENERATORS}:generate",
            "--concurrency",
            "2",
            "--exit-when-idle",
            "--name",
            "tty-worker",
        ],
        cwd=ROOT,
        env=env,
        timeout=60,
    )
    assert code == EXIT_OK, text[-2000:]
    summaries = re.findall(r"\x1b\[7m((?:idle|working|stopping): [^\x1b]*)\x1b\[0m", text)
    assert summaries, text[-2000:]
    assert any("running 2/2" in s for s in summaries)
    assert all(s.endswith("tty-worker") for s in summaries)
    assert any("succeeded 8" in s for s in summaries) or "8 succeeded" in text
    assert "\r\x1b[2K" in text  # cleared before each log line, drawn again after
    assert text.count("succeeded  attempt=1") == 8
    assert anyio.run(_states, sqlite_store, batch) == [(ItemState.SUCCEEDED, 1)] * 8
