"""Helpers shared by the runner tests: a counting storage wrapper and bounded waits."""

from __future__ import annotations

import functools
import inspect
from collections import Counter
from typing import TYPE_CHECKING, Any

import anyio

from batchkit import MemoryStorage

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from batchkit import BatchRunner, Item

__all__ = ["CountingStorage", "all_items", "wait_until"]


class CountingStorage:
    """A real storage: every call goes to a `MemoryStorage`, counted per method name.

    ``before`` maps a method name to an async callable awaited (with the call's
    arguments) before the call is passed on, so a test can hold a call at a chosen point.
    """

    def __init__(self, inner: MemoryStorage | None = None) -> None:
        self.inner = inner if inner is not None else MemoryStorage()
        self.calls: Counter[str] = Counter()
        self.before: dict[str, Callable[..., Awaitable[None]]] = {}

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self.inner, name)
        if not callable(attr):
            return attr
        if inspect.iscoroutinefunction(attr):

            @functools.wraps(attr)
            async def counted_async(*args: Any, **kwargs: Any) -> Any:
                self.calls[name] += 1
                hook = self.before.get(name)
                if hook is not None:
                    await hook(*args, **kwargs)
                return await attr(*args, **kwargs)

            return counted_async

        @functools.wraps(attr)
        def counted(*args: Any, **kwargs: Any) -> Any:
            self.calls[name] += 1
            return attr(*args, **kwargs)

        return counted

    async def __aenter__(self) -> CountingStorage:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.inner.aclose()


async def all_items(runner: BatchRunner, batch_id: str) -> list[Item]:
    """Every item of a batch, in submission order."""
    return await runner.items(batch_id, limit=1000)


async def wait_until(
    check: Callable[[], Awaitable[bool]], *, timeout: float = 3.0, interval: float = 0.01
) -> None:
    """Poll ``check`` until it is true; fail the test after ``timeout`` seconds."""
    with anyio.fail_after(timeout):
        # Polling on purpose: what is awaited is the store's state, which has no event.
        while not await check():  # noqa: ASYNC110
            await anyio.sleep(interval)
