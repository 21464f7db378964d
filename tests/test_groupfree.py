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
from sklearn_featmeta.metrics import worst_group_accuracy_score


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


GAMMA_1, GAMMA_2 = _groupfree.reweighted_key(1.0), _groupfree.reweighted_key(2.0)


def _spurious_training_rows(n_samples=3000):
    X, y, groups = make_spurious_embeddings(
        n_samples=n_samples, n_features=16, known_group_fraction=0.5, random_state=0
    )
    return X[groups == -1], y[groups == -1]


def test_the_reweighted_head_is_kept_exactly_when_its_cost_is_within_the_tolerance():
    X, y = _spurious_training_rows()
    free = MetaAugmentedHeadClassifier(reweight_gamma=1.0, reweight_tolerance=None, random_state=0)
    free.fit(X, y)
    assert free.selected_heads_ == GAMMA_1
    scores = free.candidate_scores_
    assert scores[GAMMA_1]["right_where_heads_disagree"] < 0.5  # the other test passes
    cost = scores[GAMMA_1]["largest_class_cost"]
    mean_cost = scores["erm"]["balanced_accuracy"] - scores[GAMMA_1]["balanced_accuracy"]
    assert 0 < mean_cost < cost  # the bound holds every class, not only their mean
    erm = MetaAugmentedHeadClassifier(reweight_gamma=0, random_state=0).fit(X, y)
    for tolerance, chosen in ((cost + 1e-9, GAMMA_1), (cost - 1e-9, "erm"), (mean_cost, "erm")):
        model = MetaAugmentedHeadClassifier(
            reweight_gamma=1.0, reweight_tolerance=tolerance, random_state=0
        ).fit(X, y)
        assert model.selected_heads_ == chosen
        # the share of the rows it changes is weighed only where it passes the bound
        expected = dict(scores)
        if chosen == "erm":
            expected[GAMMA_1] = {k: v for k, v in scores[GAMMA_1].items() if "right" not in k}
        assert model.candidate_scores_ == expected
        expected = free.coef_ if chosen == GAMMA_1 else free.initial_coef_
        np.testing.assert_array_equal(model.coef_, expected)
    # the ERM head is the same whether or not a reweighted head was weighed (within L-BFGS's tol)
    np.testing.assert_allclose(free.initial_coef_, erm.coef_, rtol=1e-2, atol=1e-3)
    assert not np.allclose(free.coef_, erm.coef_, rtol=1e-2, atol=1e-3)


def test_a_stronger_head_is_tried_only_where_the_weaker_one_is_kept():
    X, y = _spurious_training_rows()
    # reweight_tolerance=None keeps the strongest; with a tolerance the rows decide
    strongest = MetaAugmentedHeadClassifier(
        reweight_gamma=(1.0, 2.0), reweight_tolerance=None, random_state=0
    )
    scores = strongest.fit(X, y).candidate_scores_
    assert strongest.selected_heads_ == GAMMA_2 and list(scores) == ["erm", GAMMA_1, GAMMA_2]
    alone = MetaAugmentedHeadClassifier(
        reweight_gamma=2.0, reweight_tolerance=None, random_state=0
    ).fit(X, y)
    # the same head, started from the gamma-1 head instead of the ERM head
    np.testing.assert_allclose(strongest.coef_, alone.coef_, rtol=1e-2, atol=1e-3)
    # gamma 2 gives up more than gamma 1 on some class: a tolerance between them keeps gamma 1
    costs = [scores[key]["largest_class_cost"] for key in (GAMMA_1, GAMMA_2)]
    assert costs[0] < costs[1]
    between = MetaAugmentedHeadClassifier(
        reweight_gamma=(1.0, 2.0), reweight_tolerance=float(np.mean(costs)), random_state=0
    ).fit(X, y)
    assert between.selected_heads_ == GAMMA_1
    assert "right_where_heads_disagree" not in between.candidate_scores_[GAMMA_2]
    one = MetaAugmentedHeadClassifier(
        reweight_gamma=1.0, reweight_tolerance=float(np.mean(costs)), random_state=0
    )
    np.testing.assert_array_equal(between.coef_, one.fit(X, y).coef_)
    # below gamma 1's cost neither is kept, and gamma 2 is not fitted
    below = MetaAugmentedHeadClassifier(
        reweight_gamma=(1.0, 2.0), reweight_tolerance=costs[0] / 2, random_state=0
    ).fit(X, y)
    assert below.selected_heads_ == "erm" and list(below.candidate_scores_) == ["erm", GAMMA_1]


