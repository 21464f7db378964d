"""One CPU thread count for every benchmark computation, whatever the machine.

Torch's CPU kernels split their float32 sums by thread count, so a CNN's
weights after training and an HSFM fit differ in their last bits between a
2-core and an 8-core machine, and those bits can flip a fit's discrete choices
(the kept epoch, the geometry, the hard set). Measured on this project's
2-core machine: CNN weight gradients differ between 1, 2 and 4 threads; the
defaults' ``coef_`` on Dominoes and Colored MNIST seed 0 differ between 1, 2
and 4 threads (Colored MNIST worst-group 92.6 with 1 or 2, 92.3 with 4), and
image embeddings cached by a 1-thread run changed 138 of the 140 image rows
of the ten-seed table. MiniLM's forward pass gave identical bits with 1, 2
and 4 threads.

The committed tables were made with 2 threads, so the accuracy scripts and the
CNN training pin that number (``MetaAugmentedHeadClassifier`` itself picks one
thread for the benchmarks' fit sizes, ``n_threads=None``); ``benchmarks.speed``
does not (it measures the machine). The environment variable
``FEATMETA_BENCHMARK_THREADS`` overrides the count, e.g. on a machine shared
with other work, where 2 threads on 2 busy cores collapse.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable

from sklearn_featmeta._threads import fit_threads

BENCHMARK_THREADS = int(os.environ.get("FEATMETA_BENCHMARK_THREADS", "2"))


def benchmark_threads() -> fit_threads:
    """Context manager: torch and BLAS run on ``BENCHMARK_THREADS`` threads inside it."""
    return fit_threads(BENCHMARK_THREADS)


def with_benchmark_threads(main: Callable) -> Callable:
    """Decorator of a script's ``main``: it runs inside :func:`benchmark_threads`."""

    @functools.wraps(main)
    def pinned(*args, **kwargs):
        with benchmark_threads():
            return main(*args, **kwargs)

    return pinned
