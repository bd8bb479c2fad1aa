"""The demo (``python -m examples.demo``) shows every item's progress and ends with a retry."""

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


def _demo(*args: str, scale: str = "0.01") -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "BATCHKIT_DEMO_SCALE": scale}
    return subprocess.run(
        [sys.executable, "-m", "examples.demo", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_plain_output_shows_each_item_progress_and_the_summaries() -> None:
    done = _demo("--plain")
    assert done.returncode == 0, done.stderr
    out = done.stdout

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


@pytest.mark.skipif(
    importlib.util.find_spec("rich") is None, reason="Rich (an optional extra) is not installed"
)
def test_rich_output_draws_the_table_and_the_summaries() -> None:
    done = _demo("--rich")
    assert done.returncode == 0, done.stderr
    assert re.search(r"sku\s+product\s+state\s+progress", done.stdout)
    assert "succeeded 10, failed 2, cancelled 0" in done.stdout
    assert "succeeded 1, failed 1, cancelled 0" in done.stdout


@pytest.mark.anyio
async def test_run_demo_returns_both_batches() -> None:
    out = io.StringIO()
    result = await run_demo(delay_scale=0, display="plain", out=out)

    assert result.first.state == "completed_with_errors"
    assert result.first.counts[ItemState.SUCCEEDED] == 10
    assert [item.key for item in result.failed] == ["LMP-07", "SCF-11"]
    assert result.retry.parent_id == result.first.batch_id
    assert [(item.key, item.state) for item in result.retried] == [
        ("LMP-07", ItemState.FAILED),
        ("SCF-11", ItemState.SUCCEEDED),
    ]
    assert "Retry finished: completed_with_errors" in out.getvalue()


def test_a_negative_scale_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["--scale", "-1"])
    assert exc.value.code == 2
    assert "--scale must not be negative" in capsys.readouterr().err
