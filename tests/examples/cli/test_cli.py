"""``python -m examples.cli``: every command through Typer's runner, Ctrl-C and resume in a
real process, and the live display in a real pseudo-terminal."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import anyio
import pytest
from typer.testing import CliRunner

from batchkit import BatchRunner, ItemState, open_storage
from examples.cli.app import (
    EXIT_FAILED_ITEMS,
    EXIT_INTERRUPTED,
    EXIT_NOT_FOUND,
    EXIT_OK,
    EXIT_USAGE,
    app,
)
from examples.cli.items import read_items
from tests._terminal import run_in_terminal

ROOT = Path(__file__).resolve().parents[3]
CSV = ROOT / "examples" / "cli" / "products.csv"
FAILING = ["P-007", "P-012", "P-020"]  # no image, no price, no image
BATCH_ID = re.compile(r"Batch ([0-9a-f-]{36})")


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A directory of the test's own: the CLI keeps its SQLite file and videos there."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("BATCHKIT_STORAGE", raising=False)
    monkeypatch.delenv("BATCHKIT_STORAGE_PREFIX", raising=False)
    monkeypatch.setenv("BATCHKIT_STUDIO_SPEED", "0.05")
    return tmp_path


def _cli(*args: str) -> Any:
    return CliRunner().invoke(app, list(args), catch_exceptions=False)


def _states(url: str, batch_id: str) -> dict[str, ItemState]:
    async def read() -> dict[str, ItemState]:
        async with open_storage(url) as storage:
            items = await BatchRunner(storage, lambda ctx: None).items(batch_id, limit=1_000)
            return {item.key: item.state for item in items}

    return anyio.run(read)


def _small_csv(path: Path, keys: list[str]) -> Path:
    rows = CSV.read_text().splitlines()
    keep = [rows[0], *[r for r in rows[1:] if r.split(",")[0] in keys]]
    path.write_text("\n".join(keep) + "\n")
    return path


def test_help_lists_the_commands_and_the_exit_codes() -> None:
    done = _cli("--help")
    assert done.exit_code == EXIT_OK
    for command in ("generate", "resume", "retry-failed", "status", "list", "watch"):
        assert command in done.output
    assert "130 interrupted" in " ".join(done.output.split())
    # The console script of a development install runs the same app.
    script = Path(sys.executable).with_name("batchkit-demo")
    assert script.exists(), "pip install -e '.[examples]' installs batchkit-demo"
    shown = subprocess.run(
        [str(script), "--help"], capture_output=True, text=True, cwd="/", timeout=60, check=False
    )
    assert shown.returncode == 0, shown.stderr
    assert "retry-failed" in shown.stdout


def test_generate_runs_every_row_and_ends_with_a_summary(workdir: Path) -> None:
    done = _cli("generate", str(CSV))
    assert done.exit_code == EXIT_FAILED_ITEMS, done.output  # three rows cannot be made
    out = done.output
    batch_id = BATCH_ID.search(out).group(1)  # type: ignore[union-attr]
    assert f"Batch {batch_id}: completed_with_errors in" in out
    assert "(27 succeeded · 3 failed)" in out
    for key in FAILING:
        assert re.search(rf"^  {key}  UnusableProduct: .*\({key}\) has no (image|price)", out, re.M)
    assert f"Videos: batchkit-output/{batch_id}" in out
    assert f"python -m examples.cli status {batch_id}" in out
    assert f"python -m examples.cli retry-failed {batch_id}" in out
    # Not a terminal: plain lines, one per change, never Rich's escape codes.
    assert "\x1b[" not in out
    assert re.search(r"^\s+\d+\.\ds  P-001\s+running\s+\d+%", out, re.M)
    assert re.search(r"^\s+\d+\.\ds  P-001\s+succeeded\s+\S+P-001\.gif", out, re.M)
    videos = sorted((workdir / "batchkit-output" / batch_id).glob("*.gif"))
    assert len(videos) == 27
    assert videos[0].read_bytes()[:6] == b"GIF89a"
    assert (workdir / "batchkit-demo.db").is_file()


def test_a_batch_without_failures_exits_0(workdir: Path) -> None:
    done = _cli("generate", str(_small_csv(workdir / "ok.csv", ["P-001", "P-002"])))
    assert done.exit_code == EXIT_OK, done.output
    assert "completed in" in done.output
    assert "retry-failed" not in done.output


def test_status_list_and_their_json(workdir: Path) -> None:
    first = _cli("generate", str(_small_csv(workdir / "a.csv", ["P-001", "P-007"])))
    batch_id = BATCH_ID.search(first.output).group(1)  # type: ignore[union-attr]
    status = _cli("status", batch_id)
    assert status.exit_code == EXIT_OK
    # The library's own `status` and `errors` print it.
    assert re.search(rf"batch  {batch_id}\n\s+state  completed_with_errors\n", status.output)
    assert re.search(r"^P-007  \(position 1, 1 attempt\)$", status.output, re.MULTILINE)
    assert "no image" in status.output
    assert "1 failed of 2" in status.output
    body = json.loads(_cli("status", batch_id, "--json").output)
    assert body["state"] == "completed_with_errors"
    assert body["counts"] == {
        "queued": 0,
        "running": 0,
        "succeeded": 1,
        "failed": 1,
        "cancelled": 0,
    }
    assert [f["key"] for f in body["failed"]] == ["P-007"]
    listed = _cli("list")
    assert listed.exit_code == EXIT_OK
    assert listed.output.startswith("ID ")  # the library's `batches` table
    assert re.search(
        rf"^{batch_id}\s+completed_with_errors\s+2/2\s+1\s+100%", listed.output, re.MULTILINE
    )
    as_json = json.loads(_cli("list", "--json").output)
    assert [b["batch_id"] for b in as_json] == [batch_id]
    unknown = _cli("status", "01890000-0000-7000-8000-000000000000")
    assert unknown.exit_code == EXIT_NOT_FOUND
    assert "no batch has the id" in unknown.output


def test_retry_failed_makes_and_runs_a_batch_of_exactly_the_failed_items(workdir: Path) -> None:
    first = _cli("generate", str(_small_csv(workdir / "a.csv", ["P-001", "P-007", "P-012"])))
    batch_id = BATCH_ID.search(first.output).group(1)  # type: ignore[union-attr]
    again = _cli("retry-failed", batch_id)
    assert again.exit_code == EXIT_FAILED_ITEMS  # they fail again: still unusable
    new_id = re.search(r"Batch (\S+) retries the 2 failed items", again.output).group(1)  # type: ignore[union-attr]
    assert _states(f"sqlite+aiosqlite:///{workdir / 'batchkit-demo.db'}", new_id) == {
        "P-007": ItemState.FAILED,
        "P-012": ItemState.FAILED,
    }
    listed = json.loads(_cli("list", "--json").output)
    assert listed[0]["parent_id"] == batch_id
    later = _cli("retry-failed", new_id, "--no-run")
    assert later.exit_code == EXIT_OK
    assert "resume" in later.output
    ok = _cli("generate", str(_small_csv(workdir / "ok.csv", ["P-002"])))
    ok_id = BATCH_ID.search(ok.output).group(1)  # type: ignore[union-attr]
    nothing = _cli("retry-failed", ok_id)
    assert nothing.exit_code == EXIT_USAGE
    assert "no failed items" in nothing.output


def test_resume_and_watch_finish_and_follow_a_batch(workdir: Path) -> None:
    url = f"sqlite+aiosqlite:///{workdir / 'batchkit-demo.db'}"

    specs = read_items(_small_csv(workdir / "a.csv", ["P-001", "P-002", "P-007"]))

    async def submit() -> str:
        async with open_storage(url) as storage:
            batch = await BatchRunner(storage, lambda ctx: None).submit(specs)
            return batch.id

    batch_id = anyio.run(submit)  # submitted, never run: as after a crash
    resumed = _cli("resume", batch_id)
    assert resumed.exit_code == EXIT_FAILED_ITEMS, resumed.output
    assert "Resuming batch" in resumed.output
    assert set(_states(url, batch_id).values()) == {ItemState.SUCCEEDED, ItemState.FAILED}
    # Resumed once more, an ended batch runs nothing and keeps its exit code and summary.
    again = _cli("resume", batch_id)
    assert again.exit_code == EXIT_FAILED_ITEMS, again.output
    assert "has ended already: nothing is left to run" in again.output
    assert f"Batch {batch_id}: completed_with_errors (2 succeeded · 1 failed)" in again.output
    assert "Resuming batch" not in again.output
    assert f"retry-failed {batch_id}" in again.output
    lines = [json.loads(line) for line in _cli("watch", batch_id, "--json").output.splitlines()]
    assert lines[-1]["state"] == "completed_with_errors"
    plain = _cli("watch", batch_id)
    assert plain.exit_code == EXIT_FAILED_ITEMS
    assert f"Batch {batch_id}: completed_with_errors" in plain.output


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "no such file"),
        ("title,price\nMug,3\n", "one of them 'key'"),
        ("key,title\nA,Mug\nA,Lamp\n", "line 3: the key 'A' is on line 2 already"),
        ("key,title\n,Mug\n", "line 2: the key is empty"),
        ("key,title\n", "no rows"),
        ("key,title\nA,Mug,extra\n", "more cells than columns"),
        ('key,title\nA,"two\nlines"\nA,Lamp\n', "line 4: the key 'A' is on line 2 already"),
        ("key,title,title\nA,Mug,Lamp\n", "the column 'title' is named twice"),
        ("key,title,\nA,Mug,\n", "column 3 of the first line has no name"),
        ('key,title\nA,"open\n', "line 2: not CSV (unexpected end of data)"),
        ('key,title\nA,"q"x\n', "line 2: not CSV"),
    ],
)
def test_a_bad_csv_exits_2_and_writes_nothing(
    workdir: Path, content: str | None, message: str
) -> None:
    path = workdir / "items.csv"
    if content is not None:
        path.write_text(content)
    done = _cli("generate", str(path))
    assert done.exit_code == EXIT_USAGE
    assert message in done.output
    assert json.loads(_cli("list", "--json").output) == []


def test_a_generator_of_your_own_and_typed_payloads(workdir: Path) -> None:
    (workdir / "mygen.py").write_text(
        "async def shout(ctx):\n"
        "    return {'text': ctx.payload['word'].upper() * ctx.payload['times'],\n"
        "            'none': ctx.payload['note']}\n"
    )
    # A quoted cell keeps its comma and line break; "007" is a code, not the number 7.
    (workdir / "words.csv").write_text(
        'key,word,times,note\na,hi,2,\nb,yo,3,"x, and\n007"\nc,007,1,1_000\n'
    )
    done = _cli("generate", "words.csv", "--generator", "mygen:shout")
    assert done.exit_code == EXIT_OK, done.output
    assert "Videos:" not in done.output  # only the bundled generator writes videos
    bad = _cli("generate", "words.csv", "--generator", "mygen:nope")
    assert bad.exit_code == EXIT_USAGE
    assert "cannot load 'mygen:nope'" in bad.output

    async def results() -> list[Any]:
        async with open_storage(f"sqlite+aiosqlite:///{workdir / 'batchkit-demo.db'}") as storage:
            runner = BatchRunner(storage, lambda ctx: None)
            newest = (await runner.batches(limit=1))[0]
            return [i.result for i in await runner.items(newest.batch_id)]

    assert anyio.run(results) == [
        {"text": "HIHI", "none": None},
        {"text": "YOYOYO", "none": "x, and\n007"},
        {"text": "007", "none": "1_000"},
    ]


def _env(**extra: str) -> dict[str, str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("BATCHKIT_STORAGE", None)
    env.pop("BATCHKIT_STORAGE_PREFIX", None)
    return {**env, **extra}


def _python(*args: str, cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    """``python ARGS`` run to its end in ``cwd``, with `_env` (``env`` added)."""
    return subprocess.run(
        [sys.executable, *args],
        cwd=cwd,
        env=_env(**env),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_ctrl_c_stops_cleanly_and_resume_finishes(tmp_path: Path) -> None:
    process = subprocess.Popen(
        [sys.executable, "-m", "examples.cli", "generate", str(CSV), "--plain"],
        cwd=tmp_path,
        env=_env(BATCHKIT_STUDIO_SPEED="0.5"),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert process.stdout is not None
    seen = ""
    deadline = time.monotonic() + 60
    while "succeeded" not in seen and time.monotonic() < deadline:
        seen += process.stdout.readline()
    process.send_signal(signal.SIGINT)
    rest, _ = process.communicate(timeout=30)
    out = seen + rest
    assert process.returncode == EXIT_INTERRUPTED, out
    left = re.search(r"Interrupted: (\d+) of 30 items are left, and none is running", out)
    assert left is not None, out
    command = re.search(r"^  (python -m examples\.cli resume \S+)$", out, re.M)
    assert command is not None, out
    batch_id = command.group(1).split()[-1]
    url = f"sqlite+aiosqlite:///{tmp_path / 'batchkit-demo.db'}"
    states = _states(url, batch_id)
    assert ItemState.RUNNING not in states.values()
    assert sum(1 for s in states.values() if s is ItemState.QUEUED) == int(left.group(1))

    # The exact command it printed finishes the batch.
    program, *args = command.group(1).split()
    assert program == "python"
    resumed = _python(*args, cwd=tmp_path, BATCHKIT_STUDIO_SPEED="0.05")
    assert resumed.returncode == EXIT_FAILED_ITEMS, resumed.stdout + resumed.stderr
    assert "Resuming batch" in resumed.stdout
    final = _states(url, batch_id)
    assert sorted(k for k, s in final.items() if s is ItemState.FAILED) == FAILING, (
        final,
        resumed.stdout,
    )
    assert sum(1 for s in final.values() if s is ItemState.SUCCEEDED) == 27


def test_the_live_display_in_a_terminal(tmp_path: Path) -> None:
    env = _env(BATCHKIT_STUDIO_SPEED="0.4", COLUMNS="110", LINES="40", TERM="xterm-256color")
    code, text = run_in_terminal(
        [sys.executable, "-m", "examples.cli", "generate", str(CSV)], cwd=tmp_path, env=env
    )
    assert code == EXIT_FAILED_ITEMS, text[-2000:]
    plain = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", text)
    # A row per running item: its key, its title, its own bar and percentage, its stage.
    assert re.search(r"P-001\s+Ceramic mug\s+[━╺╸ ]+\s+\d+%\s+(script|frames|encode|upload)", plain)
    assert re.search(r"ETA \d+:\d\d", plain)
    assert "\x1b[" in text  # drawn, not printed line by line
    assert "1A" in text  # the display redraws itself in place
    # The final summary stays on screen.
    assert re.search(
        r"Batch \S+: completed_with_errors in \d+\.\d s \(27 succeeded · 3 failed\)", plain
    )
    assert "Failed (3):" in plain
    assert "retry-failed" in plain


@pytest.fixture(params=["postgres", "redis"])
def server_store(request: pytest.FixtureRequest) -> Any:
    """A PostgreSQL or Redis URL and two prefixes of the test's own, emptied after it."""
    from tests.storage.conftest import drop_prefixes, server_store

    url, prefix = server_store(request.param, "cli")
    other = f"{prefix}x"
    yield url, prefix, other
    anyio.run(drop_prefixes, url, [prefix, other])


