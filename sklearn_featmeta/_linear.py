"""Prediction for linear heads, in NumPy only, with LogisticRegression's shapes.

Shared by every estimator of the package: a fitted model predicts (and
unpickles) on a machine where torch cannot be imported.
"""

from __future__ import annotations

import numpy as np
from scipy.special import expit, softmax
from sklearn.utils.validation import check_is_fitted, validate_data


class LinearHeadMixin:
    """``decision_function`` / ``predict`` / ``predict_proba`` from ``coef_`` and ``intercept_``.

    Two classes: ``coef_`` has one row and ``decision_function`` returns the
    score of ``classes_[1]``, shape (n_samples,), as LogisticRegression does.
    """

    def decision_function(self, X) -> np.ndarray:
        """Confidence scores (logits) per class.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)

        Returns
        -------
        scores : ndarray of shape (n_samples,) for two classes, else (n_samples, n_classes)
        """
        check_is_fitted(self)
        X = validate_data(self, X, reset=False, dtype=[np.float64, np.float32])
        scores = X @ self.coef_.T + self.intercept_
        return scores.ravel() if scores.shape[1] == 1 else scores

    def predict(self, X) -> np.ndarray:
        """Class labels of ``X``.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)

        Returns
        -------
        labels : ndarray of shape (n_samples,)
        """
        indices = predicted_indices(self.decision_function(X))  # checks that self is fitted
        return self.classes_[indices]

    def predict_proba(self, X) -> np.ndarray:
        """Class probabilities (softmax of the logits), columns in ``classes_`` order.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)

        Returns
        -------
        proba : ndarray of shape (n_samples, n_classes)
        """
        scores = self.decision_function(X)
        if scores.ndim == 1:
            positive = expit(scores)
            return np.column_stack([1.0 - positive, positive])
        return softmax(scores, axis=1)

    def predict_log_proba(self, X) -> np.ndarray:
        """Logarithm of :meth:`predict_proba` (as LogisticRegression: ``-inf`` where it underflows).

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)

        Returns
        -------
        log_proba : ndarray of shape (n_samples, n_classes)
        """
        return np.log(self.predict_proba(X))


def predicted_indices(scores: np.ndarray) -> np.ndarray:
    """Indices into ``classes_`` of the classes that :meth:`decision_function` scores predict."""
    return (scores > 0).astype(np.intp) if scores.ndim == 1 else scores.argmax(axis=1)


def binary_to_softmax_head(
    coef: np.ndarray, intercept: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """A binary head ``(1, d)`` as the equivalent two-row softmax head."""
    return np.vstack([-coef / 2, coef / 2]), np.concatenate([-intercept / 2, intercept / 2])


def raw_feature_head(weight, bias, mean, scale) -> tuple[np.ndarray, np.ndarray]:
    """A head on standardised features, ``(X - mean) / scale``, as one on raw features."""
    coef = weight / scale
    return coef, bias - coef @ mean


def softmax_to_fitted_head(
    weight: np.ndarray, bias: np.ndarray, mean: np.ndarray, scale: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """``(coef_, intercept_)`` on raw features from a softmax head on standardised ones.

    Two classes collapse to one row (the logit of ``classes_[1]`` minus that of
    ``classes_[0]``), as in LogisticRegression.
    """
    coef, intercept = raw_feature_head(weight, bias, mean, scale)
    if weight.shape[0] == 2:
        return coef[1:] - coef[:1], intercept[1:] - intercept[:1]
    return coef, intercept


def standardised_softmax_head(initial_head, n_classes: int, mean, scale):
    """A given ``(coef, intercept)`` (``LogisticRegression``'s shapes, raw features) as a
    softmax head on standardised features; None for None. Checks its shapes and values."""
    n_features = mean.shape[0]
    if initial_head is None:
        return None
    if len(initial_head) != 2:
        raise ValueError("initial_head must be a tuple (coef, intercept).")
    coef = np.asarray(initial_head[0], dtype=np.float64)
    intercept = np.asarray(initial_head[1], dtype=np.float64).reshape(-1)
    n_rows = 1 if n_classes == 2 else n_classes
    if coef.shape != (n_rows, n_features) or intercept.shape != (n_rows,):
        raise ValueError(
            f"initial_head must have coef of shape ({n_rows}, {n_features}) and intercept "
            f"of shape ({n_rows},) for {n_classes} classes and {n_features} features, "
            f"as LogisticRegression's; got {coef.shape} and {intercept.shape}."
        )
    if not (np.isfinite(coef).all() and np.isfinite(intercept).all()):
        raise ValueError("initial_head contains NaN or infinity.")
    if n_classes == 2:
        coef, intercept = binary_to_softmax_head(coef, intercept)
    return coef * scale, intercept + coef @ mean
