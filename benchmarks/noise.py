"""How far worst-group accuracy moves with ``random_state`` alone, data fixed.

    python -m benchmarks.noise --data-dir DATA --seeds 0 1 2 3 4 --random-states 0 1 2 3 4 5 6 7 8 9
    python -m benchmarks.noise --data-dir DATA --half report --random-states 0 1 2 3 4 \
        --section noise-suite-report

For each benchmark and data seed (the splits and embeddings of ``benchmarks.run``
for that seed), fits ``MetaAugmentedHeadClassifier()`` (the defaults) and
``DFRClassifier()`` once per ``random_state`` and records the test worst-group
accuracy; the group-balanced ``LogisticRegression`` of ``benchmarks.run``, which
draws nothing at random, once, as the reference. The spread is the part of a
per-seed difference between the methods that comes from their own randomness
(folds, support draws, balanced subsets), not from the data. Writes the
``noise`` section of ``RESULTS.md`` (or ``--section``).
"""

from __future__ import annotations

import argparse
import sys

import numpy as np

from sklearn_featmeta.metrics import worst_group_accuracy_score

from . import run
from .report import command_line, machine_line, replace_section
from .threads import with_benchmark_threads

RANDOMISED = (run.DEFAULTS_LABEL, run.DFR_LABEL)


def spreads(benchmarks, seeds, random_states, splits) -> dict:
    """(benchmark, seed) -> method -> test worst-group accuracy per random state.

    The balanced logistic regression draws nothing at random: one fit, one value.
    """
    rows = {}
    for name in benchmarks:
        # benchmarks.run's fits, seeded here
        fits = run.methods(name, ("balanced-lr", "defaults", "dfr"))
        for seed in seeds:
            X, y, groups, X_test, y_test, groups_test = splits(name, seed)
            rows[name, seed] = {}
            for label in fits:
                accuracies = []
                for random_state in random_states if label in RANDOMISED else [None]:
                    model = fits[label](X, y, groups, random_state)
                    accuracies.append(
                        worst_group_accuracy_score(
                            y_test, model.predict(X_test), groups=groups_test
                        )
                    )
                    print(
                        f"{name:<18} seed {seed:>3}  {label:<40} random_state {random_state}"
                        f"  worst-group {accuracies[-1]:.3f}",
                        flush=True,
                    )
                rows[name, seed][label] = accuracies
    return rows


def markdown(rows: dict, command: str) -> str:
    lines = [
        f"Command: `{command}`  ",
        f"{machine_line()}  ",
        "Test worst-group accuracy in % on one data seed's splits and embeddings, one fit per "
        "`random_state`: mean, standard deviation, range, and every fit in order.",
        "",
        "| benchmark | data seed | method | mean | std | min - max | per random_state |",
        "|---|---|---|---|---|---|---|",
    ]
    for (name, seed), methods in rows.items():
        for label, accuracies in methods.items():
            values = 100 * np.asarray(accuracies)
            std = values.std(ddof=1) if len(values) > 1 else 0.0
            lines.append(
                f"| {name} | {seed} | {label} | {values.mean():.1f} | {std:.1f} | "
                f"{values.min():.1f} - {values.max():.1f} | "
                f"{' '.join(f'{value:.1f}' for value in values)} |"
            )
    lines += [
        "",
        "Per benchmark, over its data seeds: each method's mean test worst-group accuracy and "
        "its mean standard deviation over random states (the spread one data set shows a user "
        "who changes `random_state`; the balanced regression has none):",
        "",
        "| benchmark | seeds | "
        + " | ".join(f"{label} mean (std)" for label in _labels(rows))
        + " |",
        "|---|---|" + "---|" * len(_labels(rows)),
    ]
    for name in dict.fromkeys(name for name, _ in rows):
        per_seed = [methods for (benchmark, _), methods in rows.items() if benchmark == name]
        cells = []
        for label in _labels(rows):
            values = [100 * np.asarray(methods[label]) for methods in per_seed]
            stds = [v.std(ddof=1) if v.size > 1 else 0.0 for v in values]
            cells.append(f"{np.mean([v.mean() for v in values]):.1f} ({np.mean(stds):.1f})")
        lines.append(f"| {name} | {len(per_seed)} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "Defaults minus DFR, each averaged over the random states (the difference the methods' "
        "own randomness averages out of), per data seed and their mean:",
        "",
        "| benchmark | per data seed | mean |",
        "|---|---|---|",
    ]
    for name in dict.fromkeys(name for name, _ in rows):
        differences = {
            seed: 100 * (np.mean(methods[run.DEFAULTS_LABEL]) - np.mean(methods[run.DFR_LABEL]))
            for (benchmark, seed), methods in rows.items()
            if benchmark == name
        }
        per_seed = ", ".join(f"{seed}: {value:+.1f}" for seed, value in differences.items())
        lines.append(f"| {name} | {per_seed} | {np.mean(list(differences.values())):+.1f} |")
    return "\n".join(lines) + "\n"


def _labels(rows: dict) -> list[str]:
    """The methods of the rows, in the order they were fitted."""
    return list(dict.fromkeys(label for methods in rows.values() for label in methods))


@with_benchmark_threads
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.noise", description=__doc__.split("\n\n")[0]
    )
    run.add_run_arguments(parser)
    parser.add_argument(
        "--random-states", type=int, nargs="+", default=list(range(10)), metavar="N"
    )
    parser.add_argument(
        "--section", type=run.section_name, default="noise", help="RESULTS.md section to write"
    )
    args = parser.parse_args(argv)
    names = run.SUITE_HALVES[args.half] if args.half else args.benchmarks
    rows = spreads(names, args.seeds, args.random_states, run.real_splits(args))
    table = markdown(rows, command_line("benchmarks.noise", argv))
    replace_section(args.out / "RESULTS.md", args.section, table)
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
