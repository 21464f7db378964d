"""Screen of a group-free candidate family on the tuning half: EVaLS-style balanced-loss heads.

    python -m benchmarks.groupfree_screen --data-dir DATA    # the tuning half, no group anywhere
    python -m benchmarks.groupfree_screen --synthetic         # harness smoke test (seconds)

For the group-free issue's "every candidate family" (docs/decisions.md). Per class, the ``k``
highest- and ``k`` lowest-loss rows by out-of-fold ERM loss (``k`` a fraction of the smallest
class; Ghaznavi et al., 2024), a ``LogisticRegression`` refitted on them, and the ERM head
moved towards it by ``alpha`` (head weights interpolated). Chosen without groups like the
estimator's reweighted head: the largest ``alpha`` whose cross-fitted class-balanced accuracy is
within a tolerance of the ERM head's (each fold's candidate selects its rows by losses from a
split of that fold alone, and is scored on the other fold). Prototype heads: scikit-learn on
standardised rows, two stratified folds (the estimator draws by row content). Prints test
worst-group and average accuracy minus ``StandardScaler + LogisticRegression``'s.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold
from sklearn.preprocessing import StandardScaler

from sklearn_featmeta.metrics import worst_group_accuracy_score

from .data import TUNING_TASKS, add_data_arguments
from .report import command_line, machine_line, replace_section
from .threads import with_benchmark_threads

FRACTIONS = (0.1, 0.2, 0.3)
ALPHAS = (0.25, 0.5, 0.75, 1.0)
TOLERANCES = (0.005, 0.01, 0.015, 0.02)
FEW_ANNOTATION_TASKS = (
    "polarity_length_few",
    "polarity_negation_few",
    "sentiment_source_small_cell",
)
"""Tasks also run on seeds 101-104, as the estimator's group-free default was chosen."""


def _head(X, y) -> tuple[np.ndarray, np.ndarray]:
    """``LogisticRegression`` of ``y`` on ``X`` as a softmax-form head ``(W, b)``."""
    fitted = LogisticRegression(max_iter=2000).fit(X, y)
    W, b = fitted.coef_, fitted.intercept_
    if W.shape[0] == 1:  # two classes: the first class's row zero
        W, b = np.vstack([np.zeros_like(W), W]), np.r_[0.0, b]
    return W, b


def _predict(head, X) -> np.ndarray:
    return (X @ head[0].T + head[1]).argmax(1)


def _blend(erm, candidate, alpha: float):
    return tuple((1 - alpha) * e + alpha * c for e, c in zip(erm, candidate, strict=True))


def _out_of_fold_losses(X, y, rows: np.ndarray, seed: int) -> np.ndarray:
    """Each of ``rows``' cross-entropy under an ERM head fitted on the other half of ``rows``."""
    losses = np.zeros(y.size)
    for fit, score in StratifiedKFold(2, shuffle=True, random_state=seed).split(X[rows], y[rows]):
        W, b = _head(X[rows[fit]], y[rows[fit]])
        logits = X[rows[score]] @ W.T + b
        logits -= logits.max(1, keepdims=True)
        log_p = logits - np.log(np.exp(logits).sum(1, keepdims=True))
        losses[rows[score]] = -log_p[np.arange(score.size), y[rows[score]]]
    return losses


def _extremes(losses, y, rows: np.ndarray, fraction: float) -> np.ndarray:
    """Per class, the ``k`` lowest- and ``k`` highest-loss of ``rows`` (``k``: ``fraction`` of
    the smallest class among them)."""
    k = max(1, int(fraction * np.bincount(y[rows]).min()))
    chosen = []
    for label in np.unique(y[rows]):
        ranked = rows[y[rows] == label][np.argsort(losses[rows[y[rows] == label]])]
        chosen.append(np.unique(np.r_[ranked[:k], ranked[-k:]]))
    return np.concatenate(chosen)


def _balanced_accuracy(predicted, y) -> float:
    return float(np.mean([np.mean(predicted[y == label] == label) for label in np.unique(y)]))


