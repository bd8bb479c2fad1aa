"""The operator's commands (``python -m batchkit batches | status | items | errors | watch |
cancel | retry-failed | delete | prune``) on a store that batches were submitted to, and run
on, by the app (in this process).

The commands run in this process too, through `batchkit.cli.main` (`_cli`, `_op`): with the
standard streams, environment and directory a process of their own would have, and the
exit status it would exit with. What is about the process runs in one (`_process`): the
``batchkit`` console script, ``watch`` following a batch while it runs, the storage named
by ``BATCHKIT_STORAGE``, text written to a pipe, what a driver's error leaves printed on
the way out; every exit status and every store is seen that way at least once."""

from __future__ import annotations

import gc
import io
import json
import logging
import os
import subprocess
import sys
from contextlib import redirect_stderr, redirect_stdout
from dataclasses import dataclass, field
from itertools import pairwise
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio
import pytest
from anyio.streams.buffered import BufferedByteReceiveStream

from batchkit import BatchRunner, ItemState, RetryPolicy
from batchkit._argtypes import (
    EXIT_CANCELLED,
    EXIT_FAILED,
    EXIT_FAILED_ITEMS,
    EXIT_NOT_FOUND,
    EXIT_OK,
    EXIT_USAGE,
)
from batchkit._operate import COMMANDS
from batchkit.cli import main
from batchkit.exceptions import BatchNotFound
from batchkit.ids import new_batch_id

from .conftest import ROOT, Store, Workers

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from anyio.abc import ByteReceiveStream

    from batchkit import ItemContext

pytestmark = pytest.mark.anyio

#: A password in a storage URL, which no command may print.
PASSWORD = "S3cretPW"
#: An error message that would clear the screen and turn it red, then overwrite its line.
HOSTILE = "boom\x1b[2J\x1b[31mred\rover"
#: The width of a command whose standard output is a pipe, without COLUMNS: the fallback
#: `batchkit._operate` gives `shutil.get_terminal_size`.
PIPE_COLUMNS = "100"


# -- running the commands ------------------------------------------------------------------


def _env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("BATCHKIT_STORAGE", None)
    env.pop("COLUMNS", None)
    env.update(extra or {})
    return env


def _process(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """``python -m batchkit ARGS`` in a process of its own, as a person runs it; its output
    exactly as printed (no newline translation, which would hide a carriage return)."""
    return _run([sys.executable, "-m", "batchkit", *args], env)


def _run(command: list[str], env: dict[str, str] | None) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        command, cwd=ROOT, env=_env(env), capture_output=True, timeout=60, check=False
    )
    return subprocess.CompletedProcess(
        done.args, done.returncode, done.stdout.decode(), done.stderr.decode()
    )


def _cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """``python -m batchkit ARGS`` run in this process, as `_process` runs it.

    Its environment is `_process`'s (``env`` on top, undone on return), with the width of
    a pipe unless ``env`` gives COLUMNS; what it prints goes to its own standard output
    and error, untranslated, with the warnings it logs (which a process without logging
    handlers prints there); an exit through `SystemExit` (argparse's) is its status.
    Call it from a thread without an event loop: the command runs its own.
    """
    out, err = io.StringIO(), io.StringIO()
    # Python's last-resort handler: what a process prints when nothing else handles a log
    # record (this one's are taken by pytest's handlers on the root logger).
    last_resort = logging.StreamHandler(err)
    last_resort.setLevel(logging.WARNING)
    root = logging.getLogger()
    with pytest.MonkeyPatch.context() as patch, redirect_stdout(out), redirect_stderr(err):
        patch.chdir(ROOT)
        patch.delenv("BATCHKIT_STORAGE", raising=False)
        patch.setenv("COLUMNS", PIPE_COLUMNS)
        for name, value in (env or {}).items():
            patch.setenv(name, value)
        root.addHandler(last_resort)
        # What the command leaves unclosed warns (an error) in the test that ran it: the
        # objects it made are collected when it returns, and only those (the others are
        # frozen meanwhile: a full collection would take longer than most commands).
        gc.freeze()
        try:
            code = main(list(args))
        except SystemExit as exc:
            if exc.code is None or isinstance(exc.code, int):
                code = exc.code or 0
            else:  # what the interpreter does with any other exit value
                print(exc.code, file=sys.stderr)
                code = 1
        finally:
            root.removeHandler(last_resort)
            gc.collect()
            gc.unfreeze()
    return subprocess.CompletedProcess(
        ["python", "-m", "batchkit", *args], code, out.getvalue(), err.getvalue()
    )


