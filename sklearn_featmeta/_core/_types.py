"""What the core takes and returns: settings, rows, runs and results (dataclasses)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


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
    ``head_l2`` adds ``head_l2 / 2 * ||W||^2`` (not the bias) to the
    support loss of both the inner loop and the head update (0 in the paper).
    ``whitening_ridge`` (None in the paper) whitens the standardised features
    before the runs (:func:`whitening_transform`); with ``choose_whitening``
    they are whitened only where that scores better on held-out rows
    (:func:`._runs._geometry_probe`). With ``balanced_candidates`` (cross-fitted
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
    head_l2: float
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
class AnnotatedRows(Rows):
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
    """One run: the selected head ``(coef, intercept)`` and support, in standardised space."""

    coef: torch.Tensor
    intercept: torch.Tensor
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
        return len(self.history["worst_group_accuracy"])


@dataclass
class HSFMResult:
    """What :func:`fit_hsfm` returns; heads and supports in the coordinates it was given.

    ``coef`` and ``intercept``: the fitted head (the mean of the runs'
    selected heads, or the chosen balanced head); ``initial_coef`` and
    ``initial_intercept``: the head the runs started from.
    """

    coef: torch.Tensor
    intercept: torch.Tensor
    initial_coef: torch.Tensor
    initial_intercept: torch.Tensor
    inner_lr: float
    head_lr: float
    runs: list[RunResult]
    support_from_annotated: bool
    whitened: bool = False
    probe_scores: dict[str, float] | None = None  # with choose_whitening: geometry -> score
    erm_converged: bool = True
    choice: HeadChoice | None = None

    @property
    def diverged(self) -> bool:
        return any(run.diverged for run in self.runs)


ONE_STANDARD_ERROR_TAIL = 0.5 * math.erfc(1 / math.sqrt(2))
"""One-sided tail of a normal beyond one standard deviation (about 0.159)."""


@dataclass(frozen=True)
class Verdict:
    """How a challenger head fared against an incumbent on the runs' selection rows.

    The challenger is the runs' heads, the incumbent the best balanced
    head. ``lead``: its mean
    worst-group accuracy minus the incumbent's;
    ``margin``: its standard error (:func:`._candidates._paired_standard_error`);
    ``tail``: :func:`._candidates._sign_test_tail`; ``weakest_run_lead``: the
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
