"""The pure-torch core: gradients, hypergradients, hard-set mining, divergence guard."""

import dataclasses

import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression

from sklearn_featmeta._core import (
    _bilevel,
    _device,
    _fit,
    _geometry,
    _losses,
    _runs,
    _scores,
    _supports,
    _tracker,
    _types,
)

# What the core does where a test does not say: the paper's choices (the estimator's own
# defaults live on MetaAugmentedHeadClassifier; HSFMSettings has none).
PAPER_CORE = {
    "head_update": "gradient",
    "support_source": "pool",
    "head_lr": None,
    "max_grad_norm": 10.0,
    "max_epochs": None,
    "n_iter_no_change": 5,
    "head_l2": 0.0,
    "selection_metric": "worst_group_accuracy",
    "compare_unedited": False,
    "whitening_ridge": None,
    "choose_whitening": False,
    "balanced_candidates": False,
    "erm_class_factor": None,
}


def _core_settings(**fields):
    return _types.HSFMSettings(**{**PAPER_CORE, **fields})


# a small pool-support problem with edits: 8 support rows per class, 3 inner steps of 1/L
SMALL_EDITS = {
    "support_size_per_class": 8,
    "inner_steps": 3,
    "inner_lr": None,
    "outer_lr": 0.5,
    "outer_steps": 2,
    "hard_set_size": 10,
}


def _edit_settings(**fields):
    return _core_settings(**{**SMALL_EDITS, **fields})


