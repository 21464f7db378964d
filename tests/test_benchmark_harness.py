"""Smoke tests of the benchmark harnesses on tiny synthetic data (the full runs are commands)."""

import json
from pathlib import Path

import numpy as np
import pytest

from benchmarks import geometry, groupfree_screen, noise, run, speed
from benchmarks.data import Benchmark, Split, has_negation
from benchmarks.embed import TextEncoder, _small_cnn, train_cnn_embeddings
from benchmarks.report import machine_line, replace_section
from benchmarks.threads import BENCHMARK_THREADS
from sklearn_featmeta import MetaAugmentedHeadClassifier


def test_run_harness_on_synthetic_data(tmp_path):
    pytest.importorskip("matplotlib")
    assert run.main(["--synthetic", "--seeds", "0", "1", "--out", str(tmp_path)]) == 0
    results = json.loads((tmp_path / "results.json").read_text())
    summary = results["summary"]["synthetic"]
    assert set(summary) == set(run.methods("synthetic"))
    for row in summary.values():
        assert row["n_seeds"] == 2 and 0 <= row["worst_group_mean"] <= 100
    assert len(results["per_seed"]["synthetic"]["DFRClassifier"]["worst_group_accuracy"]) == 2
    assert (tmp_path / "wga.png").stat().st_size > 1000
    text = (tmp_path / "RESULTS.md").read_text()
    assert "<!-- begin: benchmarks -->" in text and "| DFRClassifier |" in text
    assert machine_line() in text


@pytest.fixture
def fit_groups_seen(monkeypatch):
    """The ``groups`` every ``MetaAugmentedHeadClassifier.fit`` call received, in order."""
    pytest.importorskip("matplotlib")
    seen = []
    real = MetaAugmentedHeadClassifier.fit

    def spy(self, X, y, groups=None, sample_weight=None):
        seen.append(groups)
        return real(self, X, y, groups, sample_weight)

    monkeypatch.setattr(MetaAugmentedHeadClassifier, "fit", spy)
    return seen


def test_run_harness_without_groups(tmp_path, fit_groups_seen):
    seen = fit_groups_seen
    argv = ["--synthetic", "--seeds", "0", "--no-groups", "--out", str(tmp_path)]
    assert run.main([*argv, "--section", "no-groups"]) == 0
    assert seen == [None]  # no group label reached the fit
    per_seed = json.loads((tmp_path / "results-no-groups.json").read_text())["per_seed"]
    assert list(per_seed["synthetic"]) == list(run.methods_without_groups())
    text = (tmp_path / "RESULTS.md").read_text()
    assert f"| {run.SCALED_LR_LABEL} |" in text and f"| {run.DEFAULTS_LABEL} |" in text


def test_run_harness_with_groups_only_to_choose(tmp_path, fit_groups_seen):
    seen = fit_groups_seen
    argv = ["--synthetic", "--seeds", "0", "--groups-only-choose", "--out", str(tmp_path)]
    assert run.main([*argv, "--section", "choose"]) == 0
    # every fit of the search (10 settings x 2 folds) and its refit: no group label
    assert len(seen) == 21 and all(groups is None for groups in seen)
    per_seed = json.loads((tmp_path / "results-choose.json").read_text())["per_seed"]
    assert list(per_seed["synthetic"]) == list(run.methods_choosing_with_groups())
    with pytest.raises(SystemExit):  # two regimes at once
        run.main([*argv, "--no-groups"])


def test_machine_line_names_the_cpu_and_its_instruction_set():
    """Fits differ in their last bits between CPUs, so every section says which one ran."""
    torch = pytest.importorskip("torch")
    line = machine_line()
    assert f"torch CPU capability {torch.backends.cpu.get_cpu_capability()}," in line
    assert f"torch {torch.__version__}" in line and " CPU cores" in line
    if Path("/proc/cpuinfo").exists():
        assert "(family " in line and ", model " in line


