"""The orchestrator: one HSFM fit on standardised rows, stage by stage."""

from __future__ import annotations

import functools
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
from ._geometry import _transform_rows, _unwhiten, whitening_transform
from ._losses import fit_softmax_head
from ._runs import _head_update_runs, _report_run, _unedited_probe, runs_in_one_batch
from ._scores import _batched_logits
from ._supports import _step_sizes, _support
from ._types import HeldoutRows, HSFMResult, HSFMSettings, Rows, RunRows


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
