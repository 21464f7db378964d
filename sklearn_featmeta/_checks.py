"""Checks of a fit's rows before the fit, and warnings about its outcome after it.

Stack levels point at the caller of ``fit`` (above scikit-learn's
``_fit_context`` wrapper), from where each is called in ``fit``.
"""

from __future__ import annotations

import warnings

import numpy as np
from sklearn.exceptions import ConvergenceWarning
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import validate_data

from ._groups import drop_zero_weights
from ._linear import predicted_indices


def validated_rows(estimator, X, y, groups, sample_weight):
    """``fit``'s input checked as every estimator of the package checks it:
    ``(X, y_encoded, classes, groups, weights)``, rows of zero weight dropped.

    Sets ``n_features_in_`` (and ``feature_names_in_``) as ``validate_data`` does.
    """
    X, y = validate_data(estimator, X, y, dtype=[np.float64, np.float32], y_numeric=False)
    check_classification_targets(y)
    X, y, groups, weights = drop_zero_weights(X, y, groups, sample_weight)
    classes, y_encoded = np.unique(y, return_inverse=True)
    if classes.shape[0] < 2:
        raise ValueError(
            f"{type(estimator).__name__} needs samples of at least 2 classes, but the data "
            f"contains only one class: {classes[0]!r}."
        )
    return X, y_encoded.ravel(), classes, groups, weights


MIN_HELDOUT_ROWS_PER_GROUP = 5
"""Below this many held-out rows in a (class, group) cell, a fit warns that selection is noise."""

FLAT_HEAD_SPREAD = 1e-3
"""A head whose held-out logits vary by less than this is flat: its predictions are noise."""


def check_parameter_combinations(estimator) -> None:
    """What ``_parameter_constraints`` cannot say: ``max_epochs`` against ``n_epochs``, and
    a sequence of ``reweight_gamma`` (:func:`reweight_strengths`)."""
    if estimator.max_epochs is not None and estimator.max_epochs < estimator.n_epochs:
        raise ValueError(
            f"max_epochs={estimator.max_epochs} is below n_epochs={estimator.n_epochs}: every "
            "run makes n_epochs epochs. Set max_epochs to at least n_epochs, or to None for "
            "exactly n_epochs."
        )
    reweight_strengths(estimator.reweight_gamma)


def reweight_strengths(reweight_gamma) -> tuple[float, ...]:
    """``reweight_gamma`` as the strengths to try, weakest first (0: none).

    A sequence must be non-empty, positive, finite and strictly increasing.
    """
    if np.ndim(reweight_gamma) == 0:
        return () if reweight_gamma == 0 else (float(reweight_gamma),)
    try:
        strengths = np.asarray(reweight_gamma, dtype=float)
    except (TypeError, ValueError):
        strengths = np.empty(0)  # not numbers: the message below
    if (
        strengths.ndim != 1
        or strengths.size == 0
        or not np.all(np.isfinite(strengths) & (strengths > 0))
        or np.any(np.diff(strengths) <= 0)
    ):
        raise ValueError(
            "reweight_gamma must be a number >= 0 or a non-empty sequence of positive, finite, "
            f"strictly increasing numbers; got {reweight_gamma!r}."
        )
    return tuple(strengths.tolist())


