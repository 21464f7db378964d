"""Group-aware metrics: worst-group accuracy, the report, make_groups."""

import sys

import numpy as np
import pytest

from sklearn_featmeta.metrics import (
    group_accuracy_report,
    make_groups,
    worst_group_accuracy_score,
)

Y_TRUE = np.array([0, 0, 0, 1, 1, 1, 1, 0])
Y_PRED = np.array([0, 1, 0, 1, 1, 0, 1, 1])
GROUPS = np.array(["a", "a", "a", "b", "b", "b", "c", -1], dtype=object)


def test_worst_group_accuracy_ignores_unknown_rows():
    # a: 2/3, b: 2/3, c: 1/1; the last row (unknown, wrong) is ignored
    assert worst_group_accuracy_score(Y_TRUE, Y_PRED, groups=GROUPS) == pytest.approx(2 / 3)
    as_none = GROUPS.copy()
    as_none[-1] = None
    assert worst_group_accuracy_score(Y_TRUE, Y_PRED, groups=as_none) == pytest.approx(2 / 3)
    floats = np.array([0, 0, 0, 1, 1, 1, 2, np.nan])
    assert worst_group_accuracy_score(Y_TRUE, Y_PRED, groups=floats) == pytest.approx(2 / 3)


def test_worst_group_accuracy_with_sample_weight():
    weight = np.array([1, 3, 1, 1, 1, 1, 1, 1])  # the wrong row of group a counts thrice
    score = worst_group_accuracy_score(Y_TRUE, Y_PRED, groups=GROUPS, sample_weight=weight)
    assert score == pytest.approx(2 / 5)


def test_worst_group_accuracy_errors():
    with pytest.raises(ValueError, match="groups is required"):
        worst_group_accuracy_score(Y_TRUE, Y_PRED)
    with pytest.raises(ValueError, match="Every row's group is unknown"):
        worst_group_accuracy_score(Y_TRUE, Y_PRED, groups=[-1] * 8)
    with pytest.raises(ValueError, match="groups has 3 entries"):
        worst_group_accuracy_score(Y_TRUE, Y_PRED, groups=[1, 2, 3])


def test_report_numbers_and_text():
    pytest.importorskip("pandas")
    report = group_accuracy_report(Y_TRUE, Y_PRED, groups=GROUPS)
    assert report.by_group["count"].to_dict() == {"a": 3, "b": 3, "c": 1}
    assert report.by_group["accuracy"].to_list() == pytest.approx([2 / 3, 2 / 3, 1.0])
    assert report.by_group["worst"].to_list() == [True, False, False]  # first of the tied worst
    assert report.accuracy == pytest.approx(5 / 7)
    assert report.mean_group_accuracy == pytest.approx((2 / 3 + 2 / 3 + 1) / 3)
    assert report.worst_group_accuracy == pytest.approx(2 / 3) and report.worst_group == "a"
    assert report.gap == pytest.approx(5 / 7 - 2 / 3)
    text = str(report)
    assert "a" in text.splitlines()[1] and "<- worst" in text.splitlines()[1]
    assert "worst-group accuracy  0.6667  (group a)" in text
    assert report.to_dict()["by_group"]["c"] == {"count": 1, "accuracy": 1.0}


def test_report_without_pandas_is_a_structured_array(monkeypatch):
    monkeypatch.setitem(sys.modules, "pandas", None)  # "import pandas" raises ImportError
    report = group_accuracy_report(Y_TRUE, Y_PRED, groups=GROUPS)
    assert isinstance(report.by_group, np.ndarray)
    assert report.by_group.dtype.names == ("group", "count", "accuracy", "worst")
    assert report.by_group["count"].tolist() == [3, 3, 1]
    assert "<- worst" in str(report)


def test_make_groups():
    groups = make_groups(["bird", "bird", "fish"], ["water", "land", None], [0, 1, 1])
    assert groups.tolist() == ["bird|water|0", "bird|land|1", None]
    assert make_groups([1, 0], [-1, 3], sep="/").tolist() == [None, "0/3"]
    with pytest.raises(ValueError, match="at least one attribute"):
        make_groups([1, 2])
