"""The orchestrator: one HSFM fit on standardised rows, stage by stage."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import torch

from ._bilevel import _bilevel_run
from ._candidates import (
    HeadChoice,
    balanced_paths,
    best_balanced,
    candidate_score,
    refit_balanced,
    weigh_challenger,
)
from ._geometry import _transformed_rows, _unwhiten, whitening_transform
from ._losses import fit_softmax_head
from ._runs import _geometry_probe, _head_update_runs, runs_in_one_batch
from ._scores import _batched_logits
from ._supports import StepSizes, SupportSource, _step_sizes
from ._tracker import EpochRecord
from ._types import AnnotatedRows, HSFMResult, HSFMSettings, Rows, RunRows


def fit_hsfm(
    pool: Rows,
    annotated: AnnotatedRows,
    runs: list[RunRows],
    settings: HSFMSettings,
    *,
    n_classes: int,
    erm_l2: float,
    initial_head: tuple[torch.Tensor, torch.Tensor] | None = None,
    isotropic_factor: torch.Tensor | None = None,
    covariance_rows: tuple[torch.Tensor, torch.Tensor] | None = None,
    on_epoch: Callable[[EpochRecord], None] | None = None,
    release_pool: bool = False,
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
        support set, for ``"pool"``).
    annotated : AnnotatedRows
        Held-out rows, standardised. No input is changed: a whitened fit
        works on a whitened copy of the held-out rows.
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
    release_pool : bool
        Release the storage of ``pool.X`` (``Tensor.set_()``) once the ERM head
        and the whitening no longer need it, with annotated supports: for a
        caller that hands over rows it will not use again (a large pool is
        most of a fit's memory). False: no input is changed.
    """
    source = SupportSource(pool, annotated, settings)
    initial_head, erm_converged = _initial_head(pool, settings, n_classes, erm_l2, initial_head)
    balanced = _balanced_candidate(source, runs, n_classes, isotropic_factor)
    whitening = _whitening(pool, settings, covariance_rows)
    standardised_steps = probe_scores = None
    if whitening is not None and settings.choose_whitening:
        # the standardised geometry's steps serve the probe and, if it wins, the runs
        standardised_steps = _step_sizes(source.draw(runs[0]), settings)
        probe_scores = _probe_geometries(source, runs, initial_head, whitening, standardised_steps)
        if not probe_scores["whitened"] < probe_scores["standardised"]:
            whitening = None
    if release_pool and settings.support_source == "annotated":
        pool.X.set_()  # served its purpose; the runs draw from the annotated rows
    if whitening is not None:
        # the runs work in whitened coordinates; heads and supports are mapped back at the end
        annotated = dataclasses.replace(annotated, X=_transformed_rows(annotated.X, whitening))
        source = SupportSource(pool, annotated, settings)
    results, steps = _run_all(
        source,
        runs,
        _head_in(initial_head, whitening),
        whitening,
        standardised_steps if whitening is None else None,
        on_epoch,
    )
    choice = _choose(balanced, results, runs, annotated)
    if whitening is not None:
        _map_back(results, whitening)
    if choice.head is None:  # the runs' mean head
        coef = torch.stack([r.coef for r in results]).mean(0)
        intercept = torch.stack([r.intercept for r in results]).mean(0)
    else:
        coef, intercept = choice.head
    return HSFMResult(
        coef=coef,
        intercept=intercept,
        initial_coef=initial_head[0],
        initial_intercept=initial_head[1],
        inner_lr=steps.inner_lr,
        head_lr=steps.head_lr,
        runs=results,
        support_from_annotated=settings.support_source == "annotated",
        whitened=whitening is not None,
        probe_scores=probe_scores,
        erm_converged=erm_converged,
        choice=choice,
    )


def _initial_head(pool: Rows, settings: HSFMSettings, n_classes: int, erm_l2: float, given):
    """The head the runs start from, ``given`` or the ERM head on the pool: ``(head, converged)``."""
    if given is not None:
        return given, True
    row_weight = pool.weight / pool.weight.sum()
    if settings.erm_class_factor is not None:
        factor = torch.tensor(settings.erm_class_factor, dtype=pool.weight.dtype)
        row_weight = pool.weight * factor.to(pool.weight.device)[pool.y]
        row_weight = row_weight / row_weight.sum()
    W, b, converged = fit_softmax_head(pool.X, pool.y, n_classes, l2=erm_l2, row_weight=row_weight)
    return (W, b), converged


