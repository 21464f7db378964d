"""Candidate heads: group-balanced logistic regressions, how they are scored, and the rule
that lets the runs' heads replace the best of them.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from ._scores import Cells, _cell_scores, _group_scores
from ._softmax import head_as_tensors, problem_of_tensors, regression_paths
from ._supports import SupportSource, _cell_balanced
from ._types import AnnotatedRows, HeadChoice, RunRows, Verdict

BALANCED_L2_PATH = (100.0, 10.0, 1.0, 0.1, 0.01, 0.001)
"""L2 strengths of the balanced heads (on a support loss of total weight one), strong to weak.

The best strength can lie far out in either direction (unit-norm text
embeddings of 1536 dimensions want a strong one on isotropic features), so
the path spans five decades, a fit per decade (as ``LogisticRegressionCV``'s
grid); fitted strong to weak, each fit warm-starts the next.
"""


CALIBRATION_TEMPERATURES = tuple(float(2.0**exponent) for exponent in np.arange(-3, 3.01, 0.5))
"""Temperatures a candidate's logits are divided by before its loss is compared (the best counts)."""


def candidate_score(run_logits, runs, annotated: AnnotatedRows) -> dict[str, float]:
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
        y, weight = annotated.y[rows], annotated.weight[rows].to(logits.dtype)
        run_cells = Cells.of(annotated.cells[rows], annotated.n_cells, weight)
        accuracy += _cell_scores(logits, y, run_cells)["worst_group_accuracy"]
        scaled = logits[None] / temperatures.to(logits.device)[:, None, None]
        losses = torch.logsumexp(scaled, 2) - scaled[:, torch.arange(y.shape[0]), y]
        # the worst cell's weighted mean loss at every temperature at once
        loss += run_cells.worst_mean(losses * weight).cpu()
    return {
        "worst_group_accuracy": accuracy / len(runs),
        "worst_group_loss": float(loss.min()) / len(runs),
    }


def _rank(score: dict[str, float]) -> tuple[float, float]:
    """Sort key of a :func:`candidate_score`: smaller is better."""
    return (-score["worst_group_accuracy"], score["worst_group_loss"])


