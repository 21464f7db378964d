"""MetaAugmentedHeadClassifier: outputs, groups semantics, bad input, determinism, pickling."""

import pickle
import subprocess
import sys
import textwrap
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
from sklearn.base import clone
from sklearn.linear_model import LogisticRegression

from sklearn_featmeta import PAPER_PRESETS, MetaAugmentedHeadClassifier
from sklearn_featmeta._sampling import cross_fitting_folds, row_hashes
from sklearn_featmeta._threads import _cores
from sklearn_featmeta.datasets import make_spurious_embeddings
from sklearn_featmeta.metrics import worst_group_accuracy_score

# Small runs with edits on; the runs' own heads are the fit (balanced candidates off), as
# these tests examine the runs. The candidates are tested in test_candidate_heads.py.
FAST = {
    "n_epochs": 4,
    "max_epochs": None,
    "outer_steps": 3,
    "inner_steps": 5,
    "n_repeats": 2,
    "balanced_candidates": False,
    "random_state": 0,
}
ONE_SPLIT = {**FAST, "n_repeats": 1}  # two runs: one split of the annotated rows
POOL_SUPPORT = {"support_source": "pool", "support_size_per_class": 16}  # the paper's protocol


@pytest.fixture(scope="module")
def spurious():
    return make_spurious_embeddings(n_samples=600, n_features=16, random_state=0)


def _rows_of(X, rows):
    """Which rows of ``X`` each row of ``rows`` is (exact match), -1 if none."""
    index = {row.tobytes(): i for i, row in enumerate(X)}
    return np.array([index.get(row.tobytes(), -1) for row in rows])


# --------------------------------------------------------------------------- #
# The method works
# --------------------------------------------------------------------------- #
def test_worst_group_accuracy_well_above_logistic_regression(demo_worst_group_accuracies):
    erm_wga, our_wga = demo_worst_group_accuracies(MetaAugmentedHeadClassifier(random_state=0))
    assert our_wga >= erm_wga + 0.20, (erm_wga, our_wga)


def test_fit_improves_on_its_initial_head(spurious):
    X, y, groups = spurious
    model = MetaAugmentedHeadClassifier(random_state=0, n_epochs=10).fit(X, y, groups)
    known = groups != -1
    initial = LogisticRegression()
    initial.classes_ = model.classes_
    initial.coef_, initial.intercept_ = model.initial_coef_, model.initial_intercept_
    before = worst_group_accuracy_score(y[known], initial.predict(X[known]), groups=groups[known])
    after = worst_group_accuracy_score(y[known], model.predict(X[known]), groups=groups[known])
    assert after > before + 0.1


# --------------------------------------------------------------------------- #
# Outputs like LogisticRegression
# --------------------------------------------------------------------------- #
def test_binary_output_shapes_match_logistic_regression(spurious):
    X, y, groups = spurious
    ours = MetaAugmentedHeadClassifier(**FAST).fit(X, y, groups)
    reference = LogisticRegression().fit(X, y)
    for attribute in ("coef_", "intercept_", "classes_"):
        assert getattr(ours, attribute).shape == getattr(reference, attribute).shape
    for method in ("decision_function", "predict_proba", "predict_log_proba", "predict"):
        assert getattr(ours, method)(X).shape == getattr(reference, method)(X).shape
    assert ours.n_features_in_ == 16
    proba = ours.predict_proba(X)
    np.testing.assert_allclose(proba.sum(1), 1.0)
    np.testing.assert_allclose(np.log(proba), ours.predict_log_proba(X))
    # the score of classes_[1], as in LogisticRegression
    np.testing.assert_array_equal(
        ours.predict(X), ours.classes_[(ours.decision_function(X) > 0).astype(int)]
    )
    np.testing.assert_allclose(
        ours.decision_function(X), X @ ours.coef_.ravel() + ours.intercept_[0], rtol=1e-5
    )


def test_multiclass_string_labels():
    X, y, groups = make_spurious_embeddings(
        n_samples=450, n_features=12, n_classes=3, random_state=1
    )
    labels = np.array(["cat", "dog", "emu"])[y]
    model = MetaAugmentedHeadClassifier(**FAST).fit(X, labels, groups)
    assert model.coef_.shape == (3, 12) and model.intercept_.shape == (3,)
    assert model.decision_function(X).shape == (450, 3)
    assert set(model.predict(X)) <= {"cat", "dog", "emu"}
    assert set(model.support_labels_) == {"cat", "dog", "emu"}
    assert model.score(X, labels) > 0.6


def test_non_contiguous_integer_labels(spurious):
    X, y, groups = spurious
    labels = np.where(y == 1, 7, -3)
    model = MetaAugmentedHeadClassifier(**FAST).fit(X, labels, groups)
    np.testing.assert_array_equal(model.classes_, [-3, 7])
    assert set(np.unique(model.predict(X))) <= {-3, 7}


