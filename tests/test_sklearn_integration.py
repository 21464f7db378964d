"""groups through scikit-learn: metadata routing on and off, searches, CV, Dask."""

import numpy as np
import pytest
from sklearn import config_context
from sklearn.base import clone
from sklearn.exceptions import UnsetMetadataPassedError
from sklearn.model_selection import GridSearchCV, cross_val_predict, cross_validate
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from sklearn_featmeta import MetaAugmentedHeadClassifier
from sklearn_featmeta.baselines import DFRClassifier
from sklearn_featmeta.datasets import make_spurious_embeddings
from sklearn_featmeta.metrics import worst_group_accuracy_score, worst_group_scorer
from sklearn_featmeta.model_selection import SubgroupStratifiedKFold

FAST = {"n_epochs": 3, "outer_steps": 2, "inner_steps": 4, "n_repeats": 2, "random_state": 0}
ESTIMATORS = [MetaAugmentedHeadClassifier(**FAST), DFRClassifier(n_estimators=2, random_state=0)]
CV = SubgroupStratifiedKFold(3, shuffle=True, random_state=0)


@pytest.fixture(scope="module")
def data():
    return make_spurious_embeddings(
        n_samples=480, n_features=8, known_group_fraction=0.5, random_state=0
    )


def _manual_scores(estimator, X, y, groups, cv=CV):
    """Worst-group accuracy of each fold, fitting and scoring by hand."""
    scores, predictions = [], np.empty_like(y)
    for train, test in cv.split(X, y, groups):
        model = clone(estimator).fit(X[train], y[train], groups[train])
        predictions[test] = model.predict(X[test])
        scores.append(worst_group_accuracy_score(y[test], predictions[test], groups=groups[test]))
    return np.array(scores), predictions


# --------------------------------------------------------------------------- #
# Routing enabled
# --------------------------------------------------------------------------- #
@pytest.mark.parametrize("estimator", ESTIMATORS, ids=lambda e: type(e).__name__)
def test_routing_needs_an_explicit_request(data, estimator):
    """The default request is unset, as scikit-learn's convention: passing groups is an error."""
    X, y, groups = data
    with config_context(enable_metadata_routing=True):
        with pytest.raises(UnsetMetadataPassedError, match="set_fit_request"):
            make_pipeline(StandardScaler(), clone(estimator)).fit(X, y, groups=groups)


@pytest.mark.parametrize("estimator", ESTIMATORS, ids=lambda e: type(e).__name__)
def test_pipeline_routes_groups_to_fit(data, estimator):
    X, y, groups = data
    with config_context(enable_metadata_routing=True):
        pipeline = make_pipeline(StandardScaler(), clone(estimator).set_fit_request(groups=True))
        pipeline.fit(X, y, groups=groups)
    direct = clone(estimator).fit(StandardScaler().fit_transform(X), y, groups)
    np.testing.assert_allclose(pipeline[-1].coef_, direct.coef_, rtol=1e-6)


def test_grid_search_routes_one_groups_to_splitter_fit_and_scorer(data):
    X, y, groups = data
    estimator = MetaAugmentedHeadClassifier(**FAST)
    grid = {"outer_lr": [0.01, 0.1], "hard_set": ["class", "group"]}
    with config_context(enable_metadata_routing=True):
        search = GridSearchCV(
            clone(estimator).set_fit_request(groups=True),
            grid,
            scoring=worst_group_scorer,
            cv=CV,
            refit=True,
            error_score="raise",
        )
        search.fit(X, y, groups=groups)
    for i, params in enumerate(search.cv_results_["params"]):
        expected, _ = _manual_scores(clone(estimator).set_params(**params), X, y, groups)
        observed = [search.cv_results_[f"split{k}_test_score"][i] for k in range(3)]
        np.testing.assert_allclose(observed, expected)
    refitted = clone(estimator).set_params(**search.best_params_).fit(X, y, groups)
    np.testing.assert_array_equal(search.best_estimator_.coef_, refitted.coef_)
    assert search.best_score_ == max(search.cv_results_["mean_test_score"])


