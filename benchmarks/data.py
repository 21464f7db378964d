"""Benchmark recipes: real data from ``--data-dir`` (../shared/data), split per seed.

One place for every recipe's numbers (``RECIPES``). Each builder returns a
:class:`Split` of raw inputs (sentences or images) with labels and attributes;
:mod:`benchmarks.embed` turns them into embeddings.

Protocol (the same for every method): training rows carry no group label,
validation rows do; the test split scores. Groups are (label, attribute) cells.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import re
import tarfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

RECIPES = {
    # Waterbirds-like: label = sentiment, attribute = source. Training: 95% of
    # positives are tweets and 95% of negatives movie-review snippets;
    # validation and test are group-balanced.
    "sentiment_source": {
        "kind": "text",
        "train_majority_per_group": 2000,
        "train_minority_fraction": 0.05,
        "val_per_group": 200,
        "test_per_group": 300,
        "label_names": ("negative", "positive"),
        "attribute_names": ("movie", "tweet"),
    },
    # Natural shortcut: label = positive review, attribute = contains a
    # negation word. Random 60/20/20 split stratified by group, no subsampling.
    "polarity_negation": {
        "kind": "text",
        "fractions": (0.6, 0.2, 0.2),
        "label_names": ("negative", "positive"),
        "attribute_names": ("no negation", "negation"),
    },
    # An MNIST 0/1 stacked above a Fashion-MNIST coat/dress; label = the
    # garment, attribute = the digit, agreeing in 95% of training images and
    # 50% of validation and test images.
    "dominoes": {
        "kind": "image",
        "fashion_classes": (4, 3),  # coat, dress
        "train_per_class": 5000,
        "val_per_class": 1000,
        "train_agreement": 0.95,
        "label_names": ("coat", "dress"),
        "attribute_names": ("digit 0", "digit 1"),
    },
    # Label = digit < 5, attribute = colour (red / green channel), agreeing in
    # 95% of training images and 50% of validation and test images.
    "colored_mnist": {
        "kind": "image",
        "n_train": 8000,
        "train_agreement": 0.95,
        "label_names": ("digit >= 5", "digit < 5"),
        "attribute_names": ("red", "green"),
    },
}

NEGATION_WORDS = frozenset(
    {"not", "no", "never", "nothing", "nobody", "none", "neither", "nor", "cannot", "without"}
)


@dataclass
class Split:
    """Raw inputs of one split: ``inputs`` is a list of str or an image array."""

    inputs: object
    y: np.ndarray
    attribute: np.ndarray

    @property
    def groups(self) -> np.ndarray:
        return 2 * self.y + self.attribute

    def take(self, index: np.ndarray) -> Split:
        inputs = (
            [self.inputs[i] for i in index] if isinstance(self.inputs, list) else self.inputs[index]
        )
        return Split(inputs, self.y[index], self.attribute[index])


@dataclass
class Benchmark:
    name: str
    train: Split
    val: Split
    test: Split
    corpus: list[str] | None = None  # text: every sentence the splits are drawn from

    def group_names(self) -> list[str]:
        recipe = RECIPES[self.name]
        return [
            f"{label}, {attribute}"
            for label in recipe["label_names"]
            for attribute in recipe["attribute_names"]
        ]


def add_data_arguments(parser: argparse.ArgumentParser) -> None:
    """``--data-dir`` (the real data, read-only) and ``--cache-dir`` (embeddings, CNNs)."""
    parser.add_argument("--data-dir", type=Path, default=Path("../shared/data"))
    parser.add_argument("--cache-dir", type=Path, default=Path(".cache/benchmarks"))


def _check_file(path: Path) -> Path:
    if not path.exists():
        raise FileNotFoundError(
            f"{path} is missing: pass --data-dir pointing at the shared benchmark data "
            "(see ../shared/data/README.md)."
        )
    return path


def recipe_key(name: str, seed: int) -> str:
    """Cache key of a recipe's numbers and a seed: changing a recipe invalidates its cache."""
    digest = hashlib.sha256(repr(sorted(RECIPES[name].items())).encode()).hexdigest()[:10]
    return f"{name}-{digest}-seed{seed}"


# --------------------------------------------------------------------------- #
# Text
# --------------------------------------------------------------------------- #
def _read_hutto(data_dir: Path, source: str) -> tuple[list[str], np.ndarray]:
    member = f"hutto_ICWSM_2014/{source}_GroundTruth.txt"
    with tarfile.open(_check_file(data_dir / "hutto_ICWSM_2014.tar.gz")) as archive:
        raw = archive.extractfile(member).read().decode("utf-8", errors="replace")
    texts, scores = [], []
    for line in raw.splitlines():
        parts = line.split("\t")
        if len(parts) == 3:
            texts.append(parts[2].strip())
            scores.append(float(parts[1]))
    return texts, np.array(scores)


