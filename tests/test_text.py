"""The package's one text-table renderer."""

from sklearn_featmeta._text import text_table


def test_columns_align_and_blank_rows_separate():
    lines = text_table(
        ["group", "count", "accuracy"], [["a", "3", "1.0000"], None, ["bb", "12", "0.5"]]
    )
    assert lines == [
        "group  count  accuracy",
        "a          3    1.0000",
        "",
        "bb        12       0.5",
    ]


def test_a_wide_cell_widens_its_column_and_trailing_spaces_go():
    lines = text_table(["g", ""], [["x", "<- worst"], ["y", ""]])
    assert lines == ["g", "x  <- worst", "y"]