def test_geometry_report_on_synthetic_data():
    rows = geometry.choices(["synthetic"], [0], lambda name, seed: run._synthetic_splits(seed))
    ((seed, whitened, standardised, white, worst_group),) = rows["synthetic"]
    assert seed == 0 and whitened == (white < standardised) and 0 <= worst_group <= 1
    table = geometry.markdown(rows, "python -m benchmarks.geometry")
    assert f"| synthetic | {int(whitened)} of 1 | 0: {'W' if whitened else 's'} (" in table


def test_geometry_report_says_where_whitening_was_not_weighed():
    rows = {"task": [(0, False, None, None, 0.5), (1, True, 0.9, 0.4, 0.6)]}
    table = geometry.markdown(rows, "python -m benchmarks.geometry")
    assert "| task | 1 of 2 | 0: s (not weighed), 1: W (0.900 / 0.400) |" in table


def test_noise_report_on_synthetic_data():
    rows = noise.spreads(
        ["synthetic"], [0], [0, 1, 2], lambda name, seed: run._synthetic_splits(seed)
    )
    methods = rows["synthetic", 0]
    assert set(methods) == {run.DEFAULTS_LABEL, run.DFR_LABEL, run.BALANCED_LR_LABEL}
    assert len(methods.pop(run.BALANCED_LR_LABEL)) == 1  # draws nothing at random: one fit
    assert all(len(values) == 3 and all(0 <= v <= 1 for v in values) for values in methods.values())
    # the defaults are seeded: the same random_state gives the same fit
    again = noise.spreads(["synthetic"], [0], [1], lambda name, seed: run._synthetic_splits(seed))
    assert again["synthetic", 0][run.DEFAULTS_LABEL] == [methods[run.DEFAULTS_LABEL][1]]
    table = noise.markdown(rows, "python -m benchmarks.noise")
    values = 100 * np.asarray(methods[run.DFR_LABEL])
    assert f"| synthetic | 0 | {run.DFR_LABEL} | {values.mean():.1f} |" in table
    assert " ".join(f"{value:.1f}" for value in values) + " |" in table
    difference = 100 * (np.mean(methods[run.DEFAULTS_LABEL]) - np.mean(methods[run.DFR_LABEL]))
    assert f"| synthetic | 0: {difference:+.1f} | {difference:+.1f} |" in table
    # per benchmark: each method's mean and its spread over random states
    defaults = 100 * np.asarray(methods[run.DEFAULTS_LABEL])
    summary = f"{defaults.mean():.1f} ({defaults.std(ddof=1):.1f})"
    assert "| synthetic | 1 | " in table and summary in table


def test_speed_harness_on_a_tiny_size(tmp_path):
    sizes = ["2500x16", "2000x8:150"]
    assert speed.main(["--sizes", *sizes, "--repeats", "1", "--out", str(tmp_path)]) == 0
    rows = json.loads((tmp_path / "speed.json").read_text())["rows"]
    assert [(row["n"], row["annotated"]) for row in rows] == [(2500, 375), (2000, 150)]
    for method in speed.METHODS:
        assert len(rows[0][method]["seconds"]) == 1 and rows[0][method]["extra_bytes"][0] >= 0
    text = (tmp_path / "RESULTS.md").read_text()
    assert "| 2,500 x 16 | 375 |" in text and "| 2,000 x 8 | 150 |" in text


def test_speed_sizes_name_their_annotated_rows():
    assert speed.parse_size("6000x384") == (6000, 384, 900)
    assert speed.parse_size("5994x2048:1199") == (5994, 2048, 1199)
    assert all(speed.parse_size(size) for size in speed.DEFAULT_SIZES)


def test_sections_are_replaced_in_place(tmp_path):
    path = tmp_path / "new folder" / "RESULTS.md"  # --out need not exist yet
    replace_section(path, "a", "first")
    replace_section(path, "b", "other")
    replace_section(path, "a", "second")
    text = path.read_text()
    assert "second" in text and "first" not in text and text.index("second") < text.index("other")


@pytest.mark.parametrize(
    "sentence, expected",
    [
        ("it is n't funny .", True),
        ("not bad", True),
        ("a delight without end", True),
        ("nothingness", False),
        ("a fine film", False),
    ],
)
def test_negation_words(sentence, expected):
    assert has_negation(sentence) is expected