def test_coef_applies_to_raw_features():
    """Standardisation is internal: a given initial head comes back unchanged."""
    X, y, groups = make_spurious_embeddings(n_samples=400, n_features=8, random_state=2)
    X = X * np.linspace(0.1, 50, 8).astype(np.float32) + 100.0  # badly scaled, offset
    head = LogisticRegression(max_iter=5000).fit(X, y)
    model = MetaAugmentedHeadClassifier(initial_head=(head.coef_, head.intercept_), **FAST)
    model.fit(X, y, groups)
    np.testing.assert_allclose(model.initial_coef_, head.coef_, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(model.initial_intercept_, head.intercept_, rtol=1e-4, atol=1e-4)
    # the support set is reported in raw space: its rows are rows of X
    assert (_rows_of(X, model.support_init_.astype(np.float32)) >= 0).all()


def test_fitted_attributes(spurious):
    """Defaults: the support is the annotated rows, cross-fitted over n_repeats splits."""
    X, y, groups = spurious
    model = MetaAugmentedHeadClassifier(**FAST).fit(X, y, groups)
    known = np.flatnonzero(groups != -1)
    rows = _rows_of(X, model.support_init_.astype(np.float32))
    # every split covers each annotated row once across its two runs
    np.testing.assert_array_equal(np.sort(rows), np.repeat(known, FAST["n_repeats"]))
    assert model.support_edited_.shape == model.support_init_.shape == (2 * known.size, 16)
    np.testing.assert_array_equal(model.support_labels_, y[rows])
    assert not np.allclose(model.support_init_, model.support_edited_)
    scores = {"worst_group_accuracy", "average_accuracy", "heldout_loss", "worst_group_loss"}
    assert set(model.history_) == {
        "run",
        "epoch",
        *scores,
        *(f"unedited_{key}" for key in scores),
        "outer_loss",
    }
    assert all(len(v) == 16 for v in model.history_.values())
    np.testing.assert_array_equal(model.history_["run"], np.repeat([0, 1, 2, 3], 4))
    np.testing.assert_array_equal(model.history_["epoch"], [1, 2, 3, 4] * 4)
    assert model.n_iter_ == 4 and model.best_epoch_.shape == (4,)
    assert model.kept_edits_.shape == (4,) and model.kept_edits_.dtype == bool
    for run, best in enumerate(model.best_epoch_):  # the lowest loss of either head
        rows = model.history_["run"] == run
        edited = model.history_["worst_group_loss"][rows]
        unedited = model.history_["unedited_worst_group_loss"][rows]
        assert np.isfinite(unedited).all()
        kept = edited if model.kept_edits_[run] else unedited
        assert kept[best - 1] == min(edited.min(), unedited.min())
    assert model.device_ == "cpu"
    assert model.inner_lr_ > 0
    for attribute in ("coef_", "intercept_", "support_edited_"):
        assert np.isfinite(getattr(model, attribute)).all()


def test_selection_by_worst_group_accuracy(spurious):
    X, y, groups = spurious
    model = MetaAugmentedHeadClassifier(**ONE_SPLIT, selection_metric="worst_group_accuracy").fit(
        X, y, groups
    )
    assert model.best_epoch_.shape == (2,)
    for run, best in enumerate(model.best_epoch_):
        accuracy = model.history_["worst_group_accuracy"][model.history_["run"] == run]
        assert accuracy[best - 1] == accuracy.max()


def test_fitted_attributes_with_support_from_the_pool(spurious):
    X, y, groups = spurious
    params = {**POOL_SUPPORT, "compare_unedited": False}
    model = MetaAugmentedHeadClassifier(**FAST, **params).fit(X, y, groups)
    assert np.isnan(model.history_["unedited_worst_group_loss"]).all()  # not compared
    assert model.support_init_.shape == model.support_edited_.shape == (32, 16)
    counts = np.bincount(np.searchsorted(model.classes_, model.support_labels_))
    assert counts.tolist() == [16, 16]
    np.testing.assert_array_equal(model.history_["run"], 0)
    np.testing.assert_array_equal(model.history_["epoch"], [1, 2, 3, 4])
    assert model.best_epoch_.shape == (1,)


def test_feature_names_in(spurious):
    pd = pytest.importorskip("pandas")
    X, y, groups = spurious
    frame = pd.DataFrame(X, columns=[f"f{i}" for i in range(X.shape[1])])
    model = MetaAugmentedHeadClassifier(**FAST).fit(frame, y, groups)
    np.testing.assert_array_equal(model.feature_names_in_, frame.columns)


def test_runs_past_n_epochs_stop_n_iter_no_change_after_their_best(spurious, capsys):
    X, y, groups = spurious
    params = {**FAST, "n_epochs": 2, "max_epochs": 9, "n_iter_no_change": 2, "verbose": 1}
    model = MetaAugmentedHeadClassifier(**params).fit(X, y, groups)
    made = np.bincount(model.history_["run"])
    np.testing.assert_array_equal(made, np.clip(model.best_epoch_ + 2, 2, 9))
    assert model.n_iter_ == made.max() > 2  # some run went on past n_epochs
    out = capsys.readouterr().out
    assert "epoch   3/2-9" in out
    assert f"of {', '.join(map(str, made))} epochs" in out
    exact = MetaAugmentedHeadClassifier(**{**params, "max_epochs": None}).fit(X, y, groups)
    assert exact.n_iter_ == 2 and len(exact.history_["run"]) == 8
    assert "epoch   2/2:" in capsys.readouterr().out


def test_max_epochs_below_n_epochs_is_an_error(spurious):
    with pytest.raises(ValueError, match="max_epochs=5 is below n_epochs=10"):
        MetaAugmentedHeadClassifier(n_epochs=10, max_epochs=5).fit(*spurious)


def test_verbose_shows_no_outer_loss_without_edits(spurious, capsys):
    X, y, groups = spurious
    MetaAugmentedHeadClassifier(**{**FAST, "outer_steps": 0}, verbose=2).fit(X, y, groups)
    out = capsys.readouterr().out
    epochs = [line for line in out.splitlines() if "epoch" in line and "worst-group acc" in line]
    assert len(epochs) == 16 and not any("outer loss" in line for line in epochs)


def test_verbose_prints_every_epoch(spurious, capsys):
    X, y, groups = spurious
    MetaAugmentedHeadClassifier(**FAST, verbose=2).fit(X, y, groups)
    out = capsys.readouterr().out
    epochs = [line for line in out.splitlines() if "epoch" in line and "worst-group acc" in line]
    assert len(epochs) == 16  # two splits x two runs x four epochs
    assert "run 4/4, epoch   4/4" in out and "worst-group loss" in out
    assert "best epoch" in out and "held-out rows" in out
    assert all("outer loss" in line for line in epochs)  # FAST edits the supports
    geometry = [line for line in out.splitlines() if "geometry:" in line]
    assert len(geometry) == 1 and "standardised, " in geometry[0] and "whitened)" in geometry[0]


def test_no_output_when_quiet(spurious, capsys):
    X, y, groups = spurious
    MetaAugmentedHeadClassifier(**FAST).fit(X, y, groups)
    assert capsys.readouterr().out == ""


# --------------------------------------------------------------------------- #
# groups semantics
# --------------------------------------------------------------------------- #
def test_partial_groups_split_pool_and_annotated(spurious):
    """Paper protocol: unknown-group rows feed the support set; known rows never do."""
    X, y, groups = spurious
    params = {**POOL_SUPPORT, "support_size_per_class": 40}
    model = MetaAugmentedHeadClassifier(**FAST, **params).fit(X, y, groups)
    rows = _rows_of(X, model.support_init_.astype(np.float32))
    assert (rows >= 0).all()
    assert (groups[rows] == -1).all()


def test_annotated_support_caps_rows_per_cell(spurious):
    X, y, groups = spurious
    model = MetaAugmentedHeadClassifier(**FAST, support_size_per_class=5).fit(X, y, groups)
    rows = _rows_of(X, model.support_init_.astype(np.float32))
    assert (groups[rows] != -1).all()
    # two splits x two runs, each at most 5 rows of each of the 4 cells of its fold
    assert np.bincount(groups[rows]).tolist() == [20, 20, 20, 20]


@pytest.mark.parametrize("unknown", [None, np.nan])
def test_string_groups_with_missing_values(spurious, unknown):
    X, y, groups = spurious
    names = np.array(["maj-0", "min-0", "min-1", "maj-1"], dtype=object)[np.clip(groups, 0, 3)]
    names[groups == -1] = unknown
    by_strings = MetaAugmentedHeadClassifier(**FAST).fit(X, y, names)
    by_ints = MetaAugmentedHeadClassifier(**FAST).fit(X, y, groups)
    # same partition; only float32 summation order may differ
    np.testing.assert_allclose(by_strings.coef_, by_ints.coef_, rtol=1e-5)


def test_float_groups_with_nan_and_pandas_na(spurious):
    pd = pytest.importorskip("pandas")
    X, y, groups = spurious
    as_float = np.where(groups == -1, np.nan, groups).astype(float)
    as_nullable = pd.Series(groups, dtype="Int64").where(groups != -1, pd.NA)
    reference = MetaAugmentedHeadClassifier(**FAST).fit(X, y, groups)
    for variant in (as_float, as_nullable, list(groups)):
        model = MetaAugmentedHeadClassifier(**FAST).fit(X, y, variant)
        np.testing.assert_allclose(model.coef_, reference.coef_, rtol=1e-5)


def test_all_groups_known_holds_out_a_stratified_fraction(spurious):
    X, y, _ = spurious
    attribute = (np.arange(y.size) % 5 == 0).astype(int)
    groups = y * 2 + attribute
    model = MetaAugmentedHeadClassifier(**ONE_SPLIT, validation_fraction=0.25)
    model.fit(X, y, groups)
    # the annotated support is the held-out rows: 25% of the rows of each (class, group) cell
    rows = _rows_of(X, model.support_init_.astype(np.float32))
    for cell in np.unique(groups):
        # the first round(0.25 * n) rows of the cell in a random order (halves round down)
        assert np.sum(groups[rows] == cell) == np.ceil(0.25 * np.sum(groups == cell) - 0.5)


def test_all_groups_unknown_falls_back_with_warning(spurious):
    X, y, _ = spurious
    with pytest.warns(UserWarning, match="No row of groups is known"):
        model = MetaAugmentedHeadClassifier(**FAST).fit(X, y, np.full(y.size, -1))
    reference = MetaAugmentedHeadClassifier(**FAST).fit(X, y)
    np.testing.assert_allclose(model.coef_, reference.coef_)


def test_hard_set_per_group_runs_and_differs(spurious):
    X, y, groups = spurious
    by_class = MetaAugmentedHeadClassifier(**FAST, hard_set_size=20, hard_set="class")
    by_group = MetaAugmentedHeadClassifier(**FAST, hard_set_size=20, hard_set="group")
    by_class.fit(X, y, groups)
    by_group.fit(X, y, groups)
    assert not np.allclose(by_class.coef_, by_group.coef_)


# --------------------------------------------------------------------------- #
# Bad input
# --------------------------------------------------------------------------- #
@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_x_is_rejected(spurious, bad):
    X, y, groups = spurious
    X = X.copy()
    X[3, 2] = bad
    with pytest.raises(ValueError, match="NaN|infinity"):
        MetaAugmentedHeadClassifier(**FAST).fit(X, y, groups)


def test_1d_and_empty_x_are_rejected():
    with pytest.raises(ValueError, match="Expected 2D array"):
        MetaAugmentedHeadClassifier().fit(np.arange(10.0), np.arange(10) % 2)
    with pytest.raises(ValueError, match="0 sample"):
        MetaAugmentedHeadClassifier().fit(np.empty((0, 3)), np.empty(0))


def test_length_mismatches_are_rejected(spurious):
    X, y, groups = spurious
    with pytest.raises(ValueError, match="inconsistent numbers of samples"):
        MetaAugmentedHeadClassifier().fit(X, y[:-1], groups)
    with pytest.raises(ValueError, match="groups has 599 entries but X has 600 rows"):
        MetaAugmentedHeadClassifier().fit(X, y, groups[:-1])
    with pytest.raises(ValueError, match="groups must be 1-D"):
        MetaAugmentedHeadClassifier().fit(X, y, groups.reshape(-1, 2))


def test_single_class_is_rejected(spurious):
    X, _, _ = spurious
    with pytest.raises(ValueError, match="only one class"):
        MetaAugmentedHeadClassifier().fit(X, np.zeros(X.shape[0]))


def test_class_with_few_training_rows_warns_once(spurious):
    X, y, groups = spurious
    keep = (
        (y == 0) | (groups != -1) | (np.cumsum((y == 1) & (groups == -1)) <= 5)
    )  # five class-1 training rows
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = MetaAugmentedHeadClassifier(**FAST, **POOL_SUPPORT)
        model.fit(X[keep], y[keep], groups[keep])
    messages = [str(w.message) for w in caught if "fewer training rows" in str(w.message)]
    assert len(messages) == 1 and "[1]" in messages[0]
    assert np.sum(model.support_labels_ == 1) == 5


def test_class_without_known_group_rows_is_rejected(spurious):
    X, y, groups = spurious
    groups = np.where(y == 1, -1, groups)
    with pytest.raises(ValueError, match=r"Class\(es\) \[1\] have no rows with a known group"):
        MetaAugmentedHeadClassifier().fit(X, y, groups)


def test_class_without_training_rows_is_rejected(spurious):
    X, y, groups = spurious
    groups = np.where(y == 1, 3, groups)
    with pytest.raises(ValueError, match=r"Class\(es\) \[1\] have no training rows"):
        MetaAugmentedHeadClassifier().fit(X, y, groups)


def test_mixed_type_groups_are_rejected(spurious):
    X, y, groups = spurious
    mixed = groups.astype(object)
    mixed[:3] = "a"
    with pytest.raises(ValueError, match="mixes labels of types"):
        MetaAugmentedHeadClassifier().fit(X, y, mixed)


def test_read_only_memmap_input(spurious, tmp_path):
    X, y, groups = spurious
    path = tmp_path / "X.npy"
    np.save(path, X)
    X_map = np.load(path, mmap_mode="r")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # e.g. torch's "non-writable array" warning
        model = MetaAugmentedHeadClassifier(**FAST).fit(X_map, y, groups)
    reference = MetaAugmentedHeadClassifier(**FAST).fit(X, y, groups)
    np.testing.assert_allclose(model.coef_, reference.coef_)


def test_unavailable_device_is_a_clear_error(spurious):
    torch = pytest.importorskip("torch")
    X, y, groups = spurious
    with pytest.raises(ValueError, match="not a valid device"):
        MetaAugmentedHeadClassifier(device="tpu-ish").fit(X, y, groups)
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            MetaAugmentedHeadClassifier(device="cuda").fit(X, y, groups)


@pytest.mark.parametrize(
    "head, message",
    [
        ((np.zeros((2, 16)), np.zeros(2)), r"coef of shape \(1, 16\)"),
        ((np.zeros((1, 16)),), "tuple"),
    ],
)
def test_bad_initial_head_is_rejected(spurious, head, message):
    X, y, groups = spurious
    with pytest.raises(ValueError, match=message):
        MetaAugmentedHeadClassifier(initial_head=head).fit(X, y, groups)


@pytest.mark.parametrize(
    "params",
    [
        {"hard_set": "cell"},
        {"inner_lr": "fast"},
        {"n_epochs": -1},
        {"validation_fraction": 1.0},
        {"head_l2": -0.1},
        {"whitening_ridge": 0.0},
        {"whitening_ridge": 1e-9},  # below float32's reach
        {"whitening_ridge": "always"},
    ],
)
def test_invalid_parameters_are_rejected(spurious, params):
    X, y, groups = spurious
    with pytest.raises(ValueError, match="parameter of MetaAugmentedHeadClassifier"):
        MetaAugmentedHeadClassifier(**params).fit(X, y, groups)


# --------------------------------------------------------------------------- #
# Determinism, threads, presets
# --------------------------------------------------------------------------- #
def test_same_seed_gives_identical_model(spurious):
    X, y, groups = spurious
    first = MetaAugmentedHeadClassifier(**FAST).fit(X, y, groups)
    second = clone(first).fit(X, y, groups)
    np.testing.assert_array_equal(first.coef_, second.coef_)
    np.testing.assert_array_equal(first.support_edited_, second.support_edited_)
    other = MetaAugmentedHeadClassifier(**{**FAST, "random_state": 1}).fit(X, y, groups)
    assert not np.array_equal(first.coef_, other.coef_)


def test_fit_leaves_torch_global_state_alone(spurious):
    torch = pytest.importorskip("torch")
    X, y, groups = spurious
    torch.manual_seed(123)
    expected = torch.rand(3)
    threads = torch.get_num_threads()
    torch.manual_seed(123)
    MetaAugmentedHeadClassifier(**FAST, n_threads=1).fit(X, y, groups)
    assert torch.equal(torch.rand(3), expected)  # the global generator was not used
    assert torch.get_num_threads() == threads


def test_n_threads_limits_torch_and_blas_threads_during_fit(spurious, monkeypatch):
    torch = pytest.importorskip("torch")
    threadpoolctl = pytest.importorskip("threadpoolctl")
    from sklearn_featmeta import _core

    def thread_counts():
        pools = threadpoolctl.threadpool_info()
        blas = {pool["num_threads"] for pool in pools if pool["user_api"] == "blas"}
        return torch.get_num_threads(), blas

    seen = []
    fit_hsfm = _core.fit_hsfm

    def recording_fit_hsfm(*args, **kwargs):
        seen.append(thread_counts())
        return fit_hsfm(*args, **kwargs)

    monkeypatch.setattr(_core, "fit_hsfm", recording_fit_hsfm)
    before = thread_counts()
    MetaAugmentedHeadClassifier(**FAST, n_threads=1).fit(*spurious)
    assert seen == [(1, {1})]
    assert thread_counts() == before
    # by default a small fit runs on one thread too, whatever the machine has
    model = MetaAugmentedHeadClassifier(**FAST).fit(*spurious)
    assert seen[-1] == (1, {1}) and model.n_threads_ == 1
    assert thread_counts() == before
    # torch gets the threads asked for; BLAS keeps one (two pools would contend for cores)
    MetaAugmentedHeadClassifier(**FAST, n_threads=2).fit(*spurious)
    assert seen[-1] == (2, {1})
    assert thread_counts() == before


def test_default_threads_follow_the_pool_size_and_the_idle_cores(monkeypatch):
    from sklearn_featmeta import _threads

    monkeypatch.setattr(_threads, "idle_cores", lambda window=0.05: 3)
    assert _threads.auto_threads(_threads.PARALLEL_MIN_ENTRIES - 1) == 1
    assert _threads.auto_threads(_threads.PARALLEL_MIN_ENTRIES) == 3


# idle_cores samples /proc/stat (Linux); telling a taken core apart needs two of them
needs_two_sampled_cores = pytest.mark.skipif(
    _cores() < 2 or not Path("/proc/stat").exists(), reason="needs Linux and two cores"
)


@needs_two_sampled_cores
def test_idle_cores_counts_a_busy_core_as_taken():
    import subprocess

    from sklearn_featmeta._threads import idle_cores

    quiet = idle_cores(window=0.3)
    busy = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.5)
        assert 1 <= idle_cores(window=0.3) < quiet or quiet == 1
    finally:
        busy.kill()
        busy.wait()