def _op(
    store: Store, command: str, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """The command on the store (in this process)."""
    return _cli(command, *store.cli(), *args, env=env)


def _one(done: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    """The one JSON object a command printed (it exited 0)."""
    assert done.returncode == EXIT_OK, done.stderr
    found: dict[str, Any] = json.loads(done.stdout)
    return found


def _many(done: subprocess.CompletedProcess[str]) -> list[dict[str, Any]]:
    """The JSON Lines a command printed (it exited 0).

    Lines end at "\\n" only: a text in them may hold U+2028 or U+0085, which JSON leaves
    as they are and `str.splitlines` would take for line ends."""
    assert done.returncode == EXIT_OK, done.stderr
    return [json.loads(line) for line in done.stdout.split("\n") if line]


@pytest.fixture(params=["sqlite", "postgres", "redis"])
def store(request: pytest.FixtureRequest) -> Store:
    """SQLite, PostgreSQL and Redis: the commands are the library's steps, which the
    contract suite checks on every store; MariaDB gets `test_the_commands_on_mariadb`.
    The tests of what a command makes of its options run on SQLite alone
    (``parametrize("store", ["sqlite"], indirect=True)``)."""
    found: Store = request.getfixturevalue(f"{request.param}_store")
    return found


# -- batches made in-process, as an app makes them ------------------------------------------


async def _generate(ctx: ItemContext) -> dict[str, str]:
    """Fail the keys starting with ``bad`` (``always``: on every attempt, with its number),
    raise `HOSTILE` for ``hostile``, hang on ``hang``; succeed on the others."""
    if ctx.key == "hostile":
        raise RuntimeError(HOSTILE)
    if ctx.key.startswith("bad"):
        raise ValueError(f"{ctx.key} went wrong")
    if ctx.key.startswith("hang"):
        await anyio.sleep_forever()
    if ctx.key.startswith("always"):
        raise ConnectionError(f"{ctx.key}: try {ctx.attempt}")
    return {"key": ctx.key}


async def _slowly(ctx: ItemContext) -> dict[str, str]:
    await anyio.sleep(0.15)
    return await _generate(ctx)


@dataclass
class Make:
    """A batch to make: its keys, its metadata, and whether to run it until it finishes
    (``"all"``) or leave it `queued` (``"none"``)."""

    keys: list[str]
    metadata: dict[str, Any] = field(default_factory=dict)
    run: str = "all"
    #: Attempts per item (retries without a wait).
    attempts: int = 1


async def _partly_run(runner: BatchRunner, batch_id: str) -> None:
    async with anyio.create_task_group() as tg:
        tg.start_soon(runner.run, batch_id)
        with anyio.fail_after(30):
            while True:
                status = await runner.status(batch_id)
                if status.counts[ItemState.SUCCEEDED] and status.counts[ItemState.RUNNING]:
                    break
                await anyio.sleep(0.02)
        tg.cancel_scope.cancel()


async def _make(store: Store, *batches: Make) -> list[str]:
    """Submit (and run) the batches, in order; their ids."""
    ids = []
    async with store.storage() as storage:
        runner = BatchRunner(storage, _generate, concurrency=4, block_warning=None)
        for make in batches:
            batch = await runner.submit(make.keys, metadata=make.metadata or None)
            if make.run == "all" and make.attempts > 1:
                retry = RetryPolicy(max_attempts=make.attempts, backoff=0)
                await BatchRunner(storage, _generate, retry=retry, block_warning=None).run(batch.id)
            elif make.run == "all":
                await runner.run(batch.id)
            ids.append(batch.id)
    return ids


def _made(store: Store, *batches: Make) -> list[str]:
    return anyio.run(_make, store, *batches)


async def _library(store: Store, act: Callable[[BatchRunner], Awaitable[Any]]) -> Any:
    """What the library itself says (``act`` on a runner of the store)."""
    async with store.storage() as storage:
        return await act(BatchRunner(storage, _generate, block_warning=None))


def _ask(store: Store, act: Callable[[BatchRunner], Awaitable[Any]]) -> Any:
    return anyio.run(_library, store, act)


def _dumps(statuses: list[Any]) -> list[dict[str, Any]]:
    return [s.model_dump(mode="json") for s in statuses]


async def _make_running(store: Store, keys: list[str]) -> str:
    async with store.storage() as storage:
        runner = BatchRunner(storage, _generate, block_warning=None)
        batch = await runner.submit(keys)
        await _partly_run(runner, batch.id)
        status = await runner.status(batch.id)
        assert status.state.value == "running", status
        return batch.id


def _running(store: Store, keys: list[str] | None = None) -> str:
    return anyio.run(_make_running, store, keys or ["a", "hang", "b"])


#: Five batches, oldest first: completed (ada), failed (bob), completed_with_errors (ada),
#: completed_with_errors (bob), queued (bob).
FIVE = (
    Make(["a", "b"], {"owner": "ada"}),
    Make(["bad-1"], {"owner": "bob"}),
    Make(["a", "bad-1", "b"], {"owner": "ada"}),
    Make(["bad-2", "c"], {"owner": "bob"}),
    Make(["a", "b"], {"owner": "bob"}, run="none"),
)


# -- batches -------------------------------------------------------------------------------


def test_batches_lists_newest_first_with_states_and_counts(store: Store) -> None:
    ids = _made(store, *FIVE)
    listed = _many(_op(store, "batches", "--json"))
    assert [b["batch_id"] for b in listed] == ids[::-1]
    assert [b["state"] for b in listed] == [
        "queued",
        "completed_with_errors",
        "completed_with_errors",
        "failed",
        "completed",
    ]
    assert [(b["total"], b["counts"]["succeeded"], b["counts"]["failed"]) for b in listed] == [
        (2, 0, 0),
        (2, 1, 1),
        (3, 2, 1),
        (1, 0, 1),
        (2, 2, 0),
    ]
    assert listed == _dumps(_ask(store, lambda r: r.batches(limit=50)))


@pytest.mark.parametrize("store", ["sqlite"], indirect=True)
def test_batches_where_filters_by_metadata(store: Store) -> None:
    ids = _made(store, *FIVE)
    listed = _many(_op(store, "batches", "--json", "--where", "owner=ada"))
    assert [b["batch_id"] for b in listed] == [ids[2], ids[0]]
    assert all(b["metadata"] == {"owner": "ada"} for b in listed)


@pytest.mark.parametrize("store", ["sqlite"], indirect=True)
def test_batches_state_filters_by_state(store: Store) -> None:
    ids = _made(store, *FIVE)
    listed = _many(_op(store, "batches", "--json", "--state", "completed_with_errors"))
    assert [b["batch_id"] for b in listed] == [ids[3], ids[2]]
    both = _many(
        _op(store, "batches", "--json", "--state", "completed_with_errors", "--where", "owner=bob")
    )
    assert [b["batch_id"] for b in both] == [ids[3]]


def test_batches_pages_with_limit_then_before_the_last_id(store: Store) -> None:
    ids = _made(store, *FIVE)
    first = [b["batch_id"] for b in _many(_op(store, "batches", "--json", "--limit", "2"))]
    assert first == [ids[4], ids[3]]
    after = _op(store, "batches", "--json", "--limit", "2", "--before", first[-1])
    second = [b["batch_id"] for b in _many(after)]
    assert second == [ids[2], ids[1]]
    assert not set(first) & set(second)


@pytest.mark.parametrize("store", ["sqlite"], indirect=True)
def test_batches_all_walks_every_page_once(store: Store) -> None:
    ids = _made(store, *FIVE)
    listed = [
        b["batch_id"] for b in _many(_op(store, "batches", "--json", "--all", "--limit", "2"))
    ]
    assert listed == ids[::-1]


def test_batches_all_with_a_state_filter_walks_every_page(sqlite_store: Store) -> None:
    ids = _made(sqlite_store, *FIVE)
    done = _op(sqlite_store, "batches", "--json", "--all", "--limit", "1", "--state", "failed")
    assert [b["batch_id"] for b in _many(done)] == [ids[1]]
    done = _op(
        sqlite_store,
        "batches",
        "--json",
        "--all",
        "--limit",
        "1",
        "--state",
        "completed_with_errors",
        "--state",
        "completed",
    )
    assert [b["batch_id"] for b in _many(done)] == [ids[3], ids[2], ids[0]]


# -- status --------------------------------------------------------------------------------


def test_status_json_is_the_librarys_status(store: Store) -> None:
    (batch,) = _made(store, Make(["a", "bad-1", "b", "bad-2"], {"owner": "ada", "n": 1}))
    shown = _one(_op(store, "status", batch, "--json"))
    status = _ask(store, lambda r: r.status(batch))
    assert shown["state"] == status.state.value == "completed_with_errors"
    assert shown["total"] == status.total == 4
    assert shown["counts"] == {s.value: n for s, n in status.counts.items()}
    assert shown == status.model_dump(mode="json")


def test_status_text_describes_the_batch(sqlite_store: Store) -> None:
    (batch,) = _made(sqlite_store, Make(["a", "bad-1"], {"owner": "ada"}))
    # In a process: its text (a "·" in it) as written to a pipe.
    done = _process("status", *sqlite_store.cli(), batch)
    assert done.returncode == EXIT_OK, done.stderr
    assert batch in done.stdout
    assert "completed_with_errors" in done.stdout
    assert "1 succeeded · 1 failed" in done.stdout
    assert '{"owner":"ada"}' in done.stdout


@pytest.mark.parametrize("store", ["sqlite"], indirect=True)
def test_status_of_an_unknown_batch_exits_4(store: Store) -> None:
    _made(store, Make(["a"]))
    unknown = new_batch_id()
    done = _process("status", *store.cli(), unknown, "--json")  # the process's exit status
    assert done.returncode == EXIT_NOT_FOUND
    assert f"no batch {unknown}" in done.stderr
    assert done.stdout == ""


@pytest.mark.parametrize(
    "command", ["status", "items", "errors", "watch", "cancel", "retry-failed", "delete"]
)
def test_every_command_on_one_batch_exits_4_when_there_is_none(
    sqlite_store: Store, command: str
) -> None:
    _ask(sqlite_store, lambda r: r.batches())  # the app made its tables, and no batch
    unknown = new_batch_id()
    done = _op(sqlite_store, command, unknown)
    assert done.returncode == EXIT_NOT_FOUND, done.stderr
    assert f"no batch {unknown}" in done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.parametrize(
    "command", ["status", "items", "errors", "watch", "cancel", "retry-failed", "delete"]
)
@pytest.mark.parametrize("bad", ["nope", "01a24d05-5ed5-4728-8214-d4fb65d98404"])
def test_a_malformed_batch_id_exits_2(command: str, bad: str, tmp_path: Path) -> None:
    never = tmp_path / "never.db"
    done = _cli(command, "--storage", f"sqlite+aiosqlite:///{never}", bad)
    assert done.returncode == EXIT_USAGE
    assert "not a batch id" in done.stderr
    done = _cli("batches", "--storage", f"sqlite+aiosqlite:///{never}", "--before", bad)
    assert done.returncode == EXIT_USAGE
    assert not never.exists()


# -- items ---------------------------------------------------------------------------------


@pytest.mark.parametrize("store", ["sqlite"], indirect=True)
def test_items_state_failed_gives_exactly_the_failed_keys(store: Store) -> None:
    (batch,) = _made(store, Make(["a", "bad-1", "b", "bad-2", "c"]))
    items = _many(_op(store, "items", batch, "--json", "--state", "failed"))
    assert [(i["key"], i["state"], i["position"]) for i in items] == [
        ("bad-1", "failed", 1),
        ("bad-2", "failed", 3),
    ]
    assert all(i["batch_id"] == batch for i in items)


def test_items_pages_with_limit_then_after_the_last_position(store: Store) -> None:
    (batch,) = _made(store, Make(["a", "b", "c", "d", "e"], run="none"))
    first = _many(_op(store, "items", batch, "--json", "--limit", "2"))
    assert [(i["key"], i["position"]) for i in first] == [("a", 0), ("b", 1)]
    second = _many(_op(store, "items", batch, "--json", "--limit", "2", "--after", "1"))
    assert [(i["key"], i["position"]) for i in second] == [("c", 2), ("d", 3)]


def test_items_all_walks_every_page_past_the_page_size(store: Store) -> None:
    keys = [f"item-{n:04d}" for n in range(2_500)]
    (batch,) = _made(store, Make(keys, run="none"))
    items = _many(_op(store, "items", batch, "--json", "--all", "--limit", "1000"))
    assert [i["key"] for i in items] == keys
    assert [i["position"] for i in items] == list(range(2_500))


def test_items_text_pages_and_says_where_the_next_page_starts(sqlite_store: Store) -> None:
    (batch,) = _made(sqlite_store, Make(["a", "bad-1", "b"]))
    done = _op(sqlite_store, "items", batch, "--limit", "2")
    assert done.returncode == EXIT_OK, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].split() == ["POS", "KEY", "STATE", "TRY", "PROGRESS", "MESSAGE"]
    assert lines[1].split()[:3] == ["0", "a", "succeeded"]
    assert lines[2].split()[:3] == ["1", "bad-1", "failed"]
    assert "ValueError: bad-1 went wrong" in lines[2]
    assert len(lines) == 3
    assert "--after 1" in done.stderr


def test_items_after_a_position_past_every_item_is_an_empty_page(store: Store) -> None:
    (batch,) = _made(store, Make(["a", "b"], run="none"))
    done = _op(store, "items", batch, "--json", "--after", "1")
    assert (done.returncode, done.stdout) == (EXIT_OK, ""), done.stderr
    # A position no batch reaches (past 2**63): no page, or a bad option; never a crash.
    done = _op(store, "items", batch, "--json", "--after", str(10**20))
    assert "Traceback" not in done.stderr, done.stderr[-600:]
    assert done.returncode in (EXIT_OK, EXIT_USAGE), done.stderr
    assert done.stdout == ""


@pytest.mark.parametrize("limit", ["1001", "0", "-1", "many"])
def test_items_and_batches_refuse_a_page_limit_out_of_range(limit: str, tmp_path: Path) -> None:
    never = tmp_path / "never.db"
    storage = f"sqlite+aiosqlite:///{never}"
    done = _cli("items", "--storage", storage, new_batch_id(), "--limit", limit)
    assert done.returncode == EXIT_USAGE
    assert "--limit" in done.stderr
    done = _cli("batches", "--storage", storage, "--limit", limit)
    assert done.returncode == EXIT_USAGE
    assert not never.exists()


# -- errors --------------------------------------------------------------------------------


def test_errors_json_gives_each_failed_item_with_its_error(store: Store) -> None:
    (batch,) = _made(store, Make(["a", "bad-1", "b", "bad-2"]))
    errors = _many(_op(store, "errors", batch, "--json"))
    assert [(e["key"], e["position"], e["attempt"]) for e in errors] == [
        ("bad-1", 1, 1),
        ("bad-2", 3, 1),
    ]
    for e in errors:
        assert e["error"]["type"] == "ValueError"
        assert e["error"]["message"] == f"{e['key']} went wrong"
        assert [x["message"] for x in e["errors"]] == [e["error"]["message"]]


@pytest.mark.parametrize("store", ["sqlite"], indirect=True)
def test_errors_text_shows_the_messages(store: Store) -> None:
    (batch,) = _made(store, Make(["a", "bad-1", "b", "bad-2"]))
    done = _op(store, "errors", batch)
    assert done.returncode == EXIT_OK, done.stderr
    assert "ValueError: bad-1 went wrong" in done.stdout
    assert "ValueError: bad-2 went wrong" in done.stdout
    assert done.stdout.splitlines()[-1] == "2 failed of 4"


@pytest.mark.parametrize("store", ["sqlite"], indirect=True)
def test_errors_show_the_errors_of_earlier_attempts(store: Store) -> None:
    (batch,) = _made(store, Make(["a", "always-1"], attempts=3))
    text = _op(store, "errors", batch)
    assert text.returncode == EXIT_OK, text.stderr
    assert text.stdout.splitlines() == [
        "always-1  (position 1, 3 attempts)",
        "  ConnectionError: always-1: try 3",
        "  attempt 1: ConnectionError: always-1: try 1",
        "  attempt 2: ConnectionError: always-1: try 2",
        "1 failed of 2",
    ]
    (shown,) = _many(_op(store, "errors", batch, "--json"))
    assert shown["attempt"] == 3
    assert shown["error"]["message"] == "always-1: try 3"
    assert [(e["attempt"], e["message"]) for e in shown["errors"]] == [
        (n, f"always-1: try {n}") for n in (1, 2, 3)
    ]


def test_errors_of_a_batch_without_failures(sqlite_store: Store) -> None:
    (batch,) = _made(sqlite_store, Make(["a", "b"]))
    done = _op(sqlite_store, "errors", batch)
    assert done.returncode == EXIT_OK, done.stderr
    assert done.stdout == "no failed items of 2\n"
    assert _op(sqlite_store, "errors", batch, "--json").stdout == ""


@pytest.mark.parametrize("store", ["sqlite"], indirect=True)
def test_errors_text_prints_no_terminal_escapes_but_json_keeps_the_message(store: Store) -> None:
    (batch,) = _made(store, Make(["a", "hostile"]))
    text = _op(store, "errors", batch, "--traceback")
    assert text.returncode == EXIT_OK, text.stderr
    assert "\x1b" not in text.stdout
    assert "\r" not in text.stdout
    assert "RuntimeError: boom [2J [31mred over" in text.stdout
    assert "Traceback" in text.stdout
    (shown,) = _many(_op(store, "errors", batch, "--json"))
    assert shown["error"]["message"] == HOSTILE
    assert shown["error"]["type"] == "RuntimeError"


def test_items_text_prints_no_terminal_escapes(sqlite_store: Store) -> None:
    (batch,) = _made(sqlite_store, Make(["a", "hostile"]))
    done = _op(sqlite_store, "items", batch, env={"COLUMNS": "200"})
    assert done.returncode == EXIT_OK, done.stderr
    assert "\x1b" not in done.stdout
    assert "\r" not in done.stdout
    assert "RuntimeError: boom [2J [31mred over" in done.stdout


def test_metadata_in_text_prints_no_control_characters(sqlite_store: Store) -> None:
    hostile = {"note": "a\x9b2Jb\u2028c\x1b[31md\x7f"}
    (batch,) = _made(sqlite_store, Make(["a"], hostile))
    for command in (["status", batch], ["batches"]):
        done = _op(sqlite_store, *command, env={"COLUMNS": "200"})
        assert done.returncode == EXIT_OK, done.stderr
        assert batch in done.stdout
        for ch in "\x1b\x9b\u2028\x7f\r":
            assert ch not in done.stdout, (command, ch)
    (shown,) = _many(_op(sqlite_store, "batches", "--json"))
    assert shown["metadata"] == hostile


# -- watch ---------------------------------------------------------------------------------


async def _read_all(stream: ByteReceiveStream) -> bytes:
    chunks = []
    while True:
        try:
            chunks.append(await stream.receive())
        except anyio.EndOfStream:
            return b"".join(chunks)


async def _watch(
    store: Store, batch_id: str, meanwhile: Callable[[], Awaitable[Any]]
) -> tuple[int, list[dict[str, Any]], str]:
    """``watch ID --json`` in a process of its own; once it printed its first status, run
    ``meanwhile``. Its exit status, the statuses it printed and its stderr."""
    process = await anyio.open_process(
        [sys.executable, "-m", "batchkit", "watch", *store.cli(), batch_id, "--json"],
        cwd=ROOT,
        env=_env(),
        stdin=subprocess.DEVNULL,
    )
    async with process:
        assert process.stdout is not None
        assert process.stderr is not None
        out = BufferedByteReceiveStream(process.stdout)
        try:
            with anyio.fail_after(60):
                try:
                    first = await out.receive_until(b"\n", 1 << 20)
                except anyio.IncompleteRead:
                    raise AssertionError(
                        (await _read_all(process.stderr)).decode(errors="replace")
                    ) from None
                await meanwhile()
                rest = await _read_all(out)
                err = await _read_all(process.stderr)
                code = await process.wait()
        finally:
            if process.returncode is None:
                process.kill()
    lines = [first.decode(), *rest.decode().split("\n")]
    return code, [json.loads(line) for line in lines if line], err.decode()


def _check_watched(statuses: list[dict[str, Any]], batch_id: str, final: str) -> None:
    assert statuses[0]["state"] == "queued"
    assert statuses[-1]["state"] == final
    assert statuses[-1]["is_terminal"]
    assert not any(s["is_terminal"] for s in statuses[:-1])
    assert all(s["batch_id"] == batch_id for s in statuses)
    assert all(a != b for a, b in pairwise(statuses))  # no repeats


async def test_watch_follows_a_worker_until_completed_and_exits_0(
    store: Store, workers: Workers
) -> None:
    (batch,) = await _make(store, Make(["a", "b", "c"], run="none"))

    async def work() -> None:
        worker = await workers.start("--exit-when-idle", sleep=0.3)
        assert await workers.wait(worker, 60) == EXIT_OK, workers.logs()

    code, statuses, err = await _watch(store, batch, work)
    assert code == EXIT_OK, err
    _check_watched(statuses, batch, "completed")
    assert statuses[-1]["counts"]["succeeded"] == 3
    assert len(statuses) >= 2


@pytest.mark.parametrize("store", ["sqlite"], indirect=True)
async def test_watch_exits_5_when_the_batch_ended_with_failed_items(store: Store) -> None:
    (batch,) = await _make(store, Make(["a", "bad-1", "b"], run="none"))

    async def run() -> None:
        async with store.storage() as storage:
            await BatchRunner(storage, _slowly, block_warning=None).run(batch)

    code, statuses, err = await _watch(store, batch, run)
    assert code == EXIT_FAILED_ITEMS, err
    _check_watched(statuses, batch, "completed_with_errors")
    assert statuses[-1]["counts"]["failed"] == 1


@pytest.mark.parametrize("store", ["sqlite"], indirect=True)
async def test_watch_exits_3_when_the_batch_is_cancelled(store: Store) -> None:
    (batch,) = await _make(store, Make(["a", "b", "c"], run="none"))

    async def cancel() -> None:
        done = await anyio.to_thread.run_sync(
            lambda: _op(store, "cancel", batch, "--reason", "ops", "--json")
        )
        assert done.returncode == EXIT_OK, done.stderr

    code, statuses, err = await _watch(store, batch, cancel)
    assert code == EXIT_CANCELLED, err
    _check_watched(statuses, batch, "cancelled")
    assert statuses[-1]["cancel_reason"] == "ops"


def test_watch_of_a_finished_batch_prints_it_once(sqlite_store: Store) -> None:
    (ok, bad) = _made(sqlite_store, Make(["a"]), Make(["a", "bad-1"]))
    done = _op(sqlite_store, "watch", ok, "--json")
    assert done.returncode == EXIT_OK, done.stderr
    assert [s["state"] for s in _many(done)] == ["completed"]
    text = _op(sqlite_store, "watch", bad)
    assert text.returncode == EXIT_FAILED_ITEMS, text.stderr
    assert "completed_with_errors" in text.stdout
    assert "1 succeeded · 1 failed" in text.stdout


# -- cancel --------------------------------------------------------------------------------


def test_cancel_a_queued_batch_with_a_reason(store: Store) -> None:
    (batch,) = _made(store, Make(["a", "b", "c"], run="none"))
    shown = _one(_op(store, "cancel", batch, "--reason", "ops", "--json"))
    assert shown["batch_id"] == batch
    assert shown["state"] == "cancelled"
    assert shown["cancel_reason"] == "ops"
    assert shown["counts"]["cancelled"] == 3
    status = _ask(store, lambda r: r.status(batch))
    assert status.state.value == "cancelled"
    assert status.cancel_reason == "ops"


# -- retry-failed --------------------------------------------------------------------------


def test_retry_failed_submits_the_failed_items_once(store: Store) -> None:
    (batch,) = _made(store, Make(["a", "bad-1", "b", "bad-2"], {"owner": "ada"}))
    first = _one(_op(store, "retry-failed", batch, "--json"))
    assert first["parent_id"] == batch
    assert first["total"] == 2
    assert first["batch_id"] != batch
    again = _one(_op(store, "retry-failed", batch, "--json"))
    assert again == first
    retry = first["batch_id"]
    items = _ask(store, lambda r: r.items(retry))
    assert [i.key for i in items] == ["bad-1", "bad-2"]
    status = _ask(store, lambda r: r.status(retry))
    assert status.parent_id == batch
    assert status.metadata == {"owner": "ada"}
    assert [s.batch_id for s in _ask(store, lambda r: r.batches())] == [retry, batch]


@pytest.mark.parametrize("store", ["sqlite"], indirect=True)
def test_retry_failed_refuses_a_batch_without_failures_or_unfinished(store: Store) -> None:
    ok, queued = _made(store, Make(["a", "b"]), Make(["bad-1"], run="none"))
    done = _op(store, "retry-failed", ok, "--json")
    assert done.returncode == EXIT_FAILED
    assert "no failed items" in done.stderr
    assert done.stdout == ""
    done = _op(store, "retry-failed", queued)
    assert done.returncode == EXIT_FAILED
    assert "still queued" in done.stderr
    assert [s.batch_id for s in _ask(store, lambda r: r.batches())] == [queued, ok]


# -- delete --------------------------------------------------------------------------------


@pytest.mark.parametrize("store", ["sqlite"], indirect=True)
@pytest.mark.parametrize("kind", ["queued", "running"])
def test_delete_refuses_an_unfinished_batch_without_force(store: Store, kind: str) -> None:
    if kind == "running":
        batch = _running(store)
    else:
        (batch,) = _made(store, Make(["a", "b"], run="none"))
    done = _op(store, "delete", batch, "--json")
    assert done.returncode == EXIT_FAILED
    assert f"still {kind}" in done.stderr
    assert "--force" in done.stderr
    assert done.stdout == ""
    status = _ask(store, lambda r: r.status(batch))
    assert status.state.value == kind
    assert len(_ask(store, lambda r: r.items(batch))) == status.total


@pytest.mark.parametrize("store", ["sqlite"], indirect=True)
def test_delete_force_deletes_an_unfinished_batch(store: Store) -> None:
    batch = _running(store)
    shown = _one(_op(store, "delete", batch, "--force", "--json"))
    assert shown == {"batch_id": batch, "deleted": True}
    done = _op(store, "status", batch)
    assert done.returncode == EXIT_NOT_FOUND
    assert f"no batch {batch}" in done.stderr


@pytest.mark.parametrize("store", ["sqlite"], indirect=True)
def test_delete_a_finished_batch(store: Store) -> None:
    batch, other = _made(store, Make(["a", "bad-1"]), Make(["a"]))
    done = _op(store, "delete", batch)
    assert done.returncode == EXIT_OK, done.stderr
    assert done.stdout == f"deleted {batch} (2 items)\n"

    async def gone(runner: BatchRunner) -> None:
        with pytest.raises(BatchNotFound):
            await runner.status(batch)
        with pytest.raises(BatchNotFound):
            await runner.items(batch)
        assert [s.batch_id for s in await runner.batches()] == [other]

    _ask(store, gone)


# -- prune ---------------------------------------------------------------------------------


def test_prune_deletes_finished_batches_and_keeps_unfinished_ones(store: Store) -> None:
    finished = _made(store, Make(["a"]), Make(["a", "bad-1"]))
    cancelled = _made(store, Make(["a", "b"], run="none"))[0]
    _ask(store, lambda r: r.cancel(cancelled))
    queued = _made(store, Make(["a", "b"], run="none"))[0]
    running = _running(store)
    old = _one(_op(store, "prune", "--finished-before", "2000-01-01", "--json"))
    assert old["deleted"] == 0
    assert old["finished_before"] == "2000-01-01T00:00:00+00:00"
    shown = _one(_op(store, "prune", "--finished-before", "now", "--json"))
    assert shown["deleted"] == len(finished) + 1
    left = [s.batch_id for s in _ask(store, lambda r: r.batches())]
    assert left == [running, queued]


@pytest.mark.parametrize(
    ("date", "message"),
    [
        ("2999-01-01", "in the future"),
        ("yesterday", "not a date"),
        ("2026-13-01", "not a date"),
        ("", "not a date"),
    ],
)
def test_prune_refuses_a_future_or_malformed_date(date: str, message: str, tmp_path: Path) -> None:
    never = tmp_path / "never.db"
    done = _cli("prune", "--storage", f"sqlite+aiosqlite:///{never}", "--finished-before", date)
    assert done.returncode == EXIT_USAGE
    assert message in done.stderr
    assert not never.exists()


def test_prune_needs_a_date(tmp_path: Path) -> None:
    done = _cli("prune", "--storage", f"sqlite+aiosqlite:///{tmp_path / 'never.db'}")
    assert done.returncode == EXIT_USAGE
    assert "--finished-before" in done.stderr


# -- the storage ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "command", [["batches"], ["status", "01a24d05-5ed5-7728-8214-d4fb65d98404"]]
)
def test_a_storage_is_required(command: list[str]) -> None:
    done = _cli(*command)
    assert done.returncode == EXIT_USAGE
    assert "give --storage URL or set BATCHKIT_STORAGE" in done.stderr


