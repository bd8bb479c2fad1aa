"""Tests that ship with batchkit: the Storage contract suite and its state machine.

Import this package from tests only: it needs pytest and hypothesis, which batchkit
itself does not depend on.
"""

from __future__ import annotations

from .contract import StorageContract as StorageContract
from .stateful import StorageStateMachine as StorageStateMachine
from .stateful import run_state_machine as run_state_machine

__all__ = ["StorageContract", "StorageStateMachine", "run_state_machine"]
