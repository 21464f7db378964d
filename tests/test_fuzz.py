"""The bad-input table: every awkward input gets a clear error, a warned fallback or a right result.

One row per input a user has tried or is likely to: what goes in, and which of
three outcomes is promised. ``error`` rows must raise ``ValueError`` (or a
subclass) whose message matches; ``warn`` rows must warn with a matching
message and still give a usable model; ``ok`` rows must fit quietly (no
warning of ours) and predict the shapes ``LogisticRegression`` would.
"""

import warnings

import numpy as np
import pytest

from sklearn_featmeta import MetaAugmentedHeadClassifier
from sklearn_featmeta.baselines import DFRClassifier
from sklearn_featmeta.datasets import make_spurious_embeddings
from sklearn_featmeta.metrics import group_accuracy_report, worst_group_accuracy_score
from sklearn_featmeta.model_selection import SubgroupStratifiedKFold

FAST = {"n_repeats": 1, "max_epochs": 3, "outer_steps": 1, "inner_steps": 3, "random_state": 0}
X, Y, GROUPS = make_spurious_embeddings(n_samples=240, n_features=5, random_state=0)
N = Y.size


def _meta(**params):
    return MetaAugmentedHeadClassifier(**{**FAST, **params})


def _with(**changes):
    """Keyword arguments of a fit on the table's data, with some replaced."""
    return {"X": X, "y": Y, "groups": GROUPS, **changes}


def _nan_X():
    bad = X.copy()
    bad[3, 2] = np.nan
    return bad


def _constant_column():
    constant = X.copy()
    constant[:, 1] = 7.0
    return constant


def _tiny_spread():
    return X * 1e-9 + 1e-9


# (case, estimator factory, fit arguments, outcome, message pattern)
CASES = [
    ("X with NaN", _meta, _with(X=_nan_X()), "error", "NaN"),
    ("X with infinity", _meta, _with(X=np.where(X > 2, np.inf, X)), "error", "infinity"),
    ("X of one dimension", _meta, _with(X=X[:, 0]), "error", "2D array"),
    ("X of text", _meta, _with(X=np.full((N, 2), "a")), "error", "string|float"),
    ("X with no rows", _meta, _with(X=X[:0], y=Y[:0], groups=GROUPS[:0]), "error", "0 sample"),
    ("y shorter than X", _meta, _with(y=Y[:-1]), "error", "inconsistent numbers of samples"),
    ("y continuous", _meta, _with(y=np.linspace(0, 1, N)), "error", "Unknown label type"),
    ("y of one class", _meta, _with(y=np.zeros(N, dtype=int)), "error", "at least 2 classes"),
    ("y as strings", _meta, _with(y=np.where(Y == 1, "yes", "no")), "ok", ""),
    ("y non-contiguous ints", _meta, _with(y=np.where(Y == 1, 7, -3)), "ok", ""),
    ("groups of two dimensions", _meta, _with(groups=GROUPS[:, None]), "error", "1-D"),
    ("groups shorter than X", _meta, _with(groups=GROUPS[:-2]), "error", "entries but X has"),
    (
        "groups of mixed types",
        _meta,
        _with(
            groups=np.array(
                [("a" if g == 0 else 1) if g >= 0 else None for g in GROUPS], dtype=object
            )
        ),
        "error",
        "cannot be compared",
    ),
    ("groups all unknown", _meta, _with(groups=np.full(N, -1)), "warn", "No row of groups"),
    ("groups all None", _meta, _with(groups=[None] * N), "warn", "No row of groups"),
    (
        "groups as float with NaN",
        _meta,
        _with(groups=np.where(GROUPS == -1, np.nan, GROUPS.astype(float))),
        "ok",
        "",
    ),
    (
        "groups 'nan' text",
        _meta,
        _with(groups=np.where(GROUPS == -1, "nan", GROUPS.astype(str))),
        "warn",
        "read as an unknown",
    ),
    ("groups '-1' text", _meta, _with(groups=GROUPS.astype(str)), "warn", "read as an unknown"),
    (
        "groups '' text",
        _meta,
        _with(groups=np.where(GROUPS == -1, "", GROUPS.astype(str))),
        "warn",
        "read as an unknown",
    ),
    ("groups all known", _meta, _with(groups=100 + Y), "ok", ""),
    ("groups=None", _meta, _with(groups=None), "ok", ""),
    (
        "a class with no training rows",
        _meta,
        _with(groups=np.where((GROUPS == -1) & (Y == 1), 2, GROUPS)),
        "error",
        "no training rows",
    ),
    (
        "a class with no annotated rows",
        _meta,
        _with(groups=np.where(Y == 1, -1, GROUPS)),
        "error",
        "no rows with a known group",
    ),
    (
        "one annotated row per class",
        _meta,
        _with(
            groups=np.where(
                np.isin(np.arange(N), [np.flatnonzero(Y == 0)[0], np.flatnonzero(Y == 1)[0]]), Y, -1
            )
        ),
        "warn",
        "Only 1 held-out row",
    ),
    ("sample_weight negative", _meta, _with(sample_weight=-np.ones(N)), "error", "Negative"),
    ("sample_weight all zero", _meta, _with(sample_weight=np.zeros(N)), "error", "zero"),
    (
        "sample_weight wrong length",
        _meta,
        _with(sample_weight=np.ones(3)),
        "error",
        "sample_weight",
    ),
    (
        "sample_weight with NaN",
        _meta,
        _with(sample_weight=np.r_[np.nan, np.ones(N - 1)]),
        "error",
        "NaN",
    ),
    ("sample_weight as a list", _meta, _with(sample_weight=[1.0] * N), "ok", ""),
    ("X scaled by 1e-9 and shifted", _meta, _with(X=_tiny_spread()), "ok", ""),
    ("a constant column", _meta, _with(X=_constant_column()), "ok", ""),
    ("X as float32", _meta, _with(X=X.astype(np.float32)), "ok", ""),
    ("X as int", _meta, _with(X=np.rint(X * 10).astype(int)), "ok", ""),
    (
        "max_epochs below n_epochs",
        lambda: _meta(n_epochs=5, max_epochs=2),
        _with(),
        "error",
        "max_epochs=2 is below",
    ),
    ("negative inner_lr", lambda: _meta(inner_lr=-1.0), _with(), "error", "inner_lr"),
    ("unknown hard_set", lambda: _meta(hard_set="cell"), _with(), "error", "hard_set"),
    (
        "whitening ridge below 1e-6",
        lambda: _meta(whitening_ridge=1e-9),
        _with(),
        "error",
        "whitening_ridge",
    ),
    ("unavailable device", lambda: _meta(device="cuda:7"), _with(), "error", "cuda"),
    ("nonsense device", lambda: _meta(device="gpu please"), _with(), "error", "not a valid device"),
    (
        "initial_head of wrong shape",
        lambda: _meta(initial_head=(np.zeros((2, 5)), np.zeros(2))),
        _with(),
        "error",
        "initial_head must have coef",
    ),
    (
        "initial_head with NaN",
        lambda: _meta(initial_head=(np.full((1, 5), np.nan), np.zeros(1))),
        _with(),
        "error",
        "NaN",
    ),
    (
        "crushing head_l2, no fallback",
        lambda: _meta(head_l2=1e12, erm_C=1e-12, balanced_candidates=False),
        _with(),
        "warn",
        "head is degenerate",
    ),
    ("DFR: empty Cs", lambda: DFRClassifier(Cs=()), _with(), "error", "Cs must be"),
    ("DFR: negative C", lambda: DFRClassifier(Cs=(1.0, -1.0)), _with(), "error", "Cs must be"),
    (
        "DFR: no annotated rows of a class",
        lambda: DFRClassifier(),
        _with(groups=np.where(Y == 1, -1, GROUPS)),
        "error",
        "no rows with a known group",
    ),
    (
        "DFR: negative sample_weight",
        lambda: DFRClassifier(),
        _with(sample_weight=-np.ones(N)),
        "error",
        "Negative",
    ),
    (
        "DFR: groups 'nan' text",
        lambda: DFRClassifier(random_state=0),
        _with(groups=np.where(GROUPS == -1, "nan", GROUPS.astype(str))),
        "warn",
        "read as an unknown",
    ),
]


