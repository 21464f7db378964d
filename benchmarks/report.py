"""RESULTS.md sections: each benchmark script rewrites only its own section."""

from __future__ import annotations

import datetime
import os
import platform
import sys
from pathlib import Path

_HEADER = "# Benchmark results\n\nEvery number below comes with the command that produced it.\n"


def command_line(module: str, argv: list[str] | None) -> str:
    """The command that ran ``module`` with ``argv`` (the process's arguments when None)."""
    return f"python -m {module} {' '.join(sys.argv[1:] if argv is None else argv)}".strip()


def _cpu_model() -> str:
    """CPU model name with family and model numbers (Linux), else ``platform.processor()``."""
    fields = {}
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if not line.strip():
                    break  # the first processor is enough
                key, _, value = line.partition(":")
                fields[key.strip()] = value.strip()
    except OSError:
        pass
    if "model name" not in fields:
        return platform.processor() or "unknown CPU"
    return f"{fields['model name']} (family {fields.get('cpu family', '?')}, model {fields.get('model', '?')})"


def machine_line() -> str:
    """Date and machine of a benchmark run, for the head of its RESULTS.md section.

    Fits can differ in their last bits between CPU models and instruction sets
    (and so in their discrete choices), so the section names both.
    """
    import torch

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return (
        f"Date: {datetime.date.today().isoformat()}; machine: {platform.machine()}, {_cpu_model()}, "
        f"torch CPU capability {torch.backends.cpu.get_cpu_capability()}, {cores} CPU cores, "
        f"Python {platform.python_version()}, torch {torch.__version__}, "
        f"{'CUDA available' if torch.cuda.is_available() else 'no GPU'}."
    )


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
