"""Smoke tests of the benchmark harnesses on tiny synthetic data (the full runs are commands)."""

import json

import pytest

from benchmarks import run, speed
from benchmarks.data import has_negation
from benchmarks.report import replace_section


def test_run_harness_on_synthetic_data(tmp_path):
    pytest.importorskip("matplotlib")
    assert run.main(["--synthetic", "--seeds", "0", "1", "--out", str(tmp_path)]) == 0
    results = json.loads((tmp_path / "results.json").read_text())
    summary = results["summary"]["synthetic"]
    assert set(summary) == set(run.methods("synthetic"))
    for row in summary.values():
        assert row["n_seeds"] == 2 and 0 <= row["worst_group_mean"] <= 100
    assert len(results["per_seed"]["synthetic"]["DFRClassifier"]["worst_group_accuracy"]) == 2
    assert (tmp_path / "wga.png").stat().st_size > 1000
    text = (tmp_path / "RESULTS.md").read_text()
    assert "<!-- begin: benchmarks -->" in text and "| DFRClassifier |" in text


def test_speed_harness_on_a_tiny_size(tmp_path):
    assert speed.main(["--sizes", "2500x16", "--repeats", "1", "--out", str(tmp_path)]) == 0
    rows = json.loads((tmp_path / "speed.json").read_text())["rows"]
    assert rows[0]["n"] == 2500
    for method in speed.METHODS:
        assert len(rows[0][method]["seconds"]) == 1 and rows[0][method]["extra_bytes"][0] >= 0
    assert "| 2,500 x 16 |" in (tmp_path / "RESULTS.md").read_text()


def test_sections_are_replaced_in_place(tmp_path):
    path = tmp_path / "RESULTS.md"
    replace_section(path, "a", "first")
    replace_section(path, "b", "other")
    replace_section(path, "a", "second")
    text = path.read_text()
    assert "second" in text and "first" not in text and text.index("second") < text.index("other")


@pytest.mark.parametrize(
    "sentence, expected",
    [
        ("it is n't funny .", True),
        ("not bad", True),
        ("a delight without end", True),
        ("nothingness", False),
        ("a fine film", False),
    ],
)
def test_negation_words(sentence, expected):
    assert has_negation(sentence) is expected
