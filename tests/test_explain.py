"""Explanation of the support edits: fields, hand computations, plot, CLI."""

import subprocess
import sys

import numpy as np
import pytest

from sklearn_featmeta import MetaAugmentedHeadClassifier
from sklearn_featmeta.datasets import make_spurious_embeddings
from sklearn_featmeta.explain import concept_alignment, edit_summary, has_edits, plot_edits

PAPER_LIKE = {
    "support_source": "pool",
    "support_size_per_class": 16,
    "hard_set": "class",
    "outer_lr": 1.0,
    "outer_steps": 5,
    "head_update": "adam",
    "inner_lr": 5e-5,
    "n_epochs": 10,
    "random_state": 0,
}


@pytest.fixture(scope="module")
def planted():
    """A fitted model on data with a known core and spurious direction."""
    n_features = 16
    X, y, groups = make_spurious_embeddings(n_samples=1500, n_features=n_features, random_state=0)
    # the generator's first draw: orthonormal core (columns 0, 1) and spurious (2, 3) directions
    directions, _ = np.linalg.qr(np.random.RandomState(0).standard_normal((n_features, 4)))
    concepts = {
        "spurious": directions[:, 3] - directions[:, 2],
        "core": directions[:, 1] - directions[:, 0],
        "control": np.random.RandomState(5).standard_normal(n_features),
    }
    model = MetaAugmentedHeadClassifier(**PAPER_LIKE).fit(X, y, groups)
    return model, concepts, X


def test_fields_have_documented_shapes_and_are_finite(planted):
    model, concepts, _ = planted
    assert has_edits(model)
    summary = edit_summary(model, n_components=3)
    assert summary.classes.tolist() == [0, 1] and summary.n_rows.tolist() == [16, 16]
    assert summary.top_direction_share.shape == (2, 3)
    assert np.all(np.diff(summary.top_direction_share, axis=1) >= -1e-12)  # cumulative
    alignment = concept_alignment(model, concepts)
    assert alignment.concept_names == ["spurious", "core", "control"]
    for field in ("cosine", "shift", "z_score"):
        values = getattr(alignment, field)
        assert values.shape == (2, 3) and np.isfinite(values).all()
    assert np.all(np.abs(alignment.cosine) <= 1 + 1e-12)
    assert "z-score" in str(alignment) and "class 0" in str(alignment)
    assert set(alignment.to_dict()["shift"]["1"]) == {"spurious", "core", "control"}


def test_paper_like_edits_move_along_the_planted_spurious_direction(planted):
    """Each class's support moves towards the other attribute value (the paper's claim)."""
    model, concepts, _ = planted
    alignment = concept_alignment(model, concepts)
    spurious, control = alignment.cosine[:, 0], alignment.cosine[:, 2]
    assert spurious[0] > 0.5 and spurious[1] < -0.5  # class 0 towards a=1, class 1 towards a=0
    assert np.all(np.abs(spurious) > np.abs(control))


def test_shift_and_z_score_by_hand():
    before = np.array([[0.0, 0.0], [2.0, 0.0], [0.0, 2.0], [2.0, 2.0]])
    after = before + np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 0.0], [0.0, -2.0]])
    model = MetaAugmentedHeadClassifier()
    model.support_init_, model.support_edited_ = before, after
    model.support_labels_ = np.array([0, 0, 1, 1])
    alignment = concept_alignment(
        model, {"x": [2.0, 0.0], "y": [0.0, 1.0]}, n_random=500, random_state=0
    )
    # class 0 mean moves by (1, 0); class 1 by (0, -1); the support's sd is 1 along x and along y
    np.testing.assert_allclose(alignment.shift, [[1.0, 0.0], [0.0, -1.0]])
    np.testing.assert_allclose(alignment.cosine, [[1.0, 0.0], [0.0, -1.0]], atol=1e-12)
    # against random unit directions (cos t, sin t) the shift of class 0 is cos t / sd(t)
    rng = np.random.RandomState(0)
    random = rng.standard_normal((500, 2))
    random /= np.linalg.norm(random, axis=1, keepdims=True)
    sd = ((before - before.mean(0)) @ random.T).std(0)
    random_shift = (np.array([1.0, 0.0]) @ random.T) / sd
    expected_z = (1.0 - random_shift.mean()) / random_shift.std()
    assert alignment.z_score[0, 0] == pytest.approx(expected_z)
    summary = edit_summary(model)
    np.testing.assert_allclose(summary.mean_edit_norm, [1.0, 1.0])
    # per-row edit norms: class 0: 1, 1; class 1: 0, 2; scale = rms distance to the mean = sqrt(2)
    np.testing.assert_allclose(summary.relative_edit_norm, [1 / np.sqrt(2), 1 / np.sqrt(2)])


