"""The demo (``python -m examples.demo``) shows every item's progress, ends with a retry,
and keeps its batches in an SQLite file: a second run lists the first run's batches.
"""

from __future__ import annotations

import importlib.util
import io
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from examples.demo import PRODUCTS, main, run_demo

from batchkit import ItemState

__all__: list[str] = []

ROOT = Path(__file__).resolve().parents[2]
SKUS = [product["sku"] for product in PRODUCTS]
# "  0.3s  MUG-01  Ceramic mug   running    15%  frames: ..." (one line per change)
_ITEM_LINE = re.compile(
    r"^\s*\d+\.\ds\s+(?P<sku>[A-Z]{3}-\d\d)\s.*?\s(?P<state>queued|running|succeeded|failed|cancelled)"
    r"\s+(?P<pct>\d+)%",
    re.MULTILINE,
)


_BATCH_ID = r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"


def _demo(*args: str, cwd: Path, scale: str = "0.01") -> subprocess.CompletedProcess[str]:
    # The demo keeps its batches in the working directory: each test gives it its own.
    env = {**os.environ, "BATCHKIT_DEMO_SCALE": scale}
    env.pop("BATCHKIT_STORAGE", None)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    return subprocess.run(
        [sys.executable, "-m", "examples.demo", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str, Path]:
    """The plain output of the demo run twice in one directory, and that directory."""
    cwd = tmp_path_factory.mktemp("demo")
    outputs = []
    # The first run is slow enough for every stage to show between two looks at SQLite
    # (watch polls it); the second only has to find the first run's batches.
    for scale in ("0.05", "0"):
        done = _demo("--plain", cwd=cwd, scale=scale)
        assert done.returncode == 0, done.stderr
        outputs.append(done.stdout)
    return outputs[0], outputs[1], cwd


def test_plain_output_shows_each_item_progress_and_the_summaries(
    two_runs: tuple[str, str, Path],
) -> None:
    out = two_runs[0]

    lines = [(m["sku"], m["state"], int(m["pct"])) for m in _ITEM_LINE.finditer(out)]
    first_batch = out.split("Batch finished:")[0]
    for sku in SKUS:
        states = [m["state"] for m in _ITEM_LINE.finditer(first_batch) if m["sku"] == sku]
        assert states, f"no progress line for {sku}"
        # Every item is seen running before its one final line.
        assert states[0] == "running", (sku, states)
        expected = "failed" if sku in {"LMP-07", "SCF-11"} else "succeeded"
        assert states[-1] == expected, (sku, states)
        assert states.count(expected) == 1, (sku, states)
    # Progress moves: some item is shown part-way through, with the stage it is in.
    assert any(state == "running" and 0 < pct < 100 for _, state, pct in lines)
    assert re.search(r"running\s+\d+%\s+frames: building from \d photos", out)

    assert "Batch finished: completed_with_errors" in out
    assert "succeeded 10, failed 2, cancelled 0" in out
    assert "LMP-07 Linen lamp shade: ValueError: no photos of 'Linen lamp shade'" in out
    assert "SCF-11 Silk scarf: ConnectionError: upload refused" in out
    assert "Retrying the 2 failed items: retry_failed made batch" in out
    retry = out.split("Retry finished:")[1]
    assert retry.startswith(" completed_with_errors")
    assert "succeeded 1, failed 1, cancelled 0" in retry
    assert "SCF-11 Silk scarf: succeeded, https://cdn.example/videos/SCF-11.mp4" in retry
    assert "LMP-07 Linen lamp shade: failed, ValueError" in retry


def test_the_batches_are_kept_in_an_sqlite_file_and_listed_by_the_next_run(
    two_runs: tuple[str, str, Path],
) -> None:
    first, second, cwd = two_runs
    assert (cwd / "batchkit-demo.db").is_file()
    assert first.startswith("No earlier batches in batchkit-demo.db: this is the first run.")
    made = re.findall(rf"\(batch ({_BATCH_ID})\)", first)
    assert len(made) == 2, first  # the batch and the retry of its failed items

    listing = second.split("\nRendering ")[0]
    assert listing.startswith("2 earlier batches in batchkit-demo.db:"), second
    rows = re.findall(rf"^  ({_BATCH_ID})  .*?  (\w+): (\d+) items, (.*)$", listing, re.MULTILINE)
    # Newest first, each with its state and counts derived from its items, as stored.
    assert [row[0] for row in rows] == made[::-1]
    retry, batch = rows
    assert retry[1:] == (
        "completed_with_errors",
        "2",
        f"succeeded 1, failed 1, cancelled 0, retry of {made[0]}",
    )
    assert batch[1:] == ("completed_with_errors", "12", "succeeded 10, failed 2, cancelled 0")
    # The second run made batches of its own, which are not the first run's.
    assert set(re.findall(rf"\(batch ({_BATCH_ID})\)", second)).isdisjoint(made)


def test_storage_url_chooses_where_the_batches_are_kept(tmp_path: Path) -> None:
    done = _demo("--plain", "--storage", "memory://", cwd=tmp_path, scale="0")
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("No earlier batches in memory://")
    assert "Retry finished: completed_with_errors" in done.stdout
    assert not list(tmp_path.iterdir())  # nothing written to the working directory


def test_a_synchronous_storage_url_is_a_usage_error(tmp_path: Path) -> None:
    done = _demo("--storage", "sqlite:///demo.db", cwd=tmp_path)
    assert done.returncode == 2
    assert "use sqlite+aiosqlite:///demo.db" in done.stderr
    assert not list(tmp_path.iterdir())


@pytest.mark.skipif(
    importlib.util.find_spec("rich") is None, reason="Rich (an optional extra) is not installed"
)
def test_rich_output_draws_the_table_and_the_summaries(tmp_path: Path) -> None:
    done = _demo("--rich", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert re.search(r"sku\s+product\s+state\s+progress", done.stdout)
    assert "succeeded 10, failed 2, cancelled 0" in done.stdout
    assert "succeeded 1, failed 1, cancelled 0" in done.stdout


@pytest.fixture
def anyio_backend() -> str:
    # The demo keeps its batches in SQLite, and SQLAlchemy's async engines run on asyncio.
    return "asyncio"


@pytest.mark.anyio
async def test_run_demo_returns_both_batches(tmp_path: Path) -> None:
    out = io.StringIO()
    url = f"sqlite+aiosqlite:///{tmp_path / 'demo.db'}"
    result = await run_demo(storage=url, delay_scale=0, display="plain", out=out)

    assert result.earlier == []
    assert result.first.state == "completed_with_errors"
    assert result.first.counts[ItemState.SUCCEEDED] == 10
    assert [item.key for item in result.failed] == ["LMP-07", "SCF-11"]
    assert result.retry.parent_id == result.first.batch_id
    assert [(item.key, item.state) for item in result.retried] == [
        ("LMP-07", ItemState.FAILED),
        ("SCF-11", ItemState.SUCCEEDED),
    ]
    assert "Retry finished: completed_with_errors" in out.getvalue()

    again = await run_demo(storage=url, delay_scale=0, display="plain", out=io.StringIO())
    assert [status.batch_id for status in again.earlier] == [
        result.retry.batch_id,
        result.first.batch_id,
    ]
    assert again.earlier[1].counts == result.first.counts


def test_a_negative_scale_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["--scale", "-1"])
    assert exc.value.code == 2
    assert "--scale must not be negative" in capsys.readouterr().err
