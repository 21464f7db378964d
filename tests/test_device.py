"""The CUDA path. Skipped where no CUDA device exists (CI); benchmarks/gpu_check.py runs it."""

import numpy as np
import pytest

from sklearn_featmeta import MetaAugmentedHeadClassifier
from sklearn_featmeta.datasets import make_spurious_embeddings

torch = pytest.importorskip("torch")
needs_cuda = pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs a CUDA device (run benchmarks/gpu_check.py on one)"
)
FAST = {"n_epochs": 5, "outer_steps": 3, "inner_steps": 5, "n_repeats": 2, "random_state": 0}


@pytest.fixture(scope="module")
def data():
    return make_spurious_embeddings(n_samples=2000, n_features=64, random_state=0)


def test_auto_device_is_cpu_without_cuda(data):
    X, y, groups = data
    model = MetaAugmentedHeadClassifier(**FAST, device="auto").fit(X, y, groups)
    assert model.device_ == ("cuda:0" if torch.cuda.is_available() else "cpu")


@needs_cuda
@pytest.mark.parametrize("device", ["cuda", "cuda:0"])
def test_cuda_fit_agrees_with_cpu(data, device):
    X, y, groups = data
    cpu = MetaAugmentedHeadClassifier(**FAST, device="cpu").fit(X, y, groups)
    gpu = MetaAugmentedHeadClassifier(**FAST, device=device).fit(X, y, groups)
    assert gpu.device_ == "cuda:0"
    # same seed, same draws (the support permutation is drawn on the CPU); float32 kernels differ
    np.testing.assert_allclose(gpu.coef_, cpu.coef_, rtol=1e-3, atol=1e-4)
    assert np.mean(gpu.predict(X) == cpu.predict(X)) > 0.99
    assert isinstance(gpu.coef_, np.ndarray) and gpu.support_edited_.dtype == np.float32


@needs_cuda
def test_cuda_model_pickles_to_numpy(data):
    import pickle

    X, y, groups = data
    gpu = MetaAugmentedHeadClassifier(**FAST, device="cuda").fit(X, y, groups)
    restored = pickle.loads(pickle.dumps(gpu))
    np.testing.assert_array_equal(restored.predict(X), gpu.predict(X))


@needs_cuda
def test_missing_cuda_index_is_a_clear_error(data):
    X, y, groups = data
    with pytest.raises(ValueError, match="CUDA device"):
        MetaAugmentedHeadClassifier(device=f"cuda:{torch.cuda.device_count()}").fit(X, y, groups)
