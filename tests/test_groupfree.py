"""fit(X, y) without group labels: the ERM head, or the reweighted head where it stays close."""

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.utils._param_validation import InvalidParameterError

from sklearn_featmeta import MetaAugmentedHeadClassifier
from sklearn_featmeta._core import _groupfree
from sklearn_featmeta.datasets import make_spurious_embeddings


def _three_classes(n=1500, seed=0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, size=n)
    X = rng.normal(size=(n, 6)) * rng.uniform(0.5, 4, size=6) + np.eye(3, 6)[y] * 1.5
    return X, y


@pytest.mark.parametrize("class_weight", [None, "balanced", {0: 1.0, 1: 3.0, 2: 0.5}])
@pytest.mark.parametrize("n_classes", [2, 3])
def test_without_reweighting_the_head_is_standardised_logistic_regression(class_weight, n_classes):
    X, y = _three_classes()
    if n_classes == 2:
        y = (y == 0).astype(int)
        class_weight = {0: 1.0, 1: 3.0} if isinstance(class_weight, dict) else class_weight
    model = MetaAugmentedHeadClassifier(
        reweight_gamma=0, class_weight=class_weight, erm_C=0.3, random_state=0
    ).fit(X, y)
    reference = make_pipeline(
        StandardScaler(), LogisticRegression(C=0.3, class_weight=class_weight, tol=1e-8)
    ).fit(X, y)
    assert model.selected_heads_ == "erm" and model.candidate_scores_ is None
    np.testing.assert_allclose(
        model.decision_function(X), reference.decision_function(X), atol=1e-2
    )
    np.testing.assert_array_equal(model.coef_, model.initial_coef_)
    assert model.coef_.shape == reference[-1].coef_.shape


def test_the_reweighted_head_is_kept_exactly_when_its_cost_is_within_the_tolerance():
    X, y, _ = make_spurious_embeddings(n_samples=1500, n_features=16, random_state=0)
    params = {"reweight_gamma": 1.0, "random_state": 0}
    free = MetaAugmentedHeadClassifier(reweight_tolerance=None, **params).fit(X, y)
    assert free.selected_heads_ == "reweighted" and free.reweight_gamma_ == 1.0
    scores = free.candidate_scores_
    reweighted = scores[_groupfree.reweighted_name(1.0)]
    # the cost is the most accuracy any class gives up, not the class-balanced mean
    lost = scores["erm"]["class_accuracy"] - reweighted["class_accuracy"]
    assert reweighted["cost"] == lost.max() > lost.mean()
    erm = MetaAugmentedHeadClassifier(reweight_gamma=0, random_state=0).fit(X, y)
    for tolerance, chosen in ((reweighted["cost"] + 1e-9, "reweighted"), (lost.mean(), "erm")):
        model = MetaAugmentedHeadClassifier(reweight_tolerance=tolerance, **params).fit(X, y)
        assert model.selected_heads_ == chosen
        assert model.reweight_gamma_ == (1.0 if chosen == "reweighted" else 0.0)
        np.testing.assert_equal(model.candidate_scores_, scores)
        expected = free.coef_ if chosen == "reweighted" else free.initial_coef_
        np.testing.assert_array_equal(model.coef_, expected)
    # the ERM head is the same whether or not a reweighted head was weighed (within L-BFGS's tol)
    np.testing.assert_allclose(free.initial_coef_, erm.coef_, rtol=1e-2, atol=1e-3)
    assert not np.allclose(free.coef_, erm.coef_, rtol=1e-2, atol=1e-3)


def test_the_strongest_head_within_the_tolerance_is_kept():
    X, y, _ = make_spurious_embeddings(n_samples=1500, n_features=16, random_state=0)
    strengths = (4.0, 1.0, 0.0, 2.0)  # in any order; 0 is the ERM head itself
    params = {"reweight_gamma": strengths, "random_state": 0}
    free = MetaAugmentedHeadClassifier(reweight_tolerance=None, **params).fit(X, y)
    assert free.reweight_gamma_ == 4.0
    names = [_groupfree.reweighted_name(gamma) for gamma in (1.0, 2.0, 4.0)]
    assert list(free.candidate_scores_) == ["erm", *names]
    costs = [free.candidate_scores_[name]["cost"] for name in names]
    for gamma, cost in zip((1.0, 2.0, 4.0), costs, strict=True):
        tolerance = cost + 1e-9
        model = MetaAugmentedHeadClassifier(reweight_tolerance=tolerance, **params).fit(X, y)
        expected = max(g for g, c in zip((1.0, 2.0, 4.0), costs, strict=True) if c <= tolerance)
        assert model.reweight_gamma_ == expected >= gamma
        # the head kept is the one a fit given that strength alone keeps
        alone = MetaAugmentedHeadClassifier(
            reweight_gamma=expected, reweight_tolerance=None, random_state=0
        )
        np.testing.assert_allclose(model.coef_, alone.fit(X, y).coef_, rtol=1e-6, atol=1e-9)


