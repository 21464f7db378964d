"""Group-aware evaluation: worst-group accuracy, a per-group report, a routed scorer.

A *group* is whatever ``groups`` names, one label per row; build (class x
attribute) cells with :func:`make_groups`. Rows whose group is unknown
(``-1``, ``None`` or NaN) are left out of every per-group number.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from sklearn import config_context
from sklearn.metrics import make_scorer
from sklearn.utils import check_consistent_length, column_or_1d

from ._groups import as_group_array, encode_groups, unknown_group_mask
from ._text import text_table

__all__ = [
    "GroupAccuracyReport",
    "group_accuracy_report",
    "make_groups",
    "worst_group_accuracy_score",
    "worst_group_scorer",
]


def _per_group_accuracy(y_true, y_pred, groups, sample_weight=None):
    """(group values, counts, weighted accuracies) over the known groups."""
    y_true = column_or_1d(y_true)
    y_pred = column_or_1d(y_pred)
    if groups is None:
        raise ValueError(
            "groups is required: one group label per row. In a search or cross-validation, "
            "enable metadata routing (sklearn.set_config(enable_metadata_routing=True)) and "
            "pass groups= to fit."
        )
    groups = as_group_array(groups, y_true.shape[0])
    check_consistent_length(y_true, y_pred, groups)
    _check_label_types(y_true, y_pred)
    weight = _sample_weight(sample_weight, y_true.shape[0])
    codes, values = encode_groups(groups)
    known = codes >= 0
    if not known.any():
        raise ValueError("Every row's group is unknown (-1 / None / NaN): no group to score.")
    codes, correct, weight = codes[known], (y_true == y_pred)[known], weight[known]
    counts = np.bincount(codes, minlength=values.shape[0])
    total_weight = np.bincount(codes, weights=weight, minlength=values.shape[0])
    hits = np.bincount(codes, weights=weight * correct, minlength=values.shape[0])
    with np.errstate(invalid="ignore", divide="ignore"):
        accuracy = hits / total_weight
    return values, counts, accuracy, float(hits.sum() / total_weight.sum())


def _sample_weight(sample_weight, n_samples: int) -> np.ndarray:
    """Row weights as floats: ones when None; NaN, infinite or negative weights are an error."""
    if sample_weight is None:
        return np.ones(n_samples)
    weight = column_or_1d(sample_weight).astype(np.float64)
    if weight.shape[0] != n_samples:
        raise ValueError(f"sample_weight has {weight.shape[0]} entries for {n_samples} rows.")
    if not np.isfinite(weight).all():
        raise ValueError("sample_weight contains NaN or infinity.")
    if (weight < 0).any():
        raise ValueError("Negative values in sample_weight: weights must be >= 0.")
    return weight


def _check_label_types(y_true: np.ndarray, y_pred: np.ndarray) -> None:
    """A clear error where labels of one array could never equal those of the other."""
    kinds = {
        name: "text" if array.dtype.kind in "USO" and _all_text(array) else "number"
        for name, array in (("y_true", y_true), ("y_pred", y_pred))
    }
    if kinds["y_true"] != kinds["y_pred"]:
        raise ValueError(
            f"y_true holds {kinds['y_true']} labels (e.g. {_plain(y_true[0])!r}) and y_pred "
            f"{kinds['y_pred']} labels (e.g. {_plain(y_pred[0])!r}): no prediction can be "
            "correct. "
            "Use the same label type for both."
        )


def _all_text(array: np.ndarray) -> bool:
    return array.dtype.kind in "US" or all(isinstance(v, str) for v in array)


def worst_group_accuracy_score(y_true, y_pred, *, groups=None, sample_weight=None) -> float:
    """Accuracy of the worst group: the minimum over known groups of the group's accuracy.

    Parameters
    ----------
    y_true, y_pred : array-like of shape (n_samples,)
    groups : array-like of shape (n_samples,)
        Group of each row; rows with unknown group (-1 / None / NaN) are ignored.
        Required: None raises a ``ValueError`` that says how to route groups.
    sample_weight : array-like of shape (n_samples,), default=None

    Returns
    -------
    score : float

    Examples
    --------
    >>> from sklearn_featmeta.metrics import worst_group_accuracy_score
    >>> worst_group_accuracy_score([0, 0, 1, 1], [0, 1, 1, 1], groups=["a", "a", "b", -1])
    0.5
    """
    _, _, accuracy, _ = _per_group_accuracy(y_true, y_pred, groups, sample_weight)
    return float(np.nanmin(accuracy))


# The request is stored on the scorer; setting it needs routing on for a moment.
with config_context(enable_metadata_routing=True):
    worst_group_scorer = make_scorer(worst_group_accuracy_score).set_score_request(groups=True)
"""Scorer for ``GridSearchCV(scoring=...)`` / ``cross_validate`` that requests ``groups``.