@pytest.mark.parametrize("estimator", ESTIMATORS, ids=lambda e: type(e).__name__)
def test_cross_validate_and_cross_val_predict_with_routing(data, estimator):
    X, y, groups = data
    expected_scores, expected_predictions = _manual_scores(estimator, X, y, groups)
    with config_context(enable_metadata_routing=True):
        requested = clone(estimator).set_fit_request(groups=True)
        result = cross_validate(
            requested,
            X,
            y,
            params={"groups": groups},
            cv=CV,
            scoring={"worst_group": worst_group_scorer, "accuracy": "accuracy"},
        )
        predictions = cross_val_predict(requested, X, y, params={"groups": groups}, cv=CV)
    np.testing.assert_allclose(result["test_worst_group"], expected_scores)
    np.testing.assert_array_equal(predictions, expected_predictions)


# --------------------------------------------------------------------------- #
# Routing disabled (the default)
# --------------------------------------------------------------------------- #
@pytest.mark.parametrize("estimator", ESTIMATORS, ids=lambda e: type(e).__name__)
def test_pipeline_step_params_without_routing(data, estimator):
    X, y, groups = data
    step = type(estimator).__name__.lower()
    pipeline = make_pipeline(StandardScaler(), clone(estimator))
    pipeline.fit(X, y, **{f"{step}__groups": groups})
    direct = clone(estimator).fit(StandardScaler().fit_transform(X), y, groups)
    np.testing.assert_allclose(pipeline[-1].coef_, direct.coef_, rtol=1e-6)

    result = cross_validate(
        pipeline,
        X,
        y,
        groups=groups,
        params={f"{step}__groups": groups},
        cv=CV,
        scoring="accuracy",
        return_estimator=True,
    )
    for model, (train, _) in zip(result["estimator"], CV.split(X, y, groups), strict=True):
        by_hand = clone(pipeline).fit(X[train], y[train], **{f"{step}__groups": groups[train]})
        np.testing.assert_allclose(model[-1].coef_, by_hand[-1].coef_, rtol=1e-6)


def test_worst_group_scorer_without_routing_says_how_to_enable_it(data):
    X, y, groups = data
    search = GridSearchCV(
        MetaAugmentedHeadClassifier(**FAST),
        {"outer_lr": [0.01]},
        scoring=worst_group_scorer,
        cv=CV,
        error_score="raise",
    )
    with pytest.raises(ValueError, match="enable_metadata_routing=True"):
        search.fit(X, y, groups=groups)


# --------------------------------------------------------------------------- #
# The splitter
# --------------------------------------------------------------------------- #
def test_every_fold_holds_every_group_and_label():
    rng = np.random.RandomState(0)
    y = rng.randint(2, size=300)
    groups = np.where(rng.rand(300) < 0.9, y, 1 - y)  # minority cells of ~15 rows
    groups = groups.astype(object)
    groups[rng.rand(300) < 0.3] = None  # unknown
    cv = SubgroupStratifiedKFold(5, shuffle=True, random_state=1)
    seen = np.zeros(300, dtype=int)
    known = np.array([g is not None for g in groups])
    for train, test in cv.split(np.zeros((300, 1)), y, groups):
        assert np.intersect1d(train, test).size == 0 and train.size + test.size == 300
        seen[test] += 1
        for label in (0, 1):
            for group in (0, 1):
                cell = known & (y == label) & (groups == group)
                share = np.isin(np.flatnonzero(cell), test).mean()
                assert cell[test].any() and cell[train].any()
                assert abs(share - 0.2) <= 1 / cell.sum() + 1e-9  # stratified: a fifth each
            unknown = ~known & (y == label)
            assert abs(np.isin(np.flatnonzero(unknown), test).mean() - 0.2) <= 1 / unknown.sum()
    np.testing.assert_array_equal(seen, 1)  # every row is tested exactly once


