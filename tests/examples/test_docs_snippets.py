"""The code shown in the docs runs against the current API and prints what the docs say.

Every ```python block under docs/ is checked (those of docs/quickstart.md, every block of
which ``test_code_blocks.py`` checks, aside):

* a complete program (it calls ``anyio.run``, or runs under ``if __name__ == "__main__":``)
  runs in a fresh interpreter and must exit 0;
  when a ```text block follows it directly, that block is the exact expected output;
* a test module (it defines ``test_`` functions or ``Test`` classes) runs under pytest and
  must pass;
* anything else must at least compile.
"""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING

import pytest

from tests.examples._blocks import ROOT, STRICT_PAGES, fenced_blocks

if TYPE_CHECKING:
    from pathlib import Path

__all__: list[str] = []

DOCS = ROOT / "docs"


@dataclass(frozen=True)
class Snippet:
    """One ```python block of a docs page, and the output the page shows for it."""

    page: str
    line: int
    code: str
    expected: str | None

    @property
    def kind(self) -> str:
        if re.search(r"^(\s*(async\s+)?def test_|class Test\w*\()", self.code, re.MULTILINE):
            return "pytest"
        if "anyio.run(" in self.code or 'if __name__ == "__main__":' in self.code:
            return "program"
        return "fragment"


def _snippets() -> list[Snippet]:
    found: list[Snippet] = []
    for page in sorted(DOCS.rglob("*.md")):
        if page.relative_to(ROOT).as_posix() in STRICT_PAGES:
            continue  # test_code_blocks.py checks every block of it, and more strictly
        blocks = fenced_blocks(page)
        for index, block in enumerate(blocks):
            if block.lang != "python":
                continue
            expected = None
            if index + 1 < len(blocks):
                follower = blocks[index + 1]
                if follower.lang == "text" and not follower.before.strip():
                    expected = follower.body
            found.append(
                Snippet(
                    page=page.relative_to(DOCS).as_posix(),
                    line=block.line,
                    code=block.body,
                    expected=expected,
                )
            )
    return found


SNIPPETS = _snippets()


def _has_contract_suite() -> bool:
    try:
        from batchkit.testing import StorageContract  # noqa: F401
    except ImportError:
        return False
    return True


def _run(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_the_docs_have_runnable_programs() -> None:
    # Guards the extraction itself: a broken pattern must not make every check vacuous.
    kinds = [s.kind for s in SNIPPETS]
    assert kinds.count("program") >= 8
    assert sum(s.expected is not None for s in SNIPPETS) >= 5


@pytest.mark.parametrize("snippet", SNIPPETS, ids=[f"{s.page}:{s.line}" for s in SNIPPETS])
def test_snippet(snippet: Snippet, tmp_path: Path) -> None:
    where = f"docs/{snippet.page}, line {snippet.line}"
    if snippet.kind == "fragment":
        # A notebook's cell may await at its top level.
        compile(snippet.code, where, "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)
        return
    if snippet.kind == "pytest":
        if "batchkit.testing" in snippet.code and not _has_contract_suite():
            pytest.skip("batchkit.testing.StorageContract is not part of this build")
        module = tmp_path / "test_snippet.py"
        module.write_text(snippet.code, encoding="utf-8")
        # The state machine is the slow part of the contract suite and runs in the storage
        # tests already; here it is enough that the snippet's tests are collected and pass.
        args = ["-m", "pytest", "-q", "-p", "no:cacheprovider", "-k", "not test_state_machine"]
        done = _run([*args, module.name], tmp_path)
        assert done.returncode == 0, f"{where}\n{done.stdout}\n{done.stderr}"
        assert re.search(r"\b\d+ passed\b", done.stdout), done.stdout
        return
    script = tmp_path / "snippet.py"
    script.write_text(snippet.code, encoding="utf-8")
    done = _run([script.name], tmp_path)
    assert done.returncode == 0, f"{where} failed:\n{done.stderr}"
    if snippet.expected is not None:
        assert done.stdout == snippet.expected, where