def test_the_storage_comes_from_the_environment(sqlite_store: Store) -> None:
    (batch,) = _made(sqlite_store, Make(["a"]))
    done = _process(
        "status",
        batch,
        "--json",
        "--prefix",
        sqlite_store.prefix,
        env={"BATCHKIT_STORAGE": sqlite_store.url},
    )
    assert _one(done)["batch_id"] == batch
    listed = _cli(
        "batches",
        "--json",
        "--prefix",
        sqlite_store.prefix,
        env={"BATCHKIT_STORAGE": sqlite_store.url},
    )
    assert [b["batch_id"] for b in _many(listed)] == [batch]


def test_memory_storage_is_refused() -> None:
    done = _cli("batches", "--storage", "memory://")
    assert done.returncode == EXIT_USAGE
    assert "one process" in done.stderr
    env_done = _cli("batches", env={"BATCHKIT_STORAGE": "memory://"})
    assert env_done.returncode == EXIT_USAGE


@pytest.mark.parametrize(
    "url",
    [
        pytest.param(f"postgresql+asyncpg://u:{PASSWORD}@127.0.0.1:1/x", id="postgres"),
        pytest.param(f"postgresql+asyncpg://u@127.0.0.1:1/x?password={PASSWORD}", id="pg-query"),
        pytest.param(f"redis://:{PASSWORD}@127.0.0.1:1/0", id="redis"),
        pytest.param(f"redis://:{PASSWORD[:3]}/{PASSWORD[3:]}@127.0.0.1:1/0", id="redis-raw"),
    ],
)
@pytest.mark.parametrize("command", ["batches", "status"])
def test_an_unreachable_storage_exits_1_without_its_password(url: str, command: str) -> None:
    args = [command] if command == "batches" else [command, new_batch_id()]
    done = _cli(*args, "--storage", url, "--json")
    assert done.returncode == EXIT_FAILED
    assert "cannot open" in done.stderr
    assert "Traceback" not in done.stderr
    secret = PASSWORD if "raw" not in url else PASSWORD[:3]
    assert secret not in done.stdout + done.stderr
    assert done.stdout == ""


