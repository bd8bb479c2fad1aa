"""`SyncBatchRunner` on the in-process store and on SQLite files: the async runner's
methods without ``await``, from any thread, through forks and exits."""

from __future__ import annotations

import contextvars
import os
import subprocess
import sys
import textwrap
import threading
import time
from typing import TYPE_CHECKING

import pytest

from batchkit import (
    BatchNotFound,
    BatchState,
    InvalidBatch,
    InvalidStorageURL,
    ItemContext,
    ItemState,
    MemoryStorage,
    SyncBatchRunner,
)
from tests._forking import in_child

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path


def _loop_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "batchkit-loop"]


#: The loop threads that were running when the test began: another module's runner, in
#: the same test process, may keep the process's loop on (as a host's would).
_BEFORE: list[threading.Thread] = []


def _new_loops() -> list[threading.Thread]:
    """Loop threads the test started and left running."""
    return [t for t in _loop_threads() if t not in _BEFORE]


@pytest.fixture(autouse=True)
def _no_loop_left() -> Iterator[None]:
    _BEFORE[:] = _loop_threads()
    yield
    assert _new_loops() == [], "a test left batchkit's loop running"


def _render(ctx: ItemContext) -> dict[str, str]:
    if ctx.key.startswith("bad"):
        raise ValueError(f"cannot render {ctx.key}")
    return {"video": f"{ctx.key}.mp4"}


def test_the_async_runners_methods_without_await() -> None:
    with SyncBatchRunner(MemoryStorage(), _render) as runner:
        batch = runner.submit(
            ["a", {"key": "bad-1", "payload": {"n": 1}}, "c"], metadata={"owner": "ada"}
        )
        assert runner.status(batch.id).state is BatchState.QUEUED
        done = runner.run(batch.id)
        assert done.state is BatchState.COMPLETED_WITH_ERRORS
        assert done.counts[ItemState.FAILED] == 1
        items = runner.items(batch.id)
        assert [(i.key, i.state) for i in items] == [
            ("a", ItemState.SUCCEEDED),
            ("bad-1", ItemState.FAILED),
            ("c", ItemState.SUCCEEDED),
        ]
        assert runner.items(batch.id, state="failed")[0].payload == {"n": 1}
        assert runner.items(batch.id, limit=1, after=items[0].position)[0].key == "bad-1"
        assert runner.item(batch.id, "a").result == {"video": "a.mp4"}
        failed = runner.item(batch.id, "bad-1")
        assert failed.error is not None
        assert failed.error.type == "ValueError"
        assert [s.batch_id for s in runner.batches(metadata={"owner": "ada"})] == [batch.id]
        assert runner.batches(metadata={"owner": "bob"}) == []
        retry = runner.retry_failed(batch.id)
        assert retry.parent_id == batch.id
        assert runner.retry_failed(batch.id) == retry  # a double click retries once
        assert [i.key for i in runner.items(retry.id)] == ["bad-1"]
        cancelled = runner.cancel(retry.id, reason="not needed")
        assert cancelled.state is BatchState.CANCELLED
        assert cancelled.cancel_reason == "not needed"
        assert runner.delete(retry.id) is True
        assert runner.delete(retry.id) is False


def test_errors_come_out_as_the_async_runner_raises_them() -> None:
    with SyncBatchRunner(MemoryStorage()) as runner:
        with pytest.raises(BatchNotFound):
            runner.status("not-a-batch")
        with pytest.raises(InvalidBatch, match="duplicate"):
            runner.submit(["a", "a"])
        with pytest.raises(ValueError, match="limit"):
            runner.items(runner.submit(["a"]).id, limit=0)
        assert runner.batches()[0].total == 1  # the refused submit wrote nothing


def test_without_a_generator_it_submits_and_reads_but_does_not_run() -> None:
    with SyncBatchRunner(MemoryStorage()) as runner:
        batch = runner.submit(["a"])
        with pytest.raises(TypeError, match=r"no generator.*python -m batchkit worker"):
            runner.run(batch.id)
        assert runner.status(batch.id).state is BatchState.QUEUED


