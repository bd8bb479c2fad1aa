"""Every code block of the pages read first (README.md, docs/quickstart.md) tells the truth.

Blocks are found by their fence, so a block added later is checked too:

* a ```python block runs as pasted, in a fresh interpreter and an empty directory: it must
  exit 0 and write nothing on stderr;
* the ```text block after a python block (prose may stand between) is what that program
  prints, exactly; when the prose calls it "something like" (timings vary), its first and
  last lines are exact and the others must appear in that order, whatever their numbers;
* a ```bash block's commands are checked as far as a test can: ``make X`` names a target
  of the Makefile as it is when the test runs, ``python -m batchkit worker ...`` (or another
  of its commands) is accepted by its argument parser and names a storage batchkit has,
  and ``pip install``
  names this project and extras it declares;
* any other block or command fails: teach this test how to check it.

Commands written inline in the prose (``make X``, ``pip install ...``) are checked as in a
bash block.
"""

from __future__ import annotations

import contextlib
import io
import re
import shlex
import tomllib
from dataclasses import dataclass
from typing import TYPE_CHECKING

import pytest

from batchkit import open_storage
from batchkit._operate import COMMANDS
from batchkit.cli import build_parser
from tests.examples._blocks import (
    ROOT,
    STRICT_PAGES,
    Block,
    fenced_blocks,
    output_of,
    prose,
    run_program,
)

if TYPE_CHECKING:
    from pathlib import Path

__all__: list[str] = []

_SHELLS = ("bash", "sh", "shell")


@dataclass(frozen=True)
class Shown:
    """A block to check, with the output the page shows for it (python blocks)."""

    block: Block
    output: Block | None = None


def _shown() -> list[Shown]:
    found: list[Shown] = []
    for page in STRICT_PAGES:
        blocks = fenced_blocks(ROOT / page)
        for index, block in enumerate(blocks):
            if index and output_of(blocks, index - 1) is block:
                continue  # the output of the program before it: checked with that program
            found.append(Shown(block, output_of(blocks, index)))
    return found


SHOWN = _shown()

_INLINE = re.compile(r"`([^`\n]+)`")


def _inline_commands() -> list[tuple[str, str]]:
    """The ``make ...`` and ``pip install ...`` written inline, with the page they are on."""
    found: dict[tuple[str, str], None] = {}
    for page in STRICT_PAGES:
        for span in _INLINE.findall(prose(ROOT / page)):
            if span.startswith(("make ", "pip install ")):
                found[page, span] = None
    return list(found)


INLINE = _inline_commands()


def test_the_pages_have_what_is_checked() -> None:
    # Guards the extraction itself: a broken pattern must not make every check vacuous.
    langs = [s.block.lang for s in SHOWN]
    assert langs.count("python") >= 6
    assert langs.count("bash") >= 3
    assert sum(s.output is not None for s in SHOWN) >= 5
    assert any(command.startswith("make ") for _, command in INLINE)


