"""The head of ``fit(X, y)``: no row has a known group.

Held-out rows drawn from the training distribution reward a head that leans
on a shortcut, so nothing here selects by held-out accuracy. The fit keeps the
ERM head (a multinomial logistic regression on every row) unless one bounded
alternative stays close to it: a head refitted with the rows an out-of-fold
ERM head gets wrong or is unsure of weighed up (AFR, Qiu et al. 2023: weight
``exp(-gamma * p)``, ``p`` the out-of-fold probability of the row's class,
classes weighed equally). The alternative is kept only if its cross-fitted
class-balanced accuracy is within ``tolerance`` of the ERM head's
(docs/decisions.md: why a bound on the loss, not a lead, decides) and if, on
the training rows where the two heads predict differently, it is right on less
than half (by weight): a head that leans less on a shortcut gives up some of
the rows drawn with it, while one that wins most of the rows it changes has
found a cheaper fit of the hard rows, on pretrained-CNN features the shortcut
itself (docs/decisions.md, 2026-12-07 fourth).

NumPy arrays in, NumPy arrays out (heads in softmax form, on the standardised
features given); no scikit-learn.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ._softmax import SoftmaxProblem

__all__ = [
    "GroupFreeSettings",
    "GroupFreeResult",
    "fit_without_groups",
    "hard_row_weights",
    "right_where_heads_disagree",
]


@dataclass(frozen=True)
class GroupFreeSettings:
    """What :func:`fit_without_groups` needs besides the rows.

    ``l2_per_weight``: the ERM head's L2 strength times the total row weight
    (``1 / C`` for ``LogisticRegression(C)``); each fit divides it by its
    rows' total weight.
    ``gamma``: the reweighting strength (0: no alternative, the ERM head).
    ``tolerance``: how much cross-fitted class-balanced accuracy the
    alternative may give up (None: kept whatever it costs and wherever it
    wins, no bound and no :data:`MAX_RIGHT_WHERE_HEADS_DISAGREE` test).
    """

    l2_per_weight: float
    gamma: float
    tolerance: float | None


@dataclass
class GroupFreeResult:
    """The fitted head, the ERM head, which was chosen and the cross-fitted scores."""

    head: tuple[np.ndarray, np.ndarray]
    erm_head: tuple[np.ndarray, np.ndarray]
    chosen: str  # "erm" or "reweighted"
    scores: dict[str, dict[str, float]] = field(default_factory=dict)
    converged: bool = True


TOLERANCE = 1e-4
"""L-BFGS's gradient tolerance for these heads: ``LogisticRegression``'s default ``tol``.

