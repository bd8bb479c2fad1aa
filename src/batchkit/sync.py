"""`SyncBatchRunner`: the `BatchRunner` for synchronous code (Django, Flask, scripts).

Every call is carried to one event loop that runs in a thread of its own, one per process,
and waits there for the async `BatchRunner` to answer: there is one implementation, and a
storage's connections always live on the loop that opened them. Any thread may call;
a process that forks (a WSGI server that imports the app, then forks its workers) gets a
loop and a storage of its own in the child on its first call.
"""

from __future__ import annotations

import asyncio
import atexit
import contextvars
import logging
import os
import threading
import weakref
from concurrent.futures import Future
from contextlib import suppress
from typing import TYPE_CHECKING, Any, Self, TypeVar

import anyio
from anyio.from_thread import BlockingPortal

from ._secrets import redact
from .runner import BatchRunner

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Collection, Iterable, Iterator, Mapping
    from types import TracebackType

    from anyio.streams.memory import MemoryObjectReceiveStream

    from .models import Batch, BatchStatus, Item, ItemSpec, ItemState
    from .protocols import Generator, MetadataFilter, Storage, SyncGenerator

__all__ = ["SyncBatchRunner"]

logger = logging.getLogger(__name__)

T = TypeVar("T")


class SyncBatchRunner:
    """A `BatchRunner` for synchronous code: the same methods, without ``await``.

    ``storage`` is a storage URL (``sqlite+aiosqlite:///app.db``,
    ``postgresql+asyncpg://...``, ``redis://...``) or a storage object not yet opened. It is
    opened on the first call, in the process that makes it, and closed by `close` (or at
    the end of a ``with`` block, or when the process exits). Nothing connects before the
    first call: make the runner where the app is configured (a Django settings module, a
    Flask app factory) and share it.

    Calls may come from any thread at once, as a WSGI server's do. They run on one
    event loop per process, in a thread batchkit starts (a daemon thread named
    ``batchkit-loop``). A process forked after the runner was used (gunicorn's
    ``--preload``) opens the storage afresh in the child on its first call, from the
    URL; the parent's connections are left to the parent. A storage object opened
    before a fork cannot be opened again: pass a URL to share a runner across forks.

    Args:
        storage: a storage URL, or a storage object (`SQLStorage`, `RedisStorage`,
            `MemoryStorage`) not yet opened.
        generator: what `run` calls for each item; `None` when workers run the items
            (`python -m batchkit worker`), as they do behind a web app.
        prefix: with a URL, what keeps these batches apart in a shared database (see
            `open_storage`).
        storage_options: with a URL, the storage class's own options
            (``{"create_schema": False}``, ``{"finished_ttl": 86400}``...), given to
            `open_storage` in every process that opens it.
        options: `BatchRunner`'s keyword options (``limits=``, ``retry=``,
            ``concurrency=``...).

    Raises:
        InvalidStorageURL: the URL names no storage batchkit knows.
        MissingDependency: the storage's extra is not installed.
        TypeError: an option `BatchRunner` does not take, or ``prefix`` or
            ``storage_options`` with a storage object.
    """

    def __init__(
        self,
        storage: Storage | str,
        generator: Generator | SyncGenerator | None = None,
        *,
        prefix: str | None = None,
        storage_options: Mapping[str, Any] | None = None,
        **options: Any,
    ) -> None:
        from .storage import open_storage

        self._storage_options = dict(storage_options or {})
        if isinstance(storage, str):
            self._url: str | None = storage
            self._prefix = prefix
            # The URL and the options checked here, at once.
            made = open_storage(storage, prefix=prefix, **self._storage_options)
        else:
            if prefix is not None or storage_options is not None:
                raise TypeError(
                    "prefix and storage_options are for a storage URL; a storage object has its own"
                )
            self._url = None
            made = storage
        self._generator = generator
        self._options = options
        # Checked now, with the storage made here; the runner used is made on the loop.
        self._runner = BatchRunner(made, generator or _no_generator, **options)
        self._lock = threading.Lock()
        self._pid = os.getpid()
        self._loop: _Loop | None = None
        self._opened = False
        self._closed = False
        _open_runners.add(self)

    def __repr__(self) -> str:
        return f"SyncBatchRunner(storage={redact(repr(self._runner.storage))})"

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    @property
    def runner(self) -> BatchRunner:
        """The async `BatchRunner` this one calls (for its settings; await nothing on it
        outside `call`)."""
        return self._runner

    # -- the loop --------------------------------------------------------------------------

    def call(self, function: Callable[[BatchRunner], Awaitable[T]]) -> T:
        """Run ``function(runner)`` on the runner's loop and wait for its result.

        For what the methods here do not cover: ``runner.call(lambda r: r.item(id,
        key))`` is `item`. ``function`` gets the async `BatchRunner` and returns an
        awaitable; it must not block.

        Raises:
            RuntimeError: the runner is closed, or the call comes from its own loop (a
                generator of `run`: await the async runner there instead).
        """
        loop, runner = self._ready_loop()
        if threading.current_thread() is loop.thread:
            raise RuntimeError(
                f"{self!r} was called from its own event loop (a generator of its `run`?): "
                "await the async runner there instead"
            )
        event_loop = loop.event_loop
        assert event_loop is not None

        # Straight onto the loop, as a task of its own in a copy of the caller's context
        # (a request's trace context, say, so that a submit's span is the request's
        # child), the answer handed back through a future: a portal's call, which does
        # the same, adds a task group's task and its cancel scope to every call.
        context = contextvars.copy_context()
        answer: Future[T] = Future()

        def hand_back(task: asyncio.Task[T]) -> None:
            if task.cancelled():
                answer.set_exception(RuntimeError(f"{self!r}: the call was cancelled"))
            elif (error := task.exception()) is not None:
                answer.set_exception(error)
            else:
                answer.set_result(task.result())

        async def bound() -> T:
            return await function(runner)

        def start() -> None:
            task = event_loop.create_task(bound(), context=context)
            task.add_done_callback(hand_back)

        event_loop.call_soon_threadsafe(start)
        while True:
            try:
                return answer.result(timeout=_LIVENESS_CHECK)
            except TimeoutError:
                # A loop stopped by a close in another thread may never start the call.
                if not loop.thread.is_alive():
                    raise RuntimeError(f"{self!r} was closed during the call") from None

    def close(self) -> None:
        """Close the storage opened here (a storage object given is closed too), and stop
        the loop when no other runner uses it. Closing twice does nothing."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            _open_runners.discard(self)
            loop, self._loop = self._loop, None
            if loop is None or self._pid != os.getpid():
                return
            try:
                if self._opened:
                    loop.portal.call(self._runner.storage.aclose)
            finally:
                loop.release()

    def _ready(self) -> tuple[BlockingPortal, BatchRunner]:
        """This process's portal and the runner, its storage opened, opening it first."""
        loop, runner = self._ready_loop()
        return loop.portal, runner

    def _ready_loop(self) -> tuple[_Loop, BatchRunner]:
        """This process's loop and the runner, its storage opened, opening it first."""
        with self._lock:
            if self._closed:
                raise RuntimeError(f"{self!r} is closed")
            if self._pid != os.getpid():
                self._start_afresh()
            if self._loop is None:
                self._loop = _Loop.acquire()
            if not self._opened:
                self._loop.portal.call(self._runner.storage.__aenter__)
                self._opened = True
            return self._loop, self._runner

    def _start_afresh(self) -> None:
        """In a forked child: forget the parent's loop and storage, make the storage
        again from the URL."""
        if self._opened and self._url is None:
            raise RuntimeError(
                "this SyncBatchRunner's storage was opened in another process before this "
                "one was forked from it; give SyncBatchRunner a storage URL to share it "
                "across forks (each process then opens its own)"
            )
        from .storage import open_storage

        # The parent's objects are left as they are: closing them here would close the
        # parent's connections too.
        _inherited.append((self._loop, self._runner))
        self._loop = None
        if self._opened:
            assert self._url is not None
            made = open_storage(self._url, prefix=self._prefix, **self._storage_options)
            self._runner = BatchRunner(made, self._generator or _no_generator, **self._options)
            self._opened = False
        self._pid = os.getpid()

    # -- submitting and running ------------------------------------------------------------

    def submit(
        self,
        items: Iterable[ItemSpec | Mapping[str, Any] | str],
        *,
        metadata: Mapping[str, Any] | None = None,
        idempotency_key: str | None = None,
        max_failures: int | None = None,
    ) -> Batch:
        """`BatchRunner.submit`: validate and persist a batch, and return at once."""
        items = list(items)  # read here, in the caller's thread
        return self.call(
            lambda r: r.submit(
                items,
                metadata=metadata,
                idempotency_key=idempotency_key,
                max_failures=max_failures,
            )
        )

    def run(self, batch_id: str) -> BatchStatus:
        """`BatchRunner.run`: run the batch's items here until it is terminal.

        Raises:
            TypeError: the runner was made without a generator.
        """
        if self._generator is None:
            raise TypeError(
                "this SyncBatchRunner has no generator: its items are run by workers "
                "(python -m batchkit worker); give generator= to run them here"
            )
        return self.call(lambda r: r.run(batch_id))

    # -- reading ---------------------------------------------------------------------------

    def status(self, batch_id: str) -> BatchStatus:
        """`BatchRunner.status`: the batch's derived state, counts and progress."""
        return self.call(lambda r: r.status(batch_id))

    def items(
        self,
        batch_id: str,
        *,
        state: ItemState | str | Collection[ItemState | str] | None = None,
        limit: int = 100,
        after: int | None = None,
    ) -> list[Item]:
        """`BatchRunner.items`: a page of the batch's items in submission order."""
        return self.call(lambda r: r.items(batch_id, state=state, limit=limit, after=after))

    def item(self, batch_id: str, key: str) -> Item:
        """`BatchRunner.item`: one item of a batch, by key."""
        return self.call(lambda r: r.item(batch_id, key))

    def batches(
        self,
        *,
        metadata: MetadataFilter | None = None,
        limit: int = 50,
        before: str | None = None,
    ) -> list[BatchStatus]:
        """`BatchRunner.batches`: batches newest first, with their status."""
        return self.call(lambda r: r.batches(metadata=metadata, limit=limit, before=before))

    def watch(self, batch_id: str, *, poll_interval: float | None = None) -> Iterator[BatchStatus]:
        """`BatchRunner.watch`, as an iterator: the batch's status now and after every
        change, ending at a terminal state.

        It is a generator: leave the loop (``break``) or call its ``close()``, and the
        watch ends on the runner's loop too. Each ``next`` waits for the next change.

        Raises:
            BatchNotFound: no batch has this id (when iterating starts).
        """
        watch = _Watch(self, batch_id, poll_interval)
        try:
            yield from watch
        finally:
            watch.close()

    # -- acting on a batch -----------------------------------------------------------------

    def cancel(self, batch_id: str, *, reason: str | None = None) -> BatchStatus:
        """`BatchRunner.cancel`: cancel the batch's items not yet finished."""
        return self.call(lambda r: r.cancel(batch_id, reason=reason))

    def retry_failed(self, batch_id: str, *, idempotency_key: str | None = None) -> Batch:
        """`BatchRunner.retry_failed`: a new batch of exactly the failed items."""
        return self.call(lambda r: r.retry_failed(batch_id, idempotency_key=idempotency_key))

    def delete(self, batch_id: str) -> bool:
        """`BatchRunner.delete`: delete a batch and its items; `False` if there was none."""
        return self.call(lambda r: r.delete(batch_id))


