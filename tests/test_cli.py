"""The featmeta command, run as users run it (subprocess)."""

import subprocess
import sys

import joblib
import numpy as np
import pytest

from sklearn_featmeta.cli import _kept_epoch
from sklearn_featmeta.datasets import make_spurious_embeddings


def featmeta(*args, cwd):
    return subprocess.run(
        [sys.executable, "-m", "sklearn_featmeta.cli", *map(str, args)],
        capture_output=True,
        text=True,
        cwd=cwd,
    )


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cli")
    X, y, groups = make_spurious_embeddings(n_samples=300, n_features=8, random_state=0)
    np.savez(folder / "train.npz", X=X, y=y, groups=groups)
    known = groups != -1
    np.savez(folder / "test.npz", X=X[known], y=y[known], groups=groups[known])
    np.save(folder / "X.npy", X[:5])
    np.savez(folder / "no_y.npz", X=X)
    return folder


def test_fit_predict_evaluate(data_dir):
    fitted = featmeta(
        "fit",
        "train.npz",
        "-o",
        "model.joblib",
        "--n-epochs",
        3,
        "--random-state",
        0,
        "--hard-set",
        "group",
        "-v",
        cwd=data_dir,
    )
    assert fitted.returncode == 0, fitted.stderr
    assert "epoch   3/3" in fitted.stdout and "saved model.joblib" in fitted.stdout

    predicted = featmeta("predict", "model.joblib", "X.npy", cwd=data_dir)
    assert predicted.returncode == 0, predicted.stderr
    assert len(predicted.stdout.split()) == 5
    assert set(predicted.stdout.split()) <= {"0", "1"}

    probabilities = featmeta(
        "predict", "model.joblib", "test.npz", "--proba", "-o", "p.npy", cwd=data_dir
    )
    assert probabilities.returncode == 0, probabilities.stderr
    proba = np.load(data_dir / "p.npy")
    assert proba.shape == (60, 2)
    np.testing.assert_allclose(proba.sum(1), 1)

    evaluated = featmeta("evaluate", "model.joblib", "test.npz", cwd=data_dir)
    assert evaluated.returncode == 0, evaluated.stderr
    assert "<- worst" in evaluated.stdout and "worst-group accuracy" in evaluated.stdout


def test_fit_with_preset(data_dir):
    fitted = featmeta(
        "fit", "train.npz", "-o", "paper.joblib", "--preset", "metashift", cwd=data_dir
    )
    assert fitted.returncode == 0, fitted.stderr
    assert "worst-group accuracy at the kept epoch(s): epoch" in fitted.stdout


def test_fit_passes_the_whitening_option(data_dir):
    fitted = featmeta(
        "fit",
        "train.npz",
        "-o",
        "white.joblib",
        "--n-epochs",
        2,
        "--whitening-ridge",
        0.5,
        cwd=data_dir,
    )
    assert fitted.returncode == 0, fitted.stderr
    assert joblib.load(data_dir / "white.joblib").whitening_ridge == 0.5
    fitted = featmeta(
        "fit",
        "train.npz",
        "-o",
        "plain.joblib",
        "--n-epochs",
        2,
        "--whitening-ridge",
        "none",
        cwd=data_dir,
    )
    assert fitted.returncode == 0, fitted.stderr
    assert joblib.load(data_dir / "plain.joblib").whitening_ridge is None


def test_fit_passes_the_epoch_options(data_dir):
    fitted = featmeta(
        "fit",
        "train.npz",
        "-o",
        "long.joblib",
        "--n-epochs",
        2,
        "--max-epochs",
        6,
        "--n-iter-no-change",
        2,
        "-v",
        cwd=data_dir,
    )
    assert fitted.returncode == 0, fitted.stderr
    model = joblib.load(data_dir / "long.joblib")
    assert (model.n_epochs, model.max_epochs, model.n_iter_no_change) == (2, 6, 2)
    assert "epoch   1/2-6" in fitted.stdout
    fitted = featmeta(
        "fit",
        "train.npz",
        "-o",
        "exact.joblib",
        "--n-epochs",
        2,
        "--max-epochs",
        "none",
        cwd=data_dir,
    )
    assert fitted.returncode == 0, fitted.stderr
    assert joblib.load(data_dir / "exact.joblib").max_epochs is None
    wrong = featmeta("fit", "train.npz", "-o", "m.joblib", "--max-epochs", "many", cwd=data_dir)
    assert wrong.returncode == 2
    assert "expected none or a whole number >= 0, got 'many'" in wrong.stderr


def test_fit_passes_a_sequence_of_reweighting_strengths(data_dir):
    fitted = featmeta(
        "fit", "train.npz", "-o", "s.joblib", "--reweight-gamma", "0.5,3", cwd=data_dir
    )
    assert fitted.returncode == 0, fitted.stderr
    assert joblib.load(data_dir / "s.joblib").reweight_gamma == (0.5, 3.0)
    for text, message in (
        ("3,0.5", "reweight_gamma must be"),
        ("1,two", "expected a number >= 0 or numbers separated by commas, got '1,two'"),
    ):
        wrong = featmeta(
            "fit", "train.npz", "-o", "m.joblib", "--reweight-gamma", text, cwd=data_dir
        )
        assert wrong.returncode == 2 and message in wrong.stderr
        assert "Traceback" not in wrong.stderr


