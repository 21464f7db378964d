"""Per-cell scores of heads on held-out rows: accuracy and loss by (class, group) cell.

Every per-cell reduction of the core goes through :class:`Cells`: a weighted
sum per cell is one product of the rows' weighted values with the cells'
indicators, for one head or a batch of them (a leading axis).
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import torch

from ._types import AnnotatedRows, RunRows

_SCORES = ("worst_group_accuracy", "average_accuracy", "heldout_loss", "worst_group_loss")


@dataclass(frozen=True)
class Cells:
    """The (class, group) cells of a set of rows, and the rows' weights.

    ``indicators``: one-hot, (rows, n_cells); ``weight``: (..., rows), a
    leading axis where runs weigh the rows differently (zero: not the run's
    row); ``totals``: each cell's weight, (..., n_cells).
    """

    indicators: torch.Tensor
    weight: torch.Tensor
    totals: torch.Tensor

    @classmethod
    def of(cls, cells: torch.Tensor, n_cells: int, weight: torch.Tensor) -> Cells:
        indicators = torch.nn.functional.one_hot(cells, n_cells).to(weight.dtype)
        return cls(indicators, weight, weight @ indicators)

    @property
    def present(self) -> torch.Tensor:
        """The cells with weight."""
        return self.totals > 0

    def sums(self, weighted_values: torch.Tensor) -> torch.Tensor:
        """Per-cell sums of values already times :attr:`weight`: (..., rows) -> (..., n_cells)."""
        return weighted_values @ self.indicators

    def worst_accuracy(self, weighted_correct: torch.Tensor) -> torch.Tensor:
        """The lowest weighted accuracy of a present cell (``weighted_correct``: correct x weight)."""
        return torch.where(self.present, self.sums(weighted_correct) / self.totals, math.inf).amin(
            -1
        )

    def worst_mean(self, weighted_losses: torch.Tensor) -> torch.Tensor:
        """The highest weighted mean of a present cell (``weighted_losses``: losses x weight)."""
        means = self.sums(weighted_losses) / self.totals
        return torch.where(self.present, means, -math.inf).amax(-1)


def _scores_of(logits: torch.Tensor, y: torch.Tensor, cells: Cells, rows=None) -> torch.Tensor:
    """The :data:`_SCORES` of a batch of heads, shape (4, runs), from logits (runs, rows, k).

    ``rows`` (bool, (runs, rows)) marks each head's rows where not all are:
    the others count zero even where their logits overflow.
    """
    weight = cells.weight
    losses = -torch.log_softmax(logits, 2).gather(2, y.expand(logits.shape[0], -1)[:, :, None])
    losses = losses[:, :, 0] * weight
    if rows is not None:
        losses = torch.where(rows, losses, 0.0)
    correct = (logits.argmax(2) == y).to(weight.dtype) * weight
    total = weight.sum(-1)
    return torch.stack(
        [
            cells.worst_accuracy(correct),
            correct.sum(-1) / total,
            losses.sum(-1) / total,
            cells.worst_mean(losses),
        ]
    )


def _group_scores(
    logits: torch.Tensor,
    y: torch.Tensor,
    groups: torch.Tensor,
    n_groups: int,
    weight: torch.Tensor | None = None,
) -> dict[str, float]:
    """Worst-group and average accuracy, mean and worst-group mean cross-entropy of one head.

    Means are weighted by ``weight`` (sample weights) when given.
    """
    if weight is None:
        weight = torch.ones(y.shape[0], dtype=logits.dtype, device=logits.device)
    return _cell_scores(logits, y, Cells.of(groups, n_groups, weight.to(logits.dtype)))


def _cell_scores(logits: torch.Tensor, y: torch.Tensor, cells: Cells) -> dict[str, float]:
    """:func:`_group_scores` of one head on rows whose :class:`Cells` are built once."""
    return dict(zip(_SCORES, _scores_of(logits[None], y, cells)[:, 0].tolist(), strict=True))


def _selection_score(scores: dict[str, float], metric: str) -> tuple[float, float]:
    """Sort key of an epoch under ``metric``: larger is better."""
    if metric == "worst_group_loss":
        return (-scores["worst_group_loss"], scores["worst_group_accuracy"])
    return (scores["worst_group_accuracy"], -scores["heldout_loss"])


def _batched_logits(X: torch.Tensor, W: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Logits (runs, rows, k) of every head of the batch on the rows ``X``: one product."""
    n_runs, n_classes, n_features = W.shape
    logits = (X @ W.reshape(n_runs * n_classes, n_features).T).reshape(-1, n_runs, n_classes)
    return logits.transpose(0, 1) + b[:, None, :]


class _SelectionScores:
    """:func:`_group_scores` of a batch of heads, each on its run's selection rows."""

    def __init__(self, runs: list[RunRows], annotated: AnnotatedRows):
        n_rows = annotated.y.shape[0]
        self.mask = torch.zeros(len(runs), n_rows, dtype=torch.bool, device=annotated.y.device)
        for number, run in enumerate(runs):
            self.mask[number, run.selection_rows] = True
        self.cells = Cells.of(annotated.cells, annotated.n_cells, annotated.weight * self.mask)
        self.y = annotated.y

    def subset(self, index: torch.Tensor) -> _SelectionScores:
        """The scores of the runs ``index`` of this batch only."""
        subset = copy.copy(self)
        weight, indicators = self.cells.weight[index], self.cells.indicators
        subset.mask, subset.cells = self.mask[index], Cells(indicators, weight, weight @ indicators)
        return subset

    def __call__(self, logits: torch.Tensor) -> list[dict[str, float] | None]:
        """Each run's scores; None for a run whose logits on its selection rows are not finite."""
        scores = _scores_of(logits, self.y, self.cells, self.mask)
        finite = (torch.isfinite(logits).all(2) | ~self.mask).all(1).tolist()
        return [
            dict(zip(_SCORES, run_scores, strict=True)) if run_finite else None
            for run_finite, run_scores in zip(finite, scores.T.tolist(), strict=True)
        ]
