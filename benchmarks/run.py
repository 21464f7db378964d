"""Worst-group accuracy of every method on the four real-data benchmarks.

    python -m benchmarks.run --data-dir DATA                   # five seeds, all benchmarks
    python -m benchmarks.run --data-dir DATA --quick           # one seed
    python -m benchmarks.run --data-dir DATA --half report     # the wide suite's report half
    python -m benchmarks.run --synthetic --out /tmp/smoke      # harness smoke test (seconds)
    python -m benchmarks.run --data-dir DATA --seeds 5 6 7 --methods dfr defaults \\
        --section more-seeds                                   # a subset, in its own section

``DATA`` is the folder of the public data sets (``benchmarks/README.md``).

Protocol, the same for every method (``methods``): training rows without group
labels and validation rows with them go through one ``fit(X, y, groups)`` call
(groups = -1 on training rows); metrics on the test split. Every method sees the
same embeddings, splits and seeds, in one run. Writes ``results.json``,
``wga.png`` and the benchmark section of ``RESULTS.md`` in ``--out`` (with
``--section NAME``: ``results-NAME.json``, ``wga-NAME.png`` and that section).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.utils.class_weight import compute_sample_weight

from sklearn_featmeta import MetaAugmentedHeadClassifier
from sklearn_featmeta.baselines import DFRClassifier
from sklearn_featmeta.metrics import worst_group_accuracy_score

from .data import RECIPES, REPORT_TASKS, TUNING_TASKS, add_data_arguments
from .report import command_line, machine_line, replace_section
from .threads import with_benchmark_threads

BENCHMARKS = ["sentiment_source", "polarity_negation", "dominoes", "colored_mnist"]
SUITE_HALVES = {"tuning": TUNING_TASKS, "report": REPORT_TASKS}

# The paper preset each benchmark is compared with: Dominoes has its own, the
# others use the Waterbirds settings (the paper's main benchmark).
PAPER_PRESET = {"dominoes": "dominoes"}

# What the support edits, in the paper's sense, are run with when they are on
EDITS = {"outer_steps": 5}
# The defaults before the wide suite: edits on, four two-fold splits, the runs' heads only
BEFORE_SUITE = {"outer_steps": 5, "n_repeats": 4, "balanced_candidates": False}

# What the meta-learning adds to the defaults (the wide suite's question): --methods edits.
EDIT_ABLATIONS = [
    ("defaults + support edits (outer_steps=5)", EDITS),
    (
        "defaults + support edits, no hard set (outer_steps=5, hard_set_size=10**9)",
        {**EDITS, "hard_set_size": 10**9},
    ),
    (
        "defaults, but no balanced candidates (balanced_candidates=False)",
        {"balanced_candidates": False},
    ),
    (
        "candidates alone: ERM head or balanced LR, no epochs (n_epochs=0, max_epochs=0)",
        {"n_epochs": 0, "max_epochs": 0},
    ),
]

# With the edits on, one row per choice beyond the paper, each undone alone:
# (label, parameters that restore the paper's choice): --methods ablations.
_EDITS_LABEL = "defaults + edits (outer_steps=5)"
ABLATIONS = [
    (
        f"{_EDITS_LABEL}, but support from the training pool, 16 per class (paper)",
        {**EDITS, "support_source": "pool", "support_size_per_class": 16},
    ),
    (f"{_EDITS_LABEL}, but hard set per class (paper)", {**EDITS, "hard_set": "class"}),
    (f"{_EDITS_LABEL}, but head update by Adam (paper)", {**EDITS, "head_update": "adam"}),
    (f"{_EDITS_LABEL}, but inner step 5e-5 (paper) instead of 1/L", {**EDITS, "inner_lr": 5e-5}),
    (f"{_EDITS_LABEL}, but outer_lr 1.0 (paper)", {**EDITS, "outer_lr": 1.0}),
    (f"{_EDITS_LABEL}, but 15 outer steps per epoch (paper)", {"outer_steps": 15}),
    (
        f"{_EDITS_LABEL}, but epoch kept by worst-group accuracy (paper)",
        {**EDITS, "selection_metric": "worst_group_accuracy"},
    ),
    (
        f"{_EDITS_LABEL}, but always keep the edited head (paper)",
        {**EDITS, "compare_unedited": False},
    ),
    (
        f"{_EDITS_LABEL}, but standardised features only (whitening_ridge=None, paper)",
        {**EDITS, "whitening_ridge": None},
    ),
    (
        f"{_EDITS_LABEL}, but exactly 10 epochs (no early stopping, as in the paper)",
        {**EDITS, "n_epochs": 10, "max_epochs": None},
    ),
]

# Options that are not defaults, each on top of the defaults: --methods options.
OPTIONS = [
    ("defaults, but always whitened (whitening_ridge=0.1, an option)", {"whitening_ridge": 0.1}),
    ("defaults, but four two-fold splits (n_repeats=4)", {"n_repeats": 4}),
]

# Settings weighed against the defaults on the suite's tuning half: --methods tuning.
TUNING_ROWS = [
    (
        "defaults, but four two-fold splits and edits (n_repeats=4, outer_steps=5)",
        {"n_repeats": 4, **EDITS},
    ),
    (
        "defaults before the suite (n_repeats=4, outer_steps=5, balanced_candidates=False)",
        BEFORE_SUITE,
    ),
    (
        "defaults, but worst-group accuracy keeps epochs and picks candidates (selection_metric)",
        {"selection_metric": "worst_group_accuracy"},
    ),
]


def _fit_erm(X, y, groups, seed):
    train = groups == -1
    return LogisticRegression(max_iter=2000).fit(X[train], y[train])


def _fit_balanced_validation_lr(X, y, groups, seed):
    val = groups != -1
    weights = compute_sample_weight("balanced", groups[val])
    return LogisticRegression(max_iter=2000).fit(X[val], y[val], sample_weight=weights)


def _fit_scaled_lr(X, y, groups, seed, class_weight=None):
    """``StandardScaler`` + ``LogisticRegression`` on every row: what a user without groups has."""
    model = LogisticRegression(max_iter=2000, class_weight=class_weight)
    return make_pipeline(StandardScaler(), model).fit(X, y)


def _fit_hsfm(params: dict) -> Callable:
    """``fit(X, y, groups, seed)`` of ``MetaAugmentedHeadClassifier(**params)``."""
    return lambda X, y, g, seed: MetaAugmentedHeadClassifier(random_state=seed, **params).fit(
        X, y, g
    )


# What ``--methods`` selects: each key names one row, or all ablation rows, or all option rows.
METHOD_KEYS = (
    *("erm", "balanced-lr", "dfr", "preset", "defaults", "edits"),
    *("ablations", "options", "tuning"),
)
DEFAULT_METHOD_KEYS = METHOD_KEYS[:6]  # the main table's rows; the others on request
ERM_LABEL = "ERM (LogisticRegression on training rows)"
DEFAULTS_LABEL = "MetaAugmentedHeadClassifier() defaults"
DFR_LABEL = "DFRClassifier"
DEFAULT_SECTION = "benchmarks"  # RESULTS.md section of the full run (results.json, wga.png)


def methods(benchmark: str, keys=DEFAULT_METHOD_KEYS) -> dict[str, Callable]:
    """Method name -> ``fit(X, y, groups, seed)`` returning a fitted classifier.

    ``keys`` (from ``METHOD_KEYS``) selects the rows; the order is always the table's.
    """
    unknown = sorted(set(keys) - set(METHOD_KEYS))
    if unknown:
        raise ValueError(f"Unknown method key(s) {unknown}; choose from {list(METHOD_KEYS)}.")
    preset = PAPER_PRESET.get(benchmark, "waterbirds")
    rows = [
        ("erm", ERM_LABEL, _fit_erm),
        ("balanced-lr", BALANCED_LR_LABEL, _fit_balanced_validation_lr),
        ("dfr", DFR_LABEL, lambda X, y, g, seed: DFRClassifier(random_state=seed).fit(X, y, g)),
        (
            "preset",
            f"HSFM paper preset ({preset})",
            lambda X, y, g, seed: MetaAugmentedHeadClassifier.from_preset(
                preset, random_state=seed
            ).fit(X, y, g),
        ),
        ("defaults", DEFAULTS_LABEL, _fit_hsfm({})),
    ]
    rows += [("ablations", label, _fit_hsfm(params)) for label, params in ABLATIONS]
    rows += [("options", label, _fit_hsfm(params)) for label, params in OPTIONS]
    rows += [("edits", label, _fit_hsfm(params)) for label, params in EDIT_ABLATIONS]
    rows += [("tuning", label, _fit_hsfm(params)) for label, params in TUNING_ROWS]
    return {label: fit for key, label, fit in rows if key in keys}


SCALED_LR_LABEL = "StandardScaler + LogisticRegression"
CLASS_BALANCED_LR_LABEL = "StandardScaler + LogisticRegression(class_weight='balanced')"


def methods_without_groups() -> dict[str, Callable]:
    """Method name -> ``fit(X, y, groups, seed)`` for ``--no-groups``: ``groups`` is None."""
    return {
        SCALED_LR_LABEL: _fit_scaled_lr,
        CLASS_BALANCED_LR_LABEL: lambda X, y, g, seed: _fit_scaled_lr(X, y, g, seed, "balanced"),
        DFR_LABEL: lambda X, y, g, seed: DFRClassifier(random_state=seed).fit(X, y),
        DEFAULTS_LABEL: lambda X, y, g, seed: MetaAugmentedHeadClassifier(random_state=seed).fit(
            X, y
        ),
    }


# Regime (b): group labels only choose knobs. The knobs and their grids, fixed in advance.
LR_C_GRID = [0.01, 0.1, 1.0, 10.0]
GROUP_FREE_GRID = {"reweight_gamma": [0.0, 1.0, 2.0, 4.0, 8.0], "erm_C": [0.1, 1.0]}


def _chosen_with_groups(make_estimator: Callable, grid: dict) -> Callable:
    """``fit(X, y, groups, seed)``: ``GridSearchCV`` scored by worst-group accuracy, where
    ``groups`` reach only the scorer and the splitter (two folds that keep every group
    in both); the refit on every row sees none. ``make_estimator(seed)`` builds the
    estimator (routing on); one whose ``fit`` takes ``groups`` declines them."""
    from sklearn import config_context
    from sklearn.model_selection import GridSearchCV

    from sklearn_featmeta.metrics import worst_group_scorer
    from sklearn_featmeta.model_selection import SubgroupStratifiedKFold

    def fit(X, y, groups, seed):
        with config_context(enable_metadata_routing=True):
            search = GridSearchCV(
                make_estimator(seed),
                grid,
                scoring=worst_group_scorer,
                cv=SubgroupStratifiedKFold(n_splits=2, shuffle=True, random_state=seed),
            )
            return search.fit(X, y, groups=groups)

    return fit


def methods_choosing_with_groups() -> dict[str, Callable]:
    """Method name -> ``fit(X, y, groups, seed)`` for ``--groups-only-choose`` (regime (b)):
    group labels of the annotated rows choose the knobs, no fit sees them; the plain
    scaled LogisticRegression (nothing chosen) is the reference."""

    def scaled_lr(class_weight=None):
        return lambda seed: make_pipeline(
            StandardScaler(), LogisticRegression(max_iter=2000, class_weight=class_weight)
        )

    def group_free(seed):
        estimator = MetaAugmentedHeadClassifier(reweight_tolerance=None, random_state=seed)
        return estimator.set_fit_request(groups=False)

    C_grid = {"logisticregression__C": LR_C_GRID}
    return {
        SCALED_LR_LABEL: _fit_scaled_lr,
        f"{SCALED_LR_LABEL}, C chosen": _chosen_with_groups(scaled_lr(), C_grid),
        f"{CLASS_BALANCED_LR_LABEL}, C chosen": _chosen_with_groups(scaled_lr("balanced"), C_grid),
        # DFRClassifier(groups=None) has no knob to choose: its row is regime (a)'s
        "MetaAugmentedHeadClassifier(reweight_tolerance=None), reweight_gamma and erm_C "
        "chosen": _chosen_with_groups(group_free, GROUP_FREE_GRID),
    }


def _synthetic_splits(seed: int):
    """Tiny synthetic stand-in for the real data: the harness smoke test."""
    from sklearn_featmeta.datasets import make_spurious_embeddings

    X, y, groups = make_spurious_embeddings(
        n_samples=900, n_features=16, known_group_fraction=0.4, random_state=seed
    )
    known = np.flatnonzero(groups != -1)
    test = np.zeros(y.size, dtype=bool)
    test[known[: known.size // 2]] = True
    fit_rows = ~test
    return X[fit_rows], y[fit_rows], groups[fit_rows], X[test], y[test], groups[test]


def _real_splits(name: str, seed: int, data_dir: Path, cache_dir: Path, text_encoder):
    from .data import BUILDERS
    from .embed import embed

    benchmark = BUILDERS[name](data_dir, seed)
    embeddings = embed(benchmark, seed, cache_dir, text_encoder, data_dir)
    X = np.concatenate([embeddings["train"], embeddings["val"]])
    y = np.concatenate([benchmark.train.y, benchmark.val.y])
    groups = np.concatenate([np.full(benchmark.train.y.size, -1), benchmark.val.groups])
    return X, y, groups, embeddings["test"], benchmark.test.y, benchmark.test.groups


REGIMES = ("annotated", "none", "choose")
"""Group labels: on the annotated rows (c), nowhere (a, ``--no-groups``), only to choose
knobs (b, ``--groups-only-choose``)."""


def run(benchmarks, seeds, splits: Callable, keys=DEFAULT_METHOD_KEYS, regime="annotated") -> dict:
    """Fit every selected method on every benchmark and seed; per-seed numbers.

    ``regime`` (:data:`REGIMES`): ``"none"``: no group label reaches any fit (every
    row, ``groups=None``), the methods are :func:`methods_without_groups`;
    ``"choose"``: :func:`methods_choosing_with_groups`. The test split is always
    scored by its groups.
    """
    results = {}
    for name in benchmarks:
        results[name] = {}
        for seed in seeds:
            X, y, groups, X_test, y_test, groups_test = splits(name, seed)
            if regime == "none":
                groups = None
            if regime == "annotated":
                table = methods(name, keys)
            elif regime == "none":
                table = methods_without_groups()
            else:
                table = methods_choosing_with_groups()
            for method, fit in table.items():
                start = time.perf_counter()
                model = fit(X, y, groups, seed)
                seconds = time.perf_counter() - start
                predicted = model.predict(X_test)
                row = results[name].setdefault(
                    method, {"worst_group_accuracy": [], "accuracy": [], "fit_seconds": []}
                )
                row["worst_group_accuracy"].append(
                    worst_group_accuracy_score(y_test, predicted, groups=groups_test)
                )
                row["accuracy"].append(float(np.mean(predicted == y_test)))
                row["fit_seconds"].append(seconds)
                print(
                    f"{name:<18} seed {seed}  {method:<55} worst-group {row['worst_group_accuracy'][-1]:.3f}  "
                    f"average {row['accuracy'][-1]:.3f}  {seconds:6.1f}s",
                    flush=True,
                )
    return results


def summarise(results: dict) -> dict:
    summary = {}
    for name, rows in results.items():
        summary[name] = {}
        dfr = rows.get(DFR_LABEL)
        for method, row in rows.items():
            wga, acc = np.array(row["worst_group_accuracy"]), np.array(row["accuracy"])
            summary[name][method] = {
                "worst_group_mean": 100 * wga.mean(),
                "worst_group_std": 100 * wga.std(),
                "accuracy_mean": 100 * acc.mean(),
                "accuracy_std": 100 * acc.std(),
                "fit_seconds_median": float(np.median(row["fit_seconds"])),
                "n_seeds": int(wga.size),
            }
            if dfr is not None and method != DFR_LABEL:
                summary[name][method]["vs_dfr"] = _paired_difference(
                    wga, np.array(dfr["worst_group_accuracy"])
                )
    return summary


def _paired_difference(worst_group, dfr_worst_group) -> dict:
    """Per-seed worst-group difference to DFR (same splits): mean, standard error, wins."""
    difference = 100 * (worst_group - dfr_worst_group)
    n = difference.size
    return {
        "mean": float(difference.mean()),
        "stderr": float(difference.std(ddof=1) / np.sqrt(n)) if n > 1 else None,
        "seeds_at_or_above": int((difference >= 0).sum()),
        "n_seeds": int(n),
    }


BALANCED_LR_LABEL = "LogisticRegression on validation rows, group-balanced"


def across_tasks(summary: dict) -> list[str]:
    """Markdown: every method's mean worst-group accuracy over tasks, its mean rank, and the
    defaults' margin to DFR and to the balanced logistic regression (mean and worst task)."""
    names = list(summary)
    methods_ = [m for m in summary[names[0]] if all(m in summary[n] for n in names)]
    if len(names) < 2 or DEFAULTS_LABEL not in methods_:
        return []
    wga = np.array([[summary[n][m]["worst_group_mean"] for n in names] for m in methods_])
    ranks = (-wga).argsort(0).argsort(0) + 1  # 1 = best on that task
    lines = [
        f"Over {len(names)} tasks ({', '.join(names)}): mean worst-group accuracy (%), mean rank "
        "(1 = best of these rows on a task) and tasks won.",
        "",
        "| method | mean worst-group | mean rank | tasks best |",
        "|---|---|---|---|",
    ]
    for i, method in enumerate(methods_):
        lines.append(
            f"| {method} | {wga[i].mean():.1f} | {ranks[i].mean():.1f} | {(ranks[i] == 1).sum()} |"
        )
    defaults = wga[methods_.index(DEFAULTS_LABEL)]
    lines += ["", "| defaults minus | mean | worst task | tasks at or above |", "|---|---|---|---|"]
    for label in (DFR_LABEL, BALANCED_LR_LABEL, SCALED_LR_LABEL, CLASS_BALANCED_LR_LABEL):
        if label in methods_:
            gap = defaults - wga[methods_.index(label)]
            worst = int(gap.argmin())
            lines.append(
                f"| {label} | {gap.mean():+.1f} | {gap[worst]:+.1f} ({names[worst]}) | "
                f"{(gap >= 0).sum()}/{gap.size} |"
            )
    # what each variant of the defaults changes, task by task (ablations and options)
    variants = methods_[methods_.index(DEFAULTS_LABEL) + 1 :]
    if variants:
        lines += [
            "",
            "Each variant minus the defaults, worst-group accuracy points per task:",
            "",
            "| variant | mean | " + " | ".join(names) + " |",
            "|---|---|" + "---|" * len(names),
        ]
        for method in variants:
            gap = wga[methods_.index(method)] - defaults
            cells = " | ".join(f"{value:+.1f}" for value in gap)
            lines.append(f"| {method} | {gap.mean():+.1f} | {cells} |")
    return lines + [""]