def test_bad_arguments_are_refused_when_it_is_made() -> None:
    with pytest.raises(InvalidStorageURL):
        SyncBatchRunner("not a url")
    with pytest.raises(TypeError, match="are for a storage URL"):
        SyncBatchRunner(MemoryStorage(), prefix="app_")
    with pytest.raises(TypeError, match="are for a storage URL"):
        SyncBatchRunner(MemoryStorage(), storage_options={"create_schema": False})
    with pytest.raises(TypeError):
        SyncBatchRunner("sqlite+aiosqlite:///x.db", storage_options={"nonsense": 1})
    with pytest.raises(TypeError):
        SyncBatchRunner(MemoryStorage(), nonsense=1)
    with pytest.raises(ValueError, match="concurrency"):
        SyncBatchRunner(MemoryStorage(), _render, concurrency=0)
    assert _new_loops() == []  # nothing started for what was refused


def test_nothing_connects_before_the_first_call_and_repr_hides_the_password() -> None:
    # Nothing listens on port 1: making the runner must not try.
    runner = SyncBatchRunner("postgresql+asyncpg://app:s3cret-pw@127.0.0.1:1/app")
    try:
        assert "s3cret-pw" not in repr(runner)
        assert _new_loops() == []
    finally:
        runner.close()


def test_one_loop_for_every_runner_of_the_process_stopped_after_the_last() -> None:
    first = SyncBatchRunner(MemoryStorage())
    second = SyncBatchRunner(MemoryStorage())
    first.submit(["a"])
    second.submit(["b"])
    assert len(_loop_threads()) == 1  # this process's one loop (another's runner's, maybe)
    first.close()
    assert second.batches()[0].total == 1  # still served
    second.close()
    assert _new_loops() == []  # stopped, unless a runner of another module still uses it
    # A runner made after that starts the loop again.
    with SyncBatchRunner(MemoryStorage()) as third:
        assert third.submit(["c"]).total == 1


def test_a_closed_runner_says_so_and_closing_again_does_nothing() -> None:
    storage = MemoryStorage()
    runner = SyncBatchRunner(storage)
    runner.submit(["a"])
    runner.close()
    runner.close()
    with pytest.raises(RuntimeError, match="closed"):
        runner.status("x")
    with pytest.raises(RuntimeError, match="closed"):
        runner.submit(["b"])


def test_threads_share_one_runner() -> None:
    errors: list[BaseException] = []
    made: list[str] = []
    with SyncBatchRunner(MemoryStorage()) as runner:

        def request(n: int) -> None:
            try:
                for k in range(20):
                    batch = runner.submit([f"t{n}-{k}"])
                    assert runner.status(batch.id).total == 1
                    made.append(batch.id)
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=request, args=(n,)) for n in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
        assert errors == []
        assert len(set(made)) == 160


def test_watch_is_an_iterator_that_ends_at_a_terminal_state() -> None:
    def slow(ctx: ItemContext) -> None:
        time.sleep(0.02)

    with SyncBatchRunner(MemoryStorage(), slow) as runner:
        batch = runner.submit([f"i{n}" for n in range(5)])
        ran = threading.Thread(target=runner.run, args=(batch.id,))
        ran.start()
        seen = list(runner.watch(batch.id, poll_interval=0.05))
        ran.join(timeout=30)
        assert seen[-1].state is BatchState.COMPLETED
        assert all(not s.is_terminal for s in seen[:-1])
        done = [s.counts[ItemState.SUCCEEDED] for s in seen]
        assert done == sorted(done)  # never backwards
        assert list(runner.watch(batch.id)) == [seen[-1]]  # a finished batch: once


