"""The shape of the code: no import cycles between batchkit's modules, no module too long.

Read from the source with `ast`, without importing anything: one home per concern.
"""

from __future__ import annotations

import ast
from pathlib import Path
from typing import TYPE_CHECKING

import batchkit

if TYPE_CHECKING:
    from collections.abc import Collection

#: Where batchkit's modules live, and the longest a module may grow.
SOURCE = Path(batchkit.__file__).resolve().parent
MAX_LINES = 800


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(SOURCE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    """Every module of the package by dotted name (a package by its ``__init__``)."""
    return {_module_name(path): path for path in sorted(SOURCE.rglob("*.py"))}


def _is_type_checking(test: ast.expr) -> bool:
    """Whether an ``if`` tests ``TYPE_CHECKING`` (or ``typing.TYPE_CHECKING``)."""
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _runtime_imports(tree: ast.Module) -> list[ast.Import | ast.ImportFrom]:
    """The imports that run: at the top, in functions and classes, not under TYPE_CHECKING."""
    found: list[ast.Import | ast.ImportFrom] = []

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.Import | ast.ImportFrom):
            found.append(node)
            return
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            for child in node.orelse:  # the `else:` of `if TYPE_CHECKING:` does run
                visit(child)
            return
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return found


def _resolve(module: str, is_package: bool, node: ast.ImportFrom) -> str:
    """The absolute name of the module a ``from ... import`` reads from."""
    if node.level == 0:
        return node.module or ""
    package = module.split(".") if is_package else module.split(".")[:-1]
    base = package[: len(package) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _imports_of(name: str, source: str, *, is_package: bool, modules: Collection[str]) -> set[str]:
    """The modules among ``modules`` that module ``name``, of this source, imports as it runs.

    ``from package import name`` depends on ``package.name`` when that is a module,
    and on the package otherwise (as Python imports them).
    """
    targets: set[str] = set()
    for node in _runtime_imports(ast.parse(source)):
        if isinstance(node, ast.Import):
            targets.update(alias.name for alias in node.names)
            continue
        base = _resolve(name, is_package, node)
        for alias in node.names:
            submodule = f"{base}.{alias.name}"
            targets.add(submodule if submodule in modules else base)
    return {t for t in targets if t in modules and t != name}


def _import_graph() -> dict[str, set[str]]:
    """Which batchkit modules each batchkit module imports when it runs."""
    modules = _modules()
    return {
        name: _imports_of(
            name,
            path.read_text(encoding="utf-8"),
            is_package=path.name == "__init__.py",
            modules=modules,
        )
        for name, path in modules.items()
    }


def _find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle through each strongly connected group of modules (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[list[str]] = []

    def connect(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph[node]):
            if target not in index:
                connect(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            group: list[str] = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.append(member)
                if member == node:
                    break
            if len(group) > 1:
                groups.append(sorted(group))

    for node in sorted(graph):
        if node not in index:
            connect(node)
    return [_cycle_in(graph, set(group)) for group in groups]


def _cycle_in(graph: dict[str, set[str]], group: set[str]) -> list[str]:
    """A shortest path from the group's first module back to itself, inside the group."""
    start = min(group)
    paths = {start: [start]}
    queue = [start]
    while queue:
        node = queue.pop(0)
        for target in sorted(graph[node] & group):
            if target == start:
                return [*paths[node], start]
            if target not in paths:
                paths[target] = [*paths[node], target]
                queue.append(target)
    raise AssertionError(f"no cycle in the group {sorted(group)}")  # pragma: no cover


def test_the_graph_sees_imports_the_way_python_runs_them() -> None:
    source = """
from __future__ import annotations
import typing
from typing import TYPE_CHECKING
import pkg.a
from . import b, not_a_module
from .sub import c
if TYPE_CHECKING:
    from . import hidden
else:
    from . import shown
if typing.TYPE_CHECKING:
    from . import hidden_too
def later():
    from .sub.d import thing
class K:
    from . import e
"""
    modules = {
        "pkg",
        "pkg.a",
        "pkg.b",
        "pkg.e",
        "pkg.sub",
        "pkg.sub.c",
        "pkg.sub.d",
        "pkg.hidden",
        "pkg.hidden_too",
        "pkg.shown",
        "pkg.mod",
    }
    found = _imports_of("pkg.mod", source, is_package=False, modules=modules)
    assert found == {"pkg", "pkg.a", "pkg.b", "pkg.sub.c", "pkg.shown", "pkg.sub.d", "pkg.e"}
    # From a package's __init__, one dot is the package itself.
    found = _imports_of(
        "pkg.sub", "from . import c\nfrom .. import a", is_package=True, modules=modules
    )
    assert found == {"pkg.sub.c", "pkg.a"}
    # On the real tree: `batchkit.__getattr__` loads the SQL adapter inside a function.
    graph = _import_graph()
    assert "batchkit.runner" in graph["batchkit"]
    assert "batchkit.storage.sql" in graph["batchkit"]


def test_the_cycle_finder_finds_cycles() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": {"e"}}
    assert _find_cycles(graph) == [["a", "b", "c", "a"]]
    assert _find_cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycles() -> None:
    cycles = _find_cycles(_import_graph())
    shown = "\n".join("  " + " -> ".join(cycle) for cycle in cycles)
    assert not cycles, f"batchkit's modules import each other in a cycle:\n{shown}"


def test_no_module_is_over_800_lines() -> None:
    too_long = {
        name: lines
        for name, path in _modules().items()
        if (lines := len(path.read_text(encoding="utf-8").splitlines())) > MAX_LINES
    }
    shown = "\n".join(
        f"  {name}: {lines} lines" for name, lines in sorted(too_long.items(), key=lambda x: -x[1])
    )
    assert not too_long, f"modules over {MAX_LINES} lines (split them by concern):\n{shown}"
