"""Baselines with the package's ``groups`` semantics, for like-with-like comparisons."""

from __future__ import annotations

from dataclasses import dataclass, fields
from numbers import Integral, Real

import numpy as np
import sklearn
from sklearn.base import BaseEstimator, ClassifierMixin, _fit_context
from sklearn.linear_model import LogisticRegression
from sklearn.utils import check_random_state
from sklearn.utils._param_validation import Interval

from ._checks import validated_rows
from ._groups import cell_codes, encode_groups
from ._linear import LinearHeadMixin, raw_feature_head
from ._preprocessing import weighted_moments
from ._sampling import content_hashes, draw_keys, stratified_split, take_by_weight
from .metrics import worst_group_accuracy_score

__all__ = ["DFRClassifier"]

_DFR_CS = (1.0, 0.7, 0.3, 0.1, 0.07, 0.03, 0.01)


def _l1_logistic_regression(C: float, random_state: int) -> LogisticRegression:
    """L1-penalised liblinear logistic regression, spelled for the installed scikit-learn."""
    major, minor = (int(part) for part in sklearn.__version__.split(".")[:2])
    if (major, minor) >= (1, 8):
        return LogisticRegression(C=C, l1_ratio=1.0, solver="liblinear", random_state=random_state)
    return LogisticRegression(C=C, penalty="l1", solver="liblinear", random_state=random_state)


