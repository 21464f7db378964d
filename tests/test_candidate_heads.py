"""Candidate heads: the runs' heads or group-balanced logistic regressions, cross-fitted."""

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression

from sklearn_featmeta import MetaAugmentedHeadClassifier
from sklearn_featmeta._core import _candidates, _groupfree, _scores, _softmax, _types
from sklearn_featmeta._preprocessing import isotropic_factor
from sklearn_featmeta.datasets import make_spurious_embeddings
from sklearn_featmeta.metrics import worst_group_accuracy_score

FAST = {"n_repeats": 2, "outer_steps": 1, "inner_steps": 5, "random_state": 0}


@pytest.mark.parametrize("n_rows", [60, 12])  # more rows than features, and fewer
def test_regression_path_solves_weighted_multinomial_logistic_regression(n_rows):
    rng = np.random.default_rng(0)
    X = rng.normal(size=(n_rows, 20)) * rng.uniform(0.2, 3, size=20)
    y = np.arange(n_rows) % 3
    sample_weight = rng.uniform(0.5, 2, size=n_rows)
    row_weight = sample_weight / sample_weight.sum()
    path = [10.0, 0.1, 0.003]
    (heads,) = _softmax.softmax_regression_paths(X, y, row_weight, 3, path, [None])

    def objective(W, b, l2):
        logits = X @ W.T + b
        log_p = logits - np.log(np.exp(logits).sum(1, keepdims=True))
        return -(row_weight * log_p[np.arange(n_rows), y]).sum() + l2 / 2 * np.square(W).sum()

    for l2, (W, b) in zip(path, heads, strict=True):
        # scikit-learn's objective C * sum(w loss) + ||W||^2 / 2 is ours times C * sum(w)
        reference = LogisticRegression(C=1 / (l2 * sample_weight.sum()), tol=1e-12, max_iter=10000)
        reference.fit(X, y, sample_weight=sample_weight)
        best = objective(reference.coef_, reference.intercept_, l2)
        assert best <= objective(W, b, l2) <= best + 1e-7
        np.testing.assert_allclose(W, reference.coef_, atol=3e-3 * np.abs(reference.coef_).max())


@pytest.mark.parametrize("scale", [0.1, 30.0])  # moderate logits, and |logits| in the hundreds
def test_the_binary_form_is_the_softmax_form_with_the_first_row_held_at_zero(scale):
    rng = np.random.default_rng(4)
    X = rng.normal(size=(50, 6))
    y = rng.integers(0, 2, size=50)
    row_weight = rng.uniform(0.5, 2, size=50) / 50
    binary = _softmax.SoftmaxProblem(X, y, row_weight, 2, binary=True)
    softmax = _softmax.SoftmaxProblem(X, y, row_weight, 2)
    flat = rng.normal(size=7) * scale
    loss, gradient = binary._loss_and_gradient(flat, 0.3)
    softmax_loss, softmax_gradient = softmax._loss_and_gradient(np.r_[np.zeros(7), flat], 0.3)
    assert np.isfinite(loss) and loss == pytest.approx(softmax_loss, rel=1e-12)
    np.testing.assert_allclose(gradient, softmax_gradient[7:], rtol=1e-10, atol=1e-12)
    step = 1e-6  # central differences, float64
    numeric = [
        (
            binary._loss_and_gradient(flat + step * e, 0.3)[0]
            - binary._loss_and_gradient(flat - step * e, 0.3)[0]
        )
        / (2 * step)
        for e in np.eye(7)
    ]
    np.testing.assert_allclose(gradient, numeric, rtol=1e-5, atol=1e-7)