def test_a_watch_left_early_stops_on_the_loop() -> None:
    with SyncBatchRunner(MemoryStorage()) as runner:
        batch = runner.submit(["a"])
        for status in runner.watch(batch.id, poll_interval=0.05):
            assert status.state is BatchState.QUEUED
            break  # nothing will change: leave at once
        watch = runner.watch(batch.id, poll_interval=0.05)
        assert next(watch).state is BatchState.QUEUED
        watch.close()  # type: ignore[attr-defined]
        with pytest.raises(StopIteration):
            next(watch)
        with pytest.raises(BatchNotFound):
            next(runner.watch("unknown"))
        # One more left waiting when the runner closes: the loop stops all the same
        # (the fixture checks that no loop is left).
        left = runner.watch(batch.id)
        assert next(left).total == 1


def test_a_generator_that_calls_the_sync_runner_fails_its_item_clearly() -> None:
    # The generator runs on the runner's own loop: a blocking call there would wait for
    # itself forever. It is refused, and the item fails with the reason.
    holder: list[SyncBatchRunner] = []

    async def recursive(ctx: ItemContext) -> None:
        holder[0].status(ctx.batch_id)

    with SyncBatchRunner(MemoryStorage(), recursive, item_timeout=10) as runner:
        holder.append(runner)
        batch = runner.submit(["a"])
        assert runner.run(batch.id).state is BatchState.FAILED
        error = runner.item(batch.id, "a").error
        assert error is not None
        assert error.type == "RuntimeError"


