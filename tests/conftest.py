"""Shared fixtures."""

import pytest
from sklearn.linear_model import LogisticRegression

from sklearn_featmeta.datasets import _demo_problem
from sklearn_featmeta.metrics import worst_group_accuracy_score


@pytest.fixture(scope="session")
def demo_worst_group_accuracies():
    """``f(model) -> (ERM's, model's)`` test worst-group accuracy on the demo problem.

    ERM is LogisticRegression on the unannotated training rows; ``model`` is
    fitted on all rows with their groups, as the estimators of this package are.
    """
    (X, y, groups), (X_test, y_test, groups_test) = _demo_problem(random_state=0)
    unannotated = groups == -1
    erm = LogisticRegression().fit(X[unannotated], y[unannotated])
    erm_wga = worst_group_accuracy_score(y_test, erm.predict(X_test), groups=groups_test)

    def compare(model):
        model.fit(X, y, groups)
        return erm_wga, worst_group_accuracy_score(
            y_test, model.predict(X_test), groups=groups_test
        )

    return compare