def test_a_longer_lbfgs_memory_reaches_the_same_head_in_fewer_evaluations():
    # ill-conditioned features (scales over three orders of magnitude), as the group-free
    # heads' slow approach to LogisticRegression's tolerance
    rng = np.random.default_rng(0)
    X = rng.normal(size=(400, 30)) * np.geomspace(0.01, 10, 30)
    y = (X @ rng.normal(size=30) + rng.normal(size=400) > 0).astype(int)
    problem = _softmax.SoftmaxProblem(X, y, np.full(400, 1 / 400), 2, binary=True)
    evaluations, heads = {}, {}
    for memory in (3, _groupfree.MEMORY):
        count = [0]
        loss_and_gradient = problem._loss_and_gradient

        def counted(*args, count=count, loss_and_gradient=loss_and_gradient):
            count[0] += 1
            return loss_and_gradient(*args)

        problem._loss_and_gradient = counted
        (heads[memory], _), converged, _ = problem.minimize(
            1e-3, problem.zeros(), max_iter=5000, tol=1e-6, gradient_stop=True, memory=memory
        )
        del problem._loss_and_gradient
        assert converged
        evaluations[memory] = count[0]
    assert evaluations[_groupfree.MEMORY] < 0.8 * evaluations[3]
    np.testing.assert_allclose(heads[_groupfree.MEMORY], heads[3], rtol=1e-3, atol=1e-4)


@pytest.mark.parametrize("n_rows", [60, 12])  # more rows than features, and fewer
def test_paths_in_several_geometries_are_each_geometrys_own_path(n_rows):
    rng = np.random.default_rng(2)
    X = rng.normal(size=(n_rows, 20)) * rng.uniform(0.2, 3, size=20)
    y = np.arange(n_rows) % 3
    row_weight = rng.uniform(0.5, 2, size=n_rows)
    row_weight /= row_weight.sum()
    factor = rng.uniform(0.3, 2.0, size=20)
    path = [10.0, 0.1, 0.003]
    together = _softmax.softmax_regression_paths(X, y, row_weight, 3, path, [None, factor])
    alone = [
        _softmax.softmax_regression_paths(X, y, row_weight, 3, path, [None])[0],
        _softmax.softmax_regression_paths(X * factor, y, row_weight, 3, path, [None])[0],
    ]

    def objective(Z, W, b, l2):
        logits = Z @ W.T + b
        log_p = logits - np.log(np.exp(logits).sum(1, keepdims=True))
        return -(row_weight * log_p[np.arange(n_rows), y]).sum() + l2 / 2 * np.square(W).sum()

    for Z, heads, own_heads in zip((X, X * factor), together, alone, strict=True):
        for l2, (W, b), (own_W, own_b) in zip(path, heads, own_heads, strict=True):
            assert W.shape == own_W.shape == (3, 20)
            # the same minimum, to the solver's tolerance
            best = objective(Z, own_W, own_b, l2)
            assert objective(Z, W, b, l2) == pytest.approx(best, rel=1e-6, abs=1e-8)
            np.testing.assert_allclose(W, own_W, atol=3e-3 * np.abs(own_W).max())


@pytest.mark.parametrize("n_rows", [203, 5])  # rows not a multiple of the blocks; fewer than d
def test_threaded_products_give_the_same_loss_and_gradient(monkeypatch, n_rows):
    # a large X on more than one torch thread takes the products through torch (row blocks)
    import torch

    rng = np.random.default_rng(1)
    X = rng.normal(size=(n_rows, 7)).astype(np.float32)
    y, row_weight = np.arange(n_rows) % 3, np.full(n_rows, 1.0 / n_rows)
    numpy_problem = _softmax.SoftmaxProblem(X, y, row_weight, 3)
    flat = rng.normal(size=numpy_problem.zeros().size)
    assert numpy_problem.X_torch is None
    monkeypatch.setattr(_softmax, "TORCH_PRODUCT_ENTRIES", 1)
    previous = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        torch_problem = _softmax.SoftmaxProblem(X, y, row_weight, 3)
        assert torch_problem.X_torch is not None
        loss, gradient = torch_problem._loss_and_gradient(flat, 0.1)
    finally:
        torch.set_num_threads(previous)
    expected_loss, expected_gradient = numpy_problem._loss_and_gradient(flat, 0.1)
    np.testing.assert_allclose(loss, expected_loss, rtol=1e-5)
    np.testing.assert_allclose(gradient, expected_gradient, rtol=1e-4, atol=1e-6)


def test_isotropic_factor_keeps_relative_scales_and_ignores_constant_features():
    scale = np.array([0.5, 2.0, 1.0, 1.0])  # exact 1.0: a constant feature (weighted_moments)
    factor = isotropic_factor(scale)
    np.testing.assert_allclose(factor[:2], scale[:2] / np.sqrt((0.25 + 4) / 2))
    np.testing.assert_array_equal(factor[2:], 1.0)


