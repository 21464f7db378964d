"""Cross-validation that keeps every spurious group in every fold.

.. warning::

   scikit-learn's ``GroupKFold`` (and ``LeaveOneGroupOut``, ``GroupShuffleSplit``)
   read ``groups`` as *leakage* groups: each group is held out whole, so a
   fold's test rows come from groups its training rows never saw. Spurious
   groups need the opposite, every group on both sides, which is what
   :class:`SubgroupStratifiedKFold` does. Never give spurious groups to
   ``GroupKFold``.
"""

from __future__ import annotations

import warnings
from numbers import Integral

import numpy as np
from sklearn.model_selection import BaseCrossValidator, StratifiedKFold
from sklearn.utils import column_or_1d
from sklearn.utils._param_validation import Interval, validate_params

from ._groups import as_group_array, encode_groups

__all__ = ["SubgroupStratifiedKFold"]


class SubgroupStratifiedKFold(BaseCrossValidator):
    """K-fold cross-validation stratified on (label, spurious group).

    Each fold's test rows keep the proportions of every (class, group) cell,
    so every fold holds every group that has at least ``n_splits`` rows (a
    smaller cell cannot reach every fold). Rows with an unknown group (-1 /
    None / NaN) are stratified by label among themselves. Like scikit-learn's
    group splitters, ``split`` requests ``groups`` through metadata routing.

    Parameters
    ----------
    n_splits : int, default=5
        Number of folds, at least 2.
    shuffle : bool, default=False
        Shuffle each stratum's rows before splitting into folds.
    random_state : int, RandomState instance or None, default=None
        Used when ``shuffle=True``.

    See Also
    --------
    sklearn.model_selection.StratifiedKFold : Stratified by label only.
    sklearn.model_selection.GroupKFold : Holds whole groups out; **not** for spurious groups.

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn_featmeta.model_selection import SubgroupStratifiedKFold
    >>> y = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    >>> groups = np.array(["a", "b", "a", "b", "a", "b", "a", "b"])
    >>> for train, test in SubgroupStratifiedKFold(n_splits=2).split(np.zeros((8, 1)), y, groups):
    ...     print(sorted(zip(y[test].tolist(), groups[test].tolist())))
    [(0, 'a'), (0, 'b'), (1, 'a'), (1, 'b')]
    [(0, 'a'), (0, 'b'), (1, 'a'), (1, 'b')]
    """

    __metadata_request__split = {"groups": True}

    @validate_params(
        {
            "n_splits": [Interval(Integral, 2, None, closed="left")],
            "shuffle": ["boolean"],
            "random_state": ["random_state"],
        },
        prefer_skip_nested_validation=True,
    )
    def __init__(self, n_splits: int = 5, *, shuffle: bool = False, random_state=None):
        self.n_splits = n_splits
        self.shuffle = shuffle
        self.random_state = random_state

    def get_n_splits(self, X=None, y=None, groups=None) -> int:
        """Number of folds.

        Parameters
        ----------
        X, y, groups : object
            Ignored, for API compatibility.

        Returns
        -------
        n_splits : int
        """
        return self.n_splits

    def split(self, X, y, groups=None):
        """Train and test indices of each fold.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
        y : array-like of shape (n_samples,)
            Class labels (required: folds are stratified on them).
        groups : array-like of shape (n_samples,), default=None
            Spurious group of each row; -1 / None / NaN where unknown. None:
            stratified by label only.

        Yields
        ------
        train, test : ndarray of int
        """
        if y is None:
            raise ValueError(
                "SubgroupStratifiedKFold.split needs y: folds are stratified on labels."
            )
        y = column_or_1d(y)
        y_values, labels = np.unique(y, return_inverse=True)
        labels = labels.ravel()
        if groups is None:
            codes, group_values = np.full(labels.shape[0], -1), np.array([])
        else:
            codes, group_values = encode_groups(as_group_array(groups, labels.shape[0]))
        # one stratum per (label, group) cell; unknown groups form one stratum per label
        cells, strata, counts = np.unique(
            np.stack([labels, codes]), axis=1, return_inverse=True, return_counts=True
        )
        small = counts < self.n_splits
        if small.any():
            names = [
                f"(label {y_values[label]}, group {'unknown' if group < 0 else group_values[group]})"
                for label, group in cells.T[small]
            ]
            warnings.warn(
                f"{', '.join(names)} have fewer rows ({counts[small].tolist()}) than "
                f"n_splits={self.n_splits}: some folds will not hold them.",
                UserWarning,
                stacklevel=2,
            )
        inner = StratifiedKFold(self.n_splits, shuffle=self.shuffle, random_state=self.random_state)
        with warnings.catch_warnings():  # said above, in terms of cells rather than classes
            warnings.filterwarnings("ignore", message="The least populated class")
            folds = list(inner.split(np.zeros((labels.shape[0], 1)), strata.ravel()))
        yield from folds
