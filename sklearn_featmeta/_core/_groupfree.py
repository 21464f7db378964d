"""The head of ``fit(X, y)``: no row has a known group.

Held-out rows drawn from the training distribution reward a head that leans
on a shortcut, so nothing here selects by held-out accuracy. The fit keeps the
ERM head (a multinomial logistic regression on every row) unless a bounded
alternative stays close to it: a head refitted with the rows an out-of-fold
ERM head gets wrong or is unsure of weighed up (AFR, Qiu et al. 2023: weight
``exp(-gamma * p)``, ``p`` the out-of-fold probability of the row's class,
classes weighed equally). A reweighted head is kept only if its cross-fitted
accuracy on every class is within ``tolerance`` of the ERM head's
(docs/decisions.md: why a bound on the loss, not a lead, decides) and if, on
the training rows where the two heads predict differently, it is right on less
than half (by weight): a head that leans less on a shortcut gives up some of
the rows drawn with it, while one that wins most of the rows it changes has
found a cheaper fit of the hard rows, on pretrained-CNN features the shortcut
itself (docs/decisions.md, 2026-12-07 fourth). Strengths are tried weakest
first, each only where the one before was kept: that last test of a weaker
head is the gate a stronger one needs, whose own share test misses where the
weaker head's does not (docs/decisions.md, 2026-12-07 fifth).

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
    "reweighted_key",
    "right_where_heads_disagree",
]


@dataclass(frozen=True)
class GroupFreeSettings:
    """What :func:`fit_without_groups` needs besides the rows.

    ``l2_per_weight``: the ERM head's L2 strength times the total row weight
    (``1 / C`` for ``LogisticRegression(C)``); each fit divides it by its
    rows' total weight.
    ``gammas``: the reweighting strengths, increasing (empty: no alternative,
    the ERM head).
    ``tolerance``: how much cross-fitted accuracy a reweighted head may give
    up on any class (None: the strongest is kept whatever it costs and
    wherever it wins, no bound and no :data:`MAX_RIGHT_WHERE_HEADS_DISAGREE`
    test).
    """

    l2_per_weight: float
    gammas: tuple[float, ...]
    tolerance: float | None


@dataclass
class GroupFreeResult:
    """The fitted head, the ERM head, which was chosen and the cross-fitted scores.

    ``scores``: ``"erm"``'s ``balanced_accuracy``; for each reweighted head
    tried (:func:`reweighted_key`), its ``balanced_accuracy`` and
    ``largest_class_cost`` (the most cross-fitted accuracy it gives up on a
    class against the ERM head), and ``right_where_heads_disagree`` where it
    passed the bound and was fitted on every row. ``converged``: the solves
    of the ERM head and of the head returned reached their tolerance.
    """

    head: tuple[np.ndarray, np.ndarray]
    erm_head: tuple[np.ndarray, np.ndarray]
    chosen: str  # "erm", "initial_head" or a reweighted head's key (reweighted_key)
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


def _logits(X, head):
    """``X``'s logits under ``head``: the product in ``X``'s dtype, as the solves compute it
    (float32 halves its memory traffic), the rest in float64."""
    return (X @ head[0].T.astype(X.dtype)).astype(np.float64) + head[1]


def _probabilities(X, head):
    logits = _logits(X, head)
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
    predicted: np.ndarray, erm_predicted: np.ndarray, y: np.ndarray, row_weight: np.ndarray
) -> float | None:
    """The weighted share of the rows where a head's predicted classes ``predicted`` differ
    from the ERM head's ``erm_predicted`` that it predicts right; None where they agree on
    every row."""
    disagree = predicted != erm_predicted
    if not disagree.any():
        return None
    right = row_weight[disagree] * (predicted[disagree] == y[disagree])
    return float(right.sum() / row_weight[disagree].sum())


def class_accuracies(correct: np.ndarray, y: np.ndarray, row_weight: np.ndarray) -> np.ndarray:
    """The weighted accuracy of each class's rows (classes present, in code order)."""
    classes = np.unique(y)
    hits = np.bincount(y, weights=row_weight * correct)[classes]
    return hits / np.bincount(y, weights=row_weight)[classes]