Needs metadata routing: ``sklearn.set_config(enable_metadata_routing=True)``,
then ``search.fit(X, y, groups=groups)`` routes the same ``groups`` to the
scorer (and to any estimator or splitter that requests it).
"""


@dataclass(frozen=True)
class GroupAccuracyReport:
    """Per-group accuracy, with the summary numbers a robustness paper reports.

    Attributes
    ----------
    by_group : pandas.DataFrame or numpy structured array
        One row per known group (index / field ``group``) with ``count``,
        ``accuracy`` and ``worst`` (True on the worst group). A DataFrame when
        pandas is installed, else a structured array with the same columns.
    accuracy : float
        Accuracy over the rows of known group.
    mean_group_accuracy : float
        Unweighted mean of the group accuracies.
    worst_group_accuracy : float
    worst_group : object
        Label of the worst group.
    gap : float
        ``accuracy - worst_group_accuracy``.
    """

    by_group: object
    accuracy: float
    mean_group_accuracy: float
    worst_group_accuracy: float
    worst_group: object
    gap: float

    def to_dict(self) -> dict:
        """Plain dict of the summary and the per-group rows (JSON-friendly)."""
        groups, counts, accuracies, _ = _report_columns(self.by_group)
        return {
            "accuracy": self.accuracy,
            "mean_group_accuracy": self.mean_group_accuracy,
            "worst_group_accuracy": self.worst_group_accuracy,
            "worst_group": _plain(self.worst_group),
            "gap": self.gap,
            "by_group": {
                str(g): {"count": int(c), "accuracy": float(a)}
                for g, c, a in zip(groups, counts, accuracies, strict=True)
            },
        }

    def __str__(self) -> str:
        groups, counts, accuracies, worst = _report_columns(self.by_group)
        rows = [
            [str(group), f"{count:d}", f"{accuracy:.4f}", "<- worst" if is_worst else ""]
            for group, count, accuracy, is_worst in zip(
                groups, counts, accuracies, worst, strict=True
            )
        ]
        lines = text_table(["group", "count", "accuracy", ""], rows)
        lines += [
            "",
            f"average accuracy      {self.accuracy:.4f}",
            f"mean group accuracy   {self.mean_group_accuracy:.4f}",
            f"worst-group accuracy  {self.worst_group_accuracy:.4f}  (group {self.worst_group})",
            f"gap (average - worst) {self.gap:.4f}",
        ]
        return "\n".join(lines)


def _plain(value):
    return value.item() if isinstance(value, np.generic) else value


def _report_columns(by_group):
    if isinstance(by_group, np.ndarray):
        return by_group["group"], by_group["count"], by_group["accuracy"], by_group["worst"]
    return (
        by_group.index.to_numpy(),
        by_group["count"].to_numpy(),
        by_group["accuracy"].to_numpy(),
        by_group["worst"].to_numpy(),
    )


def group_accuracy_report(y_true, y_pred, *, groups, sample_weight=None) -> GroupAccuracyReport:
    """Per-group accuracy table with worst group flagged, plus summary numbers.

    Parameters
    ----------
    y_true, y_pred : array-like of shape (n_samples,)
    groups : array-like of shape (n_samples,)
        Group of each row; rows with unknown group (-1 / None / NaN) are ignored.
    sample_weight : array-like of shape (n_samples,), default=None
        Non-negative row weights of the accuracies (``count`` stays the number of rows).

    Returns
    -------
    report : GroupAccuracyReport
        ``print(report)`` shows the table; ``report.by_group`` is a pandas
        DataFrame when pandas is installed, else a NumPy structured array.

    Examples
    --------
    >>> from sklearn_featmeta.metrics import group_accuracy_report
    >>> report = group_accuracy_report([0, 0, 1, 1], [0, 1, 1, 1], groups=["a", "a", "b", "b"])
    >>> report.worst_group, report.worst_group_accuracy
    ('a', 0.5)
    """
    values, counts, accuracy, overall = _per_group_accuracy(y_true, y_pred, groups, sample_weight)
    present = (counts > 0) & np.isfinite(accuracy)  # a group of zero weight is not scored
    values, counts, accuracy = values[present], counts[present], accuracy[present]
    worst_index = int(np.argmin(accuracy))
    worst = np.zeros(values.shape[0], dtype=bool)
    worst[worst_index] = True
    try:
        import pandas as pd
    except ImportError:
        by_group = np.empty(
            values.shape[0],
            dtype=[
                ("group", values.dtype),
                ("count", np.int64),
                ("accuracy", np.float64),
                ("worst", bool),
            ],
        )
        by_group["group"], by_group["count"] = values, counts
        by_group["accuracy"], by_group["worst"] = accuracy, worst
    else:
        by_group = pd.DataFrame(
            {"count": counts, "accuracy": accuracy, "worst": worst},
            index=pd.Index(values, name="group"),
        )
    worst_accuracy = float(accuracy[worst_index])
    return GroupAccuracyReport(
        by_group=by_group,
        accuracy=overall,
        mean_group_accuracy=float(accuracy.mean()),
        worst_group_accuracy=worst_accuracy,
        worst_group=_plain(values[worst_index]),
        gap=overall - worst_accuracy,
    )


def make_groups(y, *attributes, sep: str = "|") -> np.ndarray:
    """Group labels of the (class x attribute ...) cells, readable as ``"y|a"``.

    Parameters
    ----------
    y : array-like of shape (n_samples,)
        Class labels.
    *attributes : array-like of shape (n_samples,)
        Spurious attributes (e.g. background, source). A row whose attribute is
        unknown (-1 / None / NaN) gets an unknown group (None).
    sep : str, default="|"

    Returns
    -------
    groups : ndarray of object, shape (n_samples,)

    Examples
    --------
    >>> from sklearn_featmeta.metrics import make_groups
    >>> make_groups(["bird", "bird"], ["water", None]).tolist()
    ['bird|water', None]
    """
    y = column_or_1d(y)
    if not attributes:
        raise ValueError("make_groups needs at least one attribute besides y.")
    columns = [as_group_array(a, y.shape[0]) for a in attributes]
    unknown = np.zeros(y.shape[0], dtype=bool)
    for column in columns:
        unknown |= unknown_group_mask(column)
    joined = y.astype(str)
    for column in columns:
        joined = np.char.add(np.char.add(joined, sep), column.astype(str))
    groups = joined.astype(object)
    groups[unknown] = None
    return groups
