"""One run's epochs, whichever loop makes them: the kept epoch, patience, history, progress.

Both kinds of run (:func:`._runs._head_update_runs`, the default batched
runs; :func:`._bilevel._bilevel_run`, the paper's support edits) offer each
epoch's head to a :class:`RunTracker`, which keeps the best one, says when
the run stops and records what progress output and ``history`` show.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from ._scores import _SCORES, _selection_score
from ._types import HSFMSettings, RunResult


@dataclass(frozen=True)
class EpochRecord:
    """What a run reports after an epoch: the progress output's one input.

    ``scores``: the epoch's head on the run's selection rows (``_SCORES``);
    ``unedited_scores``: its unedited control's (None without one, or where
    its logits were not finite); ``outer_loss``: the mean outer loss of the
    epoch's support edits (None without edits).
    """

    run: int
    epoch: int
    scores: dict[str, float]
    unedited_scores: dict[str, float] | None = None
    outer_loss: float | None = None

    @property
    def worst_group_accuracy(self) -> float:
        return self.scores["worst_group_accuracy"]

    @property
    def worst_group_loss(self) -> float:
        """The lower of the epoch's head's and its unedited control's."""
        if self.unedited_scores is None:
            return self.scores["worst_group_loss"]
        return min(self.scores["worst_group_loss"], self.unedited_scores["worst_group_loss"])


def history_columns(edits: bool) -> tuple[str, ...]:
    """The columns of a run's ``history``: the scores, and with edits the unedited
    control's scores and the outer loss."""
    if not edits:
        return _SCORES
    return (*_SCORES, *(f"unedited_{key}" for key in _SCORES), "outer_loss")


@dataclass(frozen=True)
class KeptEpoch:
    """A run's head at its best epoch so far (epoch 0: the start head).

    ``support``: the run's support at that epoch, where edits change it (None:
    the support as drawn); ``edited``: the run's ``kept_edits``, whether the
    head was trained on the run's own (edited, where edits are made) support:
    False for the start head and for the unedited control.
    """

    epoch: int
    coef: torch.Tensor
    intercept: torch.Tensor
    support: torch.Tensor | None = None
    edited: bool = False


class RunTracker:
    """Keep-best, patience and history of one run, and its progress records.

    A run makes ``n_epochs`` epochs (the paper); with ``max_epochs`` it goes
    on, up to ``max_epochs``, while one of its last ``n_iter_no_change``
    epochs improved its selection score (``selection_metric``).
    """

    def __init__(
        self,
        settings: HSFMSettings,
        start: KeptEpoch,
        *,
        number: int = 0,
        on_epoch: Callable[[EpochRecord], None] | None = None,
    ):
        self.settings, self.kept, self.number, self.on_epoch = settings, start, number, on_epoch
        self.best = (-math.inf, -math.inf)
        self.stale = 0  # epochs since the last improvement
        self.diverged = False
        self.history = {key: [] for key in history_columns(settings.outer_steps > 0)}

    @property
    def last_epoch(self) -> int:
        settings = self.settings
        return settings.n_epochs if settings.max_epochs is None else settings.max_epochs

    def offer(self, scores: dict[str, float], candidate: KeptEpoch) -> bool:
        """Keep ``candidate`` (copied) if it beats the kept epoch; whether it did."""
        key = _selection_score(scores, self.settings.selection_metric)
        if not key > self.best:
            return False
        self.best = key
        support = None if candidate.support is None else candidate.support.clone()
        self.kept = KeptEpoch(
            candidate.epoch,
            candidate.coef.clone(),
            candidate.intercept.clone(),
            support,
            candidate.edited,
        )
        return True

    def record(self, record: EpochRecord) -> None:
        """Add the epoch to the history and report it."""
        unedited = record.unedited_scores
        row = dict(record.scores)
        if "outer_loss" in self.history:
            row |= {
                f"unedited_{key}": math.nan if unedited is None else unedited[key]
                for key in _SCORES
            }
            row["outer_loss"] = math.nan if record.outer_loss is None else record.outer_loss
        for key, values in self.history.items():
            values.append(row[key])
        if self.on_epoch is not None:
            self.on_epoch(record)

    def goes_on(self, epoch: int, improved: bool) -> bool:
        """After ``epoch``: whether the run makes another (past ``n_epochs``, only while
        its best epoch is recent)."""
        self.stale = 0 if improved else self.stale + 1
        return epoch < self.settings.n_epochs or self.stale < self.settings.n_iter_no_change

    def result(self, support, selection_index: torch.Tensor) -> RunResult:
        """The run's :class:`RunResult`: its kept epoch, on ``support`` (a ``Support``)."""
        kept, settings = self.kept, self.settings
        return RunResult(
            coef=kept.coef,
            intercept=kept.intercept,
            support_edited=support.rows if kept.support is None else kept.support,
            support_labels=support.labels,
            support_index=support.index,
            selection_index=selection_index,
            best_epoch=kept.epoch,
            history=self.history,
            diverged=self.diverged,
            kept_edits=kept.edited,
            # a run cut short at max_epochs while its selection score still improves
            still_improving=(
                settings.max_epochs is not None
                and not self.diverged
                and kept.epoch == settings.max_epochs > settings.n_epochs
            ),
        )
