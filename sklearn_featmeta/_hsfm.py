"""Numerics of HSFM on a softmax-linear head, in plain PyTorch.

This module is the core of the package and imports no scikit-learn: it takes
tensors and returns tensors. The scikit-learn layer (``_meta_head.py``) does the
validation, the splits and the fitted attributes.

Notation. A head is ``(W, b)`` with ``W`` of shape (n_classes, n_features);
logits are ``X @ W.T + b``. The support set ``S`` (rows of feature space) is the
learnable parameter of the outer problem. The inner problem is ``inner_steps``
steps of plain gradient descent on the mean cross-entropy of the support set.

The hypergradient of the outer loss with respect to ``S`` is computed in closed
form (:func:`support_hypergradient`): a forward pass that stores the inner
iterates and a hand-written reverse pass through them. It matches the autograd
reference (:func:`support_hypergradient_autograd`, second-order graphs through
``torch.autograd.grad(create_graph=True)``) to rounding, at a fraction of the
overhead.
"""

from __future__ import annotations

import copy
import functools
import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from ._softmax import SoftmaxProblem, product_over_row_blocks, softmax_regression_paths

__all__ = [
    "HSFMSettings",
    "HSFMResult",
    "resolve_device",
    "fit_softmax_head",
    "softmax_head_gradient",
    "support_hypergradient",
    "support_hypergradient_autograd",
    "select_hard_set",
    "HeldoutRows",
    "Rows",
    "RunRows",
    "inner_lr_from_lipschitz",
    "fit_hsfm",
]


# --------------------------------------------------------------------------- #
# Devices
# --------------------------------------------------------------------------- #
def resolve_device(spec: str) -> torch.device:
    """Turn ``"auto"``, ``"cpu"``, ``"cuda"`` or ``"cuda:N"`` into a device.

    Raises ``ValueError`` when the device does not exist on this machine, so a
    model configured for a GPU fails loudly rather than silently running on CPU.
    """
    if spec == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", torch.cuda.current_device())
        return torch.device("cpu")
    try:
        device = torch.device(spec)
    except (RuntimeError, TypeError) as exc:
        raise ValueError(
            f"device={spec!r} is not a valid device; use 'auto', 'cpu', 'cuda' or 'cuda:N'."
        ) from exc
    if device.type == "cpu":
        return device
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(
                f"device={spec!r} was requested but CUDA is not available on this "
                "machine (torch.cuda.is_available() is False). Use device='cpu' or 'auto'."
            )
        index = torch.cuda.current_device() if device.index is None else device.index
        if index >= torch.cuda.device_count():
            raise ValueError(
                f"device={spec!r} was requested but this machine has "
                f"{torch.cuda.device_count()} CUDA device(s)."
            )
        return torch.device("cuda", index)
    if device.type == "mps":
        if not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
            raise ValueError(f"device={spec!r} was requested but MPS is not available.")
        return device
    raise ValueError(f"device={spec!r} is not supported; use 'auto', 'cpu', 'cuda' or 'cuda:N'.")


# --------------------------------------------------------------------------- #
# Softmax-linear loss and its gradients
# --------------------------------------------------------------------------- #
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


# --------------------------------------------------------------------------- #
# Initial (ERM) head
# --------------------------------------------------------------------------- #
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
    weight = _row_weights(X, row_weight).reshape(-1).double().cpu().numpy()
    problem = SoftmaxProblem(X.cpu().numpy(), y.cpu().numpy(), weight, n_classes)
    params, converged, _ = problem.minimize(l2, problem.zeros(), max_iter=max_iter, tol=tol)
    W, b = (torch.from_numpy(a).to(device=X.device, dtype=X.dtype) for a in params)
    return W.contiguous(), b.contiguous(), converged