class _Watch:
    """The iterator of `SyncBatchRunner.watch`: a task on the loop sends each status
    through a stream of one place, so the loop runs no further ahead than the reader."""

    def __init__(self, owner: SyncBatchRunner, batch_id: str, poll_interval: float | None):
        self._owner = owner
        self._batch_id = batch_id
        self._poll_interval = poll_interval
        self._portal: BlockingPortal | None = None
        self._receive: MemoryObjectReceiveStream[tuple[BatchStatus | None, Exception | None]]
        self._cancel: anyio.CancelScope | None = None
        self._done = False

    def __iter__(self) -> Self:
        return self

    def __next__(self) -> BatchStatus:
        if self._done:
            raise StopIteration
        if self._portal is None:
            self._start()
        assert self._portal is not None
        try:
            status, error = self._portal.call(self._receive.receive)
        except anyio.EndOfStream:
            self.close()
            raise StopIteration from None
        if error is not None:
            self.close()
            raise error
        assert status is not None
        return status

    def _start(self) -> None:
        portal, runner = self._owner._ready()
        send, receive = anyio.create_memory_object_stream[
            tuple["BatchStatus | None", "Exception | None"]
        ](0)
        self._portal = portal
        self._receive = receive
        batch_id, interval = self._batch_id, self._poll_interval

        async def watch(scope: anyio.CancelScope) -> None:
            with scope:
                async with send:
                    try:
                        async for status in runner.watch(batch_id, poll_interval=interval):
                            await send.send((status, None))
                    except Exception as exc:  # handed to the reader, raised in its thread
                        await send.send((None, exc))

        self._cancel = portal.call(anyio.CancelScope)
        portal.start_task_soon(watch, self._cancel)

    def close(self) -> None:
        """Stop watching: the task on the loop ends."""
        if self._done:
            return
        self._done = True
        portal, scope = self._portal, self._cancel
        if portal is None or scope is None:
            return
        try:
            portal.call(scope.cancel)
            portal.call(self._receive.close)
        except RuntimeError:  # the loop has stopped: nothing runs there any more
            self._receive.close()


