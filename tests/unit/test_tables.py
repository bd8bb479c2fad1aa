"""`batchkit._tables`: one printable line per cell, cells cut to a width, tables fitted to it."""

from __future__ import annotations

import pytest

from batchkit._tables import Column, Table, _width, clean, cut

# -- clean ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("plain text", "plain text"),
        ("\x1b[2J\x1b[31mred", "[2J [31mred"),  # ESC: the sequence cannot start
        ("over\rwrite", "over write"),
        ("bell\x07 and NUL\x00", "bell and NUL"),
        ("DEL\x7fhere", "DEL here"),
        ("csi\x9b31m", "csi 31m"),  # C1 CSI, one character
        ("next\x85line", "next line"),  # C1 NEL
        ("line\u2028sep\u2029para", "line sep para"),
        ("two\n\nlines\ttabbed", "two lines tabbed"),
        ("  \x1b\x1b  runs\r\n\r\n  collapse \x9b ", "runs collapse"),
        ("", ""),
    ],
)
def test_clean_makes_one_printable_line(text: str, expected: str) -> None:
    cleaned = clean(text)
    assert cleaned == expected
    assert not any(ord(ch) < 0x20 or 0x7F <= ord(ch) <= 0x9F for ch in cleaned)
    assert "\u2028" not in cleaned
    assert "\u2029" not in cleaned


def test_clean_takes_any_object() -> None:
    assert clean(42) == "42"
    assert clean(None) == "None"


def test_clean_keeps_printable_unicode() -> None:
    assert clean("日本語 café ✓") == "日本語 café ✓"


# -- cut -----------------------------------------------------------------------------------


def test_cut_leaves_a_text_that_fits_exactly() -> None:
    assert cut("abcdef", 6) == "abcdef"
    assert cut("abcdef", 10) == "abcdef"
    assert cut("", 0) == ""


@pytest.mark.parametrize("width", [1, 2, 3, 5])
def test_cut_ends_with_an_ellipsis_within_the_width(width: int) -> None:
    cutted = cut("abcdef", width)
    assert cutted.endswith("…")
    assert _width(cutted) == width
    assert "abcdef".startswith(cutted[:-1])


def test_cut_to_nothing() -> None:
    assert cut("abc", 0) == ""
    assert cut("abc", -3) == ""


def test_cut_counts_wide_characters_as_two_columns() -> None:
    assert _width("日本語") == 6
    assert cut("日本語", 6) == "日本語"
    assert cut("日本語", 5) == "日本…"
    assert cut("日本語", 4) == "日…"  # a wide character does not fit in the one column left
    assert _width(cut("日本語", 4)) <= 4
    assert cut("a日本", 4) == "a日…"
    for width in range(1, 8):
        assert _width(cut("日本語テキスト", width)) <= width


# -- Table ---------------------------------------------------------------------------------


def _table() -> Table:
    table = Table(
        [
            Column("ID"),
            Column("COUNT", right=True),
            Column("NOTE", flexible=True),
        ]
    )
    table.add("0123456789", 7, "a note that is much too long to fit in a narrow terminal")
    table.add("abc", 12345, "short")
    return table


def test_a_table_that_fits_keeps_every_cell_whole() -> None:
    lines = list(_table().lines(200))
    assert lines[0] == "ID          COUNT  NOTE"
    assert lines[1] == "0123456789      7  a note that is much too long to fit in a narrow terminal"
    assert lines[2] == "abc         12345  short"


def test_a_table_fits_the_width_by_cutting_its_flexible_column() -> None:
    lines = list(_table().lines(40))
    assert all(_width(line) <= 40 for line in lines)
    assert max(_width(line) for line in lines) == 40
    assert lines[1].startswith("0123456789      7  a note")
    assert lines[1].endswith("…")
    assert lines[2] == "abc         12345  short"


def test_numbers_are_right_aligned() -> None:
    lines = list(_table().lines(200))
    column = lines[0].index("COUNT")
    assert lines[1][column : column + 5] == "    7"
    assert lines[2][column : column + 5] == "12345"


def test_a_fixed_column_is_never_cut() -> None:
    table = Table([Column("ID"), Column("NOTE", flexible=True, least=4)])
    long_id = "01a24d05-5ed5-7728-8214-d4fb65d98404"
    table.add(long_id, "some words here")
    lines = list(table.lines(20))  # the id alone is wider than the terminal
    assert lines[1].startswith(long_id + "  ")
    # The flexible column is cut down to its least width (the heading's, 4), no further.
    assert lines[1] == long_id + "  som…"
    assert lines[0] == "ID" + " " * 34 + "  NOTE"


def test_a_flexible_column_is_never_cut_below_its_least_width() -> None:
    table = Table([Column("KEY"), Column("MESSAGE", flexible=True, least=12)])
    table.add("k", "x" * 40)
    lines = list(table.lines(10))
    assert lines[1] == "k    " + "x" * 11 + "…"  # 12 columns, though 10 were asked for
    assert _width(lines[1]) == 3 + 2 + 12


def test_a_flexible_column_is_never_cut_below_its_heading() -> None:
    table = Table([Column("KEY"), Column("A LONG HEADING", flexible=True, least=2)])
    table.add("k", "y" * 40)
    lines = list(table.lines(5))
    assert lines[0] == "KEY  A LONG HEADING"
    assert lines[1] == "k    " + "y" * 13 + "…"


def test_a_short_flexible_column_keeps_its_natural_width() -> None:
    table = Table([Column("ID"), Column("M", flexible=True, least=8)])
    table.add("x" * 30, "abc")
    lines = list(table.lines(10))
    assert lines[1] == "x" * 30 + "  abc"  # shorter than its least: nothing to cut


def test_several_flexible_columns_are_cut_until_the_table_fits() -> None:
    table = Table(
        [
            Column("ID"),
            Column("KEY", flexible=True, least=4),
            Column("MESSAGE", flexible=True, least=4),
        ]
    )
    table.add("id-1", "k" * 30, "m" * 50)
    for width in (30, 40, 60, 80):
        lines = list(table.lines(width))
        assert all(_width(line) <= width for line in lines), width
        assert lines[1].startswith("id-1  k")
    assert list(table.lines(90))[1] == "id-1  " + "k" * 30 + "  " + "m" * 50


def test_cells_added_are_cleaned() -> None:
    table = Table([Column("ID"), Column("NOTE", flexible=True)])
    table.add("a\x1b[2Jb", "line\r\nbreak\x9b1m")
    lines = list(table.lines(100))
    assert lines[1] == "a [2Jb  line break 1m"
    assert "\x1b" not in "".join(lines)


def test_wide_characters_are_aligned_by_columns() -> None:
    table = Table([Column("KEY"), Column("STATE")])
    table.add("日本", "done")
    table.add("abcd", "done")
    lines = list(table.lines(80))
    assert lines[1] == "日本  done"
    assert lines[2] == "abcd  done"
    assert _width(lines[1]) == _width(lines[2])


def test_a_table_without_rows_is_its_heading() -> None:
    table = Table([Column("ID"), Column("NOTE", flexible=True)])
    assert list(table.lines(80)) == ["ID  NOTE"]


def test_two_flexible_columns_give_up_space_evenly() -> None:
    table = Table(
        [Column("ID"), Column("A", flexible=True, least=4), Column("B", flexible=True, least=4)]
    )
    table.add("x" * 10, "a" * 40, "b" * 30)
    _heading, row = list(table.lines(50))
    assert len(row) <= 50
    a, b = row.split("  ")[1:]
    assert abs(len(a) - len(b)) <= 1