class DFRClassifier(LinearHeadMixin, ClassifierMixin, BaseEstimator):
    """Deep feature reweighting: last-layer retraining on group-balanced annotated rows.

    The DFR recipe (Kirichenko, Izmailov, Wilson, "Last Layer Re-Training is
    Sufficient for Robustness to Spurious Correlations", ICLR 2023) on
    precomputed embeddings, with the same ``groups`` semantics as
    :class:`~sklearn_featmeta.MetaAugmentedHeadClassifier`:

    1. The annotated rows are those with a known group (all rows when every
       group is known; all rows, grouped by class, when ``groups`` is None).
       Groups are the (class, group) cells.
    2. Features are standardised with the annotated rows' statistics.
    3. ``C`` is chosen from ``Cs`` by worst-group accuracy: heads are fitted
       on group-balanced random subsets of one half of the annotated rows
       (stratified by group) and scored on the other half.
    4. The final head is the mean of ``n_estimators`` L1 logistic regressions
       (liblinear) with the chosen ``C``, each on a group-balanced random
       subset of all annotated rows (every group subsampled to the smallest).

    Rows with an unknown group are not used.

    Parameters
    ----------
    Cs : tuple of float, default=(1, 0.7, 0.3, 0.1, 0.07, 0.03, 0.01)
        Inverse L1 strengths to choose from (DFR's grid).
    n_estimators : int, default=10
        Balanced subsets averaged, for tuning and for the final head.
    random_state : int, RandomState instance or None, default=None

    Attributes
    ----------
    classes_ : ndarray of shape (n_classes,)
    coef_ : ndarray of shape (1, n_features) or (n_classes, n_features)
    intercept_ : ndarray of shape (1,) or (n_classes,)
    C_ : float
        Chosen inverse regularisation strength.
    tuning_scores_ : dict
        Held-out-half worst-group accuracy for each ``C``.
    n_features_in_ : int
    feature_names_in_ : ndarray of str

    Examples
    --------
    >>> from sklearn_featmeta.baselines import DFRClassifier
    >>> from sklearn_featmeta.datasets import make_spurious_embeddings
    >>> X, y, groups = make_spurious_embeddings(n_samples=600, random_state=0)
    >>> DFRClassifier(random_state=0).fit(X, y, groups).coef_.shape
    (1, 32)
    """

    _parameter_constraints: dict = {
        "Cs": [tuple, list],
        "n_estimators": [Interval(Integral, 1, None, closed="left")],
        "random_state": ["random_state"],
    }

    def __init__(self, *, Cs=_DFR_CS, n_estimators=10, random_state=None):
        self.Cs = Cs
        self.n_estimators = n_estimators
        self.random_state = random_state

    @_fit_context(prefer_skip_nested_validation=True)
    def fit(self, X, y, groups=None, sample_weight=None) -> DFRClassifier:
        """Fit the averaged head on group-balanced subsets of the annotated rows.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
        y : array-like of shape (n_samples,)
        groups : array-like of shape (n_samples,), default=None
            Group of each row; ``-1`` / None / NaN where unknown (not used).
        sample_weight : array-like of shape (n_samples,), default=None
            Non-negative row weights: in the standardisation, the balanced
            subsets (a group's size is its total weight), the logistic
            regressions and the tuning scores. An integer weight counts as
            that many copies of the row, a zero weight as a row left out.

        Returns
        -------
        self : object
        """
        if len(self.Cs) == 0 or not all(isinstance(c, Real) and c > 0 for c in self.Cs):
            raise ValueError(
                f"Cs must be a non-empty sequence of positive numbers; got {self.Cs!r}."
            )
        X, y_encoded, self.classes_, groups, weights = validated_rows(
            self, X, y, groups, sample_weight
        )
        if groups is None:
            annotated = np.arange(X.shape[0])
            group_codes = np.zeros(X.shape[0], dtype=np.int64)
        else:
            group_codes, _ = encode_groups(groups)
            annotated = np.flatnonzero(group_codes >= 0)
        missing = np.setdiff1d(np.arange(self.classes_.shape[0]), y_encoded[annotated])
        if annotated.size == 0 or missing.size:
            raise ValueError(
                f"Class(es) {self.classes_[missing].tolist()} have no rows with a known group; "
                "DFR retrains on annotated rows only."
            )
        y_annotated, weights = y_encoded[annotated], weights[annotated]
        cells, _ = cell_codes(y_annotated, group_codes[annotated])
        mean, scale = weighted_moments(X, annotated, weights)
        Z = np.empty((annotated.size, X.shape[1]))
        hashes = content_hashes(X, annotated, mean, scale, standardized_out=Z)
        rng = check_random_state(self.random_state)
        data = _Annotated(Z, y_annotated, cells, weights, hashes)
        self.C_, self.tuning_scores_ = self._tune_C(data, rng)
        weight, bias = self._averaged_head(data, self.C_, rng)
        self.coef_, self.intercept_ = raw_feature_head(weight, bias, mean, scale)
        return self

    def _tune_C(self, data, rng):
        second_half = stratified_split(data.cells, draw_keys(data.hashes, rng), data.weights, 0.5)
        if not second_half.any():
            return float(self.Cs[0]), {}
        first, held = data.subset(~second_half), data.subset(second_half)
        scores = {}
        for C in self.Cs:
            weight, bias = self._averaged_head(first, C, rng)
            scores[float(C)] = worst_group_accuracy_score(
                held.y,
                _predict_codes(held.Z, weight, bias),
                groups=held.cells,
                sample_weight=held.weights,
            )
        return max(scores, key=scores.get), scores  # ties: the first (largest) C

    def _averaged_head(self, data, C, rng):
        """Mean (coef, intercept) over ``n_estimators`` group-balanced subsets."""
        totals = np.bincount(data.cells, weights=data.weights)
        smallest = totals[totals > 0].min()
        n_rows = 1 if self.classes_.shape[0] == 2 else self.classes_.shape[0]
        weight = np.zeros((n_rows, data.Z.shape[1]))
        bias = np.zeros(n_rows)
        for _ in range(self.n_estimators):
            # every group subsampled to the smallest one's weight
            mass = take_by_weight(data.cells, draw_keys(data.hashes, rng), data.weights, smallest)
            subset = np.flatnonzero(mass)
            y = data.y[subset]
            # liblinear is binary: one L1 model per class against the rest
            targets = [y == 1] if n_rows == 1 else [y == k for k in range(n_rows)]
            for row, target in enumerate(targets):
                model = _l1_logistic_regression(C, int(rng.randint(np.iinfo(np.int32).max)))
                model.fit(data.Z[subset], target, sample_weight=mass[subset])
                weight[row] += model.coef_[0]
                bias[row] += model.intercept_[0]
        return weight / self.n_estimators, bias / self.n_estimators


@dataclass
class _Annotated:
    """The annotated rows DFR retrains on: standardised rows, labels, cells, weights, hashes."""

    Z: np.ndarray
    y: np.ndarray
    cells: np.ndarray
    weights: np.ndarray
    hashes: np.ndarray

    def subset(self, mask: np.ndarray) -> _Annotated:
        return _Annotated(*(getattr(self, field.name)[mask] for field in fields(self)))


def _predict_codes(Z, weight, bias):
    scores = Z @ weight.T + bias
    return (scores[:, 0] > 0).astype(np.int64) if scores.shape[1] == 1 else scores.argmax(1)