def test_watch_follows_a_batch_that_another_process_runs(
    tmp_path: Path, server_store: tuple[str, str, str]
) -> None:
    url, prefix, other = server_store
    specs = read_items(_small_csv(tmp_path / "few.csv", ["P-001", "P-002", "P-003", "P-007"]))

    async def submit() -> str:
        async with open_storage(url, prefix=prefix) as storage:
            return (await BatchRunner(storage, lambda ctx: None).submit(specs)).id

    batch_id = anyio.run(submit)
    # The watcher names its store by the environment; the runner by options. The watcher is
    # following before the run starts, so it cannot miss the items running.
    watcher = subprocess.Popen(
        [sys.executable, "-m", "examples.cli", "watch", batch_id, "--json"],
        cwd=tmp_path,
        env=_env(BATCHKIT_STORAGE=url, BATCHKIT_STORAGE_PREFIX=prefix),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert watcher.stdout is not None
    first = watcher.stdout.readline()
    assert first, "".join(watcher.communicate(timeout=60))
    assert json.loads(first)["state"] == "queued", first
    ran = _python(
        *("-m", "examples.cli", "resume", batch_id, "--plain"),
        *("-c", "2", "--storage", url, "--prefix", prefix),
        cwd=tmp_path,
        BATCHKIT_STUDIO_SPEED="0.3",
    )
    rest = ran.stdout + ran.stderr
    assert ran.returncode == EXIT_FAILED_ITEMS, rest
    out, err = watcher.communicate(timeout=60)
    assert watcher.returncode == EXIT_FAILED_ITEMS, first + out + err
    watched = first + out
    seen = [json.loads(line) for line in watched.splitlines()]
    # It saw the batch while it ran, and then its end, as the runner did.
    assert any(s["counts"]["running"] > 0 for s in seen), seen
    assert seen[-1]["state"] == "completed_with_errors"
    assert seen[-1]["counts"] == {
        "queued": 0,
        "running": 0,
        "succeeded": 3,
        "failed": 1,
        "cancelled": 0,
    }
    # The printed follow-up commands name the store, its password hidden, and the prefix.
    assert f"--prefix {prefix}" in rest
    # Under its own prefix, the batch is not in batchkit's default tables or keys.
    elsewhere = _cli("list", "--json", "--storage", url, "--prefix", other)
    assert elsewhere.exit_code == EXIT_OK
    assert batch_id not in elsewhere.output


def test_a_password_in_the_storage_url_is_not_printed(workdir: Path) -> None:
    from tests.storage.conftest import POSTGRES_URL, require_server

    require_server(POSTGRES_URL, "postgres")
    scheme, _, rest = POSTGRES_URL.partition("://")
    user, _, host = rest.rpartition("@")
    url = f"{scheme}://{user.partition(':')[0]}:s3cret@{host}"  # trust auth: not checked
    prefix = f"cli{os.urandom(3).hex()}_"
    try:
        done = _cli("list", "--storage", url, "--prefix", prefix)
        assert done.exit_code == EXIT_OK, done.output
        assert "s3cret" not in done.output
        assert ":***@" in done.output  # the hint to generate names the store
    finally:
        from tests.storage.conftest import _drop_tables

        anyio.run(_drop_tables, POSTGRES_URL, [prefix])


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["status", "01a2313a-c443-77ea-bef8-99f1385eba9b"], EXIT_NOT_FOUND, "no batch"),
        (["watch", "nope"], EXIT_NOT_FOUND, "no batch"),
        (["list", "--storage", "bogus://x"], EXIT_USAGE, "unknown storage scheme"),
        (["list", "--prefix", "no spaces"], EXIT_USAGE, "table_prefix must be"),
        (["list", "--storage", "postgresql://u:s3cret@db/x"], EXIT_USAGE, "synchronous"),
        (
            ["list", "--storage", "postgresql+asyncpg://u:s3cret@127.0.0.1:1/x"],
            EXIT_NOT_FOUND,
            "cannot open",
        ),
        (["list", "--storage", "redis://:s3cret@127.0.0.1:1/0"], EXIT_NOT_FOUND, "cannot open"),
    ],
)
def test_a_bad_batch_id_or_storage_says_so_and_exits_with_its_code(
    workdir: Path, args: list[str], code: int, message: str
) -> None:
    done = CliRunner().invoke(app, args)
    assert done.exit_code == code, done.output
    assert message in done.output
    assert "s3cret" not in done.output
    assert "Traceback" not in done.output
