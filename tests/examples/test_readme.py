"""The README's quickstart runs as pasted and prints what the README says it prints."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

__all__: list[str] = []

README = Path(__file__).resolve().parents[2] / "README.md"


def _block(text: str, lang: str, start: int = 0) -> re.Match[str]:
    found = re.compile(rf"^```{lang}\n(.*?)^```$", re.MULTILINE | re.DOTALL).search(text, start)
    assert found is not None, f"README.md has no ```{lang} block"
    return found


def test_quickstart_runs_and_prints_what_the_readme_shows(tmp_path: Path) -> None:
    text = README.read_text(encoding="utf-8")
    code = _block(text, "python")
    shown = _block(text, "text", code.end()).group(1)
    assert len(code.group(1).splitlines()) <= 15  # blank lines count too

    script = tmp_path / "quickstart.py"
    script.write_text(code.group(1), encoding="utf-8")
    done = subprocess.run(
        [sys.executable, script.name],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    assert done.returncode == 0, done.stderr
    assert done.stdout == shown
    # What the quickstart is there to show: one failure does not stop the others (the
    # derived state), and the failed item keeps its error.
    assert done.stdout.splitlines()[0] == "completed_with_errors"
    assert "lamp ValueError no photos of this product" in done.stdout