def markdown(summary: dict, command: str, seeds) -> str:
    lines = [
        f"Command: `{command}`  ",
        f"{machine_line()}  ",
        f"Seeds {list(seeds)}.  ",
        "Worst-group and average test accuracy in %, mean ± std over seeds; median fit time. "
        "vs DFR: the per-seed worst-group difference to DFRClassifier on the same splits, "
        "mean ± standard error, and the seeds where the method is at or above DFR.",
        "",
        *across_tasks(summary),
    ]
    for name, rows in summary.items():
        dfr = rows.get(DFR_LABEL, {}).get("worst_group_mean")
        lines += [
            f"#### {name}",
            "",
            "| method | worst-group acc. | vs DFR | average acc. | fit (s) |",
            "|---|---|---|---|---|",
        ]
        for method, s in rows.items():
            mark = ""
            if dfr is not None and method == DEFAULTS_LABEL:
                mark = " **(≥ DFR)**" if s["worst_group_mean"] >= dfr else " (< DFR)"
            paired = s.get("vs_dfr")
            versus = ""
            if paired:
                spread = "" if paired["stderr"] is None else f" ± {paired['stderr']:.1f}"
                versus = (
                    f"{paired['mean']:+.1f}{spread}, "
                    f"{paired['seeds_at_or_above']}/{paired['n_seeds']}"
                )
            lines.append(
                f"| {method} | {s['worst_group_mean']:.1f} ± {s['worst_group_std']:.1f}{mark} | "
                f"{versus} | {s['accuracy_mean']:.1f} ± {s['accuracy_std']:.1f} | "
                f"{s['fit_seconds_median']:.2f} |"
            )
        lines.append("")
    return "\n".join(lines)


