"""Claims in doubt: sent as the store went away, their answer never came."""

from __future__ import annotations

from typing import TYPE_CHECKING, Generic, TypeVar

if TYPE_CHECKING:
    from ..protocols import ClaimRequest

__all__ = ["ClaimsInDoubt"]

T = TypeVar("T")


class ClaimsInDoubt(Generic[T]):
    """What a storage needs to find again the items of claims that may have landed.

    A claim (or a finish that claims the next item) raised `StorageError` after the
    store had maybe run it: its item would be running under a token only this storage
    knows, with nobody on it, until its lease lapsed. The storage keeps what it sent here,
    per batch, and its next claim in that batch asks for that item first. At most ``cap``
    are kept; more are left to their leases.
    """

    def __init__(self, cap: int = 64) -> None:
        self._cap = cap
        self._held: list[tuple[str, T]] = []

    def remember(self, batch_id: str, sent: T) -> None:
        if len(self._held) < self._cap:
            self._held.append((batch_id, sent))

    def batches(self, request: ClaimRequest) -> list[str]:
        """The batches of claims in doubt that ``request`` may take an item of."""
        if not self._held or request.metadata:
            return []  # a metadata filter is the adapter's to check: it asks normally
        allowed = None if request.batch_ids is None else set(request.batch_ids)
        return list(dict.fromkeys(b for b, _ in self._held if allowed is None or b in allowed))

    def take(self, batch_id: str) -> T | None:
        """The oldest claim in doubt of this batch, forgotten here."""
        for n, (held, sent) in enumerate(self._held):
            if held == batch_id:
                del self._held[n]
                return sent
        return None