def _easy_rows_far_and_a_tight_cluster_near_the_boundary(seed):
    # class 1: three rows in four far from class 0, the rest in a tight cluster just past the
    # log-loss boundary; a head fitted to the hard rows moves the boundary past that cluster
    # and wins most of the rows it changes, on held-out rows too: better in-distribution, not
    # more robust
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, 4000)
    far = rng.random(4000) < 0.75
    x = np.where(far, rng.normal(7.0, 1.0, 4000), rng.normal(0.85, 0.15, 4000))
    x = np.where(y == 0, rng.normal(0.0, 0.5, 4000), x)
    return np.c_[x, rng.normal(size=(4000, 3))], y


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_a_head_that_wins_the_rows_it_changes_is_not_chosen(seed):
    X, y = _easy_rows_far_and_a_tight_cluster_near_the_boundary(seed)
    free = MetaAugmentedHeadClassifier(reweight_gamma=1.0, reweight_tolerance=None)
    scores = free.set_params(random_state=0).fit(X, y).candidate_scores_
    # it beats the ERM head on cross-fitted rows and on the training rows it changes
    assert scores[GAMMA_1]["balanced_accuracy"] >= scores["erm"]["balanced_accuracy"]
    assert scores[GAMMA_1]["right_where_heads_disagree"] > 0.55
    assert free.selected_heads_ == GAMMA_1
    model = MetaAugmentedHeadClassifier(random_state=0).fit(X, y)
    # nor is a stronger one tried after it
    assert model.selected_heads_ == "erm" and model.candidate_scores_ == scores
    np.testing.assert_array_equal(model.coef_, free.initial_coef_)


def test_a_head_that_gives_up_majority_rows_for_the_minority_is_chosen():
    X, y, groups = make_spurious_embeddings(
        n_samples=6000, n_features=16, known_group_fraction=0.5, random_state=0
    )
    train = groups == -1  # the spurious correlation; the known rows are group-balanced
    model = MetaAugmentedHeadClassifier(random_state=0).fit(X[train], y[train])
    assert model.selected_heads_ != "erm"
    assert model.candidate_scores_[model.selected_heads_]["right_where_heads_disagree"] < 0.5
    erm = (X[~train] @ model.initial_coef_.T + model.initial_intercept_).ravel() > 0
    worst = {
        name: worst_group_accuracy_score(y[~train], predicted, groups=groups[~train])
        for name, predicted in (("erm", erm.astype(int)), ("reweighted", model.predict(X[~train])))
    }
    assert worst["reweighted"] > worst["erm"] + 0.01


def test_right_where_heads_disagree_counts_the_rows_by_weight():
    y = np.array([0, 1, 0, 1])
    erm_predicted = np.array([0, 0, 0, 1])
    predicted = np.array([1, 1, 0, 1])  # they disagree on the first two rows, right on the second
    weight = np.array([1.0, 3.0, 1.0, 1.0])
    right = _groupfree.right_where_heads_disagree(predicted, erm_predicted, y, weight)
    assert right == pytest.approx(0.75)
    assert _groupfree.right_where_heads_disagree(y, y, y, weight) is None


def test_a_head_that_weighs_up_noise_is_not_chosen():
    # 12% of the labels flipped at random: the rows the ERM head gets wrong are noise, and a
    # head that weighs them up hard loses accuracy on held-out rows of both classes
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, size=3000)
    X = rng.normal(size=(3000, 8)) + 1.5 * y[:, None] * np.r_[1.0, np.zeros(7)]
    flipped = rng.random(3000) < 0.12
    y[flipped] = 1 - y[flipped]
    model = MetaAugmentedHeadClassifier(reweight_gamma=8.0, random_state=0).fit(X, y)
    scores = model.candidate_scores_[_groupfree.reweighted_key(8.0)]
    assert scores["balanced_accuracy"] < model.candidate_scores_["erm"]["balanced_accuracy"] - 0.01
    assert model.selected_heads_ == "erm"
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
        {"reweight_gamma": "1"},
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
    "reweight_gamma",
    [(2.0, 1.0), (1.0, 1.0), (), (0.0, 1.0), [[1.0, 2.0]], (1.0, np.inf), ["a", "b"]],
)
def test_a_sequence_of_strengths_must_be_positive_and_increasing(reweight_gamma):
    X, y, groups = make_spurious_embeddings(
        n_samples=200, n_features=4, known_group_fraction=0.5, random_state=0
    )
    model = MetaAugmentedHeadClassifier(reweight_gamma=reweight_gamma, max_epochs=1)
    for fit_groups in (None, groups):  # ignored with groups, still checked
        with pytest.raises(ValueError, match="reweight_gamma must be"):
            model.fit(X, y, fit_groups)


def test_verbose_says_which_head_and_why(capsys):
    X, y = _easy_rows_far_and_a_tight_cluster_near_the_boundary(0)
    MetaAugmentedHeadClassifier(verbose=1, random_state=0).fit(X, y)
    line = capsys.readouterr().out
    assert "no known group, 4000 rows: fitted head erm" in line
    assert f"{GAMMA_1} " in line and "of the rows it changes" in line
    assert GAMMA_2 not in line  # not tried: gamma 1 wins most of the rows it changes
