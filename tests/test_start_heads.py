"""The runs' start heads: the ERM head or group-balanced logistic regressions, cross-fitted."""

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


def test_start_is_the_best_candidate_by_its_cross_fitted_score():
    X, y, groups = _spurious_with_few_annotated()
    model = MetaAugmentedHeadClassifier(**FAST).fit(X, y, groups)
    scores = model.start_scores_
    assert set(scores) == {"initial", "balanced_standardised", "balanced_isotropic"}
    assert model.start_head_ == min(scores, key=scores.get)
    assert (model.start_head_ == "initial") == (model.balanced_l2_ is None)
    assert model.balanced_l2_ is None or model.balanced_l2_ in _hsfm.BALANCED_L2_PATH


def test_without_epochs_the_fit_is_the_mean_start_head():
    X, y, groups = _spurious_with_few_annotated()
    erm_only = {**FAST, "n_epochs": 0, "max_epochs": 0, "balanced_start": False}
    model = MetaAugmentedHeadClassifier(**erm_only).fit(X, y, groups)
    np.testing.assert_allclose(model.coef_, model.initial_coef_, rtol=1e-6)
    assert (model.best_epoch_ == 0).all() and model.start_head_ == "initial"
    assert model.start_scores_ is None


def test_defaults_do_not_fall_below_a_group_balanced_logistic_regression():
    """Where ERM fails the minority groups, the start heads contain the balanced fix."""
    worst = {"ours": [], "balanced": [], "erm": []}
    for seed in range(3):
        X, y, groups = _spurious_with_few_annotated(seed)
        X_test, y_test, groups_test = make_spurious_embeddings(
            n_samples=3000, n_features=16, known_group_fraction=1.0, random_state=seed + 100
        )
        known = groups != -1
        weights = (
            1
            / np.unique(groups[known], return_counts=True)[1][
                np.searchsorted(np.unique(groups[known]), groups[known])
            ]
        )
        fits = {
            "ours": MetaAugmentedHeadClassifier(random_state=seed).fit(X, y, groups),
            "balanced": LogisticRegression().fit(X[known], y[known], sample_weight=weights),
            "erm": LogisticRegression().fit(X[~known], y[~known]),
        }
        for name, model in fits.items():
            worst[name].append(
                worst_group_accuracy_score(y_test, model.predict(X_test), groups=groups_test)
            )
    mean = {name: np.mean(values) for name, values in worst.items()}
    assert mean["ours"] >= mean["balanced"] - 0.02, mean
    assert mean["ours"] >= mean["erm"] + 0.1, mean


def test_start_head_may_be_a_given_head():
    X, y, groups = _spurious_with_few_annotated()
    known = groups != -1
    given = LogisticRegression().fit(X[known], y[known])
    model = MetaAugmentedHeadClassifier(initial_head=(given.coef_, given.intercept_), **FAST)
    model.fit(X, y, groups)
    np.testing.assert_allclose(model.initial_coef_, given.coef_)
    assert "initial" in model.start_scores_


def test_balanced_candidates_are_not_weighed_for_pool_supports_or_a_single_run():
    X, y, groups = _spurious_with_few_annotated()
    pool = MetaAugmentedHeadClassifier(support_source="pool", support_size_per_class=16, **FAST)
    assert pool.fit(X, y, groups).start_scores_ is None
    # one annotated row per class: a single run would score its start on the rows it was fitted on
    few = np.full_like(groups, -1)
    for label in np.unique(y):
        first = np.flatnonzero((y == label) & (groups != -1))[0]
        few[first] = groups[first]
    with pytest.warns(UserWarning, match="held-out row"):
        single = MetaAugmentedHeadClassifier(**FAST).fit(X, y, few)
    assert single.best_epoch_.shape == (1,) and single.start_scores_ is None
