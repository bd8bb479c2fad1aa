"""The newcomer's map (``docs/architecture.md``) names every module of batchkit, and only
modules that exist.

The map names a module as a code span of its path relative to ``src/batchkit``
(``storage/sql/_sqlite.py``, ``runner.py``), a package by its folder (``storage/sql/``),
and batchkit itself by ``batchkit/__init__.py``. A bare file name (``_sqlite.py`` alone)
does not count: which module it stands for would be a guess. Read from the files, without
importing anything.
"""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SOURCE = ROOT / "src" / "batchkit"
DOC = ROOT / "docs" / "architecture.md"

#: A code span that is a path: a module (``.py``) or a folder (a trailing ``/``).
PATH_SPAN = re.compile(r"`([\w./-]+(?:\.py|/))`")


def _modules() -> set[str]:
    """Every module of the package by its path relative to ``src/batchkit``: a package by
    its folder (``storage/sql/``), the package itself by ``__init__.py``."""
    names: set[str] = set()
    for path in SOURCE.rglob("*.py"):
        relative = path.relative_to(SOURCE)
        if relative.name == "__init__.py" and relative.parent != Path():
            names.add(f"{relative.parent.as_posix()}/")
        else:
            names.add(relative.as_posix())
    return names


def _named() -> set[str]:
    """Every path the map names, relative to ``src/batchkit`` (``batchkit/`` dropped, a
    package's ``__init__.py`` named by its folder)."""
    named: set[str] = set()
    for span in PATH_SPAN.findall(DOC.read_text(encoding="utf-8")):
        path = span.removeprefix("batchkit/")
        if path.endswith("/__init__.py"):
            path = path.removesuffix("__init__.py")
        named.add(path)
    return named


def test_the_map_names_every_module() -> None:
    missing = sorted(_modules() - _named())
    assert not missing, (
        f"{DOC.relative_to(ROOT)} does not name these modules of src/batchkit by their "
        f"path (in backticks, relative to src/batchkit, a package by its folder): "
        f"{', '.join(missing)}; add each, with a line on what it holds"
    )


def test_every_module_the_map_names_exists() -> None:
    modules = _modules()
    # A path outside the package (``tests/unit/test_structure.py``) is from the repository's root.
    gone = sorted(p for p in _named() - modules if not (ROOT / p).exists())
    assert not gone, (
        f"{DOC.relative_to(ROOT)} names modules that do not exist in src/batchkit: "
        f"{', '.join(gone)}; rename or remove them from the map"
    )
