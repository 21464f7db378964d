"""Every Python block of the README and of docs/ runs as written."""

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
PAGES = [README, *sorted((ROOT / "docs").glob("*.md"))]
BLOCKS = [
    (page, block)
    for page in PAGES
    for block in re.findall(r"```python\n(.*?)```", page.read_text(), flags=re.DOTALL)
]


def test_readme_has_examples():
    assert sum(page == README for page, _ in BLOCKS) >= 2 and len(BLOCKS) >= 4


@pytest.mark.parametrize(
    ("page", "block"), BLOCKS, ids=[f"{page.stem}-{i}" for i, (page, _) in enumerate(BLOCKS)]
)
def test_readme_example_runs(page, block):
    import sklearn

    try:
        exec(compile(block, str(page), "exec"), {"__name__": "readme"})
    finally:
        sklearn.set_config(enable_metadata_routing=False)


def _parameter_table() -> dict[str, str]:
    """README's parameter table: name -> default, as written (rows may name two parameters)."""
    section = README.read_text().split("## Parameters", 1)[1].split("\n## ", 1)[0]
    table = {}
    for line in section.splitlines():
        if not line.startswith("| `"):
            continue
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        names = [name.strip(" `") for name in cells[0].split(",")]
        # a tuple default, "(1.0, 2.0)", is one value
        defaults = [value.strip(" `") for value in re.split(r", (?![^(]*\))", cells[1])]
        assert len(names) == len(defaults), line
        table.update(zip(names, defaults, strict=True))
    return table


def test_readme_parameter_table_matches_the_estimator_and_the_cli():
    from sklearn_featmeta import MetaAugmentedHeadClassifier
    from sklearn_featmeta.cli import _NOT_OPTIONS, _fit_options

    defaults = MetaAugmentedHeadClassifier().get_params()
    table = _parameter_table()
    assert set(table) == set(defaults)
    for name, value in defaults.items():
        written = f'"{value}"' if isinstance(value, str) else str(value)
        assert table[name] == written, (name, table[name], written)
    options = {name for _, name, *_ in _fit_options()}
    assert options | set(_NOT_OPTIONS) == set(defaults)


def test_readme_stays_short():
    """The README is a front page (details live in docs/); it grew past 14 KB twice."""
    assert len(README.read_bytes()) < 14_000
