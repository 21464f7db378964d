"""Randomness keyed by row content: every random choice of a fit.

Every random choice of a fit (held-out split, cross-fitting folds, support
draws, DFR's balanced subsets) orders rows by a random key drawn from the
row's *content*, and takes rows in that order up to a budget of sample
weight. Identical rows get identical keys, so a row of weight k is taken
exactly as k copies of it would be: integer ``sample_weight`` equals
repeated rows, zero weight equals a dropped row, and the row order of ``X``
does not matter.
"""

from __future__ import annotations

import numpy as np

from ._blocks import block_rows
from ._groups import cell_codes
from ._preprocessing import _blocks, _map_blocks, weighted_moments

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def _mix(x: np.ndarray) -> np.ndarray:
    """SplitMix64's finaliser: a bijective scramble of uint64 values."""
    with np.errstate(over="ignore"):
        x = x + _GOLDEN
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return x ^ (x >> np.uint64(31))


def row_hashes(X: np.ndarray) -> np.ndarray:
    """A 64-bit hash of every row of ``X`` (equal rows, equal hashes).

    A random-multiplier linear hash of the rows' bits, scrambled; one pass over
    ``X`` in blocks, no temporary the size of ``X``. For a hash that follows
    the data rather than its units, see :func:`content_hashes`.
    """
    X = np.ascontiguousarray(X)
    bits = X.view(np.uint64 if X.dtype.itemsize == 8 else np.uint32)
    multipliers = np.random.RandomState(0x5EED).randint(
        0, 2**63 - 1, size=bits.shape[1], dtype=np.int64
    ).astype(np.uint64) * np.uint64(2) + np.uint64(1)
    hashes = np.empty(bits.shape[0], dtype=np.uint64)
    block = block_rows(bits.shape[1])
    with np.errstate(over="ignore"):
        for start in range(0, bits.shape[0], block):
            rows = bits[start : start + block].astype(np.uint64, copy=False)
            hashes[start : start + block] = (rows * multipliers).sum(axis=1, dtype=np.uint64)
    return _mix(hashes)


def draw_keys(hashes: np.ndarray, random_state: np.random.RandomState) -> np.ndarray:
    """Random sort keys of rows, one fresh draw per call; equal rows get equal keys."""
    seed = np.uint64(random_state.randint(0, 2**63 - 1, dtype=np.int64))
    return _mix(hashes ^ seed)


def _cumulative_before(strata: np.ndarray, keys: np.ndarray, weights: np.ndarray):
    """Rows sorted by (stratum, key), and the weight of their stratum before each."""
    order = np.lexsort((keys, strata))
    sorted_strata, sorted_weights = strata[order], weights[order]
    cumulative = np.cumsum(sorted_weights) - sorted_weights
    first = np.r_[True, sorted_strata[1:] != sorted_strata[:-1]]
    cumulative -= np.maximum.accumulate(np.where(first, cumulative, 0.0))
    return order, cumulative


def take_by_weight(strata: np.ndarray, keys: np.ndarray, weights: np.ndarray, budget) -> np.ndarray:
    """Weight taken from each row: rows in key order within a stratum, up to ``budget`` each.

    ``budget`` is a number or one per stratum code. A row is taken whole while
    its stratum's budget lasts, and the row that crosses the budget is taken in
    part, so a row of weight k is taken as k copies of it would be.
    """
    strata = np.asarray(strata, dtype=np.int64)
    weights = np.asarray(weights, dtype=np.float64)
    order, before = _cumulative_before(strata, keys, weights)
    budget = np.broadcast_to(np.asarray(budget, dtype=np.float64), (strata.max(initial=-1) + 1,))
    taken = np.empty_like(weights)
    taken[order] = np.clip(budget[strata[order]] - before, 0.0, weights[order])
    return taken


def stratified_split(
    strata: np.ndarray, keys: np.ndarray, weights: np.ndarray, fraction: float
) -> np.ndarray:
    """Boolean mask of the rows held out: about ``fraction`` of every stratum's weight.

    Rows are taken whole, in key order, while their middle lies within the
    first ``fraction`` of their stratum's weight (unit weights: the first
    ``round(fraction * n)`` rows); equal rows (equal keys) go together. A
    stratum of two or more distinct rows gives at least one to each side; a
    stratum of one distinct row stays on the training side.
    """
    strata = np.asarray(strata, dtype=np.int64)
    weights = np.asarray(weights, dtype=np.float64)
    order = np.lexsort((keys, strata))
    sorted_strata, sorted_keys = strata[order], keys[order]
    positions = np.arange(order.size)
    new_stratum = np.r_[True, sorted_strata[1:] != sorted_strata[:-1]]
    new_row = new_stratum | np.r_[True, sorted_keys[1:] != sorted_keys[:-1]]
    stratum_start = np.maximum.accumulate(np.where(new_stratum, positions, 0))
    row_start = np.maximum.accumulate(np.where(new_row, positions, 0))  # equal rows go together
    sorted_weights = weights[order]
    cumulative = np.cumsum(sorted_weights) - sorted_weights
    weight_before = cumulative[row_start] - cumulative[stratum_start]
    row_weight = np.bincount(row_start, weights=sorted_weights, minlength=order.size)[row_start]
    totals = np.bincount(strata, weights=weights)
    # a row is held out when its middle falls in the first `fraction` of the
    # stratum's weight: with unit weights, round(fraction * n) rows
    held = weight_before + row_weight / 2 < fraction * totals[sorted_strata]
    # a stratum of two or more distinct rows gives its first one to the held-out
    # side and its last one to the training side; one of a single distinct row
    # stays on the training side
    last_row_start = np.zeros(totals.size, dtype=np.int64)
    np.maximum.at(last_row_start, sorted_strata, row_start)
    held |= (row_start == stratum_start) & (fraction > 0)
    held &= row_start != last_row_start[sorted_strata]
    mask = np.zeros(strata.size, dtype=bool)
    mask[order] = held
    return mask