def balanced_paths(
    source: SupportSource,
    runs: list[RunRows],
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
    paths = {name: [] for name in geometries}
    for run in runs:
        support = source.draw(run)
        S = support.rows
        # every geometry's path from the one support: they share its passes
        problem = problem_of_tensors(
            S, support.labels, support.loss_weight, n_classes, list(geometries.values())
        )
        fits = regression_paths(problem, BALANCED_L2_PATH)
        weights, biases = [], []
        for factor, heads in zip(geometries.values(), fits, strict=True):
            for head in heads:
                W, b = head_as_tensors(head, S)
                weights.append(W if factor is None else W * factor)  # standardised coordinates
                biases.append(b)
        # every head of the run in one pass over the held-out rows, then its selection rows
        logits = torch.addmm(torch.cat(biases), source.annotated.X, torch.cat(weights).T)
        logits = logits[run.selection_rows].split(n_classes, dim=1)
        for number, name in enumerate(geometries):
            steps = len(BALANCED_L2_PATH)
            paths[name].append(list(logits[number * steps : (number + 1) * steps]))
    return paths


def best_balanced(paths: dict[str, list[list[torch.Tensor]]], runs, annotated) -> HeadChoice:
    """The balanced geometry and L2 strength with the best score on the runs' selection rows.

    Every candidate is scored on the same selection rows of the same runs
    (:func:`candidate_score`), rows none of them was fitted on.
    """
    choice = HeadChoice(scores={})
    for name, run_logits in paths.items():
        step_scores = [
            candidate_score([logits[step] for logits in run_logits], runs, annotated)
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


def _worst_cell_outcomes(run_logits, incumbent_logits, runs, annotated: AnnotatedRows):
    """Per run, on the incumbent's worst (class, group) cell of the run's selection rows:
    ``(weight, challenger_correct, incumbent_correct)`` of its rows (float64)."""
    outcomes = []
    for challenger, incumbent, run in zip(run_logits, incumbent_logits, runs, strict=True):
        rows = run.selection_rows
        y, cells, weight = annotated.y[rows], annotated.cells[rows], annotated.weight[rows].double()
        incumbent_correct = (incumbent.argmax(1) == y).double()
        run_cells = Cells.of(cells, annotated.n_cells, weight)
        accuracy = torch.where(
            run_cells.present,
            run_cells.sums(incumbent_correct * weight) / run_cells.totals,
            math.inf,
        )
        in_cell = cells == int(accuracy.argmin())
        challenger_correct = (challenger.argmax(1) == y).double()
        outcomes.append((weight[in_cell], challenger_correct[in_cell], incumbent_correct[in_cell]))
    return outcomes


def _paired_standard_error(outcomes) -> float:
    """Standard error of a challenger's worst-group accuracy minus an incumbent's, over runs.

    From :func:`_worst_cell_outcomes`. Paired, on the rows both heads are
    scored on: in every run, on the incumbent's worst (class, group) cell of
    the run's selection rows, the weighted mean of ``correct(challenger) -
    correct(incumbent)`` per row has the variance ``sum w^2 (d - mean d)^2 /
    (sum w)^2``. The two runs of a split are scored on disjoint rows, but
    every split re-uses the same annotated rows, so the splits count as one
    measurement: the variance of the mean over runs is the runs' mean
    variance over two.
    """
    variances = []
    for w, challenger, incumbent in outcomes:
        difference = challenger - incumbent
        centred = difference - (w * difference).sum() / w.sum()
        variances.append(float((w.square() * centred.square()).sum() / w.sum().square()))
    return math.sqrt(sum(variances) / len(variances) / 2)


def _sign_test_tail(outcomes) -> float:
    """Chance of the challenger's lead on the rows where the two heads disagree, were it luck.

    From :func:`_worst_cell_outcomes`: on the incumbent's worst cell of each
    run's selection rows, ``b`` rows are right by the challenger only and
    ``c`` by the incumbent only (sample weights as copies; summed over runs
    and divided by the splits, which re-use the same rows). The exact
    one-sided sign test: the chance that ``b + c`` fair coins give ``b`` or
    more heads, ``I_(1/2)(b, c + 1)``; 1 when ``b`` is 0. A lead of one or
    two rows is at best 0.5 or 0.25 whatever the cell's size, where the
    standard error's normal approximation, on a cell of a dozen rows, calls
    it one standard error or more.
    """
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


def weigh_challenger(
    challenger: list[torch.Tensor],
    incumbent: list[torch.Tensor],
    runs: list[RunRows],
    annotated: AnnotatedRows,
) -> Verdict:
    """A challenger head against an incumbent, by their logits on every run's selection rows."""
    run_leads = []
    for pair, run in zip(zip(challenger, incumbent, strict=True), runs, strict=True):
        rows = run.selection_rows
        y, cells, weight = annotated.y[rows], annotated.cells[rows], annotated.weight[rows]
        ours, theirs = (
            _group_scores(logits, y, cells, annotated.n_cells, weight)["worst_group_accuracy"]
            for logits in pair
        )
        run_leads.append(ours - theirs)
    outcomes = _worst_cell_outcomes(challenger, incumbent, runs, annotated)  # once for both
    return Verdict(
        lead=sum(run_leads) / len(run_leads),
        margin=_paired_standard_error(outcomes),
        tail=_sign_test_tail(outcomes),
        weakest_run_lead=min(run_leads),
    )


def refit_balanced(
    choice: HeadChoice,
    runs: list[RunRows],
    annotated: AnnotatedRows,
    n_classes: int,
    isotropic_factor: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The chosen balanced head, refitted on every annotated row (standardised coordinates).

    As ``LogisticRegressionCV`` refits: the strength was chosen for a run's
    support, about half the annotated rows; the penalty is scaled by the
    ratio of that support's sample weight to all the annotated rows', the
    same strength per row of data. Every (class, group) cell weighs the same.
    """
    row_weight = _cell_balanced(annotated.weight, annotated.cells, annotated.n_cells)
    support_mass = sum(float(run.support_mass.sum()) for run in runs) / len(runs)
    l2 = choice.balanced_l2 * support_mass / float(annotated.weight.sum())
    factor = isotropic_factor if choice.chosen == "balanced_isotropic" else None
    X = annotated.X if factor is None else annotated.X * factor
    problem = problem_of_tensors(X, annotated.y, row_weight, n_classes)
    head, _, _ = problem.minimize(l2, problem.zeros())
    W, b = head_as_tensors(head, annotated.X)
    return (W if factor is None else W * factor), b
