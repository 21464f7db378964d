"""Fit time and peak memory: MetaAugmentedHeadClassifier() against LogisticRegression and DFR.

    python -m benchmarks.speed                       # n in {6k, 50k, 200k}, d in {384, 2048}, + 200k x 1024
    python -m benchmarks.speed --sizes 6000x2048     # one size
    python -m benchmarks.speed --sizes 5994x2048:1199  # one size, 1,199 rows annotated
    python -m benchmarks.speed --quick               # 6k rows only
    python -m benchmarks.speed --busy --grid-search  # also on a busy machine, and a grid search

Data: ``make_spurious_embeddings`` with 15% of rows annotated, or as many as a
size names after a colon (float32; the paper's shape: Waterbirds' 4,795 training
and 1,199 validation rows of 2048-d ResNet-50 features). Every
method fits the same X in a fresh subprocess: one warm-up fit on 2,000 rows
(imports, thread pools, kernels), then ``--repeats`` timed fits (DFR: one above
50,000 rows, where it takes minutes); the median is reported. Peak memory is
the highest resident set size sampled (every 5 ms) during a timed fit, minus
the resident size just before it: memory beyond X.
LogisticRegression (lbfgs) fits the same rows; DFRClassifier and
MetaAugmentedHeadClassifier get ``groups`` (-1 on the 85% training rows).

``--busy`` times every fit a second time while one other CPU-bound process
(a Python busy loop) runs, as on a shared machine: the busy / idle ratio is
what contention costs. ``--grid-search`` measures fits per second inside a
5-fold x 8-candidate ``GridSearchCV`` on 3,000 x 384 (``n_jobs=1``).

The section ends with every benchmark task's median fit time, read from the
accuracy runs' results (``results.json``, ``results-suite-*.json`` next to
RESULTS.md): there every method fits the same rows in one process, one after
another, so their ratios are side by side; nothing is refitted here.
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
    *("6000x384", "6000x2048", "50000x384", "50000x2048", "200000x384", "200000x1024"),
    "200000x2048",
    "5994x2048:1199",  # the paper's shape: Waterbirds
    "7000x1536:2000",  # sentence-pair embeddings, a couple of thousand annotated
]
DEFAULT_ANNOTATED_FRACTION = 0.15


def parse_size(text: str) -> tuple[int, int, int]:
    """``"6000x384"`` (15% annotated) or ``"5994x2048:1199"`` -> (rows, features, annotated)."""
    shape, _, annotated = text.partition(":")
    n, d = (int(v) for v in shape.split("x"))
    return n, d, int(annotated) if annotated else round(DEFAULT_ANNOTATED_FRACTION * n)


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


class _BusyProcess:
    """Context manager: one other CPU-bound process (a Python busy loop) runs inside it."""

    def __enter__(self):
        self.process = subprocess.Popen([sys.executable, "-c", "while True: pass"])
        time.sleep(1.0)  # let it take its core
        return self

    def __exit__(self, *exc):
        self.process.kill()
        self.process.wait()


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


def _run_worker(method: str, folder: Path, repeats: int, timeout: float) -> dict:
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
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=True)
        return json.loads(done.stdout.strip().splitlines()[-1])
    except subprocess.TimeoutExpired:
        return {"timeout": timeout}
    except subprocess.CalledProcessError as exc:
        return {"error": exc.stderr.strip().splitlines()[-1]}


def measure(
    n: int, d: int, annotated: int, repeats: int, timeout: float, busy: bool = False
) -> dict:
    from sklearn_featmeta.datasets import make_spurious_embeddings

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        X, y, groups = make_spurious_embeddings(
            n, d, known_group_fraction=annotated / n, random_state=0
        )
        annotated = int((groups != -1).sum())
        np.save(folder / "X.npy", X)
        np.save(folder / "y.npy", y)
        np.save(folder / "groups.npy", groups)
        x_bytes = X.nbytes
        del X
        row = {"n": n, "d": d, "annotated": annotated, "x_bytes": x_bytes}
        for method in METHODS:
            # above 50k rows DFR takes minutes a fit: one; the others' medians need repeats
            method_repeats = 1 if n > 50000 and method == "DFRClassifier" else repeats
            row[method] = _run_worker(method, folder, method_repeats, timeout)
            print(f"{n:>7} x {d:<5} {method:<28} {_cell(row[method], x_bytes)}", flush=True)
            if busy:
                with _BusyProcess():
                    row[f"{method} busy"] = _run_worker(method, folder, method_repeats, timeout)
                print(
                    f"{'':>15} {method + ' (busy)':<28} {_cell(row[f'{method} busy'], x_bytes)}",
                    flush=True,
                )
    return row


def grid_search_rate(n: int = 3000, d: int = 384) -> dict:
    """Fits per second of each method in a 5-fold x 8-candidate GridSearchCV (one process)."""
    import sklearn
    from sklearn.model_selection import GridSearchCV

    from sklearn_featmeta.datasets import make_spurious_embeddings
    from sklearn_featmeta.metrics import worst_group_scorer
    from sklearn_featmeta.model_selection import SubgroupStratifiedKFold

    X, y, groups = make_spurious_embeddings(n, d, known_group_fraction=0.3, random_state=0)
    rates = {}
    with sklearn.config_context(enable_metadata_routing=True):  # set_fit_request needs it
        for method, (estimator, grid) in _grids().items():
            search = GridSearchCV(
                estimator,
                grid,
                cv=SubgroupStratifiedKFold(5, shuffle=True, random_state=0),
                scoring=worst_group_scorer,
                refit=False,
            )
            start = time.perf_counter()
            search.fit(X, y, groups=groups)  # routed to the scorer, and to fit where requested
            fits = 5 * len(search.cv_results_["params"])
            rates[method] = fits / (time.perf_counter() - start)
            print(f"grid search {method:<28} {rates[method]:.2f} fits/s", flush=True)
    return {"n": n, "d": d, "fits_per_second": rates}


def _grids() -> dict:
    """Each method with an 8-candidate grid; ours and DFR request ``groups``."""
    from sklearn.linear_model import LogisticRegression

    from sklearn_featmeta import MetaAugmentedHeadClassifier
    from sklearn_featmeta.baselines import DFRClassifier

    return {
        "LogisticRegression": (LogisticRegression(max_iter=1000), {"C": np.logspace(-3, 3, 8)}),
        "DFRClassifier": (
            DFRClassifier(random_state=0).set_fit_request(groups=True),
            {"n_estimators": [3, 4, 5, 6, 7, 8, 9, 10]},
        ),
        "MetaAugmentedHeadClassifier": (
            MetaAugmentedHeadClassifier(random_state=0).set_fit_request(groups=True),
            {"outer_lr": [0.003, 0.01, 0.03, 0.1], "hard_set": ["class", "group"]},
        ),
    }


def _cell(result: dict, x_bytes: int) -> str:
    if "seconds" not in result:
        return "timeout" if "timeout" in result else f"error: {result['error']}"
    return f"{statistics.median(result['seconds']):8.2f}s  peak +{max(result['extra_bytes']) / x_bytes:.2f} x X"


def _median(result: dict | None) -> float | None:
    return statistics.median(result["seconds"]) if result and "seconds" in result else None


# accuracy runs whose fit times the task table reads: RESULTS.md section -> results file
TASK_RESULTS = {
    "benchmarks": "results.json",
    "suite-tuning": "results-suite-tuning.json",
    "suite-report": "results-suite-report.json",
    "suite-tuning-few": "results-suite-tuning-few.json",
}


def task_fit_times(folder: Path) -> list[dict]:
    """Median fit seconds of the defaults, DFR and LogisticRegression on every benchmark task."""
    from .run import DEFAULTS_LABEL, DFR_LABEL, ERM_LABEL

    rows = []
    for section, name in TASK_RESULTS.items():
        path = folder / name
        if not path.exists():
            continue
        for task, methods in json.loads(path.read_text())["per_seed"].items():
            median = {
                key: statistics.median(methods[label]["fit_seconds"]) if label in methods else None
                for key, label in (
                    ("defaults", DEFAULTS_LABEL),
                    ("dfr", DFR_LABEL),
                    ("lr", ERM_LABEL),
                )
            }
            seeds = len(methods[DEFAULTS_LABEL]["fit_seconds"]) if DEFAULTS_LABEL in methods else 0
            rows.append({"section": section, "task": task, "seeds": seeds, **median})
    return rows


def task_markdown(rows: list[dict]) -> list[str]:
    if not rows:
        return []
    lines = [
        "",
        "Every benchmark task: median fit seconds over its seeds in the accuracy run of the "
        "named RESULTS.md section (every method in one process, side by side; LR = "
        "`LogisticRegression` on the training rows, the ERM row).",
        "",
        "| section | task | seeds | LR | DFRClassifier | defaults | defaults / DFR | defaults / LR |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        fmt = lambda v: "—" if v is None else f"{v:.2f} s"  # noqa: E731
        ratio = lambda a, b: "—" if a is None or b is None else f"{a / b:.2f}"  # noqa: E731
        lines.append(
            f"| {row['section']} | {row['task']} | {row['seeds']} | {fmt(row['lr'])} | "
            f"{fmt(row['dfr'])} | {fmt(row['defaults'])} | {ratio(row['defaults'], row['dfr'])} | "
            f"{ratio(row['defaults'], row['lr'])} |"
        )
    ratios = [r["defaults"] / r["dfr"] for r in rows if r["defaults"] and r["dfr"]]
    if ratios:
        # a task in several sections (a tuning task with a five-seed section of its own) counts
        # by the section where it has the most seeds: its median over the most fits
        widest = {}
        for row in rows:
            if (
                row["defaults"]
                and row["dfr"]
                and row["seeds"] > widest.get(row["task"], {}).get("seeds", 0)
            ):
                widest[row["task"]] = row
        per_task = [row["defaults"] / row["dfr"] for row in widest.values()]
        lines += [
            "",
            f"Defaults / DFR over the rows: median {statistics.median(ratios):.2f}, "
            f"highest {max(ratios):.2f}. Per task, in the section with the most seeds "
            f"of it: median {statistics.median(per_task):.2f}, highest "
            f"{max(per_task):.2f}.",
        ]
    return lines


def markdown(
    rows: list[dict], command: str, grid: dict | None = None, tasks: list[dict] | None = None
) -> str:
    lines = [
        f"Command: `{command}`  ",
        f"{machine_line()}  ",
        "Median fit seconds after a warm-up fit; peak memory beyond X as a multiple "
        "of X's size (float32). HSFM = `MetaAugmentedHeadClassifier()` defaults.",
        "",
        "| n x d | annotated | LogisticRegression | DFRClassifier | HSFM | HSFM / LR | HSFM / DFR | HSFM peak memory beyond X |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        lr, dfr, ours = (_median(row[m]) for m in METHODS)
        fmt = lambda v: "—" if v is None else f"{v:.2f} s"  # noqa: E731
        fmt_count = lambda v: "—" if v is None else f"{v:,}"  # noqa: E731
        ratio = lambda a, b: "—" if a is None or b is None else f"{a / b:.2f}"  # noqa: E731
        extra = row["MetaAugmentedHeadClassifier"].get("extra_bytes")
        memory = "—" if not extra else f"{max(extra) / row['x_bytes']:.2f} x X"
        lines.append(
            f"| {row['n']:,} x {row['d']} | {fmt_count(row.get('annotated'))} | {fmt(lr)} | "
            f"{fmt(dfr)} | {fmt(ours)} | {ratio(ours, lr)} | "
            f"{ratio(ours, dfr)} | {memory} |"
        )
    if any(f"{m} busy" in row for row in rows for m in METHODS):
        lines += [
            "",
            "The same fits while one other CPU-bound process runs (`--busy`): median seconds, "
            "and busy / idle.",
            "",
            "| n x d | " + " | ".join(f"{m} busy (x idle)" for m in METHODS) + " |",
            "|---|" + "---|" * len(METHODS),
        ]
        for row in rows:
            cells = []
            for method in METHODS:
                idle, busy = _median(row[method]), _median(row.get(f"{method} busy"))
                cells.append(
                    "—" if busy is None or idle is None else f"{busy:.2f} s ({busy / idle:.1f} x)"
                )
            lines.append(f"| {row['n']:,} x {row['d']} | " + " | ".join(cells) + " |")
    if grid:
        lines += [
            "",
            f"Fits per second in a 5-fold x 8-candidate `GridSearchCV` on {grid['n']:,} x "
            f"{grid['d']} (`--grid-search`, `n_jobs=1`): "
            + ", ".join(f"{m} {r:.2f}" for m, r in grid["fits_per_second"].items())
            + ".",
        ]
    lines += task_markdown(tasks or [])
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.speed", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument(
        "--sizes", nargs="+", help="e.g. 6000x2048, or 5994x2048:1199 for 1,199 annotated rows"
    )
    parser.add_argument("--quick", action="store_true", help="the sizes of up to 7k rows only")
    parser.add_argument(
        "--repeats", type=int, default=3, help="timed fits per method (DFR: 1 above 50k rows)"
    )
    parser.add_argument("--timeout", type=float, default=1800, help="seconds per method and size")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent)
    parser.add_argument(
        "--busy", action="store_true", help="also time every fit beside a CPU-bound process"
    )
    parser.add_argument(
        "--grid-search", action="store_true", help="fits per second in a 5 x 8 GridSearchCV"
    )
    parser.add_argument("--worker", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        method, folder, repeats = args.worker
        print(json.dumps(worker(method, Path(folder), int(repeats))))
        return 0
    sizes = [parse_size(size) for size in args.sizes or DEFAULT_SIZES]
    if args.quick:
        sizes = [s for s in sizes if s[0] <= 7000]
    rows = [measure(*size, args.repeats, args.timeout, args.busy) for size in sizes]
    grid = grid_search_rate() if args.grid_search else None

    command = command_line("benchmarks.speed", argv)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "speed.json").write_text(
        json.dumps({"command": command, "rows": rows, "grid_search": grid}, indent=1)
    )
    table = markdown(rows, command, grid, task_fit_times(args.out))
    replace_section(args.out / "RESULTS.md", "speed", table)
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
