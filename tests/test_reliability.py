"""No silent wrong results: scale invariance, sample weights, unknown groups, degenerate fits.

Each regression test names the problem it guards against; ``test_fuzz.py`` keeps
the table of bad inputs.
"""

import warnings

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sklearn.exceptions import ConvergenceWarning

from sklearn_featmeta import MetaAugmentedHeadClassifier
from sklearn_featmeta.baselines import DFRClassifier
from sklearn_featmeta.datasets import make_spurious_embeddings
from sklearn_featmeta.metrics import (
    group_accuracy_report,
    worst_group_accuracy_score,
)

# small, fast fits that still cross-fit the annotated rows (four runs)
SMALL = {"n_repeats": 2, "max_epochs": 4, "outer_steps": 2, "inner_steps": 4, "random_state": 0}


@pytest.fixture(scope="module")
def data():
    X, y, groups = make_spurious_embeddings(n_samples=500, n_features=6, random_state=3)
    return X.astype(np.float64), y, groups


def _quiet_fit(estimator, *args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return estimator.fit(*args, **kwargs)


# --------------------------------------------------------------------------- #
# Problem 1: small-scale features were treated as constant
# --------------------------------------------------------------------------- #
@pytest.mark.parametrize("scale", [1e-6, 1e-7])
def test_small_scale_features_are_not_thrown_away(data, scale):
    """``X * 1e-6`` used to drop worst-group accuracy from 0.78 to 0.23 (``1e-7``: 0.00)."""
    X, y, groups = data
    known = groups != -1
    plain = _quiet_fit(MetaAugmentedHeadClassifier(**SMALL), X, y, groups)
    small = _quiet_fit(MetaAugmentedHeadClassifier(**SMALL), X * scale, y, groups)
    np.testing.assert_array_equal(small.predict(X[known] * scale), plain.predict(X[known]))
    assert worst_group_accuracy_score(
        y[known], small.predict(X[known] * scale), groups=groups[known]
    ) == pytest.approx(
        worst_group_accuracy_score(y[known], plain.predict(X[known]), groups=groups[known])
    )


@settings(
    max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    log_scale=st.floats(min_value=-8, max_value=8),
    shift=st.floats(min_value=-1000, max_value=1000),
)
def test_predictions_are_invariant_to_a_positive_affine_map_of_X(data, log_scale, shift):
    """``X -> a * X + b`` (a > 0, 1e-8 <= a <= 1e8) changes no prediction of either estimator.

    The shift is drawn in units of ``a`` (``b = a * shift``): a shift far above the
    data's spread would erase the data itself in float64 before any fit sees it.
    """
    X, y, groups = data
    a = 10.0**log_scale
    mapped = a * X + a * shift
    for make in (
        lambda: MetaAugmentedHeadClassifier(**SMALL),
        lambda: DFRClassifier(n_estimators=2, random_state=0),
    ):
        original = _quiet_fit(make(), X, y, groups)
        moved = _quiet_fit(make(), mapped, y, groups)
        np.testing.assert_array_equal(moved.predict(mapped), original.predict(X))


# --------------------------------------------------------------------------- #
# Problem 2: text spellings of "unknown" became a real group
# --------------------------------------------------------------------------- #
@pytest.mark.parametrize("spelling", ["-1", "nan", "", "None", "<NA>"])
def test_text_spellings_of_unknown_are_unknown_with_a_warning(data, spelling):
    X, y, groups = data
    as_text = np.array([spelling if g == -1 else f"cell {g}" for g in groups], dtype=object)
    with pytest.warns(UserWarning, match="read as an unknown group"):
        spelled = MetaAugmentedHeadClassifier(**SMALL).fit(X, y, as_text)
    numeric = _quiet_fit(MetaAugmentedHeadClassifier(**SMALL), X, y, groups)
    # the same training pool and held-out rows: the same model
    np.testing.assert_allclose(spelled.coef_, numeric.coef_, rtol=1e-10)
    assert len(spelled.support_init_) == len(numeric.support_init_)


def test_missing_groups_cast_to_text_are_unknown(data):
    """``astype(str)`` of a float column (NumPy, pandas before 3) turns NaN into ``"nan"``."""
    X, y, groups = data
    as_text = np.where(groups == -1, np.nan, groups).astype(str)  # "nan", "1.0", ...
    with pytest.warns(UserWarning, match="'nan'"):
        model = MetaAugmentedHeadClassifier(**SMALL).fit(X, y, as_text)
    numeric = _quiet_fit(MetaAugmentedHeadClassifier(**SMALL), X, y, groups)
    np.testing.assert_allclose(model.coef_, numeric.coef_, rtol=1e-10)
    with pytest.warns(UserWarning, match="'nan'"):
        dfr = DFRClassifier(random_state=0).fit(X, y, as_text)
    np.testing.assert_allclose(dfr.coef_, DFRClassifier(random_state=0).fit(X, y, groups).coef_)


# --------------------------------------------------------------------------- #
# Problem 3: the metric compared strings with numbers, took negative weights
# --------------------------------------------------------------------------- #
def test_worst_group_accuracy_refuses_labels_that_can_never_match():
    with pytest.raises(ValueError, match="y_true holds text labels"):
        worst_group_accuracy_score(["0", "1"], [0, 1], groups=[0, 1])
    assert worst_group_accuracy_score(["0", "1"], ["0", "1"], groups=[0, 1]) == 1.0


def test_metrics_reject_negative_sample_weight():
    for metric in (worst_group_accuracy_score, group_accuracy_report):
        with pytest.raises(ValueError, match="Negative values"):
            metric([0, 1], [0, 1], groups=[0, 1], sample_weight=[1.0, -1.0])


def test_metric_weights_count_as_repeated_rows():
    y_true, y_pred, groups = [0, 1, 1, 0], [0, 1, 0, 1], ["a", "a", "b", "b"]
    weights = [2, 0, 3, 1]
    repeated = np.repeat(np.arange(4), weights)
    assert worst_group_accuracy_score(
        y_true, y_pred, groups=groups, sample_weight=weights
    ) == worst_group_accuracy_score(
        np.take(y_true, repeated), np.take(y_pred, repeated), groups=np.take(groups, repeated)
    )
    report = group_accuracy_report(y_true, y_pred, groups=groups, sample_weight=weights)
    assert report.worst_group == "b" and report.worst_group_accuracy == 0.0


# --------------------------------------------------------------------------- #
# sample_weight
# --------------------------------------------------------------------------- #
def _weights(n, seed=0):
    return np.random.RandomState(seed).randint(0, 4, size=n)


@pytest.mark.parametrize(
    "params",
    [
        SMALL,
        {**SMALL, "support_source": "pool", "support_size_per_class": 20},
        {**SMALL, "whitening_ridge": 0.1},
    ],
    ids=["defaults", "pool-support", "whitened"],
)
def test_integer_weights_equal_repeated_rows(data, params):
    X, y, groups = data
    weights = _weights(y.size)
    weighted = _quiet_fit(MetaAugmentedHeadClassifier(**params), X, y, groups, weights)
    order = np.random.RandomState(1).permutation(np.repeat(np.arange(y.size), weights))
    repeated = _quiet_fit(MetaAugmentedHeadClassifier(**params), X[order], y[order], groups[order])
    np.testing.assert_allclose(weighted.coef_, repeated.coef_, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(weighted.predict_proba(X), repeated.predict_proba(X), rtol=1e-9)
    np.testing.assert_array_equal(weighted.best_epoch_, repeated.best_epoch_)


def test_zero_weights_equal_dropped_rows(data):
    X, y, groups = data
    weights = (_weights(y.size, seed=2) > 0).astype(float)
    kept = weights > 0
    for make in (
        lambda: MetaAugmentedHeadClassifier(**SMALL),
        lambda: DFRClassifier(n_estimators=3, random_state=0),
    ):
        weighted = _quiet_fit(make(), X, y, groups, sample_weight=weights)
        dropped = _quiet_fit(make(), X[kept], y[kept], groups[kept])
        np.testing.assert_allclose(weighted.coef_, dropped.coef_, rtol=1e-12)


def test_dfr_integer_weights_equal_repeated_rows_to_liblinear_precision(data):
    X, y, groups = data
    weights = _weights(y.size, seed=3)
    weighted = DFRClassifier(n_estimators=3, random_state=0).fit(X, y, groups, weights)
    order = np.repeat(np.arange(y.size), weights)[::-1]
    repeated = DFRClassifier(n_estimators=3, random_state=0).fit(X[order], y[order], groups[order])
    assert weighted.C_ == repeated.C_
    np.testing.assert_allclose(weighted.coef_, repeated.coef_, rtol=1e-3, atol=1e-3)
    np.testing.assert_array_equal(weighted.predict(X), repeated.predict(X))


@pytest.mark.parametrize("make", [MetaAugmentedHeadClassifier, DFRClassifier])
def test_negative_or_misshapen_sample_weight_is_an_error(data, make):
    X, y, groups = data
    with pytest.raises(ValueError, match="Negative values"):
        make().fit(X, y, groups, sample_weight=np.r_[-1.0, np.ones(y.size - 1)])
    with pytest.raises(ValueError, match="sample_weight"):
        make().fit(X, y, groups, sample_weight=np.ones(3))


def test_weights_move_the_fit(data):
    """Weights are used, not accepted and ignored: up-weighting some rows changes the head.

    Half the rows of each group, not a whole group: cells are weighted equally, so a weight
    shared by every row of a group leaves the group-balanced losses as they were.
    """
    X, y, groups = data
    heavy = np.where(np.arange(y.size) % 2 == 0, 10.0, 1.0)
    plain = _quiet_fit(MetaAugmentedHeadClassifier(**SMALL), X, y, groups)
    weighted = _quiet_fit(MetaAugmentedHeadClassifier(**SMALL), X, y, groups, heavy)
    assert not np.allclose(plain.coef_, weighted.coef_, rtol=1e-3)


def test_row_order_does_not_matter(data):
    X, y, groups = data
    order = np.random.RandomState(5).permutation(y.size)
    first = _quiet_fit(MetaAugmentedHeadClassifier(**SMALL), X, y, groups)
    shuffled = _quiet_fit(MetaAugmentedHeadClassifier(**SMALL), X[order], y[order], groups[order])
    np.testing.assert_allclose(first.coef_, shuffled.coef_, rtol=1e-9)


# --------------------------------------------------------------------------- #
# Problem 5: degenerate fits without a word
# --------------------------------------------------------------------------- #
def test_a_head_crushed_by_its_penalty_warns(data):
    """``head_l2=1e12`` used to give worst-group accuracy 0.0 without a word."""
    X, y, groups = data
    crushed = {**SMALL, "head_l2": 1e12, "erm_C": 1e-12}
    with pytest.warns(UserWarning, match="head is degenerate"):
        MetaAugmentedHeadClassifier(**crushed, balanced_candidates=False).fit(X, y, groups)
    # with the balanced candidates the fit falls back on a group-balanced head instead
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*degenerate")
        model = MetaAugmentedHeadClassifier(**crushed).fit(X, y, groups)
    assert model.selected_heads_.startswith("balanced_")


def test_one_annotated_row_per_class_warns(data):
    X, y, _ = data
    groups = np.full(y.size, -1)
    groups[np.flatnonzero(y == 0)[0]] = 0
    groups[np.flatnonzero(y == 1)[0]] = 1
    with pytest.warns(UserWarning, match="Only 1 held-out row"):
        model = MetaAugmentedHeadClassifier(**SMALL).fit(X, y, groups)
    assert np.isfinite(model.coef_).all() and model.best_epoch_.shape == (1,)


def test_three_classes_of_four_rows_warn():
    X = np.random.RandomState(0).standard_normal((12, 3))
    y = np.repeat([0, 1, 2], 4)
    with pytest.warns(UserWarning, match="held-out row"):  # every group known: rows held out
        model = MetaAugmentedHeadClassifier(**SMALL).fit(X, y, np.zeros(12))
    assert model.predict_proba(X).shape == (12, 3)
    # without groups nothing is held out: the group-free head, two rows per class per fold
    model = MetaAugmentedHeadClassifier(**SMALL).fit(X, y)
    assert model.predict_proba(X).shape == (12, 3) and model.candidate_scores_ is not None


def test_convergence_warnings(monkeypatch):
    from sklearn_featmeta._core import _fit, _losses

    X, y, groups = make_spurious_embeddings(n_samples=400, n_features=6, random_state=0)
    # an ERM head whose L-BFGS runs out of iterations (one iteration allowed)
    real = _losses.fit_softmax_head
    with monkeypatch.context() as patch:
        patch.setattr(_fit, "fit_softmax_head", lambda *a, **k: real(*a, **k, max_iter=1))
        with pytest.warns(ConvergenceWarning, match="L-BFGS stopped"):
            MetaAugmentedHeadClassifier(**SMALL).fit(X, y, groups)
    # a head that creeps: every epoch improves, and max_epochs stops it
    with pytest.warns(ConvergenceWarning, match="still improved"):
        MetaAugmentedHeadClassifier(
            **{**SMALL, "max_epochs": 3},
            n_epochs=1,
            head_lr=1e-4,
            initial_head=(np.zeros((1, 6)), np.zeros(1)),
        ).fit(X, y, groups)


def test_verbose_updates_one_line_per_run(data, capsys):
    X, y, groups = data
    _quiet_fit(MetaAugmentedHeadClassifier(**SMALL, verbose=1), X, y, groups)
    out = capsys.readouterr().out
    progress = [line for line in out.split("\n") if "epoch" in line and "run" in line]
    assert len(progress) == 4  # one line per run ...
    assert all("\r" in line for line in progress)  # ... rewritten in place each epoch
    _quiet_fit(MetaAugmentedHeadClassifier(**SMALL, verbose=2), X, y, groups)
    every_epoch = [line for line in capsys.readouterr().out.split("\n") if "epoch" in line]
    assert len(every_epoch) > 4 and not any("\r" in line for line in every_epoch)


def test_verbose_runs_without_edits_share_one_line(data, capsys):
    """Without edits every run steps at once: one line, each run's latest score on it."""
    X, y, groups = data
    _quiet_fit(MetaAugmentedHeadClassifier(**{**SMALL, "outer_steps": 0}, verbose=1), X, y, groups)
    progress = [line for line in capsys.readouterr().out.split("\n") if "run(s), epoch" in line]
    assert len(progress) == 1 and progress[0].count("\r") > 1
    last = progress[0].split("\r")[-1]
    assert "4 run(s), epoch" in last and len(last.split("by run ")[1].split(", ")) == 4


def test_verbose_says_which_head_was_fitted_and_the_lead_the_runs_needed(data, capsys):
    X, y, groups = data
    model = _quiet_fit(MetaAugmentedHeadClassifier(**SMALL, verbose=1), X, y, groups)
    out = capsys.readouterr().out
    line = next(line for line in out.split("\n") if "fitted head:" in line)
    assert f"fitted head: {model.selected_heads_} " in line
    line = next(line for line in out.split("\n") if "the runs against the best" in line)
    assert f"where {model.runs_margin_:.4f} was needed" in line
    assert "on rows luck gives with chance " in line and "(below 0.159 needed)" in line


def test_support_shortage_warning_counts_sample_weight_like_repeated_rows(data):
    """Pool support: a class short of rows but not of weight draws as its copies would."""
    X, y, groups = data
    params = {**SMALL, "support_source": "pool", "support_size_per_class": 300}
    n_pool = np.bincount(y[groups == -1])
    assert (n_pool < 300).all() and (3 * n_pool >= 300).all()
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # no shortage at three copies a row
        warnings.filterwarnings("ignore", message="Only")
        warnings.filterwarnings("ignore", category=ConvergenceWarning)
        MetaAugmentedHeadClassifier(**params).fit(X, y, groups, np.full(y.size, 3.0))
    with pytest.warns(UserWarning, match="fewer training rows"):
        MetaAugmentedHeadClassifier(**params).fit(X, y, groups)


def test_whitening_covariance_sample_follows_row_content(data, monkeypatch):
    """A large pool's whitening covariance comes from a sample drawn by row content.

    The budget is forced to zero so that a small pool is sampled (eight rows per
    feature): the sample must still treat a row of weight k as k copies, in any order.
    """
    from sklearn_featmeta import _rows
    from sklearn_featmeta._core import _fit, _geometry

    X, y, groups = data
    # the runs' mean head, whose coordinates the whitening shapes (not a balanced candidate)
    params = {**SMALL, "whitening_ridge": 0.1, "balanced_candidates": False}
    full = _quiet_fit(MetaAugmentedHeadClassifier(**params), X, y, groups)
    monkeypatch.setattr(_rows, "WHITENING_COVARIANCE_BUDGET", 0)
    rows_seen = []
    whitening_transform = _geometry.whitening_transform

    def spy(X_rows, *args, **kwargs):
        rows_seen.append(X_rows.shape[0])
        return whitening_transform(X_rows, *args, **kwargs)

    monkeypatch.setattr(_fit, "whitening_transform", spy)
    sampled = _quiet_fit(MetaAugmentedHeadClassifier(**params), X, y, groups)
    assert abs(rows_seen[-1] - 8 * X.shape[1]) <= 1  # one row may be taken in part
    assert not np.allclose(sampled.coef_, full.coef_)

    weights = _weights(y.size, seed=4)
    weighted = _quiet_fit(MetaAugmentedHeadClassifier(**params), X, y, groups, weights)
    order = np.random.RandomState(2).permutation(np.repeat(np.arange(y.size), weights))
    repeated = _quiet_fit(MetaAugmentedHeadClassifier(**params), X[order], y[order], groups[order])
    np.testing.assert_allclose(weighted.coef_, repeated.coef_, rtol=1e-9, atol=1e-12)


def test_standardisation_has_the_same_bits_on_any_number_of_threads():
    """The pool's moments, standardised rows and content hashes go over blocks of rows on
    ``n_threads_`` threads; summed in block order, the bits must not depend on the count."""
    from sklearn_featmeta import _preprocessing, _sampling

    rng = np.random.default_rng(0)
    X = (rng.normal(size=(3000, 700)) * rng.uniform(0.1, 5, 700) + 3).astype(np.float32)
    rows = rng.permutation(3000)[:2500]
    weights = rng.uniform(0.5, 2, rows.size)
    assert len(_preprocessing._blocks(rows.size, X.shape[1])) > 1  # more than one block
    one = _preprocessing.weighted_moments(X, rows, weights, n_threads=1)
    two = _preprocessing.weighted_moments(X, rows, weights, n_threads=2)
    np.testing.assert_array_equal(one[0], two[0])
    np.testing.assert_array_equal(one[1], two[1])
    for n_threads in (1, 2):
        np.testing.assert_array_equal(
            _preprocessing.standardized(X, rows, *one, np.float32, n_threads=n_threads),
            ((X[rows].astype(np.float64) - one[0]) / one[1]).astype(np.float32),
        )
    np.testing.assert_array_equal(
        _sampling.content_hashes(X, rows, *one, n_threads=1),
        _sampling.content_hashes(X, rows, *one, n_threads=2),
    )


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_content_hashes_standardise_in_the_same_pass(dtype):
    """The standardised rows that content_hashes writes out are standardized's, bit for bit,
    in every block and dtype, and writing them changes no hash."""
    from sklearn_featmeta import _preprocessing, _sampling

    rng = np.random.default_rng(1)
    X = (rng.normal(size=(2000, 900)) * rng.uniform(0.1, 5, 900) + 3).astype(dtype)
    rows = rng.permutation(2000)[:1800]
    assert len(_preprocessing._blocks(rows.size, X.shape[1])) > 1
    mean, scale = _preprocessing.weighted_moments(X, rows, np.ones(rows.size))
    for n_threads in (1, 2):
        out = np.full((rows.size, X.shape[1]), np.nan, dtype=dtype)
        hashes = _sampling.content_hashes(X, rows, mean, scale, n_threads, standardized_out=out)
        np.testing.assert_array_equal(
            out, _preprocessing.standardized(X, rows, mean, scale, dtype, n_threads)
        )
        np.testing.assert_array_equal(hashes, _sampling.content_hashes(X, rows, mean, scale))