@pytest.mark.parametrize(
    "make, arguments, outcome, pattern",
    [case[1:] for case in CASES],
    ids=[case[0] for case in CASES],
)
def test_bad_input_table(make, arguments, outcome, pattern):
    estimator = make()
    arguments = dict(arguments)
    X_fit, y_fit = arguments.pop("X"), arguments.pop("y")
    if outcome == "error":
        with pytest.raises(ValueError, match=pattern):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                estimator.fit(X_fit, y_fit, **arguments)
        return
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        estimator.fit(X_fit, y_fit, **arguments)
    ours = [
        w
        for w in caught
        if "sklearn_featmeta" in w.filename
        or "tests" in w.filename
        or issubclass(w.category, UserWarning)
    ]
    messages = [str(w.message) for w in ours]
    if outcome == "warn":
        assert any(pattern in m for m in messages), messages
    else:
        assert not [m for m in messages if "still improved" not in m], messages
    predicted = estimator.predict(X_fit)
    assert predicted.shape == (len(y_fit),)
    assert set(np.unique(predicted)) <= set(np.unique(y_fit))
    assert np.isfinite(estimator.coef_).all()


METRIC_CASES = [
    (
        "text against numbers",
        dict(y_true=["0", "1"], y_pred=[0, 1], groups=[0, 1]),
        "error",
        "text labels",
    ),
    (
        "negative weights",
        dict(y_true=[0, 1], y_pred=[0, 1], groups=[0, 1], sample_weight=[1, -1]),
        "error",
        "Negative",
    ),
    ("groups missing", dict(y_true=[0, 1], y_pred=[0, 1], groups=None), "error", "routing"),
    (
        "every group unknown",
        dict(y_true=[0, 1], y_pred=[0, 1], groups=[-1, None]),
        "error",
        "unknown",
    ),
    (
        "length mismatch",
        dict(y_true=[0, 1, 1], y_pred=[0, 1], groups=[0, 1, 1]),
        "error",
        "inconsistent",
    ),
    ("strings both sides", dict(y_true=["a", "b"], y_pred=["a", "a"], groups=[0, 1]), "ok", 0.0),
    (
        "unknown rows ignored",
        dict(y_true=[0, 1, 1], y_pred=[0, 1, 0], groups=[0, 1, -1]),
        "ok",
        1.0,
    ),
]


@pytest.mark.parametrize(
    "arguments, outcome, expected",
    [case[1:] for case in METRIC_CASES],
    ids=[case[0] for case in METRIC_CASES],
)
def test_metric_bad_input_table(arguments, outcome, expected):
    if outcome == "error":
        for metric in (worst_group_accuracy_score, group_accuracy_report):
            with pytest.raises(ValueError, match=expected):
                metric(**arguments)
    else:
        assert worst_group_accuracy_score(**arguments) == expected


def test_splitter_needs_labels_and_warns_on_small_cells():
    with pytest.raises(ValueError, match="needs y"):
        list(SubgroupStratifiedKFold(2).split(X, None, GROUPS))
    with pytest.warns(UserWarning, match="fewer rows"):
        list(SubgroupStratifiedKFold(5).split(X[:20], Y[:20], GROUPS[:20]))