They stop on it alone, as LogisticRegression does (``gradient_stop``): the
fitted head is LogisticRegression's, also on float32 features.
"""


FOLD_TOLERANCE = 1e-3
"""The same for the fold heads, which only score rows and weigh them."""

MAX_RIGHT_WHERE_HEADS_DISAGREE = 0.5
"""The reweighted head is kept only if it is right on less than this share of the
training rows (by weight) where it and the ERM head predict different classes."""

MEMORY = 40
"""The past steps L-BFGS keeps for these heads (``LogisticRegression`` keeps SciPy's 10).

Their solves approach a tight tolerance slowly, where a longer memory saves
evaluations (passes over ``X``) at a per-step cost of ``MEMORY`` times the
head's size, small beside a pass (docs/decisions.md). The stop is the same.
"""


def _fit(X, y, weight, n_classes, l2_per_weight, start=None, tol=TOLERANCE):
    """``LogisticRegression`` of ``y`` on ``X`` with row weights ``weight``: ``((W, b), converged)``.

    Two classes are solved as one row (:class:`SoftmaxProblem`'s ``binary``)
    and returned in softmax form, the first class's row zero. ``start``: a
    head to start from (the heads here differ little from one another).
    """
    total = float(weight.sum())
    problem = SoftmaxProblem(X, y, weight / total, n_classes, binary=True)
    if start is None:
        start = problem.zeros()
    elif problem.binary:
        start = _flat((start[0][1:] - start[0][:1], start[1][1:] - start[1][:1]))
    else:
        start = _flat(start)
    (W, b), converged, _ = problem.minimize(
        l2_per_weight / total, start, max_iter=1000, tol=tol, gradient_stop=True, memory=MEMORY
    )
    if problem.binary:
        W, b = np.concatenate([np.zeros_like(W), W]), np.concatenate([np.zeros_like(b), b])
    return (W, b), converged


def _flat(head: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    """A head as L-BFGS's flat start (``(n_classes, n_features + 1)``, row-major)."""
    return np.concatenate([head[0], head[1][:, None]], axis=1).ravel()


def _probabilities(X, head):
    logits = X @ head[0].T + head[1]
    logits -= logits.max(1, keepdims=True)
    p = np.exp(logits)
    return p / p.sum(1, keepdims=True)


def hard_row_weights(
    p_true: np.ndarray, y: np.ndarray, row_weight: np.ndarray, class_factor: np.ndarray, gamma
) -> np.ndarray:
    """AFR's weights: ``row_weight * class_factor[y] * exp(-gamma * p_true)``, rescaled to
    ``row_weight``'s total.

    ``p_true``: each row's out-of-fold probability of its own class, so a row
    the ERM head gets wrong weighs up to ``exp(gamma)`` times one it is sure of.
    """
    weight = row_weight * class_factor[y] * np.exp(-gamma * p_true)
    return weight * (row_weight.sum() / weight.sum())


def right_where_heads_disagree(
    X: np.ndarray,
    y: np.ndarray,
    row_weight: np.ndarray,
    head: tuple[np.ndarray, np.ndarray],
    erm_head: tuple[np.ndarray, np.ndarray],
) -> float | None:
    """The weighted share of the rows where ``head`` and ``erm_head`` predict different
    classes that ``head`` predicts right; None where they agree on every row."""
    predicted, erm_predicted = ((X @ h[0].T + h[1]).argmax(1) for h in (head, erm_head))
    disagree = predicted != erm_predicted
    if not disagree.any():
        return None
    right = row_weight[disagree] * (predicted[disagree] == y[disagree])
    return float(right.sum() / row_weight[disagree].sum())


def balanced_accuracy(correct: np.ndarray, y: np.ndarray, row_weight: np.ndarray) -> float:
    """Mean over classes of the weighted accuracy of each class's rows."""
    classes = np.unique(y)
    hits = np.bincount(y, weights=row_weight * correct)[classes]
    return float(np.mean(hits / np.bincount(y, weights=row_weight)[classes]))


def fit_without_groups(
    X: np.ndarray,
    y: np.ndarray,
    row_weight: np.ndarray,
    n_classes: int,
    *,
    erm_class_factor: np.ndarray,
    reweighted_class_factor: np.ndarray,
    second_fold: np.ndarray | None,
    settings: GroupFreeSettings,
) -> GroupFreeResult:
    """The ERM head, or the reweighted head where it stays close to the ERM head and
    gives up some of the rows it changes (the module's docstring).

    Parameters
    ----------
    X : ndarray of shape (n_samples, n_features)
        Standardised features.
    y : ndarray of shape (n_samples,)
        Class codes ``0 .. n_classes - 1``.
    row_weight : ndarray of shape (n_samples,)
        Sample weights (positive).
    n_classes : int
    erm_class_factor, reweighted_class_factor : ndarray of shape (n_classes,)
        Weight of each class's rows in the ERM head's loss and in the
        reweighted head's (times the sample weight).
    second_fold : bool ndarray of shape (n_samples,) or None
        The two folds of the out-of-fold predictions; None (a fold would miss
        a class): the ERM head, no alternative.
    settings : GroupFreeSettings
    """
    erm_weight, l2 = row_weight * erm_class_factor[y], settings.l2_per_weight
    if settings.gamma == 0 or second_fold is None:
        erm_head, converged = _fit(X, y, erm_weight, n_classes, l2)
        return GroupFreeResult(erm_head, erm_head, "erm", converged=converged)

    folds = [(~second_fold, second_fold), (second_fold, ~second_fold)]
    fold_rows = [X[train] for train, _ in folds]  # a copy each, for both heads of the fold
    fold_heads, p_true, erm_correct = [], np.empty(y.size), np.empty(y.size, dtype=bool)
    for (train, test), X_train in zip(folds, fold_rows, strict=True):
        fold_weight = erm_weight[train]
        head, _ = _fit(X_train, y[train], fold_weight, n_classes, l2, tol=FOLD_TOLERANCE)
        fold_heads.append(head)
        p = _probabilities(X[test], head)
        p_true[test] = p[np.arange(test.sum()), y[test]]
        erm_correct[test] = p.argmax(1) == y[test]
    weight = hard_row_weights(p_true, y, row_weight, reweighted_class_factor, settings.gamma)
    reweighted_correct = np.empty(y.size, dtype=bool)
    for (train, test), X_train, start in zip(folds, fold_rows, fold_heads, strict=True):
        fold_weight = weight[train]
        head, _ = _fit(X_train, y[train], fold_weight, n_classes, l2, start, FOLD_TOLERANCE)
        reweighted_correct[test] = _probabilities(X[test], head).argmax(1) == y[test]
    del fold_rows  # the full fits need only X
    # the folds' mean head is close to the ERM head on every row: a warm start
    start = tuple(np.mean([head[part] for head in fold_heads], axis=0) for part in (0, 1))
    erm_head, converged = _fit(X, y, erm_weight, n_classes, l2, start)
    scores = {
        "erm": {"balanced_accuracy": balanced_accuracy(erm_correct, y, row_weight)},
        "reweighted": {"balanced_accuracy": balanced_accuracy(reweighted_correct, y, row_weight)},
    }
    cost = scores["erm"]["balanced_accuracy"] - scores["reweighted"]["balanced_accuracy"]
    if settings.tolerance is not None and cost > settings.tolerance:
        return GroupFreeResult(erm_head, erm_head, "erm", scores, converged)
    head, reweighted_converged = _fit(X, y, weight, n_classes, l2, erm_head)
    converged = converged and reweighted_converged
    right = right_where_heads_disagree(X, y, row_weight, head, erm_head)
    scores["reweighted"]["right_where_heads_disagree"] = right
    if settings.tolerance is not None and (
        right is None or right >= MAX_RIGHT_WHERE_HEADS_DISAGREE
    ):
        return GroupFreeResult(erm_head, erm_head, "erm", scores, converged)
    return GroupFreeResult(head, erm_head, "reweighted", scores, converged)
