"""Standardisation shared by every estimator of the package (NumPy only).

Moments are accumulated in float64, and a feature counts as constant only
relative to its own mean, so the standardised features, and every fit on
them, are the same for ``X`` and ``a * X + b`` (``a > 0``).
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np

from ._blocks import block_rows


def _blocks(n_rows: int, n_features: int) -> list[slice]:
    step = block_rows(n_features)
    return [slice(start, start + step) for start in range(0, n_rows, step)]


def _map_blocks(function, blocks: list[slice], n_threads: int) -> list:
    """``[function(block) for block in blocks]``, on ``n_threads`` threads when more than one.

    Each block is computed alone and the results come back in block order,
    so whatever the caller sums in that order has the same bits on any
    number of threads (NumPy releases the GIL over blocks this large).
    """
    if n_threads <= 1 or len(blocks) <= 1:
        return [function(block) for block in blocks]
    with ThreadPoolExecutor(max_workers=n_threads) as executor:
        return list(executor.map(function, blocks))


def weighted_moments(
    X: np.ndarray, rows: np.ndarray, weights: np.ndarray, n_threads: int = 1
) -> tuple[np.ndarray, np.ndarray]:
    """Weighted mean and standard deviation of ``X[rows]`` per feature, in float64.

    A feature whose spread is within float64 rounding of its mean (a constant
    column, whatever its scale) gets scale 1. Two passes over blocks of rows
    (on ``n_threads`` threads, the same bits on any number): no float64 copy
    of ``X``.
    """
    weights = np.asarray(weights, dtype=np.float64)
    total = weights.sum()
    blocks = _blocks(rows.size, X.shape[1])

    def block_sum(block):
        return weights[block] @ X[rows[block]].astype(np.float64)

    mean = np.zeros(X.shape[1])
    for part in _map_blocks(block_sum, blocks, n_threads):
        mean += part
    mean /= total

    def block_squares(block):
        # X's values widen to float64 inside the subtraction, as astype would: no extra pass
        centred = np.subtract(X[rows[block]], mean, dtype=np.float64)
        return weights[block] @ np.square(centred, out=centred)

    squares = np.zeros(X.shape[1])
    for part in _map_blocks(block_squares, blocks, n_threads):
        squares += part
    scale = np.sqrt(squares / total)
    constant = scale <= 16 * np.finfo(np.float64).eps * np.abs(mean)
    scale[constant | (scale == 0)] = 1.0
    return mean, scale


def isotropic_factor(scale: np.ndarray) -> np.ndarray:
    """Per-feature factor from standardised to isotropic features.

    Isotropic features are centred and divided by one global scale, the root
    mean variance of the varying features: they keep the data's relative
    feature scales (the geometry of raw embeddings) and, like standardised
    ones, are the same for ``X`` and ``a * X + b``. A constant feature
    (scale exactly 1 from :func:`weighted_moments`, standardised to zero)
    gets factor 1.
    """
    varying = scale != 1.0
    if not varying.any():
        return np.ones_like(scale)
    global_scale = np.sqrt(np.mean(np.square(scale[varying])))
    factor = scale / global_scale
    factor[~varying] = 1.0
    return factor


def standardized(
    X: np.ndarray, rows: np.ndarray, mean: np.ndarray, scale: np.ndarray, dtype, n_threads: int = 1
) -> np.ndarray:
    """``(X[rows] - mean) / scale`` computed in float64 and stored in ``dtype``."""
    out = np.empty((rows.size, X.shape[1]), dtype=dtype)

    def standardize_block(block):
        # computed in float64 (X's values widen inside the subtraction) and rounded to dtype
        # as the division writes out: each temporary would cost a pass over memory
        values = np.subtract(X[rows[block]], mean, dtype=np.float64)
        np.divide(values, scale, out=out[block], casting="same_kind")

    _map_blocks(standardize_block, _blocks(rows.size, X.shape[1]), n_threads)
    return out