# --------------------------------------------------------------------------- #
# The bilevel problem
# --------------------------------------------------------------------------- #
def support_hypergradient(
    S: torch.Tensor,
    Y_support: torch.Tensor,
    H: torch.Tensor,
    Y_hard: torch.Tensor,
    W: torch.Tensor,
    b: torch.Tensor,
    *,
    inner_lr: float,
    inner_steps: int,
    support_weight: torch.Tensor | None = None,
    weight_decay: float = 0.0,
    hard_weight: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Outer loss after the unrolled inner loop, and its gradient with respect to ``S``.

    Inner loop: ``inner_steps`` steps of gradient descent with step ``inner_lr``
    on the cross-entropy of ``(S, Y_support)`` (mean over rows, or weighted by
    ``support_weight``, summing to one) plus ``weight_decay / 2 * ||W||^2``,
    starting from ``(W, b)``.
    Outer loss: mean cross-entropy of the adapted head on ``(H, Y_hard)`` (or
    weighted by ``hard_weight``, summing to one).
    ``Y_support`` and ``Y_hard`` are one-hot.

    The reverse pass is written out by hand. With ``P_t`` the support
    probabilities at step ``t``, ``E_t = (P_t - Y) / n`` and an adjoint
    ``(A_W, A_b)`` of the next iterate, one inner step contributes
    ``-lr * (R_t @ W_t + E_t @ A_W)`` to the gradient of ``S`` and maps the
    adjoint to ``A - lr * (R_t.T @ S, R_t.sum(0))``, where
    ``R_t = J_t(S @ A_W.T + A_b) / n`` applies the per-row softmax Jacobian
    (``1 / n`` being the row weights)
    ``J = diag(p) - p p^T``. Weight decay scales ``W_t`` (and so ``A_W``) by
    ``1 - lr * weight_decay`` per step; it does not depend on ``S``.
    """
    # Scale factors are folded into fused multiply-adds: this loop runs
    # epochs x outer_steps x inner_steps times, so its op count is the cost.
    step = inner_lr
    decay = 1.0 - inner_lr * weight_decay
    row_weight = _row_weights(S, support_weight)
    weights, residuals, probabilities = [], [], []
    W_t, b_t = W, b
    for _ in range(inner_steps):
        P = torch.softmax(torch.addmm(b_t, S, W_t.T), dim=1)
        residual = (P - Y_support) * row_weight  # gradient of the loss w.r.t. the logits
        weights.append(W_t)
        residuals.append(residual)
        probabilities.append(P)
        W_t = torch.addmm(W_t, residual.T, S, beta=decay, alpha=-step)
        b_t = b_t.add(residual.sum(0), alpha=-step)

    hard_row_weight = _row_weights(H, hard_weight)
    log_p_hard = torch.log_softmax(torch.addmm(b_t, H, W_t.T), dim=1)
    outer_loss = -(hard_row_weight * Y_hard * log_p_hard).sum()
    residual_hard = (log_p_hard.exp() - Y_hard) * hard_row_weight
    adjoint_W = residual_hard.T @ H
    adjoint_b = residual_hard.sum(0)

    # Each step adds -lr * (R_t @ W_t + E_t @ A_W) to the gradient of S: keep the
    # thin factors and multiply once, instead of 2 * inner_steps passes over S.
    left, right = [], []
    for W_t, residual, P in zip(
        reversed(weights), reversed(residuals), reversed(probabilities), strict=True
    ):
        PQ = P * torch.addmm(adjoint_b, S, adjoint_W.T)
        # softmax Jacobian times Q, per row, weighted
        R = torch.addcmul(PQ, P, PQ.sum(1, keepdim=True), value=-1.0).mul_(row_weight)
        left += [R, residual]
        right += [W_t, adjoint_W]
        adjoint_W = torch.addmm(adjoint_W, R.T, S, beta=decay, alpha=-step)
        adjoint_b = adjoint_b.add(R.sum(0), alpha=-step)
    grad_S = torch.cat(left, dim=1) @ torch.cat(right, dim=0)
    grad_S.mul_(-step)
    return outer_loss, grad_S


def support_hypergradient_autograd(
    S: torch.Tensor,
    Y_support: torch.Tensor,
    H: torch.Tensor,
    Y_hard: torch.Tensor,
    W: torch.Tensor,
    b: torch.Tensor,
    *,
    inner_lr: float,
    inner_steps: int,
    support_weight: torch.Tensor | None = None,
    weight_decay: float = 0.0,
    hard_weight: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Reference implementation of :func:`support_hypergradient` by autograd.

    The straightforward version of the paper: ``torch.autograd.grad`` with
    ``create_graph=True`` at every inner step, then backpropagation of the outer
    loss to ``S``. Slow; kept as the test oracle for the closed form.
    """
    S = S.detach().requires_grad_(True)
    W_t = W.detach().clone().requires_grad_(True)
    b_t = b.detach().clone().requires_grad_(True)
    y_support = Y_support.argmax(1)
    row_weight = _row_weights(S, support_weight).ravel()
    for _ in range(inner_steps):
        per_row = torch.nn.functional.cross_entropy(S @ W_t.T + b_t, y_support, reduction="none")
        inner_loss = (row_weight * per_row).sum()
        grad_W, grad_b = torch.autograd.grad(inner_loss, (W_t, b_t), create_graph=True)
        W_t = W_t - inner_lr * (grad_W + weight_decay * W_t)
        b_t = b_t - inner_lr * grad_b
    per_hard_row = torch.nn.functional.cross_entropy(
        H @ W_t.T + b_t, Y_hard.argmax(1), reduction="none"
    )
    outer_loss = (_row_weights(H, hard_weight).ravel() * per_hard_row).sum()
    (grad_S,) = torch.autograd.grad(outer_loss, S)
    return outer_loss.detach(), grad_S


def select_hard_set(
    losses: torch.Tensor,
    cells: torch.Tensor,
    n_cells: int,
    size_per_cell: float,
    weight: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The highest-loss rows of every cell, up to ``size_per_cell`` of sample weight.

    Returns ``(index, taken)``: the rows and the weight taken from each. Rows
    are taken in order of loss, whole while the cell's budget lasts and in
    part where they cross it, so a row of weight k counts as k copies of it
    (unit weights: the ``size_per_cell`` highest-loss rows, all rows of a
    smaller cell). Vectorised: one sort by loss, one stable sort by cell.
    """
    if weight is None:
        weight = torch.ones_like(losses)
    by_loss = torch.argsort(losses, descending=True, stable=True)
    order = by_loss[torch.argsort(cells[by_loss], stable=True)]
    sorted_weight = weight[order]
    before = torch.cumsum(sorted_weight, 0) - sorted_weight
    cell_totals = torch.bincount(cells, weights=weight, minlength=n_cells)
    before = before - (torch.cumsum(cell_totals, 0) - cell_totals)[cells[order]]
    taken = torch.minimum(sorted_weight, (size_per_cell - before).clamp_min(0))
    keep = taken > 0
    return order[keep], taken[keep]


def inner_lr_from_lipschitz(
    S: torch.Tensor,
    scale: float = 1.0,
    support_weight: torch.Tensor | None = None,
    n_power_iter: int = 50,
    weight_decay: float = 0.0,
) -> float:
    """``scale / L`` for the Lipschitz constant ``L`` of the support loss's gradient.

    For the (weighted) mean softmax cross-entropy of a linear head, the Hessian
    is bounded by ``||diag(sqrt(w)) [S, 1]||_2^2 / 2`` (the softmax Jacobian has
    norm at most 1/2; ``w = 1/n`` for a plain mean), so a step of ``1 / L`` is a
    safe gradient-descent step whatever the scale of the features; weight decay
    adds ``weight_decay`` to ``L``. The spectral norm comes from a deterministic
    power iteration.
    """
    root_weight = _row_weights(S, support_weight).sqrt()
    S_aug = torch.cat([S, torch.ones_like(S[:, :1])], dim=1) * root_weight
    v = torch.ones(S_aug.shape[1], dtype=S.dtype, device=S.device)
    v = v / v.norm()
    sigma_sq = torch.tensor(0.0, dtype=S.dtype, device=S.device)
    for _ in range(n_power_iter):
        u = S_aug.T @ (S_aug @ v)
        sigma_sq = u.norm()
        if sigma_sq <= 0:
            break
        v = u / sigma_sq
    lipschitz = float(sigma_sq) / 2.0 + weight_decay
    return scale / max(lipschitz, 1e-12)


# --------------------------------------------------------------------------- #
# The HSFM loop
# --------------------------------------------------------------------------- #
@dataclass(frozen=True)
class HSFMSettings:
    """Hyper-parameters of one HSFM run, in the core's terms.

    No field has a default: the estimator's parameters are the one place
    where defaults live (``MetaAugmentedHeadClassifier._settings`` fills
    every field). ``inner_lr=None`` sets the inner step to ``1 / L`` from the
    initial support set (:func:`inner_lr_from_lipschitz`). The head update is
    ``inner_steps`` steps of plain gradient descent (``head_update="gradient"``:
    the very map the support set was optimised through) or of Adam
    (``"adam"``, the paper), with step ``head_lr`` (None: the inner step).
    Every run makes ``n_epochs`` epochs (the paper); with ``max_epochs`` it
    continues past them, up to ``max_epochs``, until ``n_iter_no_change``
    epochs in a row have not improved its selection score.
    ``selection_metric`` picks the kept epoch: the best held-out worst-group
    accuracy, ties broken by the lower loss (the paper), or the lowest
    worst-group mean cross-entropy (a smoother criterion on small groups).
    With ``compare_unedited`` a run also updates a second head on its
    unedited support, by the same steps, and the kept epoch may be of either
    head, or the start head itself (epoch 0): the edits stay only where they
    beat not editing on held-out rows.
    ``weight_decay`` adds ``weight_decay / 2 * ||W||^2`` (not the bias) to the
    support loss of both the inner loop and the head update (0 in the paper).
    ``whitening_ridge`` (None in the paper) whitens the standardised features
    before the runs (:func:`whitening_transform`); with ``choose_whitening``
    they are whitened only where that scores better on held-out rows
    (:func:`_unedited_probe`). With ``balanced_candidates`` (cross-fitted
    runs only) group-balanced logistic regressions compete with the runs'
    heads (:func:`best_balanced`). ``erm_class_factor`` (None: one) weighs
    each class's pool rows in the ERM head's loss (``class_weight``).
    """

    support_size_per_class: int
    inner_steps: int
    inner_lr: float | None
    outer_lr: float
    outer_steps: int
    hard_set_size: int
    n_epochs: int
    head_update: str
    support_source: str
    head_lr: float | None
    max_grad_norm: float
    max_epochs: int | None
    n_iter_no_change: int
    weight_decay: float
    selection_metric: str
    compare_unedited: bool
    whitening_ridge: float | None
    choose_whitening: bool
    balanced_candidates: bool
    erm_class_factor: tuple[float, ...] | None


@dataclass
class Rows:
    """Rows the core works on: features, class codes and sample weights (one per row)."""

    X: torch.Tensor
    y: torch.Tensor
    weight: torch.Tensor


@dataclass
class HeldoutRows(Rows):
    """The held-out (annotated) rows, with the groups that score them and mine the hard set.

    ``cells``: the (class, group) cell of every row, ``0 .. n_cells - 1``, the
    groups of the worst-group scores that choose the kept epoch.
    ``hard_set_cells``: the partition the hard set is mined in (the
    ``hard_set_size`` highest-loss rows of each part).
    """

    cells: torch.Tensor
    n_cells: int
    hard_set_cells: torch.Tensor
    n_hard_set_cells: int


@dataclass(frozen=True)
class RunRows:
    """Which rows one run uses: drawn by the caller (the core draws nothing at random).

    ``support_index`` indexes the held-out rows (``support_source="annotated"``)
    or the pool (``"pool"``); ``support_mass`` is the sample weight taken from
    each support row. ``shaping_rows`` (hard set) and ``selection_rows`` (the
    kept epoch) index the held-out rows: index tensors, or a slice for all.
    """

    support_index: torch.Tensor
    support_mass: torch.Tensor
    shaping_rows: torch.Tensor | slice
    selection_rows: torch.Tensor | slice


@dataclass
class RunResult:
    """One bilevel run: the selected head and support, in standardised space."""

    weight: torch.Tensor
    bias: torch.Tensor
    support_edited: torch.Tensor
    support_labels: torch.Tensor
    support_index: torch.Tensor  # rows of the support's source (pool or held-out)
    selection_index: torch.Tensor  # held-out rows that chose the epoch
    best_epoch: int
    history: dict[str, list[float]]
    diverged: bool
    kept_edits: bool = True  # False: the head of the unedited support was kept
    still_improving: bool = False  # its best epoch was its last, at max_epochs

    @property
    def epochs_made(self) -> int:
        """Epochs the run completed (``n_epochs`` to ``max_epochs``; fewer if it diverged)."""
        return len(self.history["outer_loss"])


@dataclass
class HSFMResult:
    """What :func:`fit_hsfm` returns; heads and supports in the coordinates it was given.

    ``weight`` and ``bias`` are the mean of the runs' selected heads.
    """

    weight: torch.Tensor
    bias: torch.Tensor
    initial_weight: torch.Tensor
    initial_bias: torch.Tensor
    inner_lr: float
    head_lr: float
    runs: list[RunResult]
    support_from_heldout: bool
    whitened: bool = False
    probe_scores: dict[str, float] | None = None  # with choose_whitening: geometry -> score
    erm_converged: bool = True
    choice: HeadChoice | None = None

    @property
    def diverged(self) -> bool:
        return any(run.diverged for run in self.runs)


# what _group_scores measures on the selection rows, per epoch (RunResult.history)
_SCORES = ("worst_group_accuracy", "average_accuracy", "heldout_loss", "worst_group_loss")


def _group_scores(
    logits: torch.Tensor,
    y: torch.Tensor,
    groups: torch.Tensor,
    n_groups: int,
    weight: torch.Tensor | None = None,
) -> dict[str, float]:
    """Worst-group and average accuracy, mean and worst-group mean cross-entropy.

    Means are weighted by ``weight`` (sample weights) when given.
    """
    if weight is None:
        weight = torch.ones(y.shape[0], dtype=logits.dtype, device=logits.device)
    correct = (logits.argmax(1) == y).to(logits.dtype) * weight
    losses = _per_row_cross_entropy(logits, y) * weight
    totals = torch.bincount(groups, weights=weight, minlength=n_groups)
    present = totals > 0
    hits = torch.bincount(groups, weights=correct, minlength=n_groups)[present]
    group_losses = torch.bincount(groups, weights=losses, minlength=n_groups)[present]
    return {
        "worst_group_accuracy": float((hits / totals[present]).min()),
        "average_accuracy": float(correct.sum() / weight.sum()),
        "heldout_loss": float(losses.sum() / weight.sum()),
        "worst_group_loss": float((group_losses / totals[present]).max()),
    }


def _selection_score(scores: dict[str, float], metric: str) -> tuple[float, float]:
    """Sort key of an epoch under ``metric``: larger is better."""
    if metric == "worst_group_loss":
        return (-scores["worst_group_loss"], scores["worst_group_accuracy"])
    return (scores["worst_group_accuracy"], -scores["heldout_loss"])


def _block_rows(X: torch.Tensor) -> int:
    """Rows per block of about a million entries, for passes over ``X`` without big temporaries."""
    return max(1, 2**20 // max(1, X.shape[1]))


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
        X.split(_block_rows(X)), weights.split(_block_rows(X)), strict=True
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


def _transform_rows(X: torch.Tensor, T: torch.Tensor) -> None:
    """``X <- X T`` in place, a block of rows at a time (no temporary the size of ``X``)."""
    for block in X.split(_block_rows(X)):
        block.copy_(block @ T)


# --------------------------------------------------------------------------- #
# Candidate heads: the runs' heads or group-balanced logistic regressions
# --------------------------------------------------------------------------- #
BALANCED_L2_PATH = (100.0, 10.0, 1.0, 0.1, 0.01, 0.001)
"""L2 strengths of the balanced heads (on a support loss of total weight one), strong to weak.

The best strength can lie far out in either direction (unit-norm text
embeddings of 1536 dimensions want a strong one on isotropic features), so
the path spans five decades, a fit per decade (as ``LogisticRegressionCV``'s
grid); fitted strong to weak, each fit warm-starts the next.
"""

CALIBRATION_TEMPERATURES = tuple(float(2.0**exponent) for exponent in np.arange(-3, 3.01, 0.5))
"""Temperatures a candidate's logits are divided by before its loss is compared (the best counts)."""


@dataclass
class HeadChoice:
    """Which heads the fit averages, chosen by cross-fitted held-out scores.

    ``chosen``: ``"runs"`` (the mean of the HSFM runs' heads) or
    ``"balanced_standardised"`` / ``"balanced_isotropic"`` (a group-balanced
    logistic regression in that geometry, its strength chosen on the runs'
    supports and refitted on every annotated row, :func:`refit_balanced`).
    ``scores``: each candidate's :func:`candidate_score` on the runs'
    selection rows, the balanced ones at their best L2 strength.
    ``balanced_l2``: that strength (on a run's support); ``head``: the
    refitted balanced head, for a balanced choice; ``run_logits``: the best
    balanced head's logits on every run's selection rows (what the runs'
    heads must beat); ``verdict``: how the runs' heads fared against it
    (:func:`weigh_challenger`).
    """

    chosen: str = "runs"
    scores: dict[str, float] | None = None
    balanced_l2: float | None = None
    head: tuple[torch.Tensor, torch.Tensor] | None = None
    run_logits: list[torch.Tensor] | None = None
    verdict: Verdict | None = None


def candidate_score(run_logits, runs, heldout: HeldoutRows) -> dict[str, float]:
    """How well heads do on their runs' selection rows: what candidates are compared by.

    ``run_logits``: for every run, its head's logits on the run's selection
    rows. ``worst_group_accuracy``: the mean over runs; candidates are
    ranked by it first, as the paper and DFR select. Ties are broken by
    ``worst_group_loss``: the mean over runs of the worst-group cross-entropy
    at the best of :data:`CALIBRATION_TEMPERATURES` (shared by the runs), so
    that a penalised fit and an early-stopped, more confident head are
    compared by their ranking rather than their scale. The loss alone would
    prefer a nearly flat head (about ``log(n_classes)`` on every group) to
    an informative one that still misses much of a small group.
    """
    temperatures = torch.tensor(CALIBRATION_TEMPERATURES, dtype=run_logits[0].dtype)
    loss, accuracy = torch.zeros_like(temperatures), 0.0
    for logits, run in zip(run_logits, runs, strict=True):
        rows = run.selection_rows
        y, cells, weight = heldout.y[rows], heldout.cells[rows], heldout.weight[rows]
        accuracy += _group_scores(logits, y, cells, heldout.n_cells, weight)["worst_group_accuracy"]
        scaled = logits[None] / temperatures.to(logits.device)[:, None, None]
        losses = torch.logsumexp(scaled, 2) - scaled[:, torch.arange(y.shape[0]), y]
        # per (temperature, cell) weighted mean loss, by one product with the cells' indicators
        members = torch.nn.functional.one_hot(cells, heldout.n_cells).to(logits.dtype)
        members *= weight[:, None]
        cell_weight = members.sum(0)
        cell_losses = (losses @ members)[:, cell_weight > 0] / cell_weight[cell_weight > 0]
        loss += cell_losses.max(1).values.cpu()
    return {
        "worst_group_accuracy": accuracy / len(runs),
        "worst_group_loss": float(loss.min()) / len(runs),
    }


def _rank(score: dict[str, float]) -> tuple[float, float]:
    """Sort key of a :func:`candidate_score`: smaller is better."""
    return (-score["worst_group_accuracy"], score["worst_group_loss"])


def balanced_paths(
    support_of: Callable,
    runs: list[RunRows],
    heldout: HeldoutRows,
    n_classes: int,
    isotropic_factor: torch.Tensor | None = None,
) -> dict[str, list[list[torch.Tensor]]]:
    """Logits of every run's group-balanced logistic regressions, per L2 strength and geometry.

    For every run a softmax logistic regression on the run's support, its
    (class, group) cells weighted equally (the runs' support loss), for
    every strength of :data:`BALANCED_L2_PATH`, on standardised features and
    on isotropic ones (standardised features times ``isotropic_factor``: the
    data's relative feature scales under one global scale, the geometry of
    the raw embeddings). Returns, per geometry, ``logits[run][step]``: the
    head's logits on the run's selection rows, rows its fit did not see (the
    heads themselves are not kept: the chosen one is refitted on every
    annotated row, :func:`refit_balanced`).
    """
    geometries = {"balanced_standardised": None}
    if isotropic_factor is not None:
        geometries["balanced_isotropic"] = isotropic_factor
    factors = [None if f is None else f.cpu().numpy() for f in geometries.values()]
    paths = {name: [] for name in geometries}
    for run in runs:
        S, labels, _, weight, _ = support_of(run, None)
        # every geometry's path from the one support: they share its passes
        fits = softmax_regression_paths(
            S.cpu().numpy(),
            labels.cpu().numpy(),
            weight.double().cpu().numpy(),
            n_classes,
            BALANCED_L2_PATH,
            factors,
        )
        weights, biases = [], []
        for factor, heads in zip(geometries.values(), fits, strict=True):
            for W, b in heads:
                W, b = (torch.from_numpy(a).to(S) for a in (W, b))
                weights.append(W if factor is None else W * factor)  # standardised coordinates
                biases.append(b)
        # every head of the run in one pass over the held-out rows, then its selection rows
        logits = torch.addmm(torch.cat(biases), heldout.X, torch.cat(weights).T)
        logits = logits[run.selection_rows].split(n_classes, dim=1)
        for number, name in enumerate(geometries):
            steps = len(BALANCED_L2_PATH)
            paths[name].append(list(logits[number * steps : (number + 1) * steps]))
    return paths


def best_balanced(paths: dict[str, list[list[torch.Tensor]]], runs, heldout) -> HeadChoice:
    """The balanced geometry and L2 strength with the best score on the runs' selection rows.

    Every candidate is scored on the same selection rows of the same runs
    (:func:`candidate_score`), rows none of them was fitted on.
    """
    choice = HeadChoice(scores={})
    for name, run_logits in paths.items():
        step_scores = [
            candidate_score([logits[step] for logits in run_logits], runs, heldout)
            for step in range(len(BALANCED_L2_PATH))
        ]
        step = min(range(len(step_scores)), key=lambda i: _rank(step_scores[i]))
        choice.scores[name] = step_scores[step]
        if choice.chosen == "runs" or _rank(step_scores[step]) < _rank(
            choice.scores[choice.chosen]
        ):
            choice.chosen, choice.balanced_l2 = name, BALANCED_L2_PATH[step]
            choice.run_logits = [logits[step] for logits in run_logits]
    return choice


def _worst_cell_outcomes(run_logits, incumbent_logits, runs, heldout: HeldoutRows):
    """Per run, on the incumbent's worst (class, group) cell of the run's selection rows:
    ``(weight, challenger_correct, incumbent_correct)`` of its rows (float64)."""
    outcomes = []
    for challenger, incumbent, run in zip(run_logits, incumbent_logits, runs, strict=True):
        rows = run.selection_rows
        y, cells, weight = heldout.y[rows], heldout.cells[rows], heldout.weight[rows].double()
        incumbent_correct = (incumbent.argmax(1) == y).double()
        totals = torch.bincount(cells, weights=weight, minlength=heldout.n_cells)
        hits = torch.bincount(cells, weights=incumbent_correct * weight, minlength=heldout.n_cells)
        accuracy = torch.where(totals > 0, hits / totals.clamp(min=1e-300), torch.inf)
        in_cell = cells == int(accuracy.argmin())
        challenger_correct = (challenger.argmax(1) == y).double()
        outcomes.append((weight[in_cell], challenger_correct[in_cell], incumbent_correct[in_cell]))
    return outcomes


def worst_group_standard_error(
    run_logits: list[torch.Tensor],
    incumbent_logits: list[torch.Tensor],
    runs: list[RunRows],
    heldout: HeldoutRows,
) -> float:
    """Standard error of a challenger's worst-group accuracy minus an incumbent's, over runs.

    Paired, on the rows both heads are scored on: in every run, on the
    incumbent's worst (class, group) cell of the run's selection rows, the
    weighted mean of ``correct(challenger) - correct(incumbent)`` per row has
    the variance ``sum w^2 (d - mean d)^2 / (sum w)^2``. The two runs of a
    split are scored on disjoint rows, but every split re-uses the same
    annotated rows, so the splits count as one measurement: the variance of
    the mean over runs is the runs' mean variance over two.
    """
    return _paired_standard_error(_worst_cell_outcomes(run_logits, incumbent_logits, runs, heldout))


def _paired_standard_error(outcomes) -> float:
    """:func:`worst_group_standard_error` of :func:`_worst_cell_outcomes`."""
    variances = []
    for w, challenger, incumbent in outcomes:
        difference = challenger - incumbent
        centred = difference - (w * difference).sum() / w.sum()
        variances.append(float((w.square() * centred.square()).sum() / w.sum().square()))
    return math.sqrt(sum(variances) / len(variances) / 2)


ONE_STANDARD_ERROR_TAIL = 0.5 * math.erfc(1 / math.sqrt(2))
"""One-sided tail of a normal beyond one standard deviation (about 0.159)."""


def discordant_rows_tail(
    run_logits: list[torch.Tensor],
    incumbent_logits: list[torch.Tensor],
    runs: list[RunRows],
    heldout: HeldoutRows,
) -> float:
    """Chance of the challenger's lead on the rows where the two heads disagree, were it luck.

    On the incumbent's worst cell of each run's selection rows (as
    :func:`worst_group_standard_error`), ``b`` rows are right by the
    challenger only and ``c`` by the incumbent only (sample weights as
    copies; summed over runs and divided by the splits, which re-use the same
    rows). The exact one-sided sign test: the chance that ``b + c`` fair coins
    give ``b`` or more heads, ``I_(1/2)(b, c + 1)``; 1 when ``b`` is 0. A lead
    of one or two rows is at best 0.5 or 0.25 whatever the cell's size, where
    the standard error's normal approximation, on a cell of a dozen rows,
    calls it one standard error or more.
    """
    return _sign_test_tail(_worst_cell_outcomes(run_logits, incumbent_logits, runs, heldout))


def _sign_test_tail(outcomes) -> float:
    """:func:`discordant_rows_tail` of :func:`_worst_cell_outcomes` (one entry per run)."""
    import scipy.special  # a dependency; only the choice needs it

    favourable = unfavourable = 0.0
    for w, challenger, incumbent in outcomes:
        favourable += float((w * (challenger > incumbent)).sum())
        unfavourable += float((w * (challenger < incumbent)).sum())
    n_splits = max(1.0, len(outcomes) / 2)
    favourable, unfavourable = favourable / n_splits, unfavourable / n_splits
    if favourable <= 0:
        return 1.0
    return float(scipy.special.betainc(favourable, unfavourable + 1.0, 0.5))


@dataclass(frozen=True)
class Verdict:
    """How a challenger head fared against an incumbent on the runs' selection rows.

    The challenger is the runs' heads, the incumbent the best balanced
    head. ``lead``: its mean
    worst-group accuracy minus the incumbent's;
    ``margin``: its standard error (:func:`worst_group_standard_error`);
    ``tail``: :func:`discordant_rows_tail`; ``weakest_run_lead``: the
    smallest lead over the incumbent in one run, on the run's own selection
    rows.
    """

    lead: float
    margin: float
    tail: float
    weakest_run_lead: float

    @property
    def challenger_wins(self) -> bool:
        """The one-standard-error rule of cross-validated model selection, made robust.

        The runs' heads chose their epochs, and the balanced heads their
        strength, on the very rows that score them here, so a lead there is
        partly luck; a challenger replaces the simpler head only where it
        leads it by more than the standard error of the lead,
        where the rows that carry the lead would be that many by luck less
        often than a one-standard-error lead would (exact where a cell's
        rows are few, where the normal approximation is not), and where in no
        run it does worse than the simpler head on that run's rows (a lead
        that one split of the rows contradicts is not one).
        """
        return (
            self.lead > self.margin
            and self.tail < ONE_STANDARD_ERROR_TAIL
            and self.weakest_run_lead >= 0
        )


def weigh_challenger(
    challenger: list[torch.Tensor],
    incumbent: list[torch.Tensor],
    runs: list[RunRows],
    heldout: HeldoutRows,
) -> Verdict:
    """A challenger head against an incumbent, by their logits on every run's selection rows."""
    run_leads = []
    for pair, run in zip(zip(challenger, incumbent, strict=True), runs, strict=True):
        rows = run.selection_rows
        y, cells, weight = heldout.y[rows], heldout.cells[rows], heldout.weight[rows]
        ours, theirs = (
            _group_scores(logits, y, cells, heldout.n_cells, weight)["worst_group_accuracy"]
            for logits in pair
        )
        run_leads.append(ours - theirs)
    outcomes = _worst_cell_outcomes(challenger, incumbent, runs, heldout)  # once for both
    return Verdict(
        lead=sum(run_leads) / len(run_leads),
        margin=_paired_standard_error(outcomes),
        tail=_sign_test_tail(outcomes),
        weakest_run_lead=min(run_leads),
    )


def refit_balanced(
    choice: HeadChoice,
    runs: list[RunRows],
    heldout: HeldoutRows,
    n_classes: int,
    isotropic_factor: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The chosen balanced head, refitted on every annotated row (standardised coordinates).

    As ``LogisticRegressionCV`` refits: the strength was chosen for a run's
    support, about half the annotated rows; the penalty is scaled by the
    ratio of that support's sample weight to all the annotated rows', the
    same strength per row of data. Every (class, group) cell weighs the same.
    """
    row_weight = _cell_balanced(heldout.weight, heldout.cells, heldout.n_cells)
    support_mass = sum(float(run.support_mass.sum()) for run in runs) / len(runs)
    l2 = choice.balanced_l2 * support_mass / float(heldout.weight.sum())
    factor = isotropic_factor if choice.chosen == "balanced_isotropic" else None
    X = heldout.X if factor is None else heldout.X * factor
    problem = SoftmaxProblem(
        X.cpu().numpy(), heldout.y.cpu().numpy(), row_weight.double().cpu().numpy(), n_classes
    )
    (W, b), _, _ = problem.minimize(l2, problem.zeros())
    W, b = (torch.from_numpy(a).to(heldout.X) for a in (W, b))
    return (W if factor is None else W * factor), b


def fit_hsfm(
    pool: Rows,
    heldout: HeldoutRows,
    runs: list[RunRows],
    settings: HSFMSettings,
    *,
    n_classes: int,
    erm_l2: float,
    initial_head: tuple[torch.Tensor, torch.Tensor] | None = None,
    isotropic_factor: torch.Tensor | None = None,
    covariance_rows: tuple[torch.Tensor, torch.Tensor] | None = None,
    on_epoch: Callable[[dict[str, float]], None] | None = None,
) -> HSFMResult:
    """Run HSFM (docs/architecture.md) on standardised features and return the selected head.

    Every entry of ``runs`` is one bilevel run: its support set, the held-out
    rows that shape it (hard set) and those that select its epoch; the heads
    of all runs are averaged. The paper has one run (support from the pool,
    hard set and selection on all held-out rows); cross-fitting has two per
    split of the annotated rows, so no epoch is selected on rows that shaped it.

    Parameters
    ----------
    pool : Rows
        Training pool, standardised. Source of the ERM head (and of the
        support set, for ``"pool"``). With ``"annotated"`` support,
        ``pool.X`` is emptied (``Tensor.set_()``) once the ERM head is fitted,
        so its memory is free for the runs.
    heldout : HeldoutRows
        Held-out rows, standardised (``heldout.X`` is whitened in place when
        the fit whitens).
    runs : list of RunRows
        The rows of every run.
    settings : HSFMSettings
    n_classes : int
    erm_l2 : float
        L2 strength of the ERM head (ignored when ``initial_head`` is given).
    initial_head : (W, b) or None
        Initial head in standardised coordinates (None: the ERM head).
    isotropic_factor : tensor of shape (n_features,) or None
        Per-feature factor from standardised to isotropic coordinates, a
        geometry of the balanced candidate heads (:func:`balanced_paths`).
    covariance_rows : (index, weight) or None
        Pool rows, and their weights, that the whitening covariance is
        estimated on (None: every pool row, by its sample weight).
    on_epoch : callable or None
        Called with each epoch's record (for progress output).
    """
    pool_row_weight = pool.weight / pool.weight.sum()
    whitening = None
    if settings.whitening_ridge is not None:
        if covariance_rows is None:
            whitening = whitening_transform(pool.X, settings.whitening_ridge, pool_row_weight)
        else:
            index, weight = covariance_rows
            whitening = whitening_transform(
                pool.X[index], settings.whitening_ridge, weight / weight.sum()
            )
    erm_converged = True
    if initial_head is None:
        erm_weight = pool_row_weight
        if settings.erm_class_factor is not None:
            factor = torch.tensor(settings.erm_class_factor, dtype=pool.weight.dtype)
            erm_weight = pool.weight * factor.to(pool.weight.device)[pool.y]
            erm_weight = erm_weight / erm_weight.sum()
        W, b, erm_converged = fit_softmax_head(
            pool.X, pool.y, n_classes, l2=erm_l2, row_weight=erm_weight
        )
        initial_head = (W, b)

    def support_of(run, transform):
        support = _support(run, pool, heldout, settings)
        return support if transform is None else (support[0] @ transform, *support[1:])

    balanced = None
    if settings.balanced_candidates and settings.support_source == "annotated" and len(runs) > 1:
        # before any whitening: the balanced heads live in standardised coordinates
        paths = balanced_paths(support_of, runs, heldout, n_classes, isotropic_factor)
        balanced = best_balanced(paths, runs, heldout)
        balanced.head = refit_balanced(balanced, runs, heldout, n_classes, isotropic_factor)
        del paths
    W0, b0 = initial_head

    def head_in(transform):
        """The initial head in standardised coordinates, or in whitened ones."""
        return initial_head if transform is None else (_unwhiten(W0, transform), b0)

    standardised_steps = []

    def step_sizes(first_support, standardised: bool) -> tuple[float, float]:
        """:func:`_step_sizes` of the first run's support; the standardised one's once per fit
        (the probe's and the runs' are the same rows)."""
        if not standardised:
            return _step_sizes(first_support, settings)
        if not standardised_steps:
            standardised_steps.append(_step_sizes(first_support, settings))
        return standardised_steps[0]

    probe_scores = None
    if whitening is not None and settings.choose_whitening:
        # both geometries see the same support draws as the runs below
        probe_scores = {
            geometry: _unedited_probe(
                support_of,
                runs,
                heldout,
                head_in(transform),
                n_classes,
                settings,
                transform,
                step_sizes,
            )
            for geometry, transform in (("standardised", None), ("whitened", whitening))
        }
        if not probe_scores["whitened"] < probe_scores["standardised"]:
            whitening = None
    run_head = head_in(whitening)
    if settings.support_source == "annotated":
        # the pool, usually the largest array of a fit, has served its purpose: drop its storage
        pool.X.set_()
    if whitening is not None:
        # the runs work in whitened coordinates; heads and supports are mapped back at the end
        _transform_rows(heldout.X, whitening)
    # pool supports are whitened as drawn (a copy); annotated ones come from the whitened rows
    pool_transform = whitening if settings.support_source == "pool" else None

    if runs_in_one_batch(settings):
        supports = [support_of(run, pool_transform) for run in runs]
        inner_lr, head_lr = step_sizes(supports[0], whitening is None)
        results = _head_update_runs(
            supports, runs, heldout, run_head, n_classes, settings, head_lr, on_epoch
        )
        del supports
    else:
        inner_lr = head_lr = None
        results = []
        for number, run in enumerate(runs):
            support = support_of(run, pool_transform)
            if inner_lr is None:  # one inner step for every run: from the first run's support
                inner_lr, head_lr = step_sizes(support, whitening is None)
            report = None
            if on_epoch is not None:
                report = functools.partial(_report_run, on_epoch, number)
            results.append(
                _bilevel_run(
                    support,
                    run,
                    heldout,
                    run_head,
                    n_classes,
                    settings,
                    (inner_lr, head_lr),
                    report,
                )
            )
            del support
    choice = HeadChoice()
    if balanced is not None:
        # the runs' heads and the data are in the same coordinates here: their logits are right
        every_row = _batched_logits(  # every run's head in one pass over the held-out rows
            heldout.X,
            torch.stack([r.weight for r in results]),
            torch.stack([r.bias for r in results]),
        )
        run_logits = [
            logits[run.selection_rows] for logits, run in zip(every_row, runs, strict=True)
        ]
        choice.run_logits = run_logits
        choice.scores = {"runs": candidate_score(run_logits, runs, heldout)}
    if balanced is not None:
        balanced.scores = {**choice.scores, **balanced.scores}
        verdict = weigh_challenger(run_logits, balanced.run_logits, runs, heldout)
        if verdict.challenger_wins:
            balanced = HeadChoice(scores=balanced.scores, run_logits=run_logits)
        choice = balanced
        choice.verdict = verdict
    choice.run_logits = None  # scored; not needed past the choice
    if whitening is not None:
        # logits X T W^T = X (W T)^T: heads map back by T, supports by T^-1
        sizes = [len(r.support_edited) for r in results]  # one solve for every run's support
        edited = _unwhiten(torch.cat([r.support_edited for r in results]), whitening).split(sizes)
        for r, support in zip(results, edited, strict=True):
            r.weight, r.support_edited = r.weight @ whitening, support
    if choice.head is None:  # the runs' mean head
        weight = torch.stack([r.weight for r in results]).mean(0)
        bias = torch.stack([r.bias for r in results]).mean(0)
    else:
        weight, bias = choice.head
    return HSFMResult(
        weight=weight,
        bias=bias,
        initial_weight=W0,
        initial_bias=b0,
        inner_lr=inner_lr,
        head_lr=head_lr,
        runs=results,
        support_from_heldout=settings.support_source == "annotated",
        whitened=whitening is not None,
        probe_scores=probe_scores,
        erm_converged=erm_converged,
        choice=choice,
    )


def runs_in_one_batch(settings: HSFMSettings) -> bool:
    """Whether the runs step together (:func:`_head_update_runs`): without support edits.

    With edits each run has its own hypergradient and the runs go one by one.
    """
    return settings.outer_steps == 0


def _step_sizes(support, settings: HSFMSettings) -> tuple[float, float]:
    """Inner and head step sizes, from a support set when ``inner_lr`` is None."""
    S, _, _, support_weight, _ = support
    if settings.inner_lr is None:
        inner_lr = inner_lr_from_lipschitz(
            S, 1.0, support_weight, weight_decay=settings.weight_decay
        )
    else:
        inner_lr = float(settings.inner_lr)
    return inner_lr, inner_lr if settings.head_lr is None else float(settings.head_lr)


def _report_run(on_epoch, number: int, record: dict) -> None:
    on_epoch({"run": number, **record})


def _unedited_probe(
    support_of, runs, heldout, head, n_classes, settings, whitening, step_sizes
) -> float:
    """How well a geometry suits the head updates, before any support edit.

    For every run, the head update alone (the unedited control of
    :func:`_bilevel_run`: ``n_epochs`` times ``inner_steps`` steps on the
    support as drawn, from the initial head; never more epochs, so that both
    geometries get the same budget) in standardised coordinates
    (``whitening`` None) or whitened ones (``whitening`` = ``T``); the score
    is the mean over runs of the lowest worst-group mean cross-entropy on the run's
    selection rows, rows that did not shape it. ``heldout.X`` stays
    standardised: whitened heads are mapped back to score it. ``step_sizes``:
    ``(first_support, standardised) -> (inner_lr, head_lr)``, as the runs get theirs.
    """
    supports = [support_of(run, whitening) for run in runs]
    head_lr = step_sizes(supports[0], whitening is None)[1]
    S, Y, weight = _stacked_supports(supports, n_classes)
    del supports
    W0, b0 = head
    W = W0.expand(len(runs), *W0.shape).clone()
    b = b0.expand(len(runs), *b0.shape).clone()
    optimizer = _head_optimizer([W, b], settings.head_update, head_lr)
    score = _SelectionScores(runs, heldout)
    best_losses = [math.inf] * len(runs)
    for _ in range(settings.n_epochs):  # every run at once (:func:`_head_update_runs`)
        _update_heads(S, Y, weight, W, b, optimizer, settings)
        logits = _batched_logits(heldout.X, W if whitening is None else W @ whitening, b)
        for number, scores in enumerate(score(logits)):
            if scores is not None:
                best_losses[number] = min(best_losses[number], scores["worst_group_loss"])
    return sum(best_losses) / len(best_losses)


class _Adam:
    """Adam on a list of tensors, updated in place (torch's update rule, no weight decay).

    Written out rather than ``torch.optim.Adam``: a fit makes thousands of
    steps on small tensors, where torch.optim's per-step machinery (and its
    first step, which imports torch's compiler stack, about 3 s) cost more than
    the arithmetic.
    """

    def __init__(self, params: list[torch.Tensor], lr: float, betas=(0.9, 0.999), eps=1e-8):
        self.params, self.lr, self.betas, self.eps = params, lr, betas, eps
        self.first = [torch.zeros_like(p) for p in params]
        self.second = [torch.zeros_like(p) for p in params]
        self.steps = 0

    def subset(self, index: torch.Tensor, params: list[torch.Tensor]) -> _Adam:
        """The optimiser of ``params``, the rows ``index`` of this one's (with their moments)."""
        subset = _Adam(params, self.lr, self.betas, self.eps)
        subset.first = [first[index] for first in self.first]
        subset.second = [second[index] for second in self.second]
        subset.steps = self.steps
        return subset

    def view(self, runs: slice) -> _Adam:
        """This optimiser on the runs ``runs`` only: views, so its steps update this one's
        tensors and moments (this one's step count is the caller's to advance)."""
        view = _Adam([param[runs] for param in self.params], self.lr, self.betas, self.eps)
        view.first = [first[runs] for first in self.first]
        view.second = [second[runs] for second in self.second]
        view.steps = self.steps
        return view

    def step(self, grads: list[torch.Tensor]) -> None:
        self.steps += 1
        beta1, beta2 = self.betas
        step_size = self.lr / (1 - beta1**self.steps)
        root_correction = math.sqrt(1 - beta2**self.steps)
        for param, grad, first, second in zip(
            self.params, grads, self.first, self.second, strict=True
        ):
            first.mul_(beta1).add_(grad, alpha=1 - beta1)
            second.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
            denominator = second.sqrt().div_(root_correction).add_(self.eps)
            param.addcdiv_(first, denominator, value=-step_size)


class _GradientDescent:
    """Plain gradient descent on a list of tensors, in place."""

    def __init__(self, params: list[torch.Tensor], lr: float):
        self.params, self.lr, self.steps = params, lr, 0

    def subset(self, index: torch.Tensor, params: list[torch.Tensor]) -> _GradientDescent:
        return _GradientDescent(params, self.lr)

    def view(self, runs: slice) -> _GradientDescent:
        """This optimiser on the runs ``runs`` only (views of its tensors)."""
        return _GradientDescent([param[runs] for param in self.params], self.lr)

    def step(self, grads: list[torch.Tensor]) -> None:
        self.steps += 1
        for param, grad in zip(self.params, grads, strict=True):
            param.add_(grad, alpha=-self.lr)


def _support(run: RunRows, pool: Rows, heldout: HeldoutRows, settings: HSFMSettings):
    """(rows, labels, index into the source, loss weights, masses) of a run's initial support.

    From the pool: loss weights proportional to the rows' masses (equal for
    unit sample weights). From the annotated rows: every (class, group) cell
    counts equally, rows within a cell by their masses.
    """
    index, mass = run.support_index, run.support_mass
    if settings.support_source == "annotated":
        weight = _cell_balanced(mass, heldout.cells[index], heldout.n_cells)
        return heldout.X[index], heldout.y[index], index, weight, mass  # a gather: a new tensor
    return pool.X[index], pool.y[index], index, mass / mass.sum(), mass


def _cell_balanced(mass: torch.Tensor, cells: torch.Tensor, n_cells: int) -> torch.Tensor:
    """Loss weights summing to one: every present cell counts equally, rows within it by mass."""
    cell_mass = torch.bincount(cells, weights=mass, minlength=n_cells)
    return mass / (cell_mass[cells] * (cell_mass > 0).sum())


def _head_optimizer(params: list[torch.Tensor], head_update: str, lr: float):
    if head_update == "adam":
        return _Adam(params, lr)
    return _GradientDescent(params, lr)


def _update_head(S, Y_support, W, b, support_weight, optimizer, settings) -> None:
    """Step (c): ``inner_steps`` optimiser steps of the head on the (detached) support."""
    for _ in range(settings.inner_steps):
        _, grad_W, grad_b = softmax_head_gradient(S, Y_support, W, b, support_weight)
        if settings.weight_decay:
            grad_W.add_(W, alpha=settings.weight_decay)
        optimizer.step([grad_W, grad_b])


def _row_index(rows: slice | torch.Tensor, X: torch.Tensor) -> torch.Tensor:
    """``rows`` (a slice or an index tensor) of ``X`` as an index tensor."""
    if isinstance(rows, slice):
        return torch.arange(X.shape[0], device=X.device)[rows]
    return rows


def _clipped_support_step(S, grad_S, mass, optimizer, max_norm) -> bool:
    """One Adam step of the support along ``grad_S`` per unit of mass, clipped; False if not finite.

    A support row's gradient grows with its loss weight; divided by its mass
    (its sample weight), a row of weight k moves as each of k copies of it
    would, and the norm that is clipped counts it k times.
    """
    per_unit = grad_S / mass[:, None]
    norm = (mass[:, None] * per_unit.square()).sum().sqrt()
    if not torch.isfinite(norm):
        return False
    coefficient = max_norm / (norm + 1e-6)
    if coefficient < 1:
        per_unit.mul_(coefficient)
    optimizer.step([per_unit])
    return True


def _bilevel_run(support, run, heldout, head, n_classes, settings, steps, on_epoch) -> RunResult:
    """Steps 3-4 of the method for one support draw: epochs of (a) to (d).

    ``head`` is the initial ``(W, b)``, ``steps`` the ``(inner_lr, head_lr)``.
    """
    W0, b0 = head
    inner_lr, head_lr = steps
    heldout_X, heldout_y, heldout_cells = heldout.X, heldout.y, heldout.cells
    S, support_labels, support_index, support_weight, support_mass = support  # S: its own copy
    Y_support = _one_hot(support_labels, n_classes, S.dtype)
    W, b = W0.clone(), b0.clone()
    support_optimizer = _Adam([S], settings.outer_lr)
    head_optimizer = _head_optimizer([W, b], settings.head_update, head_lr)
    # without edits (outer_steps=0) the control would repeat the head update exactly
    compare_unedited = settings.compare_unedited and settings.outer_steps > 0
    if compare_unedited:
        # the control: the same head update on the support as drawn
        S_unedited, W_unedited, b_unedited = S.clone(), W0.clone(), b0.clone()
        unedited_optimizer = _head_optimizer(
            [W_unedited, b_unedited], settings.head_update, head_lr
        )
    # Scores come from logits of every held-out row, indexed afterwards: a fold
    # of rows is never copied (the logits are n x n_classes, the rows n x d).
    shaping_rows, selection_rows = run.shaping_rows, run.selection_rows
    shaping_index = _row_index(shaping_rows, heldout_X)
    shaping_y = heldout_y[shaping_rows]
    shaping_cells = heldout.hard_set_cells[shaping_rows]
    shaping_weight = heldout.weight[shaping_rows]
    selection_y = heldout_y[selection_rows]
    selection_cells = heldout_cells[selection_rows]
    selection_weight = heldout.weight[selection_rows]

    history: dict[str, list[float]] = {
        key: [] for key in (*_SCORES, *(f"unedited_{key}" for key in _SCORES), "outer_loss")
    }
    best = (-math.inf, -math.inf)
    best_S = S.clone()  # the support at the best epoch; the initial one until then
    best_state = (W0, b0, 0, False)
    diverged = False
    epochs_without_improvement = 0

    def selection_scores(logits):
        return _group_scores(
            logits[selection_rows], selection_y, selection_cells, heldout.n_cells, selection_weight
        )

    def keep_if_best(scores, head_W, head_b, support_rows, epoch, edited) -> bool:
        nonlocal best, best_state
        score = _selection_score(scores, settings.selection_metric)
        if not score > best:
            return False
        best = score
        best_state = (head_W.clone(), head_b.clone(), epoch, edited)
        best_S.copy_(support_rows)
        return True

    # logits of the current head on every held-out row: scored in (d), mined in the next (a)
    logits = torch.addmm(b, heldout_X, W.T)
    # with the comparison, epoch 0 (the start head, the least edited of all)
    # competes too: a run never ends worse on its selection rows than it started
    if settings.compare_unedited and torch.isfinite(logits[selection_rows]).all():
        keep_if_best(selection_scores(logits), W, b, S, 0, edited=False)
    # past n_epochs, a run goes on only while its best epoch is recent: a run
    # cut short while its selection score still falls loses the most
    last_epoch = settings.n_epochs if settings.max_epochs is None else settings.max_epochs
    epoch = 0
    for epoch in range(1, last_epoch + 1):
        # (a) hard set under the current head (none is needed without edits)
        if settings.outer_steps:
            losses = _per_row_cross_entropy(logits[shaping_rows], shaping_y)
            hard, hard_weight = select_hard_set(
                losses,
                shaping_cells,
                heldout.n_hard_set_cells,
                settings.hard_set_size,
                shaping_weight,
            )
            H = heldout_X[shaping_index[hard]]
            Y_hard = _one_hot(shaping_y[hard], n_classes, heldout_X.dtype)
            hard_weight = hard_weight / hard_weight.sum()

        # (b) outer steps: edit the support set through the unrolled inner loop
        outer_losses = []
        for _ in range(settings.outer_steps):
            outer_loss, grad_S = support_hypergradient(
                S,
                Y_support,
                H,
                Y_hard,
                W,
                b,
                inner_lr=inner_lr,
                inner_steps=settings.inner_steps,
                support_weight=support_weight,
                weight_decay=settings.weight_decay,
                hard_weight=hard_weight,
            )
            if not (
                torch.isfinite(outer_loss)
                and _clipped_support_step(
                    S, grad_S, support_mass, support_optimizer, settings.max_grad_norm
                )
            ):
                diverged = True
                break
            outer_losses.append(float(outer_loss))
        if diverged:
            break

        # (c) head update on the edited (detached) support set
        _update_head(S, Y_support, W, b, support_weight, head_optimizer, settings)
        logits = torch.addmm(b, heldout_X, W.T)
        if not torch.isfinite(logits[selection_rows]).all():
            diverged = True
            break

        # (d) model selection on the held-out rows, among the edited and the unedited head
        scores = selection_scores(logits)
        unedited_scores = None
        if compare_unedited:
            unedited = (S_unedited, Y_support, W_unedited, b_unedited, support_weight)
            _update_head(*unedited, unedited_optimizer, settings)
            unedited_logits = torch.addmm(b_unedited, heldout_X, W_unedited.T)
            if torch.isfinite(unedited_logits[selection_rows]).all():
                unedited_scores = selection_scores(unedited_logits)
        record = {
            "epoch": epoch,
            **scores,
            **{
                f"unedited_{key}": math.nan if unedited_scores is None else unedited_scores[key]
                for key in _SCORES
            },
            "outer_loss": sum(outer_losses) / len(outer_losses) if outer_losses else math.nan,
        }
        for key in history:
            history[key].append(record[key])
        if on_epoch is not None:
            on_epoch(record)
        improved = keep_if_best(scores, W, b, S, epoch, edited=True)
        if unedited_scores is not None:
            improved |= keep_if_best(
                unedited_scores, W_unedited, b_unedited, S_unedited, epoch, edited=False
            )
        epochs_without_improvement = 0 if improved else epochs_without_improvement + 1
        if epoch >= settings.n_epochs and epochs_without_improvement >= settings.n_iter_no_change:
            break

    best_W, best_b, best_epoch, kept_edits = best_state
    return RunResult(
        weight=best_W,
        bias=best_b,
        support_edited=best_S,
        support_labels=support_labels,
        support_index=support_index,
        selection_index=_row_index(selection_rows, heldout_X),
        best_epoch=best_epoch,
        history=history,
        diverged=diverged,
        kept_edits=kept_edits,
        still_improving=(
            settings.max_epochs is not None
            and not diverged
            and best_epoch == settings.max_epochs > settings.n_epochs
        ),
    )


# --------------------------------------------------------------------------- #
# Runs without support edits: one batched program
# --------------------------------------------------------------------------- #
def _stacked_supports(supports, n_classes: int):
    """The runs' supports as ``(S, Y, weight)`` of shapes (runs, rows, d), (runs, rows, k), (runs, rows).

    Shorter supports are padded with zero rows of zero loss weight, which add
    nothing to a head's gradient.
    """
    n_rows = max(support[0].shape[0] for support in supports)
    first = supports[0][0]
    S = first.new_zeros(len(supports), n_rows, first.shape[1])
    Y = first.new_zeros(len(supports), n_rows, n_classes)
    weight = first.new_zeros(len(supports), n_rows)
    for run, (rows, labels, _, loss_weight, _) in enumerate(supports):
        S[run, : rows.shape[0]] = rows
        Y[run, : rows.shape[0]] = _one_hot(labels, n_classes, first.dtype)
        weight[run, : rows.shape[0]] = loss_weight
    return S, Y, weight


CACHED_SUPPORT_BYTES = 2**24
"""Runs whose supports together take at most this many bytes make their inner steps together.

A head step reads its whole support twice (logits, gradient). Runs that
step together stream all their supports from memory at every step; a group
that fits in a processor's cache reads them from there after its first step
(measured, 2 threads, 32 MiB L3: four 4,000 x 1024 float32 supports, 7.8 ms
per step of all four together, 5.4 ms one run at a time). Each run's
arithmetic is the same either way (a batched product computes every run alone).
"""


def _cache_groups(S: torch.Tensor) -> list[slice]:
    """Consecutive runs of the stacked supports ``S``, in groups of :data:`CACHED_SUPPORT_BYTES`."""
    support_bytes = S[0].numel() * S.element_size()
    size = max(1, CACHED_SUPPORT_BYTES // max(1, support_bytes))
    return [slice(start, start + size) for start in range(0, S.shape[0], size)]


def _update_heads(S, Y, weight, W, b, optimizer, settings) -> None:
    """:func:`_update_head` for a batch of heads ``W`` (runs, k, d), each on its own support.

    The runs make their steps a cache-sized group at a time (:data:`CACHED_SUPPORT_BYTES`).
    """
    # a batched product runs each run on one thread: a lone run's products go over its rows
    lone_run_on_threads = torch.get_num_threads() > 1
    for runs in _cache_groups(S):
        group_optimizer = optimizer.view(runs)
        S_group, Y_group, weight_group = S[runs], Y[runs], weight[runs, :, None]
        W_group, b_group = W[runs], b[runs]
        lone = lone_run_on_threads and S_group.shape[0] == 1
        for _ in range(settings.inner_steps):
            if lone:
                logits = torch.addmm(b_group, S_group[0], W_group[0].T)[None]
            else:
                logits = torch.baddbmm(b_group[:, None, :], S_group, W_group.transpose(1, 2))
            residual = (torch.log_softmax(logits, 2).exp() - Y_group) * weight_group
            if lone:
                grad_W = product_over_row_blocks(residual[0].T, S_group[0])[None]
            else:
                grad_W = torch.bmm(residual.transpose(1, 2), S_group)
            if settings.weight_decay:
                grad_W.add_(W_group, alpha=settings.weight_decay)
            group_optimizer.step([grad_W, residual.sum(1)])
    optimizer.steps += settings.inner_steps


def _batched_logits(X: torch.Tensor, W: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Logits (runs, rows, k) of every head of the batch on the rows ``X``: one product."""
    n_runs, n_classes, n_features = W.shape
    logits = (X @ W.reshape(n_runs * n_classes, n_features).T).reshape(-1, n_runs, n_classes)
    return logits.transpose(0, 1) + b[:, None, :]


class _SelectionScores:
    """:func:`_group_scores` of a batch of heads, each on its run's selection rows."""

    def __init__(self, runs: list[RunRows], heldout: HeldoutRows):
        n_rows = heldout.y.shape[0]
        self.mask = torch.zeros(len(runs), n_rows, dtype=torch.bool, device=heldout.y.device)
        for number, run in enumerate(runs):
            self.mask[number, run.selection_rows] = True
        self.weight = heldout.weight * self.mask  # (runs, rows)
        self.members = torch.nn.functional.one_hot(heldout.cells, heldout.n_cells).to(
            heldout.weight.dtype
        )
        self.y = heldout.y

    def subset(self, index: torch.Tensor) -> _SelectionScores:
        """The scores of the runs ``index`` of this batch only."""
        subset = copy.copy(self)
        subset.mask, subset.weight = self.mask[index], self.weight[index]
        return subset

    def __call__(self, logits: torch.Tensor) -> list[dict[str, float] | None]:
        """Each run's scores; None for a run whose logits on its selection rows are not finite."""
        weight, members = self.weight, self.members
        losses = -torch.log_softmax(logits, 2).gather(
            2, self.y.expand(logits.shape[0], -1)[:, :, None]
        )[:, :, 0]
        correct = (logits.argmax(2) == self.y).to(weight.dtype) * weight
        # rows outside a run's selection count zero, even where its logits overflow
        losses = torch.where(self.mask, losses * weight, 0.0)
        totals = weight @ members
        present = totals > 0
        accuracy = torch.where(present, (correct @ members) / totals, math.inf).amin(1)
        group_loss = torch.where(present, (losses @ members) / totals, -math.inf).amax(1)
        total = weight.sum(1)
        scores = torch.stack([accuracy, correct.sum(1) / total, losses.sum(1) / total, group_loss])
        finite = (torch.isfinite(logits).all(2) | ~self.mask).all(1).tolist()
        return [
            dict(zip(_SCORES, run_scores, strict=True)) if run_finite else None
            for run_finite, run_scores in zip(finite, scores.T.tolist(), strict=True)
        ]


def _head_update_runs(supports, runs, heldout, head, n_classes, settings, head_lr, on_epoch):
    """Every run without support edits (``outer_steps=0``), as one batched program.

    Runs are a leading batch dimension: each head takes its ``inner_steps``
    per epoch on its own support, all heads at once, and is scored on its
    run's selection rows. A run that stops (``n_iter_no_change`` epochs
    without improving past ``n_epochs``, or non-finite logits) leaves the
    batch with its kept epoch, so the others do not carry it. The same runs
    as :func:`_bilevel_run` with ``outer_steps=0``, to rounding.
    """
    S, Y, weight = _stacked_supports(supports, n_classes)
    W0, b0 = head
    W = W0.expand(len(runs), *W0.shape).clone()
    b = b0.expand(len(runs), *b0.shape).clone()
    optimizer = _head_optimizer([W, b], settings.head_update, head_lr)
    score = _SelectionScores(runs, heldout)
    batch = list(range(len(runs)))  # the runs still in the batch, by number
    best = [(-math.inf, -math.inf)] * len(runs)
    kept = [(W0, b0, 0)] * len(runs)
    keys = (*_SCORES, *(f"unedited_{key}" for key in _SCORES), "outer_loss")
    history = [{key: [] for key in keys} for _ in runs]
    diverged, stale = [False] * len(runs), [0] * len(runs)

    def keep_if_best(position, scores, epoch) -> bool:
        number = batch[position]
        key = _selection_score(scores, settings.selection_metric)
        if not key > best[number]:
            return False
        best[number] = key
        kept[number] = (W[position].clone(), b[position].clone(), epoch)
        return True

    if settings.compare_unedited:  # epoch 0, the start head, competes as in _bilevel_run
        logits = _batched_logits(heldout.X, W, b)
        for position, scores in enumerate(score(logits)):
            if scores is not None:
                keep_if_best(position, scores, 0)
    last_epoch = settings.n_epochs if settings.max_epochs is None else settings.max_epochs
    no_edit = {f"unedited_{key}": math.nan for key in _SCORES} | {"outer_loss": math.nan}
    for epoch in range(1, last_epoch + 1):
        _update_heads(S, Y, weight, W, b, optimizer, settings)
        logits = _batched_logits(heldout.X, W, b)
        going = []
        for position, scores in enumerate(score(logits)):
            number = batch[position]
            if scores is None:
                diverged[number] = True
                continue
            record = {"epoch": epoch, **scores, **no_edit}
            for key, values in history[number].items():
                values.append(record[key])
            if on_epoch is not None:
                on_epoch({"run": number, **record})
            stale[number] = 0 if keep_if_best(position, scores, epoch) else stale[number] + 1
            if epoch < settings.n_epochs or stale[number] < settings.n_iter_no_change:
                going.append(position)
        if not going:
            break
        if len(going) < len(batch):  # stopped runs leave the batch
            index = torch.tensor(going, device=S.device)
            S, Y, weight, W, b = S[index], Y[index], weight[index], W[index], b[index]
            optimizer = optimizer.subset(index, [W, b])
            score = score.subset(index)
            batch = [batch[position] for position in going]
    results = []
    for number, (run, support) in enumerate(zip(runs, supports, strict=True)):
        best_W, best_b, best_epoch = kept[number]
        results.append(
            RunResult(
                weight=best_W,
                bias=best_b,
                support_edited=support[0],
                support_labels=support[1],
                support_index=support[2],
                selection_index=_row_index(run.selection_rows, heldout.X),
                best_epoch=best_epoch,
                history=history[number],
                diverged=diverged[number],
                kept_edits=best_epoch > 0,
                still_improving=(
                    settings.max_epochs is not None
                    and not diverged[number]
                    and best_epoch == settings.max_epochs > settings.n_epochs
                ),
            )
        )
    return results
