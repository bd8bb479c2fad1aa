"""batchkit logs through `logging` and leaves where the records go to its host.

Each check runs in a fresh interpreter: pytest's own logging setup would hide what a host
that configured no logging sees.
"""

from __future__ import annotations

import subprocess
import sys

__all__: list[str] = []

# Warnings from two loggers: an item retried and one that failed (batchkit.items), and
# the rest of the batch cancelled past max_failures (batchkit.runner).
_FAILING_RUN = """\
import anyio
import batchkit
from batchkit import BatchRunner, MemoryStorage, RetryPolicy

async def generate(ctx):
    raise ValueError("no photos of this product")

async def main():
    runner = BatchRunner(MemoryStorage(), generate, retry=RetryPolicy(max_attempts=2, backoff=0))
    batch = await runner.submit(["lamp", "mug", "poster"], max_failures=0)
    print((await runner.run(batch.id)).state)

anyio.run(main)
"""


def _python(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )


def test_the_package_logger_has_a_null_handler_and_nothing_else() -> None:
    done = _python(
        "import logging, batchkit\n"
        "print([type(h).__name__ for h in logging.getLogger('batchkit').handlers])\n"
        "print(logging.getLogger('batchkit').level, logging.getLogger().handlers)\n"
    )
    assert done.returncode == 0, done.stderr
    # No level of its own (NOTSET) and no handler on the root: the host decides both.
    assert done.stdout == "['NullHandler']\n0 []\n"


def test_failing_items_write_nothing_to_stderr_of_a_host_without_logging() -> None:
    done = _python(_FAILING_RUN)
    assert done.returncode == 0, done.stderr
    assert done.stdout == "cancelled\n"
    assert done.stderr == ""


def test_a_host_that_configures_logging_gets_the_warnings() -> None:
    done = _python(f"import logging\nlogging.basicConfig()\n{_FAILING_RUN}")
    assert done.returncode == 0, done.stderr
    assert done.stdout == "cancelled\n"
    lines = done.stderr.splitlines()
    assert any(
        line.startswith("WARNING:batchkit.items:") and "'lamp': retrying" in line for line in lines
    ), done.stderr
    assert any(
        line.startswith("WARNING:batchkit.items:") and "'lamp': failed" in line for line in lines
    ), done.stderr
    assert any(
        line.startswith("WARNING:batchkit.runner:") and "cancelled" in line for line in lines
    ), done.stderr
    # basicConfig's WARNING level keeps the INFO lines (started, succeeded...) out.
    assert not any(line.startswith("INFO:") for line in lines), done.stderr