def _spurious_with_few_annotated(seed=0):
    """Spurious embeddings whose ERM head fails the minority groups, and annotated rows that fix it."""
    return make_spurious_embeddings(
        n_samples=1500, n_features=16, known_group_fraction=0.3, random_state=seed
    )


def test_selected_heads_are_the_best_candidate_by_its_cross_fitted_score():
    X, y, groups = _spurious_with_few_annotated()
    model = MetaAugmentedHeadClassifier(**FAST).fit(X, y, groups)
    scores = model.candidate_scores_
    assert set(scores) == {"runs", "balanced_standardised", "balanced_isotropic"}
    best_balanced = min(
        ["balanced_standardised", "balanced_isotropic"],
        key=lambda name: _candidates._rank(scores[name]),
    )
    lead = scores["runs"]["worst_group_accuracy"] - scores[best_balanced]["worst_group_accuracy"]
    assert model.runs_margin_ >= 0
    assert model.selected_heads_ == ("runs" if lead > model.runs_margin_ else best_balanced)
    assert (model.selected_heads_ == "runs") == (model.balanced_l2_ is None)
    assert model.balanced_l2_ is None or model.balanced_l2_ in _candidates.BALANCED_L2_PATH


def test_without_candidates_or_epochs_the_fit_is_the_initial_head():
    X, y, groups = _spurious_with_few_annotated()
    erm_only = {**FAST, "n_epochs": 0, "max_epochs": 0, "balanced_candidates": False}
    model = MetaAugmentedHeadClassifier(**erm_only).fit(X, y, groups)
    np.testing.assert_allclose(model.coef_, model.initial_coef_, rtol=1e-6)
    assert (model.best_epoch_ == 0).all() and model.selected_heads_ == "runs"
    assert model.candidate_scores_ is None


def test_the_fit_falls_back_on_a_balanced_head_where_the_runs_cannot_move():
    """Where ERM is hopeless and the runs cannot move (no epochs), the balanced heads win."""
    X, y, groups = _spurious_with_few_annotated()
    model = MetaAugmentedHeadClassifier(**{**FAST, "n_epochs": 0, "max_epochs": 0}).fit(
        X, y, groups
    )
    assert model.selected_heads_.startswith("balanced_")
    known = groups != -1
    fair = worst_group_accuracy_score(y[known], model.predict(X[known]), groups=groups[known])
    erm = MetaAugmentedHeadClassifier(
        **{**FAST, "n_epochs": 0, "max_epochs": 0, "balanced_candidates": False}
    )
    unfair = worst_group_accuracy_score(
        y[known], erm.fit(X, y, groups).predict(X[known]), groups=groups[known]
    )
    assert fair > unfair + 0.2


def _cell_rows(y, cells):
    torch = pytest.importorskip("torch")
    n = len(y)
    return _types.AnnotatedRows(
        torch.zeros(n, 1, dtype=torch.float64),
        torch.tensor(y),
        torch.ones(n, dtype=torch.float64),
        cells=torch.tensor(cells),
        n_cells=int(max(cells)) + 1,
        hard_set_cells=torch.tensor(cells),
        n_hard_set_cells=int(max(cells)) + 1,
    )


def _logits_for(correct, y):
    """Two-class logits that are right exactly where ``correct`` is True."""
    torch = pytest.importorskip("torch")
    predicted = np.where(correct, y, 1 - np.asarray(y))
    return torch.nn.functional.one_hot(torch.tensor(predicted), 2).to(torch.float64)


