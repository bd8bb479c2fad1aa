"""The keeper: heartbeats and throttled progress writes for the item a slot is running."""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import anyio
import anyio.lowlevel

from .exceptions import StorageError

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from ._grouping import Group
    from .context import _Reporter
    from .protocols import Lease, LeaseStatus, Storage

__all__ = ["Keeper", "KeeperSettings"]

logger = logging.getLogger("batchkit.runner")


@dataclass(frozen=True, slots=True)
class KeeperSettings:
    """What a keeper needs to know of the runner it serves."""

    #: How long a heartbeat or a progress write renews the lease for.
    lease_seconds: float
    #: Seconds between two heartbeats (a progress write counts as one).
    heartbeat_interval: float
    #: At most one progress write per item per this many seconds.
    progress_interval: float
    #: Whether the generator is async: a sync one runs in a thread, which cannot wake
    #: the keeper when it reports progress, so the keeper looks every interval.
    generator_is_async: bool


class Keeper:
    """Heartbeats and throttled progress writes for the item a slot is running.

    Args:
        storage: the store the item was claimed from.
        settings: the runner's lease and intervals.
    """

    def __init__(self, storage: Storage, settings: KeeperSettings) -> None:
        self._storage = storage
        self._settings = settings
        self.lease: Lease | None = None
        self.reporter: _Reporter | None = None
        self.scope: anyio.CancelScope | None = None
        self.lost = False
        self.cancelled = False
        self._idle = anyio.Event()
        #: The item this slot ran last, and when it ended (what a blocked loop reports).
        self.recent: Lease | None = None
        self.recent_end = -math.inf
        #: The slot's group commit, if it groups: written by ``flush_group`` when the item
        #: running now keeps what it owes waiting past the group's window.
        self.group: Group | None = None
        self.flush_group: Callable[[], Awaitable[None]] | None = None
        #: The running attempt's span (`_tracing`), ended once its outcome is decided.
        self.span: Any = None
        #: The progress the item reported last and that was not written when it ended.
        self.unwritten: tuple[float, str | None] | None = None

    def begin(self, lease: Lease, reporter: _Reporter, scope: anyio.CancelScope) -> None:
        self.lease, self.reporter, self.scope = lease, reporter, scope
        self.lost = self.cancelled = False
        self._idle.set()

    def cancel_now(self) -> None:
        """Stop the running item as cancelled (its batch was just cancelled here)."""
        if self.reporter is not None and self.scope is not None:
            self.reporter.cancel_requested = True
            self.cancelled = True
            self.scope.cancel()

    def end(self) -> None:
        self.recent, self.recent_end = self.lease, time.monotonic()
        self.unwritten = None if self.reporter is None else self.reporter.pending
        if self.reporter is not None and self.reporter.wake is not None:
            self.reporter.wake.set()  # the keeper may be asleep on the finished item
        self.lease = self.reporter = self.scope = None
        self._idle = anyio.Event()

    async def run(self) -> None:
        settings, storage = self._settings, self._storage
        while True:
            await self._idle.wait()
            lease, reporter, scope = self.lease, self.reporter, self.scope
            if lease is None or reporter is None or scope is None:
                await anyio.lowlevel.checkpoint()
                continue
            last_write = -math.inf
            begun = anyio.current_time()
            next_beat = begun + settings.heartbeat_interval
            group = self.group
            while self.lease is lease:
                now = anyio.current_time()
                due = next_beat
                if group is not None and group.pending():
                    group_due = min(group.since, begun) + group.window
                    if now >= group_due:
                        await self._flush_group(lease)
                        continue
                    due = min(due, group_due)
                if reporter.pending is not None:
                    due = min(due, last_write + settings.progress_interval)
                elif not settings.generator_is_async:
                    due = min(due, now + settings.progress_interval)  # a thread cannot wake us
                if due > now:
                    reporter.wake = anyio.Event()
                    with anyio.move_on_after(due - now):
                        await reporter.wake.wait()
                    reporter.wake = None
                    if self.lease is not lease:
                        break
                    now = anyio.current_time()
                status: LeaseStatus | None = None
                pending = reporter.pending
                try:
                    if pending is not None and now >= last_write + settings.progress_interval:
                        reporter.pending = None
                        last_write = now
                        next_beat = now + settings.heartbeat_interval
                        # Shielded: cancelling a driver mid-write (the item ended meanwhile)
                        # can leave its connection half-closed; the write is short anyway.
                        with anyio.CancelScope(shield=True):
                            status = await storage.record_progress(
                                lease, pending[0], pending[1], lease_seconds=settings.lease_seconds
                            )
                    elif now >= next_beat:
                        next_beat = now + settings.heartbeat_interval
                        with anyio.CancelScope(shield=True):
                            status = await storage.heartbeat(
                                lease, lease_seconds=settings.lease_seconds
                            )
                except (StorageError, OSError) as exc:
                    # The store stayed away past its own retries. The item goes on: its
                    # lease is renewed soon, and lapses (as after a crash) only if the
                    # store stays away longer than the lease.
                    logger.warning(
                        "could not renew a lease, trying again soon: %s",
                        exc,
                        extra={"batch_id": lease.batch_id, "key": lease.key},
                    )
                    next_beat = anyio.current_time() + settings.heartbeat_interval / 3
                    continue
                if status is None or self.lease is not lease:
                    continue
                if not status.held:
                    logger.warning(
                        "lease lost: another runner took the item over",
                        extra={"batch_id": lease.batch_id, "key": lease.key},
                    )
                    self.lost = True
                    scope.cancel()
                    break
                if status.cancel_requested:
                    reporter.cancel_requested = True
                    self.cancelled = True
                    scope.cancel()
                    break
            if self.lease is lease:  # stopped this item; wait for the next one
                self._idle = anyio.Event()

    async def _flush_group(self, lease: Lease) -> None:
        """Write what the slot owes, and hand back what it claimed ahead (shielded)."""
        assert self.flush_group is not None
        try:
            with anyio.CancelScope(shield=True):
                await self.flush_group()
        except (StorageError, OSError) as exc:
            # Their items run again once their leases lapse, as after a crash.
            logger.warning(
                "could not write the outcomes of a group: %s",
                exc,
                extra={"batch_id": lease.batch_id, "key": lease.key},
            )