# -- text tables ---------------------------------------------------------------------------


def test_batches_text_fits_the_terminal_cutting_only_the_metadata(sqlite_store: Store) -> None:
    long = {"owner": "ada", "note": "a long note " * 20}
    ids = _made(sqlite_store, Make(["a"], long), Make(["b", "c"], long), Make(["d"], long))
    wide = _op(sqlite_store, "batches", env={"COLUMNS": "100"})
    assert wide.returncode == EXIT_OK, wide.stderr
    lines = wide.stdout.splitlines()
    assert lines[0].split() == ["ID", "STATE", "DONE", "FAILED", "PROGRESS", "AGE", "METADATA"]
    assert len(lines) == 4
    assert all(len(line) <= 100 for line in lines)
    for line, batch in zip(lines[1:], ids[::-1], strict=True):
        assert line.startswith(batch + "  completed")  # the whole id
        assert line.endswith("…")
        assert '{"note":"a long note' in line
        assert len(line) == 100
    # At 60 columns the fixed columns alone are wider (the id has 36): the metadata is cut
    # to its least width and the lines are as narrow as they can be.
    narrow = _op(sqlite_store, "batches", "--limit", "2", env={"COLUMNS": "60"})
    assert narrow.returncode == EXIT_OK, narrow.stderr
    lines = narrow.stdout.splitlines()
    assert len(lines) == 3
    least = 36 + 2 + len("completed") + 2 + len("DONE") + 2 + len("FAILED") + 2
    least += len("PROGRESS") + 2 + len("AGE") + 2 + len("METADATA")
    assert len(lines[0]) == least
    assert all(len(line) <= least for line in lines)
    for line, batch in zip(lines[1:], ids[::-1], strict=False):
        assert line.startswith(batch + "  ")
        assert line.endswith('{"note"…')
    assert f"--before {ids[1]}" in narrow.stderr