#: How often a call waiting for its answer checks that the loop's thread still runs (s).
_LIVENESS_CHECK = 1.0


class _Loop:
    """This process's event loop, in a daemon thread of its own (``batchkit-loop``), shared
    by its runners and stopped when the last one closes.

    A daemon thread: a host that exits without closing its runners is not kept waiting
    for this one (its runners are closed at exit, while the thread still runs).
    """

    _current: _Loop | None = None
    _guard = threading.Lock()

    def __init__(self) -> None:
        started: Future[BlockingPortal] = Future()
        self.event_loop: asyncio.AbstractEventLoop | None = None

        async def serve() -> None:
            self.event_loop = asyncio.get_running_loop()
            async with BlockingPortal() as portal:
                started.set_result(portal)
                await portal.sleep_until_stopped()

        def run() -> None:
            try:
                anyio.run(serve)
            except BaseException as exc:  # the loop could not start: said in the caller
                if not started.done():
                    started.set_exception(exc)

        self.thread = threading.Thread(target=run, name="batchkit-loop", daemon=True)
        self.thread.start()
        self.portal = started.result()
        self.users = 0
        self.pid = os.getpid()

    @classmethod
    def forsake_inherited(cls) -> None:
        """In a child just forked: leave the parent's loop to the parent.

        The child holds a copy of the parent's loop and of every connection on it, and
        shares the loop's polling set (epoll) with the parent. A copied connection that
        is finalized (at the child's exit, say) would take its socket out of that set,
        the parent's own, and the parent's next call on it would wait forever. Marked
        closed, the copy makes every such change a no-op; nothing else of the parent's is
        touched, and the copies are kept from the collector.
        """
        loop = cls._current
        cls._current = None
        cls._guard = threading.Lock()  # the parent's may have been held by another thread
        if loop is None:
            return
        _inherited.append(loop)
        if isinstance(loop.event_loop, asyncio.BaseEventLoop):
            # No public way to close a loop without unregistering its sockets: the flag
            # `is_closed()` reads, which every change to the polling set checks first.
            loop.event_loop._closed = True  # type: ignore[attr-defined]

    @classmethod
    def acquire(cls) -> _Loop:
        with cls._guard:
            loop = cls._current
            if loop is None or loop.pid != os.getpid():
                loop = cls._current = cls()
            loop.users += 1
            return loop

    def release(self) -> None:
        with _Loop._guard:
            self.users -= 1
            if self.users > 0:
                return
            if _Loop._current is self:
                _Loop._current = None
        with suppress(RuntimeError):  # stopped already
            self.portal.call(self.portal.stop, True)
        self.thread.join()


#: What a forked child inherited from its parent, kept from the collector: finalizing a
#: connection would close it in the parent too.
_inherited: list[object] = []
#: Runners not yet closed, closed when the process exits.
_open_runners: weakref.WeakSet[SyncBatchRunner] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    _Loop.forsake_inherited()
    for runner in list(_open_runners):
        # A lock another thread of the parent held at the fork stays held in the child.
        runner._lock = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def _no_generator(ctx: object, /) -> None:
    raise TypeError("this SyncBatchRunner has no generator")


@atexit.register
def _close_all() -> None:
    for runner in list(_open_runners):
        try:
            runner.close()
        except Exception:
            logger.warning("a SyncBatchRunner did not close cleanly at exit", exc_info=True)
