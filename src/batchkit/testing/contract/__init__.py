"""StorageContract: the test suite every Storage adapter passes, shipped for third parties.

Subclass it in a test module and provide one fixture, ``storage_factory``: a zero-argument
callable that returns a new, empty Storage that has not been entered yet::

    import pytest
    from batchkit.testing import StorageContract

    class TestMyStorage(StorageContract):
        @pytest.fixture
        def storage_factory(self):
            return lambda: MyStorage(...)

The suite never sleeps to let time pass: a lease expires at once when it is taken or
extended with ``lease_seconds=0`` (an item is claimable when its deadline is not after
the store's now), and a retry that waits an hour is not claimable during a test.

The tests live in one mixin per topic (``creating``, ``claiming``, ``finishing``,
``grouping``, ``history``, ``cancelling``, ``hooks``, ``notify`` (and new work), ``retention``, ``concurrency``,
``limits``);
`StorageContract` combines them with the ``storage`` fixture they all use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

import pytest

from ..stateful import run_state_machine
from ._helpers import LONG, all_items, counts_of, new_batch
from .cancelling import CancellingContract
from .claiming import ClaimingContract
from .concurrency import ConcurrencyContract
from .creating import CreatingContract
from .finishing import FinishingContract
from .grouping import GroupContract
from .history import HistoryContract
from .hooks import HooksContract
from .limits import LimitsContract
from .notify import NotifyContract, WorkContract
from .retention import RetentionContract

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable

    import hypothesis

    from ...protocols import Storage

__all__ = ["LONG", "StorageContract", "all_items", "counts_of", "new_batch"]


class StorageContract(
    CreatingContract,
    ClaimingContract,
    FinishingContract,
    GroupContract,
    HistoryContract,
    CancellingContract,
    HooksContract,
    NotifyContract,
    WorkContract,
    RetentionContract,
    ConcurrencyContract,
    LimitsContract,
):
    """The behaviours every `batchkit.protocols.Storage` adapter must show.

    Subclasses provide the ``storage_factory`` fixture. Set ``notifies_changes = False``
    on an adapter that only polls, so that the prompt-wake test is skipped, and
    ``announces_work = False`` on one that is not a `batchkit.protocols.WorkAnnouncer`,
    and ``commits_groups = False`` on one that is not a `batchkit.protocols.GroupCommitter`.
    """

    pytestmark = pytest.mark.anyio

    #: Whether `Storage.subscribe` wakes a waiting reader promptly on a change.
    notifies_changes: ClassVar[bool] = True
    #: Whether the storage is a `WorkAnnouncer` that wakes idle workers on new work.
    announces_work: ClassVar[bool] = True

    @pytest.fixture
    async def storage(self, storage_factory: Callable[[], Storage]) -> AsyncIterator[Storage]:
        """A new, empty storage, entered for the test and closed after it."""
        async with storage_factory() as store:
            yield store

    # -- the state machine ---------------------------------------------------------------

    @pytest.fixture
    def state_machine_settings(self) -> hypothesis.settings | None:
        """Hypothesis settings for `test_state_machine`; `None` for the defaults.

        Override it to run fewer examples on a slow store, or more in a soak run.
        """
        return None

    def test_state_machine(
        self,
        storage_factory: Callable[[], Storage],
        anyio_backend: Any,
        state_machine_settings: hypothesis.settings | None,
    ) -> None:
        """Random sequences of operations keep every rule (see `batchkit.testing.stateful`)."""
        if isinstance(anyio_backend, tuple):
            backend, options = anyio_backend
        else:
            backend, options = anyio_backend, None
        run_state_machine(
            storage_factory,
            backend=backend,
            backend_options=options,
            settings=state_machine_settings,
        )
