"""The README's first screen runs as pasted and prints what it says, and nothing else.

``test_code_blocks.py`` runs every block of the README; here are the promises of the two
programs a newcomer pastes first: the quickstart fits a screen, and the SQLite variant
leaves one database file behind, whose batches the next run finds.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

import anyio

from batchkit import BatchRunner, BatchState, SQLStorage
from tests.examples._blocks import ROOT, Block, fenced_blocks, output_of, run_program

if TYPE_CHECKING:
    from pathlib import Path

__all__: list[str] = []

README = ROOT / "README.md"


def _programs() -> list[tuple[Block, Block | None]]:
    """The README's python blocks, each with the text block after it (its output)."""
    blocks = fenced_blocks(README)
    return [(b, output_of(blocks, i)) for i, b in enumerate(blocks) if b.lang == "python"]


def test_quickstart_runs_and_prints_what_the_readme_shows(tmp_path: Path) -> None:
    code, shown = _programs()[0]
    assert shown is not None, "the README shows no output for its quickstart"
    assert len(code.body.splitlines()) <= 15  # blank lines count too

    done = run_program(code.body, tmp_path)

    assert done.returncode == 0, done.stderr
    assert done.stdout == shown.body
    # The item that fails on purpose is data on the item: no warning reaches the stderr of
    # a program that configured no logging.
    assert done.stderr == ""
    # What the quickstart is there to show: one failure does not stop the others (the
    # derived state), and the failed item keeps its error.
    assert done.stdout.splitlines()[0] == "completed_with_errors"
    assert "lamp ValueError no photos of this product" in done.stdout


async def _batch_states(database: Path) -> list[BatchState]:
    async with SQLStorage(f"sqlite+aiosqlite:///{database}") as storage:
        runner = BatchRunner(storage, lambda ctx: None)  # reads only
        return [status.state for status in await runner.batches()]


def _numbers(text: str) -> list[int]:
    return [int(n) for n in re.findall(r"\d+", text)]


def test_the_sqlite_variant_closes_its_storage_and_its_batches_last(tmp_path: Path) -> None:
    code, shown = next((c, s) for c, s in _programs() if "SQLStorage(" in c.body)

    first = run_program(code.body, tmp_path)
    assert first.returncode == 0, first.stderr
    assert first.stderr == ""
    if shown is not None:
        assert first.stdout == shown.body
    # Closed by its `async with`: SQLite folded its write-ahead log back into the file and
    # removed it (left open, the storage would leave batchkit.db-wal and -shm behind).
    made = sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("batchkit.db"))
    assert made == ["batchkit.db"]

    second = run_program(code.body, tmp_path)
    assert second.returncode == 0, second.stderr
    assert second.stderr == ""
    # "Run it again and it says 2": it counts the batches in the file.
    assert _numbers(second.stdout) == [n + 1 for n in _numbers(first.stdout)]
    made = sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("batchkit.db"))
    assert made == ["batchkit.db"]
    # The first run's batch is still there, beside the second's, and both ran to the end.
    states = anyio.run(_batch_states, tmp_path / "batchkit.db")
    assert states == [BatchState.COMPLETED, BatchState.COMPLETED]