def chart(summary: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(summary)
    # methods in the same order on every benchmark; only the preset's name differs
    rows = [list(summary[n].values()) for n in names]
    labels = [re.sub(r"preset \(\w+\)", "preset", m) for m in summary[names[0]]]
    colours = plt.get_cmap("tab20").colors
    fig, ax = plt.subplots(figsize=(max(8, 2.6 * len(names)), 4.8))
    width = 0.8 / len(labels)
    for i, label in enumerate(labels):
        ax.bar(
            np.arange(len(names)) + (i - (len(labels) - 1) / 2) * width,
            [r[i]["worst_group_mean"] for r in rows],
            width,
            yerr=[r[i]["worst_group_std"] for r in rows],
            label=label,
            color=colours[i % len(colours)],
            capsize=2,
        )
    ax.set_xticks(np.arange(len(names)), names)
    ax.set_ylabel("worst-group test accuracy (%)")
    ax.set_ylim(0, 100)
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.1), ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def section_name(text: str) -> str:
    if not re.fullmatch(r"[a-z0-9][a-z0-9-]*", text):
        raise argparse.ArgumentTypeError(
            f"section names are lower-case letters, digits and '-'; got {text!r}"
        )
    return text


def add_run_arguments(parser: argparse.ArgumentParser) -> None:
    """The data options, ``--out``, ``--seeds`` and ``--benchmarks`` of the real-data scripts."""
    add_data_arguments(parser)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument(
        "--benchmarks",
        nargs="+",
        choices=sorted(RECIPES),
        default=BENCHMARKS,
        help="tasks to run (default: the four main benchmarks); see also --half",
    )
    parser.add_argument(
        "--half",
        choices=sorted(SUITE_HALVES),
        help="all tasks of the wide suite's tuning or report half (benchmarks/README.md)",
    )


