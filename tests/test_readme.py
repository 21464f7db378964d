"""The README's Python examples run as written (blocks marked as recipes are run elsewhere)."""

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.DOTALL)
RUNNABLE = [block for block in BLOCKS if not block.startswith("# recipe")]


def test_readme_has_examples():
    assert len(RUNNABLE) >= 3 and len(BLOCKS) > len(RUNNABLE)


@pytest.mark.parametrize("block", RUNNABLE, ids=[f"block{i}" for i in range(len(RUNNABLE))])
def test_readme_example_runs(block):
    import sklearn

    try:
        exec(compile(block, str(README), "exec"), {"__name__": "readme"})
    finally:
        sklearn.set_config(enable_metadata_routing=False)
