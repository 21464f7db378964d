"""Fit time and peak memory: MetaAugmentedHeadClassifier() against LogisticRegression and DFR.

    python -m benchmarks.speed                       # n in {6k, 50k, 200k}, d in {384, 2048}, + 200k x 1024
    python -m benchmarks.speed --sizes 6000x2048     # one size
    python -m benchmarks.speed --quick               # 6k rows only

Data: ``make_spurious_embeddings`` with 15% of rows annotated (float32). Every
method fits the same X in a fresh subprocess: one warm-up fit on 2,000 rows
(imports, thread pools, kernels), then ``--repeats`` timed fits; the median is
reported. Peak memory is the highest resident set size sampled (every 5 ms)
during a timed fit, minus the resident size just before it: memory beyond X.
LogisticRegression (lbfgs) fits the same rows; DFRClassifier and
MetaAugmentedHeadClassifier get ``groups`` (-1 on the 85% training rows).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from .report import command_line, machine_line, replace_section

METHODS = ["LogisticRegression", "DFRClassifier", "MetaAugmentedHeadClassifier"]
DEFAULT_SIZES = [
    (6000, 384),
    (6000, 2048),
    (50000, 384),
    (50000, 2048),
    (200000, 384),
    (200000, 1024),
    (200000, 2048),
]


def _rss_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class _PeakMemory:
    """Samples the resident set size in a thread; ``peak - start`` in bytes."""

    def __enter__(self):
        self.start = self.peak = _rss_bytes()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self):
        while not self._stop.wait(0.005):
            self.peak = max(self.peak, _rss_bytes())

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, _rss_bytes())

    @property
    def extra(self) -> int:
        return self.peak - self.start


def _make(method: str):
    if method == "LogisticRegression":
        from sklearn.linear_model import LogisticRegression

        return LogisticRegression(max_iter=1000), False
    if method == "DFRClassifier":
        from sklearn_featmeta.baselines import DFRClassifier

        return DFRClassifier(random_state=0), True
    from sklearn_featmeta import MetaAugmentedHeadClassifier

    return MetaAugmentedHeadClassifier(random_state=0), True


def worker(method: str, folder: Path, repeats: int) -> dict:
    """Runs in the subprocess: warm up, then time ``repeats`` fits."""
    X = np.load(folder / "X.npy")
    y = np.load(folder / "y.npy")
    groups = np.load(folder / "groups.npy")
    estimator, takes_groups = _make(method)
    warm = np.random.RandomState(0).choice(X.shape[0], 2000, replace=False)
    estimator.fit(X[warm], y[warm], *([groups[warm]] if takes_groups else []))
    seconds, extra = [], []
    for _ in range(repeats):
        with _PeakMemory() as memory:
            start = time.perf_counter()
            estimator.fit(X, y, *([groups] if takes_groups else []))
            seconds.append(time.perf_counter() - start)
        extra.append(memory.extra)
    return {"seconds": seconds, "extra_bytes": extra}


def measure(n: int, d: int, repeats: int, timeout: float) -> dict:
    from sklearn_featmeta.datasets import make_spurious_embeddings

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        X, y, groups = make_spurious_embeddings(n, d, known_group_fraction=0.15, random_state=0)
        np.save(folder / "X.npy", X)
        np.save(folder / "y.npy", y)
        np.save(folder / "groups.npy", groups)
        x_bytes = X.nbytes
        del X
        row = {"n": n, "d": d, "x_bytes": x_bytes}
        for method in METHODS:
            command = [
                sys.executable,
                "-m",
                "benchmarks.speed",
                "--worker",
                method,
                str(folder),
                str(repeats),
            ]
            try:
                done = subprocess.run(
                    command, capture_output=True, text=True, timeout=timeout, check=True
                )
                row[method] = json.loads(done.stdout.strip().splitlines()[-1])
            except subprocess.TimeoutExpired:
                row[method] = {"timeout": timeout}
            except subprocess.CalledProcessError as exc:
                row[method] = {"error": exc.stderr.strip().splitlines()[-1]}
            print(f"{n:>7} x {d:<5} {method:<28} {_cell(row[method], x_bytes)}", flush=True)
    return row


def _cell(result: dict, x_bytes: int) -> str:
    if "seconds" not in result:
        return "timeout" if "timeout" in result else f"error: {result['error']}"
    return f"{statistics.median(result['seconds']):8.2f}s  peak +{max(result['extra_bytes']) / x_bytes:.2f} x X"


def markdown(rows: list[dict], command: str) -> str:
    lines = [
        f"Command: `{command}`  ",
        f"{machine_line()}  ",
        "Median fit seconds after a warm-up fit; peak memory beyond X as a multiple "
        "of X's size (float32). HSFM = `MetaAugmentedHeadClassifier()` defaults.",
        "",
        "| n x d | LogisticRegression | DFRClassifier | HSFM | HSFM / LR | HSFM / DFR | HSFM peak memory beyond X |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        lr, dfr, ours = (
            statistics.median(row[m]["seconds"]) if "seconds" in row[m] else None for m in METHODS
        )
        fmt = lambda v: "—" if v is None else f"{v:.2f} s"  # noqa: E731
        ratio = lambda a, b: "—" if a is None or b is None else f"{a / b:.2f}"  # noqa: E731
        extra = row["MetaAugmentedHeadClassifier"].get("extra_bytes")
        memory = "—" if not extra else f"{max(extra) / row['x_bytes']:.2f} x X"
        lines.append(
            f"| {row['n']:,} x {row['d']} | {fmt(lr)} | {fmt(dfr)} | {fmt(ours)} | {ratio(ours, lr)} | "
            f"{ratio(ours, dfr)} | {memory} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.speed", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--sizes", nargs="+", help="e.g. 6000x2048 (default: the issue's grid)")
    parser.add_argument("--quick", action="store_true", help="the 6k-row sizes only")
    parser.add_argument(
        "--repeats", type=int, default=3, help="timed fits per method (1 above 50k rows)"
    )
    parser.add_argument("--timeout", type=float, default=1800, help="seconds per method and size")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent)
    parser.add_argument("--worker", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        method, folder, repeats = args.worker
        print(json.dumps(worker(method, Path(folder), int(repeats))))
        return 0
    sizes = (
        [tuple(int(v) for v in s.split("x")) for s in args.sizes] if args.sizes else DEFAULT_SIZES
    )
    if args.quick:
        sizes = [s for s in sizes if s[0] <= 6000]
    rows = [measure(n, d, args.repeats if n <= 50000 else 1, args.timeout) for n, d in sizes]

    command = command_line("benchmarks.speed", argv)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "speed.json").write_text(json.dumps({"command": command, "rows": rows}, indent=1))
    table = markdown(rows, command)
    replace_section(args.out / "RESULTS.md", "speed", table)
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