def real_splits(args: argparse.Namespace) -> Callable:
    """``splits(name, seed)`` of the real benchmarks, from the data options of ``args``."""
    from .embed import TextEncoder

    encoder = TextEncoder(args.cache_dir)
    return lambda name, seed: _real_splits(name, seed, args.data_dir, args.cache_dir, encoder)


@with_benchmark_threads
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.run", description=__doc__.split("\n\n")[0]
    )
    add_run_arguments(parser)
    parser.add_argument("--quick", action="store_true", help="one seed (the first)")
    parser.add_argument(
        "--synthetic", action="store_true", help="tiny synthetic data instead of --data-dir"
    )
    parser.add_argument(
        "--methods",
        nargs="+",
        choices=METHOD_KEYS,
        default=list(DEFAULT_METHOD_KEYS),
        help="rows to run (default: all but edits, the rows without edits or hard set)",
    )
    parser.add_argument(
        "--no-groups",
        action="store_true",
        help="no group label reaches any fit (fit(X, y) on every row); rows: the scaled "
        "LogisticRegression, class-balanced, DFRClassifier(groups=None), the defaults",
    )
    parser.add_argument(
        "--groups-only-choose",
        action="store_true",
        help="group labels of the annotated rows only choose knobs (GridSearchCV scored by "
        "worst-group accuracy, groups routed to the scorer and splitter); no fit sees them",
    )
    parser.add_argument(
        "--section",
        type=section_name,
        default=DEFAULT_SECTION,
        help=f"RESULTS.md section to write (default {DEFAULT_SECTION!r}); another name also "
        "writes results-NAME.json and wga-NAME.png instead of results.json and wga.png",
    )
    args = parser.parse_args(argv)
    seeds = args.seeds[:1] if args.quick else args.seeds
    if args.half and args.section == DEFAULT_SECTION:
        suffix = "-no-groups" if args.no_groups else ""
        args.section = f"suite-{args.half}{suffix}" + (
            "-groups-choose" if args.groups_only_choose else ""
        )

    if args.synthetic:
        names = ["synthetic"]

        def splits(name, seed):
            return _synthetic_splits(seed)
    else:
        names = SUITE_HALVES[args.half] if args.half else args.benchmarks
        splits = real_splits(args)

    if args.no_groups and args.groups_only_choose:
        parser.error("--no-groups and --groups-only-choose are two regimes: choose one")
    regime = "none" if args.no_groups else "choose" if args.groups_only_choose else "annotated"
    results = run(names, seeds, splits, args.methods, regime=regime)
    summary = summarise(results)
    args.out.mkdir(parents=True, exist_ok=True)
    command = command_line("benchmarks.run", argv)
    suffix = "" if args.section == DEFAULT_SECTION else f"-{args.section}"
    (args.out / f"results{suffix}.json").write_text(
        json.dumps(
            {"command": command, "seeds": seeds, "summary": summary, "per_seed": results}, indent=1
        )
    )
    chart(summary, args.out / f"wga{suffix}.png")
    table = markdown(summary, command, seeds)
    replace_section(args.out / "RESULTS.md", args.section, table)
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
