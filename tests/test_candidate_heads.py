"""Candidate heads: the runs' heads or group-balanced logistic regressions, cross-fitted."""

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression

from sklearn_featmeta import MetaAugmentedHeadClassifier, _hsfm
from sklearn_featmeta._preprocessing import isotropic_factor
from sklearn_featmeta.datasets import make_spurious_embeddings
from sklearn_featmeta.metrics import worst_group_accuracy_score

FAST = {"n_repeats": 2, "outer_steps": 1, "inner_steps": 5, "random_state": 0}


@pytest.mark.parametrize("n_rows", [60, 12])  # more rows than features, and fewer (row space)
def test_regression_path_solves_weighted_multinomial_logistic_regression(n_rows):
    rng = np.random.default_rng(0)
    X = rng.normal(size=(n_rows, 20)) * rng.uniform(0.2, 3, size=20)
    y = np.arange(n_rows) % 3
    sample_weight = rng.uniform(0.5, 2, size=n_rows)
    row_weight = sample_weight / sample_weight.sum()
    path = [10.0, 0.1, 0.003]
    heads = _hsfm.softmax_regression_path(X, y, row_weight, 3, path)

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
    assert model.selected_heads_ == min(scores, key=lambda name: _hsfm._rank(scores[name]))
    assert (model.selected_heads_ == "runs") == (model.balanced_l2_ is None)
    assert model.balanced_l2_ is None or model.balanced_l2_ in _hsfm.BALANCED_L2_PATH


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


def test_candidate_score_ignores_the_scale_of_the_logits():
    torch = pytest.importorskip("torch")
    generator = torch.Generator().manual_seed(0)
    y = torch.randint(0, 2, (40,), generator=generator)
    # informative but noisy logits: the best temperature lies inside the grid
    signal = torch.nn.functional.one_hot(y, 2).to(torch.float64)
    logits = 2 * signal + torch.randn(40, 2, generator=generator, dtype=torch.float64)
    heldout = _hsfm.HeldoutRows(
        torch.zeros(40, 1, dtype=torch.float64),
        y,
        torch.ones(40, dtype=torch.float64),
        cells=y,
        n_cells=2,
        hard_set_cells=y,
        n_hard_set_cells=2,
    )
    run = _hsfm.RunRows(torch.arange(0), torch.ones(0), slice(None), slice(None))
    score = _hsfm.candidate_score([logits], [run], heldout)
    doubled = _hsfm.candidate_score([logits * 2.0], [run], heldout)
    assert doubled["worst_group_loss"] == pytest.approx(score["worst_group_loss"])
    assert doubled["worst_group_accuracy"] == score["worst_group_accuracy"]
    plain = _hsfm._group_scores(logits, y, y, 2)
    assert score["worst_group_loss"] <= plain["worst_group_loss"]
    assert score["worst_group_accuracy"] == plain["worst_group_accuracy"]
    # the vectorised loss is the smallest worst-group loss over the temperatures
    looped = min(
        _hsfm._group_scores(logits / t, y, y, 2)["worst_group_loss"]
        for t in _hsfm.CALIBRATION_TEMPERATURES
    )
    assert score["worst_group_loss"] == pytest.approx(looped, rel=1e-12)
    # a nearly flat head scores about log 2 on every group, but loses on accuracy
    flat = _hsfm.candidate_score([logits * 1e-6 + torch.tensor([1e-3, 0.0])], [run], heldout)
    assert flat["worst_group_accuracy"] == 0.0
    assert _hsfm._rank(score) < _hsfm._rank(flat)


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
