"""The paper's opt-in support edits: the bilevel hypergradient, the hard set and one run with edits.

The inner problem is ``inner_steps`` steps of plain gradient descent on the mean
cross-entropy of the support set ``S``; the hypergradient of the outer loss with
respect to ``S`` is computed in closed form (:func:`support_hypergradient`): a
forward pass that stores the inner iterates and a hand-written reverse pass
through them. It matches the autograd reference
(:func:`support_hypergradient_autograd`) to rounding, at a fraction of the overhead.
Off by default (``outer_steps=0``).
"""

from __future__ import annotations

import torch

from ._losses import _one_hot, _per_row_cross_entropy, _row_weights
from ._optimizers import _Adam, _head_optimizer
from ._scores import Cells, _cell_scores
from ._supports import StepSizes, Support, _row_index, _update_head
from ._tracker import EpochRecord, KeptEpoch, RunTracker
from ._types import AnnotatedRows, HSFMSettings, RunResult, RunRows


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
    head_l2: float = 0.0,
    hard_weight: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Outer loss after the unrolled inner loop, and its gradient with respect to ``S``.

    Inner loop: ``inner_steps`` steps of gradient descent with step ``inner_lr``
    on the cross-entropy of ``(S, Y_support)`` (mean over rows, or weighted by
    ``support_weight``, summing to one) plus ``head_l2 / 2 * ||W||^2``,
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
    ``1 - lr * head_l2`` per step; it does not depend on ``S``.
    """
    # Scale factors are folded into fused multiply-adds: this loop runs
    # epochs x outer_steps x inner_steps times, so its op count is the cost.
    step = inner_lr
    decay = 1.0 - inner_lr * head_l2
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
    head_l2: float = 0.0,
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
        W_t = W_t - inner_lr * (grad_W + head_l2 * W_t)
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


def _bilevel_run(
    support: Support,
    run: RunRows,
    annotated: AnnotatedRows,
    head,
    settings: HSFMSettings,
    steps: StepSizes,
    *,
    number: int = 0,
    on_epoch=None,
) -> RunResult:
    """Steps 3-4 of the method for one support draw: epochs of (a) to (d).

    ``head`` is the initial ``(W, b)``; ``support`` is edited in place (the
    caller's draw). ``number`` names the run in its progress records.
    """
    W0, b0 = head
    annotated_X, annotated_y, annotated_cells = annotated.X, annotated.y, annotated.cells
    S = support.rows
    Y_support = _one_hot(support.labels, W0.shape[0], S.dtype)
    W, b = W0.clone(), b0.clone()
    support_optimizer = _Adam([S], settings.outer_lr)
    head_optimizer = _head_optimizer([W, b], settings.head_update, steps.head_lr)
    # without edits (outer_steps=0) the control would repeat the head update exactly
    compare_unedited = settings.compare_unedited and settings.outer_steps > 0
    if compare_unedited:
        # the control: the same head update on the support as drawn
        S_unedited, W_unedited, b_unedited = S.clone(), W0.clone(), b0.clone()
        unedited_optimizer = _head_optimizer(
            [W_unedited, b_unedited], settings.head_update, steps.head_lr
        )
    # Scores come from logits of every held-out row, indexed afterwards: a fold
    # of rows is never copied (the logits are n x n_classes, the rows n x d).
    shaping_rows, selection_rows = run.shaping_rows, run.selection_rows
    shaping_index = _row_index(shaping_rows, annotated_X)
    shaping_y = annotated_y[shaping_rows]
    shaping_cells = annotated.hard_set_cells[shaping_rows]
    shaping_weight = annotated.weight[shaping_rows]
    selection_y = annotated_y[selection_rows]
    selection_cells = annotated_cells[selection_rows]
    selection_weight = annotated.weight[selection_rows]
    # until an epoch beats it, the start head on the support as drawn is kept
    tracker = RunTracker(
        settings, KeptEpoch(0, W0, b0, S.clone()), number=number, on_epoch=on_epoch
    )

    # the selection rows' cells, once: every epoch scores its heads on them
    selection = Cells.of(selection_cells, annotated.n_cells, selection_weight.to(S.dtype))

    def selection_scores(logits):
        return _cell_scores(logits[selection_rows], selection_y, selection)

    # logits of the current head on every held-out row: scored in (d), mined in the next (a)
    logits = torch.addmm(b, annotated_X, W.T)
    # with the comparison, epoch 0 (the start head, the least edited of all)
    # competes too: a run never ends worse on its selection rows than it started
    if settings.compare_unedited and torch.isfinite(logits[selection_rows]).all():
        tracker.offer(selection_scores(logits), KeptEpoch(0, W, b, S))
    for epoch in range(1, tracker.last_epoch + 1):
        # (a) hard set under the current head (none is needed without edits)
        if settings.outer_steps:
            losses = _per_row_cross_entropy(logits[shaping_rows], shaping_y)
            hard, hard_weight = select_hard_set(
                losses,
                shaping_cells,
                annotated.n_hard_set_cells,
                settings.hard_set_size,
                shaping_weight,
            )
            H = annotated_X[shaping_index[hard]]
            Y_hard = _one_hot(shaping_y[hard], W0.shape[0], annotated_X.dtype)
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
                inner_lr=steps.inner_lr,
                inner_steps=settings.inner_steps,
                support_weight=support.loss_weight,
                head_l2=settings.head_l2,
                hard_weight=hard_weight,
            )
            if not (
                torch.isfinite(outer_loss)
                and _clipped_support_step(
                    S, grad_S, support.mass, support_optimizer, settings.max_grad_norm
                )
            ):
                tracker.diverged = True
                break
            outer_losses.append(float(outer_loss))
        if tracker.diverged:
            break

        # (c) head update on the edited (detached) support set
        _update_head(S, Y_support, W, b, support.loss_weight, head_optimizer, settings)
        logits = torch.addmm(b, annotated_X, W.T)
        if not torch.isfinite(logits[selection_rows]).all():
            tracker.diverged = True
            break

        # (d) model selection on the held-out rows, among the edited and the unedited head
        scores = selection_scores(logits)
        unedited_scores = None
        if compare_unedited:
            unedited = (S_unedited, Y_support, W_unedited, b_unedited, support.loss_weight)
            _update_head(*unedited, unedited_optimizer, settings)
            unedited_logits = torch.addmm(b_unedited, annotated_X, W_unedited.T)
            if torch.isfinite(unedited_logits[selection_rows]).all():
                unedited_scores = selection_scores(unedited_logits)
        outer_loss = sum(outer_losses) / len(outer_losses) if outer_losses else None
        tracker.record(EpochRecord(number, epoch, scores, unedited_scores, outer_loss))
        improved = tracker.offer(scores, KeptEpoch(epoch, W, b, S, edited=True))
        if unedited_scores is not None:
            control = KeptEpoch(epoch, W_unedited, b_unedited, S_unedited)
            improved |= tracker.offer(unedited_scores, control)
        if not tracker.goes_on(epoch, improved):
            break
    return tracker.result(support, _row_index(selection_rows, annotated_X))