def test_worst_group_standard_error_is_the_paired_error_on_the_incumbents_worst_cell():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 60)
    cells = np.repeat([0, 1, 2], 20)
    annotated = _cell_rows(y, cells)
    runs = [
        _types.RunRows(torch.arange(0), torch.ones(0), rows, rows)
        for rows in (torch.arange(0, 60, 2), torch.arange(1, 60, 2))
    ]
    incumbent_correct = rng.random(60) < np.where(cells == 1, 0.5, 0.9)  # cell 1 is worst
    challenger_correct = rng.random(60) < 0.7
    incumbent = _logits_for(incumbent_correct, y)
    challenger = _logits_for(challenger_correct, y)
    se = _candidates.weigh_challenger(
        [challenger[r.selection_rows] for r in runs],
        [incumbent[r.selection_rows] for r in runs],
        runs,
        annotated,
    ).margin
    variances = []
    for run in runs:
        rows = run.selection_rows.numpy()
        accuracy = [incumbent_correct[rows][cells[rows] == c].mean() for c in range(3)]
        in_cell = rows[cells[rows] == np.argmin(accuracy)]
        d = challenger_correct[in_cell].astype(float) - incumbent_correct[in_cell]
        variances.append(d.var() / d.size)  # unit weights: the population variance over n
    assert se == pytest.approx(np.sqrt(np.mean(variances) / 2), rel=1e-12)
    assert se > 0
    same = _candidates.weigh_challenger(
        [incumbent[r.selection_rows] for r in runs],
        [incumbent[r.selection_rows] for r in runs],
        runs,
        annotated,
    ).margin
    assert same == 0.0


def test_the_runs_replace_the_balanced_head_only_when_they_lead_by_more_than_the_error():
    torch = pytest.importorskip("torch")
    y = np.tile([0, 1], 20)
    cells = y.copy()  # two runs of 20 rows, ten in each cell
    annotated = _cell_rows(y, cells)
    halves = (torch.arange(20), torch.arange(20, 40))
    runs = [_types.RunRows(torch.arange(0), torch.ones(0), rows, rows) for rows in halves]
    incumbent_correct = np.ones(40, dtype=bool)
    incumbent_correct[[1, 3, 5, 7, 21, 23, 25, 27]] = False  # cell 1 at 60% in each run
    incumbent = _logits_for(incumbent_correct, y)
    balanced = _types.HeadChoice(
        chosen="balanced_standardised", run_logits=[incumbent[rows] for rows in halves]
    )
    balanced.scores = {
        "balanced_standardised": _candidates.candidate_score(balanced.run_logits, runs, annotated)
    }
    # (rows of cell 1 fixed, rows broken) per run -> whether the runs' heads win
    for fixed, broken, expected in ((2, 1, False), (4, 0, True), (1, 1, False)):
        correct = incumbent_correct.copy()
        for offset in (0, 20):
            correct[[offset + r for r in (1, 3, 5, 7)[:fixed]]] = True
            correct[[offset + r for r in (9, 11, 13)[:broken]]] = False
        challenger = _logits_for(correct, y)
        logits = [challenger[rows] for rows in halves]
        verdict = _candidates.weigh_challenger(logits, balanced.run_logits, runs, annotated)
        assert verdict.challenger_wins is expected
        assert verdict.lead == pytest.approx((fixed - broken) / 10)
        # per run, ten rows of differences d in {-1, 0, 1}: var(d) / 10, over two runs
        d = np.array([1.0] * fixed + [-1.0] * broken + [0.0] * (10 - fixed - broken))
        assert verdict.margin == pytest.approx(np.sqrt(d.var() / 10 / 2), rel=1e-12)


def _small_cell_contest(fixed_rows, broken_rows=(), cell_size=9, misses=4):
    """Four runs (two splits) judged on a worst cell of ``cell_size`` rows per run; the
    incumbent misses the first ``misses`` rows of the cell in each half, the challenger
    fixes the rows ``fixed_rows`` and breaks the rows ``broken_rows``.

    Row ``i`` is the first half's, ``per_run + i`` the second half's (``per_run`` is
    ``cell_size + 60``). Each split's two runs judge the two halves of the annotated
    rows, so every row is judged once per split, as in the estimator's cross-fitting.
    """
    torch = pytest.importorskip("torch")
    big = 60  # rows per run in the other cell, all right by both heads
    per_run = cell_size + big
    y = np.tile(np.r_[np.zeros(cell_size, int), np.ones(big, int)], 2)
    cells = y.copy()
    annotated = _cell_rows(y, cells)
    halves = (torch.arange(per_run), torch.arange(per_run, 2 * per_run))
    runs = [_types.RunRows(torch.arange(0), torch.ones(0), rows, rows) for rows in halves] * 2
    incumbent_correct = np.ones(2 * per_run, dtype=bool)
    incumbent_correct[np.r_[0:misses, per_run : per_run + misses]] = False
    challenger_correct = incumbent_correct.copy()
    challenger_correct[list(fixed_rows)] = True
    challenger_correct[list(broken_rows)] = False
    incumbent = _logits_for(incumbent_correct, y)
    challenger = _logits_for(challenger_correct, y)
    balanced = _types.HeadChoice(
        chosen="balanced_standardised", run_logits=[incumbent[run.selection_rows] for run in runs]
    )
    balanced.scores = {
        "balanced_standardised": _candidates.candidate_score(balanced.run_logits, runs, annotated)
    }
    logits = [challenger[run.selection_rows] for run in runs]
    return _candidates.weigh_challenger(logits, balanced.run_logits, runs, annotated)


