"""A run's support set, the head update on it and the step sizes, shared by both kinds of run."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

from ._losses import _row_weights, softmax_head_gradient
from ._types import AnnotatedRows, HSFMSettings, Rows, RunRows


def inner_lr_from_lipschitz(
    S: torch.Tensor,
    scale: float = 1.0,
    support_weight: torch.Tensor | None = None,
    n_power_iter: int = 50,
    head_l2: float = 0.0,
) -> float:
    """``scale / L`` for the Lipschitz constant ``L`` of the support loss's gradient.

    For the (weighted) mean softmax cross-entropy of a linear head, the Hessian
    is bounded by ``||diag(sqrt(w)) [S, 1]||_2^2 / 2`` (the softmax Jacobian has
    norm at most 1/2; ``w = 1/n`` for a plain mean), so a step of ``1 / L`` is a
    safe gradient-descent step whatever the scale of the features; weight decay
    adds ``head_l2`` to ``L``. The spectral norm comes from a deterministic
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
    lipschitz = float(sigma_sq) / 2.0 + head_l2
    return scale / max(lipschitz, 1e-12)


@dataclass(frozen=True)
class Support:
    """A run's support set as drawn: its rows, their class codes, which rows of the
    source they are (``index``), their loss weights (summing to one) and the sample
    weight taken from each (``mass``)."""

    rows: torch.Tensor
    labels: torch.Tensor
    index: torch.Tensor
    loss_weight: torch.Tensor
    mass: torch.Tensor

    def transformed(self, transform: torch.Tensor) -> Support:
        """The same support, its rows times ``transform`` (a new tensor)."""
        return dataclasses.replace(self, rows=self.rows @ transform)


@dataclass(frozen=True)
class StepSizes:
    """The step sizes of a fit's runs: the inner loop's (the map the support is
    edited through) and the head update's."""

    inner_lr: float
    head_lr: float


def _step_sizes(support: Support, settings: HSFMSettings) -> StepSizes:
    """Inner and head step sizes, from a support set when ``inner_lr`` is None."""
    if settings.inner_lr is None:
        inner_lr = inner_lr_from_lipschitz(
            support.rows, 1.0, support.loss_weight, head_l2=settings.head_l2
        )
    else:
        inner_lr = float(settings.inner_lr)
    return StepSizes(inner_lr, inner_lr if settings.head_lr is None else float(settings.head_lr))


def _support(run: RunRows, pool: Rows, annotated: AnnotatedRows, settings: HSFMSettings) -> Support:
    """A run's initial support, its rows a new tensor (edits change it in place).

    From the pool: loss weights proportional to the rows' masses (equal for
    unit sample weights). From the annotated rows: every (class, group) cell
    counts equally, rows within a cell by their masses.
    """
    index, mass = run.support_index, run.support_mass
    if settings.support_source == "annotated":
        weight = _cell_balanced(mass, annotated.cells[index], annotated.n_cells)
        return Support(annotated.X[index], annotated.y[index], index, weight, mass)  # a gather: new
    return Support(pool.X[index], pool.y[index], index, mass / mass.sum(), mass)


def _cell_balanced(mass: torch.Tensor, cells: torch.Tensor, n_cells: int) -> torch.Tensor:
    """Loss weights summing to one: every present cell counts equally, rows within it by mass."""
    cell_mass = torch.bincount(cells, weights=mass, minlength=n_cells)
    return mass / (cell_mass[cells] * (cell_mass > 0).sum())


def _update_head(S, Y_support, W, b, support_weight, optimizer, settings) -> None:
    """Step (c): ``inner_steps`` optimiser steps of the head on the (detached) support."""
    for _ in range(settings.inner_steps):
        _, grad_W, grad_b = softmax_head_gradient(S, Y_support, W, b, support_weight)
        if settings.head_l2:
            grad_W.add_(W, alpha=settings.head_l2)
        optimizer.step([grad_W, grad_b])


def _row_index(rows: slice | torch.Tensor, X: torch.Tensor) -> torch.Tensor:
    """``rows`` (a slice or an index tensor) of ``X`` as an index tensor."""
    if isinstance(rows, slice):
        return torch.arange(X.shape[0], device=X.device)[rows]
    return rows


@dataclass(frozen=True)
class SupportSource:
    """Where the runs draw their supports from: the pool, or the annotated rows
    (``settings.support_source``)."""

    pool: Rows
    annotated: AnnotatedRows
    settings: HSFMSettings

    def draw(self, run: RunRows, transform: torch.Tensor | None = None) -> Support:
        """:func:`_support` of ``run``, its rows times ``transform`` when one is given."""
        support = _support(run, self.pool, self.annotated, self.settings)
        return support if transform is None else support.transformed(transform)
