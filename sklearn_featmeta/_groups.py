"""Spurious-group labels: the unknown-group sentinel, encoding, and (class, group) cells.

One place for the package's ``groups`` semantics (docs/architecture.md):
every estimator, metric and splitter reads groups through this module.

A group label is any hashable value, one per row. A row whose group is
**unknown** carries ``-1`` (integers, as scikit-learn's semi-supervised
estimators mark unlabelled rows), ``None`` or NaN. Their text spellings
(``"-1"``, ``"nan"``, ``"None"``, ``"<NA>"`` and ``""``, what
``df[column].astype(str)`` makes of missing values) are unknown too, with a
warning: a string column must not turn "unknown" into a real group.
"""

from __future__ import annotations

import numbers
import warnings

import numpy as np

UNKNOWN_GROUP = -1
"""Group label of a row whose spurious group is unknown (integer groups).

Object and float groups may also use ``None`` / NaN (``pandas.NA`` too).
"""


UNKNOWN_GROUP_SPELLINGS = frozenset({"-1", "nan", "none", "<na>", ""})
"""Text spellings of an unknown group (compared lower-cased, without surrounding spaces)."""


def _is_unknown_text(value: object) -> bool:
    return isinstance(value, str) and value.strip().lower() in UNKNOWN_GROUP_SPELLINGS


def _is_unknown(value: object) -> bool:
    if value is None or _is_unknown_text(value):
        return True
    if isinstance(value, str):
        return False
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


def drop_zero_weights(X, y, groups, sample_weight):
    """Validated ``(X, y, groups, weights)``; rows of zero weight are left out, as if never given.

    Negative, non-finite or misshapen weights, or weights all zero, are an error.
    """
    from sklearn.utils.validation import _check_sample_weight

    weights = _check_sample_weight(sample_weight, X, dtype=np.float64, ensure_non_negative=True)
    if groups is not None:
        groups = as_group_array(groups, X.shape[0])
    keep = weights > 0
    if keep.all():
        return X, y, groups, weights
    return X[keep], y[keep], None if groups is None else groups[keep], weights[keep]


def encode_groups(groups: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Integer codes for group labels: ``0 .. n_groups - 1``, ``-1`` where unknown.

    Returns ``(codes, values)`` where ``values[code]`` is the original label.
    """
    unknown = unknown_group_mask(groups)
    if groups.dtype.kind in "OUS":
        spelled = sorted({str(v) for v in groups[unknown] if isinstance(v, str)})
        if spelled:
            warnings.warn(
                f"groups holds the text {', '.join(map(repr, spelled))} on "
                f"{sum(isinstance(v, str) for v in groups[unknown])} row(s): read as an unknown "
                "group (like -1 / None / NaN). Use -1 or None for unknown groups.",
                UserWarning,
                stacklevel=3,
            )
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


def cell_codes(y: np.ndarray, group_codes: np.ndarray) -> tuple[np.ndarray, int]:
    """Codes of the (class, group) cells present, ``0 .. n_cells - 1``."""
    _, codes = np.unique(np.stack([y, group_codes]), axis=1, return_inverse=True)
    codes = codes.ravel()
    return codes, int(codes.max()) + 1 if codes.size else 0


def known_group_codes(groups, n_rows: int) -> np.ndarray | None:
    """``groups`` of a fit as codes (:func:`encode_groups`), or None where no row's group is
    known (with a warning: the fit goes on as without groups)."""
    if groups is None:
        return None
    group_codes, _ = encode_groups(as_group_array(groups, n_rows))
    if (group_codes < 0).all():
        warnings.warn(
            "No row of groups is known (all -1 / None / NaN): fitting as with "
            "groups=None (the ERM head, or the reweighted head where it stays close).",
            UserWarning,
            stacklevel=4,
        )
        return None
    return group_codes
