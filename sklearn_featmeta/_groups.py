"""Spurious-group labels: the unknown-group sentinel, encoding and the held-out split.

One place for the package's ``groups`` semantics (DESIGN.md, "The product"):
every estimator, metric and splitter reads groups through this module.

A group label is any hashable value, one per row. A row whose group is
**unknown** carries ``-1`` (integers, as scikit-learn's semi-supervised
estimators mark unlabelled rows), ``None`` or NaN.
"""

from __future__ import annotations

import numbers

import numpy as np

UNKNOWN_GROUP = -1
"""Group label of a row whose spurious group is unknown (integer groups).

Object and float groups may also use ``None`` / NaN (``pandas.NA`` too).
"""


def _is_unknown(value: object) -> bool:
    if value is None:
        return True
    if isinstance(value, numbers.Integral) and not isinstance(value, bool):
        return int(value) == UNKNOWN_GROUP
    if isinstance(value, numbers.Real):
        return bool(np.isnan(value)) or float(value) == UNKNOWN_GROUP
    try:
        return bool(value != value)  # NaN-like objects
    except TypeError:  # pandas.NA refuses to be a bool: it is missing
        return True


def as_group_array(groups: object, n_samples: int) -> np.ndarray:
    """``groups`` as a 1-D array of length ``n_samples``, or a clear ``ValueError``."""
    array = np.asarray(groups)
    if array.dtype.kind in "US" and not hasattr(groups, "dtype"):
        # A list such as ["a", -1, None] would become strings ("-1", "None").
        array = np.asarray(groups, dtype=object)
    if array.ndim != 1:
        raise ValueError(
            f"groups must be 1-D, one label per row; got an array of shape {array.shape}."
        )
    if array.shape[0] != n_samples:
        raise ValueError(
            f"groups has {array.shape[0]} entries but X has {n_samples} rows; "
            "give one group label per row (-1, None or NaN for unknown)."
        )
    return array


def unknown_group_mask(groups: np.ndarray) -> np.ndarray:
    """Boolean mask of the rows whose group is unknown (``-1``, ``None`` or NaN)."""
    groups = np.asarray(groups)
    if groups.dtype.kind in "iu":
        return groups == UNKNOWN_GROUP
    if groups.dtype.kind == "f":
        return np.isnan(groups) | (groups == UNKNOWN_GROUP)
    if groups.dtype.kind == "b":
        return np.zeros(groups.shape, dtype=bool)
    return np.fromiter((_is_unknown(v) for v in groups), dtype=bool, count=groups.shape[0])


def encode_groups(groups: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Integer codes for group labels: ``0 .. n_groups - 1``, ``-1`` where unknown.

    Returns ``(codes, values)`` where ``values[code]`` is the original label.
    """
    unknown = unknown_group_mask(groups)
    codes = np.full(groups.shape[0], -1, dtype=np.int64)
    known_values = groups[~unknown]
    if known_values.dtype == object:
        kinds = {type(v).__name__ for v in known_values}
        try:
            values, known_codes = np.unique(known_values, return_inverse=True)
        except TypeError as exc:
            raise ValueError(
                f"groups mixes labels of types {sorted(kinds)} that cannot be compared; "
                "use labels of one type (e.g. all strings)."
            ) from exc
    else:
        values, known_codes = np.unique(known_values, return_inverse=True)
    codes[~unknown] = known_codes.ravel()
    return codes, values


def stratified_holdout(
    strata: np.ndarray, fraction: float, random_state: np.random.RandomState
) -> np.ndarray:
    """Boolean mask of the rows to hold out: ``fraction`` of every stratum.

    Every stratum with at least two rows gives at least one row to each side;
    a stratum of one row stays on the training side.
    """
    _, codes, counts = np.unique(strata, return_inverse=True, return_counts=True)
    codes = codes.ravel()
    n_hold = np.clip(np.rint(fraction * counts), 1, counts - 1).astype(np.int64)
    n_hold[counts < 2] = 0
    permutation = random_state.permutation(codes.shape[0])
    by_stratum = permutation[np.argsort(codes[permutation], kind="stable")]
    starts = np.cumsum(counts) - counts
    ranks = np.arange(codes.shape[0]) - starts[codes[by_stratum]]
    mask = np.zeros(codes.shape[0], dtype=bool)
    mask[by_stratum[ranks < n_hold[codes[by_stratum]]]] = True
    return mask


def split_pool_and_heldout(
    y: np.ndarray,
    group_codes: np.ndarray | None,
    validation_fraction: float,
    random_state: np.random.RandomState,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Split rows into the training pool and the held-out (annotated) rows.

    Parameters
    ----------
    y : ndarray of int
        Encoded class labels.
    group_codes : ndarray of int or None
        Output of :func:`encode_groups`, or None when no groups were given.

    Returns
    -------
    pool : ndarray of int
        Row indices of the training pool.
    heldout : ndarray of int
        Row indices of the held-out rows.
    heldout_groups : ndarray of int
        Group code of each held-out row; the class code when there are no
        known groups (selection then uses worst-class accuracy).

    Notes
    -----
    Known-group rows are held out and unknown rows form the pool. When every
    row's group is known, ``validation_fraction`` of the rows are held out,
    stratified by (class, group); when none is (or ``group_codes`` is None),
    they are held out stratified by class.
    """
    if group_codes is None:
        group_codes = np.full(y.shape[0], -1, dtype=np.int64)
    known = group_codes >= 0
    if known.any() and not known.all():
        heldout_mask = known
    elif known.all():
        n_groups = int(group_codes.max()) + 1
        heldout_mask = stratified_holdout(
            y * n_groups + group_codes, validation_fraction, random_state
        )
    else:
        heldout_mask = stratified_holdout(y, validation_fraction, random_state)
    heldout = np.flatnonzero(heldout_mask)
    pool = np.flatnonzero(~heldout_mask)
    heldout_groups = group_codes[heldout] if known.any() else y[heldout]
    return pool, heldout, heldout_groups


def cross_fitting_folds(
    y: np.ndarray,
    group_codes: np.ndarray,
    n_classes: int,
    n_repeats: int,
    random_state: np.random.RandomState,
) -> np.ndarray | None:
    """``n_repeats`` random splits of the annotated rows in two folds, stratified by (class, group).

    Returns the fold (0 or 1) of every row in each split, shape
    ``(n_repeats, n_rows)``, or None when a fold would miss a class (a handful
    of annotated rows): one run then uses them all.
    """
    cells, _ = cell_codes(y, group_codes)
    folds = np.empty((n_repeats, y.shape[0]), dtype=np.int64)
    for split in folds:
        second_fold = stratified_holdout(cells, 0.5, random_state)
        if any(np.unique(y[second_fold == fold]).size < n_classes for fold in (False, True)):
            return None
        split[:] = second_fold
    return folds


def cell_codes(y: np.ndarray, group_codes: np.ndarray) -> tuple[np.ndarray, int]:
    """Codes of the (class, group) cells present, ``0 .. n_cells - 1``."""
    _, codes = np.unique(np.stack([y, group_codes]), axis=1, return_inverse=True)
    codes = codes.ravel()
    return codes, int(codes.max()) + 1 if codes.size else 0
