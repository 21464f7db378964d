"""The code stays readable: short modules and signatures, no cycles, no formatter escapes."""

import ast
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "sklearn_featmeta"
MAX_PARAMETERS = 8  # besides keyword-only options with defaults
MAX_MODULE_LINES = 800


def _modules():
    return sorted(PACKAGE.rglob("*.py"))


def _functions():
    for path in _modules():
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                yield path.name, node


def _required_parameters(node) -> int:
    arguments = node.args
    positional = [
        a.arg for a in arguments.posonlyargs + arguments.args if a.arg not in ("self", "cls")
    ]
    keyword_only = [
        a
        for a, default in zip(arguments.kwonlyargs, arguments.kw_defaults, strict=True)
        if default is None
    ]
    return len(positional) + len(keyword_only)


def test_no_function_takes_more_than_eight_parameters():
    too_long = [
        f"{name}:{node.lineno} {node.name} ({_required_parameters(node)})"
        for name, node in _functions()
        if _required_parameters(node) > MAX_PARAMETERS
    ]
    assert not too_long, too_long


def test_no_formatter_escapes_anywhere():
    escapes = ("fmt: " + "skip", "fmt: " + "off")  # spelled apart: this file has none either
    files = [
        *_modules(),
        *sorted((ROOT / "benchmarks").glob("*.py")),
        *(ROOT / "tests").glob("*.py"),
    ]
    escaped = [
        f"{path.relative_to(ROOT)}:{number}"
        for path in files
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if any(escape in line for escape in escapes)
    ]
    assert not escaped, escaped


def test_no_module_is_longer_than_800_lines():
    long = [
        f"{path.relative_to(ROOT)} ({n})"
        for path in _modules()
        if (n := len(path.read_text().splitlines())) > MAX_MODULE_LINES
    ]
    assert not long, long


def _imports_within_the_package(path: Path) -> set[str]:
    """Modules of the package that ``path`` imports (relative imports, by dotted name)."""
    name = ".".join(path.relative_to(ROOT).with_suffix("").parts)
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    package = package.removesuffix(".__init__")
    imported = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level:
            base = package.split(".")[: len(package.split(".")) - node.level + 1]
            if node.module:
                imported.add(".".join([*base, node.module]))
            else:
                imported.update(".".join([*base, alias.name]) for alias in node.names)
    return imported


def test_no_import_cycle_between_package_modules():
    graph = {}
    for path in _modules():
        name = ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
        graph[name] = _imports_within_the_package(path)

    def reaches(start, goal, seen):
        for module in graph.get(start, ()):
            if module == goal or (module not in seen and reaches(module, goal, seen | {module})):
                return True
        return False

    cyclic = sorted(module for module in graph if reaches(module, module, {module}))
    assert not cyclic, cyclic


def test_core_settings_have_no_defaults_of_their_own():
    """Defaults live on the estimator only: every HSFMSettings field is filled from it."""
    import dataclasses

    from sklearn_featmeta import MetaAugmentedHeadClassifier
    from sklearn_featmeta._core import _types
    from sklearn_featmeta._core_inputs import core_settings
    from sklearn_featmeta._rows import FitData

    fields = dataclasses.fields(_types.HSFMSettings)
    assert all(field.default is dataclasses.MISSING for field in fields)
    rows = np.arange(40)
    data = FitData(
        X=np.zeros((40, 2)),
        y=rows % 2,
        weights=np.ones(40),
        pool=rows[:30],
        annotated=rows[30:],
        cells=rows[30:] % 2,
        n_cells=2,
        mean=np.zeros(2),
        scale=np.ones(2),
        class_factor=np.ones(2),
    )
    estimator = MetaAugmentedHeadClassifier()
    settings = core_settings(estimator, data, estimator._whitening_ridge(data))
    assert settings.outer_steps == MetaAugmentedHeadClassifier().outer_steps
    assert settings.erm_class_factor is None
    assert settings.whitening_ridge is None  # 15 rows per feature
    more_rows = dataclasses.replace(data, pool=rows[:32])
    settings = core_settings(estimator, more_rows, estimator._whitening_ridge(more_rows))
    assert settings.whitening_ridge == 0.1  # 16 rows per feature