def test_run_harness_subset_of_methods_in_its_own_section(tmp_path):
    pytest.importorskip("matplotlib")
    argv = ["--synthetic", "--seeds", "0", "1", "2", "--out", str(tmp_path)]
    assert run.main([*argv, "--methods", "dfr", "defaults", "--section", "more-seeds"]) == 0
    results = json.loads((tmp_path / "results-more-seeds.json").read_text())
    per_seed = results["per_seed"]["synthetic"]
    assert list(per_seed) == [run.DFR_LABEL, run.DEFAULTS_LABEL]
    assert (tmp_path / "wga-more-seeds.png").exists() and not (tmp_path / "results.json").exists()
    # the paired difference is taken seed by seed, against DFR on the same splits
    difference = 100 * (
        np.array(per_seed[run.DEFAULTS_LABEL]["worst_group_accuracy"])
        - np.array(per_seed[run.DFR_LABEL]["worst_group_accuracy"])
    )
    paired = results["summary"]["synthetic"][run.DEFAULTS_LABEL]["vs_dfr"]
    assert paired["mean"] == pytest.approx(difference.mean())
    assert paired["stderr"] == pytest.approx(difference.std(ddof=1) / np.sqrt(3))
    assert paired["seeds_at_or_above"] == int((difference >= 0).sum())
    assert "vs_dfr" not in results["summary"]["synthetic"][run.DFR_LABEL]
    text = (tmp_path / "RESULTS.md").read_text()
    assert "<!-- begin: more-seeds -->" in text and "<!-- begin: benchmarks -->" not in text


def test_run_harness_rejects_unknown_methods_and_section_names(capsys):
    with pytest.raises(ValueError, match="Unknown method key"):
        run.methods("dominoes", ["dfr", "svm"])
    with pytest.raises(SystemExit):
        run.main(["--synthetic", "--section", "Bad Name"])
    assert "section names are lower-case" in capsys.readouterr().err


class _BatchSensitiveModel:
    """Stands in for MiniLM: like padding, each vector depends on the whole batch it came in."""

    def __init__(self):
        self.calls = 0

    def encode(self, sentences, **kwargs):
        self.calls += 1
        batch_term = sum(len(s) for s in sentences) * 1e-3
        return np.array([[len(s), s.count("a") + batch_term] for s in sentences], dtype=np.float32)


def _encoder(cache_dir):
    encoder = TextEncoder(cache_dir)
    encoder._model = _BatchSensitiveModel()
    return encoder


def test_text_embeddings_do_not_depend_on_what_was_encoded_before(tmp_path):
    corpus = ["a cat", "a dog", "bananas", "no a here", "spam"]
    first = _encoder(tmp_path / "one")
    first.encode(corpus[:2], corpus)
    late = first.encode(corpus[3:], corpus)

    fresh = _encoder(tmp_path / "two")  # asked for other sentences first, in another batch
    np.testing.assert_array_equal(fresh.encode(corpus[2:], corpus)[1:], late)
    # the corpus is encoded once; a new encoder reads it from the cache
    assert first._model.calls == 1
    cached = _encoder(tmp_path / "one")
    np.testing.assert_array_equal(cached.encode(corpus[3:], corpus), late)
    assert cached._model.calls == 0


def test_text_encoder_rejects_a_sentence_outside_the_corpus(tmp_path):
    with pytest.raises(ValueError, match="not in the corpus.*'unseen'"):
        _encoder(tmp_path).encode(["a cat", "unseen"], ["a cat", "a dog"])


def _tiny_image_benchmark():
    rng = np.random.RandomState(0)

    def split(n):
        images = rng.randint(0, 256, size=(n, 2, 28, 28)).astype(np.uint8)
        return Split(images, rng.randint(0, 2, n), rng.randint(0, 2, n))

    return Benchmark("colored_mnist", split(64), split(16), split(16))


@pytest.fixture
def one_thread():
    """The caller runs torch on one thread (not the benchmarks' count); restored after."""
    torch = pytest.importorskip("torch")
    previous = torch.get_num_threads()
    torch.set_num_threads(1 if BENCHMARK_THREADS != 1 else 3)
    yield torch.get_num_threads()
    torch.set_num_threads(previous)