@pytest.mark.parametrize("n_fixed", [1, 2])
def test_a_lead_that_rests_on_one_or_two_rows_of_a_small_cell_is_not_enough(n_fixed):
    verdict = _small_cell_contest(fixed_rows=range(n_fixed))
    # the normal approximation calls it more than a standard error ...
    assert verdict.lead > verdict.margin
    # ... but n rows out of n disagreeing ones come up by luck with chance 2^-n
    assert verdict.tail == pytest.approx(0.5**n_fixed)
    assert not verdict.challenger_wins


def test_a_lead_of_three_rows_with_none_lost_replaces_the_simple_head():
    verdict = _small_cell_contest(fixed_rows=range(3))
    assert verdict.tail == pytest.approx(0.125) and verdict.lead > verdict.margin
    assert verdict.challenger_wins


def test_a_lead_that_one_split_of_the_rows_contradicts_is_not_enough():
    # eight rows fixed in the first half, one broken in the second: a clear lead overall,
    # but the runs judged on the second half do worse than the simple head there
    cell_size = 20
    second_half = cell_size + 60
    verdict = _small_cell_contest(
        fixed_rows=range(8), broken_rows=[second_half + 15], cell_size=cell_size, misses=10
    )
    assert verdict.lead > verdict.margin and verdict.tail < _types.ONE_STANDARD_ERROR_TAIL
    assert verdict.weakest_run_lead == pytest.approx(-1 / cell_size)
    assert not verdict.challenger_wins
    # the same lead with the second half level: it replaces the simple head
    verdict = _small_cell_contest(fixed_rows=range(8), cell_size=cell_size, misses=10)
    assert verdict.weakest_run_lead == 0 and verdict.challenger_wins


def test_rows_lost_elsewhere_in_the_cell_count_against_the_lead():
    # four fixed, one broken: a lead of three rows, but 6 of 32 outcomes are as good
    verdict = _small_cell_contest(fixed_rows=range(4), broken_rows=[5])
    assert verdict.tail == pytest.approx(6 / 32)
    assert not verdict.challenger_wins
    verdict = _small_cell_contest(fixed_rows=range(4), broken_rows=[])
    assert verdict.tail == pytest.approx(1 / 16) and verdict.challenger_wins


def test_discordant_rows_count_sample_weight_as_copies():
    torch = pytest.importorskip("torch")
    y = np.array([0, 0, 0, 1, 1, 1])
    annotated = _cell_rows(y, y)
    annotated.weight = torch.tensor([3.0, 1, 1, 1, 1, 1], dtype=torch.float64)
    run = _types.RunRows(torch.arange(0), torch.ones(0), slice(None), slice(None))
    incumbent = _logits_for(np.array([False, True, False, True, True, True]), y)
    challenger = _logits_for(np.array([True, True, False, True, True, True]), y)
    # one run: row 0 of weight 3 is three rows the challenger alone gets right
    tail = _candidates.weigh_challenger([challenger], [incumbent], [run], annotated).tail
    assert tail == pytest.approx(0.125)
    assert _candidates.weigh_challenger([incumbent], [incumbent], [run], annotated).tail == 1.0


