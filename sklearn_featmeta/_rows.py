"""Which rows a fit uses where: the validated data, and the rows of every run drawn by content.

Random choices are keyed by row content (:mod:`._groups`), so a row of integer
weight k is drawn as k copies of it would be, whatever the order of the rows.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from sklearn.utils.class_weight import compute_class_weight

from ._groups import cell_codes
from ._preprocessing import standardized, weighted_moments
from ._sampling import (
    content_hashes,
    cross_fitting_folds,
    draw_keys,
    stratified_split,
    take_by_weight,
)

WHITENING_COVARIANCE_BUDGET = 2**34
"""Most rows x features^2 the whitening covariance is computed from (then a content-keyed draw).

A preconditioner needs a fair estimate of the covariance, not an exact one.
Below the budget every pool row counts; above it, ``budget / features^2``
rows, at least eight per feature (docs/decisions.md: the measurements behind
the constants).
"""


@dataclass
class FitData:
    """A fit's rows after validation, the pool / held-out split and the pool's moments."""

    X: np.ndarray
    y: np.ndarray  # class codes
    weights: np.ndarray  # sample weights (all positive)
    pool: np.ndarray  # row indices of the training pool
    annotated: np.ndarray  # row indices of the held-out (annotated) rows
    cells: np.ndarray  # (class, group) cell of each held-out row
    n_cells: int
    mean: np.ndarray
    scale: np.ndarray
    class_factor: np.ndarray  # weight of each class's rows in the ERM head's loss (class_weight)

    @property
    def pool_size(self) -> float:
        """Rows in the pool, a row of integer weight k counted as its k copies."""
        return max(self.pool.size, float(self.weights[self.pool].sum()))


@dataclass(frozen=True)
class DrawnRun:
    """One run's rows as NumPy indices (the core's ``RunRows`` once on the device).

    ``support_index`` and ``support_mass``: the support's rows of its source
    (pool or annotated rows) and the sample weight taken from each;
    ``shaping_rows`` and ``selection_rows``: annotated rows (a slice for all).
    """

    support_index: np.ndarray
    support_mass: np.ndarray
    shaping_rows: np.ndarray | slice
    selection_rows: np.ndarray | slice


def draw_run_rows(
    data: FitData,
    rng,
    *,
    support_source: str,
    support_size_per_class: int,
    n_classes: int,
    n_repeats: int,
    n_threads: int,
) -> list[DrawnRun]:
    """The rows of every run: support, shaping, selection.

    Random choices are keyed by row content (:mod:`._groups`), so a row of
    integer weight k is drawn as k copies of it would be.
    """
    cap = support_size_per_class
    X, y, weights, moments = data.X, data.y, data.weights, (data.mean, data.scale)
    pool, annotated, cells = data.pool, data.annotated, data.cells
    if support_source == "pool":
        keys = draw_keys(content_hashes(X, pool, *moments, n_threads), rng)
        mass = take_by_weight(y[pool], keys, weights[pool], cap)
        every_row = slice(None)
        return [DrawnRun(np.flatnonzero(mass), mass[mass > 0], every_row, every_row)]
    y_annotated, weights_annotated = y[annotated], weights[annotated]
    hashes = content_hashes(X, annotated, *moments, n_threads)
    folds = cross_fitting_folds(
        hashes, cells, y_annotated, weights_annotated, n_classes, n_repeats, rng
    )
    if folds is None:
        mass = take_by_weight(cells, draw_keys(hashes, rng), weights_annotated, cap)
        every_row = slice(None)
        return [DrawnRun(np.flatnonzero(mass), mass[mass > 0], every_row, every_row)]
    runs = []
    for split in folds:
        first, second = np.flatnonzero(split == 0), np.flatnonzero(split == 1)
        for shaping, selection in ((second, first), (first, second)):
            keys = draw_keys(hashes[shaping], rng)
            mass = take_by_weight(cells[shaping], keys, weights_annotated[shaping], cap)
            runs.append(DrawnRun(shaping[mass > 0], mass[mass > 0], shaping, selection))
    return runs


def draw_covariance_rows(data: FitData, rng, whitening_ridge: float | None):
    """Pool rows and weights the whitening covariance is estimated on; None for all.

    ``whitening_ridge``: the fit's (None: no whitening, no rows). Drawn by row
    content (as the supports are), and only where the full
    product would exceed :data:`WHITENING_COVARIANCE_BUDGET`, after every
    other draw: smaller fits draw exactly as without it. The keys hash a
    few varying features, a pass over a sliver of the pool.
    """
    pool, n_features = data.pool, data.X.shape[1]
    weights = data.weights[pool]
    n_rows = max(WHITENING_COVARIANCE_BUDGET // n_features**2, 8 * n_features)
    pool_size = data.pool_size
    if whitening_ridge is None or pool_size <= n_rows:
        return None
    columns = np.flatnonzero(data.scale != 1.0)[:32]
    if columns.size == 0:
        return None
    if columns[-1] - columns[0] + 1 == columns.size:  # consecutive, as usual: a view, no copy
        columns = slice(columns[0], columns[-1] + 1)
    hashes = content_hashes(data.X[:, columns], pool, data.mean[columns], data.scale[columns])
    budget = weights.sum() * n_rows / pool_size
    mass = take_by_weight(np.zeros(pool.size), draw_keys(hashes, rng), weights, budget)
    return np.flatnonzero(mass), mass[mass > 0]


def _moments(X, rows, weights, standardize: bool, n_threads: int):
    """The rows' weighted mean and standard deviation per feature (zeros and ones: raw)."""
    if standardize:
        return weighted_moments(X, rows, weights, n_threads)
    return np.zeros(X.shape[1]), np.ones(X.shape[1])