def test_group_kfold_is_the_trap():
    """GroupKFold holds whole groups out: a test fold's group is absent from its training rows."""
    from sklearn.model_selection import GroupKFold

    y = np.tile([0, 1], 50)
    groups = np.repeat([0, 1, 2, 3], 25)
    for train, test in GroupKFold(4).split(np.zeros((100, 1)), y, groups):
        assert np.intersect1d(groups[train], groups[test]).size == 0
    for train, test in SubgroupStratifiedKFold(4).split(np.zeros((100, 1)), y, groups):
        assert set(groups[test]) == set(groups[train]) == {0, 1, 2, 3}


def test_splitter_requests_groups_and_warns_about_small_cells():
    with config_context(enable_metadata_routing=True):
        routing = SubgroupStratifiedKFold(3).get_metadata_routing()
        assert routing.consumes("split", ["groups"]) == {"groups"}
    y = np.array([0] * 10 + [1] * 10)
    groups = np.array([0] * 9 + [1] + [1] * 10)
    with pytest.warns(UserWarning, match=r"\(label 0, group 1\) have fewer rows \(\[1\]\)"):
        list(SubgroupStratifiedKFold(3).split(np.zeros((20, 1)), y, groups))
    with pytest.raises(ValueError, match="needs y"):
        next(SubgroupStratifiedKFold(3).split(np.zeros((20, 1)), None, groups))


# --------------------------------------------------------------------------- #
# Scale-out
# --------------------------------------------------------------------------- #
def test_grid_search_on_a_dask_cluster(data):
    distributed = pytest.importorskip("distributed")
    import joblib

    X, y, groups = data
    estimator = MetaAugmentedHeadClassifier(**FAST, n_threads=1)  # one torch thread per worker
    grid = {"outer_lr": [0.01, 0.1], "hard_set": ["class", "group"]}

    def search():
        return GridSearchCV(
            clone(estimator).set_fit_request(groups=True),
            grid,
            scoring=worst_group_scorer,
            cv=CV,
            n_jobs=-1,
            error_score="raise",
        )

    with config_context(enable_metadata_routing=True):
        local = search().fit(X, y, groups=groups)
        with (
            distributed.LocalCluster(
                n_workers=2,
                threads_per_worker=1,
                processes=True,
                host="127.0.0.1",
                dashboard_address=None,
            ) as cluster,
            distributed.Client(cluster) as client,
            distributed.get_task_stream(client) as tasks,
            joblib.parallel_config(backend="dask"),
        ):
            remote = search().fit(X, y, groups=groups)
            workers = set(client.scheduler_info()["workers"])
    assert len(tasks.data) >= 12  # the 4 x 3 fits ran as tasks ...
    assert {task["worker"] for task in tasks.data} <= workers  # ... on the cluster's workers
    np.testing.assert_allclose(
        remote.cv_results_["mean_test_score"], local.cv_results_["mean_test_score"]
    )
    np.testing.assert_array_equal(remote.best_estimator_.coef_, local.best_estimator_.coef_)


def test_grid_search_on_ray(data):
    ray = pytest.importorskip("ray")
    import joblib
    from ray.util.joblib import register_ray

    X, y, groups = data
    estimator = MetaAugmentedHeadClassifier(**FAST, n_threads=1)
    grid = {"outer_lr": [0.01, 0.1]}

    def search():
        return GridSearchCV(
            clone(estimator).set_fit_request(groups=True),
            grid,
            scoring=worst_group_scorer,
            cv=CV,
            n_jobs=2,
            error_score="raise",
        )

    register_ray()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        with config_context(enable_metadata_routing=True):
            local = search().fit(X, y, groups=groups)
            with joblib.parallel_config(backend="ray"):
                remote = search().fit(X, y, groups=groups)
    finally:
        ray.shutdown()
    np.testing.assert_allclose(
        remote.cv_results_["mean_test_score"], local.cv_results_["mean_test_score"]
    )