def test_the_rule_keeps_the_strongest_head_within_the_tolerance_on_hand_built_costs():
    costs = {1.0: 0.004, 2.0: 0.03, 4.0: 0.01}
    assert _groupfree.strongest_within(costs, 0.015) == 4.0  # a failing strength in between
    assert _groupfree.strongest_within(costs, 0.005) == 1.0
    assert _groupfree.strongest_within(costs, 0.001) is None
    assert _groupfree.strongest_within(costs, None) == 4.0
    assert _groupfree.strongest_within({}, None) is None


def test_a_head_that_gains_on_average_but_loses_a_class_is_not_kept():
    # three classes; the reweighted head is hand-built to be better on two classes and worse
    # on the third: its class-balanced accuracy rises, its cost is the third class's loss
    y = np.repeat([0, 1, 2], 100)
    erm_correct = np.ones(300, dtype=bool)
    erm_correct[[*range(10), *range(100, 110), *range(200, 210)]] = False  # 0.9 on each class
    correct = np.ones(300, dtype=bool)
    correct[200:230] = False  # 1.0, 1.0, 0.7
    erm = _groupfree._scores(erm_correct, y, np.ones(300))
    reweighted = _groupfree._scores(correct, y, np.ones(300), erm["class_accuracy"])
    assert reweighted["balanced_accuracy"] == pytest.approx(0.9) == erm["balanced_accuracy"]
    assert reweighted["cost"] == pytest.approx(0.2)
    assert _groupfree.strongest_within({1.0: reweighted["cost"]}, 0.015) is None


def test_a_head_that_weighs_up_noise_is_not_chosen():
    # 12% of the labels flipped at random: the rows the ERM head gets wrong are noise, and a
    # head that weighs them up hard loses accuracy on held-out rows of both classes
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, size=3000)
    X = rng.normal(size=(3000, 8)) + 1.5 * y[:, None] * np.r_[1.0, np.zeros(7)]
    flipped = rng.random(3000) < 0.12
    y[flipped] = 1 - y[flipped]
    model = MetaAugmentedHeadClassifier(reweight_gamma=8.0, random_state=0).fit(X, y)
    scores = model.candidate_scores_
    reweighted = scores[_groupfree.reweighted_name(8.0)]
    assert reweighted["balanced_accuracy"] < scores["erm"]["balanced_accuracy"] - 0.01
    assert model.selected_heads_ == "erm" and model.reweight_gamma_ == 0.0
    np.testing.assert_array_equal(model.coef_, model.initial_coef_)


def test_the_scores_are_out_of_fold():
    # more features than rows: the ERM head fits every row it saw, so in-sample scores would
    # be perfect and every row would weigh the same
    rng = np.random.default_rng(0)
    y = np.arange(80) % 2
    X = rng.normal(size=(80, 200))
    X[:, 0] += y
    model = MetaAugmentedHeadClassifier(erm_C=100.0, random_state=0).fit(X, y)
    assert (model.predict(X) == y).all()
    assert model.candidate_scores_["erm"]["balanced_accuracy"] < 0.95


def test_hard_row_weights_weigh_up_unsure_rows_and_keep_the_total():
    p_true = np.array([0.9, 0.1, 0.5, 0.5])
    y = np.array([0, 0, 1, 1])
    weight = _groupfree.hard_row_weights(p_true, y, np.ones(4), np.array([1.0, 2.0]), gamma=2.0)
    np.testing.assert_allclose(weight.sum(), 4.0)
    np.testing.assert_allclose(weight[1] / weight[0], np.exp(1.6))
    np.testing.assert_allclose(weight[2] / weight[0], 2 * np.exp(0.8))


