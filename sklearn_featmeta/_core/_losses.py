"""The softmax head's loss in torch: its gradient, per-row cross-entropy, and the ERM head."""

from __future__ import annotations

import torch

from ._softmax import head_as_tensors, problem_of_tensors


def _one_hot(y: torch.Tensor, n_classes: int, dtype: torch.dtype) -> torch.Tensor:
    return torch.nn.functional.one_hot(y, n_classes).to(dtype)


def _row_weights(X: torch.Tensor, row_weight: torch.Tensor | None) -> torch.Tensor:
    """Column of per-row loss weights summing to one (uniform when None)."""
    if row_weight is None:
        return torch.full((X.shape[0], 1), 1.0 / X.shape[0], dtype=X.dtype, device=X.device)
    return row_weight.reshape(-1, 1)


def softmax_head_gradient(
    X: torch.Tensor,
    Y: torch.Tensor,
    W: torch.Tensor,
    b: torch.Tensor,
    row_weight: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Cross-entropy of ``(W, b)`` on ``(X, Y)`` and its gradient, in closed form.

    ``Y`` is one-hot. The loss is the mean over rows, or the ``row_weight``
    weighted sum (weights summing to one). Returns ``(loss, grad_W, grad_b)``.
    """
    weight = _row_weights(X, row_weight)
    log_p = torch.log_softmax(torch.addmm(b, X, W.T), dim=1)
    loss = -(weight * Y * log_p).sum()
    residual = (log_p.exp() - Y) * weight
    return loss, residual.T @ X, residual.sum(0)


def _per_row_cross_entropy(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.cross_entropy(logits, y, reduction="none")


def fit_softmax_head(
    X: torch.Tensor,
    y: torch.Tensor,
    n_classes: int,
    *,
    l2: float,
    max_iter: int = 200,
    tol: float = 1e-6,
    row_weight: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, bool]:
    """Multinomial logistic regression, the ERM head of step 1.

    Minimises ``mean cross-entropy + l2 / 2 * ||W||^2`` (bias not penalised;
    the mean weighted by ``row_weight``, summing to one, when given), which is
    scikit-learn's multinomial ``LogisticRegression(C)`` objective with
    ``l2 = 1 / (C * n_samples)``. Solved by SciPy's L-BFGS-B (as
    ``LogisticRegression(solver="lbfgs")``) on the CPU, in ``X``'s dtype
    (:class:`SoftmaxProblem`); the head comes back on ``X``'s device.
    Returns ``(W, b, converged)``; ``converged`` is False when L-BFGS stopped
    at ``max_iter`` iterations.
    """
    problem = problem_of_tensors(X, y, _row_weights(X, row_weight).reshape(-1), n_classes)
    head, converged, _ = problem.minimize(l2, problem.zeros(), max_iter=max_iter, tol=tol)
    return (*head_as_tensors(head, X), converged)