def test_bad_concepts_are_rejected(planted):
    model, _, _ = planted
    with pytest.raises(ValueError, match="16 features"):
        concept_alignment(model, {"short": np.ones(3)})
    with pytest.raises(ValueError, match="non-zero"):
        concept_alignment(model, {"zero": np.zeros(16)})
    with pytest.raises(ValueError, match="at least 200"):
        concept_alignment(model, {"x": np.ones(16)}, n_random=10)


def test_plot_draws_one_arrow_per_support_row(planted):
    matplotlib = pytest.importorskip("matplotlib")
    matplotlib.use("Agg")
    model, concepts, _ = planted
    figure = plot_edits(model, concepts)
    quivers = [c for c in figure.axes[0].collections if type(c).__name__ == "Quiver"]
    assert [q.N for q in quivers] == [16, 16]
    direction = concepts["spurious"] / np.linalg.norm(concepts["spurious"])
    rows = np.flatnonzero(model.support_labels_ == 0)
    expected = (model.support_edited_[rows] - model.support_init_[rows]) @ direction
    np.testing.assert_allclose(quivers[0].U, expected, rtol=1e-6)
    assert figure.axes[0].get_xlabel() == "spurious"
    default = plot_edits(model, max_arrows_per_class=5)
    assert default.axes[0].get_xlabel() == "edit direction 1"
    assert [q.N for q in default.axes[0].collections if type(q).__name__ == "Quiver"] == [5, 5]


def test_cli_explain(planted, tmp_path):
    pytest.importorskip("matplotlib")
    import joblib

    model, concepts, _ = planted
    joblib.dump(model, tmp_path / "model.joblib")
    np.savez(
        tmp_path / "concepts.npz",
        names=np.array(list(concepts)),
        vectors=np.array(list(concepts.values())),
    )
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "sklearn_featmeta.cli",
            "explain",
            "model.joblib",
            "--concepts",
            "concepts.npz",
            "--plot",
            "edits.png",
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr
    assert "z-score" in done.stdout and "spurious" in done.stdout and "top-1 share" in done.stdout
    assert (tmp_path / "edits.png").stat().st_size > 1000


@pytest.mark.parametrize("whitening_ridge", [None, 0.1])
def test_a_fit_without_edits_stores_no_support_and_has_nothing_to_explain(whitening_ridge):
    """No edits: no support is stored (a default model stays small), and explaining it is a
    clear error."""
    X, y, groups = make_spurious_embeddings(n_samples=800, n_features=12, random_state=1)
    model = MetaAugmentedHeadClassifier(
        whitening_ridge=whitening_ridge, max_epochs=3, random_state=0
    ).fit(X.astype(np.float32), y, groups)
    assert model.outer_steps == 0 and model.best_epoch_.max() > 0  # the runs did train
    assert not hasattr(model, "support_init_") and not hasattr(model, "support_edited_")
    assert not has_edits(model)
    for explain in (edit_summary, lambda m: concept_alignment(m, {"a": np.ones(12)})):
        with pytest.raises(ValueError, match="no support edits"):
            explain(model)