def _sample_cells(cells: np.ndarray, sizes: dict, rng: np.random.RandomState) -> np.ndarray:
    """``sizes[cell]`` random rows of each cell, without replacement."""
    chosen = []
    for cell, size in sizes.items():
        rows = np.flatnonzero(cells == cell)
        if size > rows.size:
            raise ValueError(f"cell {cell} has {rows.size} rows, the recipe asks for {size}")
        chosen.append(rng.choice(rows, size, replace=False))
    return np.concatenate(chosen)


def sentiment_source(data_dir: Path, seed: int) -> Benchmark:
    recipe = RECIPES["sentiment_source"]
    texts, labels, attributes = [], [], []
    for attribute, source in enumerate(["movieReviewSnippets", "tweets"]):
        source_texts, scores = _read_hutto(data_dir, source)
        keep = scores != 0
        texts += [t for t, k in zip(source_texts, keep, strict=True) if k]
        labels.append((scores[keep] > 0).astype(np.int64))
        attributes.append(np.full(keep.sum(), attribute))
    everything = Split(texts, np.concatenate(labels), np.concatenate(attributes))
    rng = np.random.RandomState(seed)
    cells = everything.groups
    # balanced evaluation rows first, then training rows from what is left
    test = _sample_cells(cells, dict.fromkeys(range(4), recipe["test_per_group"]), rng)
    rest = np.setdiff1d(np.arange(cells.size), test)
    val = rest[_sample_cells(cells[rest], dict.fromkeys(range(4), recipe["val_per_group"]), rng)]
    rest = np.setdiff1d(rest, val)
    majority = recipe["train_majority_per_group"]
    fraction = recipe["train_minority_fraction"]
    minority = int(round(majority * fraction / (1 - fraction)))
    # cells are 2 * label + attribute: positives mostly tweets (3), negatives mostly movies (0)
    sizes = {0: majority, 3: majority, 1: minority, 2: minority}
    train = rest[_sample_cells(cells[rest], sizes, rng)]
    return Benchmark(
        "sentiment_source",
        everything.take(rng.permutation(train)),
        everything.take(rng.permutation(val)),
        everything.take(rng.permutation(test)),
        corpus=everything.inputs,
    )


def has_negation(sentence: str) -> bool:
    """Whether a sentence holds a negation word (``NEGATION_WORDS`` or a ``n't`` form)."""
    tokens = re.findall(r"[a-z']+", sentence.lower())
    return any(token in NEGATION_WORDS or token.endswith("n't") for token in tokens)


def polarity_negation(data_dir: Path, seed: int) -> Benchmark:
    recipe = RECIPES["polarity_negation"]
    texts, labels = [], []
    for label, suffix in [(0, "neg"), (1, "pos")]:
        lines = (
            _check_file(data_dir / f"rt-polarity.{suffix}").read_text(errors="replace").splitlines()
        )
        lines = [line.strip() for line in lines if line.strip()]
        texts += lines
        labels += [label] * len(lines)
    everything = Split(texts, np.array(labels), np.array([int(has_negation(t)) for t in texts]))
    rng = np.random.RandomState(seed)
    parts = [[], [], []]
    for cell in range(4):
        rows = rng.permutation(np.flatnonzero(everything.groups == cell))
        bounds = np.rint(np.cumsum(recipe["fractions"])[:2] * rows.size).astype(int)
        for part, chunk in zip(parts, np.split(rows, bounds), strict=True):
            part.append(chunk)
    train, val, test = (everything.take(rng.permutation(np.concatenate(p))) for p in parts)
    return Benchmark("polarity_negation", train, val, test, corpus=everything.inputs)


# --------------------------------------------------------------------------- #
# Images
# --------------------------------------------------------------------------- #
def _idx(path: Path, offset: int) -> np.ndarray:
    return np.frombuffer(gzip.open(_check_file(path)).read(), np.uint8, offset=offset)


def _idx_images(data_dir: Path, name: str) -> np.ndarray:
    return _idx(data_dir / name, 16).reshape(-1, 28, 28)


def _idx_labels(data_dir: Path, name: str) -> np.ndarray:
    return _idx(data_dir / name, 8).astype(np.int64)


