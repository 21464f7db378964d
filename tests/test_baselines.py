"""DFRClassifier: scikit-learn checks, groups semantics, the recipe."""

import numpy as np
import pytest
from sklearn.utils.estimator_checks import parametrize_with_checks

from sklearn_featmeta.baselines import DFRClassifier
from sklearn_featmeta.datasets import make_spurious_embeddings

# liblinear stops at its tolerance (1e-4), so weighted and repeated rows agree to
# about 1e-5, not to scikit-learn's 1e-7: test_integer_weights_equal_repeated_rows
# checks it at the solver's precision.
_EXPECTED_FAILURES = {
    "check_sample_weight_equivalence_on_dense_data": "liblinear solves to tol=1e-4",
}


@parametrize_with_checks(
    [DFRClassifier(random_state=0)], expected_failed_checks=lambda _: _EXPECTED_FAILURES
)
def test_scikit_learn_compatible(estimator, check):
    check(estimator)


@pytest.fixture(scope="module")
def spurious():
    return make_spurious_embeddings(n_samples=800, n_features=12, random_state=0)


def test_dfr_beats_erm_on_worst_group(demo_worst_group_accuracies):
    erm_wga, dfr_wga = demo_worst_group_accuracies(DFRClassifier(random_state=0))
    assert dfr_wga > erm_wga + 0.2


def test_unknown_rows_are_not_used(spurious):
    X, y, groups = spurious
    known = groups != -1
    scrambled = X.copy()
    scrambled[~known] = np.random.RandomState(1).standard_normal(scrambled[~known].shape)
    a = DFRClassifier(random_state=0).fit(X, y, groups)
    b = DFRClassifier(random_state=0).fit(scrambled, y, groups)
    c = DFRClassifier(random_state=0).fit(X[known], y[known], groups[known])
    np.testing.assert_array_equal(a.coef_, b.coef_)
    np.testing.assert_array_equal(a.coef_, c.coef_)


def test_C_is_chosen_from_the_grid_by_worst_group_accuracy(spurious):
    X, y, groups = spurious
    model = DFRClassifier(random_state=0).fit(X, y, groups)
    assert set(model.tuning_scores_) == {1.0, 0.7, 0.3, 0.1, 0.07, 0.03, 0.01}
    assert model.C_ == max(model.tuning_scores_, key=model.tuning_scores_.get)
    assert model.coef_.shape == (1, 12)


def test_groups_none_balances_classes_and_multiclass_shapes():
    X, y, _ = make_spurious_embeddings(n_samples=600, n_features=12, n_classes=3, random_state=2)
    model = DFRClassifier(n_estimators=3, random_state=0).fit(X, y)
    assert model.coef_.shape == (3, 12) and model.predict_proba(X).shape == (600, 3)
    assert model.score(X, y) > 0.6


def test_errors(spurious):
    X, y, groups = spurious
    with pytest.raises(ValueError, match=r"Class\(es\) \[1\] have no rows with a known group"):
        DFRClassifier().fit(X, y, np.where(y == 1, -1, groups))
    with pytest.raises(ValueError, match="Cs must be a non-empty sequence"):
        DFRClassifier(Cs=()).fit(X, y, groups)
    with pytest.raises(ValueError, match="only one class"):
        DFRClassifier().fit(X, np.zeros(X.shape[0]), groups)
