"""The fenced code blocks of a Markdown page, each with the text that leads to it."""

from __future__ import annotations

import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "ROOT",
    "STRICT_PAGES",
    "Block",
    "fenced_blocks",
    "output_of",
    "prose",
    "run_program",
]

ROOT = Path(__file__).resolve().parents[2]

#: The pages whose every block is checked by ``test_code_blocks.py``, bash and text blocks
#: included, and whose programs must write nothing on stderr: what a newcomer pastes first.
STRICT_PAGES = ("README.md", "docs/quickstart.md")

_FENCE = re.compile(
    r"^```(?P<lang>[\w-]*)[^\n]*\n(?P<body>.*?)^```[ \t]*$", re.MULTILINE | re.DOTALL
)


@dataclass(frozen=True)
class Block:
    """One fenced block: where it is, its language and text, and the prose before it."""

    page: str  #: the page's path, relative to the repository's root
    line: int  #: the line of its opening fence
    lang: str
    body: str
    before: str  #: the text between the previous block (or the page's start) and this one

    @property
    def where(self) -> str:
        return f"{self.page}:{self.line}"


def fenced_blocks(path: Path) -> list[Block]:
    """The fenced blocks of a Markdown file, in order."""
    text = path.read_text(encoding="utf-8")
    page = path.resolve().relative_to(ROOT).as_posix()
    found: list[Block] = []
    end = 0
    for match in _FENCE.finditer(text):
        found.append(
            Block(
                page=page,
                line=text.count("\n", 0, match.start()) + 1,
                lang=match.group("lang"),
                body=match.group("body"),
                before=text[end : match.start()],
            )
        )
        end = match.end()
    return found


def output_of(blocks: list[Block], index: int) -> Block | None:
    """The output a page shows for the python block ``blocks[index]``: the text block
    after it (prose may stand between), or None."""
    if blocks[index].lang != "python" or index + 1 >= len(blocks):
        return None
    after = blocks[index + 1]
    return after if after.lang == "text" else None


def prose(path: Path) -> str:
    """A Markdown file's text outside its fenced blocks."""
    return _FENCE.sub("", path.read_text(encoding="utf-8"))


def run_program(code: str, cwd: Path, name: str = "block.py") -> subprocess.CompletedProcess[str]:
    """Run ``code`` as a script of its own in ``cwd``, in a fresh interpreter."""
    script = cwd / name
    script.write_text(code, encoding="utf-8")
    return subprocess.run(
        [sys.executable, script.name],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