def _balanced_candidate(source: SupportSource, runs, n_classes: int, isotropic_factor):
    """The best group-balanced head, refitted on every annotated row (None where not weighed).

    In standardised coordinates: drawn before any whitening.
    """
    settings, annotated = source.settings, source.annotated
    if not (settings.balanced_candidates and settings.support_source == "annotated"):
        return None
    if len(runs) < 2:
        return None
    paths = balanced_paths(source, runs, n_classes, isotropic_factor)
    balanced = best_balanced(paths, runs, annotated)
    balanced.head = refit_balanced(balanced, runs, annotated, n_classes, isotropic_factor)
    return balanced


def _whitening(pool: Rows, settings: HSFMSettings, covariance_rows):
    """The whitening transform of the pool's covariance, or None without ``whitening_ridge``."""
    if settings.whitening_ridge is None:
        return None
    if covariance_rows is None:
        weight = pool.weight / pool.weight.sum()
        return whitening_transform(pool.X, settings.whitening_ridge, weight)
    index, weight = covariance_rows
    return whitening_transform(pool.X[index], settings.whitening_ridge, weight / weight.sum())


def _head_in(head, whitening):
    """A head in standardised coordinates, or in whitened ones."""
    return head if whitening is None else (_unwhiten(head[0], whitening), head[1])


def _probe_geometries(source, runs, head, whitening, standardised_steps: StepSizes):
    """:func:`_geometry_probe` of both geometries, on the same support draws as the runs."""
    whitened_steps = _step_sizes(source.draw(runs[0], whitening), source.settings)
    return {
        geometry: _geometry_probe(source, runs, _head_in(head, transform), transform, steps.head_lr)
        for geometry, transform, steps in (
            ("standardised", None, standardised_steps),
            ("whitened", whitening, whitened_steps),
        )
    }


def _run_all(source, runs, head, whitening, steps: StepSizes | None, on_epoch):
    """Every run from ``head``: batched without edits, one by one with them.

    ``steps``: the step sizes when known, else from the first run's support.
    Returns the runs' results and the steps they used.
    """
    settings = source.settings
    # pool supports are whitened as drawn (a copy); annotated ones come from the whitened rows
    transform = whitening if settings.support_source == "pool" else None
    if runs_in_one_batch(settings):
        supports = [source.draw(run, transform) for run in runs]
        steps = steps or _step_sizes(supports[0], settings)
        results = _head_update_runs(
            supports, runs, source.annotated, head, settings, steps.head_lr, on_epoch
        )
        return results, steps
    results = []
    for number, run in enumerate(runs):
        support = source.draw(run, transform)
        steps = steps or _step_sizes(support, settings)  # the first run's, for every run
        results.append(
            _bilevel_run(
                support,
                run,
                source.annotated,
                head,
                settings,
                steps,
                number=number,
                on_epoch=on_epoch,
            )
        )
    return results, steps


def _choose(balanced, results, runs, annotated) -> HeadChoice:
    """The runs' mean head against the best balanced one (:func:`weigh_challenger`)."""
    if balanced is None:
        return HeadChoice()
    # the runs' heads and the rows are in the same coordinates here: their logits are right
    every_row = _batched_logits(  # every run's head in one pass over the held-out rows
        annotated.X,
        torch.stack([r.coef for r in results]),
        torch.stack([r.intercept for r in results]),
    )
    run_logits = [logits[run.selection_rows] for logits, run in zip(every_row, runs, strict=True)]
    scores = {"runs": candidate_score(run_logits, runs, annotated), **balanced.scores}
    verdict = weigh_challenger(run_logits, balanced.run_logits, runs, annotated)
    if verdict.challenger_wins:
        return HeadChoice(scores=scores, verdict=verdict)
    return dataclasses.replace(balanced, scores=scores, verdict=verdict, run_logits=None)


def _map_back(results, whitening) -> None:
    """The runs' heads and edited supports from whitened to standardised coordinates.

    ``logits = X T W^T = X (W T)^T``: heads map back by ``T``, supports by ``T^-1``.
    """
    sizes = [len(r.support_edited) for r in results]  # one solve for every run's support
    edited = _unwhiten(torch.cat([r.support_edited for r in results]), whitening).split(sizes)
    for r, support in zip(results, edited, strict=True):
        r.coef, r.support_edited = r.coef @ whitening, support
