"""Which geometry the defaults chose (``whitening_ridge="auto"``), per benchmark and seed.

    python -m benchmarks.geometry --data-dir DATA --seeds 0 1 2 3 4 5 6 7 8 9 10 11 12 13 14

Fits ``MetaAugmentedHeadClassifier()`` (the defaults, as in ``benchmarks.run``)
on each benchmark and seed and records ``whitening_ridge_`` (None:
standardised features), the two geometries' held-out scores
(``whitening_scores_``) and the test worst-group accuracy, which equals the
defaults' row of ``benchmarks.run`` for the same seed (same fit). Writes the
``geometry`` section of ``RESULTS.md``.
"""

from __future__ import annotations

import argparse
import sys

from sklearn_featmeta import MetaAugmentedHeadClassifier
from sklearn_featmeta._meta_head import AUTO_WHITENING_RIDGE, MIN_POOL_ROWS_PER_FEATURE_TO_WHITEN
from sklearn_featmeta.metrics import worst_group_accuracy_score

from .report import command_line, machine_line, replace_section
from .run import add_run_arguments, real_splits
from .threads import with_benchmark_threads


def choices(benchmarks, seeds, splits) -> dict:
    """benchmark -> list of (seed, whitened, standardised score, whitened score, test wga)."""
    rows = {}
    for name in benchmarks:
        rows[name] = []
        for seed in seeds:
            X, y, groups, X_test, y_test, groups_test = splits(name, seed)
            model = MetaAugmentedHeadClassifier(random_state=seed).fit(X, y, groups)
            # None where whitening was not weighed (too few pool rows per feature)
            scores = model.whitening_scores_ or dict.fromkeys(("standardised", "whitened"))
            wga = worst_group_accuracy_score(y_test, model.predict(X_test), groups=groups_test)
            whitened = model.whitening_ridge_ is not None
            rows[name].append((seed, whitened, scores["standardised"], scores["whitened"], wga))
            print(
                f"{name:<18} seed {seed:>3}  {'whitened' if whitened else 'standardised':<12}"
                f"  scores {_scores(scores['standardised'], scores['whitened'])}"
                f"  worst-group {wga:.3f}",
                flush=True,
            )
    return rows


def _scores(standardised: float | None, whitened: float | None) -> str:
    if standardised is None:
        return "not weighed"
    return f"{standardised:.3f} / {whitened:.3f}"


def markdown(rows: dict, command: str) -> str:
    lines = [
        f"Command: `{command}`  ",
        f"{machine_line()}  ",
        "Geometry the defaults chose per seed (`whitening_ridge_`): "
        f"W = whitened (ridge {AUTO_WHITENING_RIDGE:g}), "
        "s = standardised; scores = mean over runs of the unedited heads' lowest held-out "
        "worst-group loss (standardised / whitened; lower wins); not weighed: fewer than "
        f"{MIN_POOL_ROWS_PER_FEATURE_TO_WHITEN} pool rows per feature.",
        "",
        "| benchmark | whitened | per seed |",
        "|---|---|---|",
    ]
    for name, entries in rows.items():
        per_seed = ", ".join(
            f"{seed}: {'W' if whitened else 's'} ({_scores(standard, white)})"
            for seed, whitened, standard, white, _ in entries
        )
        count = sum(entry[1] for entry in entries)
        lines.append(f"| {name} | {count} of {len(entries)} | {per_seed} |")
    return "\n".join(lines) + "\n"


@with_benchmark_threads
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.geometry", description=__doc__.split("\n\n")[0]
    )
    add_run_arguments(parser)
    args = parser.parse_args(argv)
    rows = choices(args.benchmarks, args.seeds, real_splits(args))
    table = markdown(rows, command_line("benchmarks.geometry", argv))
    replace_section(args.out / "RESULTS.md", "geometry", table)
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
