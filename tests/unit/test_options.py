"""The options BatchRunner, Worker, RetryPolicy and the command line share: their messages.

One module checks them all (`batchkit._options`); each caller keeps the words it has
always used, pinned here whole.
"""

from __future__ import annotations

import math
import re
from typing import Any

import pytest

from batchkit import BatchRunner, InvalidBatch, MemoryStorage, RetryPolicy, Worker
from batchkit.cli import build_parser


async def noop(ctx: Any) -> None:
    return None


def _exactly(message: str) -> str:
    return f"^{re.escape(message)}$"


@pytest.mark.parametrize(
    ("options", "error", "message"),
    [
        ({"generator": "m:g"}, TypeError, "generator must be callable, got 'm:g'"),
        ({"concurrency": 0}, ValueError, "concurrency must be an integer of at least 1, got 0"),
        (
            {"concurrency": True},
            ValueError,
            "concurrency must be an integer of at least 1, got True",
        ),
        (
            {"lease_seconds": 0},
            ValueError,
            "lease_seconds must be a positive number of seconds, got 0",
        ),
        (
            {"item_timeout": math.nan},
            ValueError,
            "item_timeout must be a positive number of seconds, got nan",
        ),
        (
            {"progress_interval": math.inf},
            ValueError,
            "progress_interval must be a positive number of seconds, got inf",
        ),
        (
            {"poll_interval": "1"},
            ValueError,
            "poll_interval must be a positive number of seconds, got '1'",
        ),
        (
            {"block_warning": -1},
            ValueError,
            "block_warning must be a positive number of seconds, got -1",
        ),
        ({"retry": 3}, TypeError, "retry must be a RetryPolicy or None, got 3"),
    ],
)
def test_a_runners_bad_options(
    options: dict[str, Any], error: type[Exception], message: str
) -> None:
    generator = options.pop("generator", noop)
    with pytest.raises(error, match=_exactly(message)):
        BatchRunner(MemoryStorage(), generator, **options)


def test_a_runner_takes_no_timeout_and_no_block_warning() -> None:
    runner = BatchRunner(MemoryStorage(), noop, item_timeout=None, block_warning=None)
    assert (runner.item_timeout, runner.block_warning) == (None, None)


@pytest.mark.parametrize(
    ("options", "error", "message"),
    [
        ({"generator": None}, TypeError, "generator must be callable, got None"),
        ({"concurrency": 1.5}, ValueError, "concurrency must be an integer of at least 1, got 1.5"),
        (
            {"lease_seconds": 0},
            ValueError,
            "lease_seconds must be a finite number of seconds, more than 0; got 0",
        ),
        (
            {"lease_seconds": True},
            ValueError,
            "lease_seconds must be a finite number of seconds, more than 0; got True",
        ),
        (
            {"item_timeout": math.inf},
            ValueError,
            "item_timeout must be a finite number of seconds, more than 0; got inf",
        ),
        (
            {"grace_period": -1},
            ValueError,
            "grace_period must be a finite number of seconds, at least 0; got -1",
        ),
        (
            {"hook_interval": 0},
            ValueError,
            "hook_interval must be a finite number of seconds, more than 0; got 0",
        ),
        (
            {"metadata": {"owner": ["a"]}},
            ValueError,
            "metadata filters map top-level keys to str, int, float, bool or None values; "
            "got 'owner': ['a']",
        ),
        ({"retry": 3}, TypeError, "retry must be a RetryPolicy or None, got 3"),
    ],
)
def test_a_workers_bad_options(
    options: dict[str, Any], error: type[Exception], message: str
) -> None:
    generator = options.pop("generator", noop)
    with pytest.raises(error, match=_exactly(message)):
        Worker(MemoryStorage(), generator, **options)


def test_a_worker_keeps_its_seconds_as_floats() -> None:
    worker = Worker(MemoryStorage(), noop, lease_seconds=2, grace_period=0, poll_interval=1)
    assert (worker.lease_seconds, worker.grace_period, worker.poll_interval) == (2.0, 0.0, 1.0)
    assert type(worker.lease_seconds) is float
    assert worker.hook_interval == 1.0


@pytest.mark.anyio
async def test_a_runners_metadata_filter_and_max_failures() -> None:
    runner = BatchRunner(MemoryStorage(), noop)
    with pytest.raises(
        ValueError,
        match=_exactly(
            "metadata filters map top-level keys to str, int, float, bool or None values; "
            "got 1: 'a'"
        ),
    ):
        await runner.batches(metadata={1: "a"})  # type: ignore[dict-item]
    with pytest.raises(
        InvalidBatch,
        match=_exactly("max_failures must be None or an integer of at least 0, got -1"),
    ):
        await runner.submit(["a"], max_failures=-1)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"max_attempts": 0}, "max_attempts must be an integer of at least 1, got 0"),
        ({"backoff": -1}, "backoff must be a finite number of seconds, at least 0; got -1"),
        (
            {"backoff": [1, math.nan]},
            "each backoff delay must be a finite number of seconds, at least 0; got nan",
        ),
        (
            {"max_backoff": math.inf},
            "max_backoff must be a finite number of seconds, at least 0; got inf",
        ),
        ({"jitter": False}, "jitter must be a finite number of seconds, at least 0; got False"),
    ],
)
def test_a_retry_policys_bad_options(options: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=_exactly(message)):
        RetryPolicy(**options)


def test_a_retry_policy_takes_zero_seconds() -> None:
    policy = RetryPolicy(backoff=0, max_backoff=0, jitter=0)
    assert (policy.backoff, policy.max_backoff, policy.jitter) == (0.0, 0.0, 0.0)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--lease-seconds", "nan"], "not a number of seconds: 'nan'"),
        (["--lease=-inf"], "not a number of seconds: '-inf'"),
        (["--poll-interval", "0"], "must be more than 0 seconds"),
        (["--grace", "-0.5"], "not a number of seconds: '-0.5'"),
        (["--concurrency", "two"], "not a whole number: 'two'"),
        (["--concurrency", "0"], "must be at least 1, got 0"),
        (["--where", "tags=[1]"], "tags: a filter value is a single JSON scalar"),
    ],
)
def test_the_command_lines_bad_options(
    args: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit):
        build_parser().parse_args(["worker", "--generator", "m:g", *args])
    assert capsys.readouterr().err.rstrip().endswith(f": {message}")


def test_the_command_line_takes_zero_where_zero_is_allowed() -> None:
    args = build_parser().parse_args(
        ["worker", "--generator", "m:g", "--grace", "0", "--backoff", "0", "--where", "n=1"]
    )
    assert (args.grace, args.backoff, args.where) == (0.0, 0.0, [("n", 1)])