def test_a_call_sees_the_callers_context_variables_and_leaves_them_as_they_were() -> None:
    # A web request's trace context (OpenTelemetry keeps it in a context variable) goes
    # with the call: the submit's span is the request's child, as with the async runner.
    request: contextvars.ContextVar[str] = contextvars.ContextVar("request", default="none")
    seen: dict[str, str] = {}

    async def read(runner: object) -> str:
        seen["inside"] = request.get()
        request.set("changed inside")  # the caller's own value stays as it was
        return request.get()

    with SyncBatchRunner(MemoryStorage(), _render) as runner:
        answers: dict[str, str] = {}

        def in_thread(name: str) -> None:
            request.set(name)
            answers[name] = runner.call(read)
            assert request.get() == name

        threads = [threading.Thread(target=in_thread, args=(f"req-{n}",)) for n in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert answers == {f"req-{n}": "changed inside" for n in range(4)}
        assert runner.call(read) == "changed inside"
        assert seen["inside"] == "none"  # this thread set nothing
        assert request.get() == "none"


def test_a_submit_is_a_child_of_the_callers_span(monkeypatch: pytest.MonkeyPatch) -> None:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    import batchkit.runner

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    # This process's tracer provider, for batchkit alone (the global one is set once).
    monkeypatch.setattr(batchkit.runner, "tracer", lambda: provider.get_tracer("batchkit"))
    app = provider.get_tracer("app")
    with (
        SyncBatchRunner(MemoryStorage(), _render) as runner,
        app.start_as_current_span("POST /videos") as request,
    ):
        runner.submit(["a"])
    (submit,) = [s for s in exporter.get_finished_spans() if s.name == "batchkit submit"]
    assert submit.parent is not None
    assert submit.parent.span_id == request.get_span_context().span_id


def test_a_call_waiting_when_another_thread_closes_the_runner_is_told_so() -> None:
    # In a process of its own: the loop stops with its last runner, and here no other
    # module's runner keeps it on.
    script = textwrap.dedent(
        """
        import threading, time, anyio
        from batchkit import MemoryStorage, SyncBatchRunner

        async def render(ctx):
            return None

        runner = SyncBatchRunner(MemoryStorage(), render)
        runner.submit(["a"])  # opens the storage and starts the loop
        errors = []

        def waits():
            try:
                runner.call(lambda _: anyio.sleep(60))
            except BaseException as exc:
                errors.append(exc)

        thread = threading.Thread(target=waits, daemon=True)
        thread.start()
        time.sleep(0.2)
        runner.close()
        thread.join(10)
        print("waiting" if thread.is_alive() else [type(e).__name__ for e in errors])
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    # "waiting": the call still waited, 10 s after its loop stopped.
    assert done.stdout.strip() == "['RuntimeError']", done.stdout


def test_storage_options_reach_the_storage_in_every_process(tmp_path: Path) -> None:
    from batchkit import SchemaVersionMismatch

    url = f"sqlite+aiosqlite:///{tmp_path / 'app.db'}"
    # Without tables, a storage told not to create them says so on the first call...
    runner = SyncBatchRunner(url, storage_options={"create_schema": False})
    with pytest.raises(SchemaVersionMismatch):
        runner.batches()
    runner.close()
    with SyncBatchRunner(url) as making:  # ...which, by default, makes them
        making.submit(["a"])
    with SyncBatchRunner(url, storage_options={"create_schema": False}) as runner:
        runner.batches()  # opened in this process

        def child() -> None:
            assert len(runner.batches()) == 1  # opened again in the child, the same way
            runner.close()

        assert in_child(child) == 0


def test_a_url_storage_is_opened_on_the_first_call(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'app.db'}"
    with SyncBatchRunner(url, _render) as runner:
        batch = runner.submit(["a", "b"])
        assert runner.run(batch.id).state is BatchState.COMPLETED
    with SyncBatchRunner(url) as again:  # kept in the file
        assert again.status(batch.id).state is BatchState.COMPLETED


@pytest.mark.skipif(not hasattr(os, "fork"), reason="os.fork is POSIX only")
def test_a_forked_child_opens_its_own_storage_from_the_url(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'app.db'}"
    with SyncBatchRunner(url) as runner:
        parent_batch = runner.submit(["p"])  # used, so open, before the fork

        def child() -> None:
            batch = runner.submit(["c1", "c2"])
            assert runner.status(batch.id).total == 2
            assert runner.status(parent_batch.id).total == 1
            runner.close()

        assert in_child(child) == 0
        assert in_child(child) == 0
        # The parent's runner still works, on its own loop and connections.
        assert runner.status(parent_batch.id).total == 1
        assert len(runner.batches()) == 3


@pytest.mark.skipif(not hasattr(os, "fork"), reason="os.fork is POSIX only")
def test_a_storage_object_opened_before_a_fork_is_refused_in_the_child() -> None:
    with SyncBatchRunner(MemoryStorage()) as runner:
        runner.submit(["a"])

        def child() -> None:
            with pytest.raises(RuntimeError, match="give SyncBatchRunner a storage URL"):
                runner.batches()

        assert in_child(child) == 0


@pytest.mark.skipif(not hasattr(os, "fork"), reason="os.fork is POSIX only")
def test_a_runner_made_before_a_fork_and_not_yet_used_works_in_the_child() -> None:
    # gunicorn --preload: the app (and its runner) made in the parent, used in children.
    runner = SyncBatchRunner(MemoryStorage())

    def child() -> None:
        assert runner.submit(["a"]).total == 1
        runner.close()

    assert in_child(child) == 0
    runner.close()


def test_a_process_that_never_closes_its_runner_exits_cleanly(tmp_path: Path) -> None:
    script = textwrap.dedent(
        f"""
        from batchkit import SyncBatchRunner
        runner = SyncBatchRunner("sqlite+aiosqlite:///{tmp_path / "app.db"}")
        batch = runner.submit(["a"])
        print(runner.status(batch.id).state.value)
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "queued"
    assert done.stderr == ""


@pytest.mark.skipif(not hasattr(os, "fork"), reason="os.fork is POSIX only")
def test_a_fork_while_another_thread_opens_the_runner_does_not_hang_the_child(
    tmp_path: Path,
) -> None:
    # Another thread of the parent is inside the runner (opening its storage, say) at the
    # moment of the fork: the child inherits that thread's lock held, but not the thread.
    runner = SyncBatchRunner(f"sqlite+aiosqlite:///{tmp_path / 'app.db'}")
    inside, leave = threading.Event(), threading.Event()

    def busy() -> None:
        with runner._lock:
            inside.set()
            leave.wait(timeout=30)

    holder = threading.Thread(target=busy)
    holder.start()
    try:
        assert inside.wait(timeout=10)

        def child() -> None:
            assert runner.submit(["a"]).total == 1
            runner.close()

        assert in_child(child) == 0
    finally:
        leave.set()
        holder.join(timeout=10)
        runner.close()
