"""The runs of a fit: their supports and step sizes, and the default path, every run's head
updates batched in one program (no support edits).
"""

from __future__ import annotations

import math

import torch

from ._losses import _one_hot
from ._optimizers import _head_optimizer
from ._scores import _batched_logits, _SelectionScores
from ._softmax import product_over_row_blocks
from ._supports import Support, SupportSource, _row_index
from ._tracker import EpochRecord, KeptEpoch, RunTracker
from ._types import HSFMSettings, RunResult


def runs_in_one_batch(settings: HSFMSettings) -> bool:
    """Whether the runs step together (:func:`_head_update_runs`): without support edits.

    With edits each run has its own hypergradient and the runs go one by one.
    """
    return settings.outer_steps == 0


def _geometry_probe(source: SupportSource, runs, head, whitening, head_lr) -> float:
    """How well a geometry suits the head updates: the runs' updates without keep-best.

    For every run, the head update alone (the runs of
    :func:`_head_update_runs`: ``n_epochs`` times ``inner_steps`` steps on the
    support as drawn, from the initial head; never more epochs, so that both
    geometries get the same budget) in standardised coordinates
    (``whitening`` None) or whitened ones (``whitening`` = ``T``); the score
    is the mean over runs of the lowest worst-group mean cross-entropy on the run's
    selection rows, rows that did not shape it. The source's held-out rows
    stay standardised: whitened heads are mapped back to score them. ``head_lr``: the
    step size of the geometry, from its first support, as the runs get theirs.
    """
    settings, annotated = source.settings, source.annotated
    S, Y, weight = _stacked_supports([source.draw(run, whitening) for run in runs], head)
    W, b = _batch_of(head, len(runs))
    optimizer = _head_optimizer([W, b], settings.head_update, head_lr)
    score = _SelectionScores(runs, annotated)
    best_losses = [math.inf] * len(runs)
    for _ in range(settings.n_epochs):  # every run at once, as in _head_update_runs
        _update_heads(S, Y, weight, W, b, optimizer, settings)
        logits = _batched_logits(annotated.X, W if whitening is None else W @ whitening, b)
        for number, scores in enumerate(score(logits)):
            if scores is not None:
                best_losses[number] = min(best_losses[number], scores["worst_group_loss"])
    return sum(best_losses) / len(best_losses)


def _batch_of(head, n_runs: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``n_runs`` copies of ``head`` as a batch of heads ``(runs, k, d)``, ``(runs, k)``."""
    W0, b0 = head
    return W0.expand(n_runs, *W0.shape).clone(), b0.expand(n_runs, *b0.shape).clone()


def _stacked_supports(supports: list[Support], head):
    """The runs' supports as ``(S, Y, weight)`` of shapes (runs, rows, d), (runs, rows, k), (runs, rows).

    ``k``: the classes of ``head``. Shorter supports are padded with zero rows
    of zero loss weight, which add nothing to a head's gradient.
    """
    n_rows = max(support.rows.shape[0] for support in supports)
    n_classes = head[0].shape[0]
    first = supports[0].rows
    S = first.new_zeros(len(supports), n_rows, first.shape[1])
    Y = first.new_zeros(len(supports), n_rows, n_classes)
    weight = first.new_zeros(len(supports), n_rows)
    for run, support in enumerate(supports):
        rows = support.rows.shape[0]
        S[run, :rows] = support.rows
        Y[run, :rows] = _one_hot(support.labels, n_classes, first.dtype)
        weight[run, :rows] = support.loss_weight
    return S, Y, weight


CACHED_SUPPORT_BYTES = 2**24
"""Runs whose supports together take at most this many bytes make their inner steps together.

A head step reads its whole support twice (logits, gradient). Runs that
step together stream all their supports from memory at every step; a group
that fits in a processor's cache reads them from there after its first step
(docs/decisions.md). Each run's
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
            if settings.head_l2:
                grad_W.add_(W_group, alpha=settings.head_l2)
            group_optimizer.step([grad_W, residual.sum(1)])
    optimizer.steps += settings.inner_steps


def _head_update_runs(
    supports: list[Support], runs, annotated, head, settings, head_lr: float, on_epoch=None
) -> list[RunResult]:
    """Every run without support edits (``outer_steps=0``), as one batched program.

    Runs are a leading batch dimension: each head takes its ``inner_steps``
    per epoch on its own support, all heads at once, and is scored on its
    run's selection rows. A run that stops (its :class:`RunTracker` says so,
    or non-finite logits) leaves the batch with its kept epoch, so the others
    do not carry it. The same runs as :func:`_bilevel_run` with
    ``outer_steps=0``, to rounding.
    """
    S, Y, weight = _stacked_supports(supports, head)
    W, b = _batch_of(head, len(runs))
    optimizer = _head_optimizer([W, b], settings.head_update, head_lr)
    score = _SelectionScores(runs, annotated)
    batch = list(range(len(runs)))  # the runs still in the batch, by number
    start = KeptEpoch(0, *head)
    trackers = [RunTracker(settings, start, number=number, on_epoch=on_epoch) for number in batch]
    if settings.compare_unedited:  # epoch 0, the start head, competes as in _bilevel_run
        logits = _batched_logits(annotated.X, W, b)
        for position, scores in enumerate(score(logits)):
            if scores is not None:
                trackers[position].offer(scores, KeptEpoch(0, W[position], b[position]))
    for epoch in range(1, trackers[0].last_epoch + 1):
        _update_heads(S, Y, weight, W, b, optimizer, settings)
        logits = _batched_logits(annotated.X, W, b)
        going = []
        for position, scores in enumerate(score(logits)):
            tracker = trackers[batch[position]]
            if scores is None:
                tracker.diverged = True
                continue
            tracker.record(EpochRecord(tracker.number, epoch, scores))
            trained = KeptEpoch(epoch, W[position], b[position], edited=True)
            if tracker.goes_on(epoch, tracker.offer(scores, trained)):
                going.append(position)
        if not going:
            break
        if len(going) < len(batch):  # stopped runs leave the batch
            index = torch.tensor(going, device=S.device)
            S, Y, weight, W, b = S[index], Y[index], weight[index], W[index], b[index]
            optimizer = optimizer.subset(index, [W, b])
            score = score.subset(index)
            batch = [batch[position] for position in going]
    return [
        tracker.result(support, _row_index(run.selection_rows, annotated.X))
        for tracker, run, support in zip(trackers, runs, supports, strict=True)
    ]