def _problem(n_support=7, n_hard=9, n_features=5, n_classes=3, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    S = torch.randn(n_support, n_features, generator=g, dtype=dtype)
    H = torch.randn(n_hard, n_features, generator=g, dtype=dtype)
    W = torch.randn(n_classes, n_features, generator=g, dtype=dtype)
    b = torch.randn(n_classes, generator=g, dtype=dtype)
    y_support = torch.arange(n_support) % n_classes
    y_hard = torch.randint(0, n_classes, (n_hard,), generator=g)
    Y_support = torch.nn.functional.one_hot(y_support, n_classes).to(dtype)
    Y_hard = torch.nn.functional.one_hot(y_hard, n_classes).to(dtype)
    return S, Y_support, H, Y_hard, W, b


def _finite_difference_gradient(S, Y_support, H, Y_hard, W, b, eps=1e-6, **kwargs):
    """Central differences of the outer loss with respect to every entry of ``S``."""
    numeric = torch.zeros_like(S)
    for i in range(S.shape[0]):
        for j in range(S.shape[1]):
            plus, minus = S.clone(), S.clone()
            plus[i, j] += eps
            minus[i, j] -= eps
            loss_plus, _ = _bilevel.support_hypergradient(
                plus, Y_support, H, Y_hard, W, b, **kwargs
            )
            loss_minus, _ = _bilevel.support_hypergradient(
                minus, Y_support, H, Y_hard, W, b, **kwargs
            )
            numeric[i, j] = (loss_plus - loss_minus) / (2 * eps)
    return numeric


def test_softmax_head_gradient_matches_autograd():
    S, Y, _, _, W, b = _problem()
    loss, grad_W, grad_b = _losses.softmax_head_gradient(S, Y, W, b)
    W_ = W.clone().requires_grad_(True)
    b_ = b.clone().requires_grad_(True)
    reference = torch.nn.functional.cross_entropy(S @ W_.T + b_, Y.argmax(1))
    reference.backward()
    torch.testing.assert_close(loss, reference.detach())
    torch.testing.assert_close(grad_W, W_.grad)
    torch.testing.assert_close(grad_b, b_.grad)


@pytest.mark.parametrize(
    "n_classes, inner_steps, inner_lr", [(2, 1, 0.5), (3, 6, 0.7), (4, 15, 0.2)]
)
def test_hypergradient_matches_finite_differences(n_classes, inner_steps, inner_lr):
    """d(outer loss)/d(support) in float64 against central differences."""
    S, Y_support, H, Y_hard, W, b = _problem(n_classes=n_classes, seed=n_classes)
    kwargs = {"inner_lr": inner_lr, "inner_steps": inner_steps}
    _, grad_S = _bilevel.support_hypergradient(S, Y_support, H, Y_hard, W, b, **kwargs)
    numeric = _finite_difference_gradient(S, Y_support, H, Y_hard, W, b, **kwargs)
    assert grad_S.abs().max() > 1e-4  # the check is not vacuous
    torch.testing.assert_close(grad_S, numeric, rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("n_classes", [2, 5])
def test_closed_form_hypergradient_matches_autograd_oracle(n_classes):
    """The fast path equals the second-order autograd reference (float64: 1e-10)."""
    S, Y_support, H, Y_hard, W, b = _problem(
        n_support=40, n_hard=30, n_features=12, n_classes=n_classes, seed=7
    )
    kwargs = {"inner_lr": 0.3, "inner_steps": 10}
    loss, grad = _bilevel.support_hypergradient(S, Y_support, H, Y_hard, W, b, **kwargs)
    loss_ref, grad_ref = _bilevel.support_hypergradient_autograd(
        S, Y_support, H, Y_hard, W, b, **kwargs
    )
    torch.testing.assert_close(loss, loss_ref, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(grad, grad_ref, rtol=1e-10, atol=1e-12)


def test_closed_form_hypergradient_matches_oracle_in_float32():
    """float32, the dtype of fits: agreement to 1e-4 relative."""
    S, Y_support, H, Y_hard, W, b = _problem(
        n_support=64, n_hard=64, n_features=32, n_classes=2, seed=3, dtype=torch.float32
    )
    kwargs = {"inner_lr": 0.5, "inner_steps": 15}
    _, grad = _bilevel.support_hypergradient(S, Y_support, H, Y_hard, W, b, **kwargs)
    _, grad_ref = _bilevel.support_hypergradient_autograd(S, Y_support, H, Y_hard, W, b, **kwargs)
    torch.testing.assert_close(grad, grad_ref, rtol=1e-4, atol=1e-6)


def test_erm_head_matches_multinomial_logistic_regression():
    rng = np.random.RandomState(0)
    X = rng.standard_normal((300, 6))
    y = (X[:, 0] + 0.5 * X[:, 1] + 0.3 * rng.standard_normal(300) > 0).astype(int) + (X[:, 2] > 1)
    C = 0.5
    W, b, converged = _losses.fit_softmax_head(
        torch.from_numpy(X), torch.from_numpy(y), 3, l2=1.0 / (C * X.shape[0]), tol=1e-10
    )
    assert converged
    reference = LogisticRegression(C=C, tol=1e-10, max_iter=10_000).fit(X, y)
    # softmax heads are defined up to a shift common to all classes
    centred = W.numpy() - W.numpy().mean(0)
    np.testing.assert_allclose(centred, reference.coef_, atol=1e-4)
    np.testing.assert_allclose(b.numpy() - b.numpy().mean(), reference.intercept_, atol=1e-4)


def test_select_hard_set_takes_top_losses_per_cell():
    g = torch.Generator().manual_seed(0)
    losses = torch.rand(200, generator=g)
    cells = torch.randint(0, 5, (200,), generator=g)
    cells[cells == 4] = 3  # cell 4 is empty
    cells[:2] = 4  # ... now holds two rows only
    chosen, taken = _bilevel.select_hard_set(losses, cells, 6, size_per_cell=10)
    assert (taken == 1).all()
    expected = []
    for cell in range(6):
        rows = torch.nonzero(cells == cell).ravel()
        expected += rows[torch.argsort(losses[rows], descending=True)[:10]].tolist()
    assert sorted(chosen.tolist()) == sorted(expected)
    assert (
        torch.bincount(cells[chosen], minlength=6) == torch.tensor([10, 10, 10, 10, 2, 0])
    ).all()


def test_weighted_hard_set_takes_rows_as_their_copies_would_be():
    """A row of weight k is taken as k copies: whole, in part where it crosses the budget, or not."""
    g = torch.Generator().manual_seed(1)
    losses = torch.rand(40, generator=g, dtype=torch.float64)
    cells = torch.randint(0, 3, (40,), generator=g)
    weight = torch.randint(0, 4, (40,), generator=g).double()
    chosen, taken = _bilevel.select_hard_set(losses, cells, 3, size_per_cell=5, weight=weight)
    copies = torch.repeat_interleave(torch.arange(40), weight.long())
    copied, _ = _bilevel.select_hard_set(losses[copies], cells[copies], 3, size_per_cell=5)
    expected = torch.bincount(copies[copied], minlength=40).double()
    got = torch.zeros(40, dtype=torch.float64).index_add_(0, chosen, taken)
    torch.testing.assert_close(got, expected)
    assert (taken > 0).all()


def test_erm_head_reports_when_lbfgs_stops_at_its_iteration_limit():
    X = torch.randn(200, 5, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    y = (X[:, 0] > 0).long()
    assert not _losses.fit_softmax_head(X, y, 2, l2=1e-6, max_iter=2)[2]
    assert _losses.fit_softmax_head(X, y, 2, l2=1e-2)[2]


def test_auto_inner_lr_is_inverse_lipschitz_bound():
    g = torch.Generator().manual_seed(0)
    S = 3.0 * torch.randn(40, 8, generator=g, dtype=torch.float64) + 2.0
    lr = _supports.inner_lr_from_lipschitz(S)
    S_aug = torch.cat([S, torch.ones(40, 1, dtype=S.dtype)], 1)
    exact = torch.linalg.matrix_norm(S_aug, ord=2) ** 2 / (2 * 40)
    assert lr == pytest.approx(1.0 / float(exact), rel=1e-6)
    # gradient descent with that step decreases the support loss monotonically
    Y = torch.nn.functional.one_hot(torch.arange(40) % 3, 3).double()
    W, b = torch.zeros(3, 8, dtype=S.dtype), torch.zeros(3, dtype=S.dtype)
    previous = np.inf
    for _ in range(50):
        loss, grad_W, grad_b = _losses.softmax_head_gradient(S, Y, W, b)
        assert float(loss) <= previous + 1e-12
        previous = float(loss)
        W, b = W - lr * grad_W, b - lr * grad_b


def _fit_problem(seed=0):
    """The rows ``_fit_one_run`` uses: 80 training rows, then 40 held-out rows (group = class)."""
    X = torch.randn(120, 6, generator=torch.Generator().manual_seed(seed))
    return X, (X[:, 0] > 0).long()


def _pool_run(pool_y, size_per_class, seed):
    """The paper's run: ``size_per_class`` random pool rows of each class, all held-out rows."""
    permutation = torch.randperm(pool_y.numel(), generator=torch.Generator().manual_seed(seed))
    index = torch.cat([permutation[pool_y[permutation] == k][:size_per_class] for k in (0, 1)])
    every_row = slice(None)
    return _types.RunRows(index, torch.ones(index.numel()), every_row, every_row)


def _annotated(X, y, cells, n_cells):
    """Held-out rows whose hard set is mined per (class, group) cell, with unit weights."""
    weight = torch.ones(y.numel(), dtype=X.dtype)
    return _types.AnnotatedRows(X, y, weight, cells, n_cells, cells, n_cells)


def _fit_one_run(settings, seed=0, **kwargs):
    X, y = _fit_problem(seed)
    pool = _types.Rows(X[:80].clone(), y[:80], torch.ones(80))
    run = _pool_run(y[:80], settings.support_size_per_class, seed)
    annotated = _annotated(X[80:].clone(), y[80:], y[80:], 2)
    return _fit.fit_hsfm(pool, annotated, [run], settings, n_classes=2, erm_l2=1e-2, **kwargs)


def test_divergence_stops_and_keeps_finite_head(monkeypatch):
    """A non-finite outer loss in epoch 3 stops training and keeps the best earlier epoch."""
    real = _bilevel.support_hypergradient
    calls = {"n": 0}

    def failing_in_epoch_3(*args, **kwargs):
        calls["n"] += 1
        loss, grad = real(*args, **kwargs)
        if calls["n"] > 4:  # two outer steps per epoch
            grad = grad * float("nan")
        return loss, grad

    monkeypatch.setattr(_bilevel, "support_hypergradient", failing_in_epoch_3)
    settings = _edit_settings(
        n_epochs=6,
    )
    (run,) = _fit_one_run(settings).runs
    assert run.diverged
    assert len(run.history["outer_loss"]) == 2
    assert run.best_epoch in (1, 2)
    for tensor in (run.coef, run.intercept, run.support_edited):
        assert torch.isfinite(tensor).all()


def test_best_epoch_is_the_best_heldout_worst_group_accuracy():
    settings = _edit_settings(
        n_epochs=8,
    )
    records = []
    (result,) = _fit_one_run(settings, on_epoch=records.append).runs
    worst = np.array(result.history["worst_group_accuracy"])
    loss = np.array(result.history["heldout_loss"])
    candidates = np.flatnonzero(worst == worst.max())
    assert result.best_epoch == candidates[np.argmin(loss[candidates])] + 1
    assert [r.epoch for r in records] == list(range(1, 9))


def test_early_stopping():
    """With n_epochs=1 a run stops n_iter_no_change epochs after its best one."""
    settings = _edit_settings(
        outer_lr=1e-6, outer_steps=1, n_epochs=1, head_lr=1e-9, max_epochs=50, n_iter_no_change=3
    )
    (result,) = _fit_one_run(settings).runs
    assert len(result.history["outer_loss"]) == result.best_epoch + 3 < 50


def _improving_settings(**epochs):
    """A head that creeps towards the held-out optimum: the selection loss falls every epoch."""
    return _edit_settings(
        inner_steps=1,
        outer_lr=1e-6,
        outer_steps=1,
        head_lr=1e-3,
        selection_metric="worst_group_loss",
        **epochs,
    )


def test_run_still_improving_continues_past_n_epochs_up_to_max_epochs():
    zero_head = (torch.zeros(2, 6), torch.zeros(2))  # far from the held-out optimum
    (fixed,) = _fit_one_run(_improving_settings(n_epochs=3), initial_head=zero_head).runs
    assert len(fixed.history["outer_loss"]) == fixed.best_epoch == 3  # max_epochs=None: exactly 3
    extending = _improving_settings(n_epochs=3, max_epochs=7, n_iter_no_change=2)
    (extended,) = _fit_one_run(extending, initial_head=zero_head).runs
    assert len(extended.history["outer_loss"]) == extended.best_epoch == 7
    losses = extended.history["worst_group_loss"]
    assert losses[:3] == fixed.history["worst_group_loss"]  # the same first epochs
    assert (np.diff(losses) < 0).all()


@pytest.mark.parametrize("n_epochs", [1, 4, 8])
def test_run_past_n_epochs_stops_n_iter_no_change_after_its_best(n_epochs):
    settings = _edit_settings(
        n_epochs=n_epochs,
        max_epochs=30,
        n_iter_no_change=2,
        selection_metric="worst_group_loss",
        compare_unedited=True,
    )
    for seed in range(3):
        (result,) = _fit_one_run(settings, seed=seed).runs
        made = len(result.history["outer_loss"])
        assert made == min(30, max(n_epochs, result.best_epoch + 2))
        assert made >= n_epochs


def test_resolve_device():
    assert _device.resolve_device("cpu").type == "cpu"
    assert _device.resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(ValueError, match="not a valid device"):
        _device.resolve_device("gpu please")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            _device.resolve_device("cuda:0")
    else:
        with pytest.raises(ValueError, match="CUDA device"):
            _device.resolve_device(f"cuda:{torch.cuda.device_count()}")


def test_weighted_support_hypergradient_matches_oracle_and_finite_differences():
    S, Y_support, H, Y_hard, W, b = _problem(n_support=8, n_classes=3, seed=11)
    weight = torch.linspace(1.0, 3.0, 8, dtype=S.dtype)
    weight = weight / weight.sum()
    kwargs = {"inner_lr": 0.6, "inner_steps": 5, "support_weight": weight}
    loss, grad = _bilevel.support_hypergradient(S, Y_support, H, Y_hard, W, b, **kwargs)
    loss_ref, grad_ref = _bilevel.support_hypergradient_autograd(
        S, Y_support, H, Y_hard, W, b, **kwargs
    )
    torch.testing.assert_close(loss, loss_ref, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(grad, grad_ref, rtol=1e-10, atol=1e-12)
    i, j, eps = 3, 2, 1e-6
    plus, minus = S.clone(), S.clone()
    plus[i, j] += eps
    minus[i, j] -= eps
    numeric = (
        _bilevel.support_hypergradient(plus, Y_support, H, Y_hard, W, b, **kwargs)[0]
        - _bilevel.support_hypergradient(minus, Y_support, H, Y_hard, W, b, **kwargs)[0]
    ) / (2 * eps)
    assert float(grad[i, j]) == pytest.approx(float(numeric), rel=1e-6)
    # uniform weights are the plain mean
    uniform = torch.full((8,), 1 / 8, dtype=S.dtype)
    _, grad_uniform = _bilevel.support_hypergradient(
        S, Y_support, H, Y_hard, W, b, inner_lr=0.6, inner_steps=5, support_weight=uniform
    )
    _, grad_mean = _bilevel.support_hypergradient(
        S, Y_support, H, Y_hard, W, b, inner_lr=0.6, inner_steps=5
    )
    torch.testing.assert_close(grad_uniform, grad_mean)


def test_annotated_support_is_cross_fitted():
    """Each run's support and hard set come from one fold, its selection from the other."""
    g = torch.Generator().manual_seed(0)
    X = torch.randn(300, 6, generator=g)
    y = (X[:, 0] > 0).long()
    annotated_cells = y[200:] * 2 + (X[200:, 1] > 0).long()
    settings = _core_settings(
        support_size_per_class=1000,
        inner_steps=3,
        inner_lr=None,
        outer_lr=0.01,
        outer_steps=2,
        hard_set_size=10,
        n_epochs=3,
        support_source="annotated",
    )
    folds = torch.stack([torch.arange(100) % 2, (torch.arange(100) >= 48).long()])  # two splits
    runs = []
    for split in folds:
        first, second = torch.nonzero(split == 0)[:, 0], torch.nonzero(split == 1)[:, 0]
        for shaping, selection in ((second, first), (first, second)):
            runs.append(_types.RunRows(shaping, torch.ones(shaping.numel()), shaping, selection))
    pool_X = X[:200].clone()
    pool = _types.Rows(pool_X, y[:200], torch.ones(200))
    annotated = _annotated(X[200:].clone(), y[200:], annotated_cells, 4)
    result = _fit.fit_hsfm(pool, annotated, runs, settings, n_classes=2, erm_l2=1e-2)
    assert result.support_from_annotated and len(result.runs) == 4
    assert torch.equal(pool_X, X[:200])  # no input is changed ...
    released = _fit.fit_hsfm(
        pool, annotated, runs, settings, n_classes=2, erm_l2=1e-2, release_pool=True
    )
    assert pool_X.numel() == 0  # ... unless the caller hands the pool over
    torch.testing.assert_close(released.coef, result.coef, rtol=0, atol=0)
    selections = [set(run.selection_index.tolist()) for run in result.runs]
    for first, second in (selections[:2], selections[2:]):  # the two runs of one split
        assert first.isdisjoint(second) and first | second == set(range(100))
    assert selections[0] == set(range(0, 100, 2))  # each run selects on its own fold ...
    assert selections[2] == set(range(48))
    for run, selection in zip(result.runs, selections, strict=True):
        # ... and draws its support (every row: cap 1000 per cell) from the other
        assert set(run.support_index.tolist()) == set(range(100)) - selection
    torch.testing.assert_close(result.coef, torch.stack([run.coef for run in result.runs]).mean(0))


def test_group_scores():
    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0], [1.0, 0.0], [0.0, 3.0], [0.5, 0.0]])
    y = torch.tensor([0, 0, 1, 1, 0])
    groups = torch.tensor([0, 0, 1, 1, 2])
    losses = torch.nn.functional.cross_entropy(logits, y, reduction="none")
    scores = _scores._group_scores(logits, y, groups, n_groups=4)  # group 3 is empty
    assert scores["worst_group_accuracy"] == pytest.approx(0.5)
    assert scores["average_accuracy"] == pytest.approx(3 / 5)
    assert scores["heldout_loss"] == pytest.approx(float(losses.mean()))
    assert scores["worst_group_loss"] == pytest.approx(
        max(float(losses[:2].mean()), float(losses[2:4].mean()), float(losses[4]))
    )


def test_batched_selection_scores_are_each_heads_scores_on_its_own_rows():
    """One batched scorer: each run's scores are :func:`_group_scores` on its selection rows
    (with sample weights), and logits that overflow outside a run's rows do not reach its
    scores."""
    annotated, runs = _cross_fitted_problem(seed=4)
    runs = runs[:3]
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 160, 2, dtype=torch.float64, generator=g)
    outside = torch.ones(160, dtype=torch.bool)
    outside[runs[1].selection_rows] = False
    logits[1, outside] = float("inf")
    score = _scores._SelectionScores(runs, annotated)
    for number, scores in enumerate(score(logits)):
        rows = runs[number].selection_rows
        expected = _scores._group_scores(
            logits[number, rows],
            annotated.y[rows],
            annotated.cells[rows],
            4,
            annotated.weight[rows],
        )
        assert scores == pytest.approx(expected, rel=1e-12)
    # a run leaves the batch: the others' scores do not change
    subset = score.subset(torch.tensor([0, 2]))
    assert subset(logits[[0, 2]]) == [score(logits)[0], score(logits)[2]]
    # non-finite logits on a run's own rows: no scores for that run
    logits[2, runs[2].selection_rows[0]] = float("nan")
    assert score(logits)[2] is None and score(logits)[0] is not None


def test_best_epoch_is_the_lowest_worst_group_loss():
    settings = _edit_settings(
        n_epochs=8,
        selection_metric="worst_group_loss",
    )
    (result,) = _fit_one_run(settings).runs
    loss = np.array(result.history["worst_group_loss"])
    assert result.best_epoch == np.argmin(loss) + 1
    # the criteria disagree on this problem, so the setting is what chose the epoch
    accuracy_run = _fit_one_run(
        dataclasses.replace(settings, selection_metric="worst_group_accuracy")
    )
    assert accuracy_run.runs[0].best_epoch != result.best_epoch


def test_weight_decay_hypergradient_matches_oracle_and_finite_differences():
    S, Y_support, H, Y_hard, W, b = _problem(n_support=6, n_features=4, n_classes=3, seed=5)
    kwargs = {"inner_lr": 0.5, "inner_steps": 6, "head_l2": 0.3}
    loss, grad = _bilevel.support_hypergradient(S, Y_support, H, Y_hard, W, b, **kwargs)
    loss_ref, grad_ref = _bilevel.support_hypergradient_autograd(
        S, Y_support, H, Y_hard, W, b, **kwargs
    )
    torch.testing.assert_close(loss, loss_ref, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(grad, grad_ref, rtol=1e-10, atol=1e-12)
    numeric = _finite_difference_gradient(S, Y_support, H, Y_hard, W, b, **kwargs)
    torch.testing.assert_close(grad, numeric, rtol=1e-6, atol=1e-8)
    # the decay changes the answer (the check is not vacuous)
    _, grad_plain = _bilevel.support_hypergradient(
        S, Y_support, H, Y_hard, W, b, inner_lr=0.5, inner_steps=6
    )
    assert (grad - grad_plain).abs().max() > 1e-3


def test_weight_decay_raises_the_lipschitz_bound():
    S = torch.randn(50, 6, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    plain = _supports.inner_lr_from_lipschitz(S)
    decayed = _supports.inner_lr_from_lipschitz(S, head_l2=0.5)
    assert 1 / decayed == pytest.approx(1 / plain + 0.5)


def _plain_descent(S, labels, W, b, lr, steps):
    Y = torch.nn.functional.one_hot(labels, W.shape[0]).to(S.dtype)
    W, b = W.clone(), b.clone()
    for _ in range(steps):
        _, grad_W, grad_b = _losses.softmax_head_gradient(S, Y, W, b)
        W, b = W - lr * grad_W, b - lr * grad_b
    return W, b


def _compared_settings(outer_lr, n_epochs):
    """Settings of a run that also follows its unedited head."""
    return _edit_settings(
        outer_lr=outer_lr,
        n_epochs=n_epochs,
        selection_metric="worst_group_loss",
        compare_unedited=True,
    )


def test_unedited_head_is_kept_where_the_edits_do_worse():
    settings = _compared_settings(outer_lr=3.0, n_epochs=6)
    zero_head = (torch.zeros(2, 6), torch.zeros(2))  # far from the held-out optimum: training helps
    result = _fit_one_run(settings, initial_head=zero_head)
    (run,) = result.runs
    assert not run.kept_edits and run.best_epoch > 0
    # the kept head is plain gradient descent on the support as drawn, for the kept epochs
    W, b = _plain_descent(
        run.support_edited,
        run.support_labels,
        result.initial_coef,
        result.initial_intercept,
        result.head_lr,
        3 * run.best_epoch,
    )
    torch.testing.assert_close(run.coef, W)
    torch.testing.assert_close(run.intercept, b)
    # the history scores that unedited head too, next to the edited one
    X, y = _fit_problem()
    annotated = X[80:]  # the core works in the coordinates it is given
    scores = _scores._group_scores(annotated @ W.T + b, y[80:], y[80:], 2)
    assert set(scores) == set(_scores._SCORES)
    unedited = run.history["unedited_worst_group_loss"]
    assert unedited[run.best_epoch - 1] == pytest.approx(scores["worst_group_loss"], rel=1e-5)
    assert unedited[run.best_epoch - 1] == min(unedited) < min(run.history["worst_group_loss"])
    # without the comparison the edits are kept, though they score worse than not editing
    (edited,) = _fit_one_run(
        dataclasses.replace(settings, compare_unedited=False), initial_head=zero_head
    ).runs
    (control,) = _fit_one_run(
        dataclasses.replace(settings, outer_lr=1e-12), initial_head=zero_head
    ).runs
    assert edited.kept_edits
    assert min(edited.history["worst_group_loss"]) > min(control.history["worst_group_loss"])


def test_start_head_is_kept_where_no_epoch_beats_it():
    """Epoch 0 competes: a run whose every update scores worse keeps its start head."""
    X, y = _fit_problem()
    annotated_scores = _scores._group_scores
    settings = _compared_settings(outer_lr=3.0, n_epochs=3)
    # the held-out optimum as start: every update moves away from it on the selection rows
    best = _losses.fit_softmax_head(X[80:], y[80:], 2, l2=1e-4)[:2]
    (run,) = _fit_one_run(settings, initial_head=best).runs
    assert run.best_epoch == 0 and not run.kept_edits
    torch.testing.assert_close(run.coef, best[0])
    start_loss = annotated_scores(X[80:] @ best[0].T + best[1], y[80:], y[80:], 2)[
        "worst_group_loss"
    ]
    assert start_loss < min(
        run.history["worst_group_loss"] + run.history["unedited_worst_group_loss"]
    )


def test_edited_head_is_kept_where_the_edits_do_better():
    settings = _compared_settings(outer_lr=0.5, n_epochs=8)
    (run,) = _fit_one_run(settings).runs
    (control,) = _fit_one_run(dataclasses.replace(settings, outer_lr=1e-12)).runs
    assert run.kept_edits
    assert min(run.history["worst_group_loss"]) < min(control.history["worst_group_loss"])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_eigh_in_place_matches_torch_and_overwrites_its_input_on_cpu(dtype):
    generator = torch.Generator().manual_seed(0)
    A = torch.randn(40, 40, dtype=torch.float64, generator=generator)
    symmetric = (A @ A.T).to(dtype)
    expected_values, expected_vectors = torch.linalg.eigh(symmetric)
    storage = symmetric.data_ptr()
    values, vectors = _geometry._eigh_in_place(symmetric)
    assert vectors.dtype == dtype and vectors.data_ptr() == storage  # no (d, d) copy
    tolerance = {"rtol": 1e-4, "atol": 1e-3} if dtype == torch.float32 else {}
    torch.testing.assert_close(values, expected_values, **tolerance)
    # eigenvectors are defined up to sign: compare the projections they make
    torch.testing.assert_close(
        vectors @ torch.diag(values) @ vectors.T,
        expected_vectors @ torch.diag(expected_values) @ expected_vectors.T,
        **tolerance,
    )
    torch.testing.assert_close(vectors.T @ vectors, torch.eye(40, dtype=dtype), **tolerance)


def test_whitening_transform_whitens_up_to_the_ridge():
    generator = torch.Generator().manual_seed(0)
    mixing = torch.randn(6, 6, dtype=torch.float64, generator=generator)
    X = torch.randn(5000, 6, dtype=torch.float64, generator=generator) @ mixing
    X -= X.mean(0)
    T = _geometry.whitening_transform(X, ridge=1e-9)
    torch.testing.assert_close(T, T.T)
    rows = torch.randn(3, 6, dtype=torch.float64, generator=generator)
    torch.testing.assert_close(_geometry._unwhiten(rows, T) @ T, rows)  # rows T^-1
    variances = torch.linalg.eigvalsh(X.T @ X / X.shape[0])
    whitened = X @ T
    covariance = whitened.T @ whitened / X.shape[0]
    # every direction ends with the mean variance of the input
    torch.testing.assert_close(covariance, variances.mean() * torch.eye(6, dtype=torch.float64))
    # a ridge leaves low-variance directions closer to where they were
    T_ridge = _geometry.whitening_transform(X, ridge=1.0)
    ridged = torch.linalg.eigvalsh((X @ T_ridge).T @ (X @ T_ridge) / X.shape[0])
    assert ridged.max() / ridged.min() > 1.5
    assert ridged.max() / ridged.min() < variances.max() / variances.min()


def _cross_fitted_problem(seed=0):
    """Held-out rows in four cells, split twice into halves: four runs of unequal supports."""
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(160, 6, dtype=torch.float64, generator=g)
    y = (X[:, 0] + 0.5 * torch.randn(160, dtype=torch.float64, generator=g) > 0).long()
    cells = y * 2 + (X[:, 1] > 0.3).long()
    weight = 1.0 + torch.rand(160, dtype=torch.float64, generator=g)  # sample weights
    annotated = _types.AnnotatedRows(X, y, weight, cells, 4, cells, 4)
    runs = []
    for _ in range(2):  # two splits
        order = torch.randperm(160, generator=g)
        for shaping, selection in ((order[:70], order[70:]), (order[70:], order[:70])):
            support = shaping[: 40 + 10 * len(runs)]  # supports of 40 to 70 rows
            runs.append(_types.RunRows(support, weight[support], shaping, selection))
    return annotated, runs


def _no_edit_settings(**fields):
    """Runs without support edits on cross-fitted annotated rows (the estimator's default path)."""
    return _core_settings(
        **{
            "support_size_per_class": 1000,
            "inner_steps": 3,
            "inner_lr": None,
            "outer_lr": 0.1,
            "outer_steps": 0,
            "hard_set_size": 5,
            "n_epochs": 6,
            "support_source": "annotated",
            **fields,
        }
    )


def _zero_head(n_features=6):
    return torch.zeros(2, n_features, dtype=torch.float64), torch.zeros(2, dtype=torch.float64)


@pytest.mark.parametrize(
    "fields",
    [
        {},
        {"head_update": "adam", "compare_unedited": True},
        {"n_epochs": 1, "max_epochs": 30, "n_iter_no_change": 2, "head_update": "adam"},
        {"head_l2": 0.05, "selection_metric": "worst_group_loss", "compare_unedited": True},
    ],
    ids=["paper", "adam-compared", "extended-by-loss", "weight-decay"],
)
def test_batched_runs_match_the_run_by_run_loop(fields):
    """Without edits, the runs as one batched program are the runs one by one (float64)."""
    annotated, runs = _cross_fitted_problem()
    settings = _no_edit_settings(**fields)
    supports = [_supports._support(run, None, annotated, settings) for run in runs]
    steps = _supports._step_sizes(supports[0], settings)
    head = (0.1 * torch.ones(2, 6, dtype=torch.float64), torch.zeros(2, dtype=torch.float64))
    records = []
    batched = _runs._head_update_runs(
        supports, runs, annotated, head, settings, steps.head_lr, records.append
    )
    one_by_one = [
        _bilevel._bilevel_run(support, run, annotated, head, settings, steps)
        for support, run in zip(supports, runs, strict=True)
    ]
    if "max_epochs" in fields:  # runs that stop at different epochs: the masking is exercised
        assert len({run.epochs_made for run in batched}) > 1
    for together, alone in zip(batched, one_by_one, strict=True):
        torch.testing.assert_close(together.coef, alone.coef, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(together.intercept, alone.intercept, rtol=1e-12, atol=1e-12)
        assert together.best_epoch == alone.best_epoch
        assert (together.kept_edits, together.still_improving, together.diverged) == (
            alone.kept_edits,
            alone.still_improving,
            alone.diverged,
        )
        for key, values in alone.history.items():
            np.testing.assert_allclose(together.history[key], values, rtol=1e-12, atol=1e-14)
        torch.testing.assert_close(together.support_edited, alone.support_edited)
    # progress: one record per run and epoch made, in the history's order
    assert len(records) == sum(run.epochs_made for run in batched)
    for number, run in enumerate(batched):
        own = [record for record in records if record.run == number]
        assert [record.epoch for record in own] == list(range(1, run.epochs_made + 1))
        assert [record.worst_group_accuracy for record in own] == run.history[
            "worst_group_accuracy"
        ]
        assert all(record.outer_loss is None for record in own)


@pytest.mark.parametrize("n_threads", [1, 2])
def test_runs_stepping_in_cache_groups_are_the_runs_stepping_together(monkeypatch, n_threads):
    """Groups of runs that fit in a cache (here: one run, two runs) make the same steps."""
    annotated, runs = _cross_fitted_problem(seed=3)
    settings = _no_edit_settings(n_epochs=1, max_epochs=30, n_iter_no_change=2, head_update="adam")
    supports = [_supports._support(run, None, annotated, settings) for run in runs]
    head_lr = _supports._step_sizes(supports[0], settings).head_lr
    head = (0.1 * torch.ones(2, 6, dtype=torch.float64), torch.zeros(2, dtype=torch.float64))
    support_bytes = _runs._stacked_supports(supports, head)[0][0].numel() * 8
    previous = torch.get_num_threads()
    torch.set_num_threads(n_threads)
    try:
        fits = []
        for budget in (_runs.CACHED_SUPPORT_BYTES, support_bytes, 2 * support_bytes):
            monkeypatch.setattr(_runs, "CACHED_SUPPORT_BYTES", budget)
            fits.append(_runs._head_update_runs(supports, runs, annotated, head, settings, head_lr))
    finally:
        torch.set_num_threads(previous)
    together, *grouped = fits
    assert len({run.best_epoch for run in together}) > 1  # the runs stop at different epochs
    for fit in grouped:
        for alone, with_all in zip(fit, together, strict=True):
            assert alone.best_epoch == with_all.best_epoch
            if n_threads == 1:  # a batched product computes every run alone: the same bits
                assert torch.equal(alone.coef, with_all.coef)
                assert alone.history == with_all.history
            else:  # a lone run's products go over its rows on the threads: rounding apart
                torch.testing.assert_close(alone.coef, with_all.coef, rtol=1e-12, atol=1e-12)


def test_batched_probe_is_the_best_loss_of_each_run_without_edits():
    annotated, runs = _cross_fitted_problem(seed=1)
    settings = _no_edit_settings(inner_steps=2, n_epochs=5)

    source = _supports.SupportSource(None, annotated, settings)
    head = _zero_head()
    steps = _supports._step_sizes(source.draw(runs[0]), settings)
    probe = _runs._geometry_probe(source, runs, head, None, steps.head_lr)
    best = [
        min(
            _bilevel._bilevel_run(source.draw(run), run, annotated, head, settings, steps).history[
                "worst_group_loss"
            ]
        )
        for run in runs
    ]
    assert probe == pytest.approx(sum(best) / len(best), rel=1e-12)


def test_a_diverging_run_of_the_batch_stops_alone():
    """A run whose logits overflow stops with its best finite epoch; the others go on."""
    annotated, runs = _cross_fitted_problem(seed=2)
    settings = _no_edit_settings(inner_steps=1)
    supports = [_supports._support(run, None, annotated, settings) for run in runs]
    # the second run's support is scaled up: the same step makes its logits overflow
    supports[1] = dataclasses.replace(supports[1], rows=supports[1].rows * 1e155)
    head = _zero_head()
    head_lr = _supports._step_sizes(supports[0], settings).head_lr
    result = _runs._head_update_runs(supports, runs, annotated, head, settings, head_lr)
    assert [run.diverged for run in result] == [False, True, False, False]
    assert all(run.epochs_made == 6 for run in result if not run.diverged)
    assert all(torch.isfinite(run.coef).all() for run in result)


def test_a_whitened_fit_changes_none_of_its_inputs():
    g = torch.Generator().manual_seed(3)
    X = torch.randn(300, 6, generator=g, dtype=torch.float64)
    y = (X[:, 0] > 0).long()
    annotated_cells = y[200:] * 2 + (X[200:, 1] > 0).long()
    settings = _no_edit_settings(whitening_ridge=0.1, choose_whitening=False)
    folds = (torch.arange(100) % 2).bool()
    runs = [
        _types.RunRows(rows, torch.ones(rows.numel()), rows, other)
        for rows, other in (
            (torch.nonzero(folds)[:, 0], torch.nonzero(~folds)[:, 0]),
            (torch.nonzero(~folds)[:, 0], torch.nonzero(folds)[:, 0]),
        )
    ]
    pool = _types.Rows(X[:200].clone(), y[:200], torch.ones(200, dtype=torch.float64))
    annotated = _annotated(X[200:].clone(), y[200:], annotated_cells, 4)
    result = _fit.fit_hsfm(pool, annotated, runs, settings, n_classes=2, erm_l2=1e-2)
    assert result.whitened
    assert torch.equal(pool.X, X[:200]) and torch.equal(annotated.X, X[200:])


def _scores_of(worst_group_accuracy, worst_group_loss):
    return {
        "worst_group_accuracy": worst_group_accuracy,
        "average_accuracy": 0.9,
        "heldout_loss": 0.3,
        "worst_group_loss": worst_group_loss,
    }


def test_run_tracker_keeps_the_best_epoch_and_stops_after_its_patience():
    settings = _no_edit_settings(
        n_epochs=2, max_epochs=6, n_iter_no_change=2, selection_metric="worst_group_loss"
    )
    head = _zero_head()
    tracker = _tracker.RunTracker(settings, _tracker.KeptEpoch(0, *head), number=3)
    W = torch.ones(2, 6, dtype=torch.float64)
    going = []
    for epoch, loss in enumerate([0.5, 0.4, 0.45, 0.41, 0.3], start=1):
        scores = _scores_of(0.8, loss)
        tracker.record(_tracker.EpochRecord(3, epoch, scores))
        improved = tracker.offer(scores, _tracker.KeptEpoch(epoch, W * epoch, head[1], edited=True))
        going.append(tracker.goes_on(epoch, improved))
        W.zero_()  # the kept head is a copy: later changes to the offered one do not reach it
    # epoch 2 was best; past n_epochs the run stops 2 epochs later, at epoch 4
    assert going == [True, True, True, False, True]
    assert tracker.kept.epoch == 5 and tracker.kept.edited  # the offer after a stop still counts
    assert tracker.history["worst_group_loss"] == [0.5, 0.4, 0.45, 0.41, 0.3]
    assert set(tracker.history) == set(_scores._SCORES)  # no edits: no outer loss, no control


def test_run_tracker_records_the_edits_columns_only_with_edits():
    settings = _edit_settings(n_epochs=2, compare_unedited=True)
    records = []
    tracker = _tracker.RunTracker(
        settings, _tracker.KeptEpoch(0, *_zero_head()), number=1, on_epoch=records.append
    )
    tracker.record(_tracker.EpochRecord(1, 1, _scores_of(0.7, 0.5), _scores_of(0.6, 0.4), 0.25))
    tracker.record(_tracker.EpochRecord(1, 2, _scores_of(0.7, 0.5), None, 0.2))
    assert tracker.history["unedited_worst_group_loss"][0] == 0.4
    assert np.isnan(tracker.history["unedited_worst_group_loss"][1])
    assert tracker.history["outer_loss"] == [0.25, 0.2]
    # progress reads the lower worst-group loss of the epoch's head and its control
    assert [record.worst_group_loss for record in records] == [0.4, 0.5]


def test_run_tracker_says_a_run_cut_short_at_max_epochs_is_still_improving():
    settings = _no_edit_settings(n_epochs=2, max_epochs=3, n_iter_no_change=5)
    head = _zero_head()
    tracker = _tracker.RunTracker(settings, _tracker.KeptEpoch(0, *head))
    support = _supports.Support(*(torch.zeros(1),) * 5)
    for epoch in (1, 2, 3):
        tracker.offer(_scores_of(0.5 + epoch / 10, 0.5), _tracker.KeptEpoch(epoch, *head))
    assert tracker.last_epoch == 3
    assert tracker.result(support, torch.arange(2)).still_improving
    tracker.diverged = True
    assert not tracker.result(support, torch.arange(2)).still_improving