@needs_two_sampled_cores
def test_idle_cores_does_not_count_this_process_as_taken():
    """A fit's own threads still spinning after it (OpenMP, BLAS) are not another process."""
    import threading

    from sklearn_featmeta._threads import idle_cores

    quiet = idle_cores(window=0.3)
    stop = threading.Event()

    def spin():
        while not stop.is_set():
            pass

    spinner = threading.Thread(target=spin)
    spinner.start()
    try:
        time.sleep(0.1)
        assert idle_cores(window=0.3) >= quiet
    finally:
        stop.set()
        spinner.join()


def test_presets_reproduce_the_paper_settings():
    model = MetaAugmentedHeadClassifier.from_preset("waterbirds", random_state=3)
    assert model.get_params()["random_state"] == 3
    expected = {
        "support_size_per_class": 16,
        "inner_steps": 15,
        "inner_lr": 5e-5,
        "outer_lr": 1.0,
        "outer_steps": 15,
        "hard_set_size": 64,
        "n_epochs": 40,
        "hard_set": "class",
        "head_update": "adam",
        "head_lr": None,
        "max_epochs": None,
    }
    assert {k: model.get_params()[k] for k in expected} == expected
    celeba = MetaAugmentedHeadClassifier.from_preset("celeba").get_params()
    assert (celeba["support_size_per_class"], celeba["inner_steps"], celeba["outer_steps"]) == (
        1024,
        10,
        5,
    )
    assert set(PAPER_PRESETS) == {"waterbirds", "celeba", "metashift", "dominoes"}
    with pytest.raises(ValueError, match="Unknown preset"):
        MetaAugmentedHeadClassifier.from_preset("imagenet")
    with pytest.raises(ValueError, match="fixes"):
        MetaAugmentedHeadClassifier.from_preset("dominoes", n_epochs=3)