def test_cnn_trains_on_the_benchmark_thread_count_whatever_the_caller_set(
    tmp_path, monkeypatch, one_thread
):
    import torch

    threads_in_training = []

    def recording_cnn(in_channels, **kwargs):
        features, head = _small_cnn(in_channels, **kwargs)
        head.register_forward_hook(lambda *_: threads_in_training.append(torch.get_num_threads()))
        return features, head

    monkeypatch.setattr("benchmarks.embed._small_cnn", recording_cnn)
    train_cnn_embeddings(_tiny_image_benchmark(), 0, tmp_path, epochs=1)
    assert threads_in_training and set(threads_in_training) == {BENCHMARK_THREADS}
    assert torch.get_num_threads() == one_thread


def test_run_script_fits_on_the_benchmark_thread_count(tmp_path, monkeypatch, one_thread):
    import torch

    pytest.importorskip("matplotlib")
    threads_in_fits = []
    fit_dfr = run.methods("synthetic", ["dfr"])[run.DFR_LABEL]

    def recording_fit(*args):
        threads_in_fits.append(torch.get_num_threads())
        return fit_dfr(*args)

    monkeypatch.setattr(run, "methods", lambda name, keys: {run.DFR_LABEL: recording_fit})
    assert run.main(["--synthetic", "--quick", "--methods", "dfr", "--out", str(tmp_path)]) == 0
    assert threads_in_fits == [BENCHMARK_THREADS]
    assert torch.get_num_threads() == one_thread


def test_cnn_embeddings_are_cached_with_the_weights_that_made_them(tmp_path, monkeypatch):
    torch = pytest.importorskip("torch")
    benchmark = _tiny_image_benchmark()
    embeddings = train_cnn_embeddings(benchmark, 0, tmp_path, epochs=1)
    assert {k: v.shape for k, v in embeddings.items()} == {
        "train": (64, 128),
        "val": (16, 128),
        "test": (16, 128),
    }

    (weights_file,) = tmp_path.glob("cnn-colored_mnist-*-seed0-e1.pt")
    weights = torch.load(weights_file)
    features, head = _small_cnn(2)
    features.load_state_dict(weights["features"])
    head.load_state_dict(weights["head"])
    with torch.no_grad():
        again = features(torch.from_numpy(benchmark.val.inputs).float() / 255.0).numpy()
    np.testing.assert_allclose(again, embeddings["val"], rtol=1e-5, atol=1e-6)
    # a second call reads the cache instead of training again
    monkeypatch.setattr("benchmarks.embed._small_cnn", None)
    cached = train_cnn_embeddings(benchmark, 0, tmp_path, epochs=1)
    np.testing.assert_array_equal(cached["test"], embeddings["test"])


def test_speed_table_reports_busy_over_idle_and_grid_search_rates():
    row = {"n": 6000, "d": 384, "x_bytes": 1}
    for method, seconds in zip(speed.METHODS, (0.5, 2.0, 3.0), strict=True):
        row[method] = {"seconds": [seconds], "extra_bytes": [0]}
        row[f"{method} busy"] = {"seconds": [2 * seconds], "extra_bytes": [0]}
    grid = {"n": 3000, "d": 384, "fits_per_second": dict.fromkeys(speed.METHODS, 1.5)}
    text = speed.markdown([row], "python -m benchmarks.speed --busy", grid)
    assert "| 6,000 x 384 | 1.00 s (2.0 x) | 4.00 s (2.0 x) | 6.00 s (2.0 x) |" in text
    assert "MetaAugmentedHeadClassifier 1.50" in text


