"""Per-cell scores of heads on held-out rows: accuracy and loss by (class, group) cell."""

from __future__ import annotations

import copy
import math

import torch

from ._losses import _per_row_cross_entropy
from ._types import HeldoutRows, RunRows

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