def split_pool_and_annotated(
    X: np.ndarray,
    y: np.ndarray,
    group_codes: np.ndarray | None,
    weights: np.ndarray,
    validation_fraction: float,
    random_state: np.random.RandomState,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Split rows into the training pool and the held-out (annotated) rows.

    Parameters
    ----------
    X : ndarray
        The rows (their standardised content keys the random split).
    y : ndarray of int
        Encoded class labels.
    group_codes : ndarray of int or None
        Output of :func:`encode_groups`, or None when no groups were given.
    weights : ndarray of float
        Sample weight of every row.

    Returns
    -------
    pool : ndarray of int
        Row indices of the training pool.
    annotated : ndarray of int
        Row indices of the held-out rows.
    annotated_groups : ndarray of int
        Group code of each held-out row; the class code when there are no
        known groups (selection then uses worst-class accuracy).

    Notes
    -----
    Known-group rows are held out and unknown rows form the pool. When every
    row's group is known, ``validation_fraction`` of the weight is held out,
    stratified by (class, group); when none is (or ``group_codes`` is None),
    stratified by class.
    """
    if group_codes is None:
        group_codes = np.full(y.shape[0], -1, dtype=np.int64)
    known = group_codes >= 0
    if known.any() and not known.all():
        annotated_mask = known
    else:
        strata = cell_codes(y, group_codes)[0] if known.all() else y
        every_row = np.arange(y.shape[0])
        mean, scale = weighted_moments(X, every_row, weights)
        hashes = content_hashes(X, every_row, mean, scale)
        keys = draw_keys(hashes, random_state)
        annotated_mask = stratified_split(strata, keys, weights, validation_fraction)
    annotated = np.flatnonzero(annotated_mask)
    pool = np.flatnonzero(~annotated_mask)
    annotated_groups = group_codes[annotated] if known.any() else y[annotated]
    return pool, annotated, annotated_groups


def cross_fitting_folds(
    hashes: np.ndarray,
    cells: np.ndarray,
    y: np.ndarray,
    weights: np.ndarray,
    n_classes: int,
    n_repeats: int,
    random_state: np.random.RandomState,
) -> np.ndarray | None:
    """``n_repeats`` random splits of the annotated rows in two folds, stratified by cell.

    Returns the fold (0 or 1) of every row in each split, shape
    ``(n_repeats, n_rows)``, or None when a fold would miss a class (a handful
    of annotated rows): one run then uses them all.
    """
    folds = np.empty((n_repeats, y.shape[0]), dtype=np.int64)
    for split in folds:
        second_fold = stratified_split(cells, draw_keys(hashes, random_state), weights, 0.5)
        if any(np.unique(y[second_fold == fold]).size < n_classes for fold in (False, True)):
            return None
        split[:] = second_fold
    return folds


_KEY_GRID = 4096.0  # standardised values are keyed on a grid of 1/4096 of a standard deviation


def content_hashes(
    X: np.ndarray,
    rows: np.ndarray,
    mean: np.ndarray,
    scale: np.ndarray,
    n_threads: int = 1,
    *,
    standardized_out: np.ndarray | None = None,
) -> np.ndarray:
    """Hashes of the standardised rows ``X[rows]``, keying random draws.

    The standardised values are rounded to a grid fine against the data's
    spread, so equal rows hash equal, and so do the rows of ``a * X + b``:
    random choices keyed on these hashes follow the data, not its units (nor
    the names of its classes and groups: every draw is within a class or cell).
    ``standardized_out``: an array of shape ``(rows.size, n_features)`` that
    also receives the standardised rows, in its dtype, the same values as
    :func:`._preprocessing.standardized` (one pass over ``X`` serves both).
    """
    hashes = np.empty(rows.size, dtype=np.uint64)

    def hash_block(block):
        grid = np.subtract(X[rows[block]], mean, dtype=np.float64)  # in float64, as in standardized
        grid /= scale
        if standardized_out is not None:
            standardized_out[block] = grid  # rounded to its dtype, as standardized rounds
        grid *= _KEY_GRID
        hashes[block] = row_hashes(np.rint(grid, out=grid).astype(np.int64))

    _map_blocks(hash_block, _blocks(rows.size, X.shape[1]), n_threads)
    return hashes
