"""The runs of a fit: their supports and step sizes, and the default path, every run's head
updates batched in one program (no support edits).
"""

from __future__ import annotations

import math

import torch

from ._losses import _one_hot
from ._optimizers import _head_optimizer
from ._scores import _SCORES, _batched_logits, _selection_score, _SelectionScores
from ._softmax import product_over_row_blocks
from ._supports import SupportSource, _row_index
from ._types import HSFMSettings, RunResult


def runs_in_one_batch(settings: HSFMSettings) -> bool:
    """Whether the runs step together (:func:`_head_update_runs`): without support edits.

    With edits each run has its own hypergradient and the runs go one by one.
    """
    return settings.outer_steps == 0


def _report_run(on_epoch, number: int, record: dict) -> None:
    on_epoch({"run": number, **record})


def _unedited_probe(source: SupportSource, runs, head, n_classes, whitening, head_lr) -> float:
    """How well a geometry suits the head updates, before any support edit.

    For every run, the head update alone (the unedited control of
    :func:`_bilevel_run`: ``n_epochs`` times ``inner_steps`` steps on the
    support as drawn, from the initial head; never more epochs, so that both
    geometries get the same budget) in standardised coordinates
    (``whitening`` None) or whitened ones (``whitening`` = ``T``); the score
    is the mean over runs of the lowest worst-group mean cross-entropy on the run's
    selection rows, rows that did not shape it. The source's held-out rows
    stay standardised: whitened heads are mapped back to score them. ``head_lr``: the
    step size of the geometry, from its first support, as the runs get theirs.
    """
    settings, heldout = source.settings, source.heldout
    supports = [source.draw(run, whitening) for run in runs]
    S, Y, weight = _stacked_supports(supports, n_classes)
    del supports
    W0, b0 = head
    W = W0.expand(len(runs), *W0.shape).clone()
    b = b0.expand(len(runs), *b0.shape).clone()
    optimizer = _head_optimizer([W, b], settings.head_update, head_lr)
    score = _SelectionScores(runs, heldout)
    best_losses = [math.inf] * len(runs)
    for _ in range(settings.n_epochs):  # every run at once (:func:`_head_update_runs`)
        _update_heads(S, Y, weight, W, b, optimizer, settings)
        logits = _batched_logits(heldout.X, W if whitening is None else W @ whitening, b)
        for number, scores in enumerate(score(logits)):
            if scores is not None:
                best_losses[number] = min(best_losses[number], scores["worst_group_loss"])
    return sum(best_losses) / len(best_losses)


def _stacked_supports(supports, n_classes: int):
    """The runs' supports as ``(S, Y, weight)`` of shapes (runs, rows, d), (runs, rows, k), (runs, rows).

    Shorter supports are padded with zero rows of zero loss weight, which add
    nothing to a head's gradient.
    """
    n_rows = max(support[0].shape[0] for support in supports)
    first = supports[0][0]
    S = first.new_zeros(len(supports), n_rows, first.shape[1])
    Y = first.new_zeros(len(supports), n_rows, n_classes)
    weight = first.new_zeros(len(supports), n_rows)
    for run, (rows, labels, _, loss_weight, _) in enumerate(supports):
        S[run, : rows.shape[0]] = rows
        Y[run, : rows.shape[0]] = _one_hot(labels, n_classes, first.dtype)
        weight[run, : rows.shape[0]] = loss_weight
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
            if settings.weight_decay:
                grad_W.add_(W_group, alpha=settings.weight_decay)
            group_optimizer.step([grad_W, residual.sum(1)])
    optimizer.steps += settings.inner_steps


def _head_update_runs(supports, runs, heldout, head, n_classes, settings, head_lr, on_epoch):
    """Every run without support edits (``outer_steps=0``), as one batched program.

    Runs are a leading batch dimension: each head takes its ``inner_steps``
    per epoch on its own support, all heads at once, and is scored on its
    run's selection rows. A run that stops (``n_iter_no_change`` epochs
    without improving past ``n_epochs``, or non-finite logits) leaves the
    batch with its kept epoch, so the others do not carry it. The same runs
    as :func:`_bilevel_run` with ``outer_steps=0``, to rounding.
    """
    S, Y, weight = _stacked_supports(supports, n_classes)
    W0, b0 = head
    W = W0.expand(len(runs), *W0.shape).clone()
    b = b0.expand(len(runs), *b0.shape).clone()
    optimizer = _head_optimizer([W, b], settings.head_update, head_lr)
    score = _SelectionScores(runs, heldout)
    batch = list(range(len(runs)))  # the runs still in the batch, by number
    best = [(-math.inf, -math.inf)] * len(runs)
    kept = [(W0, b0, 0)] * len(runs)
    keys = (*_SCORES, *(f"unedited_{key}" for key in _SCORES), "outer_loss")
    history = [{key: [] for key in keys} for _ in runs]
    diverged, stale = [False] * len(runs), [0] * len(runs)

    def keep_if_best(position, scores, epoch) -> bool:
        number = batch[position]
        key = _selection_score(scores, settings.selection_metric)
        if not key > best[number]:
            return False
        best[number] = key
        kept[number] = (W[position].clone(), b[position].clone(), epoch)
        return True

    if settings.compare_unedited:  # epoch 0, the start head, competes as in _bilevel_run
        logits = _batched_logits(heldout.X, W, b)
        for position, scores in enumerate(score(logits)):
            if scores is not None:
                keep_if_best(position, scores, 0)
    last_epoch = settings.n_epochs if settings.max_epochs is None else settings.max_epochs
    no_edit = {f"unedited_{key}": math.nan for key in _SCORES} | {"outer_loss": math.nan}
    for epoch in range(1, last_epoch + 1):
        _update_heads(S, Y, weight, W, b, optimizer, settings)
        logits = _batched_logits(heldout.X, W, b)
        going = []
        for position, scores in enumerate(score(logits)):
            number = batch[position]
            if scores is None:
                diverged[number] = True
                continue
            record = {"epoch": epoch, **scores, **no_edit}
            for key, values in history[number].items():
                values.append(record[key])
            if on_epoch is not None:
                on_epoch({"run": number, **record})
            stale[number] = 0 if keep_if_best(position, scores, epoch) else stale[number] + 1
            if epoch < settings.n_epochs or stale[number] < settings.n_iter_no_change:
                going.append(position)
        if not going:
            break
        if len(going) < len(batch):  # stopped runs leave the batch
            index = torch.tensor(going, device=S.device)
            S, Y, weight, W, b = S[index], Y[index], weight[index], W[index], b[index]
            optimizer = optimizer.subset(index, [W, b])
            score = score.subset(index)
            batch = [batch[position] for position in going]
    results = []
    for number, (run, support) in enumerate(zip(runs, supports, strict=True)):
        best_W, best_b, best_epoch = kept[number]
        results.append(
            RunResult(
                weight=best_W,
                bias=best_b,
                support_edited=support[0],
                support_labels=support[1],
                support_index=support[2],
                selection_index=_row_index(run.selection_rows, heldout.X),
                best_epoch=best_epoch,
                history=history[number],
                diverged=diverged[number],
                kept_edits=best_epoch > 0,
                still_improving=(
                    settings.max_epochs is not None
                    and not diverged[number]
                    and best_epoch == settings.max_epochs > settings.n_epochs
                ),
            )
        )
    return results