def reweighted_key(gamma: float) -> str:
    """The key of the reweighted head of strength ``gamma`` in :attr:`GroupFreeResult.scores`."""
    return f"reweighted (gamma={gamma:g})"


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
    """The ERM head, or the strongest reweighted head of a chain that each stays close to
    the ERM head and gives up some of the rows it changes (the module's docstring).

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
        reweighted heads' (times the sample weight).
    second_fold : bool ndarray of shape (n_samples,) or None
        The two folds of the out-of-fold predictions; None (a fold would miss
        a class): the ERM head, no alternative.
    settings : GroupFreeSettings
    """
    erm_weight, l2 = row_weight * erm_class_factor[y], settings.l2_per_weight
    if not settings.gammas or second_fold is None:
        erm_head, converged = _fit(X, y, erm_weight, n_classes, l2)
        return GroupFreeResult(erm_head, erm_head, "erm", converged=converged)

    # fold k trains on rows_of[k] and predicts rows_of[1 - k]; a copy of each fold's rows
    # serves every head of the folds
    rows_of = [~second_fold, second_fold]
    fold_X = [X[rows] for rows in rows_of]
    fold_heads, p_true, erm_correct = [], np.empty(y.size), np.empty(y.size, dtype=bool)
    for k in (0, 1):
        train, test = rows_of[k], rows_of[1 - k]
        head, _ = _fit(fold_X[k], y[train], erm_weight[train], n_classes, l2, tol=FOLD_TOLERANCE)
        fold_heads.append(head)
        p = _probabilities(fold_X[1 - k], head)
        p_true[test] = p[np.arange(test.sum()), y[test]]
        erm_correct[test] = p.argmax(1) == y[test]
    # the folds' mean head is close to the ERM head on every row: a warm start
    start = tuple(np.mean([head[part] for head in fold_heads], axis=0) for part in (0, 1))
    erm_head, converged = _fit(X, y, erm_weight, n_classes, l2, start)
    erm_accuracies = class_accuracies(erm_correct, y, row_weight)
    scores = {"erm": {"balanced_accuracy": float(np.mean(erm_accuracies))}}
    result = GroupFreeResult(erm_head, erm_head, "erm", scores, converged)
    erm_predicted = None  # on every row, once a head needs the share
    for gamma in settings.gammas:  # each head starts from the last one kept, in folds and in full
        weight = hard_row_weights(p_true, y, row_weight, reweighted_class_factor, gamma)
        correct = np.empty(y.size, dtype=bool)
        for k in (0, 1):
            train, test = rows_of[k], rows_of[1 - k]
            fold_heads[k], _ = _fit(
                fold_X[k], y[train], weight[train], n_classes, l2, fold_heads[k], FOLD_TOLERANCE
            )
            correct[test] = _logits(fold_X[1 - k], fold_heads[k]).argmax(1) == y[test]
        accuracies = class_accuracies(correct, y, row_weight)
        key = reweighted_key(gamma)
        scores[key] = {
            "balanced_accuracy": float(np.mean(accuracies)),
            "largest_class_cost": float(np.max(erm_accuracies - accuracies)),
        }
        if (
            settings.tolerance is not None
            and scores[key]["largest_class_cost"] > settings.tolerance
        ):
            break
        head, head_converged = _fit(X, y, weight, n_classes, l2, result.head)
        if erm_predicted is None:
            erm_predicted = _logits(X, erm_head).argmax(1)
        right = right_where_heads_disagree(_logits(X, head).argmax(1), erm_predicted, y, row_weight)
        scores[key]["right_where_heads_disagree"] = right
        if settings.tolerance is not None and (
            right is None or right >= MAX_RIGHT_WHERE_HEADS_DISAGREE
        ):
            break
        result.head, result.chosen = head, key
        result.converged = converged and head_converged
    return result