def check_split(
    classes,
    y_encoded,
    weights,
    pool,
    annotated,
    *,
    groups_split_rows: bool,
    support_source: str,
    support_size_per_class: int,
) -> None:
    """Errors where a class has no training row or (groups given) no annotated row; a
    warning where a class has fewer pool rows than a pool support takes."""
    n_classes = classes.shape[0]
    pool_counts = np.bincount(y_encoded[pool], minlength=n_classes)
    annotated_counts = np.bincount(y_encoded[annotated], minlength=n_classes)
    if annotated.size == 0:
        raise ValueError(
            "No rows are left for the held-out set: give at least two rows per class "
            "(or rows with known groups)."
        )
    if (pool_counts == 0).any():
        raise ValueError(
            f"Class(es) {classes[pool_counts == 0].tolist()} have no training rows: "
            "every row of them has a known group. Mark some of their rows unknown "
            "(-1 / None), or give every row a known group so that validation_fraction "
            "of them are held out."
        )
    # A hold-out drawn by us may miss a class of a single row; one the user
    # drew by marking groups must not, or that class is never evaluated.
    if groups_split_rows and (annotated_counts == 0).any():
        raise ValueError(
            f"Class(es) {classes[annotated_counts == 0].tolist()} have no rows with "
            "a known group, so the hard set and model selection cannot see them. Give "
            "some of their rows a known group."
        )
    # the support takes weight, not rows: a row of weight k counts as its k copies
    pool_weight = np.bincount(y_encoded[pool], weights=weights[pool], minlength=n_classes)
    lacking = pool_weight < support_size_per_class
    if lacking.any() and support_source == "pool":
        warnings.warn(
            f"Class(es) {classes[lacking].tolist()} have fewer training rows "
            f"({[float(f'{w:g}') for w in pool_weight[lacking]]} by sample weight) than "
            f"support_size_per_class={support_size_per_class}; their support uses "
            "every training row they have.",
            UserWarning,
            stacklevel=4,
        )


def warn_small_annotated(cells, n_cells: int, n_runs: int, support_source: str) -> None:
    """Warn where a held-out cell is too small to select on, or too few rows to cross-fit."""
    counts = np.bincount(cells, minlength=n_cells)
    if counts.min() < MIN_HELDOUT_ROWS_PER_GROUP:
        warnings.warn(
            f"Only {counts.min()} held-out row(s) in the smallest (class, group) cell "
            f"({counts.sum()} in all): the hard set and the kept epoch rest on very few rows "
            "and the fit is close to chance there. Annotate more rows (give them a "
            "known group), or compare with LogisticRegression.",
            UserWarning,
            stacklevel=4,
        )
    elif n_runs == 1 and support_source == "annotated":
        warnings.warn(
            "Too few annotated rows to cross-fit (a fold would miss a class): one run uses "
            "them all for its support, its hard set and its kept epoch.",
            UserWarning,
            stacklevel=4,
        )


def warn_degenerate(estimator, X_annotated, y_annotated) -> None:
    """Warn where the fitted head is flat or predicts one class on the held-out rows."""
    scores = estimator.decision_function(X_annotated)
    spread = float(np.ptp(scores, axis=0).max())
    predicted = predicted_indices(scores)  # not estimator.predict: one product with the rows
    if spread < FLAT_HEAD_SPREAD or (
        np.unique(predicted).size == 1 and np.unique(y_annotated).size > 1
    ):
        warnings.warn(
            f"The fitted head is degenerate: its logits vary by {spread:.2g} over the "
            f"held-out rows and it predicts {np.unique(predicted).size} of "
            f"{estimator.classes_.size} classes there (a flat head predicts the single class "
            "its bias favours). Check head_l2, erm_C and the learning rates.",
            UserWarning,
            stacklevel=3,
        )


def warn_about_runs(result, max_epochs) -> None:
    """Warn where the ERM head did not converge, a run diverged or runs still improved."""
    if not result.erm_converged:
        warnings.warn(
            "The ERM head's L-BFGS stopped at its iteration limit before converging; "
            "lower erm_C (more regularisation) or standardise the features.",
            ConvergenceWarning,
            stacklevel=5,
        )
    for number, run in enumerate(result.runs, 1):
        if run.diverged:
            warnings.warn(
                f"The bilevel loss became non-finite in epoch "
                f"{run.epochs_made + 1} of run {number}; that run stopped "
                f"and kept epoch {run.best_epoch}. Lower outer_lr or inner_lr.",
                RuntimeWarning,
                stacklevel=5,
            )
    improving = sum(run.still_improving for run in result.runs)
    if improving:
        warnings.warn(
            f"{improving} of {len(result.runs)} run(s) still improved their held-out "
            f"selection score at their last epoch, max_epochs={max_epochs}; raise "
            "max_epochs (or the step sizes).",
            ConvergenceWarning,
            stacklevel=5,
        )