# --------------------------------------------------------------------------- #
# Pickling, and prediction without torch
# --------------------------------------------------------------------------- #
def test_import_does_not_import_torch():
    code = "import sys, sklearn_featmeta, sklearn_featmeta.metrics; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_pickle_round_trip_predicts_without_torch(spurious, tmp_path):
    X, y, groups = spurious
    model = MetaAugmentedHeadClassifier(**FAST).fit(X, y, groups)
    path = tmp_path / "model.pkl"
    path.write_bytes(pickle.dumps(model))
    np.save(tmp_path / "X.npy", X)
    np.save(tmp_path / "expected.npy", model.predict_proba(X))
    script = textwrap.dedent(
        f"""
        import sys, pickle, numpy as np

        class BlockTorch:  # any "import torch" now raises ImportError
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] == "torch":
                    raise ImportError("torch is blocked in this test")

        sys.meta_path.insert(0, BlockTorch())
        model = pickle.loads(open({str(path)!r}, "rb").read())
        X = np.load({str(tmp_path / "X.npy")!r})
        np.testing.assert_allclose(model.predict_proba(X), np.load({str(tmp_path / "expected.npy")!r}))
        model.predict(X); model.decision_function(X); model.score(X, model.predict(X))
        assert "torch" not in sys.modules
        print("ok", model.device_)
        """
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["ok", "cpu"]


def test_cross_fitting_folds_are_stratified_halves(spurious):
    X, y, groups = spurious
    model = MetaAugmentedHeadClassifier(**FAST).fit(X, y, groups)
    rows = _rows_of(X, model.support_init_.astype(np.float32))
    totals = np.bincount(groups[groups != -1], minlength=4)
    # the first run's support is one fold (cap 1000 > cells): half of every cell, rounded
    expected = np.clip(np.ceil(totals / 2 - 0.5), 1, totals - 1)  # halves round down
    first_run = rows[: int(expected.sum())]
    np.testing.assert_array_equal(np.bincount(groups[first_run], minlength=4), expected)


def test_too_few_annotated_rows_to_cross_fit_use_one_run():
    # one annotated row per class: no split keeps every class in both folds
    X, y, _ = make_spurious_embeddings(n_samples=60, n_features=4, random_state=1)
    groups = np.full(y.shape[0], -1)
    groups[np.flatnonzero(y == 0)[0]] = 0
    groups[np.flatnonzero(y == 1)[0]] = 1
    model = MetaAugmentedHeadClassifier(**FAST).fit(X, y, groups)
    assert model.best_epoch_.shape == (1,)
    assert np.isfinite(model.coef_).all()
    np.testing.assert_array_equal(
        np.sort(_rows_of(X, model.support_init_)), np.sort(np.flatnonzero(groups != -1))
    )


def test_head_l2_shrinks_the_weights_but_not_to_zero(spurious):
    X, y, groups = spurious
    plain = MetaAugmentedHeadClassifier(**FAST).fit(X, y, groups)
    shrunk = MetaAugmentedHeadClassifier(**FAST, head_l2=1.0).fit(X, y, groups)
    assert 0 < np.linalg.norm(shrunk.coef_) < 0.9 * np.linalg.norm(plain.coef_)


def test_cross_fitting_folds_are_stratified_independent_splits():
    y = np.repeat([0, 1], 60)
    cells = np.repeat(np.arange(6), 20)
    hashes = row_hashes(np.random.RandomState(0).standard_normal((120, 3)))
    weights = np.ones(120)
    folds = cross_fitting_folds(hashes, cells, y, weights, 2, 3, np.random.RandomState(0))
    assert folds.shape == (3, 120) and set(np.unique(folds)) == {0, 1}
    for split in folds:  # every (class, group) cell is halved in every split
        for cell in range(6):
            assert split[cell * 20 : (cell + 1) * 20].sum() == 10
    assert not np.array_equal(folds[0], folds[1])
    # a class of one annotated row cannot be in both folds: no split, one run
    one_more = row_hashes(np.random.RandomState(0).standard_normal((121, 3)))
    assert (
        cross_fitting_folds(
            one_more, np.r_[cells, 6], np.r_[y, 2], np.ones(121), 3, 2, np.random.RandomState(0)
        )
        is None
    )


def test_compare_unedited_keeps_the_better_head_per_run(spurious):
    X, y, groups = spurious
    # outer_lr 100 wrecks the edited heads: every run keeps its unedited one ...
    wrecked = MetaAugmentedHeadClassifier(**FAST, outer_lr=100.0).fit(X, y, groups)
    assert not wrecked.kept_edits_.any()
    # ... which is the head a run with (almost) no edits keeps
    control = MetaAugmentedHeadClassifier(**FAST, outer_lr=1e-12, compare_unedited=False)
    control.fit(X, y, groups)
    np.testing.assert_allclose(wrecked.coef_, control.coef_, rtol=1e-4, atol=1e-5)
    paper_way = MetaAugmentedHeadClassifier(**FAST, outer_lr=100.0, compare_unedited=False)
    assert paper_way.fit(X, y, groups).kept_edits_.all()
    assert not np.allclose(paper_way.coef_, wrecked.coef_)


# --------------------------------------------------------------------------- #
# Whitened features (an option)
# --------------------------------------------------------------------------- #
def test_whitening_maps_heads_and_supports_back_to_raw_features():
    X, y, groups = make_spurious_embeddings(n_samples=400, n_features=8, random_state=2)
    X = X * np.linspace(0.1, 50, 8).astype(np.float32) + 100.0  # badly scaled, offset
    head = LogisticRegression(max_iter=5000).fit(X, y)
    model = MetaAugmentedHeadClassifier(
        initial_head=(head.coef_, head.intercept_),
        whitening_ridge=0.1,
        outer_lr=1e-12,
        **{**FAST, "n_epochs": 1},
    ).fit(X, y, groups)
    # the initial head went into whitened space and came back; unedited supports are rows of X
    np.testing.assert_allclose(model.initial_coef_, head.coef_, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(model.initial_intercept_, head.intercept_, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(model.support_edited_, model.support_init_, rtol=1e-4, atol=1e-3)


def test_whitened_head_scores_what_the_core_scored(spurious):
    """coef_ (raw space) reproduces the held-out loss the core selected the epoch by."""
    X, y, groups = spurious
    model = MetaAugmentedHeadClassifier(**FAST, **POOL_SUPPORT, whitening_ridge=0.1)
    model.fit(X, y, groups)
    annotated = groups != -1
    proba = model.predict_proba(X[annotated])
    loss = -np.log(proba[np.arange(annotated.sum()), np.searchsorted(model.classes_, y[annotated])])
    epoch = model.history_["epoch"] == model.best_epoch_[0]
    column = "heldout_loss" if model.kept_edits_[0] else "unedited_heldout_loss"
    np.testing.assert_allclose(loss.mean(), model.history_[column][epoch][0], rtol=1e-4)


def test_whitening_with_a_large_ridge_is_standardisation(spurious):
    X, y, groups = spurious
    plain = MetaAugmentedHeadClassifier(**FAST, whitening_ridge=None).fit(X, y, groups)
    whitened = MetaAugmentedHeadClassifier(**FAST, whitening_ridge=1e9).fit(X, y, groups)
    np.testing.assert_allclose(whitened.coef_, plain.coef_, rtol=1e-3, atol=1e-4)
    assert not np.allclose(
        MetaAugmentedHeadClassifier(**FAST, whitening_ridge=0.1).fit(X, y, groups).coef_,
        plain.coef_,
        atol=1e-3,
    )


@pytest.fixture(scope="module")
def anisotropic():
    """Spurious embeddings whose variances span 2.5 decades along random directions."""
    X, y, groups = make_spurious_embeddings(n_samples=600, n_features=16, random_state=1)
    rotation, _ = np.linalg.qr(np.random.RandomState(1).standard_normal((16, 16)))
    return ((X @ rotation * np.logspace(-1.5, 1, 16)) @ rotation.T).astype(np.float32), y, groups


def _best_unedited_losses(model):
    """Mean over runs of the unedited head's lowest held-out worst-group loss (history_)."""
    history = model.history_
    return np.mean(
        [
            history["unedited_worst_group_loss"][history["run"] == run].min()
            for run in np.unique(history["run"])
        ]
    )


@pytest.mark.parametrize("data, whitened", [("spurious", False), ("anisotropic", True)])
def test_auto_whitening_is_the_fit_of_the_geometry_it_picks(data, whitened, request):
    X, y, groups = request.getfixturevalue(data)
    auto = MetaAugmentedHeadClassifier(**FAST, whitening_ridge="auto").fit(X, y, groups)
    standardised = MetaAugmentedHeadClassifier(**FAST, whitening_ridge=None).fit(X, y, groups)
    white = MetaAugmentedHeadClassifier(**FAST, whitening_ridge=0.1).fit(X, y, groups)
    assert (auto.whitening_ridge_ == 0.1) is whitened
    assert standardised.whitening_ridge_ is None and white.whitening_ridge_ == 0.1
    # the probe's scores are the runs' own unedited heads, on the same support draws
    scores = auto.whitening_scores_
    np.testing.assert_allclose(
        scores["standardised"], _best_unedited_losses(standardised), rtol=1e-4
    )
    np.testing.assert_allclose(scores["whitened"], _best_unedited_losses(white), rtol=1e-4)
    assert (scores["whitened"] < scores["standardised"]) is whitened
    # ... and probing leaves the fit as the chosen geometry's own (support draws included)
    chosen = white if whitened else standardised
    np.testing.assert_allclose(auto.coef_, chosen.coef_, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(auto.initial_coef_, chosen.initial_coef_, rtol=1e-4, atol=1e-5)
    np.testing.assert_array_equal(auto.support_init_, chosen.support_init_)
    assert standardised.whitening_scores_ is None


def test_auto_whitening_is_not_weighed_on_a_pool_of_few_rows_per_feature(anisotropic):
    from sklearn_featmeta._meta_head import MIN_POOL_ROWS_PER_FEATURE_TO_WHITEN

    X, y, groups = anisotropic
    pool = np.flatnonzero(groups == -1)
    per_feature = MIN_POOL_ROWS_PER_FEATURE_TO_WHITEN * X.shape[1]
    assert pool.size > per_feature  # the fixture's pool is large enough to weigh whitening
    kept = np.concatenate([pool[:per_feature], np.flatnonzero(groups != -1)])
    fits = {}
    for n_dropped in (0, 1):  # exactly 16 rows per feature, and one row short of it
        rows = kept[n_dropped:]
        model = MetaAugmentedHeadClassifier(**FAST, whitening_ridge="auto")
        fits[n_dropped] = model.fit(X[rows], y[rows], groups[rows])
    assert set(fits[0].whitening_scores_) == {"standardised", "whitened"}
    assert fits[1].whitening_scores_ is None and fits[1].whitening_ridge_ is None
    # sample weight counts as copies: a row of weight 2 makes up for the dropped one
    rows, weight = kept[1:], np.ones(kept.size - 1)
    weight[0] = 2.0
    model = MetaAugmentedHeadClassifier(**FAST, whitening_ridge="auto")
    model.fit(X[rows], y[rows], groups[rows], sample_weight=weight)
    assert model.whitening_scores_ is not None


def test_auto_whitening_with_the_papers_pool_support(anisotropic):
    X, y, groups = anisotropic
    auto = MetaAugmentedHeadClassifier(**FAST, **POOL_SUPPORT, whitening_ridge="auto")
    auto.fit(X, y, groups)
    chosen = MetaAugmentedHeadClassifier(
        **FAST, **POOL_SUPPORT, whitening_ridge=auto.whitening_ridge_
    ).fit(X, y, groups)
    np.testing.assert_allclose(auto.coef_, chosen.coef_, rtol=1e-4, atol=1e-5)
    # supports drawn from the pool are whitened copies; mapped back they are rows of X again
    assert (_rows_of(X, chosen.support_init_) >= 0).all()


def test_no_edits_is_the_early_stopped_head_update_without_hypergradients(spurious, monkeypatch):
    from sklearn_featmeta._core import _bilevel

    X, y, groups = spurious
    calls = []
    real = _bilevel.support_hypergradient
    monkeypatch.setattr(
        _bilevel, "support_hypergradient", lambda *a, **k: calls.append(1) or real(*a, **k)
    )
    plain = MetaAugmentedHeadClassifier(**{**FAST, "outer_steps": 0}).fit(X, y, groups)
    assert not calls  # no edits: no outer loss and no unedited control in the history
    assert not any(key == "outer_loss" or key.startswith("unedited_") for key in plain.history_)
    # ... the same head as edits too small to matter, with the edited head always kept
    control = MetaAugmentedHeadClassifier(**FAST, outer_lr=1e-12, compare_unedited=False)
    control.fit(X, y, groups)
    np.testing.assert_allclose(plain.coef_, control.coef_, rtol=1e-4, atol=1e-5)


def test_a_preset_without_standardisation_fits_raw_features(spurious):
    """The authors' released script: the paper's settings on the raw features."""
    X, y, groups = spurious

    def script():
        return MetaAugmentedHeadClassifier.from_preset(
            "metashift", standardize=False, random_state=0
        )

    raw = script().fit(X, y, groups)
    scaled = script().fit(3.0 * X, y, groups)
    # on raw features the scale of X changes the fit (on standardised ones it cannot)
    assert not np.allclose(3.0 * scaled.coef_, raw.coef_, rtol=1e-3)
    assert np.isfinite(raw.coef_).all()


@pytest.mark.parametrize("annotated", [True, False])
def test_a_default_model_is_small(annotated):
    """Head, choice and scores; no support (stored only with edits): 6,000 x 384 under 64 KB."""
    import pickle

    rng = np.random.default_rng(0)
    X = rng.normal(size=(6000, 384)).astype(np.float32)
    y = (X[:, 0] + rng.normal(size=6000) > 0).astype(int)
    groups = np.where(rng.random(6000) < 0.15, (X[:, 1] > 0).astype(int), -1)
    model = MetaAugmentedHeadClassifier(random_state=0)
    model.fit(X, y, groups if annotated else None)
    assert len(pickle.dumps(model)) < 64 * 1024
    assert model.selected_heads_ is not None and model.candidate_scores_ is not None
