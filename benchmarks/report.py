"""RESULTS.md sections: each benchmark script rewrites only its own section."""

from __future__ import annotations

import sys
from pathlib import Path

_HEADER = "# Benchmark results\n\nEvery number below comes with the command that produced it.\n"


def command_line(module: str, argv: list[str] | None) -> str:
    """The command that ran ``module`` with ``argv`` (the process's arguments when None)."""
    return f"python -m {module} {' '.join(sys.argv[1:] if argv is None else argv)}".strip()


def replace_section(path: Path, name: str, text: str) -> None:
    """Put ``text`` between ``<!-- begin: name -->`` and ``<!-- end: name -->`` in ``path``."""
    begin, end = f"<!-- begin: {name} -->", f"<!-- end: {name} -->"
    path.parent.mkdir(parents=True, exist_ok=True)  # a new --out folder
    content = path.read_text() if path.exists() else _HEADER
    block = f"{begin}\n{text.rstrip()}\n{end}"
    if begin in content and end in content:
        head, rest = content.split(begin, 1)
        _, tail = rest.split(end, 1)
        content = head + block + tail
    else:
        content = content.rstrip() + f"\n\n{block}\n"
    path.write_text(content)
