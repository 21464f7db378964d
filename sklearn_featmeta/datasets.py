"""Synthetic embeddings with a planted spurious feature."""

from __future__ import annotations

from numbers import Integral, Real

import numpy as np
from sklearn.utils import check_random_state
from sklearn.utils._param_validation import Interval, validate_params

from ._groups import UNKNOWN_GROUP


@validate_params(
    {
        "n_samples": [Interval(Integral, 4, None, closed="left")],
        "n_features": [Interval(Integral, 2, None, closed="left")],
        "n_classes": [Interval(Integral, 2, None, closed="left")],
        "minority_fraction": [Interval(Real, 0, 1, closed="both")],
        "known_group_fraction": [Interval(Real, 0, 1, closed="both")],
        "known_minority_fraction": [Interval(Real, 0, 1, closed="both")],
        "core_strength": [Interval(Real, 0, None, closed="left")],
        "spurious_strength": [Interval(Real, 0, None, closed="left")],
        "noise": [Interval(Real, 0, None, closed="neither")],
        "random_state": ["random_state"],
    },
    prefer_skip_nested_validation=True,
)
def make_spurious_embeddings(
    n_samples: int = 2000,
    n_features: int = 32,
    *,
    n_classes: int = 2,
    minority_fraction: float = 0.05,
    known_group_fraction: float = 0.2,
    known_minority_fraction: float = 0.5,
    core_strength: float = 1.5,
    spurious_strength: float = 3.0,
    noise: float = 1.0,
    random_state=None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Embeddings whose label is carried by a weak core and a strong spurious direction.

    Each row has a class ``y`` and a spurious attribute ``a`` (both in
    ``0 .. n_classes - 1``). In the rows with unknown group, ``a == y`` except for
    a ``minority_fraction`` of rows (the spurious correlation of a training set);
    in the rows with known group, ``a != y`` for a ``known_minority_fraction``
    (0.5 for two classes: group-balanced, like a validation set). Then::

        x = core_strength * u[y] + spurious_strength * v[a] + noise * N(0, I)

    with ``u``, ``v`` orthonormal directions drawn at random. The spurious
    direction separates the classes better than the core one, so a plain linear
    head leans on it and fails on the minority groups.

    Parameters
    ----------
    n_samples : int, default=2000
        Rows in all.
    n_features : int, default=32
        Dimension; at least ``2 * n_classes``.
    n_classes : int, default=2
        Number of classes and of attribute values.
    minority_fraction : float, default=0.05
        Share of rows with ``a != y`` among the unknown-group rows.
    known_group_fraction : float, default=0.2
        Share of rows whose group is given (the rest get ``-1``).
    known_minority_fraction : float, default=0.5
        Share of rows with ``a != y`` among the known-group rows.
    core_strength, spurious_strength : float, default=1.5, 3.0
        Length of the class and attribute mean vectors.
    noise : float, default=1.0
        Standard deviation of the isotropic noise.
    random_state : int, RandomState instance or None, default=None

    Returns
    -------
    X : ndarray of shape (n_samples, n_features), float32
    y : ndarray of shape (n_samples,), int
    groups : ndarray of shape (n_samples,), int
        ``y * n_classes + a`` (the (class, attribute) cell) on known rows,
        ``-1`` on the others.

    Examples
    --------
    >>> from sklearn_featmeta.datasets import make_spurious_embeddings
    >>> X, y, groups = make_spurious_embeddings(n_samples=100, random_state=0)
    >>> X.shape, (groups == -1).mean()
    ((100, 32), 0.8)
    """
    if n_features < 2 * n_classes:
        raise ValueError(
            f"n_features={n_features} is too small for {n_classes} classes: the core and "
            f"spurious directions need n_features >= 2 * n_classes = {2 * n_classes}."
        )
    rng = check_random_state(random_state)
    directions, _ = np.linalg.qr(rng.standard_normal((n_features, 2 * n_classes)))
    core, spurious = directions[:, :n_classes].T, directions[:, n_classes:].T

    n_known = int(round(known_group_fraction * n_samples))
    known = np.zeros(n_samples, dtype=bool)
    known[rng.choice(n_samples, n_known, replace=False)] = True
    y = rng.randint(n_classes, size=n_samples)
    flip_rate = np.where(known, known_minority_fraction, minority_fraction)
    flipped = rng.random_sample(n_samples) < flip_rate
    # A flipped row takes one of the other attribute values at random.
    shift = rng.randint(1, n_classes, size=n_samples) if n_classes > 2 else 1
    attribute = np.where(flipped, (y + shift) % n_classes, y)

    X = (
        core_strength * core[y]
        + spurious_strength * spurious[attribute]
        + noise * rng.standard_normal((n_samples, n_features))
    )
    groups = np.where(known, y * n_classes + attribute, UNKNOWN_GROUP)
    return X.astype(np.float32), y, groups


def _demo_problem(n_samples: int = 6000, n_features: int = 32, random_state=0):
    """The demo's data: ``(X, y, groups)`` to fit on and a group-balanced test set.

    40% of the rows of :func:`make_spurious_embeddings` get known groups; half
    of those become the test set, the other half the held-out rows of ``fit``.
    """
    X, y, groups = make_spurious_embeddings(
        n_samples, n_features, known_group_fraction=0.4, random_state=random_state
    )
    known = np.flatnonzero(groups != UNKNOWN_GROUP)
    test = np.zeros(n_samples, dtype=bool)
    test[check_random_state(random_state).permutation(known)[: known.size // 2]] = True
    return (X[~test], y[~test], groups[~test]), (X[test], y[test], groups[test])