def screen_task(X, y, X_test, y_test, groups_test, seed: int) -> dict[str, float]:
    """Test accuracies of the ERM head and of every (fraction, alpha), and the cross-fitted
    class-balanced cost of each: ``{"erm": .., "avg_erm": .., "f0.1 a0.5": .., ...}``."""
    scaler = StandardScaler().fit(X)
    Z, Z_test = scaler.transform(X), scaler.transform(X_test)
    every_row = np.arange(y.size)
    erm = _head(Z, y)
    out = {
        "erm": worst_group_accuracy_score(y_test, _predict(erm, Z_test), groups=groups_test),
        "avg_erm": float(np.mean(_predict(erm, Z_test) == y_test)),
    }
    folds = list(StratifiedKFold(2, shuffle=True, random_state=seed).split(Z, y))
    fold_erm = [_head(Z[fit], y[fit]) for fit, _ in folds]
    fold_losses = [_out_of_fold_losses(Z, y, fit, seed) for fit, _ in folds]
    losses = _out_of_fold_losses(Z, y, every_row, seed)
    for fraction in FRACTIONS:
        rows = _extremes(losses, y, every_row, fraction)
        candidate = _head(Z[rows], y[rows])
        fold_candidates = [
            _head(Z[chosen], y[chosen])
            for chosen in (
                _extremes(fold_loss, y, fit, fraction)
                for (fit, _), fold_loss in zip(folds, fold_losses, strict=True)
            )
        ]

        def cross_fitted(alpha, fold_candidates=fold_candidates):
            predicted = np.empty(y.size, dtype=int)
            for (_, score), e, c in zip(folds, fold_erm, fold_candidates, strict=True):
                predicted[score] = _predict(_blend(e, c, alpha), Z[score])
            return _balanced_accuracy(predicted, y)

        erm_score = cross_fitted(0.0)
        for alpha in ALPHAS:
            predicted = _predict(_blend(erm, candidate, alpha), Z_test)
            key = f"f{fraction} a{alpha}"
            out[key] = worst_group_accuracy_score(y_test, predicted, groups=groups_test)
            out[f"avg_{key}"] = float(np.mean(predicted == y_test))
            out[f"cost_{key}"] = erm_score - cross_fitted(alpha)
    return out


def _chosen(result: dict, fraction: float, tolerance: float) -> str | None:
    """The key of the largest alpha within ``tolerance``, None for the ERM head."""
    within = [a for a in ALPHAS if result[f"cost_f{fraction} a{a}"] <= tolerance]
    return f"f{fraction} a{within[-1]}" if within else None


def summary_lines(results: dict[str, list[dict]]) -> list[str]:
    """A markdown table: each rule's mean gain over tasks, its worst task in worst-group and
    in average accuracy (per-task means over seeds, in points)."""

    def row(label: str, key_of: Callable[[dict], str | None]) -> str:
        gains, average_gains = {}, {}
        for task, runs in results.items():
            pairs = [(r, key_of(r)) for r in runs]  # None: the ERM head, no gain
            gains[task] = 100 * np.mean([r[k] - r["erm"] if k else 0.0 for r, k in pairs])
            average_gains[task] = 100 * np.mean(
                [r[f"avg_{k}"] - r["avg_erm"] if k else 0.0 for r, k in pairs]
            )
        worst, worst_average = min(gains, key=gains.get), min(average_gains, key=average_gains.get)
        return (
            f"| {label} | {np.mean(list(gains.values())):+.2f} | {gains[worst]:+.1f} ({worst}) "
            f"| {average_gains[worst_average]:+.1f} ({worst_average}) |"
        )

    lines = ["| head | mean | worst task | worst average |", "|---|---|---|---|"]
    for fraction in FRACTIONS:
        for alpha in ALPHAS:
            lines.append(
                row(f"fraction {fraction}, alpha {alpha}", lambda r, k=f"f{fraction} a{alpha}": k)
            )
        for tolerance in TOLERANCES:
            lines.append(
                row(
                    f"fraction {fraction}, alpha chosen within {tolerance}",
                    lambda r, f=fraction, t=tolerance: _chosen(r, f, t),
                )
            )
    return lines


def _synthetic_task(seed: int):
    from sklearn_featmeta.datasets import make_spurious_embeddings

    X, y, groups = make_spurious_embeddings(
        n_samples=900, n_features=16, known_group_fraction=1.0, random_state=seed
    )
    return X[:600], y[:600], X[600:], y[600:], groups[600:]


@with_benchmark_threads
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.groupfree_screen", description=__doc__.split("\n\n")[0]
    )
    add_data_arguments(parser)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent)
    parser.add_argument("--synthetic", action="store_true", help="harness smoke test")
    args = parser.parse_args(argv)
    if args.synthetic:
        tasks = {"synthetic": [0]}
        load = lambda name, seed: _synthetic_task(seed)  # noqa: E731
    else:
        from .embed import TextEncoder
        from .run import _real_splits

        tasks = {
            t: [100, *((101, 102, 103, 104) if t in FEW_ANNOTATION_TASKS else ())]
            for t in TUNING_TASKS
        }
        encoder = TextEncoder(args.cache_dir)

        def load(name, seed):
            X, y, _, X_test, y_test, groups_test = _real_splits(
                name, seed, args.data_dir, args.cache_dir, encoder
            )
            return X, y, X_test, y_test, groups_test  # no group reaches a fit

    results = {}
    for name, seeds in tasks.items():
        for seed in seeds:
            results.setdefault(name, []).append(screen_task(*load(name, seed), seed=seed))
            print(f"{name} seed {seed}", flush=True)
    text = "\n".join(
        [
            "",
            f"Command: `{command_line('benchmarks.groupfree_screen', argv)}`  ",
            f"{machine_line()}  ",
            "Test accuracy minus StandardScaler + LogisticRegression's, in points; no group "
            "reaches any fit. Seeds 100 (101-104 too on the few-annotation tasks).",
            "",
            *summary_lines(results),
        ]
    )
    print(text)
    replace_section(args.out / "RESULTS.md", "groupfree-screen", text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