def test_batches_text_with_short_metadata_fits_60_columns_but_for_the_id(
    sqlite_store: Store,
) -> None:
    ids = _made(sqlite_store, Make(["a"]), Make(["b"], {"k": 1}))
    done = _op(sqlite_store, "batches", env={"COLUMNS": "60"})
    assert done.returncode == EXIT_OK, done.stderr
    lines = done.stdout.splitlines()
    assert lines[1].startswith(ids[1] + "  ")
    assert lines[2].startswith(ids[0] + "  ")
    assert lines[1].endswith('{"k":1}')


def test_batches_and_items_text_say_when_there_are_none(sqlite_store: Store) -> None:
    _ask(sqlite_store, lambda r: r.batches())  # the app made its tables, and no batch
    done = _op(sqlite_store, "batches")
    assert (done.returncode, done.stdout) == (EXIT_OK, "no batches\n"), done.stderr
    (batch,) = _made(sqlite_store, Make(["a", "b"]))
    done = _op(sqlite_store, "items", batch, "--state", "failed")
    assert (done.returncode, done.stdout) == (EXIT_OK, "no items\n"), done.stderr


# -- the console script --------------------------------------------------------------------


def test_the_batchkit_console_script_lists_the_commands() -> None:
    script = Path(sys.executable).parent / "batchkit"
    done = _run([str(script), "--help"], None)
    assert done.returncode == EXIT_OK, done.stderr
    assert done.stdout.startswith("usage: batchkit")
    for command in ("worker", *COMMANDS):
        assert command in done.stdout, command
    missing = _run([str(script), "batches"], None)
    assert missing.returncode == EXIT_USAGE
    assert missing.stderr.startswith("batchkit batches: error:")