def test_candidate_score_ignores_the_scale_of_the_logits():
    torch = pytest.importorskip("torch")
    generator = torch.Generator().manual_seed(0)
    y = torch.randint(0, 2, (40,), generator=generator)
    # informative but noisy logits: the best temperature lies inside the grid
    signal = torch.nn.functional.one_hot(y, 2).to(torch.float64)
    logits = 2 * signal + torch.randn(40, 2, generator=generator, dtype=torch.float64)
    annotated = _types.AnnotatedRows(
        torch.zeros(40, 1, dtype=torch.float64),
        y,
        torch.ones(40, dtype=torch.float64),
        cells=y,
        n_cells=2,
        hard_set_cells=y,
        n_hard_set_cells=2,
    )
    run = _types.RunRows(torch.arange(0), torch.ones(0), slice(None), slice(None))
    score = _candidates.candidate_score([logits], [run], annotated)
    doubled = _candidates.candidate_score([logits * 2.0], [run], annotated)
    assert doubled["worst_group_loss"] == pytest.approx(score["worst_group_loss"])
    assert doubled["worst_group_accuracy"] == score["worst_group_accuracy"]
    plain = _scores._group_scores(logits, y, y, 2)
    assert score["worst_group_loss"] <= plain["worst_group_loss"]
    assert score["worst_group_accuracy"] == plain["worst_group_accuracy"]
    # the vectorised loss is the smallest worst-group loss over the temperatures
    looped = min(
        _scores._group_scores(logits / t, y, y, 2)["worst_group_loss"]
        for t in _candidates.CALIBRATION_TEMPERATURES
    )
    assert score["worst_group_loss"] == pytest.approx(looped, rel=1e-12)
    # a nearly flat head scores about log 2 on every group, but loses on accuracy
    flat = _candidates.candidate_score(
        [logits * 1e-6 + torch.tensor([1e-3, 0.0])], [run], annotated
    )
    assert flat["worst_group_accuracy"] == 0.0
    assert _candidates._rank(score) < _candidates._rank(flat)


def test_defaults_do_not_fall_below_a_group_balanced_logistic_regression():
    """Where ERM fails the minority groups, the candidates contain the balanced fix."""
    worst = {"ours": [], "balanced": [], "erm": []}
    for seed in range(3):
        X, y, groups = make_spurious_embeddings(
            n_samples=3000, n_features=16, known_group_fraction=0.4, random_state=seed
        )
        known = np.flatnonzero(groups != -1)
        test = np.zeros(y.size, dtype=bool)
        test[known[::2]] = True  # half of the annotated rows: a test split the fit never sees
        X_fit, y_fit, groups_fit = X[~test], y[~test], groups[~test]
        annotated = groups_fit != -1
        _, cell_index, cell_counts = np.unique(
            groups_fit[annotated], return_inverse=True, return_counts=True
        )
        fits = {
            "ours": MetaAugmentedHeadClassifier(random_state=seed).fit(X_fit, y_fit, groups_fit),
            "balanced": LogisticRegression().fit(
                X_fit[annotated], y_fit[annotated], sample_weight=1 / cell_counts[cell_index]
            ),
            "erm": LogisticRegression().fit(X_fit[~annotated], y_fit[~annotated]),
        }
        for name, model in fits.items():
            predicted = model.predict(X[test])
            worst[name].append(worst_group_accuracy_score(y[test], predicted, groups=groups[test]))
    mean = {name: np.mean(values) for name, values in worst.items()}
    assert mean["ours"] >= mean["balanced"] - 0.02, mean
    assert mean["ours"] >= mean["erm"] + 0.1, mean


def test_a_given_initial_head_is_where_the_runs_start():
    X, y, groups = _spurious_with_few_annotated()
    known = groups != -1
    given = LogisticRegression().fit(X[known], y[known])
    model = MetaAugmentedHeadClassifier(initial_head=(given.coef_, given.intercept_), **FAST)
    model.fit(X, y, groups)
    np.testing.assert_allclose(model.initial_coef_, given.coef_)
    assert "runs" in model.candidate_scores_


def test_balanced_candidates_are_not_weighed_for_pool_supports_or_a_single_run():
    X, y, groups = _spurious_with_few_annotated()
    pool = MetaAugmentedHeadClassifier(support_source="pool", support_size_per_class=16, **FAST)
    assert pool.fit(X, y, groups).candidate_scores_ is None
    # one annotated row per class: a single run would score its start on the rows it was fitted on
    few = np.full_like(groups, -1)
    for label in np.unique(y):
        first = np.flatnonzero((y == label) & (groups != -1))[0]
        few[first] = groups[first]
    with pytest.warns(UserWarning, match="held-out row"):
        single = MetaAugmentedHeadClassifier(**FAST).fit(X, y, few)
    assert single.best_epoch_.shape == (1,) and single.candidate_scores_ is None