def test_speed_task_table_reads_the_accuracy_runs_fit_times(tmp_path):
    per_seed = {
        "task_a": {
            run.ERM_LABEL: {"fit_seconds": [0.1, 0.3, 0.2]},
            run.DFR_LABEL: {"fit_seconds": [1.0, 2.0, 9.0]},
            run.DEFAULTS_LABEL: {"fit_seconds": [3.0, 4.0, 5.0]},
        }
    }
    (tmp_path / "results-suite-report.json").write_text(json.dumps({"per_seed": per_seed}))
    rows = speed.task_fit_times(tmp_path)
    assert rows == [
        {
            "section": "suite-report",
            "task": "task_a",
            "seeds": 3,
            "defaults": 4.0,
            "dfr": 2.0,
            "lr": 0.2,
        }
    ]
    text = "\n".join(speed.task_markdown(rows))
    assert "| suite-report | task_a | 3 | 0.20 s | 2.00 s | 4.00 s | 2.00 | 20.00 |" in text
    assert "over the rows: median 2.00, highest 2.00" in text
    # a task with one seed in one section and three in another counts by the three
    one_seed = {
        "task_a": {
            label: {"fit_seconds": [seconds]}
            for label, seconds in (
                (run.ERM_LABEL, 0.1),
                (run.DFR_LABEL, 1.0),
                (run.DEFAULTS_LABEL, 6.0),
            )
        }
    }
    (tmp_path / "results-suite-tuning.json").write_text(json.dumps({"per_seed": one_seed}))
    rows = speed.task_fit_times(tmp_path)
    assert [(row["section"], row["seeds"]) for row in rows] == [
        ("suite-tuning", 1),
        ("suite-report", 3),
    ]
    text = "\n".join(speed.task_markdown(rows))
    assert "over the rows: median 4.00, highest 6.00" in text
    assert "most seeds of it: median 2.00, highest 2.00" in text


def test_the_wide_suite_is_fixed_in_two_disjoint_halves():
    from benchmarks import data

    assert not set(data.TUNING_TASKS) & set(data.REPORT_TASKS)
    assert len(data.TUNING_TASKS) + len(data.REPORT_TASKS) >= 12
    assert set(data.TUNING_TASKS) | set(data.REPORT_TASKS) <= set(data.BUILDERS)
    assert set(run.SUITE_HALVES) == {"tuning", "report"}
    # the pretrained-CNN probe tasks are for tuning seeds, in neither half until it is rerun
    probes = set(data.PRETRAINED_PROBE_TASKS)
    assert probes <= set(data.BUILDERS) and not probes & set(data.REPORT_TASKS)
    assert not probes & set(data.TUNING_TASKS)


def test_suite_text_tasks_never_read_the_reserved_sources(monkeypatch):
    """The Amazon and New York Times parts of the VADER archive are reserved."""
    from benchmarks import data

    read = []
    rng = np.random.RandomState(0)

    def fake_hutto(data_dir, source):
        read.append(source)
        return [f"{source} sentence {i}" for i in range(12000)], rng.uniform(-3, 3, 12000).round(1)

    monkeypatch.setattr(data, "_read_hutto", fake_hutto)
    for name in data.SUITE_RECIPES:
        if data.RECIPES[name].get("source") == "vader":
            benchmark = data.BUILDERS[name](None, 0)
            assert len(benchmark.test.y) > 0
    assert set(read) == {"movieReviewSnippets", "tweets"}


def test_groupfree_screen_on_synthetic_data(tmp_path):
    assert groupfree_screen.main(["--synthetic", "--out", str(tmp_path)]) == 0
    section = (tmp_path / "RESULTS.md").read_text()
    assert "<!-- begin: groupfree-screen -->" in section
    n_rules = len(groupfree_screen.FRACTIONS) * (
        len(groupfree_screen.ALPHAS) + len(groupfree_screen.TOLERANCES)
    )
    assert section.count("| fraction ") == n_rules


def test_groupfree_screen_takes_each_class_extremes_and_the_largest_alpha_within_tolerance():
    y = np.array([0] * 10 + [1] * 20)
    losses = np.r_[np.arange(10.0), 100.0 + np.arange(20.0)]
    rows = groupfree_screen._extremes(losses, y, np.arange(30), fraction=0.2)  # k = 2 of 10
    np.testing.assert_array_equal(rows, [0, 1, 8, 9, 10, 11, 28, 29])
    result = {
        f"cost_f0.1 a{alpha}": cost
        for alpha, cost in zip(groupfree_screen.ALPHAS, [0.0, 0.004, 0.02, 0.001], strict=True)
    }
    assert groupfree_screen._chosen(result, 0.1, 0.005) == "f0.1 a1.0"
    assert groupfree_screen._chosen(result, 0.1, -0.01) is None