# -- what an operator gets wrong -----------------------------------------------------------


def test_a_sqlite_path_that_does_not_exist_is_refused_not_created(tmp_path: Path) -> None:
    path = tmp_path / "typo.db"
    done = _cli("batches", "--storage", f"sqlite+aiosqlite:///{path}")
    assert done.returncode == EXIT_FAILED
    assert f"no SQLite database at {path}" in done.stderr
    assert not path.exists()


def test_a_wrong_prefix_is_refused_and_creates_no_tables(sqlite_store: Store) -> None:
    import sqlite3

    _made(sqlite_store, Make(["a"]))
    path = sqlite_store.url.partition(":///")[2]
    before = sqlite3.connect(path).execute("select name from sqlite_master").fetchall()
    # In a process of its own: what a storage that failed to open leaves unclosed (its
    # SQLite connection) is not this test's subject, and ends with that process.
    done = _process("batches", "--storage", sqlite_store.url, "--prefix", "typo_")
    assert done.returncode == EXIT_FAILED
    assert "no batchkit tables here with the prefix 'typo_'" in done.stderr
    after = sqlite3.connect(path).execute("select name from sqlite_master").fetchall()
    assert after == before


@pytest.mark.parametrize(
    "url",
    [
        f"postgresql+asyncpg://u:{PASSWORD}@127.0.0.1:9/app?sslmode=bogus",
        f"redis://u:{PASSWORD}@127.0.0.1:9/0?bogus=1",
    ],
    ids=["postgres-bad-option", "redis-bad-option"],
)
def test_a_url_option_the_driver_refuses_is_a_message_not_a_traceback(url: str) -> None:
    # In a process: nothing it prints, on its way out too, has a traceback or the password.
    done = _process("batches", "--storage", url)
    assert done.returncode == EXIT_FAILED
    assert "Traceback" not in done.stderr
    assert done.stderr.startswith("python -m batchkit batches: ")
    assert PASSWORD not in done.stdout + done.stderr