def test_errors_are_reported_without_traceback(data_dir):
    missing = featmeta("fit", "no_y.npz", "-o", "m.joblib", cwd=data_dir)
    assert missing.returncode == 2
    assert "missing array(s) ['y']" in missing.stderr and "Traceback" not in missing.stderr
    absent = featmeta("evaluate", "nothing.joblib", "test.npz", cwd=data_dir)
    assert absent.returncode == 2 and "no such model file" in absent.stderr
    bad_param = featmeta("fit", "train.npz", "-o", "m.joblib", "--hard-set", "cells", cwd=data_dir)
    assert bad_param.returncode == 2 and "--hard-set" in bad_param.stderr
    assert "expected class or group, got 'cells'" in bad_param.stderr
    bad_flag = featmeta(
        "fit", "train.npz", "-o", "m.joblib", "--compare-unedited", "yes", cwd=data_dir
    )
    assert bad_flag.returncode == 2 and "expected true or false, got 'yes'" in bad_flag.stderr


def test_demo_prints_both_models_per_group(tmp_path):
    demo = featmeta("demo", "--n-samples", 2000, cwd=tmp_path)
    assert demo.returncode == 0, demo.stderr
    lines = demo.stdout.splitlines()
    assert any(
        "LogisticRegression (ERM)" in line and "MetaAugmentedHeadClassifier" in line
        for line in lines
    )
    worst_line = next(line for line in lines if line.startswith("worst-group"))
    erm, ours = (float(v) for v in worst_line.split()[1:])
    assert ours > erm
    assert sum(line.count("*") for line in lines if line.startswith("y=")) == 2


def test_fit_summary_reports_the_score_of_the_head_each_run_kept():
    history = {
        "run": np.array([0, 0, 1, 1]),
        "epoch": np.array([1, 2, 1, 2]),
        "worst_group_accuracy": np.array([0.5, 0.6, 0.7, 0.8]),
        "unedited_worst_group_accuracy": np.array([0.55, 0.65, 0.75, 0.85]),
    }
    assert _kept_epoch(history, 0, 2, edited=True) == "epoch 2: 0.6000"
    assert _kept_epoch(history, 1, 1, edited=False) == "epoch 1 (unedited): 0.7500"


def _no_traceback(result, message):
    assert result.returncode == 2, result.stdout
    assert message in result.stderr, result.stderr
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) <= 3  # argparse's usage lines at most


def test_every_file_level_mistake_is_a_one_line_error(data_dir):
    (data_dir / "notes.txt").write_text("not data\n")
    (data_dir / "fake.npz").write_text("not a zip\n")
    (data_dir / "fake.joblib").write_text("not a model\n")
    joblib.dump({"a": 1}, data_dir / "dict.joblib")
    _no_traceback(
        featmeta("fit", "notes.txt", "-o", "m.joblib", cwd=data_dir), "not a NumPy .npz archive"
    )
    _no_traceback(
        featmeta("fit", "fake.npz", "-o", "m.joblib", cwd=data_dir), "not a NumPy .npz archive"
    )
    _no_traceback(featmeta("fit", "absent.npz", "-o", "m.joblib", cwd=data_dir), "no such file")
    for command in (
        ("predict", "fake.joblib", "X.npy"),
        ("evaluate", "fake.joblib", "test.npz"),
        ("explain", "fake.joblib"),
    ):
        _no_traceback(featmeta(*command, cwd=data_dir), "not a model saved by 'featmeta fit'")
    _no_traceback(
        featmeta("predict", "dict.joblib", "X.npy", cwd=data_dir),
        "holds a dict, not a fitted classifier",
    )
    _no_traceback(
        featmeta("predict", "fake.joblib", "notes.txt", cwd=data_dir), "not a model saved"
    )


def test_outputs_into_missing_folders_fail_before_any_work(data_dir):
    fit = featmeta("fit", "train.npz", "-o", "nowhere/m.joblib", cwd=data_dir)
    _no_traceback(fit, "folder nowhere does not exist")
    assert fit.stdout == ""  # nothing was fitted
    assert (
        featmeta(
            "fit", "train.npz", "-o", "m.joblib", "--n-epochs", 1, "--n-repeats", 1, cwd=data_dir
        ).returncode
        == 0
    )
    _no_traceback(
        featmeta("predict", "m.joblib", "X.npy", "-o", "nowhere/p.npy", cwd=data_dir),
        "folder nowhere does not exist",
    )
    _no_traceback(
        featmeta("explain", "m.joblib", "--plot", "nowhere/e.png", cwd=data_dir),
        "folder nowhere does not exist",
    )


def test_fit_help_lists_every_parameter_with_its_default(data_dir):
    from sklearn_featmeta import MetaAugmentedHeadClassifier
    from sklearn_featmeta.cli import _NOT_OPTIONS

    shown = featmeta("fit", "--help", cwd=data_dir)
    assert shown.returncode == 0
    text = " ".join(shown.stdout.split())  # argparse wraps lines
    defaults = MetaAugmentedHeadClassifier().get_params()
    for name, default in defaults.items():
        if name in _NOT_OPTIONS:
            continue
        option = "--" + name.replace("_", "-").lower()
        assert option in text, option
        value = "none" if default is None else default
        assert f"[default: {value};" in text.split(option, 2)[-1], option
