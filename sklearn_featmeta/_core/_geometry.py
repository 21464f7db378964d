"""Whitening: the transform, and moving rows and heads between geometries."""

from __future__ import annotations

import torch

from .._blocks import block_rows
from ._losses import _row_weights


def whitening_transform(
    X: torch.Tensor, ridge: float, row_weight: torch.Tensor | None = None
) -> torch.Tensor:
    """Symmetric positive definite ``T`` that whitens ``X`` (centred rows) up to a ridge.

    With ``(s, V)`` the eigenpairs of ``X^T X / n`` (rows weighted by
    ``row_weight``, summing to one, when given) and ``m`` the mean of
    ``s``, ``T = V diag(sqrt((m + ridge m) / (s + ridge m))) V^T``: directions
    of variance far above ``ridge * m`` end with variance near ``m + ridge m``,
    directions far below it are scaled up by at most ``sqrt(1 + 1 / ridge)``.
    Gradient descent on ``X T`` is gradient descent on ``X`` preconditioned by
    ``T^2``, so a few steps get much further along low-variance directions.
    Computed in ``X``'s precision (the ridge keeps the small eigenvalues'
    rounding harmless) with at most two ``(d, d)`` matrices alive; ``T^-1``
    is not formed (:func:`_unwhiten` solves with ``T`` where it is needed).
    """
    covariance = torch.zeros(X.shape[1], X.shape[1], dtype=X.dtype, device=X.device)
    weights = _row_weights(X, row_weight)
    for block, block_weight in zip(
        X.split(block_rows(X.shape[1])), weights.split(block_rows(X.shape[1])), strict=True
    ):
        covariance.addmm_(block.T, block * block_weight)
    eigenvalues, eigenvectors = _eigh_in_place(covariance)
    eigenvalues = eigenvalues.clamp_min(0)
    offset = ridge * eigenvalues.mean().clamp_min(torch.finfo(X.dtype).tiny)
    gain = ((eigenvalues.mean() + offset) / (eigenvalues + offset)).sqrt()
    # T = (V g^1/2)(V g^1/2)^T: symmetric by construction, one (d, d) product
    half = eigenvectors.mul_(gain.sqrt())
    return half @ half.T


def _eigh_in_place(symmetric: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Eigenvalues and eigenvectors of a symmetric matrix; on CPU in its own storage.

    ``torch.linalg.eigh`` copies its input and takes LAPACK's divide-and-conquer
    workspace (about ``2 d^2`` entries) on top: at ``d = 2048`` that is more
    memory than a 6,000-row ``X``. The same LAPACK routine through SciPy
    overwrites the matrix with its eigenvectors. Other devices use torch.
    """
    if symmetric.device.type != "cpu":
        return torch.linalg.eigh(symmetric)
    import scipy.linalg  # a dependency of the package; only this CPU path needs it

    # the transpose of a C-ordered symmetric matrix is the same matrix in
    # Fortran order, which LAPACK can overwrite without a copy
    eigenvalues, eigenvectors = scipy.linalg.eigh(
        symmetric.numpy().T, overwrite_a=True, check_finite=False, driver="evd"
    )
    return torch.from_numpy(eigenvalues), torch.from_numpy(eigenvectors)


def _unwhiten(rows: torch.Tensor, T: torch.Tensor) -> torch.Tensor:
    """``rows T^-1`` for a symmetric positive definite ``T``, by a Cholesky solve."""
    return torch.cholesky_solve(rows.T, torch.linalg.cholesky(T)).T


def _transformed_rows(X: torch.Tensor, T: torch.Tensor) -> torch.Tensor:
    """``X T``, a block of rows at a time (no temporary beyond the result); ``X`` unchanged."""
    out = torch.empty_like(X)
    size = block_rows(X.shape[1])
    for rows, transformed in zip(X.split(size), out.split(size), strict=True):
        transformed.copy_(rows @ T)
    return out