def test_json_escapes_what_a_terminal_would_act_on_and_keeps_the_text(
    sqlite_store: Store,
) -> None:
    nasty = {"note": "csi\x9b2J del\x7f line\u2028para\u2029end"}
    _made(sqlite_store, Make(["a"], nasty))
    done = _op(sqlite_store, "batches", "--json")
    assert done.returncode == EXIT_OK, done.stderr
    for char in ("\x9b", "\x7f", "\u2028", "\u2029", "\x1b"):
        assert char not in done.stdout
    assert done.stdout.count("\n") == 1
    assert json.loads(done.stdout)["metadata"] == nasty


def test_items_after_a_position_past_any_store_is_an_empty_page_in_the_library(
    sqlite_store: Store,
) -> None:
    [batch] = _made(sqlite_store, Make(["a", "b"]))
    assert _ask(sqlite_store, lambda r: r.items(batch, after=10**20)) == []
    assert len(_ask(sqlite_store, lambda r: r.items(batch, after=-(10**20)))) == 2
    with pytest.raises(BatchNotFound):
        _ask(sqlite_store, lambda r: r.items(new_batch_id(), after=10**20))


def test_the_commands_on_mariadb(mysql_store: Store) -> None:
    done, queued = _made(mysql_store, Make(["a", "bad1", "b"]), Make(["c"], run="none"))
    # One command in a process of its own on MariaDB, the others in this one.
    listed = _many(_process("batches", *mysql_store.cli(), "--json"))
    assert [b["batch_id"] for b in listed] == [queued, done]
    status = _one(_op(mysql_store, "status", done, "--json"))
    assert (status["state"], status["counts"]["failed"]) == ("completed_with_errors", 1)
    assert [i["key"] for i in _many(_op(mysql_store, "items", done, "--json"))] == [
        "a",
        "bad1",
        "b",
    ]
    assert [e["key"] for e in _many(_op(mysql_store, "errors", done, "--json"))] == ["bad1"]
    retried = _one(_op(mysql_store, "retry-failed", done, "--json"))
    assert retried["total"] == 1
    cancelled = _one(_op(mysql_store, "cancel", queued, "--json"))
    assert cancelled["state"] == "cancelled"
    assert _one(_op(mysql_store, "delete", queued, "--json"))["deleted"] is True