def fit_data(X, y, weights, split, *, class_factor, standardize: bool, n_threads: int) -> FitData:
    """The fit's rows once ``split`` (pool, held-out rows, their groups) is drawn: the
    pool's moments and the held-out rows' (class, group) cells."""
    pool, annotated, annotated_groups = split
    mean, scale = _moments(X, pool, weights[pool], standardize, n_threads)
    cells, n_cells = cell_codes(y[annotated], annotated_groups)
    return FitData(
        X, y, weights, pool, annotated, cells, n_cells, mean, scale, class_factor=class_factor
    )


@dataclass
class GroupFreeRows:
    """Every row standardised (in ``X``'s dtype), its moments, and the two folds of the
    out-of-fold predictions (``second_fold``; None where a fold would miss a class)."""

    X: np.ndarray
    mean: np.ndarray
    scale: np.ndarray
    second_fold: np.ndarray | None


def group_free_rows(
    X, y, weights, rng, *, standardize: bool, n_threads: int, draw_folds: bool = True
) -> GroupFreeRows:
    """The rows of ``fit(X, y)``: standardised on every row, split in two folds by content
    (``draw_folds``; False: no folds, where no reweighted head is weighed)."""
    every_row = np.arange(X.shape[0])
    mean, scale = _moments(X, every_row, weights, standardize, n_threads)
    if not draw_folds:
        return GroupFreeRows(
            standardized(X, every_row, mean, scale, X.dtype, n_threads), mean, scale, None
        )
    X_standardized = np.empty(X.shape, dtype=X.dtype)
    hashes = content_hashes(X, every_row, mean, scale, n_threads, standardized_out=X_standardized)
    second_fold = stratified_split(y, draw_keys(hashes, rng), weights, 0.5)
    n_classes = np.unique(y).size
    if any(np.unique(y[second_fold == side]).size < n_classes for side in (False, True)):
        second_fold = None  # too few rows of a class for out-of-fold predictions
    return GroupFreeRows(X_standardized, mean, scale, second_fold)


def edited_supports(runs, X, support_source_rows, mean, scale):
    """Every run's support before and after its edits, in raw feature space, and the class
    codes of its rows: ``(initial, edited, labels)``, in ``X``'s dtype."""
    support_rows = np.concatenate(
        [support_source_rows[r.support_index.cpu().numpy()] for r in runs]
    )
    # in X's dtype, as computed: with many annotated rows these are the largest attributes
    initial = X[support_rows]  # exact rows, no round trip
    # in X's dtype and in place: eight runs' supports in float64 would double the peak memory
    edited = np.concatenate([r.support_edited.detach().cpu().numpy() for r in runs])
    edited *= scale.astype(edited.dtype)
    edited += mean.astype(edited.dtype)
    # a run that kept no edits has its support as drawn, not after a round trip through
    # whitening (rounding that would read as edits)
    edits_kept = [r.kept_edits for r in runs]
    unedited = np.repeat(np.logical_not(edits_kept), [len(r.support_index) for r in runs])
    edited[unedited] = initial[unedited]
    return initial, edited, np.concatenate([r.support_labels.cpu().numpy() for r in runs])


def class_factor(classes, y, weights, class_weight) -> np.ndarray:
    """Weight of each class's rows: ``class_weight`` resolved as LogisticRegression does
    (by sample weight), ones for None."""
    if class_weight is None:
        return np.ones(classes.shape[0])
    return compute_class_weight(class_weight, classes=classes, y=classes[y], sample_weight=weights)