def _mnist(data_dir: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    first = np.load(_check_file(data_dir / "mnist-train-first10k.npz"))
    test_images = _idx_images(data_dir, "mnist-t10k-images-idx3-ubyte.gz")
    test_labels = _idx_labels(data_dir, "mnist-t10k-labels-idx1-ubyte.gz")
    return first["images"], first["labels"].astype(np.int64), test_images, test_labels


def _attributes(y: np.ndarray, agreement: float, rng: np.random.RandomState) -> np.ndarray:
    """Binary attribute equal to ``y`` for exactly ``agreement`` of each class's rows."""
    attribute = 1 - y
    for label in (0, 1):
        rows = rng.permutation(np.flatnonzero(y == label))
        attribute[rows[: int(round(agreement * rows.size))]] = label
    return attribute


def dominoes(data_dir: Path, seed: int) -> Benchmark:
    recipe = RECIPES["dominoes"]
    rng = np.random.RandomState(seed)
    fashion_train = _idx_images(data_dir, "fashion-mnist-train-images-idx3-ubyte.gz")
    fashion_train_y = _idx_labels(data_dir, "fashion-mnist-train-labels-idx1-ubyte.gz")
    fashion_test = _idx_images(data_dir, "fashion-mnist-t10k-images-idx3-ubyte.gz")
    fashion_test_y = _idx_labels(data_dir, "fashion-mnist-t10k-labels-idx1-ubyte.gz")
    digits_train, digits_train_y, digits_test, digits_test_y = _mnist(data_dir)
    # digits for training come from the training digits; validation and test
    # take disjoint halves of the official test digits
    held_digits = rng.permutation(np.flatnonzero(digits_test_y <= 1))
    digit_pools = {
        "train": (digits_train, np.flatnonzero(digits_train_y <= 1), digits_train_y),
        "val": (digits_test, held_digits[: held_digits.size // 2], digits_test_y),
        "test": (digits_test, held_digits[held_digits.size // 2 :], digits_test_y),
    }

    n_train, n_val = recipe["train_per_class"], recipe["val_per_class"]
    parts = {"train": [], "val": [], "test": []}
    for label, fashion_class in enumerate(recipe["fashion_classes"]):
        rows = rng.permutation(np.flatnonzero(fashion_train_y == fashion_class))
        parts["train"].append((rows[:n_train], label))
        parts["val"].append((rows[n_train : n_train + n_val], label))
        parts["test"].append((np.flatnonzero(fashion_test_y == fashion_class), label))

    def garments(split):
        images = fashion_test if split == "test" else fashion_train
        rows = np.concatenate([r for r, _ in parts[split]])
        y = np.concatenate([np.full(r.size, label) for r, label in parts[split]])
        return images[rows], y

    def stack(split, agreement):
        images, y = garments(split)
        digit_images, digit_rows, digit_labels = digit_pools[split]
        attribute = _attributes(y, agreement, rng)
        tops = np.empty_like(images)
        for value in (0, 1):
            rows = np.flatnonzero(attribute == value)
            pool = digit_rows[digit_labels[digit_rows] == value]
            tops[rows] = digit_images[rng.choice(pool, rows.size, replace=True)]
        order = rng.permutation(y.size)
        return Split(
            np.concatenate([tops, images], axis=1)[order][:, None], y[order], attribute[order]
        )

    return Benchmark(
        "dominoes",
        stack("train", recipe["train_agreement"]),
        stack("val", 0.5),
        stack("test", 0.5),
    )


def colored_mnist(data_dir: Path, seed: int) -> Benchmark:
    recipe = RECIPES["colored_mnist"]
    rng = np.random.RandomState(seed)
    first_images, first_labels, test_images, test_labels = _mnist(data_dir)
    order = rng.permutation(first_labels.size)
    train_rows, val_rows = order[: recipe["n_train"]], order[recipe["n_train"] :]

    def colour(images, digits, agreement):
        y = (digits < 5).astype(np.int64)
        attribute = _attributes(y, agreement, rng)
        coloured = np.zeros((y.size, 2, 28, 28), dtype=np.uint8)
        coloured[np.arange(y.size), attribute] = images
        return Split(coloured, y, attribute)

    return Benchmark(
        "colored_mnist",
        colour(first_images[train_rows], first_labels[train_rows], recipe["train_agreement"]),
        colour(first_images[val_rows], first_labels[val_rows], 0.5),
        colour(test_images, test_labels, 0.5),
    )


BUILDERS = {
    "sentiment_source": sentiment_source,
    "polarity_negation": polarity_negation,
    "dominoes": dominoes,
    "colored_mnist": colored_mnist,
}