@pytest.mark.parametrize("shown", SHOWN, ids=[f"{s.block.where}:{s.block.lang}" for s in SHOWN])
def test_block(shown: Shown, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    block = shown.block
    if block.lang == "python":
        _check_program(block, shown.output, tmp_path)
    elif block.lang in _SHELLS:
        commands = _commands(block.body)
        assert commands, f"{block.where}: a shell block without a command"
        for command in commands:
            _check_command(command, block.where, monkeypatch)
    else:
        pytest.fail(
            f"{block.where}: no known way to check a ```{block.lang or '(no language)'} "
            "block that follows no python block; teach tests/examples/test_code_blocks.py"
        )


@pytest.mark.parametrize(("page", "command"), INLINE, ids=[f"{p}:{c}" for p, c in INLINE])
def test_inline_command(page: str, command: str, monkeypatch: pytest.MonkeyPatch) -> None:
    _check_command(shlex.split(command), page, monkeypatch)


# -- python blocks -------------------------------------------------------------------------


def _check_program(block: Block, output: Block | None, tmp_path: Path) -> None:
    done = run_program(block.body, tmp_path)
    assert done.returncode == 0, f"{block.where} failed:\n{done.stderr}"
    assert done.stderr == "", f"{block.where} wrote on stderr"
    if output is None:
        return
    if "something like" in output.before.lower():
        _assert_resembles(done.stdout, output)
    else:
        assert done.stdout == output.body, f"{block.where} does not print {output.where}"


def _shape(line: str) -> str:
    return " ".join(re.sub(r"\d+", "#", line).split())


def _assert_resembles(printed: str, output: Block) -> None:
    shown, lines = output.body.splitlines(), printed.splitlines()
    assert lines, f"{output.where}: the program printed nothing"
    if shown[0] != "...":
        assert lines[0] == shown[0], f"{output.where}: the first line"
    if shown[-1] != "...":
        assert lines[-1] == shown[-1], f"{output.where}: the last line"
    rest = iter(_shape(line) for line in lines)
    for line in shown:
        if line != "...":
            assert _shape(line) in rest, f"{output.where}: nothing like {line!r}, in order"


# -- shell commands ------------------------------------------------------------------------


def _commands(script: str) -> list[list[str]]:
    """The commands of a shell block, each split as the shell would, comments left out."""
    joined = script.replace("\\\n", " ")
    return [argv for line in joined.splitlines() if (argv := shlex.split(line, comments=True))]


def _check_command(argv: list[str], where: str, monkeypatch: pytest.MonkeyPatch) -> None:
    while argv and re.fullmatch(r"[A-Z_][A-Z0-9_]*=.*", argv[0]):
        name, _, value = argv.pop(0).partition("=")
        monkeypatch.setenv(name, value)
    shown = shlex.join(argv)
    if argv[:1] == ["make"]:
        _check_make(argv[1:], where)
    elif argv[:1] in (["python"], ["python3"]) and argv[1:3] == ["-m", "batchkit"]:
        _check_batchkit_cli(argv[3:], where, shown)
    elif argv[:2] == ["pip", "install"]:
        _check_pip_install(argv[2:], where)
    else:
        pytest.fail(
            f"{where}: no known way to check {shown!r}; teach tests/examples/test_code_blocks.py"
        )


def _make_targets() -> set[str]:
    """The targets the Makefile has rules for (not those of variables or patterns)."""
    text = (ROOT / "Makefile").read_text(encoding="utf-8").replace("\\\n", " ")
    targets: set[str] = set()
    for line in text.splitlines():
        if rule := re.match(r"([^\s#:=][^:=#]*?)\s*::?(?!=)", line):
            targets.update(t for t in rule.group(1).split() if not re.search(r"[$%]", t))
    return targets


def _check_make(args: list[str], where: str) -> None:
    named = [a for a in args if not a.startswith("-") and "=" not in a]
    assert named, f"{where}: `make` without a target"
    missing = sorted(set(named) - _make_targets())
    assert not missing, f"{where}: the Makefile has no target {', '.join(missing)}"


def _check_batchkit_cli(args: list[str], where: str, shown: str) -> None:
    said = io.StringIO()
    exit_code: object = None
    with contextlib.redirect_stderr(said), contextlib.redirect_stdout(said):
        try:
            parsed = build_parser().parse_args(args)
        except SystemExit as exc:  # --help, or refused
            exit_code = exc.code
    if exit_code is not None:
        assert exit_code == 0, f"{where}: {shown!r} is refused:\n{said.getvalue()}"
        return
    assert parsed.command in ("worker", *COMMANDS), f"{where}: {shown!r} runs no command"
    # What the command does with its options before it opens the storage: a URL that
    # names a storage batchkit has (built, not connected to).
    assert parsed.storage, f"{where}: {shown!r} names no storage"
    assert not parsed.storage.startswith("memory:"), f"{where}: memory:// is not shared"
    open_storage(parsed.storage, prefix=parsed.prefix)


def _check_pip_install(args: list[str], where: str) -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    extras = set(project.get("optional-dependencies", {}))
    wanted = [a for a in args if not a.startswith("-")]
    assert wanted, f"{where}: `pip install` of nothing"
    for requirement in wanted:
        named = re.fullmatch(r"(?P<what>\.|[\w.-]+)(?:\[(?P<extras>[^\]]*)\])?", requirement)
        assert named is not None, f"{where}: cannot read the requirement {requirement!r}"
        what = named.group("what")
        assert what in (".", project["name"]), f"{where}: {requirement!r} is not batchkit"
        asked = {e.strip() for e in (named.group("extras") or "").split(",") if e.strip()}
        assert asked <= extras, f"{where}: batchkit has no extra {', '.join(asked - extras)}"
