"""Links of the Markdown pages that the docs build does not see lead somewhere.

`mkdocs build --strict` refuses a broken link or anchor inside docs/ (mkdocs.yml's
`validation`); the README and the other Markdown files of the repository are read on the
code host and in the package, outside that build, so their links are checked here.
"""

from __future__ import annotations

import re
import subprocess
from typing import TYPE_CHECKING

import pytest

from ._blocks import ROOT, prose

if TYPE_CHECKING:
    from pathlib import Path

__all__: list[str] = []

_INLINE = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
_REFERENCE = re.compile(r"^\s{0,3}\[[^\]]+\]:\s+<?(\S+?)>?(?:\s+.*)?$", re.MULTILINE)
_HEADING = re.compile(r"^#{1,6}\s+(.+?)\s*#*\s*$", re.MULTILINE)
_EXPLICIT_ID = re.compile(r"\{\s*#([\w-]+)[^}]*\}\s*$")


def _pages() -> list[Path]:
    listed = subprocess.run(
        ["git", "ls-files", "*.md"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.split()
    return [ROOT / name for name in listed if not name.startswith("docs/")]


def _slug(heading: str) -> str:
    """The anchor of a heading, as MkDocs' `toc` and the code hosts make it."""
    explicit = _EXPLICIT_ID.search(heading)
    if explicit:
        return explicit.group(1)
    text = re.sub(r"`|\*\*|__|\[([^\]]*)\]\([^)]*\)", r"\1", heading)
    text = re.sub(r"[^\w\s-]", "", text).strip().lower()
    return re.sub(r"[-\s]+", "-", text)


def _anchors(page: Path) -> set[str]:
    return {_slug(heading) for heading in _HEADING.findall(prose(page))}


def _links(page: Path) -> list[str]:
    text = prose(page)
    text = re.sub(r"`[^`\n]*`", "", text)  # a link shown as code is not a link
    return _INLINE.findall(text) + _REFERENCE.findall(text)


def _broken(page: Path, target: str) -> str | None:
    if re.match(r"[a-z][a-z0-9+.-]*:", target):  # https:, mailto: ... not checked offline
        return None
    path, _, anchor = target.partition("#")
    dest = (page.parent / path).resolve() if path else page
    if not dest.is_relative_to(ROOT):
        return "points outside the repository"
    if not dest.exists():
        return "no such file"
    if anchor and dest.suffix == ".md" and anchor not in _anchors(dest):
        return f"no heading with the anchor #{anchor} in {dest.relative_to(ROOT)}"
    return None


@pytest.mark.parametrize("page", _pages(), ids=lambda page: str(page.relative_to(ROOT)))
def test_every_relative_link_leads_to_a_file_and_heading_that_exist(page: Path) -> None:
    links = _links(page)
    broken = [f"{target}: {why}" for target in links if (why := _broken(page, target))]
    assert not broken, f"{page.relative_to(ROOT)} has broken links:\n" + "\n".join(broken)


def test_the_checker_finds_a_broken_file_and_a_broken_anchor() -> None:
    readme = ROOT / "README.md"
    assert _broken(readme, "docs/howto/storage.md") is None
    assert _broken(readme, "docs/howto/nowhere.md") == "no such file"
    anchor = next(iter(_anchors(ROOT / "docs/performance.md")))
    assert _broken(readme, f"docs/performance.md#{anchor}") is None
    assert "no heading" in (_broken(readme, "docs/performance.md#sql-storages") or "")
    assert _broken(readme, "https://example.org/x") is None
    assert _links(readme), "the README's links were not found"


def test_anchors_are_made_as_the_docs_build_makes_them() -> None:
    assert _slug("Durable storages") == "durable-storages"
    assert _slug("`BatchRunner.run` and `watch()`") == "batchrunnerrun-and-watch"
    assert _slug("Python 3.11, 3.12 and 3.13") == "python-311-312-and-313"
    assert _slug("Redis {#redis-storage}") == "redis-storage"