def test_the_fit_follows_the_rows_not_their_order_or_copies():
    X, y, _ = make_spurious_embeddings(n_samples=900, n_features=8, random_state=1)
    model = MetaAugmentedHeadClassifier(reweight_tolerance=None, random_state=3).fit(X, y)
    order = np.random.default_rng(0).permutation(y.size)
    shuffled = MetaAugmentedHeadClassifier(reweight_tolerance=None, random_state=3)
    np.testing.assert_allclose(shuffled.fit(X[order], y[order]).coef_, model.coef_, rtol=1e-5)
    # an integer sample weight is that many copies of the row
    copies = np.r_[np.ones(450, dtype=int), np.full(450, 2)]
    weighted = MetaAugmentedHeadClassifier(reweight_tolerance=None, random_state=3)
    weighted.fit(X, y, sample_weight=copies)
    repeated = MetaAugmentedHeadClassifier(reweight_tolerance=None, random_state=3)
    repeated.fit(np.repeat(X, copies, axis=0), np.repeat(y, copies))
    np.testing.assert_allclose(weighted.coef_, repeated.coef_, rtol=1e-4, atol=1e-6)


def test_groups_with_none_known_fit_as_without_groups():
    X, y, _ = make_spurious_embeddings(n_samples=900, n_features=8, random_state=0)
    model = MetaAugmentedHeadClassifier(random_state=0).fit(X, y)
    unknown = MetaAugmentedHeadClassifier(random_state=0)
    with pytest.warns(UserWarning, match="No row of groups is known"):
        unknown.fit(X, y, np.full(y.size, -1))
    np.testing.assert_array_equal(unknown.coef_, model.coef_)
    assert model.history_ == {} and model.best_epoch_.shape == (0,)
    assert not hasattr(model, "support_init_")


def test_class_weight_weighs_the_erm_head_of_a_fit_with_groups():
    X, y, groups = make_spurious_embeddings(
        n_samples=1200, n_features=8, known_group_fraction=0.3, random_state=0
    )
    y = np.where((y == 1) & (np.arange(y.size) % 3 > 0), 0, y)  # class 1 now rare
    pool = groups == -1
    kwargs = {"n_repeats": 1, "max_epochs": 1, "random_state": 0}
    plain = MetaAugmentedHeadClassifier(**kwargs).fit(X, y, groups)
    balanced = MetaAugmentedHeadClassifier(class_weight="balanced", **kwargs).fit(X, y, groups)
    Z = StandardScaler().fit(X[pool]).transform(X)
    # the softmax head's two rows: LogisticRegression(C=2 * erm_C) for two classes
    reference = LogisticRegression(C=2.0, class_weight="balanced").fit(Z[pool], y[pool])
    initial = X @ balanced.initial_coef_.T + balanced.initial_intercept_
    assert np.mean((initial.ravel() > 0) == reference.predict(Z).astype(bool)) > 0.99
    assert np.mean(X @ plain.initial_coef_.T + plain.initial_intercept_ > 0) < np.mean(initial > 0)


@pytest.mark.parametrize(
    "params",
    [
        {"reweight_gamma": -1.0},
        {"reweight_tolerance": 1.5},
        {"reweight_tolerance": -0.1},
        {"class_weight": "even"},
        {"class_weight": [1.0, 2.0]},
    ],
)
def test_group_free_parameters_are_validated(params):
    X, y, _ = make_spurious_embeddings(n_samples=200, n_features=4, random_state=0)
    with pytest.raises(InvalidParameterError):
        MetaAugmentedHeadClassifier(**params).fit(X, y)


@pytest.mark.parametrize(
    "gamma", [(1.0, -2.0), (1.0, float("nan")), ("2",), [1.0, np.inf], (True,)]
)
def test_a_bad_strength_among_several_is_named(gamma):
    X, y, groups = make_spurious_embeddings(
        n_samples=200, n_features=4, known_group_fraction=0.5, random_state=0
    )
    for fit_groups in (None, groups):  # an error also where groups make it unused
        with pytest.raises(ValueError, match=r"reweight_gamma must be a number >= 0"):
            MetaAugmentedHeadClassifier(reweight_gamma=gamma).fit(X, y, fit_groups)


@pytest.mark.parametrize("gamma", [0.0, (), (0.0,), [0, 0.0]])
def test_no_positive_strength_fits_the_erm_head_alone(gamma):
    X, y, _ = make_spurious_embeddings(n_samples=600, n_features=6, random_state=0)
    model = MetaAugmentedHeadClassifier(reweight_gamma=gamma, random_state=0).fit(X, y)
    assert model.selected_heads_ == "erm" and model.candidate_scores_ is None
    assert model.reweight_gamma_ == 0.0
